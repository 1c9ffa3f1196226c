//! The reference plugins (`/usr/lib/cni`) ratchet is chained after or
//! delegates to: running one for a pod ([`reference_plugin`]), the configs a
//! runtime sends them and ratchet ([`with_prev_result`],
//! [`with_valid_attachments`]), and guards for what they leave behind
//! ([`Bridge`]'s device, [`HostLocal`]'s allocations).

use std::{
    path::Path,
    process::{Command, Stdio},
};

use ratchet_harness::runtime::CNI_PATH;
use serde_json::{Value, json};

use crate::{
    pods::Pod,
    runtime::{Reply, call_binary, kubelet_env},
    util::unique,
};

/// Runs a reference plugin from `/usr/lib/cni` for `pod`, as a runtime runs
/// the first plugin of a chain: kubelet's `CNI_*` variables, the config on stdin.
pub fn reference_plugin(plugin: &str, command: &str, pod: &Pod, config: &Value) -> Reply {
    let env = kubelet_env(command, pod);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    call_binary(&Path::new(CNI_PATH).join(plugin), &env, config.to_string().as_bytes())
}

/// The config with a `prevResult`, as a runtime sends CHECK, DEL and any
/// chained plugin.
pub fn with_prev_result(config: &Value, prev: &Value) -> Value {
    let mut config = config.clone();
    config["prevResult"] = prev.clone();
    config
}

/// The config with the `cni.dev/valid-attachments` GC reads.
pub fn with_valid_attachments(config: &Value, valid: &[(String, &str)]) -> Value {
    let mut config = config.clone();
    let list: Vec<Value> = valid.iter().map(|(id, ifname)| json!({"containerID": id, "ifname": ifname})).collect();
    config["cni.dev/valid-attachments"] = json!(list);
    config
}

/// A bridge name for the bridge plugin, which makes the device on its first
/// ADD and never deletes it; the guard deletes it on drop.
pub struct Bridge {
    pub name: String,
}

impl Bridge {
    pub fn new() -> Self {
        let name = unique("rtbr");
        assert!(name.len() <= 15, "{name} is too long for an interface name");
        Self { name }
    }

    /// The interfaces enslaved to the bridge (the host ends of its pods).
    pub fn ports(&self) -> Vec<String> {
        let out = Command::new("ip").args(["-j", "link", "show", "master", &self.name]).output().unwrap();
        let links: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        links.iter().map(|l| l["ifname"].as_str().unwrap().to_owned()).collect()
    }
}

impl Default for Bridge {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.name]).stderr(Stdio::null()).status();
    }
}

/// host-local IPAM whose allocations live in a directory of this test's own
/// (removed on drop), so tests neither share nor leak addresses.
pub struct HostLocal {
    pub data_dir: tempfile::TempDir,
    pub subnet: String,
}

impl HostLocal {
    pub fn new(subnet: &str) -> Self {
        Self { data_dir: tempfile::tempdir().unwrap(), subnet: subnet.into() }
    }

    /// The `ipam` section of a plugin config.
    pub fn ipam(&self) -> Value {
        json!({"type": "host-local", "subnet": self.subnet, "dataDir": self.data_dir.path()})
    }

    /// The addresses host-local holds for the network `name` (one file each).
    pub fn allocated(&self, network: &str) -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(self.data_dir.path().join(network)) else { return Vec::new() };
        let mut ips: Vec<String> = dir
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.parse::<std::net::IpAddr>().is_ok())
            .collect();
        ips.sort();
        ips
    }
}
