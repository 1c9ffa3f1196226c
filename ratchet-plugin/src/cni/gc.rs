//! GC (spec 1.1): the runtime lists every attachment still valid; every
//! ratchet end not on the list goes (see [`crate::ends::collect_garbage`]).

use std::{collections::HashSet, path::PathBuf};

use serde_json::Value;

use super::{chain, error::CniError, request::Config};

/// The config key the runtime lists valid attachments under.
pub const VALID_ATTACHMENTS: &str = "cni.dev/valid-attachments";

/// Collects ratchet's garbage, then the delegates'; reports every failure.
pub async fn cmd_gc(config: &Config, path: &[PathBuf]) -> Result<(), CniError> {
    let mut errors = collect_ours(config).await;
    let valid = config.raw.get(VALID_ATTACHMENTS).cloned().unwrap_or(Value::Array(Vec::new()));
    for delegate in chain::node_delegates(config)? {
        if let Err(error) = delegate.call_node_verb("GC", path, Some((VALID_ATTACHMENTS, &valid))) {
            errors.push(error.to_string());
        }
    }
    if errors.is_empty() { Ok(()) } else { Err(CniError::Gc(errors.join("; "))) }
}

/// Returns what went wrong; empty when GC did all it had to.
async fn collect_ours(config: &Config) -> Vec<String> {
    let Some(valid) = &config.netconf.valid_attachments else {
        return vec![format!("the config has no {VALID_ATTACHMENTS}")];
    };
    let valid: HashSet<(&str, &str)> = valid.iter().map(|a| (a.container_id.as_str(), a.ifname.as_str())).collect();
    crate::ends::collect_garbage(&config.settings, &valid).await
}
