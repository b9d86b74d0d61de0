//! A home whose constellation runs on a tmux server of its own: the shared
//! part of the constellation and agents tests. The server is killed (and
//! its socket file removed) when the home is dropped, pass or fail.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A temporary home named `t` and the name of its private tmux socket.
pub struct TmuxHome {
    pub dir: tempfile::TempDir,
    pub home: PathBuf,
    pub sock: String,
    /// PATH for netsky runs, when a test hides or fakes a program.
    pub path_env: Option<std::ffi::OsString>,
}

impl TmuxHome {
    /// An initialised home; its socket name starts with `prefix`. The test writes its config.
    pub fn new(prefix: &str) -> TmuxHome {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let sock = format!("{prefix}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst));
        let t = TmuxHome { dir, home, sock, path_env: None };
        t.ok(&["init", "--name", "t", "--relay", "disabled"]);
        t
    }

    /// `netsky --home HOME args`, not yet run.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_netsky"));
        c.arg("--home").arg(&self.home).args(args).env_remove("NETSKY_HOME").env_remove("TMUX");
        if let Some(p) = &self.path_env {
            c.env("PATH", p);
        }
        c.stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs, asserts success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "netsky {args:?} failed: {}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// Runs, asserts exit 1, returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(1), "netsky {args:?}: expected exit 1; stderr: {err}");
        err
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    /// `SELECT count(*) AS n ...` over meta.db.
    pub fn count(&self, sql: &str) -> i64 {
        let v = self.json(&["query", sql]);
        v[0]["n"].as_i64().unwrap_or_else(|| panic!("{sql}: {v}"))
    }

    pub fn tmux(&self, args: &[&str]) -> Output {
        Command::new("tmux").arg("-L").arg(&self.sock).args(args).env_remove("TMUX").output().unwrap()
    }

    pub fn capture(&self, session: &str) -> String {
        String::from_utf8_lossy(
            &self.tmux(&["capture-pane", "-p", "-J", "-t", &format!("={session}:")]).stdout,
        )
        .into_owned()
    }

    pub fn status(&self) -> Value {
        self.json(&["status"])
    }

    /// One agent's row of `status`.
    pub fn agent(&self, name: &str) -> Value {
        let st = self.status();
        st["agents"].as_array().unwrap().iter().find(|a| a["agent"] == name).cloned().unwrap_or(Value::Null)
    }
}

impl Drop for TmuxHome {
    fn drop(&mut self) {
        kill_server(&self.sock);
    }
}

/// Ends the tmux server on socket `sock` and removes the socket file tmux leaves behind.
pub fn kill_server(sock: &str) {
    let _ = Command::new("tmux").args(["-L", sock, "kill-server"]).env_remove("TMUX").output();
    let tmp = std::env::var_os("TMUX_TMPDIR").map(PathBuf::from).unwrap_or_else(|| "/tmp".into());
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    let _ = std::fs::remove_file(tmp.join(format!("tmux-{uid}")).join(sock));
}

/// Polls `f` until it gives a value or `deadline` passes; then panics with `seen()`.
pub fn wait_until<T>(
    what: &str,
    deadline: Duration,
    mut f: impl FnMut() -> Option<T>,
    seen: impl Fn() -> String,
) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > end {
            panic!("timed out waiting for {what}; seen: {}", seen());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
