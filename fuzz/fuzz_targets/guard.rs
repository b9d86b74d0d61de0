//! The guard on arbitrary bytes, with a fixed node key in the roster: it
//! may refuse, never panic, and never accepts anything the key did not sign.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use netsky_bus::{Guard, NodeName, Roster};
use netsky_keys::SecretKey;

fn roster() -> &'static Roster {
    static R: OnceLock<Roster> = OnceLock::new();
    R.get_or_init(|| {
        let key = SecretKey::from_bytes(&[7u8; 32]);
        let name: NodeName = "fuzz".parse().expect("a valid node name");
        Roster::solo(name, key.public()).expect("a roster of one")
    })
}

fuzz_target!(|data: &[u8]| {
    let guard = Guard::new(roster());
    if let Ok(env) = guard.check_bytes(data) {
        // Only the fixed key can have signed it, which the fuzzer cannot do
        // without the secret: an acceptance here means the guard is broken.
        panic!("guard accepted an envelope it cannot have been given: {}", env.id);
    }
    // The batch path (signatures checked as one batch) must agree: split the
    // input into pieces and check them all at once, then one by one.
    let pieces: Vec<&[u8]> = data.split(|&c| c == 0x1e).collect();
    let batch = guard.check_many(&pieces);
    assert_eq!(batch.len(), pieces.len(), "one verdict per input");
    for (piece, verdict) in pieces.iter().zip(batch) {
        let single = guard.check_bytes(piece).map(|e| e.id).map_err(|r| r.kind);
        assert_eq!(verdict.map(|e| e.id).map_err(|r| r.kind), single, "batch and single disagree");
    }
});
