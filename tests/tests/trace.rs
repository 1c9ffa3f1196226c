//! `ratchet trace` turns per-frame logging on for the whole node while it
//! runs; ended as a supervisor, `timeout` or a closed terminal ends it
//! (SIGTERM, SIGHUP) as well as by Ctrl-C (SIGINT), it turns it off again.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use ratchet_tests::{Node, Pod, end, eventually, ratchet_bin, run, unique};
use serde_json::{Value, json};

/// The `trace` switch as bpftool (an independent witness) reads it from the pinned `.bss`.
fn tracing_on(node: &Node) -> bool {
    let dump = run("bpftool", &["-j", "map", "dump", "pinned", node.pin_root.join("switches").to_str().unwrap()]);
    let entries: Value = serde_json::from_str(&dump).unwrap();
    let bytes = &entries[0]["value"];
    // The raw value is the struct's bytes; `trace` is the first u32.
    let first = bytes.as_array().map(|b| b.iter().take(4).map(|x| x.as_str().unwrap_or("0x00").to_owned()));
    first.is_some_and(|mut b| b.any(|byte| byte != "0x00"))
        || entries[0]["formatted"]["value"]["trace"].as_u64().is_some_and(|t| t != 0)
}

#[test]
fn a_trace_ended_by_sigterm_or_sighup_turns_tracing_off() {
    let node = Node::new();
    let [alpha, beta] = ["alpha", "beta"].map(|name| Pod::new("default", name));
    node.apply(&json!({"links": [
        {"name": unique("tr"), "a": end(&alpha, "in1", &["10.96.0.1/24"]), "b": end(&beta, "in1", &["10.96.0.2/24"])},
    ]}));
    node.add(&alpha);
    assert!(!tracing_on(&node));
    for signal in [Signal::SIGTERM, Signal::SIGHUP] {
        let mut trace = Command::new(ratchet_bin())
            .args(["--pin-root", node.pin_root.to_str().unwrap(), "trace"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ratchet trace");
        assert!(eventually(|| tracing_on(&node)), "trace turns tracing on");
        kill(Pid::from_raw(trace.id() as i32), signal).unwrap();
        let started = std::time::Instant::now();
        while trace.try_wait().unwrap().is_none() {
            assert!(started.elapsed() < Duration::from_secs(5), "trace ends on {signal}");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!tracing_on(&node), "tracing is off again after {signal}");
    }
    node.del(&alpha);
}
