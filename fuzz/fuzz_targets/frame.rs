//! The wire decoder on arbitrary bytes, as a member's (or, for the join
//! protocol, a stranger's) frame body: it may refuse, never panic, and what
//! it accepts must encode back to bytes that decode to the same frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netsky_mesh::wire::{Frame, JoinRequest, JoinResponse};

fn round_trip<T>(data: &[u8])
where
    T: serde::Serialize + for<'de> serde::Deserialize<'de> + PartialEq + std::fmt::Debug,
{
    if let Ok(v) = postcard::from_bytes::<T>(data) {
        let bytes = postcard::to_allocvec(&v).expect("a decoded frame encodes");
        assert_eq!(postcard::from_bytes::<T>(&bytes).expect("an encoded frame decodes"), v);
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<Frame>(data);
    round_trip::<JoinRequest>(data);
    round_trip::<JoinResponse>(data);
});
