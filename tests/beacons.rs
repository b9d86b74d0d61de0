//! End-to-end tests of health beacons: real daemons on loopback, a beacon a second.

mod common;

use std::time::Duration;

use common::{TestHome, TestMesh, edit_config, file_leg, json_lines, set_legs, unsafe_kill, wait_for};

const T: Duration = Duration::from_secs(30);
const SIGSTOP: i32 = 19;
const SIGCONT: i32 = 18;

/// studio (root, ticking every second, its owner leg a file), laptop and
/// desk, each beaconing every second; returns the mesh and the leg's file.
fn beaconing_mesh() -> (TestMesh, std::path::PathBuf) {
    let mut m = TestMesh::new(&["studio", "laptop", "desk"]);
    // Members first, so their leaving beacons reach the root: nobody is paged for the restart.
    for n in ["desk", "laptop", "studio"] {
        m.stop(n);
        edit_config(m.home(n), &[("beacon_interval_s = 30", "beacon_interval_s = 1")]);
    }
    let root_pages = m.home("studio").join("pages.jsonl");
    edit_config(m.home("studio"), &[("tick_interval_s = 60", "tick_interval_s = 1")]);
    set_legs(m.home("studio"), &file_leg(&root_pages));
    for n in ["studio", "laptop", "desk"] {
        m.start(n);
    }
    (m, root_pages)
}

/// `name`'s row in `h`'s `mesh status`.
fn row(h: &TestHome, name: &str) -> serde_json::Value {
    let s = h.json(&["mesh", "status"]);
    s["members"].as_array().unwrap().iter().find(|m| m["name"] == name).cloned().unwrap()
}

#[test]
fn beacons_show_the_mesh_everywhere_a_silent_member_pages_once_and_a_leaving_one_never() {
    let (mut m, root_pages) = beaconing_mesh();
    // Every node's mesh status shows every node fresh, with its agents and version.
    for n in ["studio", "desk"] {
        wait_for(&format!("{n} to see every node fresh"), T, || {
            let rows: Vec<_> = ["studio", "laptop", "desk"].iter().map(|x| row(m.home(n), x)).collect();
            if rows
                .iter()
                .all(|r| r["beacon"] == "fresh" && r["agents_total"].is_u64() && r["version"].is_string())
            {
                Ok(())
            } else {
                Err(format!("{rows:?}"))
            }
        });
    }
    // The root keeps the history: one event per beacon, its figures as JSON, in meta.db.
    wait_for("beacon history in meta.db", T, || {
        let rows = m.home("studio").json(&["query", "select detail from events where event = 'beacon'"]);
        let rows = rows.as_array().cloned().unwrap_or_default();
        let from_laptop = rows
            .iter()
            .filter(|r| r["detail"].as_str().is_some_and(|d| d.contains("\"node\":\"laptop\"")))
            .count();
        if from_laptop >= 2 { Ok(()) } else { Err(format!("{rows:?}")) }
    });
    // laptop stops answering (SIGSTOP): suspect after 3 intervals, one page.
    let laptop_pid = m.daemons[1].as_ref().unwrap().child.id();
    unsafe_kill(laptop_pid, SIGSTOP);
    let silent = |p: &serde_json::Value| p["subject"] == "node laptop is silent";
    assert!(!json_lines(&root_pages).iter().any(silent), "paged before the silence");
    wait_for("the silent page", T, || {
        let p = json_lines(&root_pages);
        if p.iter().any(silent) { Ok(()) } else { Err(format!("{p:?}")) }
    });
    assert_eq!(row(m.home("studio"), "laptop")["beacon"], "suspect");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(json_lines(&root_pages).iter().filter(|p| silent(p)).count(), 1, "paged more than once");
    // Back (SIGCONT): recovered after 3 beacons in a row, and the owner is told how long it was away.
    unsafe_kill(laptop_pid, SIGCONT);
    wait_for("the owner told laptop is back", T, || {
        let p = json_lines(&root_pages);
        let back = p.iter().any(|p| {
            p["kind"] == "message"
                && p["body"].as_str().is_some_and(|b| b.starts_with("node laptop is back after"))
        });
        if back { Ok(()) } else { Err(format!("{p:?}")) }
    });
    let r = row(m.home("studio"), "laptop");
    let view = std::fs::read_to_string(m.home("studio").join("state/mesh-health.json")).unwrap();
    assert_eq!(r["beacon"], "fresh", "{r}\n{view}");
    let incidents = m.home("studio").json(&["escalate", "ls"]);
    let i = incidents
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["subject"] == "node laptop is silent")
        .unwrap()
        .clone();
    wait_for("the incident resolved", T, || {
        let all = m.home("studio").json(&["escalate", "ls"]);
        let st = all.as_array().unwrap().iter().find(|x| x["id"] == i["id"]).map(|x| x["state"].clone());
        if st == Some("resolved".into()) { Ok(()) } else { Err(format!("{all}")) }
    });
    // desk leaves cleanly: offline (announced), and nobody is paged.
    m.stop("desk");
    wait_for("desk offline at the root", T, || {
        let r = row(m.home("studio"), "desk");
        if r["beacon"] == "offline" { Ok(()) } else { Err(r.to_string()) }
    });
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        !json_lines(&root_pages).iter().any(|p| p["subject"] == "node desk is silent"),
        "a leaving node paged"
    );
}

