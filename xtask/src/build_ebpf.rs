//! `cargo xtask build-ebpf`: builds the eBPF object alone, the way
//! ratchet-plugin/build.rs (through aya-build) does, and says where it is.
//!
//! The plugin embeds its own copy from its build script; this one is for
//! inspecting the object (`bpftool btf dump file`, `llvm-objdump`).

use std::{fs, path::PathBuf, time::Instant};

use anyhow::{Context, bail};

use crate::{setup::TOOLCHAIN, util};

const TARGET: &str = "bpfel-unknown-none";
const PACKAGE: &str = "ratchet-ebpf";
/// The eBPF crate's binary name.
const OBJECT: &str = "ratchet";

/// Builds the object and returns its path.
pub fn run() -> anyhow::Result<PathBuf> {
    println!("==> build-ebpf");
    let started = Instant::now();
    // aya-build passes exactly these: the arch cfg aya-ebpf needs, and BTF.
    let rustflags = [r#"--cfg=bpf_target_arch="x86_64""#, "-Cdebuginfo=2", "-Clink-arg=--btf"].join("\x1f");
    let mut cmd = util::command("rustup");
    cmd.current_dir(util::workspace_root())
        .args([
            "run",
            TOOLCHAIN,
            "cargo",
            "build",
            "-p",
            PACKAGE,
            "--release",
            "--target",
            TARGET,
            "-Z",
            "build-std=core",
        ])
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        // `cargo run` (and rustup's proxy) point these at the stable
        // toolchain; the eBPF crate needs Debian's compiler.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    util::run(&mut cmd)?;
    let object = util::target_dir().join(TARGET).join("release").join(OBJECT);
    let size = fs::metadata(&object).with_context(|| format!("the build left no {}", object.display()))?.len();
    // bpftool reads the object's BTF the way it will read the maps' later.
    let btf = util::stdout_of(util::command("bpftool").arg("btf").arg("dump").arg("file").arg(&object))?;
    let types = btf.lines().filter(|line| line.starts_with('[')).count();
    if types == 0 {
        bail!("{} has no BTF: was it linked without --btf?", object.display());
    }
    println!("eBPF object: {}", object.display());
    println!("  {size} bytes, {types} BTF types; built in {:.1} s", started.elapsed().as_secs_f64());
    Ok(object)
}
