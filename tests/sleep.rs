//! End-to-end tests of the OS's own sleep notice: a private `dbus-daemon`
//! stands in for the system bus, a fake systemd-logind on it (in this test,
//! with zbus) hands out delay locks as pipes and emits `PrepareForSleep`, and
//! real daemons beacon every second.

mod common;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::Duration;

use common::{TestHome, TestMesh, edit_config, file_leg, json_lines, set_legs, wait_for};

const T: Duration = Duration::from_secs(30);

/// A `dbus-daemon` of the test's own on a socket in its temp dir, killed on drop.
struct PrivateBus {
    child: Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl PrivateBus {
    fn start() -> PrivateBus {
        let dir = tempfile::Builder::new().prefix("netsky-bus-").tempdir().expect("temp dir");
        // Everything allowed, on one unix socket: a system bus for this test only.
        let config = format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={}/system_bus_socket</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>
"#,
            dir.path().display()
        );
        let conf = dir.path().join("bus.conf");
        std::fs::write(&conf, config).unwrap();
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", conf.display()))
            .args(["--nofork", "--nopidfile", "--print-address"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon (apt install dbus-daemon)");
        let mut out = child.stdout.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            while out.read(&mut byte).is_ok_and(|n| n == 1) && byte[0] != b'\n' {
                line.push(byte[0]);
            }
            let _ = tx.send(String::from_utf8_lossy(&line).into_owned());
        });
        let address = rx.recv_timeout(T).unwrap_or_default();
        assert!(address.starts_with("unix:"), "dbus-daemon printed no address: {address:?}");
        PrivateBus { child, address, _dir: dir }
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One delay lock the fake handed out: its arguments, and word when its every copy is closed.
struct Lock {
    args: (String, String, String, String),
    closed: Receiver<()>,
}

impl Lock {
    fn wait_closed(&self, what: &str) {
        self.closed.recv_timeout(T).unwrap_or_else(|_| panic!("{what}: the lock was not released"));
    }
}

/// `org.freedesktop.login1.Manager` as far as netsky uses it.
struct Manager {
    locks: Sender<Lock>,
}

#[zbus::interface(name = "org.freedesktop.login1.Manager")]
impl Manager {
    /// A lock is one end of a pipe: the other end reads EOF once every copy of it is closed.
    fn inhibit(&self, what: &str, who: &str, why: &str, mode: &str) -> zbus::fdo::Result<zbus::OwnedFd> {
        let (mut reader, writer) = std::io::pipe().map_err(|e| zbus::fdo::Error::Failed(e.to_string()))?;
        let (closed_tx, closed) = channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 16];
            while reader.read(&mut buf).is_ok_and(|n| n > 0) {}
            let _ = closed_tx.send(());
        });
        let args = (what.to_string(), who.to_string(), why.to_string(), mode.to_string());
        let _ = self.locks.send(Lock { args, closed });
        Ok(std::os::fd::OwnedFd::from(writer).into())
    }
}

/// A fake systemd-logind on the private bus, on a runtime of its own (dropped with it).
struct FakeLogind {
    rt: tokio::runtime::Runtime,
    conn: zbus::Connection,
    locks: Receiver<Lock>,
}

impl FakeLogind {
    fn start(address: &str) -> FakeLogind {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let (tx, locks) = channel();
        let conn = rt.block_on(async {
            let built = zbus::connection::Builder::address(address)
                .name("org.freedesktop.login1")
                .serve_at("/org/freedesktop/login1", Manager { locks: tx })
                .build();
            tokio::time::timeout(T, built).await.expect("the fake logind connects in time")
        });
        FakeLogind { rt, conn: conn.expect("the fake logind owns org.freedesktop.login1"), locks }
    }

    /// `PrepareForSleep(start)`, as logind emits it before a sleep (`true`) and after (`false`).
    fn prepare_for_sleep(&self, start: bool) {
        let emit = self.conn.emit_signal(
            None::<&str>,
            "/org/freedesktop/login1",
            "org.freedesktop.login1.Manager",
            "PrepareForSleep",
            &start,
        );
        self.rt.block_on(async { tokio::time::timeout(T, emit).await }).expect("emitted in time").unwrap();
    }

    /// The next lock a client takes.
    fn next_lock(&self, what: &str) -> Lock {
        self.locks.recv_timeout(T).unwrap_or_else(|_| panic!("{what}: no delay lock was taken"))
    }
}

/// `name`'s row in `h`'s `mesh status`.
fn row(h: &TestHome, name: &str) -> serde_json::Value {
    let s = h.json(&["mesh", "status"]);
    s["members"].as_array().unwrap().iter().find(|m| m["name"] == name).cloned().unwrap()
}