#[test]
fn a_node_that_says_it_sleeps_or_is_snoozed_goes_silent_without_a_page() {
    let (mut m, root_pages) = beaconing_mesh();
    wait_for("laptop and desk fresh at the root", T, || {
        let (l, d) = (row(m.home("studio"), "laptop"), row(m.home("studio"), "desk"));
        if l["beacon"] == "fresh" && d["beacon"] == "fresh" { Ok(()) } else { Err(format!("{l} {d}")) }
    });
    // desk is allowed to be away for an hour (asked from laptop, kept by the root).
    m.home("laptop").ok(&["mesh", "snooze", "desk", "1h"]);
    wait_for("the root to hold the snooze", T, || {
        let s = std::fs::read_to_string(m.home("studio").join("state/snoozes.json")).unwrap_or_default();
        if s.contains("desk") { Ok(()) } else { Err(s) }
    });
    // laptop's machine sleeps: it says so, then goes quiet (no leaving beacon from a kill -9).
    m.kill9("laptop");
    let v = m.home("laptop").json(&["node", "sleep"]);
    assert_eq!(v["announced"], true, "{v}");
    m.kill9("desk");
    wait_for("laptop offline (announced) at the root", T, || {
        let r = row(m.home("studio"), "laptop");
        if r["beacon"] == "offline" { Ok(()) } else { Err(r.to_string()) }
    });
    // Well past 3 intervals: nobody is paged.
    std::thread::sleep(Duration::from_secs(6));
    let p = json_lines(&root_pages);
    assert!(p.is_empty(), "paged for an announced or snoozed silence: {p:?}");
    assert_ne!(row(m.home("studio"), "desk")["beacon"], "suspect", "a snoozed node is not suspect");
}

/// One raw HTTP/1.1 request to `addr`; returns the status code and the body.
fn http(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

#[test]
fn the_status_page_shows_the_mesh_read_only_and_renders_in_a_real_browser() {
    let mut m = TestMesh::new(&["studio", "laptop"]);
    for n in ["laptop", "studio"] {
        m.stop(n);
        edit_config(m.home(n), &[("beacon_interval_s = 30", "beacon_interval_s = 1")]);
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    edit_config(m.home("studio"), &[("mdns = false", &format!("mdns = false\nhttp = \"{addr}\""))]);
    m.start("studio");
    m.start("laptop");
    let (code, page) = http(addr, "GET", "/");
    assert_eq!(code, 200);
    assert!(page.contains("<title>netsky status</title>"), "{page}");
    let view = wait_for("both nodes in /api/mesh", T, || {
        let (code, body) = http(addr, "GET", "/api/mesh");
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("{code} {e}: {body}"))?;
        // Fresh ones: the view on disk may still hold the leaving beacons from before the restart.
        let fresh = |n: &str| v["view"]["nodes"][n]["leaving"] == false;
        if fresh("laptop") && fresh("studio") { Ok(v) } else { Err(v.to_string()) }
    });
    assert_eq!(view["view"]["root"], "studio", "{view}");
    // Read-only, and nothing outside it.
    assert_eq!(http(addr, "POST", "/api/mesh").0, 405);
    assert_eq!(http(addr, "DELETE", "/").0, 405);
    assert_eq!(http(addr, "GET", "/../../etc/passwd").0, 404);
    assert_eq!(http(addr, "GET", "/api/mesh/../../config.toml").0, 404);
    // A real browser runs the page's script and shows each node's state.
    let profile = tempfile::tempdir().unwrap();
    let o = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("http://{addr}/"))
        .output()
        .expect("chromium (apt install chromium; .ci/run does)");
    let dom = String::from_utf8_lossy(&o.stdout);
    assert!(
        dom.contains("<td>laptop</td>") && dom.contains("class=\"fresh\""),
        "the script did not render the nodes:\n{dom}"
    );
    assert!(dom.contains("(root studio)"), "{dom}");
}

#[test]
fn the_beacon_bench_runs_small_and_reports_its_figures() {
    let h = TestHome::init("bench");
    let dir = h.join("scratch");
    std::fs::create_dir(&dir).unwrap();
    let r = h.json(&["bench", "beacons", "--dir", dir.to_str().unwrap(), "--nodes", "5", "--rounds", "2"]);
    for f in [
        "beacon_bytes",
        "view_bytes",
        "cpu_per_beacon_us",
        "round_p50_ms",
        "converge_first_ms",
        "converge_next_ms",
        "root_rss_idle_kb",
        "root_rss_after_kb",
    ] {
        assert!(r[f].as_f64().is_some_and(|x| x > 0.0), "{f} in {r}");
    }
    assert!(r["view_bytes"].as_u64() > r["beacon_bytes"].as_u64(), "the view holds every member: {r}");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "the scratch folder is left behind");
}

