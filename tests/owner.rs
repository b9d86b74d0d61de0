//! End-to-end tests of the owner legs: real `netsky` processes, real files
//! and commands as legs, in temporary homes.

mod common;

use common::{TestHome, TestMesh};

/// Replaces the home's `legs = []` with `legs` (TOML `[[owner.legs]]` blocks).
fn set_legs(h: &TestHome, legs: &str) {
    let path = h.join("config.toml");
    let config = std::fs::read_to_string(&path).unwrap();
    assert!(config.contains("legs = []\n"), "{config}");
    std::fs::write(&path, config.replace("legs = []\n", "") + legs).unwrap();
}

/// The lines of a JSON-lines file.
fn json_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

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
    set_legs(&ok, &format!("[[owner.legs]]\nkind = \"file\"\npath = \"{}\"\n", ok.join("p.jsonl").display()));
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
    set_legs(laptop, &format!("[[owner.legs]]\nkind = \"file\"\npath = \"{}\"\n", pages.display()));
    let err = laptop.fails(&["owner", "test"], 1);
    assert!(err.contains("only the root pages the owner") && err.contains("studio"), "{err}");
    assert!(!pages.exists(), "a member's leg was used");
    assert!(!laptop.join("state/owner-pages.jsonl").exists());
}
