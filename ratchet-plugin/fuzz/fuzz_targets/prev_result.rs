//! `prevResult`, the result a chained plugin hands ratchet: any JSON value
//! there, under each result layout (0.4.0's legacy one, 1.0.0, and 1.1.0's
//! with MTUs), gives a config or a CNI error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ratchet_plugin::cni::parse_config;

fuzz_target!(|data: &[u8]| {
    let Ok(prev_result) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    for version in ["1.0.0", "0.4.0", "1.1.0"] {
        let config = serde_json::json!({
            "cniVersion": version,
            "name": "n",
            "type": "ratchet",
            "prevResult": prev_result,
        });
        if let Err(error) = parse_config(&config.to_string()) {
            let _ = error.to_wire();
        }
    }
});
