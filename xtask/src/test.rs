//! `cargo xtask test`: the whole test suite, from whatever state the machine
//! is in: setup, build, clippy, then `cargo test` on the default members
//! (never `--workspace`: the eBPF crate does not build for the host).

use std::{ffi::OsString, time::Instant};

use anyhow::Context;

use crate::{build_ebpf, setup, util};

/// What followed `test` on our command line, `--` included.
pub fn raw_args() -> Vec<OsString> {
    let mut args = std::env::args_os().skip(1);
    // argv[1] is the task name; there are no global options before it.
    args.next();
    args.collect()
}

pub fn run(args: &[OsString]) -> anyhow::Result<()> {
    let started = Instant::now();
    setup::run()?;

    println!("==> build the plugin");
    util::run(util::cargo().args(["build", "-p", "ratchet-plugin"]))?;
    let bin = util::target_dir().join("debug").join("ratchet");
    let bin = bin.canonicalize().with_context(|| format!("the build left no {}", bin.display()))?;

    build_ebpf::run()?;

    println!("==> clippy (warnings are errors)");
    util::run(util::cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;

    println!("==> tests (RATCHET_BIN={})", bin.display());
    util::run(util::cargo().arg("test").args(args).env("RATCHET_BIN", &bin))?;
    println!("all done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
