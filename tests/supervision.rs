//! Supervision end to end: the launchd plist and systemd unit as files the
//! real tools accept, install / status / uninstall against a user manager
//! (a recording `systemctl` on PATH, since this machine runs none), the shim
//! as a real process falling back to the last known good binary, and the
//! daemon promoting itself.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{TestHome, edit_config, exe, wait_for};

const SHIM: &str = include_str!("../launchd/src/netsky-shim.sh");

/// A fake user manager: records each call; `show-environment` answers as `FAKE_USER_MANAGER` says.
const FAKE_SYSTEMCTL: &str = r#"#!/bin/sh
echo "$*" >> "$FAKE_SYSTEMCTL_LOG"
case "$*" in
    *show-environment*) exit "${FAKE_USER_MANAGER:-0}" ;;
    *is-active*) echo active ;;
esac
exit 0
"#;

/// A user's world for one test: a HOME for LaunchAgents / ~/.config, and a PATH with the fake systemctl.
struct User {
    home: PathBuf,
    bin: PathBuf,
    log: PathBuf,
}

impl User {
    fn new(h: &TestHome) -> User {
        let (home, bin) = (h.join("user"), h.join("fakebin"));
        std::fs::create_dir_all(&home).unwrap();
        std::fs::create_dir_all(&bin).unwrap();
        write_exec(&bin.join("systemctl"), FAKE_SYSTEMCTL);
        User { home, bin, log: h.join("systemctl.log") }
    }

    /// `BIN --home HOME args` as this user, the user manager up or not.
    fn run(&self, bin: &Path, netsky_home: &Path, manager_up: bool, args: &[&str]) -> Output {
        Command::new(bin)
            .arg("--home")
            .arg(netsky_home)
            .args(args)
            .env("HOME", &self.home)
            .env_remove("XDG_CONFIG_HOME")
            .env("PATH", format!("{}:{}", self.bin.display(), std::env::var("PATH").unwrap()))
            .env("FAKE_SYSTEMCTL_LOG", &self.log)
            .env("FAKE_USER_MANAGER", if manager_up { "0" } else { "1" })
            .env_remove("NETSKY_HOME")
            .output()
            .unwrap()
    }

    fn json(&self, netsky_home: &Path, manager_up: bool, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let o = self.run(Path::new(exe()), netsky_home, manager_up, &a);
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// Calls the fake systemctl saw since the last look.
    fn calls(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let _ = std::fs::remove_file(&self.log);
        text.lines().filter(|l| !l.contains("show-environment")).map(str::to_owned).collect()
    }
}

fn write_exec(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A home whose path has spaces and both kinds of quote in it.
fn odd_home(h: &TestHome) -> PathBuf {
    let home = h.join("My \"odd\" home's 100% $HOME");
    let o = Command::new(exe())
        .arg("--home")
        .arg(&home)
        .args(["init", "--name", "oddbox", "--relay", "disabled", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    home
}

#[test]
fn the_systemd_unit_for_an_odd_home_verifies_and_installs_once_then_reports_a_hand_edit() {
    let h = TestHome::init("sys");
    let user = User::new(&h);
    let home = odd_home(&h);

    // The unit as systemd itself reads it.
    let printed = user.run(Path::new(exe()), &home, false, &["systemd", "print"]);
    assert!(printed.status.success());
    let unit_file = h.join("netsky-oddbox.service");
    std::fs::write(&unit_file, &printed.stdout).unwrap();
    let verify = Command::new("systemd-analyze").arg("verify").arg(&unit_file).output().unwrap();
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}\n{}",
        String::from_utf8_lossy(&verify.stderr),
        String::from_utf8_lossy(&printed.stdout)
    );

    // No user manager: the files are written and the commands to run are printed.
    let r = user.json(&home, false, &["systemd", "install"]);
    assert_eq!((r["written"].as_bool(), r["shim_written"].as_bool()), (Some(true), Some(true)), "{r}");
    assert!(r["todo"][0].as_str().unwrap().contains("enable --now netsky-oddbox.service"), "{r}");
    let unit = user.home.join(".config/systemd/user/netsky-oddbox.service");
    assert_eq!(std::fs::read(&unit).unwrap(), printed.stdout);
    let shim = home.join("bin/netsky-shim");
    assert_eq!(std::fs::read_to_string(&shim).unwrap(), SHIM);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&shim).unwrap().permissions().mode() & 0o777, 0o755);

