//! Bounded subprocesses: every child netsky starts has a deadline and an
//! output cap, so a hung or chatty child can stall or bloat nothing.

use std::io::{BufRead, Read};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The most of each stream (stdout, stderr) kept from a child; the rest is read and dropped.
pub const MAX_OUTPUT: u64 = 1024 * 1024;

/// One stream of a child, read on its own thread into a buffer the caller
/// can take at any time: whole once the pipe closed, as far as it got if a
/// grandchild still holds the pipe at the deadline.
type Captured = std::sync::Arc<std::sync::Mutex<Vec<u8>>>;

/// Reads `r` into `into` up to [`MAX_OUTPUT`] bytes, then drains the rest so
/// the child never blocks on a full pipe.
fn read_capped(mut r: impl Read, into: &Captured) {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match r.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => {
                let mut b = into.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let room = (MAX_OUTPUT as usize).saturating_sub(b.len());
                b.extend_from_slice(&chunk[..n.min(room)]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Runs `cmd` to completion, killing it if it outlives `timeout`; output is capped at [`MAX_OUTPUT`].
///
/// Returns once the child has exited and both its pipes closed, which for
/// an ordinary child is the moment it exits: no polling delay. A grandchild
/// that keeps a pipe open holds the call until the deadline at most; the
/// output read by then is returned with the child's status.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    run(cmd, timeout, false)
}

/// As [`run_bounded`], with the child leading a process group of its own,
/// all of which is killed at the deadline: for commands (a shell running a
/// check script) whose own children would otherwise outlive the kill.
pub fn run_bounded_group(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    std::os::unix::process::CommandExt::process_group(cmd, 0);
    run(cmd, timeout, true)
}

fn run(cmd: &mut Command, timeout: Duration, group: bool) -> Result<Output> {
    let what = format!("{:?}", cmd.get_program());
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {what}"))?;
    let out_pipe = child.stdout.take().context("child stdout")?;
    let err_pipe = child.stderr.take().context("child stderr")?;
    let (eof_tx, eof_rx) = std::sync::mpsc::channel::<()>();
    let captured: [Captured; 2] = Default::default();
    for (pipe, into) in
        [(Box::new(out_pipe) as Box<dyn Read + Send>, &captured[0]), (Box::new(err_pipe), &captured[1])]
    {
        let (eof, into) = (eof_tx.clone(), into.clone());
        // Ends when the pipe closes: at the child's exit, or when a grandchild that inherited it lets go.
        std::thread::spawn(move || {
            read_capped(pipe, &into);
            let _ = eof.send(());
        });
    }
    drop(eof_tx);
    let deadline = Instant::now() + timeout;
    if group {
        wait_group(&mut child, &eof_rx, deadline)?;
    } else {
        for _ in 0..2 {
            if eof_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).is_err() {
                break;
            }
        }
    }
    // Pipes closed (the exit is moments away), or the deadline passed: the exit, polled briefly.
    let mut nap = Duration::from_micros(20);
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            if group {
                // SAFETY: kill(2) has no memory preconditions; the child leads its own group.
                unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
            }
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not finish within {timeout:?} and was killed");
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(1));
    };
    let [stdout, stderr] =
        captured.map(|c| std::mem::take(&mut *c.lock().unwrap_or_else(std::sync::PoisonError::into_inner)));
    Ok(Output { status, stdout, stderr })
}

/// How long a group's stragglers may hold its pipes after its leader exits.
const GROUP_GRACE: Duration = Duration::from_millis(500);

