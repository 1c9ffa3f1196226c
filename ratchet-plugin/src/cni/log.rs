//! One log line per verb: container, pod, verb, duration and outcome.
//!
//! Logs go to `log_file` (appended) when the config names one, else to
//! stderr, never stdout: stdout carries only the result. `log_level` picks
//! how much (default `info` to a file, `warn` to stderr).

use std::{sync::Mutex, time::Instant};

use tracing::{Level, info, warn};

use super::{env::CniEnv, error::CniError};
use crate::config::Settings;

/// The verb being logged.
pub struct Logged {
    command: String,
    container: String,
    pod: String,
}

impl Logged {
    /// Sets up logging from the config and remembers who the verb is for
    /// (nobody for STATUS and GC, or when the environment was unusable).
    /// A `log_file` that cannot be a log (a FIFO, a directory) is a config
    /// error rather than a verb that blocks or logs nowhere.
    pub fn start(settings: &Settings, command: &str, env: Option<&CniEnv>) -> Result<Self, CniError> {
        init(settings)?;
        let container = env.map(|env| env.container_id.clone()).unwrap_or_default();
        let pod = env.and_then(|env| env.pod().ok()).map_or_else(|| "/".to_owned(), ToString::to_string);
        Ok(Self { command: command.into(), container, pod })
    }

    /// Logs the outcome and how long the verb took.
    pub fn finish<T>(self, started: Instant, outcome: &Result<T, CniError>) {
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let Self { command, container, pod } = self;
        match outcome {
            Ok(_) => info!(verb = %command, container = %container, pod = %pod, ms = format_args!("{ms:.1}"), "ok"),
            Err(error) => {
                warn!(verb = %command, container = %container, pod = %pod, ms = format_args!("{ms:.1}"), error = %error, "failed")
            }
        }
    }
}

fn init(settings: &Settings) -> Result<(), CniError> {
    let file = match &settings.log_file {
        Some(path) => Some(
            crate::files::open_log(path)
                .map_err(|e| CniError::Config { key: "log_file".into(), reason: format!("{}: {e}", path.display()) })?,
        ),
        None => None,
    };
    let default = if file.is_some() { Level::INFO } else { Level::WARN };
    let level = settings.log_level.map_or(default, Level::from);
    let builder = tracing_subscriber::fmt().with_max_level(level).with_ansi(false).with_target(false);
    // A second init in one process (unit tests) is refused, harmlessly.
    let _ = match file {
        Some(file) => builder.with_writer(Mutex::new(file)).try_init(),
        None => builder.with_writer(std::io::stderr).try_init(),
    };
    Ok(())
}
