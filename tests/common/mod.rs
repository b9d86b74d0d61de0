//! Shared pieces of the end-to-end tests: temp homes and the real binary.
#![allow(dead_code)]

pub mod tmux;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The `netsky` binary under test.
pub fn exe() -> &'static str {
    env!("CARGO_BIN_EXE_netsky")
}

/// A node home in its own temporary directory, removed on drop.
pub struct TestHome {
    pub dir: tempfile::TempDir,
    pub name: String,
}

impl TestHome {
    /// A fresh home initialised as node `name`, relay-less.
    pub fn init(name: &str) -> TestHome {
        let dir = tempfile::Builder::new().prefix("netsky-e2e-").tempdir().expect("temp dir");
        let h = TestHome { dir, name: name.to_string() };
        h.ok(&["init", "--name", name, "--relay", "disabled", "--listen", "127.0.0.1:0"]);
        h
    }

    /// The home directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `netsky --home HOME args...`, not yet run.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(exe());
        c.arg("--home").arg(self.path()).args(args).env_remove("AGENT_N").env_remove("NETSKY_HOME");
        c
    }

    /// Runs and returns the output, whatever the exit status.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("netsky runs")
    }

    /// Runs, asserts exit 0, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "netsky {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).expect("utf-8 stdout")
    }

    /// Runs with `--json`, asserts exit 0, parses stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.ok(&a);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("netsky {args:?}: not JSON ({e}): {out}"))
    }

    /// Runs, asserts exit `code`, returns stderr.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let o = self.run(args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(code), "netsky {args:?}: expected exit {code}; stderr: {err}");
        err
    }

    /// A path inside the home.
    pub fn join(&self, rel: &str) -> PathBuf {
        self.path().join(rel)
    }

    /// Files (not dotfiles) in a folder of the home, sorted.
    pub fn files(&self, rel: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.join(rel))
            .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        v.retain(|n| !n.starts_with('.'));
        v.sort();
        v
    }
}

/// Polls `f` until it returns `Some`, or panics after `timeout` with `what` and the last state seen.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(seen) if Instant::now() > deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {seen}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// A running `netsky node run`, stopped (SIGTERM, then SIGKILL) on drop.
pub struct Daemon {
    pub child: std::process::Child,
    pub ready: serde_json::Value,
}

impl TestHome {
    /// Starts this home's daemon and waits for its ready line.
    pub fn start(&self) -> Daemon {
        self.start_with(&[])
    }

    /// As [`TestHome::start`], with `env` added to the daemon's environment.
    pub fn start_with(&self, env: &[(&str, &str)]) -> Daemon {
        use std::io::BufRead;
        let err =
            std::fs::OpenOptions::new().create(true).append(true).open(self.join("daemon.err")).unwrap();
        let mut child = self
            .cmd(&["--json", "node", "run"])
            .envs(env.iter().copied())
            .env("RUST_LOG", "netsky=info,netsky_mesh=debug,warn")
            .stdout(std::process::Stdio::piped())
            .stderr(err)
            .spawn()
            .expect("daemon starts");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(out).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
        let ready = serde_json::from_str(&line).unwrap_or_else(|_| {
            let _ = child.kill();
            let err = std::fs::read_to_string(self.join("daemon.err")).unwrap_or_default();
            panic!("daemon of {} did not become ready; stdout {line:?}; stderr:\n{err}", self.name)
        });
        Daemon { child, ready }
    }

    /// Events recorded in this home's logs, as (event, envelope, detail).
    pub fn events(&self) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for f in self.files("logs") {
            let text = std::fs::read_to_string(self.join(&format!("logs/{f}"))).unwrap_or_default();
            for l in text.lines() {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(l) {
                    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
                    out.push((s("event"), s("envelope"), s("detail")));
                }
            }
        }
        out
    }

    /// Drains `agent` and returns the texts delivered, in order.
    pub fn drain_texts(&self, agent: &str) -> Vec<String> {
        let v = self.json(&["channel", "drain", agent]);
        v["delivered"].as_array().unwrap().iter().map(|d| d["text"].as_str().unwrap().to_string()).collect()
    }
}

