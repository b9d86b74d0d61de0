//! macOS: IOKit's system power notifications, through a small `extern "C"` block.
//!
//! A thread of its own (owned by the watch, stopped and joined on drop)
//! registers with `IORegisterForSystemPower` and runs a CoreFoundation run
//! loop with the notification port's source. Its callback answers
//! `kIOMessageCanSystemSleep` at once (netsky never vetoes an idle sleep),
//! passes `kIOMessageSystemWillSleep` on as [`PowerEvent::WillSleep`] with its
//! notification id, which [`Watch::ready_to_sleep`] hands back through
//! `IOAllowPowerChange` (without it IOKit waits 30 s), and passes
//! `kIOMessageSystemHasPoweredOn` on as [`PowerEvent::Woke`].
//!
//! The signatures and constants are those of Apple's `IOKit/pwr_mgt/IOPMLib.h`,
//! `IOKit/IOMessage.h` and `CoreFoundation/CFRunLoop.h`. This code is compiled
//! and linted for aarch64-apple-darwin in CI, but has not been run on a Mac.

use std::ffi::c_void;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::{PowerError, PowerEvent};

type IoObject = u32;
type IoConnect = u32;
type IoService = u32;
type IoReturn = i32;
type NotificationPort = *mut c_void;
type CfRunLoop = *mut c_void;
type CfRunLoopSource = *mut c_void;
type CfString = *const c_void;

/// `IOServiceInterestCallback`.
type InterestCallback =
    extern "C" fn(refcon: *mut c_void, service: IoService, message_type: u32, argument: *mut c_void);

#[link(name = "IOKit", kind = "framework")]
unsafe extern "C" {
    fn IORegisterForSystemPower(
        refcon: *mut c_void,
        the_port_ref: *mut NotificationPort,
        callback: InterestCallback,
        notifier: *mut IoObject,
    ) -> IoConnect;
    fn IODeregisterForSystemPower(notifier: *mut IoObject) -> IoReturn;
    fn IOAllowPowerChange(kernel_port: IoConnect, notification_id: isize) -> IoReturn;
    fn IONotificationPortGetRunLoopSource(notify: NotificationPort) -> CfRunLoopSource;
    fn IONotificationPortDestroy(notify: NotificationPort);
    fn IOServiceClose(connect: IoConnect) -> IoReturn;
}

#[link(name = "CoreFoundation", kind = "framework")]
unsafe extern "C" {
    static kCFRunLoopDefaultMode: CfString;
    fn CFRunLoopGetCurrent() -> CfRunLoop;
    fn CFRunLoopAddSource(rl: CfRunLoop, source: CfRunLoopSource, mode: CfString);
    fn CFRunLoopRemoveSource(rl: CfRunLoop, source: CfRunLoopSource, mode: CfString);
    fn CFRunLoopRunInMode(mode: CfString, seconds: f64, return_after_source_handled: u8) -> i32;
    fn CFRunLoopStop(rl: CfRunLoop);
}

/// `iokit_common_msg(x)` is `sys_iokit | sub_iokit_common | x`, and `sys_iokit` is `0x38 << 26`.
const fn iokit_common_msg(message: u32) -> u32 {
    (0x38 << 26) | message
}
const CAN_SYSTEM_SLEEP: u32 = iokit_common_msg(0x270);
const SYSTEM_WILL_SLEEP: u32 = iokit_common_msg(0x280);
const SYSTEM_HAS_POWERED_ON: u32 = iokit_common_msg(0x300);

/// Notices waiting for the caller; a full queue answers IOKit at once instead.
const QUEUE: usize = 8;
/// The longest the run loop runs before it looks at the stop flag again.
const RUN_SLICE_S: f64 = 1.0;

enum Notice {
    WillSleep(isize),
    Woke,
}

/// What the callback reaches through its refcon; lives as long as the thread's registration.
struct Shared {
    tx: mpsc::Sender<Notice>,
    root_port: AtomicU32,
}

/// The run loop of the notice thread; `CFRunLoopStop` may be called from any thread.
struct RunLoop(CfRunLoop);
// SAFETY: only used for CFRunLoopStop, which Apple documents as thread-safe.
unsafe impl Send for RunLoop {}

pub(crate) struct Watch {
    rx: mpsc::Receiver<Notice>,
    root_port: IoConnect,
    /// The notification id of a sleep that waits for us.
    pending: Option<isize>,
    stop: Arc<AtomicBool>,
    run_loop: RunLoop,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watch {
    pub(crate) async fn start() -> Result<Option<Watch>, PowerError> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("power-notices".into())
            .spawn(move || notice_thread(tx, ready_tx, thread_stop))
            .map_err(|e| PowerError::Thread(e.to_string()))?;
        let (root_port, run_loop) = match tokio::time::timeout(Duration::from_secs(5), ready_rx).await {
            Ok(Ok(Ok(ready))) => ready,
            Ok(Ok(Err(e))) => return Err(e),
            Ok(Err(_)) => return Err(PowerError::Thread("it ended before it registered".into())),
            Err(_) => {
                // It may still register later: it stops at its first look at the flag.
                stop.store(true, Ordering::Release);
                return Err(PowerError::Thread("it did not register within 5 s".into()));
            }
        };
        Ok(Some(Watch { rx, root_port, pending: None, stop, run_loop, thread: Some(thread) }))
    }

