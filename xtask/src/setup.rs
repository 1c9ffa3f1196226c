//! `cargo xtask setup`: installs what building and running ratchet needs,
//! checking each piece first, so a second run changes nothing.
//!
//! The recipe (README, Toolchain): Debian's rustc-web (whose
//! core source matches its compiler) builds the eBPF crate, registered with
//! rustup as `debian-web`; bpf-linker 0.13.0 links it against the same LLVM 22.

use std::{
    fs,
    io::Write,
    path::Path,
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::util::{self, command};

/// Debian packages: the eBPF compiler and its core source, and the tools the
/// demo and the tests use.
const APT_PACKAGES: [&str; 21] = [
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "bpftool",
    "iproute2",
    "iputils-ping",
    "iperf3",
    // `cargo xtask bench`: request/response (ping-pong) over TCP.
    "sockperf",
    // tests/tests/security.rs: a witness of how the CLI opens the maps.
    "strace",
    "containernetworking-plugins",
    // etcd-client's build runs protoc, which needs the well-known protos too.
    "protobuf-compiler",
    "libprotobuf-dev",
    // The multi-node tests start a real etcd.
    "etcd-server",
    "etcd-client",
    // The containerd test: kubelet's path through a real runtime. No image can
    // be pulled, so it builds its own: a static pause program (gcc, libc.a)
    // and a busybox image.
    "containerd",
    "runc",
    "busybox-static",
    "gcc",
    "libc6-dev",
    // `cargo xtask fuzz`: libfuzzer-sys compiles libFuzzer (C++).
    "g++",
    // `cargo xtask image`: writes the OCI image layout, with no daemon.
    "umoci",
];

const BPF_LINKER_VERSION: &str = "0.13.0";
/// The library Debian's rustc-web links to; bpf-linker must use the same one.
const LIBLLVM: &str = "/usr/lib/x86_64-linux-gnu/libLLVM.so.22.1";
/// bpf-linker's LLVM_PREFIX. Keep it: the binary has a RUNPATH to its lib/.
const LLVM_PREFIX: &str = "/opt/ratchet-toolchain/llvm-22";

pub const TOOLCHAIN: &str = "debian-web";
const TOOLCHAIN_DIR: &str = "/opt/ratchet-toolchain/debian-web";

const BPFFS: &str = "/sys/fs/bpf";

/// How long to wait for another apt or dpkg to let go of its lock.
const APT_LOCK_WAIT: Duration = Duration::from_secs(300);

pub fn run() -> anyhow::Result<()> {
    println!("==> setup");
    let started = Instant::now();
    apt_packages()?;
    bpf_linker()?;
    debian_web_toolchain()?;
    bpffs()?;
    crate::k8s::report();
    println!("setup done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn skip(what: &str) {
    println!("  [skip] {what}");
}

fn doing(what: &str) {
    println!("  [do]   {what}");
}

fn apt_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES.into_iter().filter(|package| !dpkg_installed(package)).collect();
    if missing.is_empty() {
        skip(&format!("apt packages already installed: {}", APT_PACKAGES.join(" ")));
        return Ok(());
    }
    doing(&format!("apt packages missing: {}", missing.join(" ")));
    util::require_root("installing apt packages")?;
    apt_get(&["update"])?;
    let mut args = vec!["install", "-y", "--no-install-recommends"];
    args.extend(&missing);
    apt_get(&args)?;
    if let Some(package) = missing.iter().find(|package| !dpkg_installed(package)) {
        bail!("apt-get install succeeded but {package} is still not installed");
    }
    Ok(())
}

fn dpkg_installed(package: &str) -> bool {
    util::probe(command("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_ok_and(|out| out.status.success() && out.stdout == b"install ok installed")
}

/// Runs apt-get, waiting while another apt or dpkg holds the lock (on a
/// fresh machine unattended-upgrades or cloud-init often does).
fn apt_get(args: &[&str]) -> anyhow::Result<()> {
    let deadline = Instant::now() + APT_LOCK_WAIT;
    loop {
        let mut cmd = command("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive").args(args);
        println!("+ {}", util::show(&cmd));
        let _ = std::io::stdout().flush();
        // stdout streams; stderr is kept to see whether the lock was the problem.
        let output = cmd
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run apt-get")?
            .wait_with_output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        eprint!("{stderr}");
        if output.status.success() {
            return Ok(());
        }
        let locked = ["Could not get lock", "Unable to acquire the dpkg frontend lock", "Unable to lock directory"]
            .iter()
            .any(|needle| stderr.contains(needle));
        if !locked {
            bail!("`{}` failed: {}", util::show(&cmd), output.status);
        }
        if Instant::now() >= deadline {
            bail!("apt's lock was still held after {} s; giving up", APT_LOCK_WAIT.as_secs());
        }
        println!("  apt's lock is held by another process; retrying in 5 s");
        thread::sleep(Duration::from_secs(5));
    }
}

/// The version line of the bpf-linker rustc would run, if it runs at all (a
/// binary whose LLVM prefix is gone fails here, and is rebuilt).
fn bpf_linker_version() -> Option<String> {
    let output = util::probe(command("bpf-linker").arg("--version")).ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn bpf_linker() -> anyhow::Result<()> {
    if let Some(version) = bpf_linker_version()
        && version.split_whitespace().any(|word| word == BPF_LINKER_VERSION)
    {
        skip(&format!("bpf-linker present: {version}"));
        return Ok(());
    }
    doing(&format!("bpf-linker {BPF_LINKER_VERSION} against Debian's LLVM 22 (about 70 s)"));
    util::require_root(&format!("making {LLVM_PREFIX}"))?;
    if !Path::new(LIBLLVM).exists() {
        bail!("{LIBLLVM} is missing; it comes with rustc-web's libllvm22 (apt packages above)");
    }
    let lib = Path::new(LLVM_PREFIX).join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    for name in ["libLLVM.so", "libLLVM.so.22.1"] {
        util::ensure_symlink(Path::new(LIBLLVM), &lib.join(name))?;
    }
    let mut cmd = util::cargo();
    cmd.env("LLVM_PREFIX", LLVM_PREFIX)
        // Outside the workspace: its .cargo/config.toml sets RUSTC_BOOTSTRAP,
        // which must not reach crates.io builds (some probe for nightly).
        .current_dir(std::env::temp_dir())
        .env_remove("RUSTC_BOOTSTRAP")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features", "llvm-22", "--locked"]);
    util::run(&mut cmd)?;
    match bpf_linker_version() {
        Some(version) if version.contains(BPF_LINKER_VERSION) => {
            println!("  installed {version}");
            Ok(())
        }
        other => bail!("bpf-linker was installed but `bpf-linker --version` gives {other:?}"),
    }
}

fn debian_web_toolchain() -> anyhow::Result<()> {
    let list = util::stdout_of(command("rustup").args(["toolchain", "list"]))?;
    if list.lines().any(|line| line.split_whitespace().next() == Some(TOOLCHAIN)) {
        skip(&format!("rustup toolchain {TOOLCHAIN} already linked"));
        return Ok(());
    }
    doing(&format!("link Debian's rustc-web as rustup toolchain {TOOLCHAIN}"));
    util::require_root(&format!("making {TOOLCHAIN_DIR}"))?;
    let dir = Path::new(TOOLCHAIN_DIR);
    fs::create_dir_all(dir.join("bin")).with_context(|| format!("creating {TOOLCHAIN_DIR}/bin"))?;
    // rustup wants a lib/ in a linked toolchain; Debian's rustc finds its own.
    fs::create_dir_all(dir.join("lib")).with_context(|| format!("creating {TOOLCHAIN_DIR}/lib"))?;
    for tool in ["rustc", "cargo", "rustdoc"] {
        let target = Path::new("/usr/bin").join(tool);
        if !target.exists() {
            bail!("{} is missing; it comes with rustc-web/cargo-web", target.display());
        }
        util::ensure_symlink(&target, &dir.join("bin").join(tool))?;
    }
    util::run(command("rustup").args(["toolchain", "link", TOOLCHAIN, TOOLCHAIN_DIR]))?;
    let version = util::stdout_of(command("rustup").args(["run", TOOLCHAIN, "rustc", "--version"]))?;
    println!("  {TOOLCHAIN}: {}", version.trim());
    Ok(())
}

fn bpffs() -> anyhow::Result<()> {
    let fs_type =
        |path: &str| util::stdout_of(command("stat").args(["-f", "-c", "%T", path])).map(|t| t.trim().to_owned());
    if fs_type(BPFFS).is_ok_and(|t| t == "bpf_fs") {
        skip(&format!("bpffs already mounted at {BPFFS}"));
        return Ok(());
    }
    doing(&format!("mount bpffs at {BPFFS}"));
    util::require_root("mounting bpffs")?;
    fs::create_dir_all(BPFFS).with_context(|| format!("creating {BPFFS}"))?;
    util::run(command("mount").args(["-t", "bpf", "bpf", BPFFS]))?;
    let now = fs_type(BPFFS)?;
    if now != "bpf_fs" {
        bail!("{BPFFS} is {now} after mounting bpffs");
    }
    Ok(())
}
