//! `cargo xtask fuzz`: coverage-guided fuzzing of the plugin's input parsers
//! with libFuzzer. The harness is ratchet-plugin/fuzz (cargo-fuzz's layout,
//! one binary per target); each target runs for a while and a crash, panic
//! or hang fails the task.
//!
//! We build it with cargo-fuzz's flags for `--sanitizer none` rather than
//! through `cargo fuzz`: those flags work on stable, so there is no tool to
//! install and no nightly. Each run reads the committed corpus but writes
//! what it finds to a scratch dir in the fuzz target dir: new inputs reach
//! the repository only when someone merges them (`-merge=1`, printed at
//! the end).

use std::{
    env,
    ffi::OsString,
    fs::{self, File},
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    time::Instant,
};

use anyhow::{Context, bail};

use crate::util;

/// The harness's targets, in the order a full run takes them.
pub const TARGETS: [&str; 4] = ["config", "env", "topology", "prev_result"];

/// An explicit `--target` keeps RUSTFLAGS off build scripts: the plugin's
/// (aya-build) and libfuzzer-sys's must run uninstrumented. This machine
/// kind is x86_64 Debian (as `setup`'s LLVM path is).
const TRIPLE: &str = "x86_64-unknown-linux-gnu";

/// cargo-fuzz 0.13's RUSTFLAGS for `--sanitizer none` on Linux in release
/// mode, with debug assertions and overflow checks on so that arithmetic
/// and invariant mistakes panic (and are found) instead of wrapping.
const RUSTFLAGS: [&str; 11] = [
    "-Cpasses=sancov-module",
    "-Cllvm-args=-sanitizer-coverage-level=4",
    "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
    "-Cllvm-args=-sanitizer-coverage-pc-table",
    "-Cllvm-args=-sanitizer-coverage-trace-compares",
    "-Cllvm-args=-sanitizer-coverage-stack-depth",
    // Separate branches for separate conditions: finer coverage feedback.
    "-Cllvm-args=-simplifycfg-branch-fold-threshold=0",
    "--cfg fuzzing",
    "-Cdebug-assertions",
    "-Coverflow-checks",
    // With several codegen units the sancov pass keeps ThinLTO from inlining
    // anything across them, which cargo-fuzz measured at ~3x fewer exec/s.
    "-Ccodegen-units=1",
];

/// A unit takes microseconds; one still running after this long, even
/// under `nice` on a busy machine, is a hang worth reporting.
const UNIT_TIMEOUT_SECONDS: u32 = 10;

pub fn run(only: Option<&str>, seconds: u64) -> anyhow::Result<()> {
    let started = Instant::now();
    let targets: Vec<&str> = only.map_or_else(|| TARGETS.to_vec(), |target| vec![target]);
    require_cxx()?;

    println!("==> build the fuzz targets (libFuzzer, instrumented)");
    let mut cmd = util::cargo();
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(fuzz_dir().join("Cargo.toml"))
        .args(["--release", "--target", TRIPLE, "--target-dir"])
        .arg(target_dir())
        .env("RUSTFLAGS", RUSTFLAGS.join(" "));
    for target in &targets {
        cmd.args(["--bin", target]);
    }
    util::run(&mut cmd)?;

    let mut runs = Vec::new();
    for target in &targets {
        println!("==> fuzz {target} for {seconds} s");
        runs.push(fuzz(target, seconds)?);
    }

    println!("==> fuzzing done in {:.0} s", started.elapsed().as_secs_f64());
    println!("{:<12} {:>12} {:>8} {:>6} {:>7} {:>16}  found", "target", "runs", "exec/s", "cov", "ft", "corpus");
    for run in &runs {
        let Stats { runs, exec_per_sec, cov, ft, corpus, .. } = &run.stats;
        let [runs, exec_per_sec, cov, ft, corpus] =
            [runs, exec_per_sec, cov, ft, corpus].map(|stat| stat.as_deref().unwrap_or("-"));
        let found = if run.found() { "YES" } else { "nothing" };
        println!("{:<12} {runs:>12} {exec_per_sec:>8} {cov:>6} {ft:>7} {corpus:>16}  {found}", run.target);
    }
    println!("New inputs stay out of the repository; to add those that bring new coverage, from the workspace root:");
    for run in &runs {
        let (binary, seeds, scratch) = (binary(&run.target), seeds(&run.target), scratch(&run.target));
        println!("  {} -merge=1 {} {}", show(&binary), show(&seeds), show(&scratch));
    }

    let found: Vec<&Run> = runs.iter().filter(|run| run.found()).collect();
    for run in &found {
        println!("{}: libFuzzer stopped ({}); log: {}", run.target, run.status, show(&log_path(&run.target)));
        for artifact in &run.stats.artifacts {
            let binary = show(&binary(&run.target));
            let artifact = show(Path::new(artifact));
            println!("  reproduce: {binary} {artifact}");
            println!("  minimize:  {binary} -minimize_crash=1 -runs=100000 {artifact}");
        }
    }
    if !found.is_empty() {
        bail!("fuzzing found a failing input in {} target(s)", found.len());
    }
    Ok(())
}

