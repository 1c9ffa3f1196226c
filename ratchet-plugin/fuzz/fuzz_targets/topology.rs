//! A topology file in any format `ratchet topology apply` reads (ratchet's
//! JSON or YAML, meshnet objects, containerlab): any text is a topology or an
//! error, and an accepted topology is written back (the store keeps it as
//! JSON) to an equal one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ratchet_plugin::topology::{Topology, input};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok((_, topology)) = input::parse(text, "default") else { return };
    let written = serde_json::to_string(&topology).expect("a topology serializes");
    let again = Topology::from_json(&written).unwrap_or_else(|e| panic!("{written} does not parse back: {e}"));
    assert_eq!(topology, again, "{written} parses back to another topology");
});
