//! The charter parser on arbitrary bytes (a pushed charter): it may refuse,
//! never panic; verifying and deciding against a held charter never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netsky_mesh::SignedCharter;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = SignedCharter::from_json(data) {
        let _ = c.verify();
        let _ = c.decide(None);
        let _ = c.decide(Some(&c));
        let again = SignedCharter::from_json(&c.to_json()).expect("a parsed charter re-parses");
        assert_eq!(again, c);
    }
});
