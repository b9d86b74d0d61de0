//! Bounded tmux calls on the server named by `[constellation] tmux_socket`.
//!
//! Every call is `tmux [-L socket] ...` run through [`run_bounded`], so a
//! missing or hung tmux is a clear error within [`TMUX_TIMEOUT`], never a
//! stuck node. We do not go through the `tmux_interface` crate: its calls
//! (`output()`, `status()`) wait on the child with no deadline, and its
//! `new-session` builder takes one shell string where we pass the runtime's
//! argv unquoted. Plain argv to the `tmux` binary is all it would add.
//!
//! Targets are written `=name` (session) and `=name:` (its current pane):
//! tmux otherwise matches a target by prefix, and `agent1` would find
//! `agent10` once `agent1` is gone.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::proc::run_bounded;

/// How long any single tmux call may take.
pub const TMUX_TIMEOUT: Duration = Duration::from_secs(5);

/// One session's first pane, as listed by tmux.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pane {
    /// The pid of the process running in the pane.
    pub pid: u32,
    /// The pane's process has exited but tmux keeps it (`remain-on-exit`).
    pub dead: bool,
    /// tmux's id of the session (`$3`): a new session gets a new one, whatever its name.
    pub session_id: String,
}

impl Pane {
    /// Who runs in this pane: the session's id and the pane's pid, which a
    /// restart (or anyone's new session of the same name) changes.
    pub fn identity(&self) -> String {
        format!("{}/{}", self.session_id, self.pid)
    }
}

/// A tmux server, reached through its socket name.
#[derive(Debug, Clone)]
pub struct Tmux {
    socket: Option<String>,
}

/// What tmux says when there is no server to talk to: then there are no sessions.
fn is_no_server(stderr: &str) -> bool {
    ["no server running", "error connecting to", "server exited unexpectedly"]
        .iter()
        .any(|m| stderr.contains(m))
}

/// What tmux says for a target that is not there (with no session left at all, "no current target").
fn is_no_session(stderr: &str) -> bool {
    is_no_server(stderr)
        || ["can't find session", "can't find pane", "can't find window", "no current target", "no sessions"]
            .iter()
            .any(|m| stderr.contains(m))
}

impl Tmux {
    /// The server `tmux -L socket`, or the user's default server when `socket` is empty.
    pub fn new(socket: &str) -> Tmux {
        Tmux { socket: (!socket.is_empty()).then(|| socket.to_string()) }
    }

    /// Runs `tmux args...`; Ok with the output whatever the exit status.
    fn call<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Result<Output> {
        let mut cmd = Command::new("tmux");
        if let Some(s) = &self.socket {
            cmd.arg("-L").arg(s);
        }
        cmd.args(args);
        // Inside a tmux client, $TMUX would point the call at that client's server.
        cmd.env_remove("TMUX");
        run_bounded(&mut cmd, TMUX_TIMEOUT).map_err(|e| {
            let not_found = e
                .chain()
                .filter_map(|c| c.downcast_ref::<std::io::Error>())
                .any(|io| io.kind() == std::io::ErrorKind::NotFound);
            if not_found {
                anyhow::anyhow!("tmux is not installed or not on PATH; the constellation needs it")
            } else {
                e.context(format!("tmux {}", self.describe(args)))
            }
        })
    }

    /// Runs `tmux args...` and fails with tmux's own words unless it exits 0.
    fn call_ok<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Result<Output> {
        let out = self.call(args)?;
        if !out.status.success() {
            bail!("tmux {} failed: {}", self.describe(args), stderr_line(&out));
        }
        Ok(out)
    }

    fn describe<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> String {
        let verb = args.first().map(|a| a.as_ref().to_string_lossy().into_owned()).unwrap_or_default();
        match &self.socket {
            Some(s) => format!("{verb} (socket {s})"),
            None => format!("{verb} (default server)"),
        }
    }

    /// Ends a private server (`-L` socket) and removes the socket file tmux
    /// leaves behind; the user's default server is never touched.
    pub fn kill_server(&self) {
        let Some(sock) = &self.socket else { return };
        let _ = self.call(&["kill-server"]);
        let tmp =
            std::env::var_os("TMUX_TMPDIR").map(std::path::PathBuf::from).unwrap_or_else(|| "/tmp".into());
        // SAFETY: getuid has no preconditions and cannot fail.
        let uid = unsafe { libc::getuid() };
        let _ = std::fs::remove_file(tmp.join(format!("tmux-{uid}")).join(sock));
    }

