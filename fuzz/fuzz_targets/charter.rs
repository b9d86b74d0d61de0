//! The charter parser on arbitrary bytes (a pushed charter): it may refuse,
//! never panic; verifying and deciding against a held charter never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netsky_mesh::{MAX_CHARTER_BYTES, SignedCharter};

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = SignedCharter::from_json(data) {
        let _ = c.verify();
        let _ = c.decide(None);
        let _ = c.decide(Some(&c));
        let json = c.to_json();
        // Pretty printing can grow a compact charter near the limit past it.
        if json.len() <= MAX_CHARTER_BYTES {
            let again = SignedCharter::from_json(&json).expect("a parsed charter re-parses");
            assert_eq!(again, c);
        }
    }
});
