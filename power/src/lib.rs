//! The OS's own notice that this machine is about to sleep, and that it woke.
//!
//! A [`SleepWatch`] owns the one subscription this crate makes: to
//! systemd-logind over the D-Bus system bus on Linux (a `delay` inhibitor
//! lock held while awake, and the `PrepareForSleep` signal), to IOKit's
//! system power notifications on macOS (on a thread of its own that runs a
//! CoreFoundation run loop). It reports [`PowerEvent::WillSleep`] while the
//! OS still waits for this process, so the caller can say goodbye first and
//! then let the machine go with [`SleepWatch::ready_to_sleep`]; the OS waits
//! only a few seconds (logind's `InhibitDelayMaxSec`, IOKit's 30 s), so the
//! caller bounds what it does in between.
//!
//! It guarantees that whatever it holds (the inhibitor lock, the IOKit
//! registration and its thread) is let go when the watch is dropped, and that
//! a sleep is never held up past [`SleepWatch::ready_to_sleep`] or the drop.
//! It deliberately does not know what a beacon or a node is: announcing the
//! node is the daemon's job. Where the OS gives no notice (another OS, no
//! system bus, no logind), [`SleepWatch::start`] says so with `Ok(None)`.

mod error;
#[cfg(target_os = "macos")]
mod iokit;
#[cfg(target_os = "linux")]
mod logind;

pub use error::PowerError;

/// What the OS says about this machine's power.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerEvent {
    /// The machine is about to sleep; it waits for [`SleepWatch::ready_to_sleep`] (or a short bound).
    WillSleep,
    /// The machine woke from sleep.
    Woke,
}

#[cfg(target_os = "linux")]
type Inner = logind::Watch;
#[cfg(target_os = "macos")]
type Inner = iokit::Watch;
/// No notice on this OS: a watch never exists.
#[cfg(not(any(target_os = "linux", target_os = "macos")))]
enum Inner {}

/// A subscription to the OS's sleep and wake notices; dropping it lets go of everything it holds.
pub struct SleepWatch {
    inner: Inner,
}

impl std::fmt::Debug for SleepWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SleepWatch").field("source", &self.source()).finish()
    }
}

impl SleepWatch {
    /// Subscribes to the OS's notices: `Ok(None)` where it offers none here
    /// (another OS, no system bus, no logind on it). Call it from within a
    /// tokio runtime.
    pub async fn start() -> Result<Option<SleepWatch>, PowerError> {
        #[cfg(any(target_os = "linux", target_os = "macos"))]
        {
            Ok(Inner::start().await?.map(|inner| SleepWatch { inner }))
        }
        #[cfg(not(any(target_os = "linux", target_os = "macos")))]
        {
            Ok(None)
        }
    }

    /// The next notice; `None` once the OS's side is gone (the bus closed).
    /// Cancel-safe: a notice is never lost when this future is dropped
    /// unfinished (as in a `tokio::select!`).
    pub async fn next(&mut self) -> Option<PowerEvent> {
        #[cfg(any(target_os = "linux", target_os = "macos"))]
        {
            self.inner.next().await
        }
        #[cfg(not(any(target_os = "linux", target_os = "macos")))]
        {
            match self.inner {}
        }
    }

    /// After [`PowerEvent::WillSleep`]: this process is done, the machine may
    /// sleep now (logind's lock is released, IOKit's change is allowed). A
    /// no-op when no sleep is waiting.
    pub fn ready_to_sleep(&mut self) {
        #[cfg(any(target_os = "linux", target_os = "macos"))]
        self.inner.ready_to_sleep();
        #[cfg(not(any(target_os = "linux", target_os = "macos")))]
        match self.inner {}
    }

    /// Whether the OS will wait for [`SleepWatch::ready_to_sleep`] at the next
    /// sleep (on Linux: logind granted the delay lock; without it the notice
    /// still comes, but the machine may sleep before the caller is done).
    pub fn delays_sleep(&self) -> bool {
        #[cfg(any(target_os = "linux", target_os = "macos"))]
        {
            self.inner.delays_sleep()
        }
        #[cfg(not(any(target_os = "linux", target_os = "macos")))]
        match self.inner {}
    }

    /// Where the notices come from, for logs: `systemd-logind` or `IOKit`.
    pub fn source(&self) -> &'static str {
        #[cfg(target_os = "linux")]
        {
            "systemd-logind"
        }
        #[cfg(target_os = "macos")]
        {
            "IOKit"
        }
        #[cfg(not(any(target_os = "linux", target_os = "macos")))]
        match self.inner {}
    }
}
