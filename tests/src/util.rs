//! What every fixture uses: the plugin binary (and image) under test, names no other
//! test uses, running a command that must succeed, and waiting for a
//! condition.

use std::{
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

/// The plugin binary: `RATCHET_BIN` (set by `cargo xtask test`), else the
/// workspace's debug build.
pub fn ratchet_bin() -> PathBuf {
    let path = std::env::var_os("RATCHET_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/ratchet"));
    assert!(
        path.exists(),
        "{} is missing: run `cargo xtask test` (or `cargo build -p ratchet-plugin`)",
        path.display()
    );
    path
}

/// ratchet's image archive (`cargo xtask image`'s OCI archive):
/// `RATCHET_IMAGE` (set by `cargo xtask test`), else where `cargo xtask
/// image` puts it; `None` (the caller skips its test, saying why) when
/// neither names one.
pub fn ratchet_image() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("RATCHET_IMAGE") {
        let path = PathBuf::from(path);
        assert!(path.exists(), "RATCHET_IMAGE={} is missing", path.display());
        return Some(path);
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target").join(ratchet_harness::image::IMAGE_ARCHIVE);
    if !path.exists() {
        eprintln!("skipped: no {}; `cargo xtask image` builds it (`cargo xtask test` does)", path.display());
        return None;
    }
    Some(path)
}

/// A name no other test (or concurrent test run) uses.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}{}x{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Runs a command that must succeed; returns its stdout.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits up to five seconds for `done`.
pub fn eventually(done: impl FnMut() -> bool) -> bool {
    within(Duration::from_secs(5), done)
}

/// Waits up to `limit` for `done`, checking every 20 ms.
pub fn within(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}
