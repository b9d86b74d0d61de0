//! Recovery from a batch journal or a segment on arbitrary bytes, as a
//! crashed writer or a damaged disk could leave one: recovery may lay out envelopes that parse
//! and refuse the rest, never panic, and never write outside the mailbox or
//! under a name that is not `<id>.json` of a record it parsed and no void
//! took back.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use netsky_bus::{AgentName, Envelope, Layout, Mailbox, NodeName};

/// A segment's take-back line, as the bus writes it.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Void {
    void: Vec<String>,
}

fn boot() -> &'static str {
    static B: OnceLock<String> = OnceLock::new();
    B.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .expect("Linux tells its boot id")
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    // The same bytes as a batch journal whose writer died, and as a mailbox segment.
    for name in [format!("x-1-0.{}.open", boot()), format!("cur-{}.seg", boot())] {
        recover_as(&name, data);
    }
});

fn recover_as(name: &str, data: &[u8]) {
    let dir = tempfile::tempdir().expect("a scratch folder");
    let node: NodeName = "fuzz".parse().expect("a valid node name");
    let mb = Mailbox::open(&Layout::new(dir.path()), &node, AgentName::Numbered(1)).expect("a mailbox");
    std::fs::create_dir_all(mb.journal_dir()).expect("the journal folder");
    std::fs::write(mb.journal_dir().join(name), data).expect("the journal");
    let lock = mb.lock(Duration::from_secs(1)).expect("the mailbox lock");
    let recovered = mb.checkpoint(&lock).expect("recovering a journal in a healthy folder");
    // Whatever was laid out is exactly the records that parse as envelopes,
    // less those a void after them took back (each void name, the nearest
    // earlier record of it not yet taken back).
    let mut records: Vec<(String, bool)> = Vec::new();
    for l in data.split_inclusive(|&c| c == b'\n').filter(|l| l.len() > 1 && l.ends_with(b"\n")) {
        if let Ok(e) = Envelope::from_json(l) {
            records.push((e.file_name(), false));
        } else if l.starts_with(b"{\"void\"")
            && let Ok(v) = serde_json::from_slice::<Void>(l)
        {
            for name in v.void {
                if let Some(r) = records.iter_mut().rev().find(|(n, voided)| *n == name && !voided) {
                    r.1 = true;
                }
            }
        }
    }
    let expected: std::collections::BTreeSet<String> =
        records.into_iter().filter(|(_, voided)| !voided).map(|(n, _)| n).collect();
    let laid: std::collections::BTreeSet<String> = std::fs::read_dir(mb.inbox_dir())
        .expect("the inbox")
        .map(|e| e.expect("an entry").file_name().into_string().expect("a UTF-8 name"))
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(laid, expected);
    assert_eq!(recovered.relaid, expected.len());
    // Nothing else appeared in the home but the bus's own folders.
    for e in std::fs::read_dir(dir.path()).expect("the home") {
        let name = e.expect("an entry").file_name();
        assert_eq!(name, "channels", "unexpected {name:?} in the home");
    }
}
