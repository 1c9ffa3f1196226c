//! The CNI protocol boundary: read `CNI_COMMAND`, the environment and the
//! config on stdin once, run one verb, print its result or an error, exit.
//!
//! Nothing but the result (or the error) ever reaches stdout: a runtime
//! parses it, and any other byte there fails the pod. Each verb is a file
//! of its own, reading like the reference plugins' `cmdAdd`/`cmdDel`: it
//! decides which networks serve the pod (`chain`) and asks
//! [`crate::ends`] for the link ends. Errors of every layer become a
//! [`CniError`] with its code in one place ([`error`]).

mod add;
mod chain;
mod check;
pub(crate) mod deadline;
mod del;
mod delegate;
pub mod env;
pub mod error;
mod gc;
mod log;
pub mod request;
mod status;
pub mod version;

use std::{
    io::{self, Read, Write},
    process::ExitCode,
    time::Instant,
};

use rscni_types::{types::ErrorResult, version::PluginInfo};
use serde::Serialize;

use self::{
    error::CniError,
    request::Verb,
    version::{FALLBACK_VERSION, canonical_version, declared_text, encode_result, to_json},
};
pub use self::{
    request::{Config, parse_config},
    version::SUPPORTED_VERSIONS,
};
use crate::config::DEFAULT_VERB_TIMEOUT;

/// A runtime's config is a few KiB; anything this large is not one.
const MAX_STDIN: u64 = 1 << 20;

/// Runs the verb named by `CNI_COMMAND` and returns the process's exit status.
pub fn run(command: &str) -> ExitCode {
    let started = Instant::now();
    deadline::arm(DEFAULT_VERB_TIMEOUT, FALLBACK_VERSION);
    let stdin = read_stdin();
    // The version as written, read once: VERSION answers from it, errors
    // echo it when it is a version.
    let written = stdin.as_deref().map(declared_text).unwrap_or_default();
    let declared = canonical_version(&written).unwrap_or(FALLBACK_VERSION);
    deadline::adjust(started, DEFAULT_VERB_TIMEOUT, declared);
    let outcome = match command {
        "VERSION" => Ok(Some(to_json(&version_info(&written)))),
        _ => stdin.and_then(|text| parse_config(&text)).and_then(|config| {
            deadline::adjust(started, config.settings.verb_timeout(), declared);
            let verb = Verb::read(command, &config, |name| std::env::var(name).ok());
            let logged = log::Logged::start(&config.settings, command, verb.as_ref().ok().and_then(Verb::env))?;
            let outcome = verb.and_then(|verb| dispatch(verb, &config));
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

/// Runs one verb; ADD's result is encoded for the config's version.
fn dispatch(verb: Verb, config: &Config) -> Result<Option<serde_json::Value>, CniError> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| CniError::Io(e.to_string()))?;
    match verb {
        Verb::Add(env) => {
            let result = runtime.block_on(add::cmd_add(config, &env))?;
            Ok(Some(encode_result(config.version, result)))
        }
        Verb::Del(env) => runtime.block_on(del::cmd_del(config, &env)).map(|()| None),
        Verb::Check(env) => runtime.block_on(check::cmd_check(config, &env)).map(|()| None),
        Verb::Status(path) => runtime.block_on(status::cmd_status(config, &path)).map(|()| None),
        Verb::Gc(path) => runtime.block_on(gc::cmd_gc(config, &path)).map(|()| None),
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

/// VERSION's answer: the input's version when ratchet speaks it, else the
/// newest one it speaks (what the reference plugins answer).
fn version_info(declared: &str) -> PluginInfo {
    let newest = SUPPORTED_VERSIONS[SUPPORTED_VERSIONS.len() - 1];
    let version = canonical_version(declared).filter(|v| SUPPORTED_VERSIONS.contains(v)).unwrap_or(newest);
    PluginInfo::new(version, SUPPORTED_VERSIONS.to_vec())
}

fn print_json(value: &impl Serialize) {
    let mut stdout = io::stdout().lock();
    // A runtime that closed our stdout cannot be told anything else.
    let _ = serde_json::to_writer(&mut stdout, value).map_err(io::Error::from).and_then(|()| stdout.write_all(b"\n"));
}
