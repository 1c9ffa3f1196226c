//! `log_file` and `log_level`: one line per verb with the container id, the
//! pod, the verb, its duration and its outcome; stdout carries the result
//! (or the error) and nothing else.

use ratchet_tests::{Node, Pod, Reply, container_of, end, unique, with_prev_result};
use serde_json::{Value, json};

/// A 1.1.0 config (so STATUS and GC are allowed) that logs to `log`.
fn logging_config(node: &Node, log: &std::path::Path) -> Value {
    let mut config = node.config_for("1.1.0");
    config["log_file"] = json!(log);
    config
}

fn lines(log: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(log).unwrap_or_default().lines().map(str::to_owned).collect()
}

/// The line has the verb's fields: verb, container, pod, a duration in ms,
/// and the outcome.
fn assert_verb_line(line: &str, verb: &str, container: &str, pod: &str, outcome: &str) {
    for field in
        [format!("verb={verb} "), format!("container={container} "), format!("pod={pod} "), format!(" {outcome} ")]
    {
        assert!(line.contains(&field), "{line:?} should have {field:?}");
    }
    let ms =
        line.split_whitespace().find_map(|f| f.strip_prefix("ms=")).unwrap_or_else(|| panic!("{line:?} has no ms="));
    assert!(ms.parse::<f64>().is_ok_and(|ms| ms >= 0.0), "{line:?}: duration {ms:?}");
}

/// Stdout is exactly one JSON document (or nothing), stderr is empty: the
/// log went to the file.
fn assert_only_the_result(reply: &Reply, expect_json: bool) {
    if expect_json {
        let mut docs = serde_json::Deserializer::from_str(&reply.stdout).into_iter::<Value>();
        assert!(docs.next().is_some_and(|d| d.is_ok()), "stdout is a JSON document: {:?}", reply.stdout);
        assert!(docs.next().is_none(), "and nothing else: {:?}", reply.stdout);
    } else {
        assert!(reply.stdout.is_empty(), "stdout is empty: {:?}", reply.stdout);
    }
    assert!(reply.stderr.is_empty(), "with a log_file nothing goes to stderr: {:?}", reply.stderr);
}

#[test]
fn one_line_per_verb_and_only_the_result_on_stdout() {
    let node = Node::new();
    let log = node.state_dir.path().join("verbs.log");
    let config = logging_config(&node, &log);
    let (alpha, beta, stranger) =
        (Pod::new("default", "alpha"), Pod::new("default", "beta"), Pod::new("default", "stranger"));
    node.apply(&json!({"links": [{"name": unique("lk"), "a": end(&alpha, "in1", &["10.85.0.1/24"]), "b": end(&beta, "in2", &["10.85.0.2/24"])}]}));
    let alpha_id = container_of(&alpha);

    let added = node.call_pod("ADD", &alpha, &config);
    assert!(added.success, "{}", added.stdout);
    assert_only_the_result(&added, true);
    let check = node.check(&alpha, &config, &added.json);
    check.assert_silent_success("CHECK");
    assert_only_the_result(&check, false);
    let status = node.status(&config);
    status.assert_silent_success("STATUS");
    assert_only_the_result(&status, false);
    let gc = node.gc(&config, &[(alpha_id.clone(), "eth0")]);
    gc.assert_silent_success("GC");
    assert_only_the_result(&gc, false);
    let del = node.call_pod("DEL", &alpha, &with_prev_result(&config, &added.json));
    del.assert_silent_success("DEL");
    assert_only_the_result(&del, false);
    let refused = node.call_pod("ADD", &stranger, &config);
    refused.assert_error(101, &["default/stranger"]);
    assert_only_the_result(&refused, true);

    let lines = lines(&log);
    assert_eq!(lines.len(), 6, "one line per verb: {lines:#?}");
    assert_verb_line(&lines[0], "ADD", &alpha_id, "default/alpha", "ok");
    assert_verb_line(&lines[1], "CHECK", &alpha_id, "default/alpha", "ok");
    // STATUS and GC are for the node: no container, no pod.
    assert_verb_line(&lines[2], "STATUS", "", "/", "ok");
    assert_verb_line(&lines[3], "GC", "", "/", "ok");
    assert_verb_line(&lines[4], "DEL", &alpha_id, "default/alpha", "ok");
    assert_verb_line(&lines[5], "ADD", &container_of(&stranger), "default/stranger", "failed");
    assert!(lines[5].contains("default/stranger has no link"), "a failure says why: {}", lines[5]);
}