/// Waits for a group leader's pipes to close, or the deadline. Once the
/// leader has exited, whatever it left running in its group (a server it
/// started in the background) gets [`GROUP_GRACE`], then is killed: it must
/// not hold the caller to the deadline, nor outlive the command.
fn wait_group(child: &mut Child, eof_rx: &std::sync::mpsc::Receiver<()>, deadline: Instant) -> Result<()> {
    let mut open = 2;
    let mut exited: Option<Instant> = None;
    while open > 0 && Instant::now() < deadline {
        match eof_rx.recv_timeout(Duration::from_millis(10)) {
            Ok(()) => open -= 1,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if exited.is_none() && child.try_wait()?.is_some() {
            exited = Some(Instant::now());
        }
        if exited.is_some_and(|t| t.elapsed() >= GROUP_GRACE) {
            break;
        }
    }
    if exited.is_some() || child.try_wait()?.is_some() {
        // SAFETY: kill(2) has no memory preconditions; the group is the child's own.
        unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
    }
    Ok(())
}

/// A `netsky node run` child; stopped with SIGTERM (then SIGKILL) on drop.
pub struct Daemon {
    name: String,
    child: Child,
}

impl Daemon {
    /// Starts `exe --home home node run` (stderr into `log`) and waits, at
    /// most 20 s, for its ready line, which it returns.
    pub fn start(exe: &Path, home: &Path, name: &str, log: &Path) -> Result<(Daemon, String)> {
        let args = ["--home".as_ref(), home.as_os_str(), "node".as_ref(), "run".as_ref()];
        Daemon::spawn(exe, &args, name, log)
    }

    /// Starts `exe args` as a long-running child of the same kind (stderr
    /// into `log`, stopped with SIGTERM on drop) and waits, at most 20 s, for
    /// the first line it prints, which it returns.
    pub fn spawn(exe: &Path, args: &[&std::ffi::OsStr], name: &str, log: &Path) -> Result<(Daemon, String)> {
        let log_file =
            std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .context("cannot start a daemon")?;
        let out = child.stdout.take().context("daemon stdout")?;
        // Owned from here: a daemon that never gets ready is stopped on return.
        let daemon = Daemon { name: name.to_string(), child };
        let (tx, rx) = std::sync::mpsc::channel();
        // Ends when the daemon exits or prints its line, whichever is first.
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(out.take(64 * 1024)).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
        if line.is_empty() {
            bail!("{name}'s daemon did not start; see {}", log.display());
        }
        Ok((daemon, line.trim().to_string()))
    }
}

impl Daemon {
    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the daemon with SIGKILL, as a machine that dies says nothing.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) has no memory preconditions.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("netsky: {}'s daemon did not stop; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_and_status_come_back() {
        let o = run_bounded(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!((o.status.code(), &o.stdout[..], &o.stderr[..]), (Some(3), &b"out\n"[..], &b"err\n"[..]));
    }

    #[test]
    fn a_child_past_its_deadline_is_killed() {
        let start = Instant::now();
        let e = run_bounded(Command::new("sleep").arg("30"), Duration::from_millis(200)).unwrap_err();
        assert!(format!("{e:#}").contains("did not finish"), "{e:#}");
        assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
    }

    #[test]
    fn a_group_whose_leader_exits_does_not_wait_for_what_it_left_running_and_kills_it() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let script = format!("sleep 30 & echo $! > {}; echo done", pid_file.display());
        let start = Instant::now();
        let o = run_bounded_group(Command::new("sh").args(["-c", &script]), Duration::from_secs(20)).unwrap();
        assert!(o.status.success());
        assert_eq!(&o.stdout[..], b"done\n");
        assert!(start.elapsed() < Duration::from_secs(10), "held {:?}", start.elapsed());
        let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        // The straggler is gone (killed; reaped by init, or a zombie at most), within moments.
        let alive = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.split_whitespace().nth(2).is_none_or(|st| st != "Z"))
        };
        let until = Instant::now() + Duration::from_secs(5);
        while alive() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!alive(), "the background sleep outlived its check");
    }

    #[test]
    fn a_child_that_closes_its_pipes_early_is_still_waited_for() {
        let o = run_bounded(
            Command::new("sh").args(["-c", "exec >&- 2>&-; sleep 0.2; exit 4"]),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(o.status.code(), Some(4));
    }

    #[test]
    fn a_grandchild_holding_the_pipe_does_not_hold_the_caller() {
        let start = Instant::now();
        let o = run_bounded(
            Command::new("sh").args(["-c", "echo parent; sleep 30 & exit 5"]),
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!((o.status.code(), &o.stdout[..]), (Some(5), &b"parent\n"[..]));
        assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
    }

    #[test]
    fn a_group_past_its_deadline_is_killed_with_its_children() {
        let d = tempfile::tempdir().unwrap();
        let mark = d.path().join("survived");
        let script = format!("(sleep 2; touch {}) & wait", mark.display());
        let e = run_bounded_group(Command::new("sh").args(["-c", &script]), Duration::from_millis(300))
            .unwrap_err();
        assert!(format!("{e:#}").contains("did not finish"), "{e:#}");
        std::thread::sleep(Duration::from_millis(2500));
        assert!(!mark.exists(), "the grandchild outlived the kill");
    }

    #[test]
    fn output_past_the_cap_is_dropped_without_blocking_the_child() {
        let o = run_bounded(
            Command::new("sh").args(["-c", "head -c 3000000 /dev/zero"]),
            Duration::from_secs(20),
        )
        .unwrap();
        assert!(o.status.success());
        assert_eq!(o.stdout.len() as u64, MAX_OUTPUT);
    }
}
