//! `cargo xtask image`: ratchet's container image, built offline. It holds
//! one file, `/ratchet` (its entrypoint): the plugin linked statically
//! against glibc (`+crt-static`), so the same binary runs in the image, with
//! no libc of its own, and on whatever host `ratchet install` copies it to.
//! No shell, no `/etc`, no CA bundle (etcd's TLS trusts only the CA file the
//! config names). umoci (Debian's) writes the OCI layout; tar packs it into an
//! OCI archive at `target/image/ratchet-image.tar`, tagged
//! [`image_reference`] for `ctr images import` and for a manifest's `image:`.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Instant, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use ratchet_harness::image::{IMAGE_ARCHIVE, IMAGE_ENTRYPOINT, elf_linkage, image_reference};
use serde_json::{Value, json};

use crate::{setup, util};

/// Static glibc, and no symbol table (2.7 MiB of the 13.7 MiB binary). The
/// plugin aborts on a panic, so no backtrace needs the symbols.
const RUSTFLAGS: &str = "-C target-feature=+crt-static -C strip=symbols";

/// Names this recipe in the archive's stamp: change it when the image's
/// layout changes, so an archive made by an older recipe is rebuilt.
const RECIPE: &str = "umoci unpack/repack, one layer, entrypoint /ratchet, v2";

/// `cargo xtask image`: set up, build, print where the archive is.
pub fn run() -> anyhow::Result<()> {
    setup::run()?;
    build().map(drop)
}