    pub(crate) async fn next(&mut self) -> Option<PowerEvent> {
        match self.rx.recv().await? {
            Notice::WillSleep(id) => {
                // A second notice before the first was answered: the first is answered now.
                if let Some(old) = self.pending.replace(id) {
                    allow(self.root_port, old);
                }
                Some(PowerEvent::WillSleep)
            }
            Notice::Woke => Some(PowerEvent::Woke),
        }
    }

    pub(crate) fn ready_to_sleep(&mut self) {
        if let Some(id) = self.pending.take() {
            allow(self.root_port, id);
        }
    }

    pub(crate) fn delays_sleep(&self) -> bool {
        true
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        // Never leave a sleep waiting on a watch that is gone.
        self.ready_to_sleep();
        self.stop.store(true, Ordering::Release);
        // SAFETY: the run loop stays valid while its thread lives, and that thread is joined only below.
        unsafe { CFRunLoopStop(self.run_loop.0) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn allow(root_port: IoConnect, id: isize) {
    // SAFETY: a mach message to the root power domain; the port is open while the watch lives.
    unsafe { IOAllowPowerChange(root_port, id) };
}

type Ready = Result<(IoConnect, RunLoop), PowerError>;

/// Registers, runs the run loop until `stop`, then deregisters and frees what it made.
fn notice_thread(
    tx: mpsc::Sender<Notice>,
    ready: tokio::sync::oneshot::Sender<Ready>,
    stop: Arc<AtomicBool>,
) {
    let shared = Box::into_raw(Box::new(Shared { tx, root_port: AtomicU32::new(0) }));
    let mut port: NotificationPort = std::ptr::null_mut();
    let mut notifier: IoObject = 0;
    // SAFETY: the out-pointers are valid locals; `shared` outlives the registration (freed below, after it).
    let root = unsafe { IORegisterForSystemPower(shared.cast(), &mut port, on_power, &mut notifier) };
    if root == 0 {
        // SAFETY: never registered, so nothing else holds `shared`.
        drop(unsafe { Box::from_raw(shared) });
        let _ = ready.send(Err(PowerError::Register));
        return;
    }
    // SAFETY: `shared` is valid until freed at the end of this function.
    unsafe { (*shared).root_port.store(root, Ordering::Release) };
    // SAFETY: CoreFoundation calls on this thread's own run loop with the port IOKit just made.
    let (rl, source, mode) = unsafe {
        let rl = CFRunLoopGetCurrent();
        let source = IONotificationPortGetRunLoopSource(port);
        CFRunLoopAddSource(rl, source, kCFRunLoopDefaultMode);
        (rl, source, kCFRunLoopDefaultMode)
    };
    let _ = ready.send(Ok((root, RunLoop(rl))));
    while !stop.load(Ordering::Acquire) {
        // SAFETY: runs this thread's run loop for at most a slice; the callback runs in here.
        unsafe { CFRunLoopRunInMode(mode, RUN_SLICE_S, 0) };
    }
    // SAFETY: tear down in reverse order; no callback can run after the deregistration.
    unsafe {
        CFRunLoopRemoveSource(rl, source, mode);
        IODeregisterForSystemPower(&mut notifier);
        IOServiceClose(root);
        IONotificationPortDestroy(port);
        drop(Box::from_raw(shared));
    }
}

/// IOKit's callback, on the notice thread.
extern "C" fn on_power(refcon: *mut c_void, _service: IoService, message_type: u32, argument: *mut c_void) {
    // SAFETY: `refcon` is the `Shared` the notice thread registered, alive until it deregisters.
    let shared = unsafe { &*(refcon as *const Shared) };
    let root = shared.root_port.load(Ordering::Acquire);
    // The notification id travels in the argument pointer.
    let id = argument as isize;
    match message_type {
        // An idle sleep asks first: netsky never vetoes it.
        CAN_SYSTEM_SLEEP => allow(root, id),
        // The caller answers after its announcement; if it cannot hear now, answer at once.
        SYSTEM_WILL_SLEEP => {
            let heard = shared.tx.try_send(Notice::WillSleep(id));
            if heard.is_err() {
                allow(root, id);
            }
        }
        SYSTEM_HAS_POWERED_ON => {
            let _ = shared.tx.try_send(Notice::Woke);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_numbers_are_apple_s() {
        // IOMessage.h: sys_iokit = err_system(0x38) = 0x38 << 26; sub_iokit_common = 0.
        assert_eq!(CAN_SYSTEM_SLEEP, 0xE000_0270);
        assert_eq!(SYSTEM_WILL_SLEEP, 0xE000_0280);
        assert_eq!(SYSTEM_HAS_POWERED_ON, 0xE000_0300);
    }
}
