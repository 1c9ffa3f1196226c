//! A runtime's config on stdin, as `cni::run` reads it: any text is a
//! config or a CNI error, never a panic. `prevResult` is parsed in there
//! too; `prev_result` aims at it more directly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ratchet_plugin::cni::parse_config;

fuzz_target!(|data: &[u8]| {
    // `run` reads stdin into a String: bytes that are not UTF-8 never get here.
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(error) = parse_config(text) {
        // What the runtime is told: the error's code, message and details.
        let _ = error.to_wire();
    }
});
