//! What the integration tests (`ratchet-tests`) and the developer tasks
//! (`xtask`: demo, bench) share, written once:
//!
//! - [`runtime`]: running a CNI plugin the way a runtime does (`CNI_*`
//!   variables, the config on stdin, the exit status and stdout read back);
//! - [`etcd`]: an etcd of the caller's own (plain or TLS with client
//!   certificates, on free or fixed ports, here or inside a netns);
//! - [`rig`]: two netns "nodes" joined by an underlay, etcd inside the first,
//!   the plugin and an agent run inside each;
//! - [`image`]: the container image's name and where its archive lands, and
//!   how an ELF binary is linked (static or not).
//!
//! xtask builds this crate with plain rustup stable before `cargo xtask
//! setup`, so it depends on std, serde_json and anyhow only. Errors are
//! `anyhow` errors; the tests' fixtures turn them into panics. Everything a
//! fixture starts or makes it stops or removes when dropped.

pub mod etcd;
pub mod image;
pub mod rig;
pub mod runtime;

use std::{
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context, bail};

/// Called with every command a fixture runs, when the caller wants them
/// shown (the bench prints them as `+ ...`).
pub type Echo = fn(&Command);

/// Runs a command that must succeed, showing it through `echo` if given;
/// returns its stdout. The error carries its stderr.
pub(crate) fn run(cmd: &mut Command, echo: Option<Echo>) -> anyhow::Result<String> {
    if let Some(echo) = echo {
        echo(cmd);
    }
    let out = cmd.output().with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim_end());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A path under the temporary directory that no other fixture of this
/// process (or another process) uses: `<prefix>-<pid>-<n>`.
pub(crate) fn scratch_path(prefix: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!("{prefix}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)))
}

/// `ip netns exec <netns>`, to which a program and its arguments are added.
pub(crate) fn in_netns(netns: &str) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns]);
    cmd
}
