//! The runtime's request: the network config on stdin (the spec's keys,
//! `prevResult` and ratchet's own, all checked once.

use std::path::PathBuf;

use rscni_types::{
    types::{Cmd, NetConf},
    version::SpecVersion,
};

use super::{
    delegate,
    env::{self, CniEnv},
    error::CniError,
    version::{SUPPORTED_VERSIONS, canonical_version},
};
use crate::config::Settings;

/// The network config as the runtime sent it: the spec's view, the raw
/// JSON (delegates get parts of it verbatim) and ratchet's own keys.
pub struct Config {
    /// The spec's keys.
    pub netconf: NetConf,
    /// The whole config as sent.
    pub raw: serde_json::Value,
    /// `cniVersion`, one of [`SUPPORTED_VERSIONS`].
    pub version: SpecVersion,
    /// Ratchet's own keys.
    pub settings: Settings,
}

/// One verb, with what it takes from the environment.
pub enum Verb {
    /// ADD, with its container.
    Add(CniEnv),
    /// DEL, whose netns may be gone.
    Del(CniEnv),
    /// CHECK, with its container.
    Check(CniEnv),
    /// STATUS, with `CNI_PATH`.
    Status(Vec<PathBuf>),
    /// GC, with `CNI_PATH`.
    Gc(Vec<PathBuf>),
}

impl Verb {
    /// Reads `CNI_COMMAND`'s verb, checks the config's version has it, and
    /// reads the variables it needs through `var`. VERSION is answered
    /// before any config is read, so it is not one of these.
    pub fn read(command: &str, config: &Config, var: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let not_a_verb = || CniError::Env { var: "CNI_COMMAND", reason: format!("{command:?} is not a CNI verb") };
        let cmd: Cmd = command.parse().map_err(|_| not_a_verb())?;
        config.version.allows(cmd).map_err(|e| CniError::IncompatibleVersion(e.details().to_owned()))?;
        Ok(match cmd {
            Cmd::Add => Verb::Add(CniEnv::for_add(var)?),
            Cmd::Del => Verb::Del(CniEnv::for_del(var)?),
            Cmd::Check => Verb::Check(CniEnv::for_add(var)?),
            Cmd::Status => Verb::Status(env::cni_path(var)),
            Cmd::Gc => Verb::Gc(env::cni_path(var)),
            Cmd::Version => return Err(not_a_verb()),
        })
    }

    /// The container the verb is for, if it has one.
    pub fn env(&self) -> Option<&CniEnv> {
        match self {
            Verb::Add(env) | Verb::Del(env) | Verb::Check(env) => Some(env),
            Verb::Status(_) | Verb::Gc(_) => None,
        }
    }
}

/// Parses a runtime's config (stdin): the spec's keys, `prevResult` and
/// ratchet's own keys, all checked. Public for the fuzz targets.
pub fn parse_config(text: &str) -> Result<Config, CniError> {
    let raw: serde_json::Value =
        serde_json::from_str(text).map_err(|e| CniError::Decode(format!("config on stdin: {e}")))?;
    if !raw.is_object() {
        return Err(CniError::Decode("config on stdin: must be a JSON object".into()));
    }
    let netconf: NetConf =
        serde_json::from_value(raw.clone()).map_err(|e| CniError::Decode(format!("config on stdin: {e}")))?;
    let declared = raw["cniVersion"].as_str().unwrap_or_default();
    let version = canonical_version(declared).filter(|version| SUPPORTED_VERSIONS.contains(version));
    let Some(version) = version else {
        let supported: Vec<_> = SUPPORTED_VERSIONS.iter().map(ToString::to_string).collect();
        return Err(CniError::IncompatibleVersion(format!(
            "cniVersion {declared:?} is not supported (supported, exactly as written: {})",
            supported.join(", ")
        )));
    };
    check_name(&raw)?;
    check_prev_result(&raw, version)?;
    let settings = Settings::from_config(&raw)?;
    let config = Config { netconf, raw, version, settings };
    delegate::check_keys(&config.settings, &config.raw)?;
    Ok(config)
}