#[test]
fn a_node_silent_outside_its_active_hours_pages_nobody() {
    // A window that excludes now, in this machine's local time (the daemons' too).
    let now =
        String::from_utf8(std::process::Command::new("date").arg("+%H").output().unwrap().stdout).unwrap();
    let h: u32 = now.trim().parse().unwrap();
    let window = format!("{:02}:00-{:02}:00", (h + 2) % 24, (h + 3) % 24);
    let mut m = TestMesh::new(&["studio", "laptop"]);
    m.stop("laptop");
    m.stop("studio");
    for n in ["studio", "laptop"] {
        edit_config(m.home(n), &[("beacon_interval_s = 30", "beacon_interval_s = 1")]);
    }
    edit_config(m.home("laptop"), &[("mdns = false", &format!("mdns = false\nactive_hours = \"{window}\""))]);
    let root_pages = m.home("studio").join("pages.jsonl");
    set_legs(m.home("studio"), &file_leg(&root_pages));
    m.start("studio");
    m.start("laptop");
    wait_for("laptop fresh, with its active hours", T, || {
        let v: serde_json::Value = serde_json::from_slice(
            &std::fs::read(m.home("studio").join("state/mesh-health.json")).map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
        let l = &v["nodes"]["laptop"];
        if l["leaving"] == false && l["active"]["hours"].is_object() { Ok(()) } else { Err(v.to_string()) }
    });
    m.kill9("laptop");
    std::thread::sleep(Duration::from_secs(6));
    let p = json_lines(&root_pages);
    assert!(p.is_empty(), "paged outside the node's active hours ({window}): {p:?}");
    assert_ne!(row(m.home("studio"), "laptop")["beacon"], "suspect");
}

#[test]
fn a_member_whose_clock_runs_two_minutes_ahead_stays_fresh_and_shows_its_skew() {
    let lib = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .expect("libfaketime (apt install faketime; .ci/run does)");
    let mut m = TestMesh::new(&["studio", "laptop"]);
    m.stop("laptop");
    m.stop("studio");
    for n in ["studio", "laptop"] {
        edit_config(m.home(n), &[("beacon_interval_s = 30", "beacon_interval_s = 1")]);
    }
    m.start("studio");
    // laptop's daemon lives two minutes ahead of the root (within the 5-minute window).
    m.daemons[1] = Some(m.home("laptop").start_with(&[("LD_PRELOAD", lib), ("FAKETIME", "+120s")]));
    let r = wait_for("laptop fresh, its skew measured", T, || {
        let r = row(m.home("studio"), "laptop");
        let skew = r["clock_skew_s"].as_f64().unwrap_or(0.0);
        if r["beacon"] == "fresh" && (100.0..140.0).contains(&skew) { Ok(r) } else { Err(r.to_string()) }
    });
    // Past 3 intervals: still fresh (staleness is judged by when the root received it).
    std::thread::sleep(Duration::from_secs(4));
    let later = row(m.home("studio"), "laptop");
    assert_eq!(later["beacon"], "fresh", "{r} then {later}");
}

#[test]
fn the_status_page_shows_a_node_turn_stale_without_a_reload() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/support/status_page_watch.mjs");
    let mut m = TestMesh::new(&["studio", "laptop"]);
    for n in ["laptop", "studio"] {
        m.stop(n);
        edit_config(m.home(n), &[("beacon_interval_s = 30", "beacon_interval_s = 1")]);
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    edit_config(m.home("studio"), &[("mdns = false", &format!("mdns = false\nhttp = \"127.0.0.1:{port}\""))]);
    m.start("studio");
    m.start("laptop");
    // A real browser (playwright-core driving Debian chromium; .ci/run installs both).
    let mut watch = std::process::Command::new("node")
        .args([script, &format!("http://127.0.0.1:{port}/"), "laptop"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node (with tests/support's playwright-core: npm install --prefix tests/support)");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(watch.stdout.take().unwrap()));
    assert_eq!(
        lines.next().and_then(Result::ok).as_deref(),
        Some("fresh"),
        "the page never showed laptop fresh"
    );
    // laptop goes silent: the page, never reloaded, turns it suspect.
    unsafe_kill(m.daemons[1].as_ref().unwrap().child.id(), SIGSTOP);
    let seen = lines.next().and_then(Result::ok);
    let status = watch.wait().unwrap();
    unsafe_kill(m.daemons[1].as_ref().unwrap().child.id(), SIGCONT);
    assert_eq!(seen.as_deref(), Some("suspect"), "{status}");
    assert!(status.success(), "{status}");
}