#[test]
fn log_level_warn_logs_only_failures() {
    let node = Node::new();
    let log = node.state_dir.path().join("verbs.log");
    let mut config = logging_config(&node, &log);
    config["log_level"] = json!("warn");
    let (alpha, beta, stranger) =
        (Pod::new("default", "alpha"), Pod::new("default", "beta"), Pod::new("default", "stranger"));
    node.apply(&json!({"links": [{"name": unique("lk"), "a": end(&alpha, "in1", &["10.85.1.1/24"]), "b": end(&beta, "in2", &["10.85.1.2/24"])}]}));

    assert!(node.call_pod("ADD", &alpha, &config).success);
    assert!(lines(&log).is_empty(), "an ok verb is info: {:?}", lines(&log));
    assert!(!node.call_pod("ADD", &stranger, &config).success);
    let lines = lines(&log);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_verb_line(&lines[0], "ADD", &container_of(&stranger), "default/stranger", "failed");
}

#[test]
fn an_invalid_log_level_is_named() {
    let node = Node::new();
    let alpha = Pod::new("default", "alpha");
    let mut config = node.config();
    config["log_level"] = json!("loud");
    node.call_pod("ADD", &alpha, &config).assert_error(7, &["log_level"]);
}

#[test]
fn without_a_log_file_a_failure_goes_to_stderr() {
    let node = Node::new();
    let stranger = Pod::new("default", "stranger");
    node.apply(&json!({"links": []}));
    let reply = node.call_pod("ADD", &stranger, &node.config());
    reply.assert_error(101, &["default/stranger"]);
    let mut docs = serde_json::Deserializer::from_str(&reply.stdout).into_iter::<Value>();
    assert!(
        docs.next().is_some_and(|d| d.is_ok()) && docs.next().is_none(),
        "stdout is only the error: {:?}",
        reply.stdout
    );
    assert!(reply.stderr.contains("verb=ADD") && reply.stderr.contains("failed"), "{:?}", reply.stderr);
}

#[test]
fn the_seeds_unused_keys_are_accepted_with_a_logged_warning() {
    let node = Node::new();
    let log = node.state_dir.path().join("verbs.log");
    let mut config = logging_config(&node, &log);
    // etcd_host/etcd_port select the etcd store now; the etcd tests cover them.
    for (key, value) in [("use_labels", json!(false)), ("child_path", json!("/opt/cni/bin/ratchet-child"))] {
        config[key] = value;
    }
    let (alpha, beta) = (Pod::new("default", "alpha"), Pod::new("default", "beta"));
    node.apply(&json!({"links": [{"name": unique("lk"), "a": end(&alpha, "in1", &["10.85.2.1/24"]), "b": end(&beta, "in2", &["10.85.2.2/24"])}]}));
    let added = node.call_pod("ADD", &alpha, &config);
    assert!(added.success, "the seed's config shape is accepted: {}", added.stdout);
    assert_only_the_result(&added, true);
    let lines = lines(&log);
    for key in ["use_labels", "child_path"] {
        assert!(lines.iter().any(|l| l.contains("WARN") && l.contains(key)), "{key} is warned about: {lines:#?}");
    }
    assert!(lines.iter().any(|l| l.contains("verb=ADD") && l.contains(" ok ")), "{lines:#?}");
}
