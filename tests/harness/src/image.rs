//! ratchet's container image: its name, written once for `cargo xtask image`
//! (which builds it), the tests (which check and run it) and the manifests'
//! test, and what tells a static binary from a dynamic one.

use std::path::Path;

use anyhow::{Context, bail};

/// The image's name, without its tag. `localhost/` keeps it fully qualified
/// and away from Docker Hub: containerd's CRI looks an image up by its full
/// reference, and a node without it fails to pull from `localhost` rather
/// than fetching someone else's `ratchet`.
pub const IMAGE_NAME: &str = "localhost/ratchet";

/// Where `cargo xtask image` leaves the OCI archive, under the target dir.
pub const IMAGE_ARCHIVE: &str = "image/ratchet-image.tar";

/// The path of the one file in the image, and its entrypoint.
pub const IMAGE_ENTRYPOINT: &str = "/ratchet";

/// The image's full reference: [`IMAGE_NAME`] tagged with the workspace
/// version (`localhost/ratchet:0.1.0`).
pub fn image_reference() -> String {
    format!("{IMAGE_NAME}:{}", env!("CARGO_PKG_VERSION"))
}

/// How an ELF executable is linked: its program interpreter (`PT_INTERP`,
/// the dynamic loader; `None` for a static or static-pie binary) and how
/// many shared libraries it names (`DT_NEEDED`).
#[derive(Debug, PartialEq, Eq)]
pub struct Linkage {
    pub interpreter: Option<String>,
    pub needed: usize,
}

impl Linkage {
    /// Runs on any kernel and libc: no loader, no shared library.
    pub fn is_static(&self) -> bool {
        self.interpreter.is_none() && self.needed == 0
    }
}

/// Reads the program headers of a 64-bit little-endian ELF file (what
/// `readelf -l` shows), without running it or asking `ldd`.
pub fn elf_linkage(path: &Path) -> anyhow::Result<Linkage> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse_linkage(&bytes).with_context(|| format!("{} is not a 64-bit little-endian ELF file", path.display()))
}

fn parse_linkage(bytes: &[u8]) -> anyhow::Result<Linkage> {
    const PT_DYNAMIC: u32 = 2;
    const PT_INTERP: u32 = 3;
    const DT_NEEDED: u64 = 1;
    let u16_at = |at: usize| -> anyhow::Result<u16> {
        Ok(u16::from_le_bytes(bytes.get(at..at + 2).context("truncated")?.try_into()?))
    };
    let u32_at = |at: usize| -> anyhow::Result<u32> {
        Ok(u32::from_le_bytes(bytes.get(at..at + 4).context("truncated")?.try_into()?))
    };
    let u64_at = |at: usize| -> anyhow::Result<u64> {
        Ok(u64::from_le_bytes(bytes.get(at..at + 8).context("truncated")?.try_into()?))
    };
    let offset = |value: u64| usize::try_from(value).context("offset too large");
    // ELFCLASS64, ELFDATA2LSB.
    if bytes.get(..6) != Some(b"\x7fELF\x02\x01") {
        bail!("no ELF64 LSB header");
    }
    let (phoff, phentsize, phnum) = (offset(u64_at(0x20)?)?, usize::from(u16_at(0x36)?), usize::from(u16_at(0x38)?));
    let mut linkage = Linkage { interpreter: None, needed: 0 };
    for header in (0..phnum).map(|i| phoff + i * phentsize) {
        let (kind, start, size) = (u32_at(header)?, offset(u64_at(header + 8)?)?, offset(u64_at(header + 32)?)?);
        let segment = bytes.get(start..start + size).context("a segment past the end of the file")?;
        match kind {
            PT_INTERP => {
                let path = segment.split(|&b| b == 0).next().unwrap_or_default();
                linkage.interpreter = Some(String::from_utf8_lossy(path).into_owned());
            }
            // Entries of two u64 (tag, value), up to DT_NULL.
            PT_DYNAMIC => {
                let tags = segment.chunks_exact(16).map(|entry| u64::from_le_bytes(entry[..8].try_into().unwrap()));
                linkage.needed += tags.take_while(|&tag| tag != 0).filter(|&tag| tag == DT_NEEDED).count();
            }
            _ => {}
        }
    }
    Ok(linkage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_is_the_name_tagged_with_the_workspace_version() {
        assert_eq!(image_reference(), format!("localhost/ratchet:{}", env!("CARGO_PKG_VERSION")));
    }

    #[test]
    fn a_dynamic_executable_names_its_loader_and_libraries() {
        // This test binary is linked dynamically against glibc.
        let linkage = elf_linkage(&std::env::current_exe().unwrap()).unwrap();
        assert!(linkage.interpreter.as_deref().is_some_and(|p| p.contains("ld-linux")), "{linkage:?}");
        assert!(linkage.needed > 0 && !linkage.is_static(), "{linkage:?}");
    }

    #[test]
    fn what_is_not_elf_is_refused() {
        assert!(parse_linkage(b"#!/bin/sh\n").is_err());
        assert!(parse_linkage(b"\x7fELF\x02\x01").is_err(), "a truncated header");
    }
}
