//! Builds the eBPF object and leaves it in OUT_DIR, where `src/dataplane`
//! embeds it: the binary never looks for an object file at run time.
//!
//! The eBPF crate needs `-Z build-std=core`, and the only toolchain here with
//! the matching core source is Debian's rustc-web 1.96, registered with rustup
//! as `debian-web` by `cargo xtask setup` (see the README's Toolchain section).
fn main() -> aya_build::Result<()> {
    // aya-build asks for build-std only when it sees RUSTC_BOOTSTRAP=1;
    // .cargo/config.toml sets it for every build.
    aya_build::build_ebpf(
        [aya_build::Package { name: "ratchet-ebpf", root_dir: "../ratchet-ebpf", ..Default::default() }],
        aya_build::Toolchain::Custom("debian-web"),
    )
}
