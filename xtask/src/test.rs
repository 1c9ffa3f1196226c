//! `cargo xtask test`: the whole test suite, from whatever state the machine
//! is in: setup, build (the plugin, the eBPF object, the image, Kubernetes),
//! clippy, then `cargo test` on the default members
//! (never `--workspace`: the eBPF crate does not build for the host).

use std::{
    ffi::OsString,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, bail};

use crate::{build_ebpf, image, k8s, setup, util};

/// What followed `test` on our command line, `--` included.
pub fn raw_args() -> Vec<OsString> {
    let mut args = std::env::args_os().skip(1);
    // argv[1] is the task name; there are no global options before it.
    args.next();
    args.collect()
}

/// Builds the plugin with `features` and copies it to `target/test-bin/<name>`,
/// so that cargo test's own builds of the plugin (without them) do not
/// replace it.
fn build_test_binary(features: &str, name: &str) -> anyhow::Result<PathBuf> {
    util::run(util::cargo().args(["build", "-p", "ratchet-plugin", "--features", features]))?;
    let built = util::target_dir().join("debug").join("ratchet");
    let bin = util::target_dir().join("test-bin").join(name);
    std::fs::create_dir_all(bin.parent().expect("a dir")).context("creating target/test-bin")?;
    std::fs::copy(&built, &bin).with_context(|| format!("copying {} to {}", built.display(), bin.display()))?;
    Ok(bin.canonicalize()?)
}

pub fn run(args: &[OsString]) -> anyhow::Result<()> {
    let started = Instant::now();
    setup::run()?;

    // The tests run this binary: with failpoints (inert unless a test sets
    // FAILPOINTS).
    println!("==> build the plugin (with failpoints)");
    let bin = build_test_binary("failpoints", "ratchet")?;
    // The upgrade test's "new build": the next layout of the pinned maps.
    println!("==> build the plugin of the next layout (with failpoints)");
    let next_bin = build_test_binary("failpoints,layout-next", "ratchet-next")?;

    build_ebpf::run()?;

    // tests/tests/image.rs checks this archive and runs it in containerd.
    // Once built, only cargo's up-to-date check while the plugin is unchanged.
    let image = image::build()?;

    // tests/tests/kubernetes.rs runs a cluster of these.
    let k8s_bin = k8s::build()?;

    println!("==> clippy (warnings are errors)");
    util::run(util::cargo().args(["clippy", "--all-targets", "--all-features", "--", "-D", "warnings"]))?;

    println!("==> tests (RATCHET_BIN={})", bin.display());
    let untouched: Vec<&Path> = NODE_DEFAULTS.iter().map(Path::new).filter(|path| !path.exists()).collect();
    let mut tests = util::cargo();
    tests.arg("test").args(args).env("RATCHET_BIN", &bin).env("RATCHET_NEXT_BIN", &next_bin);
    tests.env("RATCHET_IMAGE", &image).env("RATCHET_K8S_BIN", &k8s_bin);
    let tally = run_tests(&mut tests)?;
    let touched = touched_defaults(&untouched);
    println!("all done in {:.1} s", started.elapsed().as_secs_f64());
    // cargo's own last line is a doctest run that usually has no tests; this
    // one line totals every binary's results.
    println!("tests: {} passed, {} failed", tally.passed, tally.failed);
    if !touched.is_empty() {
        bail!(
            "the tests made a node's real ratchet paths ({}): some test runs ratchet without its own state_dir or pin_root",
            touched.join(", ")
        );
    }
    if !tally.success || tally.failed > 0 {
        bail!("cargo test failed");
    }
    Ok(())
}

/// Where a node's ratchet keeps its state and pins by default. A developer's
/// machine may run ratchet for real, so no test may use these: each test
/// node has its own (see `tests/src/node.rs`).
const NODE_DEFAULTS: [&str; 2] = ["/var/lib/ratchet", "/sys/fs/bpf/ratchet"];

/// Those of `untouched` (absent before the tests) that exist now; they are
/// the tests' leftovers, so they are removed after being named.
fn touched_defaults(untouched: &[&Path]) -> Vec<String> {
    let touched: Vec<&Path> = untouched.iter().copied().filter(|path| path.exists()).collect();
    for path in &touched {
        let _ = std::fs::remove_dir_all(path);
    }
    touched.iter().map(|path| path.display().to_string()).collect()
}

/// What every `test result:` line of one `cargo test` run adds up to.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    success: bool,
}

/// Runs `cargo test`, echoing its output while adding up its results.
fn run_tests(cmd: &mut Command) -> anyhow::Result<Tally> {
    println!("+ {}", util::show(cmd));
    let mut child = cmd.stdout(Stdio::piped()).spawn().context("starting cargo test")?;
    let mut tally = Tally::default();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            tally.passed += count_before(rest, " passed");
            tally.failed += count_before(rest, " failed");
        }
    }
    tally.success = child.wait()?.success();
    Ok(tally)
}

/// The number just before `label` in e.g. `ok. 9 passed; 0 failed; ...`.
fn count_before(text: &str, label: &str) -> u64 {
    let Some(end) = text.find(label) else { return 0 };
    let start = text[..end].rfind(|c: char| !c.is_ascii_digit()).map_or(0, |i| i + 1);
    text[start..end].parse().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::count_before;

    #[test]
    fn reads_cargo_test_result_lines() {
        let line = "ok. 9 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.29s";
        assert_eq!(count_before(line, " passed"), 9);
        assert_eq!(count_before(line, " failed"), 1);
    }
}