    // With a user manager: already current, so only enabled; nothing reloaded or restarted.
    user.calls();
    let r = user.json(&home, true, &["systemd", "install"]);
    assert_eq!((r["written"].as_bool(), r["shim_written"].as_bool()), (Some(false), Some(false)), "{r}");
    assert_eq!(user.calls(), vec!["--user enable --now netsky-oddbox.service"]);
    let st = user.json(&home, true, &["systemd", "status"]);
    assert_eq!(
        (st["installed"].as_bool(), st["current"].as_bool(), st["loaded"].as_bool()),
        (Some(true), Some(true), Some(true))
    );
    assert_eq!(st["binary_exists"].as_bool(), Some(true), "{st}");

    // A hand edit is seen, and install puts the unit back (reloading and restarting).
    let edited = std::fs::read_to_string(&unit).unwrap().replace("RestartSec=10", "RestartSec=10\nNice=5");
    std::fs::write(&unit, edited).unwrap();
    let st = user.json(&home, true, &["systemd", "status"]);
    assert_eq!(st["current"].as_bool(), Some(false), "{st}");
    assert!(st["edits"].as_array().unwrap().iter().any(|e| e == "+ Nice=5"), "{st}");
    user.calls();
    let r = user.json(&home, true, &["systemd", "install"]);
    assert_eq!(r["written"].as_bool(), Some(true));
    assert_eq!(
        user.calls(),
        vec![
            "--user daemon-reload",
            "--user enable --now netsky-oddbox.service",
            "--user restart netsky-oddbox.service"
        ]
    );

    // Uninstall, then uninstall again: nothing to do, not an error.
    let r = user.json(&home, true, &["systemd", "uninstall"]);
    assert_eq!(r["removed"].as_bool(), Some(true));
    assert!(!unit.exists());
    assert_eq!(user.calls(), vec!["--user disable --now netsky-oddbox.service", "--user daemon-reload"]);
    let r = user.json(&home, true, &["systemd", "uninstall"]);
    assert_eq!(r["removed"].as_bool(), Some(false));
    let st = user.json(&home, true, &["systemd", "status"]);
    assert_eq!(st["installed"].as_bool(), Some(false));
}

