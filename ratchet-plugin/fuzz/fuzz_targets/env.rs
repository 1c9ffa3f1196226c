//! The `CNI_*` environment: whatever a runtime (or a person calling the
//! binary) sets, ADD and DEL get a checked `CniEnv` or a CNI error.
//!
//! The input is one `KEY=VALUE` per line. A value that is not UTF-8 reads as
//! unset, as `std::env::var(..).ok()` does in the plugin; a later line
//! overrides an earlier one. (Values cannot hold a newline here; nothing in
//! the parser treats newlines specially.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use ratchet_plugin::cni::env::CniEnv;

fuzz_target!(|data: &[u8]| {
    let vars: Vec<(&[u8], &[u8])> = data
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let eq = line.iter().position(|&b| b == b'=')?;
            Some((&line[..eq], &line[eq + 1..]))
        })
        .collect();
    let get = |key: &str| {
        let (_, value) = vars.iter().rev().find(|(k, _)| *k == key.as_bytes())?;
        String::from_utf8(value.to_vec()).ok()
    };
    for env in [CniEnv::for_add(get), CniEnv::for_del(get)] {
        match env {
            Ok(env) => {
                if let Err(error) = env.pod() {
                    let _ = error.to_wire();
                }
            }
            Err(error) => {
                let _ = error.to_wire();
            }
        }
    }
});
