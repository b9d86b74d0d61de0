//! Shared pieces of the end-to-end tests: temp homes and the real binary.
#![allow(dead_code)]

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