#[test]
fn the_launchd_plist_reads_back_with_every_key_and_its_verbs_send_linux_to_systemd() {
    let h = TestHome::init("mac");
    let user = User::new(&h);
    let home = odd_home(&h);
    let o = user.run(Path::new(exe()), &home, false, &["launchd", "print"]);
    assert!(o.status.success());
    let v = plist::Value::from_reader_xml(&o.stdout[..]).expect("a plist");
    let d = v.as_dictionary().unwrap();
    for k in [
        "Label",
        "ProgramArguments",
        "RunAtLoad",
        "KeepAlive",
        "ThrottleInterval",
        "StandardOutPath",
        "StandardErrorPath",
        "EnvironmentVariables",
    ] {
        assert!(d.contains_key(k), "{k} missing");
    }
    let args: Vec<&str> =
        d["ProgramArguments"].as_array().unwrap().iter().map(|a| a.as_string().unwrap()).collect();
    let home_s = home.canonicalize().unwrap().to_string_lossy().into_owned();
    let exe_s = Path::new(exe()).canonicalize().unwrap().to_string_lossy().into_owned();
    assert_eq!(args, vec!["/bin/sh", &format!("{home_s}/bin/netsky-shim"), &exe_s, &home_s]);
    let env = d["EnvironmentVariables"].as_dictionary().unwrap();
    assert_eq!(env["NETSKY_HOME"].as_string(), Some(home_s.as_str()));
    assert!(env["PATH"].as_string().unwrap().contains("/usr/bin"));
    // plutil exists only on Macs.
    let file = h.join("agent.plist");
    std::fs::write(&file, &o.stdout).unwrap();
    if let Ok(lint) = Command::new("plutil").arg("-lint").arg(&file).output() {
        assert!(lint.status.success(), "plutil -lint: {}", String::from_utf8_lossy(&lint.stdout));
    }
    // A plist put in place (as install would on a Mac), then edited by hand: status sees it.
    let agents = user.home.join("Library/LaunchAgents");
    std::fs::create_dir_all(&agents).unwrap();
    let installed = agents.join("dev.netsky.node.oddbox.plist");
    std::fs::write(&installed, &o.stdout).unwrap();
    let st = user.json(&home, false, &["launchd", "status"]);
    assert_eq!((st["installed"].as_bool(), st["current"].as_bool()), (Some(true), Some(true)), "{st}");
    let edited = String::from_utf8_lossy(&o.stdout)
        .replace("<key>RunAtLoad</key>", "<key>Nice</key>\n\t<integer>5</integer>\n\t<key>RunAtLoad</key>");
    std::fs::write(&installed, edited).unwrap();
    let st = user.json(&home, false, &["launchd", "status"]);
    assert_eq!(st["current"].as_bool(), Some(false), "{st}");
    assert!(st["edits"].to_string().contains("<key>Nice</key>"), "{st}");
    if !cfg!(target_os = "macos") {
        for verb in ["install", "uninstall"] {
            let o = user.run(Path::new(exe()), &home, false, &["launchd", verb]);
            assert_eq!(o.status.code(), Some(1));
            assert!(String::from_utf8_lossy(&o.stderr).contains(&format!("netsky systemd {verb}")));
        }
    }
}

