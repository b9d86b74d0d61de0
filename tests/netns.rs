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
        // Unique per test in this process too: `cargo test` runs them side by side.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 2;
        let id = (std::process::id() % 110) * 2 + n + 20;
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

    /// Lets multicast out on the link (a LAN host has a default route; these have none).
    fn multicast(&self) -> Result<(), String> {
        for ns in [&self.a, &self.b] {
            ip(&["-n", ns, "route", "add", "224.0.0.0/4", "dev", &self.dev(ns)])?;
        }
        Ok(())
    }

    /// Moves `ns` from host number `old` to `new` on the link, as a DHCP renumbering would.
    fn renumber(&self, ns: &str, old: u8, new: u8) {
        let dev = self.dev(ns);
        // Removing the last address flushes the device's routes: put the multicast one back.
        ip(&["-n", ns, "addr", "del", &format!("{}.{old}/24", self.subnet), "dev", &dev]).unwrap();
        ip(&["-n", ns, "addr", "add", &format!("{}.{new}/24", self.subnet), "dev", &dev]).unwrap();
        ip(&["-n", ns, "route", "replace", "224.0.0.0/4", "dev", &dev]).unwrap();
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
        netsky_in(ns, h, args)
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
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text: String = text
        .lines()
        .map(|l| if l.starts_with("listen = ") { format!("listen = \"{addr}\"") } else { l.to_string() })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(cfg, text + "\n").unwrap();
}

fn set_mdns(h: &TestHome) {
    let cfg = h.join("config.toml");
    let text = std::fs::read_to_string(&cfg).unwrap().replace("mdns = false", "mdns = true");
    std::fs::write(cfg, text).unwrap();
}

/// `netsky --home HOME args` inside namespace `ns`.
fn netsky_in(ns: &str, h: &TestHome, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, common::exe(), "--home"]).arg(h.path()).args(args);
    c
}

/// Starts `netsky node run` for `h` in namespace `ns` and waits until it runs.
fn run(ns: &str, h: &TestHome) -> Kill {
    let err = std::fs::OpenOptions::new().create(true).append(true).open(h.join("daemon.err")).unwrap();
    let child = netsky_in(ns, h, &["--json", "node", "run"])
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
}

/// Without root there are no namespaces to make: say so and pass. As root
/// (CI), failing to make them is a failure, never a silent skip.
fn skip(e: &str) {
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    assert!(!root, "cannot make network namespaces as root: {e}");
    eprintln!("skipped: cannot make network namespaces here ({e})");
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
        Err(e) => return skip(&e),
    };
    let (sa, sb) = (format!("{}.1", link.subnet), format!("{}.2", link.subnet));
    let studio = TestHome::init("studio");
    let laptop = TestHome::init("laptop");
    set_listen(&studio, &format!("{sa}:0"));
    set_listen(&laptop, &format!("{sb}:0"));
    studio.ok(&["mesh", "init", "--mesh", "home"]);
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

#[test]
fn with_mdns_two_hosts_renumbered_at_once_find_each_other_again() {
    let link = match Link::new().and_then(|l| l.multicast().map(|()| l)) {
        Ok(l) => l,
        Err(e) => return skip(&e),
    };
    let studio = TestHome::init("studio");
    let laptop = TestHome::init("laptop");
    for h in [&studio, &laptop] {
        set_mdns(h);
    }
    set_listen(&studio, &format!("{}.1:0", link.subnet));
    set_listen(&laptop, &format!("{}.2:0", link.subnet));
    studio.ok(&["mesh", "init", "--mesh", "home"]);
    let a = run(&link.a, &studio);
    let ticket = studio.ok(&["mesh", "invite", "laptop"]).trim().to_string();
    ok(link.netsky(&link.b, &laptop, &["mesh", "join", &ticket]));
    let b = run(&link.b, &laptop);
    ok(link.netsky(&link.b, &laptop, &["channel", "send", "agent1@studio", "before", "--wait"]));
    // A ticket issued now names studio's address of now.
    let desk_ticket = studio.ok(&["mesh", "invite", "desk"]).trim().to_string();
    // Both machines get new addresses while their daemons are down: each
    // charter now names only addresses that no longer exist.
    drop((a, b));
    link.renumber(&link.a, 1, 11);
    link.renumber(&link.b, 2, 12);
    set_listen(&studio, &format!("{}.11:0", link.subnet));
    set_listen(&laptop, &format!("{}.12:0", link.subnet));
    let _a = run(&link.a, &studio);
    let _b = run(&link.b, &laptop);
    // mDNS finds them; laptop's hello then puts its new address in the charter.
    let new_b = format!("{}.12:", link.subnet);
    wait_for("laptop's new address in studio's charter", T, || {
        let c = studio.json(&["mesh", "charter"]);
        if c.to_string().contains(&new_b) { Ok(()) } else { Err(c.to_string()) }
    });
    ok(link.netsky(&link.b, &laptop, &["channel", "send", "agent1@studio", "after", "--wait"]));
    ok(link.netsky(&link.a, &studio, &["channel", "send", "agent1@laptop", "back", "--wait"]));
    assert_eq!(studio.drain_texts("agent1"), ["before", "after"]);
    assert_eq!(laptop.drain_texts("agent1"), ["back"]);
    // The ticket's address is stale too: the joiner finds the root by mDNS.
    let desk = TestHome::init("desk");
    set_mdns(&desk);
    set_listen(&desk, &format!("{}.12:0", link.subnet));
    ok(link.netsky(&link.b, &desk, &["mesh", "join", &desk_ticket]));
    assert_eq!(desk.json(&["mesh", "charter"])["charter"]["root"], "studio");
}

/// A namespace with loopback only: no route anywhere else.
struct Island(String);

impl Island {
    fn new() -> Result<Island, String> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("nskyi{}{n}", std::process::id());
        ip(&["netns", "add", &name])?;
        let island = Island(name);
        ip(&["-n", &island.0, "link", "set", "lo", "up"])?;
        Ok(island)
    }
}

impl Drop for Island {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.0]);
    }
}

#[test]
fn with_the_default_relays_unreachable_two_nodes_still_mesh_on_their_direct_addresses() {
    // `relay = "default"` on a machine with no internet: iroh's relays and
    // DNS cannot be reached (the namespace has no route out), and nothing
    // may wait on them.
    let island = match Island::new() {
        Ok(i) => i,
        Err(e) => return skip(&e),
    };
    let studio = TestHome::init("studio");
    let laptop = TestHome::init("laptop");
    for h in [&studio, &laptop] {
        let cfg = h.join("config.toml");
        let text =
            std::fs::read_to_string(&cfg).unwrap().replace("relay = \"disabled\"", "relay = \"default\"");
        assert!(text.contains("relay = \"default\""), "{text}");
        std::fs::write(cfg, text).unwrap();
    }
    studio.ok(&["mesh", "init", "--mesh", "home"]);
    let _a = run(&island.0, &studio);
    let ticket = studio.ok(&["mesh", "invite", "laptop"]).trim().to_string();
    ok(netsky_in(&island.0, &laptop, &["mesh", "join", &ticket]));
    let _b = run(&island.0, &laptop);
    for (from, to) in [(&laptop, "agent1@studio"), (&studio, "agent1@laptop")] {
        ok(netsky_in(&island.0, from, &["channel", "send", to, "no internet, still here", "--wait"]));
    }
    assert_eq!(studio.drain_texts("agent1"), ["no internet, still here"]);
    assert_eq!(laptop.drain_texts("agent1"), ["no internet, still here"]);
}
