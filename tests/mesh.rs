//! End-to-end: real `netsky node run` processes meshed over iroh on loopback.

mod common;

use std::time::Duration;

use common::{TestHome, TestMesh, wait_for};

const T: Duration = Duration::from_secs(30);

fn inbox_count(h: &TestHome, agent: &str) -> usize {
    h.files(&format!("channels/agent/{agent}/inbox")).len()
}

#[test]
fn nodes_join_by_ticket_and_messages_cross_both_ways_in_order() {
    let m = TestMesh::new(&["studio", "laptop", "desk"]);
    let (studio, laptop, desk) = (m.home("studio"), m.home("laptop"), m.home("desk"));
    // Every node sees the same charter: three members, studio root.
    for h in [studio, laptop, desk] {
        let s = h.json(&["mesh", "status"]);
        assert_eq!(s["root"], "studio");
        let names: Vec<&str> =
            s["members"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["studio", "laptop", "desk"], "{s}");
    }
    for i in 0..5 {
        let v = laptop.json(&["channel", "send", "agent3@studio", &format!("green {i}"), "--wait"]);
        assert_eq!(v["state"], "acked", "{v}");
    }
    desk.json(&["channel", "send", "agent1@laptop", "from desk", "--wait"]);
    studio.json(&["channel", "send", "agent2@desk", "from studio", "--wait"]);
    assert_eq!(studio.drain_texts("agent3"), (0..5).map(|i| format!("green {i}")).collect::<Vec<_>>());
    assert_eq!(laptop.drain_texts("agent1"), ["from desk"]);
    assert_eq!(desk.drain_texts("agent2"), ["from studio"]);
    // The sender learns the envelope was drained (the receipt travels back).
    let id = laptop.ok(&["channel", "send", "agent0@desk", "receipt please", "--wait"]).trim().to_string();
    // Acked, the copy moved from the outbox to the sender's audit trail.
    assert!(laptop.files("mesh/outbox").is_empty());
    assert!(laptop.files("mesh/sent").contains(&format!("{id}.json")));
    assert_eq!(laptop.json(&["channel", "status", &id])["state"], "acked");
    assert_eq!(desk.drain_texts("agent0"), ["receipt please"]);
    wait_for("the delivery receipt", T, || {
        let s = laptop.json(&["channel", "status", &id]);
        if s["state"] == "delivered" { Ok(()) } else { Err(s.to_string()) }
    });
    // The receipt is a file on the sender before the receiver forgets it.
    let receipt = std::fs::read_to_string(laptop.join(&format!("mesh/delivered/{id}.json"))).unwrap();
    assert!(receipt.contains("\"node\":\"desk\"") && receipt.contains("drained"), "{receipt}");
    assert_eq!(
        laptop.json(&["channel", "status", &id])["detail"],
        "drained by desk at ".to_string() + &receipt_at(&receipt)
    );
}

fn receipt_at(json: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    v["receipt"]["at"].as_str().unwrap().to_string()
}

#[test]
fn envelopes_wait_in_the_outbox_while_the_peer_is_down_and_flow_when_it_returns() {
    let mut m = TestMesh::new(&["studio", "laptop"]);
    m.stop("laptop");
    let studio = m.home("studio");
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            studio.ok(&["channel", "send", "agent1@laptop", &format!("while down {i}")]).trim().to_string(),
        );
    }
    wait_for("the peer to be seen as down", T, || {
        let s = studio.json(&["channel", "status", &ids[0]]);
        let d = s["detail"].as_str().unwrap_or("");
        if s["state"] == "queued" && d.contains("unreachable since") { Ok(()) } else { Err(s.to_string()) }
    });
    assert_eq!(studio.files("mesh/outbox").len(), 20);
    m.start("laptop");
    let (studio, laptop) = (m.home("studio"), m.home("laptop"));
    wait_for("the outbox to empty", T, || {
        let n = studio.files("mesh/outbox").len();
        if n == 0 { Ok(()) } else { Err(format!("{n} left")) }
    });
    assert_eq!(studio.json(&["channel", "status", &ids[19]])["state"], "acked");
    let got = laptop.drain_texts("agent1");
    assert_eq!(got, (0..20).map(|i| format!("while down {i}")).collect::<Vec<_>>());
}

