//! End-to-end tests of the owner legs: real `netsky` processes, real files
//! and commands as legs, in temporary homes.

mod common;

use common::{TestHome, TestMesh, edit_config, file_leg, json_lines, set_legs};

#[test]
fn a_test_page_goes_through_every_leg_and_each_attempt_is_on_the_trail() {
    let h = TestHome::init("studio");
    let pages = h.join("pages.jsonl");
    let got = h.join("command-args");
    let script = format!("printf '%s\\n' \"$@\" > {}", got.display());
    set_legs(
        &h,
        &format!(
            "[[owner.legs]]\nkind = \"file\"\npath = \"{}\"\n\
             [[owner.legs]]\nkind = \"command\"\nargv = [\"sh\", \"-c\", {}, \"sh\", \"{{subject}}\", \"from {{origin}}: {{body}}\"]\n\
             [[owner.legs]]\nkind = \"command\"\nargv = [\"sh\", \"-c\", \"echo the pager is down >&2; exit 7\"]\n\
             [[owner.legs]]\nkind = \"command\"\nargv = [\"/nonexistent/netsky-pager\"]\n",
            pages.display(),
            serde_json::to_string(&script).unwrap(),
        ),
    );
    // One leg fails, so the test says so with exit 1, and still tries every leg.
    let o = h.run(&["--json", "owner", "test"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let attempts = out["attempts"].as_array().unwrap();
    let oks: Vec<bool> = attempts.iter().map(|a| a["ok"].as_bool().unwrap()).collect();
    assert_eq!(oks, [true, true, false, false], "{out}");
    assert!(attempts[2]["error"].as_str().unwrap().contains("the pager is down"), "{out}");
    assert!(attempts[3]["error"].as_str().unwrap().contains("/nonexistent/netsky-pager"), "{out}");
    // The file leg holds the page; the command leg got its text as separate arguments.
    let page = &json_lines(&pages)[0];
    assert_eq!((page["kind"].as_str(), page["origin"].as_str()), (Some("test"), Some("studio")), "{page}");
    assert_eq!(page["id"], out["page"]);
    assert_eq!(
        std::fs::read_to_string(&got).unwrap(),
        "test page\nfrom studio: a test page from netsky on studio\n"
    );
    // Every attempt is one line of the trail, in leg order, with the page's id.
    let trail = json_lines(&h.join("state/owner-pages.jsonl"));
    assert_eq!(trail.len(), 4, "{trail:?}");
    for (i, t) in trail.iter().enumerate() {
        assert_eq!((t["index"].as_u64(), &t["page"]), (Some(i as u64), &out["page"]), "{t}");
    }
    // Only the working legs: exit 0.
    let ok = TestHome::init("solo");
    set_legs(&ok, &file_leg(&ok.join("p.jsonl")));
    let v = ok.json(&["owner", "test"]);
    assert_eq!(v["attempts"][0]["ok"], true, "{v}");
}

#[test]
fn a_node_without_legs_or_that_is_not_the_root_pages_nobody() {
    let h = TestHome::init("studio");
    let err = h.fails(&["owner", "test"], 1);
    assert!(err.contains("no owner legs configured") && err.contains("config.toml"), "{err}");

    let m = TestMesh::new(&["studio", "laptop"]);
    let laptop = m.home("laptop");
    let pages = laptop.join("pages.jsonl");
    set_legs(laptop, &file_leg(&pages));
    let err = laptop.fails(&["owner", "test"], 1);
    assert!(err.contains("only the root pages the owner") && err.contains("studio"), "{err}");
    assert!(!pages.exists(), "a member's leg was used");
    assert!(!laptop.join("state/owner-pages.jsonl").exists());
}

/// The root's incident `id`, once its file says `ok`.
fn incident_when(
    h: &TestHome,
    id: &str,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let path = h.join(&format!("state/escalations/{id}.json"));
    common::wait_for(what, T, || {
        let v: serde_json::Value = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| format!("no {}", path.display()))?;
        if ok(&v) { Ok(v) } else { Err(v.to_string()) }
    })
}

const T: std::time::Duration = std::time::Duration::from_secs(20);

#[test]
fn an_escalation_anywhere_pages_through_the_root_alone_until_acked_and_a_resolve_reopens() {
    let mut m = TestMesh::new(&["studio", "laptop", "desk"]);
    // The root ticks every second and re-pages every second, at most twice.
    m.stop("studio");
    let (studio, laptop) = (m.home("studio"), m.home("laptop"));
    let root_pages = studio.join("root-pages.jsonl");
    edit_config(
        studio,
        &[
            ("tick_interval_s = 60", "tick_interval_s = 1"),
            ("repage_after_s = 900", "repage_after_s = 1"),
            ("max_repages = 8", "max_repages = 2"),
        ],
    );
    set_legs(studio, &file_leg(&root_pages));
    let member_pages = laptop.join("member-pages.jsonl");
    set_legs(laptop, &file_leg(&member_pages));
    // Spooled while the root is down: the escalation waits in laptop's outbox.
    let v = laptop.json(&["escalate", "disk full", "/ on laptop is at 100%"]);
    assert_eq!((v["state"].as_str(), v["node"].as_str()), (Some("queued"), Some("studio")), "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    m.start("studio");
    let (studio, laptop, desk) = (m.home("studio"), m.home("laptop"), m.home("desk"));
    let i = incident_when(studio, &id, "the incident on the root", |i| i["pages"].as_u64() >= Some(1));
    assert_eq!((i["origin"].as_str(), i["subject"].as_str()), (Some("laptop"), Some("disk full")), "{i}");
    // Repeats join it: counted, not paged again for themselves.
    for _ in 0..3 {
        laptop.ok(&["escalate", "disk full", "still full"]);
    }
    incident_when(studio, &id, "the repeats counted", |i| i["count"] == 4);
    assert_eq!(studio.json(&["escalate", "ls"]).as_array().unwrap().len(), 1);
    // Any node lists the root's incidents: asked over the mesh.
    let listed = desk.json(&["escalate", "ls"]);
    assert_eq!(
        (listed[0]["id"].as_str(), listed[0]["count"].as_u64()),
        (Some(id.as_str()), Some(4)),
        "{listed}"
    );
    // Re-paged (max 2, then once more through every leg), then it stops.
    let i =
        incident_when(studio, &id, "re-paged to the cap", |i| i["pages"] == 4 && i["next_page"].is_null());
    assert_eq!(i["state"], "open", "{i}");
    // An ack from a third node: acked, by desk.
    desk.ok(&["escalate", "ack", &id]);
    let i = incident_when(studio, &id, "acked from desk", |i| i["state"] == "acked");
    assert!(i["acked_by"].as_str().unwrap().starts_with("agent0@desk"), "{i}");
    // Resolved, the same subject opens a new incident.
    studio.ok(&["escalate", "resolve", &id]);
    incident_when(studio, &id, "resolved", |i| i["state"] == "resolved");
    let again = laptop.json(&["escalate", "disk full", "full again"])["id"].as_str().unwrap().to_string();
    incident_when(studio, &again, "a new incident after the resolve", |i| i["pages"].as_u64() >= Some(1));
    // Every page went through the root's leg; the member's leg was never used.
    let pages = json_lines(&root_pages);
    assert!(pages.iter().filter(|p| p["id"] == id.as_str()).count() == 4, "{pages:?}");
    assert!(pages.iter().all(|p| p["origin"] == "laptop" && p["kind"] == "incident"), "{pages:?}");
    assert!(!member_pages.exists(), "a member paged the owner");
    // A message for the owner from a member is paged too.
    let msg = laptop.json(&["owner", "send", "wave landed", "--from", "agent3"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    common::wait_for("the owner message paged", T, || {
        let p = json_lines(&root_pages);
        p.iter()
            .find(|p| p["id"] == msg.as_str())
            .filter(|p| {
                p["kind"] == "message" && p["subject"] == "from agent3@laptop" && p["body"] == "wave landed"
            })
            .cloned()
            .ok_or_else(|| format!("{p:?}"))
    });
}

#[test]
fn every_command_the_agent_prompts_name_exists_with_its_flags() {
    let h = TestHome::init("studio");
    let mut named = std::collections::BTreeSet::new();
    for agent in ["agent0", "agent1", "agentinfinity"] {
        let prompt = h.ok(&["prompts", "render", agent]);
        // Every `netsky ...` span in backticks.
        for span in prompt.split('`').skip(1).step_by(2).filter(|s| s.starts_with("netsky ")) {
            named.insert(span.to_string());
        }
    }
    assert!(named.iter().any(|c| c.starts_with("netsky owner send")), "{named:?}");
    assert!(named.iter().any(|c| c.starts_with("netsky escalate")), "{named:?}");
    let is_verb = |w: &&str| {
        w.chars().all(|c| c.is_ascii_lowercase() || c == '-') && !w.starts_with("agent") && !w.is_empty()
    };
    for cmd in &named {
        let words: Vec<&str> = cmd.split_whitespace().skip(1).collect();
        let verbs: Vec<&str> = words.iter().copied().take_while(|w| is_verb(w)).collect();
        let mut args = verbs.clone();
        args.push("--help");
        let help = h.ok(&args);
        for flag in words.iter().filter(|w| w.starts_with("--")) {
            assert!(help.contains(flag), "`{cmd}`: {flag} is not a flag of `netsky {}`", verbs.join(" "));
        }
    }
}

/// One request a [`Server`] received.
#[derive(Debug, Clone)]
struct Request {
    head: String,
    body: String,
}

/// A plain HTTP/1.1 server on loopback: `/ok` answers 200, `/fail` 500, `/hang` never.
struct Server {
    addr: std::net::SocketAddr,
    got: std::sync::Arc<std::sync::Mutex<Vec<Request>>>,
}

impl Server {
    fn start() -> Server {
        use std::io::{BufRead, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = got.clone();
        // Ends with the test process: each test has its own listener and port.
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let mut r = std::io::BufReader::new(conn.try_clone().unwrap());
                    let mut head = String::new();
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                            break;
                        }
                        head.push_str(&line);
                    }
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().to_string())
                        })
                        .and_then(|v| v.parse::<usize>().ok())
                        .unwrap_or(0);
                    let mut body = vec![0; len];
                    r.read_exact(&mut body).unwrap();
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                    seen.lock().unwrap().push(Request { head, body: String::from_utf8_lossy(&body).into() });
                    let mut conn = conn;
                    match path.as_str() {
                        "/hang" => std::thread::sleep(std::time::Duration::from_secs(30)),
                        "/fail" => {
                            let _ = conn.write_all(
                                b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n",
                            );
                        }
                        _ => {
                            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
                        }
                    }
                });
            }
        });
        Server { addr, got }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn requests(&self, path: &str) -> Vec<Request> {
        let prefix = format!(" {path} ");
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.head.lines().next().is_some_and(|l| l.contains(&prefix)))
            .cloned()
            .collect()
    }
}

