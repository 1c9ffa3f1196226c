//! Running a CNI plugin the way a container runtime does: the verb and the
//! container's identity in `CNI_*` variables, the network config on stdin,
//! and the exit status and stdout (a result or a CNI error object) read back.
//! The tests, the demo and the bench all call plugins through [`invoke`].

use std::{
    ffi::OsStr,
    io::{self, Write},
    process::{Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::anyhow;
use serde_json::Value;

/// The `CNI_IFNAME` kubelet gives a pod's primary network.
pub const IFNAME: &str = "eth0";

/// Where the reference plugins (and a delegate) are found: `CNI_PATH`.
pub const CNI_PATH: &str = "/usr/lib/cni";

/// `CNI_ARGS` as kubelet (through containerd) sets it for a pod; with the
/// sandbox's id as `K8S_POD_INFRA_CONTAINER_ID` when given.
pub fn pod_args(namespace: &str, name: &str, infra_container_id: Option<&str>) -> String {
    let mut args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}");
    if let Some(id) = infra_container_id {
        args.push_str(&format!(";K8S_POD_INFRA_CONTAINER_ID={id}"));
    }
    args
}

/// The `CNI_*` variables of a per-container verb, in the order a reader
/// wants them: `CNI_IFNAME` [`IFNAME`], `CNI_PATH` [`CNI_PATH`].
pub fn verb_env(command: &str, container_id: &str, netns: &str, args: &str) -> Vec<(&'static str, String)> {
    vec![
        ("CNI_COMMAND", command.to_owned()),
        ("CNI_CONTAINERID", container_id.to_owned()),
        ("CNI_NETNS", netns.to_owned()),
        ("CNI_IFNAME", IFNAME.to_owned()),
        ("CNI_PATH", CNI_PATH.to_owned()),
        ("CNI_ARGS", args.to_owned()),
    ]
}

/// A container id shaped like containerd's (64 hex digits), the same for
/// the same seed.
pub fn container_id(seed: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut id = String::with_capacity(64);
    for round in 0..4u8 {
        for byte in seed.bytes().chain([round]) {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        id.push_str(&format!("{hash:016x}"));
    }
    id
}

/// What one plugin call printed and returned.
pub struct Reply {
    pub success: bool,
    pub status: ExitStatus,
    /// stdout as JSON, `Null` when it is not JSON (e.g. empty).
    pub json: Value,
    pub stdout: String,
    pub stderr: String,
    /// From starting the plugin to having reaped it.
    pub took: Duration,
    /// Writing stdin failed: a plugin that fails before reading its stdin
    /// closes it, and its exit status and error say more than this EPIPE.
    pub stdin_error: Option<io::Error>,
}

impl Reply {
    /// The CNI error code, if the call failed with one.
    pub fn code(&self) -> Option<u64> {
        self.json["code"].as_u64()
    }

    /// The error's `msg` and `details`, for looking for a word in either.
    pub fn error_text(&self) -> String {
        format!("{} {}", self.json["msg"].as_str().unwrap_or(""), self.json["details"].as_str().unwrap_or(""))
    }

    /// The reply when the plugin succeeded and read its stdin; else an error
    /// with its exit status, stdout and stderr.
    pub fn checked(self) -> anyhow::Result<Reply> {
        if !self.success {
            return Err(anyhow!("failed ({}): {} {}", self.status, self.stdout.trim(), self.stderr.trim()));
        }
        match self.stdin_error {
            Some(error) => Err(anyhow!(error).context("writing the config to the plugin's stdin")),
            None => Ok(self),
        }
    }

    /// Panics unless the call succeeded and printed nothing (DEL, CHECK,
    /// STATUS and GC print nothing on success).
    pub fn assert_silent_success(&self, what: &str) {
        assert!(self.success, "{what} failed: {}", self.stdout);
        assert!(self.stdout.is_empty(), "{what} prints nothing on success, got {}", self.stdout);
    }

    /// Panics unless the call failed with `code` and its `msg` or `details`
    /// mention every one of `mentions`.
    pub fn assert_error(&self, code: u64, mentions: &[&str]) {
        assert!(!self.success, "should fail with code {code}: {}", self.stdout);
        assert_eq!(self.code(), Some(code), "{}", self.stdout);
        let text = self.error_text();
        for word in mentions {
            assert!(text.contains(word), "{text:?} should mention {word:?}");
        }
    }
}

/// Runs a prepared command (the plugin, or the plugin under `nsenter`) as a
/// runtime runs a plugin: exactly this environment and nothing else, `stdin`
/// on its stdin; returns what it printed and its exit status. An error only
/// when it cannot be started.
pub fn invoke<K: AsRef<OsStr>, V: AsRef<OsStr>>(
    mut command: Command,
    env: &[(K, V)],
    stdin: &[u8],
) -> io::Result<Reply> {
    command
        .env_clear()
        .envs(env.iter().map(|(key, value)| (key, value)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = command.spawn()?;
    let stdin_error = child.stdin.take().expect("piped").write_all(stdin).err();
    let out = child.wait_with_output()?;
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    Ok(Reply { success: out.status.success(), status: out.status, json, stdout, stderr, took, stdin_error })
}