#[test]
fn a_replayed_envelope_is_acknowledged_but_never_delivered_twice() {
    let m = TestMesh::new(&["studio", "laptop"]);
    let (studio, laptop) = (m.home("studio"), m.home("laptop"));
    let id = laptop.ok(&["channel", "send", "agent1@studio", "once only", "--wait"]).trim().to_string();
    assert_eq!(studio.drain_texts("agent1"), ["once only"]);
    // Replay the very bytes: put the delivered copy back into laptop's outbox.
    let copy = studio.join(&format!("channels/agent/agent1/delivered/{id}.json"));
    std::fs::copy(&copy, laptop.join(&format!("mesh/outbox/{id}.json"))).unwrap();
    wait_for("the replay to be acknowledged", T, || {
        let n = laptop.files("mesh/outbox").len();
        if n == 0 { Ok(()) } else { Err(format!("{n} queued")) }
    });
    // The receiver records on its own thread, so its evidence may trail the ack a little.
    wait_for("the receiver to record the duplicate", T, || {
        let seen = studio.events().iter().any(|(e, env, _)| e == "duplicate" && env == &id);
        if seen { Ok(()) } else { Err("no duplicate event yet".into()) }
    });
    assert_eq!(inbox_count(studio, "agent1"), 0);
    assert!(studio.drain_texts("agent1").is_empty());
}

#[test]
fn a_tampered_envelope_is_refused_by_the_receiver_and_the_sender_keeps_the_evidence() {
    let mut m = TestMesh::new(&["studio", "laptop"]);
    m.stop("laptop");
    let laptop = m.home("laptop");
    let bad = laptop.ok(&["channel", "send", "agent1@studio", "pay 10"]).trim().to_string();
    let good = laptop.ok(&["channel", "send", "agent1@studio", "honest"]).trim().to_string();
    let path = laptop.join(&format!("mesh/outbox/{bad}.json"));
    let text = std::fs::read_to_string(&path).unwrap().replace("pay 10", "pay 99");
    std::fs::write(&path, text).unwrap();
    m.start("laptop");
    let (studio, laptop) = (m.home("studio"), m.home("laptop"));
    wait_for("the outbox to empty", T, || {
        let n = laptop.files("mesh/outbox").len();
        if n == 0 { Ok(()) } else { Err(format!("{n} queued")) }
    });
    let s = laptop.json(&["channel", "status", &bad]);
    assert_eq!(s["state"], "refused", "{s}");
    assert!(s["detail"].as_str().unwrap().contains("bad-signature"), "{s}");
    assert!(laptop.join(&format!("mesh/refused/{bad}.json")).exists());
    assert_eq!(laptop.json(&["channel", "status", &good])["state"], "acked");
    assert_eq!(studio.drain_texts("agent1"), ["honest"]);
}

#[test]
fn an_envelope_for_an_agent_that_does_not_exist_is_refused_with_a_receipt() {
    let m = TestMesh::new(&["studio", "laptop"]);
    let laptop = m.home("laptop");
    let err = laptop.fails(&["channel", "send", "agent999@studio", "anyone?", "--wait"], 1);
    assert!(err.contains("refused") && err.contains("no agent agent999"), "{err}");
    let id = laptop.files("mesh/refused").into_iter().find(|f| f.ends_with(".json")).unwrap();
    let s = laptop.json(&["channel", "status", id.trim_end_matches(".json")]);
    assert_eq!(s["state"], "refused");
}

