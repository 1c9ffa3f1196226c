//! Running another CNI plugin the way a runtime does: the seed's `delegate`
//! (ordinary pods) and `boot_network` (the primary network of linked pods).
//!
//! The plugin named by the config's `type` is looked up in `CNI_PATH`, gets
//! its config on stdin (with `name` and `cniVersion` filled in from ours when
//! it has none), the same `CNI_*` variables we got, and its stdout is read
//! back as a result or a CNI error.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use rscni_types::{
    types::{CNIResult, ErrorResult},
    version::SpecVersion,
};
use serde_json::Value;

use crate::cni::{env::CniEnv, error::CniError};

/// One delegated network.
pub struct Delegate {
    /// `delegate` or `boot_network`: which key of our config it came from.
    role: &'static str,
    plugin: String,
    config: Value,
    version: SpecVersion,
}

impl Delegate {
    /// Reads a delegate config from our config's `role` key.
    pub fn new(role: &'static str, raw: &Value, parent: &Value) -> Result<Self, CniError> {
        let invalid = |reason: &str| CniError::Config { key: role.into(), reason: reason.into() };
        let mut config = raw.clone();
        let object = config.as_object_mut().ok_or_else(|| invalid("must be a CNI network config (an object)"))?;
        let plugin = object.get("type").and_then(Value::as_str).ok_or_else(|| invalid("has no \"type\""))?.to_owned();
        if plugin.is_empty() || plugin.contains('/') {
            return Err(invalid("\"type\" must be a plugin name, not a path"));
        }
        for key in ["name", "cniVersion"] {
            if !object.contains_key(key) {
                object.insert(key.into(), parent[key].clone());
            }
        }
        let version = object["cniVersion"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| invalid("has a cniVersion that is not a version"))?;
        Ok(Self { role, plugin, config, version })
    }

    /// The `cniVersion` the delegate speaks.
    pub fn version(&self) -> SpecVersion {
        self.version
    }

    /// Whether the delegate's config version has STATUS and GC (1.1.0+).
    pub fn knows_status_and_gc(&self) -> bool {
        self.version >= SpecVersion::new(1, 1, 0)
    }

    /// ADD: the delegate's result, in its own version's layout, read as ours.
    pub fn add(&self, env: &CniEnv) -> Result<CNIResult, CniError> {
        let output = self.call("ADD", &Self::identity(env), &env.path, None)?;
        serde_json::from_value(output.unwrap_or_default()).map_err(|e| self.failed(format!("its ADD result does not decode: {e}")))
    }

    pub fn del(&self, env: &CniEnv, prev_result: Option<&Value>) -> Result<(), CniError> {
        let inject = prev_result.map(|prev| ("prevResult", prev));
        self.call("DEL", &Self::identity(env), &env.path, inject).map(drop)
    }

    pub fn check(&self, env: &CniEnv, prev_result: Option<&Value>) -> Result<(), CniError> {
        let inject = prev_result.map(|prev| ("prevResult", prev));
        self.call("CHECK", &Self::identity(env), &env.path, inject).map(drop)
    }

    /// STATUS or GC: no container, only `CNI_PATH`; `inject` goes into the
    /// config (GC's valid attachments).
    pub fn call_node_verb(&self, command: &str, path: &[PathBuf], inject: Option<(&str, &Value)>) -> Result<(), CniError> {
        self.call(command, &[], path, inject).map(drop)
    }

    fn identity(env: &CniEnv) -> Vec<(&'static str, String)> {
        let args: Vec<String> = env.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
        vec![
            ("CNI_CONTAINERID", env.container_id.clone()),
            ("CNI_NETNS", env.netns.clone()),
            ("CNI_IFNAME", env.ifname.clone()),
            ("CNI_ARGS", args.join(";")),
        ]
    }

    /// Runs the plugin for one verb; its stdout as JSON, if it printed any.
    fn call(
        &self,
        command: &str,
        identity: &[(&'static str, String)],
        path: &[PathBuf],
        inject: Option<(&str, &Value)>,
    ) -> Result<Option<Value>, CniError> {
        let binary = find_plugin(&self.plugin, path)
            .ok_or_else(|| self.failed(format!("plugin {:?} is not in CNI_PATH {path:?}", self.plugin)))?;
        let mut config = self.config.clone();
        if let Some((key, value)) = inject {
            config[key] = value.clone();
        }
        let joined = std::env::join_paths(path).map_err(|e| self.failed(e.to_string()))?;
        let mut child = Command::new(&binary)
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_PATH", joined)
            .envs(identity.iter().map(|(k, v)| (*k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.failed(format!("cannot run {}: {e}", binary.display())))?;
        let stdin = serde_json::to_vec(&config).expect("JSON values serialize");
        // A plugin that exits without reading its stdin is judged by its exit.
        let _ = child.stdin.take().expect("piped").write_all(&stdin);
        let output = child.wait_with_output().map_err(|e| self.failed(format!("waiting for {}: {e}", binary.display())))?;
        let stdout: Option<Value> = serde_json::from_slice(&output.stdout).ok();
        if output.status.success() {
            return Ok(stdout);
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let decoded = stdout.and_then(|raw| Some((serde_json::from_value::<ErrorResult>(raw.clone()).ok()?, raw)));
        Err(match decoded {
            Some((error, raw)) => {
                // For a spec code the conversion puts the spec's wording in
                // place of the plugin's msg; keep what the plugin said.
                let error = rscni_types::error::Error::from(error);
                let msg = raw["msg"].as_str().map_or_else(|| error.msg().to_owned(), str::to_owned);
                let error = rscni_types::error::Error::Custom(u32::from(&error), msg, error.details().to_owned());
                CniError::Delegate { role: self.role, plugin: self.plugin.clone(), error }
            }
            None => self.failed(format!("{command} exited with {}: {}", output.status, stderr.trim())),
        })
    }

    fn failed(&self, reason: String) -> CniError {
        CniError::DelegateFailed { role: self.role, plugin: self.plugin.clone(), reason }
    }
}

fn find_plugin(name: &str, path: &[PathBuf]) -> Option<PathBuf> {
    path.iter().map(|dir| dir.join(name)).find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