#[test]
fn webhook_legs_post_json_slack_and_ntfy_bodies_and_a_500_or_a_hang_fails_in_bounded_time() {
    let s = Server::start();
    let h = TestHome::init("studio");
    edit_config(&h, &[("leg_timeout_s = 10", "leg_timeout_s = 1")]);
    let hook = |path: &str, body: &str| {
        format!("[[owner.legs]]\nkind = \"webhook\"\nurl = \"{}\"\n{body}", s.url(path))
    };
    set_legs(
        &h,
        &[
            hook("/ok", ""),
            hook("/ok?slack", "body = \"slack\"\n"),
            hook("/ok?ntfy", "body = \"ntfy\"\n"),
            hook("/fail", ""),
            hook("/hang", ""),
        ]
        .concat(),
    );
    let started = std::time::Instant::now();
    let o = h.run(&["--json", "owner", "test"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(15), "the hang was not bounded");
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let oks: Vec<bool> =
        out["attempts"].as_array().unwrap().iter().map(|a| a["ok"].as_bool().unwrap()).collect();
    assert_eq!(oks, [true, true, true, false, false], "{out}");
    assert!(out["attempts"][3]["error"].as_str().unwrap().contains("500"), "{out}");
    let json: serde_json::Value = serde_json::from_str(&s.requests("/ok")[0].body).unwrap();
    assert_eq!((&json["id"], json["kind"].as_str()), (&out["page"], Some("test")), "{json}");
    let slack: serde_json::Value = serde_json::from_str(&s.requests("/ok?slack")[0].body).unwrap();
    assert_eq!(slack["text"], "test page: a test page from netsky on studio", "{slack}");
    let ntfy = &s.requests("/ok?ntfy")[0];
    assert_eq!(ntfy.body, "a test page from netsky on studio");
    assert!(ntfy.head.to_ascii_lowercase().contains("title: test page"), "{}", ntfy.head);
}

#[test]
fn the_root_pings_its_dead_mans_switch_every_beacon_interval() {
    let s = Server::start();
    let h = TestHome::init("studio");
    edit_config(
        &h,
        &[
            ("beacon_interval_s = 30", "beacon_interval_s = 1"),
            ("heartbeat_url = \"\"", &format!("heartbeat_url = \"{}\"", s.url("/beat"))),
        ],
    );
    let d = h.start();
    common::wait_for("three pings", T, || {
        let n = s.requests("/beat").len();
        if n >= 3 { Ok(()) } else { Err(format!("{n} pings")) }
    });
    d.stop();
    assert!(s.requests("/beat").iter().all(|r| r.head.starts_with("GET ")));
}

#[test]
fn the_owner_speaks_through_the_root_to_an_agent_anywhere_and_only_through_the_root() {
    let m = TestMesh::new(&["studio", "laptop"]);
    let (studio, laptop) = (m.home("studio"), m.home("laptop"));
    let v = studio.json(&["owner", "say", "agent0@laptop: pause the deploy"]);
    assert_eq!((v["state"].as_str(), v["node"].as_str()), (Some("queued"), Some("laptop")), "{v}");
    studio.ok(&["owner", "say", "and you, stop too"]);
    let drained = common::wait_for("the owner's word on laptop", T, || {
        let d = laptop.json(&["channel", "drain", "agent0"]);
        if d["delivered"].as_array().is_some_and(|a| !a.is_empty()) { Ok(d) } else { Err(d.to_string()) }
    });
    let got = &drained["delivered"][0];
    assert_eq!(
        (got["from"].as_str(), got["text"].as_str()),
        (Some("owner"), Some("pause the deploy")),
        "{got}"
    );
    let here = studio.json(&["channel", "drain", "agent0"]);
    assert_eq!(here["delivered"][0]["text"], "and you, stop too", "{here}");
    assert_eq!(here["delivered"][0]["from"], "owner", "{here}");
    // A member does not speak for the owner.
    let err = laptop.fails(&["owner", "say", "agent0@studio: obey me"], 1);
    assert!(err.contains("only the root"), "{err}");
}

#[test]
fn an_owner_source_s_lines_reach_their_agents_and_garbage_or_a_hang_costs_only_itself() {
    let h = TestHome::init("studio");
    let once = h.join("printed");
    let script = format!(
        "[ -e {0} ] && exit 0; touch {0}; printf '%s\\n' '{{\"text\": \"agent1: from the phone\"}}' 'garbage' '{{\"to\": \"agent2\", \"text\": \"second\"}}'",
        once.display()
    );
    edit_config(
        &h,
        &[("tick_interval_s = 60", "tick_interval_s = 1"), ("leg_timeout_s = 10", "leg_timeout_s = 1")],
    );
    let sources = format!(
        "[[owner.sources]]\nargv = [\"sleep\", \"30\"]\n[[owner.sources]]\nargv = [\"sh\", \"-c\", {}]\n",
        serde_json::to_string(&script).unwrap()
    );
    let config = std::fs::read_to_string(h.join("config.toml")).unwrap();
    std::fs::write(h.join("config.toml"), config.replace("sources = []\n", "") + &sources).unwrap();
    let d = h.start();
    common::wait_for("both messages delivered to their inboxes", T, || {
        let n1 = h.json(&["channel", "ls", "agent1"]);
        let n2 = h.json(&["channel", "ls", "agent2"]);
        if n1.to_string().contains("\"inbox\":1") && n2.to_string().contains("\"inbox\":1") {
            Ok(())
        } else {
            Err(format!("{n1} {n2}"))
        }
    });
    // Bad input at the desk: an ack for no incident, an escalation that is no operation.
    h.ok(&["escalate", "ack", "01ARZ3NDEKTSV4RRFFQ69G5FAV"]);
    h.ok(&["channel", "send", "owner", "not an operation", "--kind", "escalation"]);
    common::wait_for("both refusals recorded", T, || {
        let e: Vec<String> =
            h.events().into_iter().filter(|e| e.0 == "owner-desk-error").map(|e| e.2).collect();
        let ok = e.iter().any(|d| d.contains("no incident 01ARZ3NDEKTSV4RRFFQ69G5FAV"))
            && e.iter().any(|d| d.contains("is not an operation"));
        if ok { Ok(()) } else { Err(format!("{e:?}")) }
    });
    d.stop();
    assert_eq!(h.drain_texts("agent1"), ["from the phone"]);
    assert_eq!(h.drain_texts("agent2"), ["second"]);
    let errors: Vec<String> =
        h.events().into_iter().filter(|e| e.0 == "owner-desk-error").map(|e| e.2).collect();
    assert!(errors.iter().any(|e| e.contains("garbage")), "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("sleep 30")), "the hang was not reported: {errors:?}");
}

#[test]
fn the_owner_bench_runs_small_and_reports_each_figure() {
    let h = TestHome::init("bench");
    let dir = h.join("scratch");
    std::fs::create_dir(&dir).unwrap();
    let r = h.json(&["bench", "owner", "--dir", dir.to_str().unwrap(), "--n", "2", "--flood", "1000"]);
    for f in ["escalate_to_page_p50_ms", "say_to_inbox_p50_ms", "process_start_ms", "flood_per_s"] {
        assert!(r[f].as_f64().is_some_and(|x| x > 0.0), "{f} in {r}");
    }
    // A thousand identical escalations at once: counted, paged once.
    assert_eq!((r["flood"].as_u64(), r["flood_pages"].as_u64()), (Some(1000), Some(1)), "{r}");
    assert_eq!(r["targets"].as_array().unwrap().len(), 3, "{r}");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "the scratch folder is left behind");
}

#[test]
fn a_promotion_hands_the_open_incidents_and_their_re_pages_to_the_new_root() {
    let mut m = TestMesh::new(&["studio", "laptop"]);
    m.stop("studio");
    m.stop("laptop");
    let (studio, laptop) = (m.home("studio"), m.home("laptop"));
    let (old_pages, new_pages) = (studio.join("pages.jsonl"), laptop.join("pages.jsonl"));
    for (h, pages) in [(studio, &old_pages), (laptop, &new_pages)] {
        edit_config(
            h,
            &[
                ("tick_interval_s = 60", "tick_interval_s = 1"),
                ("repage_after_s = 900", "repage_after_s = 1"),
            ],
        );
        set_legs(h, &file_leg(pages));
    }
    m.start("studio");
    m.start("laptop");
    let (studio, laptop) = (m.home("studio"), m.home("laptop"));
    let id =
        laptop.json(&["escalate", "backups failing", "three nights"])["id"].as_str().unwrap().to_string();
    incident_when(studio, &id, "paged by the first root", |i| i["pages"].as_u64() >= Some(1));
    studio.json(&["mesh", "promote", "laptop"]);
    // The new root holds it, count and schedule as they stood, and re-pages it through its own leg.
    incident_when(laptop, &id, "the incident on the new root", |i| i["count"] == 1);
    common::wait_for("a page by the new root", T, || {
        let p = json_lines(&new_pages);
        if p.iter().any(|p| p["id"] == id.as_str()) { Ok(()) } else { Err(format!("{p:?}")) }
    });
    assert!(!studio.join(&format!("state/escalations/{id}.json")).exists(), "the old root kept it");
    // The old root pages no more.
    let before = json_lines(&old_pages).len();
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(json_lines(&old_pages).len(), before, "the old root still pages");
    // An ack now goes to the new root.
    studio.ok(&["escalate", "ack", &id]);
    incident_when(laptop, &id, "acked on the new root", |i| i["state"] == "acked");
}

#[test]
fn the_readme_s_configuration_is_one_netsky_accepts() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let start = readme.find("```\n[node]\n").expect("the README's config block") + 4;
    let block = &readme[start..start + readme[start..].find("```").unwrap()];
    let h = TestHome::init("studio");
    std::fs::write(h.join("config.toml"), block).unwrap();
    // Loads (unknown keys and bad values are errors naming file and line).
    h.ok(&["keys", "show"]);
}

