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

use super::{env::CniEnv, error::CniError, version::SUPPORTED_VERSIONS};
use crate::config::Settings;

/// The two delegate keys of the seed's standalone mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `delegate`: the network of every pod without links.
    Delegate,
    /// `boot_network`: the primary network of pods with links.
    BootNetwork,
}

impl Role {
    /// The config key it is read from.
    pub fn key(self) -> &'static str {
        match self {
            Role::Delegate => "delegate",
            Role::BootNetwork => "boot_network",
        }
    }
}

/// Reads both delegate keys, so a malformed one is a config error for every
/// verb and every pod, not only when a pod first needs it.
pub fn check_keys(settings: &Settings, raw: &Value) -> Result<(), CniError> {
    Delegate::of(Role::Delegate, settings, raw)?;
    Delegate::of(Role::BootNetwork, settings, raw)?;
    Ok(())
}

/// One delegated network: a single plugin config, or a conflist whose
/// plugins run in order (ADD, CHECK) or in reverse (DEL), each ADD getting
/// the one before's result as `prevResult`, as libcni runs them.
pub struct Delegate {
    /// `delegate` or `boot_network`: which key of our config it came from.
    role: &'static str,
    plugins: Vec<Plugin>,
    version: SpecVersion,
}

/// One plugin of a delegate: its `type` and its config, `name` and
/// `cniVersion` filled in.
struct Plugin {
    kind: String,
    config: Value,
}

impl Delegate {
    /// The delegate the config (`raw`, read into `settings`) names for
    /// `role`, if any.
    pub fn of(role: Role, settings: &Settings, raw: &Value) -> Result<Option<Self>, CniError> {
        let given = match role {
            Role::Delegate => settings.delegate.as_ref(),
            Role::BootNetwork => settings.boot_network.as_ref(),
        };
        given.map(|given| Self::new(role.key(), given, raw)).transpose()
    }