#[test]
fn a_node_that_copied_the_charter_but_is_not_a_member_is_refused_at_the_door() {
    let m = TestMesh::new(&["studio", "laptop"]);
    let studio = m.home("studio");
    let thief = TestHome::init("thief");
    std::fs::create_dir_all(thief.join("mesh")).unwrap();
    std::fs::copy(studio.join("mesh/charter.json"), thief.join("mesh/charter.json")).unwrap();
    let _d = thief.start();
    thief.ok(&["channel", "send", "agent1@studio", "let me in"]);
    wait_for("the root to refuse the stranger", T, || {
        let refused =
            studio.events().iter().any(|(e, _, d)| e == "connection-refused" && d.contains("not a member"));
        if refused { Ok(()) } else { Err("no connection-refused event yet".into()) }
    });
    assert_eq!(thief.files("mesh/outbox").len(), 1, "nothing was acknowledged to the stranger");
    assert_eq!(inbox_count(studio, "agent1"), 0);
}

#[test]
fn a_revoked_member_is_refused_and_its_envelopes_never_land() {
    let m = TestMesh::new(&["studio", "laptop", "desk"]);
    let (studio, laptop, desk) = (m.home("studio"), m.home("laptop"), m.home("desk"));
    let removed = studio.json(&["mesh", "remove", "laptop"]);
    let epoch = removed["epoch"].as_u64().unwrap();
    wait_for("desk to hold the new charter", T, || {
        let c = desk.json(&["mesh", "charter"]);
        if c["charter"]["epoch"].as_u64() >= Some(epoch) { Ok(()) } else { Err(c.to_string()) }
    });
    // laptop still holds its old charter and tries both nodes.
    laptop.ok(&["channel", "send", "agent1@studio", "still here?"]);
    laptop.ok(&["channel", "send", "agent1@desk", "still here?"]);
    wait_for("both to refuse the revoked member", T, || {
        let s = studio.events().iter().any(|(e, _, _)| e == "connection-refused");
        let d = desk.events().iter().any(|(e, _, _)| e == "connection-refused");
        if s && d { Ok(()) } else { Err(format!("studio {s}, desk {d}")) }
    });
    assert_eq!(inbox_count(studio, "agent1") + inbox_count(desk, "agent1"), 0);
    // A new ticket cannot bring the revoked id back under another name either.
    let ticket = studio.ok(&["mesh", "invite", "laptop2"]).trim().to_string();
    let err = laptop.fails(&["mesh", "join", &ticket], 1);
    assert!(err.contains("ticket admits"), "{err}");
}

#[test]
fn tickets_of_every_wrong_kind_are_refused() {
    let m = TestMesh::new(&["studio", "laptop"]);
    let studio = m.home("studio");
    // Reused: the laptop's ticket was burned when it joined; a second node named laptop cannot use another copy.
    let t1 = studio.ok(&["mesh", "invite", "desk"]).trim().to_string();
    let desk = TestHome::init("desk");
    desk.ok(&["mesh", "join", &t1]);
    let desk2 = TestHome::init("desk");
    let err = desk2.fails(&["mesh", "join", &t1], 1);
    assert!(err.contains("already used") || err.contains("taken"), "{err}");
    // Wrong name.
    let t2 = studio.ok(&["mesh", "invite", "tablet"]).trim().to_string();
    let err = TestHome::init("phone").fails(&["mesh", "join", &t2], 1);
    assert!(err.contains("admits a node named tablet"), "{err}");
    // Expired.
    let t3 = studio.ok(&["mesh", "invite", "old", "--ttl", "1s"]).trim().to_string();
    std::thread::sleep(Duration::from_millis(2100));
    let err = TestHome::init("old").fails(&["mesh", "join", &t3], 1);
    assert!(err.contains("expired"), "{err}");
    // Forged: edited after signing.
    let t4 = studio.ok(&["mesh", "invite", "forge"]).trim().to_string();
    let mut chars: Vec<char> = t4.chars().collect();
    let i = chars.len() / 2;
    chars[i] = if chars[i] == 'a' { 'b' } else { 'a' };
    let err = TestHome::init("forge").fails(&["mesh", "join", &chars.into_iter().collect::<String>()], 1);
    assert!(err.contains("ticket refused"), "{err}");
    // Garbage.
    let err = TestHome::init("junk").fails(&["mesh", "join", "hello"], 1);
    assert!(err.contains("netsky1"), "{err}");
}