/// Builds the static binary and, unless the archive already holds this very
/// binary, the image; returns the archive's path.
pub fn build() -> anyhow::Result<PathBuf> {
    let reference = image_reference();
    println!("==> image {reference}");
    let started = Instant::now();
    let binary = static_binary()?;

    let archive = util::target_dir().join(IMAGE_ARCHIVE);
    let dir = archive.parent().expect("a dir").to_path_buf();
    let stamp_path = archive.with_extension("stamp");
    let stamp = stamp(&reference, &binary)?;
    if archive.exists() && fs::read_to_string(&stamp_path).is_ok_and(|old| old == stamp) {
        println!("  [skip] {} already holds this binary", archive.display());
    } else {
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // A stamp is written only after its archive, and removed before.
        remove_if_present(&stamp_path)?;
        assemble(&dir, &reference, &binary, &archive)?;
        fs::write(&stamp_path, stamp).with_context(|| format!("writing {}", stamp_path.display()))?;
    }
    let size = fs::metadata(&archive)?.len();
    println!("image: {reference}");
    println!("  archive: {} ({:.1} MiB)", archive.display(), mib(size));
    println!("  binary:  {} ({:.1} MiB, static)", binary.display(), mib(fs::metadata(&binary)?.len()));
    println!("  import:  ctr -n k8s.io images import {}", archive.display());
    println!("  done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(archive)
}

/// Builds the release plugin for the host's gnu target with [`RUSTFLAGS`]
/// and checks that it is static and runs. `--target` keeps the flags off
/// build scripts and proc macros (a static proc macro cannot be loaded),
/// and puts the build in a directory of its own
/// (`target/<triple>/release/`), beside the bench's dynamic release build.
fn static_binary() -> anyhow::Result<PathBuf> {
    let triple = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let mut cmd = util::cargo();
    cmd.args(["build", "--release", "-p", "ratchet-plugin", "--bin", "ratchet", "--target", &triple])
        .env("RUSTFLAGS", RUSTFLAGS)
        // Would win over RUSTFLAGS.
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    util::run(&mut cmd)?;
    let binary = util::target_dir().join(&triple).join("release").join("ratchet");
    let linkage = elf_linkage(&binary)?;
    if !linkage.is_static() {
        bail!("{} is not static: {linkage:?}", binary.display());
    }
    let version = util::stdout_of(util::command(&binary).arg("--version"))?;
    let expected = format!("ratchet {}", env!("CARGO_PKG_VERSION"));
    if version.trim() != expected {
        bail!("{} --version says {:?}, not {expected:?}", binary.display(), version.trim());
    }
    Ok(binary)
}

/// What the archive was made from: the reference, the binary (size and
/// mtime; cargo rewrites it whenever it relinks) and the recipe.
fn stamp(reference: &str, binary: &Path) -> anyhow::Result<String> {
    let meta = fs::metadata(binary)?;
    let mtime = meta.modified()?.duration_since(UNIX_EPOCH)?.as_nanos();
    Ok(format!("{reference}\n{} {} {mtime}\n{RECIPE}\n", binary.display(), meta.len()))
}

/// Writes the OCI layout with umoci in `dir/layout`, names it in
/// `index.json`, and packs it into `archive` (through a temporary file, so
/// a failed run leaves no half archive).
fn assemble(dir: &Path, reference: &str, binary: &Path, archive: &Path) -> anyhow::Result<()> {
    let (layout, bundle) = (dir.join("layout"), dir.join("bundle"));
    remove_if_present(&layout)?;
    remove_if_present(&bundle)?;
    if util::probe(util::command("umoci").arg("--version")).is_err() {
        bail!("umoci is missing: it is Debian's `umoci` package, which `cargo xtask setup` installs");
    }
    let umoci = |args: &[&str]| util::run(util::command("umoci").current_dir(dir).args(args));
    // umoci takes `<layout>:<tag>` and splits at the first colon: a relative
    // layout path keeps the target dir's path out of it.
    let image = format!("layout:{reference}");
    // Not root, umoci would record the caller's uid; --rootless maps it to root.
    let rootless: &[&str] = if util::is_root() { &[] } else { &["--rootless"] };
    umoci(&["init", "--layout", "layout"])?;
    umoci(&["new", "--image", &image])?;
    // Unpack the empty image, add the binary, repack: `umoci insert` would
    // be one step, but Debian 12's umoci 0.4.7 writes its layer without the
    // end-of-archive blocks, which GNU tar refuses (fixed upstream after
    // 0.4.7, umoci PR #534).
    umoci(&[&["unpack"], rootless, &["--image", &image, "bundle"]].concat())?;
    let rootfs = bundle.join("rootfs");
    let target = rootfs.join(IMAGE_ENTRYPOINT.trim_start_matches('/'));
    // The root dir's mtime as umoci recorded it, so that the layer holds the
    // binary alone and not `.` too.
    let rootfs_mtime = fs::metadata(&rootfs)?.modified()?;
    fs::copy(binary, &target).with_context(|| format!("copying {} to {}", binary.display(), target.display()))?;
    fs::File::open(&rootfs)?.set_modified(rootfs_mtime).context("restoring the rootfs mtime")?;
    // The layer's history entry (tools match entries to layers).
    // (repack takes the uid mapping from the bundle.)
    umoci(&["repack", "--history.created_by", "cargo xtask image", "--image", &image, "bundle"])?;
    umoci(&[
        "config",
        "--no-history",
        "--image",
        &image,
        "--config.entrypoint",
        IMAGE_ENTRYPOINT,
        "--os",
        "linux",
        "--architecture",
        oci_arch()?,
    ])?;
    // Drops the empty image `new` made and the configs each step replaced.
    umoci(&["gc", "--layout", "layout"])?;
    name_in_index(&layout.join("index.json"), reference)?;

    let partial = archive.with_extension("tar.partial");
    let mut tar = util::command("tar");
    tar.current_dir(&layout)
        .args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner", "-cf"])
        .arg(&partial)
        .args(["oci-layout", "index.json", "blobs"]);
    util::run(&mut tar)?;
    fs::rename(&partial, archive)
        .with_context(|| format!("renaming {} to {}", partial.display(), archive.display()))?;
    remove_if_present(&layout)?;
    remove_if_present(&bundle)
}

/// umoci writes the tag as `org.opencontainers.image.ref.name` (which
/// skopeo and podman read); containerd's `ctr images import` reads
/// `io.containerd.image.name` first, so the index names the image in both.
fn name_in_index(index: &Path, reference: &str) -> anyhow::Result<()> {
    let mut value: Value = serde_json::from_str(&fs::read_to_string(index)?)?;
    let manifests = value["manifests"].as_array_mut().context("index.json has no manifests")?;
    let [manifest] = manifests.as_mut_slice() else {
        bail!("index.json has {} manifests, not one", manifests.len());
    };
    let annotations = json!({"io.containerd.image.name": reference, "org.opencontainers.image.ref.name": reference});
    manifest["annotations"] = annotations;
    fs::write(index, serde_json::to_vec(&value)?).with_context(|| format!("writing {}", index.display()))
}

/// The OCI (Go) name of the host's architecture.
fn oci_arch() -> anyhow::Result<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" => Ok("amd64"),
        "aarch64" => Ok("arm64"),
        other => bail!("no OCI architecture name known for {other}"),
    }
}

fn remove_if_present(path: &Path) -> anyhow::Result<()> {
    let result = if path.is_dir() { fs::remove_dir_all(path) } else { fs::remove_file(path) };
    match result {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            Err(error).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
