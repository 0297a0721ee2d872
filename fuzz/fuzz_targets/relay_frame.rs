//! Native IICP frames from a relay peer (`relay::framing`): a 12-byte
//! header, then its payload decoded as a bounded CBOR map. Whatever comes,
//! a header announcing more than the cap is refused from the header alone,
//! decoding never panics, and a map that decodes encodes back to one that
//! decodes, after which encoding and decoding are each other's inverse.
#![no_main]

use iicp_host::relay::framing::{HEADER_LEN, IntMap, encode_map, parse_header};
use libfuzzer_sys::fuzz_target;

const CAP: usize = 64 << 10;

fuzz_target!(|input: &[u8]| {
    let Some((header, payload)) = input.split_first_chunk::<HEADER_LEN>() else {
        return;
    };
    if let Ok(header) = parse_header(header, CAP) {
        assert!(header.len <= CAP);
    }
    // The payload alone, whatever the header said.
    if let Ok(map) = IntMap::decode(payload) {
        let encoded = encode_map(map.into_entries());
        let again = IntMap::decode(&encoded).expect("an encoded map decodes");
        // The first encoding may normalise what the peer wrote (a tagged
        // bignum holding a small value comes back a plain integer); from
        // then on encoding and decoding are each other's inverse. Compared
        // encoded: a NaN float is not equal to itself.
        let normal = encode_map(again.into_entries());
        let third = IntMap::decode(&normal).expect("a normalised map decodes");
        assert_eq!(encode_map(third.into_entries()), normal);
    }
});