impl Daemon {
    /// SIGTERM and wait for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        unsafe_kill(self.child.id(), 15);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("daemon did not stop within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// kill -9, no cleanup at all.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sends signal `sig` to `pid`.
pub fn unsafe_kill(pid: u32, sig: i32) {
    unsafe extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    // SAFETY: kill(2) has no memory preconditions.
    unsafe {
        kill(pid as i32, sig);
    }
}

/// A root with a running daemon and members joined by ticket, each with its daemon.
pub struct TestMesh {
    pub homes: Vec<TestHome>,
    pub daemons: Vec<Option<Daemon>>,
}

impl TestMesh {
    /// `names[0]` is root of mesh "home"; the rest join it.
    pub fn new(names: &[&str]) -> TestMesh {
        let root = TestHome::init(names[0]);
        root.ok(&["mesh", "init", "--mesh", "home"]);
        let mut daemons = vec![Some(root.start())];
        let mut homes = vec![root];
        for n in &names[1..] {
            let h = TestHome::init(n);
            let ticket = homes[0].ok(&["mesh", "invite", n]).trim().to_string();
            h.ok(&["mesh", "join", &ticket]);
            daemons.push(Some(h.start()));
            homes.push(h);
        }
        let m = TestMesh { homes, daemons };
        // Everyone sees everyone once the members' addresses are in the charter they hold.
        for h in &m.homes {
            let want = names.len();
            wait_for(
                &format!("{} to hold a charter with every address", h.name),
                Duration::from_secs(20),
                || {
                    let c = h.json(&["mesh", "charter"]);
                    let members = c["charter"]["members"].as_array().cloned().unwrap_or_default();
                    let with_addrs = members
                        .iter()
                        .filter(|m| m["addrs"].as_array().is_some_and(|a| !a.is_empty()))
                        .count();
                    if with_addrs == want { Ok(()) } else { Err(c.to_string()) }
                },
            );
        }
        m
    }

    /// The home of `name`.
    pub fn home(&self, name: &str) -> &TestHome {
        self.homes.iter().find(|h| h.name == name).expect("a member")
    }

    fn idx(&self, name: &str) -> usize {
        self.homes.iter().position(|h| h.name == name).expect("a member")
    }

    /// Stops `name`'s daemon cleanly.
    pub fn stop(&mut self, name: &str) {
        let i = self.idx(name);
        if let Some(d) = self.daemons[i].take() {
            assert!(d.stop().success(), "{name} stopped cleanly");
        }
    }

    /// kill -9 of `name`'s daemon.
    pub fn kill9(&mut self, name: &str) {
        let i = self.idx(name);
        if let Some(d) = self.daemons[i].take() {
            d.kill9();
        }
    }

    /// (Re)starts `name`'s daemon.
    pub fn start(&mut self, name: &str) {
        let i = self.idx(name);
        assert!(self.daemons[i].is_none(), "{name} is running already");
        self.daemons[i] = Some(self.homes[i].start());
    }
}

/// Replaces each `(from, to)` once in `h`'s config.toml; each must be there.
pub fn edit_config(h: &TestHome, edits: &[(&str, &str)]) {
    let path = h.join("config.toml");
    let mut config = std::fs::read_to_string(&path).unwrap();
    for (from, to) in edits {
        assert!(config.contains(from), "{from} not in {config}");
        config = config.replacen(from, to, 1);
    }
    std::fs::write(&path, config).unwrap();
}

/// The JSON lines of a file (none if it does not exist).
pub fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Replaces `h`'s `legs = []` with `legs` (TOML `[[owner.legs]]` blocks, at the end of `[owner]`).
pub fn set_legs(h: &TestHome, legs: &str) {
    let path = h.join("config.toml");
    let config = std::fs::read_to_string(&path).unwrap();
    assert!(config.contains("legs = []\n"), "{config}");
    std::fs::write(&path, config.replace("legs = []\n", "") + legs).unwrap();
}

/// One `file` owner leg appending its pages to `pages`.
pub fn file_leg(pages: &Path) -> String {
    format!("[[owner.legs]]\nkind = \"file\"\npath = \"{}\"\n", pages.display())
}
