//! `netsky doctor` end to end: each check seen failing (or warning) and
//! passing against real homes, daemons and a real two-node mesh.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{TestHome, TestMesh, exe, file_leg, set_legs, wait_for};
use serde_json::Value;

/// `doctor --json` with extra environment: (exit code, verdict by check name, the report).
fn doctor_env(
    h: &TestHome,
    env: &[(&str, &str)],
) -> (i32, std::collections::BTreeMap<String, String>, Value) {
    let o = h.cmd(&["--json", "doctor"]).envs(env.iter().copied()).output().unwrap();
    let v: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("doctor: not JSON ({e}): {}", String::from_utf8_lossy(&o.stderr)));
    let verdicts = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap().to_string(), c["verdict"].as_str().unwrap().to_string()))
        .collect();
    (o.status.code().unwrap_or(-1), verdicts, v)
}

fn doctor(h: &TestHome) -> (i32, std::collections::BTreeMap<String, String>, Value) {
    doctor_env(h, &[])
}

fn verdict(h: &TestHome, check: &str) -> String {
    doctor(h).1[check].clone()
}

fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_fresh_home_without_a_daemon_fails_and_each_broken_file_is_named_with_its_fix() {
    let h = TestHome::init("doc");
    let (code, v, report) = doctor(&h);
    assert_eq!(code, 1, "no daemon is a failure: {report}");
    assert_eq!(v["daemon"], "fail");
    assert_eq!((v["keys"].as_str(), v["config"].as_str()), ("ok", "ok"));
    assert_eq!(v["charter"], "warn", "no mesh yet");
    assert_eq!(v["owner"], "warn", "a node alone is its own root, and it has no legs");
    assert_eq!(v["lkg"], "warn");
    assert_eq!((v["outbox"].as_str(), v["poison"].as_str(), v["escalations"].as_str()), ("ok", "ok", "ok"));
    for c in report["checks"].as_array().unwrap() {
        assert_eq!(c["fix"].is_null(), c["verdict"] == "ok", "every non-ok check has a fix: {c}");
    }

    // keys: a secret key others can read.
    chmod(&h.join("keys/node.key"), 0o644);
    let (_, v, report) = doctor(&h);
    assert_eq!(v["keys"], "fail");
    assert!(report.to_string().contains("chmod 600"), "{report}");
    chmod(&h.join("keys/node.key"), 0o600);
    assert_eq!(verdict(&h, "keys"), "ok");

    // config: a broken file is named, and the rest is still examined.
    let config = std::fs::read_to_string(h.join("config.toml")).unwrap();
    std::fs::write(h.join("config.toml"), format!("{config}\nbogus_key = 1\n")).unwrap();
    let (code, v, report) = doctor(&h);
    assert_eq!((code, v["config"].as_str()), (1, "fail"));
    assert!(report.to_string().contains("bogus_key"), "{report}");
    assert_eq!(v["tmux"], "ok", "the other checks still ran");
    std::fs::write(h.join("config.toml"), &config).unwrap();

    // meta.db: not a database.
    std::fs::write(h.join("meta.db"), b"this is not sqlite, just bytes that look nothing like it").unwrap();
    assert_eq!(verdict(&h, "meta.db"), "fail");
    std::fs::remove_file(h.join("meta.db")).unwrap();

    // tmux: not on PATH.
    let (_, v, _) = doctor_env(&h, &[("PATH", "/nonexistent")]);
    assert_eq!(v["tmux"], "fail");

    // poison, escalations, outbox.
    let poison = h.join("channels/agent/agent1/poison");
    std::fs::create_dir_all(&poison).unwrap();
    std::fs::write(poison.join("01J0000000000000000000000.json"), b"{").unwrap();
    std::fs::write(poison.join("01J0000000000000000000000.json.reason"), b"not JSON").unwrap();
    assert_eq!(verdict(&h, "poison"), "warn");
    std::fs::remove_dir_all(&poison).unwrap();
    assert_eq!(verdict(&h, "poison"), "ok");

    let outbox = h.join("mesh/outbox");
    std::fs::create_dir_all(&outbox).unwrap();
    let old = outbox.join("01J0000000000000000000001.json");
    std::fs::write(&old, b"{}").unwrap();
    assert_eq!(verdict(&h, "outbox"), "ok", "a fresh envelope is fine");
    let st = Command::new("touch").args(["-d", "2 days ago"]).arg(&old).status().unwrap();
    assert!(st.success());
    assert_eq!(verdict(&h, "outbox"), "fail");
    std::fs::remove_file(&old).unwrap();

    // lkg: broken, then healthy.
    std::fs::create_dir_all(h.join("bin")).unwrap();
    std::fs::write(h.join("bin/netsky.lkg"), b"#!/bin/sh\nexit 1\n").unwrap();
    chmod(&h.join("bin/netsky.lkg"), 0o755);
    assert_eq!(verdict(&h, "lkg"), "fail");
    std::fs::copy(exe(), h.join("bin/netsky.lkg")).unwrap();
    assert_eq!(verdict(&h, "lkg"), "ok");

    // owner: legs on the root make it ok.
    set_legs(&h, &file_leg(&h.join("pages.jsonl")));
    assert_eq!(verdict(&h, "owner"), "ok");

    // daemon and meta.db: running, and written.
    let d = h.start();
    wait_for("meta.db written", Duration::from_secs(20), || {
        let v = verdict(&h, "meta.db");
        if v == "ok" { Ok(()) } else { Err(v) }
    });
    assert_eq!(verdict(&h, "daemon"), "ok");

    // escalations: an open incident (the daemon's owner desk opens it), then resolved.
    let id = h.ok(&["escalate", "disk is full", "on the build box"]).trim().to_string();
    let until = |want: &'static str| {
        wait_for(&format!("escalations {want}"), Duration::from_secs(20), || {
            let v = verdict(&h, "escalations");
            if v == want { Ok(()) } else { Err(v) }
        })
    };
    until("warn");
    h.ok(&["escalate", "resolve", &id]);
    until("ok");
    assert!(d.stop().success());
}

