//! Bounded subprocesses: every child netsky starts has a deadline and an
//! output cap, so a hung or chatty child can stall or bloat nothing.

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The most of each stream (stdout, stderr) kept from a child; the rest is read and dropped.
pub const MAX_OUTPUT: u64 = 1024 * 1024;

/// Reads at most [`MAX_OUTPUT`] bytes, then drains the rest so the child never blocks on a full pipe.
fn read_capped(mut r: impl Read) -> Vec<u8> {
    let mut b = Vec::new();
    let _ = (&mut r).take(MAX_OUTPUT).read_to_end(&mut b);
    let _ = std::io::copy(&mut r, &mut std::io::sink());
    b
}

/// Runs `cmd` to completion, killing it if it outlives `timeout`; output is capped at [`MAX_OUTPUT`].
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let what = format!("{:?}", cmd.get_program());
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {what}"))?;
    let mut out_pipe = child.stdout.take().context("child stdout")?;
    let mut err_pipe = child.stderr.take().context("child stderr")?;
    // Readers on their own threads so a chatty child never blocks on a full pipe.
    let out_t = std::thread::spawn(move || read_capped(&mut out_pipe));
    let err_t = std::thread::spawn(move || read_capped(&mut err_pipe));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not finish within {timeout:?} and was killed");
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    Ok(Output { status, stdout, stderr })
}