/// How many events `what` are in `h`'s logs.
fn count(h: &TestHome, what: &str) -> usize {
    h.events().iter().filter(|(e, _, _)| e == what).count()
}

/// Beacons the root took from itself: one a round, each round followed by its check for silence.
fn root_rounds(h: &TestHome) -> usize {
    h.events()
        .iter()
        .filter(|(e, _, d)| e == "beacon" && d.contains(&format!("\"node\":\"{}\"", h.name)))
        .count()
}

#[test]
fn the_os_sleep_notice_announces_the_node_offline_without_a_page_and_a_wake_brings_it_back() {
    let bus = PrivateBus::start();
    let logind = FakeLogind::start(&bus.address);
    let mut m = TestMesh::new(&["studio", "laptop"]);
    for n in ["laptop", "studio"] {
        m.stop(n);
        edit_config(m.home(n), &[("beacon_interval_s = 30", "beacon_interval_s = 1")]);
    }
    let root_pages = m.home("studio").join("pages.jsonl");
    edit_config(m.home("studio"), &[("tick_interval_s = 60", "tick_interval_s = 1")]);
    set_legs(m.home("studio"), &file_leg(&root_pages));
    m.start("studio");
    // Only laptop's daemon hears the private bus as its system bus.
    m.daemons[1] = Some(m.home("laptop").start_with(&[("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)]));
    let (studio, laptop) = (m.home("studio"), m.home("laptop"));

    // laptop holds a sleep delay lock while awake, and is fresh at the root.
    let first = logind.next_lock("at start");
    assert_eq!(
        first.args,
        ("sleep".into(), "netsky".into(), "announce the node as leaving".into(), "delay".into())
    );
    wait_for("laptop fresh at the root", T, || {
        let r = row(studio, "laptop");
        if r["beacon"] == "fresh" { Ok(()) } else { Err(r.to_string()) }
    });

    // The OS is about to sleep: laptop announces itself, then lets the lock go.
    logind.prepare_for_sleep(true);
    first.wait_closed("after the first sleep notice");
    // Released only after the root took the leaving beacon.
    assert_eq!(row(studio, "laptop")["beacon"], "offline", "the lock was released before the announcement");
    wait_for("sleep-notice in laptop's log", T, || {
        if count(laptop, "sleep-notice") == 1 { Ok(()) } else { Err(format!("{:?}", laptop.events())) }
    });

    // It wakes: recorded, the lock taken again, fresh at the root at once.
    logind.prepare_for_sleep(false);
    let second = logind.next_lock("after waking");
    assert_eq!(second.args.3, "delay");
    wait_for("woke in laptop's log, laptop fresh at the root", T, || {
        let r = row(studio, "laptop");
        if count(laptop, "woke") == 1 && r["beacon"] == "fresh" { Ok(()) } else { Err(r.to_string()) }
    });

    // It sleeps again, and this time the machine really goes (kill -9: no goodbye from the daemon).
    logind.prepare_for_sleep(true);
    second.wait_closed("after the second sleep notice");
    assert_eq!(row(studio, "laptop")["beacon"], "offline");
    wait_for("the second sleep-notice in laptop's log", T, || {
        if count(laptop, "sleep-notice") == 2 { Ok(()) } else { Err(format!("{:?}", laptop.events())) }
    });
    // The machine takes a few seconds to go: laptop's daemon, still running, beacons no more.
    let before = root_rounds(studio);
    wait_for("three more rounds at the root before the machine sleeps", T, || {
        let now = root_rounds(studio);
        if now >= before + 3 { Ok(()) } else { Err(format!("{now} rounds, {before} before")) }
    });
    assert_eq!(row(studio, "laptop")["beacon"], "offline", "a beacon after the announcement undid it");
    m.kill9("laptop");
    let studio = m.home("studio");

    // The root checks for silence every round: 6 more rounds is well past 3 silent intervals.
    let before = root_rounds(studio);
    wait_for("six more rounds at the root", T, || {
        let now = root_rounds(studio);
        if now >= before + 6 { Ok(()) } else { Err(format!("{now} rounds, {before} before")) }
    });
    let r = row(studio, "laptop");
    assert_eq!(r["beacon"], "offline", "{r}");
    assert!(r["last_beacon_age_s"].as_u64().is_some_and(|a| a >= 4), "not silent long enough yet: {r}");
    let pages = json_lines(&root_pages);
    assert!(pages.is_empty(), "paged for an announced sleep: {pages:?}");
    let incidents = studio.json(&["escalate", "ls"]);
    assert!(
        !incidents.as_array().unwrap().iter().any(|i| i["subject"] == "node laptop is silent"),
        "an incident for an announced sleep: {incidents}"
    );
}