#[test]
fn in_a_mesh_doctor_checks_membership_the_root_the_clock_and_versions() {
    let mut m = TestMesh::new(&["hub", "leaf"]);
    let leaf = m.home("leaf");
    let (_, v, report) = doctor(leaf);
    assert_eq!((v["charter"].as_str(), v["daemon"].as_str()), ("ok", "ok"), "{report}");
    assert_eq!(v["owner"], "ok", "a member with no legs");
    wait_for("the root reachable from the leaf", Duration::from_secs(20), || {
        let v = verdict(leaf, "root");
        if v == "ok" { Ok(()) } else { Err(v) }
    });

    // Legs on a member do nothing: said so.
    set_legs(leaf, &file_leg(&leaf.join("pages.jsonl")));
    assert_eq!(verdict(leaf, "owner"), "warn");

    // The view the root shares: a drifting clock and two versions.
    let view_path = leaf.join("state/mesh-health.json");
    wait_for("the root's view on the leaf", Duration::from_secs(40), || {
        let v = verdict(leaf, "clock");
        if v == "ok" { Ok(()) } else { Err(v) }
    });
    assert_eq!(verdict(leaf, "versions"), "ok");
    m.stop("leaf");
    let leaf = m.home("leaf");
    let mut view: Value = serde_json::from_slice(&std::fs::read(&view_path).unwrap()).unwrap();
    view["nodes"]["leaf"]["skew_s"] = 400.0.into();
    view["nodes"]["hub"]["health"]["version"] = "0.0.9".into();
    std::fs::write(&view_path, serde_json::to_vec(&view).unwrap()).unwrap();
    let (_, v, _) = doctor(leaf);
    assert_eq!((v["clock"].as_str(), v["versions"].as_str()), ("fail", "warn"));

    // The root gone: the leaf finds it unreachable once it tries to send.
    m.stop("hub");
    m.start("leaf");
    let leaf = m.home("leaf");
    leaf.ok(&["channel", "send", "agent0@hub", "are you there?"]);
    wait_for("the root unreachable", Duration::from_secs(30), || {
        let v = verdict(leaf, "root");
        if v == "fail" { Ok(()) } else { Err(v) }
    });
}

#[test]
fn a_membership_lost_and_a_charter_that_does_not_verify_fail() {
    let h = TestHome::init("lone");
    h.ok(&["mesh", "init", "--mesh", "home"]);
    assert_eq!(verdict(&h, "charter"), "ok");
    let charter = h.join("mesh/charter.json");
    let mut text = std::fs::read_to_string(&charter).unwrap();
    text = text.replacen("\"home\"", "\"hone\"", 1);
    std::fs::write(&charter, text).unwrap();
    let (code, v, _) = doctor(&h);
    assert_eq!((code, v["charter"].as_str()), (1, "fail"));
}

/// Unmounts on drop, so a failed assertion leaves no mount behind.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_home_on_a_nearly_full_filesystem_fails_the_disk_check() {
    // A real small filesystem: a 64 MiB tmpfs (needs root, as the netns tests do).
    let dir = tempfile::tempdir().unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64m", "tmpfs"])
        .arg(dir.path())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipped: cannot mount a tmpfs here (not root?)");
        return;
    }
    let _mount = Mount(dir.path().to_path_buf());
    let home = dir.path().join("home");
    let netsky = |args: &[&str]| Command::new(exe()).arg("--home").arg(&home).args(args).output().unwrap();
    assert!(netsky(&["init", "--name", "tiny", "--relay", "disabled"]).status.success());
    let o = netsky(&["--json", "doctor"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let disk = v["checks"].as_array().unwrap().iter().find(|c| c["name"] == "disk").unwrap().clone();
    assert_eq!(disk["verdict"], "fail", "{disk}");
    assert_eq!(o.status.code(), Some(1));
}
