//! ratchet's developer tasks, run as `cargo xtask <task>` (an alias in
//! .cargo/config.toml). This crate builds with plain rustup stable: it must
//! work on a fresh machine before `cargo xtask setup` has installed anything.

mod bench;
mod build_ebpf;
mod demo;
mod fuzz;
mod image;
mod k8s;
mod setup;
mod test;
mod util;

use std::{ffi::OsString, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", about = "ratchet's developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing (apt packages, bpf-linker, the debian-web
    /// toolchain, bpffs); skips what is there.
    Setup,
    /// Build the eBPF object alone with the debian-web toolchain and print
    /// its path.
    BuildEbpf,
    /// Walk through the plugin's main job on two throwaway pods: ADD, ping,
    /// TCP, inspect, DEL, unload. Needs root.
    Demo,
    /// Measure ratchet against the bridge and ptp plugins and a bare veth
    /// pair (CNI ADD/DEL latency, TCP throughput, request/response) and
    /// write a report (Markdown, JSON, SVG). Needs root.
    Bench {
        /// A few repetitions and short runs (under a minute), as CI runs it.
        #[arg(long)]
        quick: bool,
        /// Where the report goes.
        #[arg(long, default_value = "bench-results")]
        out: PathBuf,
    },
    /// Fuzz the plugin's input parsers (the config on stdin, the CNI_*
    /// environment, topology files, prevResult) with libFuzzer, one target
    /// after another; fails on a crash, panic or hang. Not run by CI: it
    /// takes minutes per target to be worth anything.
    Fuzz {
        /// One target alone; all of them by default.
        #[arg(long, value_parser = fuzz::TARGETS)]
        target: Option<String>,
        /// How long each target runs.
        #[arg(long, default_value_t = 600)]
        seconds: u64,
    },
    /// Build ratchet's OCI image offline: one static binary, `/ratchet`,
    /// as an OCI archive in `target/image/` tagged `localhost/ratchet:<version>`.
    Image,
    /// Build Kubernetes v1.37.2 (kube-apiserver, kube-controller-manager,
    /// kube-scheduler, kubelet, kubectl) and etcd 3.7 from the Go module
    /// proxy into a per-machine cache (~/.cache/ratchet-k8s) and print
    /// their directory; about 10 minutes cold, instant when cached.
    K8s,
    /// Set up, build (the image too), run clippy and the whole test suite (as root).
    Test {
        /// Passed to `cargo test` as given, `--` included, e.g.
        /// `cargo xtask test -- --list` or `cargo xtask test -p ratchet-tests -- --nocapture`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "CARGO_TEST_ARGS")]
        args: Vec<OsString>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::run(),
        Task::BuildEbpf => build_ebpf::run().map(drop),
        Task::Demo => demo::run(),
        Task::Bench { quick, out } => bench::run(quick, &out),
        Task::Fuzz { target, seconds } => fuzz::run(target.as_deref(), seconds),
        Task::Image => image::run(),
        Task::K8s => k8s::run(),
        // clap drops the first `--`; cargo test needs it to tell its own
        // arguments from the test binaries', so take them as typed.
        Task::Test { .. } => test::run(&test::raw_args()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