/// libfuzzer-sys compiles libFuzzer (C++) in its build script: say so now
/// rather than after minutes of building the plugin.
fn require_cxx() -> anyhow::Result<()> {
    let cxx = env::var_os("CXX").unwrap_or_else(|| "c++".into());
    if util::probe(util::command(&cxx).arg("--version")).is_ok_and(|out| out.status.success()) {
        return Ok(());
    }
    bail!("libFuzzer needs a C++ compiler and {} does not run: apt-get install -y g++", cxx.to_string_lossy());
}

/// What libFuzzer reported about one run.
#[derive(Default)]
struct Stats {
    runs: Option<String>,
    exec_per_sec: Option<String>,
    cov: Option<String>,
    ft: Option<String>,
    /// Inputs and bytes in the corpus it ended with (`corp: N/SIZE`).
    corpus: Option<String>,
    /// The inputs it wrote to the artifact dir (crash-, timeout-, oom-...).
    artifacts: Vec<String>,
}

struct Run {
    target: String,
    stats: Stats,
    status: ExitStatus,
}

impl Run {
    /// libFuzzer stops, non-zero, on the first crash, panic, hang or OOM,
    /// and writes the input to the artifact dir.
    fn found(&self) -> bool {
        !self.status.success()
    }
}

/// Runs one target for `seconds`, echoing libFuzzer's report but for its
/// lines per new input (all of it goes to a log file too).
fn fuzz(target: &str, seconds: u64) -> anyhow::Result<Run> {
    let scratch = scratch(target);
    // A fresh scratch dir: this run's finds, and nothing from the last one.
    if scratch.exists() {
        fs::remove_dir_all(&scratch).with_context(|| format!("removing {}", scratch.display()))?;
    }
    let artifacts = fuzz_dir().join("artifacts").join(target);
    let log_path = log_path(target);
    for dir in [&scratch, &artifacts, log_path.parent().expect("logs/")] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut prefix = OsString::from("-artifact_prefix=");
    prefix.push(artifacts.as_os_str());
    prefix.push("/");

    // Two cores are shared with whatever else runs: fuzzing only takes what is idle.
    let mut cmd = util::command("nice");
    cmd.args(["-n", "19"])
        .arg(binary(target))
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={UNIT_TIMEOUT_SECONDS}"))
        .arg("-print_final_stats=1")
        .arg(prefix)
        // The first dir gets new inputs; the committed seeds are only read.
        .arg(&scratch)
        .arg(seeds(target))
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    println!("+ {}", util::show(&cmd));
    let mut log = File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut child = cmd.spawn().context("cannot run nice")?;
    let mut stats = Stats::default();
    // libFuzzer reports on stderr; a panic message may quote input that is not UTF-8.
    for line in BufReader::new(child.stderr.take().expect("piped")).split(b'\n') {
        let line = String::from_utf8_lossy(&line?).into_owned();
        writeln!(log, "{line}")?;
        if !is_per_input(&line) {
            println!("{line}");
        }
        read_stats(&line, &mut stats);
    }
    Ok(Run { target: target.to_owned(), stats, status: child.wait()? })
}

/// libFuzzer's lines about each input it keeps (thousands in a run): a
/// status line per new or smaller input, the functions it first reached
/// (addresses only: there is no symbolizer without a sanitizer), and the
/// dictionary it recommends at the end.
fn is_per_input(line: &str) -> bool {
    line.contains("\tNEW ") || line.contains("\tREDUCE ") || line.starts_with("\tNEW_FUNC") || line.contains("# Uses: ")
}

/// Takes what `line` says into `stats`: the status lines' (`#N DONE cov: C ft:
/// F corp: N/SIZE ...`; the last one wins), the final stats', and where an
/// input that failed was written.
fn read_stats(line: &str, stats: &mut Stats) {
    let after = |label: &str| {
        let (_, rest) = line.split_once(label)?;
        rest.split_whitespace().next().map(str::to_owned)
    };
    if line.starts_with('#') && line.contains(" cov: ") {
        stats.cov = after(" cov: ");
        stats.ft = after(" ft: ");
        stats.corpus = after(" corp: ");
    }
    if let Some(runs) = after("stat::number_of_executed_units:") {
        stats.runs = Some(runs);
    }
    if let Some(exec_per_sec) = after("stat::average_exec_per_sec:") {
        stats.exec_per_sec = Some(exec_per_sec);
    }
    if let Some(artifact) = after("Test unit written to ") {
        stats.artifacts.push(artifact);
    }
}

fn fuzz_dir() -> PathBuf {
    util::workspace_root().join("ratchet-plugin").join("fuzz")
}

/// The harness's own target dir, so the instrumented build never touches
/// (or invalidates) the workspace's.
fn target_dir() -> PathBuf {
    fuzz_dir().join("target")
}

fn binary(target: &str) -> PathBuf {
    target_dir().join(TRIPLE).join("release").join(target)
}

/// The committed seed corpus.
fn seeds(target: &str) -> PathBuf {
    fuzz_dir().join("corpus").join(target)
}

/// Where a run's new inputs go; under target/, so git ignores them.
fn scratch(target: &str) -> PathBuf {
    target_dir().join("corpus").join(target)
}

fn log_path(target: &str) -> PathBuf {
    target_dir().join("logs").join(format!("{target}.log"))
}

/// A path as the user would type it from the workspace root.
fn show(path: &Path) -> String {
    util::quote(path.strip_prefix(util::workspace_root()).unwrap_or(path).as_os_str())
}