/// The network's `name`: required, and made of what libcni allows
/// (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`), since runtimes key caches by it.
fn check_name(raw: &serde_json::Value) -> Result<(), CniError> {
    let name = raw.get("name").and_then(serde_json::Value::as_str).unwrap_or_default();
    let valid = name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if !valid {
        let given = raw.get("name").map_or_else(|| "missing".to_owned(), ToString::to_string);
        let reason = format!("{given}: a network name is a letter or digit, then letters, digits, '_', '.' or '-'");
        return Err(CniError::Config { key: "name".into(), reason });
    }
    Ok(())
}

/// A runtime converts `prevResult` to the config's version before it sends
/// it; one that says it is another version was not converted.
fn check_prev_result(raw: &serde_json::Value, version: SpecVersion) -> Result<(), CniError> {
    let Some(declared) = raw.get("prevResult").and_then(|prev| prev.get("cniVersion")) else {
        return Ok(());
    };
    let declared = declared.as_str().and_then(|v| v.parse::<SpecVersion>().ok());
    if declared != Some(version) {
        return Err(CniError::IncompatibleVersion(format!(
            "prevResult is cniVersion {}, the config is {version}",
            declared.map_or("(unreadable)".into(), |v| v.to_string())
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use rscni_types::types::ErrorResult;

    use super::*;
    use crate::cni::version::{FALLBACK_VERSION, declared_text, to_json};

    /// Any JSON value, a few levels deep.
    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(|f| serde_json::json!(f)),
            ".{0,20}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::hash_map("[a-zA-Z_]{0,12}", inner, 0..4)
                    .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
            ]
        })
    }

    /// A config shaped like a runtime's, with each key ratchet reads either
    /// absent, plausible or any JSON at all.
    fn config_text() -> impl Strategy<Value = String> {
        const KEYS: [&str; 16] = [
            "state_dir",
            "pin_root",
            "node_name",
            "attach",
            "node_ip",
            "vxlan_port",
            "topology",
            "log_file",
            "log_level",
            "delegate",
            "boot_network",
            "etcd_endpoints",
            "etcd_port",
            "prevResult",
            "mtu",
            "runtimeConfig",
        ];
        let version = prop_oneof![
            Just("0.3.0".to_owned()),
            Just("0.4.0".to_owned()),
            Just("1.0.0".to_owned()),
            Just("1.1.0".to_owned()),
            ".{0,8}"
        ];
        let keys = prop::collection::vec((prop::sample::select(&KEYS[..]), json_value()), 0..6);
        (version, keys).prop_map(|(version, keys)| {
            let mut config = serde_json::json!({ "cniVersion": version, "name": "n", "type": "ratchet" });
            for (key, value) in keys {
                config[key] = value;
            }
            config.to_string()
        })
    }

    /// What `run` prints for input it cannot use: a CNI error with a code
    /// and a message, in the version the input asked for (or 1.0.0).
    fn assert_config_or_cni_error(text: &str) -> Result<(), TestCaseError> {
        let declared = canonical_version(&declared_text(text)).unwrap_or(FALLBACK_VERSION);
        if let Err(error) = parse_config(text) {
            let wire = to_json(&ErrorResult::new(declared, &error.to_wire()));
            prop_assert!(wire["code"].as_u64().is_some(), "no code in {wire}");
            prop_assert!(wire["msg"].as_str().is_some_and(|msg| !msg.is_empty()), "no msg in {wire}");
            prop_assert!(wire["cniVersion"].is_string(), "no cniVersion in {wire}");
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn any_stdin_is_a_config_or_a_cni_error(text in ".{0,300}") {
            assert_config_or_cni_error(&text)?;
        }

        #[test]
        fn any_config_shaped_stdin_is_a_config_or_a_cni_error(text in config_text()) {
            assert_config_or_cni_error(&text)?;
        }
    }
}