    /// Reads a delegate config (or conflist) from our config's `role` key.
    fn new(role: &'static str, raw: &Value, parent: &Value) -> Result<Self, CniError> {
        let invalid = |reason: String| CniError::Config { key: role.into(), reason };
        let object =
            raw.as_object().ok_or_else(|| invalid("must be a CNI network config or conflist (an object)".into()))?;
        let name = object.get("name").unwrap_or(&parent["name"]).clone();
        let version = list_version(object, parent).map_err(invalid)?;
        let configs = match object.get("plugins") {
            Some(Value::Array(plugins)) if !plugins.is_empty() => plugins.clone(),
            Some(_) => return Err(invalid("\"plugins\" must be a non-empty list".into())),
            None => vec![raw.clone()],
        };
        let plugins = configs
            .into_iter()
            .map(|mut config| {
                let kind = config.get("type").and_then(Value::as_str).unwrap_or_default().to_owned();
                if kind.is_empty() || kind.contains('/') {
                    return Err(invalid("every plugin needs a \"type\" that is a plugin name, not a path".into()));
                }
                config["name"] = name.clone();
                config["cniVersion"] = Value::String(version.to_string());
                Ok(Plugin { kind, config })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { role, plugins, version })
    }

    /// The `cniVersion` the delegate speaks.
    pub fn version(&self) -> SpecVersion {
        self.version
    }

    /// Whether the delegate's config version has STATUS and GC (1.1.0+).
    pub fn knows_status_and_gc(&self) -> bool {
        self.version >= SpecVersion::new(1, 1, 0)
    }

    /// ADD: the (last) plugin's result, in its version's layout, read as ours.
    pub fn add(&self, env: &CniEnv) -> Result<CNIResult, CniError> {
        let mut prev: Option<Value> = None;
        for plugin in &self.plugins {
            let inject = prev.as_ref().map(|prev| ("prevResult", prev));
            prev = self.call(plugin, "ADD", &Self::identity(env), &env.path, inject)?;
        }
        let last = self.plugins.last().expect("at least one plugin");
        serde_json::from_value(prev.unwrap_or_default())
            .map_err(|e| self.failed(last, format!("its ADD result does not decode: {e}")))
    }

    pub fn del(&self, env: &CniEnv, prev_result: Option<&Value>) -> Result<(), CniError> {
        let inject = prev_result.map(|prev| ("prevResult", prev));
        for plugin in self.plugins.iter().rev() {
            self.call(plugin, "DEL", &Self::identity(env), &env.path, inject)?;
        }
        Ok(())
    }

    pub fn check(&self, env: &CniEnv, prev_result: Option<&Value>) -> Result<(), CniError> {
        let inject = prev_result.map(|prev| ("prevResult", prev));
        for plugin in &self.plugins {
            self.call(plugin, "CHECK", &Self::identity(env), &env.path, inject)?;
        }
        Ok(())
    }

    /// STATUS or GC: no container, only `CNI_PATH`; `inject` goes into the
    /// config (GC's valid attachments).
    pub fn call_node_verb(
        &self,
        command: &str,
        path: &[PathBuf],
        inject: Option<(&str, &Value)>,
    ) -> Result<(), CniError> {
        for plugin in &self.plugins {
            self.call(plugin, command, &[], path, inject)?;
        }
        Ok(())
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
        plugin: &Plugin,
        command: &str,
        identity: &[(&'static str, String)],
        path: &[PathBuf],
        inject: Option<(&str, &Value)>,
    ) -> Result<Option<Value>, CniError> {
        let binary = find_plugin(&plugin.kind, path)
            .ok_or_else(|| self.failed(plugin, format!("plugin {:?} is not in CNI_PATH {path:?}", plugin.kind)))?;
        let mut config = plugin.config.clone();
        if let Some((key, value)) = inject {
            config[key] = value.clone();
        }
        let joined = std::env::join_paths(path).map_err(|e| self.failed(plugin, e.to_string()))?;
        let mut child = Command::new(&binary)
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_PATH", joined)
            .envs(identity.iter().map(|(k, v)| (*k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.failed(plugin, format!("cannot run {}: {e}", binary.display())))?;
        let stdin = serde_json::to_vec(&config).expect("JSON values serialize");
        // The verb's deadline covers the plugin: it is killed if it hangs.
        crate::cni::deadline::delegate_running(Some(child.id()));
        // A plugin that exits without reading its stdin is judged by its exit.
        let _ = child.stdin.take().expect("piped").write_all(&stdin);
        let output = child.wait_with_output();
        crate::cni::deadline::delegate_running(None);
        let output = output.map_err(|e| self.failed(plugin, format!("waiting for {}: {e}", binary.display())))?;
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
                CniError::Delegate { role: self.role, plugin: plugin.kind.clone(), error }
            }
            None => self.failed(plugin, format!("{command} exited with {}: {}", output.status, stderr.trim())),
        })
    }

    fn failed(&self, plugin: &Plugin, reason: String) -> CniError {
        CniError::DelegateFailed { role: self.role, plugin: plugin.kind.clone(), reason }
    }
}

/// The version a delegate speaks: a conflist's highest `cniVersions` entry
/// that ratchet supports too (spec 1.1), else its `cniVersion`, else ours.
fn list_version(object: &serde_json::Map<String, Value>, parent: &Value) -> Result<SpecVersion, String> {
    let parse = |v: &Value| v.as_str().and_then(|v| v.parse::<SpecVersion>().ok());
    if let Some(listed) = object.get("cniVersions").and_then(Value::as_array) {
        let usable = listed.iter().filter_map(parse).filter(|v| SUPPORTED_VERSIONS.contains(v)).max();
        return usable.ok_or_else(|| format!("none of its cniVersions {listed:?} is one ratchet speaks"));
    }
    let declared = object.get("cniVersion").unwrap_or(&parent["cniVersion"]);
    parse(declared).ok_or_else(|| format!("cniVersion {declared} is not a version"))
}

fn find_plugin(name: &str, path: &[PathBuf]) -> Option<PathBuf> {
    path.iter().map(|dir| dir.join(name)).find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
