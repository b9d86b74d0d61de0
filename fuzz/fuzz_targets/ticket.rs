//! The ticket decoder on arbitrary text (a join ticket a stranger presents):
//! it may refuse, never panic; verifying and the freshness check never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netsky_mesh::Ticket;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(t) = Ticket::decode(text)
    {
        let _ = t.verify();
        let _ = t.check_fresh(0);
        let _ = t.check_fresh(i64::MAX);
        assert_eq!(Ticket::decode(&t.encode()).expect("an encoded ticket decodes"), t);
    }
});