#[test]
fn kill_9_of_either_side_mid_stream_loses_nothing_and_doubles_nothing() {
    let mut m = TestMesh::new(&["studio", "laptop"]);
    let n = 150;
    let sender = std::thread::spawn({
        let home = m.home("laptop").path().to_path_buf();
        move || {
            for i in 0..n {
                let o = std::process::Command::new(common::exe())
                    .arg("--home")
                    .arg(&home)
                    .args(["channel", "send", "agent1@studio", &format!("m{i:03}")])
                    .output()
                    .unwrap();
                assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            }
        }
    });
    // Kill the receiver once some have landed, then the sender, restarting each.
    wait_for("some envelopes to land", T, || {
        let c = inbox_count(m.home("studio"), "agent1");
        if c >= 20 { Ok(()) } else { Err(format!("{c}")) }
    });
    m.kill9("studio");
    m.start("studio");
    wait_for("more envelopes to land", T, || {
        let c = inbox_count(m.home("studio"), "agent1");
        if c >= 60 { Ok(()) } else { Err(format!("{c}")) }
    });
    m.kill9("laptop");
    m.start("laptop");
    sender.join().unwrap();
    let (studio, laptop) = (m.home("studio"), m.home("laptop"));
    wait_for("the outbox to empty", Duration::from_secs(60), || {
        let q = laptop.files("mesh/outbox").len();
        if q == 0 { Ok(()) } else { Err(format!("{q} queued")) }
    });
    let got = studio.drain_texts("agent1");
    let want: Vec<String> = (0..n).map(|i| format!("m{i:03}")).collect();
    assert_eq!(got, want, "every envelope exactly once, in order");
}

#[test]
fn the_root_role_and_the_mesh_key_move_to_a_promoted_member() {
    let m = TestMesh::new(&["studio", "laptop", "desk"]);
    let (studio, laptop, desk) = (m.home("studio"), m.home("laptop"), m.home("desk"));
    let err = desk.fails(&["mesh", "promote", "laptop"], 1);
    assert!(err.contains("only the root"), "{err}");
    let out = studio.json(&["mesh", "promote", "laptop"]);
    let epoch = out["epoch"].as_u64().unwrap();
    assert!(!studio.join("keys/mesh.key").exists(), "the old root gave up the mesh key");
    assert!(laptop.join("keys/mesh.key").exists(), "the new root holds it");
    assert_eq!(laptop.json(&["keys", "show"])["mesh_key"], true);
    for h in [studio, laptop, desk] {
        wait_for(&format!("{} to see laptop as root", h.name), T, || {
            let c = h.json(&["mesh", "charter"]);
            let ok = c["charter"]["root"] == "laptop" && c["charter"]["epoch"].as_u64() >= Some(epoch);
            if ok { Ok(()) } else { Err(c.to_string()) }
        });
    }
    // The new root admits nodes; the old one cannot any more.
    let err = studio.fails(&["mesh", "invite", "tablet"], 1);
    assert!(err.contains("only the root"), "{err}");
    laptop.ok(&["mesh", "invite", "tablet"]);
    // Messages still cross.
    desk.json(&["channel", "send", "agent1@studio", "after the handover", "--wait"]);
    assert_eq!(studio.drain_texts("agent1"), ["after the handover"]);
}

