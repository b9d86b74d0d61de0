//! End-to-end across real network namespaces: two nodes on two "hosts"
//! joined by a veth link that the test cuts and heals.
//!
//! Needs root and iproute2 (CI has both); elsewhere it says so and passes
//! without running.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{TestHome, wait_for};

const T: Duration = Duration::from_secs(60);

/// Two namespaces and a veth pair between them, removed on drop.
struct Link {
    a: String,
    b: String,
    subnet: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let o = Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!("ip {args:?}: {}", String::from_utf8_lossy(&o.stderr)))
    }
}

impl Link {
    fn new() -> Result<Link, String> {
        let id = std::process::id() % 200 + 20;
        let (a, b) = (format!("nsky{id}a"), format!("nsky{id}b"));
        let subnet = format!("10.{}.{}", 77, id);
        let l = Link { a: a.clone(), b: b.clone(), subnet: subnet.clone() };
        let (va, vb) = (format!("vn{id}a"), format!("vn{id}b"));
        ip(&["netns", "add", &a])?;
        ip(&["netns", "add", &b])?;
        ip(&["link", "add", &va, "netns", &a, "type", "veth", "peer", "name", &vb, "netns", &b])?;
        for (ns, dev, host) in [(&a, &va, 1), (&b, &vb, 2)] {
            ip(&["-n", ns, "addr", "add", &format!("{subnet}.{host}/24"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(l)
    }

    fn dev(&self, ns: &str) -> String {
        let id = &ns[4..ns.len() - 1];
        format!("vn{id}{}", &ns[ns.len() - 1..])
    }

    fn set(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        for ns in [&self.a, &self.b] {
            ip(&["-n", ns, "link", "set", &self.dev(ns), state]).unwrap();
        }
    }

    /// `netsky --home HOME args` inside namespace `ns`.
    fn netsky(&self, ns: &str, h: &TestHome, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, common::exe(), "--home"]).arg(h.path()).args(args);
        c
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.a]);
        let _ = ip(&["netns", "del", &self.b]);
    }
}

fn set_listen(h: &TestHome, addr: &str) {
    let cfg = h.join("config.toml");
    let text = std::fs::read_to_string(&cfg).unwrap().replace("127.0.0.1:0", addr);
    std::fs::write(cfg, text).unwrap();
}

fn ok(mut c: Command) -> String {
    let o = c.output().unwrap();
    assert!(o.status.success(), "{c:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        common::unsafe_kill(self.0.id(), 15);
        let _ = self.0.wait();
    }
}

#[test]
fn a_partition_between_two_hosts_heals_and_everything_arrives_once_in_order() {
    let link = match Link::new() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("skipped: cannot make network namespaces here ({e})");
            return;
        }
    };
    let (sa, sb) = (format!("{}.1", link.subnet), format!("{}.2", link.subnet));
    let studio = TestHome::init("studio");
    let laptop = TestHome::init("laptop");
    set_listen(&studio, &format!("{sa}:0"));
    set_listen(&laptop, &format!("{sb}:0"));
    studio.ok(&["mesh", "init", "--mesh", "home"]);
    let run = |ns: &str, h: &TestHome| {
        let err = std::fs::File::create(h.join("daemon.err")).unwrap();
        let child = link
            .netsky(ns, h, &["--json", "node", "run"])
            .env("RUST_LOG", "netsky_mesh=debug,info")
            .stdout(std::process::Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap();
        let st = h.join("state/node.json");
        wait_for("the daemon to run", T, || {
            let s = std::fs::read_to_string(&st).unwrap_or_default();
            if s.contains("\"running\": true") { Ok(()) } else { Err(s) }
        });
        Kill(child)
    };
    let _a = run(&link.a, &studio);
    let ticket = studio.ok(&["mesh", "invite", "laptop"]).trim().to_string();
    assert!(ticket.starts_with("netsky1"));
    ok(link.netsky(&link.b, &laptop, &["mesh", "join", &ticket]));
    let _b = run(&link.b, &laptop);
    wait_for("laptop's address in studio's charter", T, || {
        let c = studio.json(&["mesh", "charter"]);
        if c.to_string().contains(&sb) { Ok(()) } else { Err(c.to_string()) }
    });
    // The link works: one message each way.
    ok(link.netsky(&link.b, &laptop, &["channel", "send", "agent1@studio", "before", "--wait"]));
    ok(link.netsky(&link.a, &studio, &["channel", "send", "agent1@laptop", "before", "--wait"]));

    link.set(false);
    for i in 0..10 {
        ok(link.netsky(&link.b, &laptop, &["channel", "send", "agent1@studio", &format!("cut {i}")]));
        ok(link.netsky(&link.a, &studio, &["channel", "send", "agent1@laptop", &format!("cut {i}")]));
    }
    let id = studio.files("mesh/outbox")[0].trim_end_matches(".json").to_string();
    wait_for("studio to see laptop unreachable", T, || {
        let s = studio.json(&["channel", "status", &id]);
        if s["detail"].as_str().unwrap_or("").contains("unreachable") { Ok(()) } else { Err(s.to_string()) }
    });
    assert_eq!(studio.files("mesh/outbox").len(), 10, "nothing crossed the cut link");
    assert_eq!(laptop.files("mesh/outbox").len(), 10);

    link.set(true);
    wait_for("both outboxes to empty", T, || {
        let (x, y) = (studio.files("mesh/outbox").len(), laptop.files("mesh/outbox").len());
        if x + y == 0 { Ok(()) } else { Err(format!("studio {x}, laptop {y} queued")) }
    });
    let mut want = vec!["before".to_string()];
    want.extend((0..10).map(|i| format!("cut {i}")));
    assert_eq!(studio.drain_texts("agent1"), want);
    assert_eq!(laptop.drain_texts("agent1"), want);
}
