//! The CNI protocol: read `CNI_COMMAND`, the environment and the config on
//! stdin, run one verb, print its result or an error, and exit.
//!
//! Nothing but the result (or the error) ever reaches stdout: a runtime
//! parses it, and any other byte there fails the pod. Each verb lives in its
//! own module; this one decodes the input, picks the mode (ratchet alone,
//! chained after other plugins, or the seed's `delegate`/`boot_network`
//! standalone mode) and encodes the output for the config's `cniVersion`.

pub mod add;
mod check;
pub(crate) mod deadline;
pub mod del;
pub mod env;
pub mod error;
mod gc;
mod log;
mod modes;
mod orphans;
mod status;

use std::{
    io::{self, Read, Write},
    process::ExitCode,
    time::Instant,
};

use rscni_types::{
    legacy,
    types::{CNIResult, CNIResultWithVersion, Cmd, ErrorResult, NetConf},
    version::{PluginInfo, SpecVersion},
};
use serde::Serialize;

pub use self::deadline::DEFAULT as VERB_TIMEOUT;
use self::{env::CniEnv, error::CniError};
use crate::config::Settings;

/// Every version whose verbs and result shapes are implemented and tested.
pub const SUPPORTED_VERSIONS: [SpecVersion; 5] = [
    SpecVersion::new(0, 3, 0),
    SpecVersion::new(0, 3, 1),
    SpecVersion::new(0, 4, 0),
    SpecVersion::new(1, 0, 0),
    SpecVersion::new(1, 1, 0),
];

/// What errors are reported under when the config could not say.
const FALLBACK_VERSION: SpecVersion = SpecVersion::new(1, 0, 0);

/// A runtime's config is a few KiB; anything this large is not one.
const MAX_STDIN: u64 = 1 << 20;

/// The network config as the runtime sent it: the spec's view, the raw
/// JSON (delegates get parts of it verbatim) and ratchet's own keys.
pub struct Config {
    pub netconf: NetConf,
    pub raw: serde_json::Value,
    pub version: SpecVersion,
    pub settings: Settings,
}

/// Runs the verb named by `CNI_COMMAND` and returns the process's exit status.
pub fn run(command: &str) -> ExitCode {
    let started = Instant::now();
    deadline::arm(deadline::DEFAULT, FALLBACK_VERSION);
    let stdin = read_stdin();
    // The version as written, read once: VERSION answers from it, errors
    // echo it when it is a version.
    let written = stdin.as_deref().map(declared_text).unwrap_or_default();
    let declared = canonical_version(&written).unwrap_or(FALLBACK_VERSION);
    deadline::adjust(started, deadline::DEFAULT, declared);
    let outcome = match command {
        "VERSION" => Ok(Some(to_json(&version_info(&written)))),
        _ => stdin.and_then(|text| parse_config(&text)).and_then(|config| {
            deadline::adjust(started, config.settings.verb_timeout(), declared);
            let logged = log::Verb::start(&config.settings, command)?;
            let outcome = dispatch(command, &config);
            logged.finish(started, &outcome);
            outcome
        }),
    };
    match outcome {
        Ok(output) => {
            deadline::answer(|| output.iter().for_each(print_json));
            ExitCode::SUCCESS
        }
        Err(error) => {
            deadline::answer(|| print_json(&ErrorResult::new(declared, &error.to_wire())));
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: &str, config: &Config) -> Result<Option<serde_json::Value>, CniError> {
    let cmd: Cmd = command
        .parse()
        .map_err(|_| CniError::Env { var: "CNI_COMMAND", reason: format!("{command:?} is not a CNI verb") })?;
    config.version.allows(cmd).map_err(|e| CniError::IncompatibleVersion(e.details().to_owned()))?;
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| CniError::Io(e.to_string()))?;
    let var = |name: &str| std::env::var(name).ok();
    match cmd {
        Cmd::Add => {
            let env = CniEnv::for_add(var)?;
            let result = runtime.block_on(modes::add(config, &env))?;
            Ok(Some(encode_result(config.version, result)))
        }
        Cmd::Del => runtime.block_on(modes::del(config, &CniEnv::for_del(var)?)).map(|()| None),
        Cmd::Check => runtime.block_on(modes::check(config, &CniEnv::for_add(var)?)).map(|()| None),
        Cmd::Status => runtime.block_on(modes::status(config, &env::cni_path(var))).map(|()| None),
        Cmd::Gc => runtime.block_on(modes::gc(config, &env::cni_path(var))).map(|()| None),
        Cmd::Version => unreachable!("VERSION is answered before the config is parsed"),
    }
}

/// The ADD result in the layout of the config's version: 0.3.x and 0.4.0
/// carry `ips[].version`; 1.1.0 adds per-interface MTUs, which older
/// versions must not see.
fn encode_result(version: SpecVersion, mut result: CNIResult) -> serde_json::Value {
    if version < SpecVersion::new(1, 1, 0) {
        for interface in &mut result.interfaces {
            interface.mtu = None;
        }
    }
    if version.is_legacy() {
        to_json(&legacy::CNIResult::new(version, result))
    } else {
        to_json(&CNIResultWithVersion::new(version, result))
    }
}

fn read_stdin() -> Result<String, CniError> {
    let mut text = String::new();
    io::stdin()
        .take(MAX_STDIN + 1)
        .read_to_string(&mut text)
        .map_err(|e| CniError::Io(format!("reading stdin: {e}")))?;
    if text.len() as u64 > MAX_STDIN {
        return Err(CniError::Io(format!("config on stdin is larger than {MAX_STDIN} bytes")));
    }
    Ok(text)
}

/// A version string that is exactly `MAJOR.MINOR.PATCH` as the spec writes
/// it; the parser underneath also takes `1`, `1.0` and leading zeros.
fn canonical_version(text: &str) -> Option<SpecVersion> {
    text.parse::<SpecVersion>().ok().filter(|version| version.to_string() == text)
}

/// VERSION's answer: the input's version when ratchet speaks it, else the
/// newest one it speaks (what the reference plugins answer).
fn version_info(declared: &str) -> PluginInfo {
    let newest = *SUPPORTED_VERSIONS.last().expect("a version");
    let version = canonical_version(declared).filter(|v| SUPPORTED_VERSIONS.contains(v)).unwrap_or(newest);
    PluginInfo::new(version, SUPPORTED_VERSIONS.to_vec())
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
    modes::check_delegates(&config)?;
    Ok(config)
}

/// The `cniVersion` string as the input wrote it (empty when absent).
fn declared_text(text: &str) -> String {
    let declared = serde_json::from_str::<serde_json::Value>(text).ok();
    declared.and_then(|v| v["cniVersion"].as_str().map(str::to_owned)).unwrap_or_default()
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

fn to_json(value: &impl Serialize) -> serde_json::Value {
    serde_json::to_value(value).expect("CNI types always serialize")
}

fn print_json(value: &impl Serialize) {
    let mut stdout = io::stdout().lock();
    // A runtime that closed our stdout cannot be told anything else.
    let _ = serde_json::to_writer(&mut stdout, value).map_err(io::Error::from).and_then(|()| stdout.write_all(b"\n"));
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

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