/// A real SMTP server (aiosmtpd, which `.ci/run` installs) requiring STARTTLS
/// and AUTH as `user`/`secret`; stopped when dropped (its stdin closes).
struct Smtp {
    dir: tempfile::TempDir,
    port: u16,
    _child: std::process::Child,
}

impl Smtp {
    fn start() -> Smtp {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/support/smtp_server.py");
        let mut child = std::process::Command::new("python3")
            .args([script, dir.path().to_str().unwrap(), "user", "secret"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 (with aiosmtpd: pip install aiosmtpd; .ci/run does)");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("the SMTP server did not start (aiosmtpd installed?): {line:?}"));
        Smtp { dir, port, _child: child }
    }

    fn mails(&self) -> Vec<String> {
        let mut names: Vec<_> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        names.sort();
        names.into_iter().map(|p| std::fs::read_to_string(p).unwrap()).collect()
    }
}

#[test]
fn the_email_leg_mails_through_starttls_with_auth_and_a_refusal_or_a_wrong_password_fails() {
    let smtp = Smtp::start();
    let h = TestHome::init("studio");
    // A wrong password may be answered by silence: the leg's timeout ends it.
    edit_config(&h, &[("leg_timeout_s = 10", "leg_timeout_s = 2")]);
    let (good, bad) = (h.join("password"), h.join("wrong-password"));
    std::fs::write(&good, "secret\n").unwrap();
    std::fs::write(&bad, "guess\n").unwrap();
    let ca = smtp.dir.path().join("ca.pem");
    let leg = |server: String, password: &std::path::Path| {
        format!(
            "[[owner.legs]]\nkind = \"email\"\nserver = \"{server}\"\nfrom = \"netsky@example.org\"\nto = \"owner@example.org\"\n\
             username = \"user\"\npassword_file = \"{}\"\nca_file = \"{}\"\n",
            password.display(),
            ca.display()
        )
    };
    // A port nobody listens on: refused at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let server = format!("127.0.0.1:{}", smtp.port);
    set_legs(&h, &[leg(server.clone(), &good), leg(server, &bad), leg(closed.to_string(), &good)].concat());
    let o = h.run(&["--json", "owner", "test"]);
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let oks: Vec<bool> =
        out["attempts"].as_array().unwrap().iter().map(|a| a["ok"].as_bool().unwrap()).collect();
    assert_eq!(oks, [true, false, false], "{out}");
    let mails = smtp.mails();
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert!(mails[0].contains("Subject: netsky: test page"), "{}", mails[0]);
    assert!(mails[0].contains(out["page"].as_str().unwrap()), "{}", mails[0]);
}

#[test]
fn the_tmux_leg_puts_a_banner_on_agent0_and_fails_without_it() {
    let sock = format!("nsky-owner-{}", std::process::id());
    let tmux = |args: &[&str]| {
        std::process::Command::new("tmux")
            .arg("-L")
            .arg(&sock)
            .args(args)
            .env_remove("TMUX")
            .output()
            .unwrap()
    };
    // The test's tmux server goes with the test, pass or fail.
    struct Server<'a>(&'a str);
    impl Drop for Server<'_> {
        fn drop(&mut self) {
            common::tmux::kill_server(self.0);
        }
    }
    let _server = Server(&sock);
    let h = TestHome::init("studio");
    edit_config(&h, &[("tmux_socket = \"\"", &format!("tmux_socket = \"{sock}\""))]);
    set_legs(&h, "[[owner.legs]]\nkind = \"tmux\"\n");
    // No agent0 session: the leg fails, with tmux's reason.
    let o = h.run(&["--json", "owner", "test"]);
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(out["attempts"][0]["ok"], false, "{out}");
    assert!(tmux(&["new-session", "-d", "-s", "agent0", "cat"]).status.success());
    let v = h.json(&["owner", "test"]);
    let banner =
        String::from_utf8_lossy(&tmux(&["show-options", "-v", "-t", "=agent0:", "@netsky-page"]).stdout)
            .into_owned();
    assert_eq!(v["attempts"][0]["ok"], true, "{v}");
    assert!(banner.contains("netsky test: test page"), "{banner}");
}
