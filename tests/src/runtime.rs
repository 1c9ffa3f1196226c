//! Invoking a CNI plugin the way a runtime does, as the tests need it: the
//! harness's [`ratchet_harness::runtime::invoke`] (exactly these `CNI_*`
//! variables, the config on stdin, the [`Reply`] read back) with a panic
//! where a plugin cannot even be started, and kubelet's variables for a
//! [`Pod`].

use std::{path::Path, process::Command};

use ratchet_harness::runtime::{invoke, pod_args, verb_env};

pub use ratchet_harness::runtime::Reply;

use crate::pods::{Pod, container_of};

/// Runs a plugin binary with exactly this environment and stdin.
pub fn call_binary(binary: &Path, env: &[(&str, &str)], stdin: &[u8]) -> Reply {
    call_command(Command::new(binary), env, stdin)
}

/// Runs a prepared command (e.g. the plugin under `nsenter`) as a runtime
/// runs a plugin: exactly this environment, the config on stdin.
pub fn call_command(command: Command, env: &[(&str, &str)], stdin: &[u8]) -> Reply {
    let shown = format!("{command:?}");
    invoke(command, env, stdin).unwrap_or_else(|e| panic!("spawn {shown}: {e}"))
}

/// The `CNI_*` variables kubelet (through containerd) sets for a verb on
/// `pod`: the tests' container id for it, `eth0`, the reference plugins'
/// `CNI_PATH`.
pub fn kubelet_env(command: &str, pod: &Pod) -> Vec<(&'static str, String)> {
    verb_env(command, &container_of(pod), &pod.netns_path(), &pod_args(&pod.namespace, &pod.name, None))
}

/// The same with the sandbox's id in `CNI_ARGS` too
/// (`K8S_POD_INFRA_CONTAINER_ID`), for a container id and netns of the
/// caller's choosing.
pub fn sandbox_env(command: &str, container_id: &str, netns: &str, pod: (&str, &str)) -> Vec<(&'static str, String)> {
    verb_env(command, container_id, netns, &pod_args(pod.0, pod.1, Some(container_id)))
}
