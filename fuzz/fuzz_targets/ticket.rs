//! The ticket decoder on arbitrary text (a join ticket a stranger presents):
//! it may refuse, never panic. Decoding checks the signature, so mutated text
//! rarely gets past it: the ticket's fields are also fed in directly (postcard),
//! where verifying, the freshness check and encoding must not panic either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netsky_mesh::Ticket;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(t) = Ticket::decode(text)
    {
        assert_eq!(Ticket::decode(&t.encode()).expect("an encoded ticket decodes"), t);
    }
    if data.len() <= 64 * 1024
        && let Ok(t) = postcard::from_bytes::<Ticket>(data)
    {
        let verified = t.verify().is_ok();
        for now in [i64::MIN, -1, 0, 1, i64::MAX] {
            let _ = t.check_fresh(now);
        }
        let again = Ticket::decode(&t.encode());
        // A ticket whose signature fails never decodes; one that decodes is the same ticket.
        if !verified {
            assert!(again.is_err(), "{again:?}");
        }
        if let Ok(a) = again {
            assert_eq!(a, t);
        }
    }
});
