//! The envelope parser on arbitrary bytes: it may refuse, never panic, and
//! whatever it accepts must print back to JSON that parses to the same envelope.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netsky_bus::Envelope;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = Envelope::from_json(data) {
        let again = Envelope::from_json(&env.to_json()).expect("a parsed envelope re-parses");
        assert_eq!(env, again);
        assert_eq!(env.signing_bytes(), again.signing_bytes());
    }
});
