//! Linux: systemd-logind over the D-Bus system bus.
//!
//! While awake the watch holds a `delay` inhibitor lock for `sleep` (an fd
//! logind hands out; logind waits for it to close, up to its
//! `InhibitDelayMaxSec`, before the machine sleeps). `PrepareForSleep(true)`
//! is [`PowerEvent::WillSleep`]; [`Watch::ready_to_sleep`] closes the fd;
//! `PrepareForSleep(false)` is [`PowerEvent::Woke`], and the lock is taken
//! again at the next call of [`Watch::next`]. No task is spawned here: the
//! connection runs on the caller's tokio runtime and is dropped with the watch.

use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::time::{Duration, Instant};

use futures_core::Stream;
use zbus::proxy::{CacheProperties, SignalStream};
use zbus::{Connection, Proxy};

use crate::{PowerError, PowerEvent};

const DESTINATION: &str = "org.freedesktop.login1";
const PATH: &str = "/org/freedesktop/login1";
const INTERFACE: &str = "org.freedesktop.login1.Manager";
/// The arguments of `Manager.Inhibit`: what, who, why, mode.
const INHIBIT: (&str, &str, &str, &str) = ("sleep", "netsky", "announce the node as leaving", "delay");
/// The longest any one call to the bus may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a refused lock is asked for again (a wake asks at once).
const RETRY_LOCK: Duration = Duration::from_secs(60);
/// Where the system bus is when `DBUS_SYSTEM_BUS_ADDRESS` does not say.
const DEFAULT_ADDRESS: &str = "unix:path=/var/run/dbus/system_bus_socket";

pub(crate) struct Watch {
    manager: Proxy<'static>,
    signals: SignalStream<'static>,
    /// The delay lock, held while awake.
    lock: Option<OwnedFd>,
    /// Between `PrepareForSleep(true)` and `(false)`: no new lock is taken.
    asleep: bool,
    /// When a lock was last asked for and not had; `None`: ask at the next chance.
    refused_at: Option<Instant>,
}

impl Watch {
    pub(crate) async fn start() -> Result<Option<Watch>, PowerError> {
        let address = std::env::var("DBUS_SYSTEM_BUS_ADDRESS").unwrap_or_else(|_| DEFAULT_ADDRESS.into());
        let bus_err = |reason: String| PowerError::Bus { address: address.clone(), reason };
        let conn = match tokio::time::timeout(CALL_TIMEOUT, Connection::system()).await {
            Err(_) => return Err(bus_err(format!("no answer within {} s", CALL_TIMEOUT.as_secs()))),
            Ok(Err(e)) if no_bus(&e) => return Ok(None),
            Ok(Err(e)) => return Err(bus_err(e.to_string())),
            Ok(Ok(c)) => c,
        };
        let logind =
            |call: &'static str| move |e: zbus::Error| PowerError::Logind { call, reason: e.to_string() };
        let manager: Proxy<'static> = zbus::proxy::Builder::new(&conn)
            .destination(DESTINATION)
            .path(PATH)
            .interface(INTERFACE)
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(logind("proxy"))?;
        // Subscribed before the lock is taken: no notice falls between the two.
        let signals =
            match tokio::time::timeout(CALL_TIMEOUT, manager.receive_signal("PrepareForSleep")).await {
                Err(_) => return Err(bus_err(format!("no answer within {} s", CALL_TIMEOUT.as_secs()))),
                Ok(Err(e)) if no_logind(&e) => return Ok(None),
                Ok(Err(e)) => return Err(logind("PrepareForSleep")(e)),
                Ok(Ok(s)) => s,
            };
        let mut watch = Watch { manager, signals, lock: None, asleep: false, refused_at: None };
        match watch.take_lock().await {
            Err(e) if matches!(&e, LockError::Bus(z) if no_logind(z)) => return Ok(None),
            Err(e) => watch.refused(e),
            Ok(fd) => watch.lock = Some(fd),
        }
        Ok(Some(watch))
    }

    pub(crate) async fn next(&mut self) -> Option<PowerEvent> {
        if self.lock.is_none() && !self.asleep && self.refused_at.is_none_or(|t| t.elapsed() >= RETRY_LOCK) {
            // Cancelled here, nothing is lost: the next call asks again.
            match self.take_lock().await {
                Ok(fd) => self.lock = Some(fd),
                Err(e) => self.refused(e),
            }
        }
        loop {
            let msg = std::future::poll_fn(|cx| Pin::new(&mut self.signals).poll_next(cx)).await?;
            match msg.body().deserialize::<bool>() {
                Ok(true) => {
                    self.asleep = true;
                    return Some(PowerEvent::WillSleep);
                }
                Ok(false) => {
                    self.asleep = false;
                    self.refused_at = None;
                    return Some(PowerEvent::Woke);
                }
                Err(e) => tracing::debug!(error = %e, "PrepareForSleep without a boolean: ignored"),
            }
        }
    }

    pub(crate) fn ready_to_sleep(&mut self) {
        // Closing our only copy of the fd is what logind waits for.
        self.lock = None;
    }

    pub(crate) fn delays_sleep(&self) -> bool {
        self.lock.is_some()
    }

    /// `Manager.Inhibit(sleep, netsky, .., delay)`: the lock's fd, close-on-exec.
    async fn take_lock(&self) -> Result<OwnedFd, LockError> {
        let call = self.manager.call::<_, _, zbus::OwnedFd>("Inhibit", &INHIBIT);
        let fd: OwnedFd = match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Err(_) => return Err(LockError::Timeout),
            Ok(r) => r.map_err(LockError::Bus)?.into(),
        };
        // zbus takes fds in without close-on-exec; a child process (tmux, git)
        // must not inherit the lock and hold the sleep up after we let go.
        set_cloexec(&fd);
        Ok(fd)
    }

    fn refused(&mut self, e: LockError) {
        self.refused_at = Some(Instant::now());
        let e = match e {
            LockError::Timeout => format!("no answer within {} s", CALL_TIMEOUT.as_secs()),
            LockError::Bus(z) => z.to_string(),
        };
        tracing::warn!(error = %e, "systemd-logind gave no sleep delay lock: the machine may sleep before the node says so");
    }
}

enum LockError {
    Timeout,
    Bus(zbus::Error),
}

fn set_cloexec(fd: &OwnedFd) {
    // SAFETY: fcntl on an fd we own, with integer arguments only.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFD);
        if flags >= 0 {
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, flags | libc::FD_CLOEXEC);
        }
    }
}

/// No system bus here at all (no socket, nobody listening on it).
fn no_bus(e: &zbus::Error) -> bool {
    let gone = |io: &std::io::Error| {
        matches!(io.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused)
    };
    match e {
        zbus::Error::Connection(io, _) | zbus::Error::InputOutput(io) => gone(io),
        _ => false,
    }
}

/// A system bus without logind on it (a container, a minimal server).
fn no_logind(e: &zbus::Error) -> bool {
    match e {
        zbus::Error::FDO(f) => {
            matches!(**f, zbus::fdo::Error::ServiceUnknown(_) | zbus::fdo::Error::NameHasNoOwner(_))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn no_system_bus_is_no_notice_not_an_error() {
        let dir = std::env::temp_dir().join(format!("netsky-power-nobus-{}", std::process::id()));
        // SAFETY: the only test in this binary that reads or writes the environment.
        unsafe { std::env::set_var("DBUS_SYSTEM_BUS_ADDRESS", format!("unix:path={}/bus", dir.display())) };
        let watch = Watch::start().await;
        assert!(matches!(watch, Ok(None)), "{:?}", watch.err());
    }
}