#[test]
fn a_promotion_the_target_did_not_confirm_stays_pending_and_a_retry_sends_the_same_charter() {
    let mut m = TestMesh::new(&["studio", "laptop"]);
    m.stop("laptop");
    let studio = m.home("studio");
    let err = studio.fails(&["mesh", "promote", "laptop"], 1);
    assert!(err.contains("did not confirm"), "{err}");
    let pending_bytes = std::fs::read(studio.join("mesh/handover.json")).unwrap();
    let pending: serde_json::Value = serde_json::from_slice(&pending_bytes).unwrap();
    let epoch = pending["charter"]["epoch"].as_u64().unwrap();
    assert!(studio.join("keys/mesh.key").exists(), "still root until confirmed");
    // Nothing else is issued meanwhile, and no other promotion starts.
    let err = studio.fails(&["mesh", "remove", "laptop"], 1);
    assert!(err.contains("being handed to laptop"), "{err}");
    let err = studio.fails(&["mesh", "promote", "studio"], 1);
    assert!(err.contains("being handed to laptop"), "{err}");
    m.start("laptop");
    let (studio, laptop) = (m.home("studio"), m.home("laptop"));
    let out = studio.json(&["mesh", "promote", "laptop"]);
    assert_eq!(out["epoch"].as_u64(), Some(epoch), "the same charter, not a second one of a new epoch");
    let held = std::fs::read(studio.join("mesh/charter.json")).unwrap();
    assert_eq!(held, pending_bytes, "the very charter recorded before the first try, byte for byte");
    assert!(!studio.join("keys/mesh.key").exists() && !studio.join("mesh/handover.json").exists());
    assert_eq!(laptop.json(&["keys", "show"])["mesh_key"], true);
    laptop.ok(&["mesh", "invite", "tablet"]);
}

#[test]
fn a_daemon_whose_address_is_taken_says_so_and_a_second_daemon_on_one_home_is_refused() {
    let h = TestHome::init("studio");
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let cfg = h.join("config.toml");
    let text = std::fs::read_to_string(&cfg).unwrap().replace("127.0.0.1:0", &addr);
    std::fs::write(&cfg, text).unwrap();
    let err = h.fails(&["node", "run"], 1);
    assert!(err.contains(&addr) && err.contains("taken"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    drop(taken);
    let _d = h.start();
    let err = h.fails(&["node", "run"], 1);
    assert!(err.contains("already runs"), "{err}");
}

#[test]
fn a_remote_send_whose_file_was_lost_after_its_barrier_still_goes_from_the_outbox_journal() {
    let mut m = TestMesh::new(&["studio", "laptop"]);
    m.stop("laptop");
    let ids: Vec<String> = (0..3)
        .map(|i| {
            m.home("laptop")
                .ok(&["channel", "send", "agent1@studio", &format!("kept {i}")])
                .trim()
                .to_string()
        })
        .collect();
    // A sender killed between its barrier and laying out its file leaves the
    // envelope only in the outbox's journal: the last two files are taken away.
    for id in &ids[1..] {
        std::fs::remove_file(m.home("laptop").join(&format!("mesh/outbox/{id}.json"))).unwrap();
    }
    m.start("laptop");
    wait_for("all three in studio's inbox", T, || {
        let n = inbox_count(m.home("studio"), "agent1");
        if n == 3 { Ok(()) } else { Err(format!("{n} of 3")) }
    });
    assert_eq!(m.home("studio").drain_texts("agent1"), ["kept 0", "kept 1", "kept 2"]);
}

#[test]
fn the_readme_demo_runs_end_to_end_and_leaves_nothing_behind() {
    let o = std::process::Command::new(common::exe())
        .arg("demo")
        .env_remove("NETSKY_HOME")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", String::from_utf8_lossy(&o.stderr));
    for step in [
        "tests are green on laptop",
        "the page that reached the root's file leg",
        "from=\"owner\"",
        "\"subject\":\"node desk is silent\"",
        "netsky doctor",
        "| <channel source=\"agent\" from=\"agent0@studio\"",
    ] {
        assert!(out.contains(step), "no {step:?} in:\n{out}");
    }
    let removed = out.lines().find_map(|l| l.strip_prefix("demo done; removed ")).expect("the cleanup line");
    assert!(!std::path::Path::new(removed).exists(), "{removed} is left behind");
}
