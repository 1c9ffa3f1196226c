//! The CNI protocol: read `CNI_COMMAND`, the environment and the config on
//! stdin, run one verb, print its result or an error, and exit.
//!
//! Nothing but the result (or the error) ever reaches stdout: a runtime
//! parses it, and any other byte there fails the pod.

mod add;
mod del;
pub mod env;
pub mod error;

use std::{
    io::{self, Read, Write},
    process::ExitCode,
};

use rscni_types::{
    types::{CNIResultWithVersion, ErrorResult, NetConf},
    version::{PluginInfo, SpecVersion},
};
use serde::Serialize;

use self::{env::CniEnv, error::CniError};
use crate::config::Settings;

/// The versions whose ADD result, DEL and VERSION are implemented and tested.
pub const SUPPORTED_VERSIONS: [SpecVersion; 1] = [SpecVersion::new(1, 0, 0)];

/// A runtime's config is a few KiB; anything this large is not one.
const MAX_STDIN: u64 = 1 << 20;

/// The network config as the runtime sent it: the spec's view and ours.
pub struct Config {
    pub netconf: NetConf,
    pub version: SpecVersion,
    pub settings: Settings,
}

/// Runs the verb named by `CNI_COMMAND` and returns the process's exit status.
pub fn run(command: &str) -> ExitCode {
    let stdin = read_stdin();
    let (version, outcome) = match command {
        "VERSION" => (declared_version(stdin.as_deref().unwrap_or_default()), version().map(Some)),
        _ => match stdin.and_then(|text| parse_config(&text)) {
            Ok(config) => (config.version, dispatch(command, &config)),
            Err(e) => (SpecVersion::new(1, 0, 0), Err(e)),
        },
    };
    match outcome {
        Ok(output) => {
            if let Some(json) = output {
                print_json(&json);
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            print_json(&ErrorResult::new(version, &error.to_wire()));
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: &str, config: &Config) -> Result<Option<serde_json::Value>, CniError> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| CniError::Io(e.to_string()))?;
    let var = |name: &str| std::env::var(name).ok();
    match command {
        "ADD" => {
            let env = CniEnv::for_add(var)?;
            let result = runtime.block_on(add::add(config, &env))?;
            Ok(Some(to_json(&CNIResultWithVersion::new(config.version, result))))
        }
        "DEL" => {
            let env = CniEnv::for_del(var)?;
            runtime.block_on(del::del(config, &env))?;
            Ok(None)
        }
        other => Err(CniError::Env { var: "CNI_COMMAND", reason: format!("{other:?} is not ADD, DEL or VERSION") }),
    }
}

fn version() -> Result<serde_json::Value, CniError> {
    let newest = *SUPPORTED_VERSIONS.last().expect("at least one version");
    Ok(to_json(&PluginInfo::new(newest, SUPPORTED_VERSIONS.to_vec())))
}

fn read_stdin() -> Result<String, CniError> {
    let mut text = String::new();
    io::stdin().take(MAX_STDIN + 1).read_to_string(&mut text).map_err(|e| CniError::Io(format!("reading stdin: {e}")))?;
    if text.len() as u64 > MAX_STDIN {
        return Err(CniError::Io(format!("config on stdin is larger than {MAX_STDIN} bytes")));
    }
    Ok(text)
}

/// The `cniVersion` a VERSION call's stdin declares, for echoing back.
fn declared_version(text: &str) -> SpecVersion {
    serde_json::from_str::<NetConf>(text).ok().and_then(|conf| conf.version().ok()).unwrap_or(SpecVersion::new(1, 0, 0))
}

fn parse_config(text: &str) -> Result<Config, CniError> {
    let raw: serde_json::Value = serde_json::from_str(text).map_err(|e| CniError::Decode(format!("config on stdin: {e}")))?;
    let netconf: NetConf =
        serde_json::from_value(raw.clone()).map_err(|e| CniError::Decode(format!("config on stdin: {e}")))?;
    let version = netconf.version().map_err(|e| CniError::Decode(e.details().to_owned()))?;
    if !SUPPORTED_VERSIONS.contains(&version) {
        let supported: Vec<_> = SUPPORTED_VERSIONS.iter().map(ToString::to_string).collect();
        return Err(CniError::IncompatibleVersion(format!(
            "cniVersion {version} is not supported (supported: {})",
            supported.join(", ")
        )));
    }
    let settings = Settings::from_config(&raw)?;
    Ok(Config { netconf, version, settings })
}

fn to_json(value: &impl Serialize) -> serde_json::Value {
    serde_json::to_value(value).expect("CNI types always serialize")
}

fn print_json(value: &impl Serialize) {
    let mut stdout = io::stdout().lock();
    // A runtime that closed our stdout cannot be told anything else.
    let _ = serde_json::to_writer(&mut stdout, value).map_err(io::Error::from).and_then(|()| stdout.write_all(b"\n"));
}
