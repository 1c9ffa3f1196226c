//! `ratchet install` / `ratchet uninstall`: put the plugin where a runtime
//! finds it, with a conflist that names it, or take both away again.
//!
//! Both are idempotent: a file already as wanted is left alone (and said
//! so), and each write goes to a temporary file renamed into place, so a
//! runtime watching the config directory never reads half a conflist.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::Context;
use serde_json::{Value, json};

use crate::cni::SUPPORTED_VERSIONS;

/// The `cniVersion` of the conflist: the newest every runtime in use
/// parses. libcni before 1.2 (containerd 1.6 and 1.7, Debian's included)
/// ignores `cniVersions` and takes `cniVersion` alone; given 1.1.0 it runs
/// the plugin, then refuses its result ("unsupported CNI result version").
const COMPATIBLE_VERSION: &str = "1.0.0";

/// What `install` writes, from its flags.
pub struct Install {
    /// The CNI bin dir this binary is copied into, as `ratchet`.
    pub bin_dir: PathBuf,
    /// The CNI config dir the conflist goes into.
    pub conf_dir: PathBuf,
    /// The conflist's file name (runtimes take the first by name).
    pub conflist: String,
    /// The network name the conflist gives.
    pub network: String,
    /// ratchet's own keys for the plugin entry (state_dir, etcd, ...).
    pub plugin: serde_json::Map<String, Value>,
}

impl Install {
    /// The conflist: one plugin, ratchet; every version ratchet speaks in
    /// `cniVersions`, so a runtime whose libcni reads it (1.2 and later)
    /// picks the newest it shares, and [`COMPATIBLE_VERSION`] in
    /// `cniVersion` for those that do not.
    pub fn conflist(&self) -> Value {
        let versions: Vec<String> = SUPPORTED_VERSIONS.iter().map(ToString::to_string).collect();
        let mut plugin = self.plugin.clone();
        plugin.insert("type".into(), json!("ratchet"));
        json!({"cniVersion": COMPATIBLE_VERSION, "cniVersions": versions, "name": self.network, "plugins": [plugin]})
    }

    /// Places the binary, then the conflist: each only when it differs from
    /// what is there, and each renamed into place whole.
    pub fn run(&self) -> anyhow::Result<()> {
        let binary = std::env::current_exe().context("finding this binary")?;
        let bytes = fs::read(&binary).with_context(|| format!("reading {}", binary.display()))?;
        place(&self.bin_dir.join("ratchet"), &bytes, 0o755)?;
        let text = serde_json::to_string_pretty(&self.conflist()).expect("JSON serializes") + "\n";
        place(&self.conf_dir.join(&self.conflist), text.as_bytes(), 0o644)
    }
}

/// Removes the binary and the conflist; missing ones are fine.
pub fn uninstall(bin_dir: &Path, conf_dir: &Path, conflist: &str) -> anyhow::Result<()> {
    remove(&conf_dir.join(conflist))?;
    let binary = bin_dir.join("ratchet");
    match others_naming_ratchet(conf_dir)?.first() {
        Some(other) => println!("kept {}: {} still names it", binary.display(), other.display()),
        None => remove(&binary)?,
    }
    Ok(())
}

fn remove(path: &Path) -> anyhow::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => println!("removed {}", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => println!("{} was not there", path.display()),
        Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
    }
    Ok(())
}

/// The network configs in `conf_dir` (what libcni reads: `.conf`,
/// `.conflist`, `.json`) that run ratchet, alone or in a list.
fn others_naming_ratchet(conf_dir: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let entries = match fs::read_dir(conf_dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        other => other.with_context(|| format!("reading {}", conf_dir.display()))?,
    };
    let is_config =
        |path: &Path| path.extension().is_some_and(|ext| ext == "conf" || ext == "conflist" || ext == "json");
    let names_ratchet = |path: &Path| {
        let config: Option<serde_json::Value> =
            crate::files::read_text(path).ok().and_then(|text| serde_json::from_str(&text).ok());
        config.is_some_and(|config| {
            config["type"] == "ratchet"
                || config["plugins"].as_array().is_some_and(|plugins| plugins.iter().any(|p| p["type"] == "ratchet"))
        })
    };
    let mut found: Vec<_> =
        entries.flatten().map(|entry| entry.path()).filter(|p| is_config(p) && names_ratchet(p)).collect();
    found.sort();
    Ok(found)
}

/// A host path as seen from where the host's root is mounted.
pub fn under(host_root: &Path, path: &Path) -> PathBuf {
    host_root.join(path.strip_prefix("/").unwrap_or(path))
}

/// Writes `bytes` to `path` unless it already holds them (with `mode`),
/// through a temporary file renamed into place.
pub fn place(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if crate::files::read_bounded(path, bytes.len() as u64).is_ok_and(|current| current == bytes) {
        println!("{} is up to date", path.display());
        return Ok(());
    }
    let dir = path.parent().context("a path with a directory")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path.file_name().with_context(|| format!("{} does not end in a file name", path.display()))?;
    let staging = dir.join(format!(".{}.ratchet-install", name.to_string_lossy()));
    fs::write(&staging, bytes).with_context(|| format!("writing {}", staging.display()))?;
    fs::set_permissions(&staging, fs::Permissions::from_mode(mode))?;
    fs::rename(&staging, path).with_context(|| format!("moving {} into place", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}
