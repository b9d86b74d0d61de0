//! What can go wrong while subscribing to the OS's power notices.

/// A failure to subscribe; the caller runs on without sleep notices.
#[derive(Debug, thiserror::Error)]
pub enum PowerError {
    /// The D-Bus system bus (at `address`) could not be reached or answered wrongly.
    #[error("power: the system bus at {address}: {reason}")]
    Bus {
        /// The bus address tried (`DBUS_SYSTEM_BUS_ADDRESS`, or the default socket).
        address: String,
        /// What failed.
        reason: String,
    },
    /// systemd-logind refused or failed a call (`call`).
    #[error("power: systemd-logind {call}: {reason}")]
    Logind {
        /// The method or subscription that failed.
        call: &'static str,
        /// Its error.
        reason: String,
    },
    /// IOKit would not register this process for system power notices.
    #[error("power: IORegisterForSystemPower returned no root power domain port")]
    Register,
    /// The thread that hears IOKit's notices could not start, or did not report back.
    #[error("power: the IOKit notice thread: {0}")]
    Thread(String),
}