/// `sh SHIM LIVE HOME --which`: (exit code, binary, reason, stderr).
fn which(home: &Path, live: &Path) -> (i32, String, String, String) {
    let o = Command::new("/bin/sh")
        .arg(home.join("bin/netsky-shim"))
        .arg(live)
        .arg(home)
        .arg("--which")
        .env("NETSKY_SHIM_PROBE_TIMEOUT", "2")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let mut lines = out.lines();
    let (bin, why) = (lines.next().unwrap_or("").to_string(), lines.next().unwrap_or("").to_string());
    (o.status.code().unwrap_or(-1), bin, why, String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn the_shim_falls_back_to_the_last_known_good_binary_and_back_and_refuses_when_both_are_broken() {
    let h = TestHome::init("shim");
    let user = User::new(&h);
    // The live binary is a copy this test may break; it installs the supervision, so it is the one named.
    let live = h.join("live/netsky");
    std::fs::create_dir_all(live.parent().unwrap()).unwrap();
    std::fs::copy(exe(), &live).unwrap();
    let o = user.run(&live, h.path(), false, &["systemd", "install"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lkg = h.join("bin/netsky.lkg");
    std::fs::copy(exe(), &lkg).unwrap();
    let supervision = |manager_up| {
        let r = user.run(Path::new(exe()), h.path(), manager_up, &["--json", "doctor"]);
        let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
        let c = v["checks"].as_array().unwrap().iter().find(|c| c["name"] == "supervision").unwrap().clone();
        c["verdict"].as_str().unwrap().to_string()
    };
    assert_eq!(supervision(true), "ok", "installed, current and loaded");

    let (code, bin, why, _) = which(h.path(), &live);
    assert_eq!((code, bin.as_str(), why.as_str()), (0, live.to_str().unwrap(), ""));

    // Deleted, truncated, failing, hanging: each time the last known good one, and why.
    let saved = h.join("saved-netsky");
    std::fs::rename(&live, &saved).unwrap();
    let (code, bin, why, _) = which(h.path(), &live);
    assert_eq!((code, bin.as_str()), (0, lkg.to_str().unwrap()));
    assert!(why.ends_with("is missing"), "{why}");
    assert_eq!(supervision(true), "fail", "the unit names a binary that is gone");
    let check = user.json(h.path(), false, &["self-repair", "check"]);
    assert_eq!(check["would_run"].as_str(), lkg.to_str(), "{check}");
    assert_eq!(check["live"]["healthy"].as_bool(), Some(false), "{check}");
    assert_eq!(check["lkg"]["healthy"].as_bool(), Some(true), "{check}");

    write_exec(&live, "");
    assert!(which(h.path(), &live).2.contains("broken"));
    write_exec(&live, "#!/bin/sh\nexit 3\n");
    assert_eq!(which(h.path(), &live).1, lkg.to_str().unwrap());
    write_exec(&live, "#!/bin/sh\nexec sleep 30\n");
    let (code, bin, why, _) = which(h.path(), &live);
    assert_eq!((code, bin.as_str()), (0, lkg.to_str().unwrap()), "a hanging --version is broken: {why}");

    // Fixed: the live one again.
    std::fs::rename(&saved, &live).unwrap();
    assert_eq!(which(h.path(), &live).1, live.to_str().unwrap());

    // Both broken: it says so and exits 78 rather than loop.
    std::fs::remove_file(&live).unwrap();
    write_exec(&lkg, "#!/bin/sh\nexit 1\n");
    let (code, _, _, err) = which(h.path(), &live);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("nothing to run") && err.contains("is missing"), "{err}");
    let o = user.run(Path::new(exe()), h.path(), false, &["self-repair", "check"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains("would run NOTHING"));
}

#[test]
fn a_daemon_started_from_the_last_known_good_binary_records_it_and_tells_the_owner() {
    let h = TestHome::init("fallback");
    let user = User::new(&h);
    let o = user.run(Path::new(exe()), h.path(), false, &["systemd", "install"]);
    assert!(o.status.success());
    std::fs::copy(exe(), h.join("bin/netsky.lkg")).unwrap();
    let gone = h.join("moved-away/netsky");
    // The shim's own run mode: exec of the last known good binary as the daemon.
    let mut child = Command::new("/bin/sh")
        .arg(h.join("bin/netsky-shim"))
        .arg(&gone)
        .arg(h.path())
        .env_remove("NETSKY_HOME")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let incidents = wait_for("the fallback escalated", Duration::from_secs(20), || {
        let v = h.json(&["escalate", "ls"]);
        let found = v.as_array().is_some_and(|a| {
            a.iter()
                .any(|i| i["subject"].as_str().is_some_and(|s| s.contains("runs its last known good binary")))
        });
        if found { Ok(v) } else { Err(v.to_string()) }
    });
    assert!(incidents.to_string().contains("moved-away/netsky is missing"), "{incidents}");
    assert!(h.events().iter().any(|(e, _, d)| e == "shim-fallback" && d.contains("is missing")));
    common::unsafe_kill(child.id(), 15);
    let status = child.wait().unwrap();
    assert!(status.success(), "the daemon (the shim exec'd it) stops cleanly on SIGTERM: {status}");
}

#[test]
fn a_daemon_that_runs_healthily_promotes_itself_to_last_known_good_once() {
    let h = TestHome::init("promote");
    edit_config(&h, &[("beacon_interval_s = 30", "beacon_interval_s = 1")]);
    let d = h.start();
    let lkg = h.join("bin/netsky.lkg");
    wait_for("the promotion", Duration::from_secs(20), || {
        if h.events().iter().any(|(e, _, _)| e == "lkg-promoted") { Ok(()) } else { Err("none yet".into()) }
    });
    assert_eq!(std::fs::read(&lkg).unwrap(), std::fs::read(exe()).unwrap(), "a byte-for-byte copy");
    let check = h.json(&["self-repair", "check"]);
    assert_eq!(check["lkg"]["healthy"].as_bool(), Some(true), "{check}");
    assert_eq!(check["would_run"].as_str(), Path::new(exe()).canonicalize().unwrap().to_str());
    assert!(d.stop().success());
    assert_eq!(h.events().iter().filter(|(e, _, _)| e == "lkg-promoted").count(), 1);
}
