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
        .args(["run", TOOLCHAIN, "cargo", "build", "-p", PACKAGE, "--release", "--target", TARGET, "-Z", "build-std=core"])
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        // `cargo run` (and rustup's proxy) point these at the stable
        // toolchain; the eBPF crate needs Debian's compiler.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    util::run(&mut cmd)?;
    let object = util::target_dir().join(TARGET).join("release").join(OBJECT);
    let size = fs::metadata(&object).with_context(|| format!("the build left no {}", object.display()))?.len();
    let bytes = fs::read(&object).with_context(|| format!("reading {}", object.display()))?;
    let sections = elf_sections(&bytes).with_context(|| format!("{} is not a little-endian ELF64 object", object.display()))?;
    let section = |name: &str| sections.iter().find(|(n, _)| n == name).map(|(_, size)| *size);
    let Some(btf) = section(".BTF") else {
        bail!("{} has no .BTF section: was it linked without --btf?", object.display());
    };
    println!("eBPF object: {}", object.display());
    println!(
        "  {size} bytes; .BTF {btf} bytes, .BTF.ext {} bytes; built in {:.1} s",
        section(".BTF.ext").unwrap_or(0),
        started.elapsed().as_secs_f64()
    );
    Ok(object)
}

/// The names and sizes of an ELF64 little-endian file's sections.
fn elf_sections(elf: &[u8]) -> Option<Vec<(String, u64)>> {
    let u16_at = |at: usize| Some(u16::from_le_bytes(elf.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(elf.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(elf.get(at..at + 8)?.try_into().ok()?));
    // Magic, ELFCLASS64, ELFDATA2LSB.
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let shoff = usize::try_from(u64_at(0x28)?).ok()?;
    let shentsize = usize::from(u16_at(0x3a)?);
    let shnum = usize::from(u16_at(0x3c)?);
    let shstrndx = usize::from(u16_at(0x3e)?);
    let header = |index: usize| shoff + index * shentsize;
    let strtab = usize::try_from(u64_at(header(shstrndx) + 0x18)?).ok()?;
    (0..shnum)
        .map(|index| {
            let name_at = strtab + usize::try_from(u32_at(header(index))?).ok()?;
            let name = elf.get(name_at..)?.split(|&b| b == 0).next()?;
            Some((String::from_utf8_lossy(name).into_owned(), u64_at(header(index) + 0x20)?))
        })
        .collect()
}