    /// Every session and its first pane; empty when no server runs.
    pub fn sessions(&self) -> Result<BTreeMap<String, Pane>> {
        let out = self.call(&[
            "list-panes",
            "-a",
            "-F",
            "#{session_name}\t#{pane_index}\t#{pane_pid}\t#{pane_dead}\t#{session_id}",
        ])?;
        if !out.status.success() {
            let err = stderr_line(&out);
            if is_no_server(&err) {
                return Ok(BTreeMap::new());
            }
            bail!("tmux list-panes failed: {err}");
        }
        let mut best: BTreeMap<String, (u32, Pane)> = BTreeMap::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let f: Vec<&str> = line.split('\t').collect();
            let [name, index, pid, dead, sid] = f.as_slice() else { continue };
            let (Ok(index), Ok(pid)) = (index.parse::<u32>(), pid.parse::<u32>()) else { continue };
            let pane = Pane { pid, dead: *dead == "1", session_id: sid.to_string() };
            match best.get(*name) {
                Some((i, _)) if *i <= index => {}
                _ => {
                    best.insert(name.to_string(), (index, pane));
                }
            }
        }
        Ok(best.into_iter().map(|(k, (_, p))| (k, p)).collect())
    }

    /// Shows `text` as a banner on session `name`: a message on its clients
    /// until a key is pressed, and the session option `@netsky-page`, which
    /// stays for a status line or a script to show.
    pub fn banner(&self, name: &str, text: &str) -> Result<()> {
        // `=name:`: exactly that session, never a prefix match of another.
        let target = format!("={name}:");
        self.call_ok(&["set-option", "-t", &target, "@netsky-page", text])?;
        // display-message expands formats, and `#(...)` would run a command:
        // every `#` doubled keeps the page's text as text.
        self.call_ok(&["display-message", "-t", &target, "-d", "0", &text.replace('#', "##")])?;
        Ok(())
    }

    /// Starts detached session `name` running `argv` with `env` added, in `cwd`.
    pub fn new_session(&self, name: &str, env: &[(&str, String)], argv: &[String], cwd: &Path) -> Result<()> {
        let mut args: Vec<std::ffi::OsString> =
            vec!["new-session".into(), "-d".into(), "-s".into(), name.into()];
        // Wide panes, so a delivered line is rarely wrapped.
        args.extend(["-x", "200", "-y", "50"].map(Into::into));
        args.push("-c".into());
        args.push(cwd.into());
        for (k, v) in env {
            args.push("-e".into());
            args.push(format!("{k}={v}").into());
        }
        // Several arguments after `--`: tmux runs them as argv, with no shell in between.
        args.push("--".into());
        args.extend(argv.iter().map(Into::into));
        self.call_ok(&args).with_context(|| format!("cannot start session {name}"))?;
        Ok(())
    }

    /// Kills session `name`; false when it was not there.
    pub fn kill_session(&self, name: &str) -> Result<bool> {
        Ok(self.session_call(&["kill-session", "-t", &format!("={name}")], name)?.is_some())
    }

    /// Whether session `name` exists.
    pub fn has_session(&self, name: &str) -> Result<bool> {
        Ok(self.session_call(&["has-session", "-t", &format!("={name}")], name)?.is_some())
    }

    /// The visible text of session `name`'s pane, wrapped lines joined; None without such a session.
    pub fn capture(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let out = self.session_call(&["capture-pane", "-p", "-J", "-t", &format!("={name}:")], name)?;
        Ok(out.map(|o| o.stdout))
    }

    /// Runs `args` (a tmux verb aimed at session `name`): its output, or
    /// None when tmux says the session is not there.
    fn session_call(&self, args: &[&str], name: &str) -> Result<Option<Output>> {
        let out = self.call(args)?;
        if out.status.success() {
            return Ok(Some(out));
        }
        let err = stderr_line(&out);
        if is_no_session(&err) {
            return Ok(None);
        }
        bail!("tmux {} {name} failed: {err}", args[0])
    }

    /// Sends `keys` (tmux key names, like `Enter` or `Down`) to session `name`'s pane, one call each.
    pub fn send_keys(&self, name: &str, keys: &[&str]) -> Result<()> {
        let target = format!("={name}:");
        for k in keys {
            self.call_ok(&["send-keys", "-t", &target, k])?;
        }
        Ok(())
    }

    /// Pastes `text` into session `name`'s pane through a named buffer, then presses Enter.
    ///
    /// The text goes through a file and `load-buffer` because tmux refuses
    /// command lines longer than its message size, which an envelope can
    /// exceed. `paste-buffer -p` pastes bracketed when the program asked for
    /// bracketed paste (as agent TUIs do), so the text arrives as one paste,
    /// not as typed keys; `-d` deletes the buffer afterwards.
    pub fn paste(&self, name: &str, buffer: &str, text: &str, scratch: &Path) -> Result<()> {
        std::fs::create_dir_all(scratch).with_context(|| format!("cannot create {}", scratch.display()))?;
        let file = scratch.join(format!("{buffer}.txt"));
        std::fs::write(&file, text).with_context(|| format!("cannot write {}", file.display()))?;
        let target = format!("={name}:");
        let file_arg = file.to_string_lossy().into_owned();
        let pasted = self
            .call_ok(&["load-buffer", "-b", buffer, &file_arg])
            .and_then(|_| self.call_ok(&["paste-buffer", "-d", "-p", "-b", buffer, "-t", &target]));
        let _ = std::fs::remove_file(&file);
        if let Err(e) = pasted {
            // Never leave a buffer behind to be pasted by hand later by mistake.
            let _ = self.call(&["delete-buffer", "-b", buffer]);
            return Err(e);
        }
        // A short pause lets a TUI finish taking the paste before Enter submits it.
        std::thread::sleep(Duration::from_millis(50));
        self.call_ok(&["send-keys", "-t", &target, "Enter"])?;
        Ok(())
    }
}

/// tmux's complaint, on one line and cut short.
fn stderr_line(out: &Output) -> String {
    let s = String::from_utf8_lossy(&out.stderr);
    let s = s.trim().replace('\n', " ");
    let s: String = s.chars().take(300).collect();
    if s.is_empty() { format!("exit status {}", out.status) } else { s }
}
