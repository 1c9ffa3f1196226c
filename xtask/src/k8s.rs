//! `cargo xtask k8s`: Kubernetes built from source for the cluster test
//! (tests/tests/kubernetes.rs), once per machine.
//!
//! No Kubernetes binary or image can be downloaded here, but the Go module
//! proxy serves `k8s.io/kubernetes` and its staging modules: `xtask/k8s/` is a
//! Go module that requires it (every staging module replaced by its `v0.x`
//! release, the usual way to depend on Kubernetes) and etcd's server, with
//! go.sum committed so a build never resolves anything (`-mod=readonly`).
//! The binaries go to a per-machine cache outside the work tree, keyed by
//! everything that decides them (the module files, Go's version, the flags):
//! about 10 minutes cold, nothing at all when the key's directory is there.
//! docs/kubernetes-from-source.md has the findings behind the recipe.

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context, bail};

use crate::util::{self, command};

/// The Kubernetes release built; `xtask/k8s/go.mod` requires the same.
const KUBERNETES_VERSION: &str = "v1.37.2";

/// What `go build` makes: etcd (the version Kubernetes' own scripts use;
/// Debian's 3.4 lacks watch progress requests) and the five components.
const PACKAGES: [&str; 6] = [
    "./cmd/etcd",
    "k8s.io/kubernetes/cmd/kube-apiserver",
    "k8s.io/kubernetes/cmd/kube-controller-manager",
    "k8s.io/kubernetes/cmd/kube-scheduler",
    "k8s.io/kubernetes/cmd/kubelet",
    "k8s.io/kubernetes/cmd/kubectl",
];

/// The packages whose version variables `--version` reports (without them:
/// `v0.0.0-master+$Format:%H$`).
const VERSION_PACKAGES: [&str; 2] = ["k8s.io/component-base/version", "k8s.io/client-go/pkg/version"];

/// The module's files that decide the build.
const MODULE_FILES: [&str; 4] = ["go.mod", "go.sum", "tools.go", "cmd/etcd/main.go"];

pub fn run() -> anyhow::Result<()> {
    let bin = build()?;
    println!("{}", bin.display());
    Ok(())
}

/// Says in setup's words whether the cluster test's binaries are built:
/// setup leaves the 10-minute build to `cargo xtask test` (the demo and the
/// benchmark do not need it).
pub fn report() {
    match built() {
        Ok((bin, true)) => println!("  [skip] kubernetes {KUBERNETES_VERSION}: built in {}", bin.display()),
        Ok((bin, false)) => {
            println!(
                "  [todo] kubernetes {KUBERNETES_VERSION}: `cargo xtask k8s` (or test) builds it into {}",
                bin.display()
            )
        }
        Err(error) => println!("  [todo] kubernetes {KUBERNETES_VERSION}: cannot build yet: {error:#}"),
    }
}

/// Where this machine's build of the binaries goes, and whether it is there.
fn built() -> anyhow::Result<(PathBuf, bool)> {
    let go = go_binary()?;
    let module = util::workspace_root().join("xtask/k8s");
    let bin = cache_dir()?.join(format!("bin-{}", cache_key(&go, &module, &ldflags())?));
    let complete = binary_names().all(|name| bin.join(name).is_file());
    Ok((bin, complete))
}

/// The directory holding the six binaries, built first unless cached.
pub fn build() -> anyhow::Result<PathBuf> {
    println!("==> kubernetes {KUBERNETES_VERSION} from source");
    let (bin, complete) = built()?;
    if complete {
        println!("  [skip] built already: {}", bin.display());
        return Ok(bin);
    }
    let (go, module, cache, ldflags) =
        (go_binary()?, util::workspace_root().join("xtask/k8s"), cache_dir()?, ldflags());
    let started = Instant::now();
    let partial = bin.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let mut build = command(&go);
    build
        .current_dir(&module)
        .env("GOMODCACHE", cache.join("gomod"))
        .env("GOCACHE", cache.join("gobuild"))
        .env("GOFLAGS", "-buildvcs=false -mod=readonly")
        .env("CGO_ENABLED", "0")
        .args(["build", "-trimpath", "-ldflags", &ldflags, "-o"])
        .arg(format!("{}/", partial.display()))
        .args(PACKAGES);
    util::run(&mut build)?;
    std::fs::rename(&partial, &bin).with_context(|| format!("moving {} into place", partial.display()))?;
    println!("  built in {:.0} s: {}", started.elapsed().as_secs_f64(), bin.display());
    forget_other_builds(&cache, &bin);
    Ok(bin)
}

fn binary_names() -> impl Iterator<Item = &'static str> {
    PACKAGES.iter().map(|package| package.rsplit('/').next().expect("a package path"))
}

/// `go` from PATH, or where the Go tarball installs it.
fn go_binary() -> anyhow::Result<PathBuf> {
    let from_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("go"));
    from_path
        .chain([PathBuf::from("/usr/local/go/bin/go")])
        .find(|go| go.is_file())
        .context("no `go` on PATH nor in /usr/local/go/bin: Kubernetes builds with Go 1.26 or newer")
}

/// `$RATCHET_K8S_CACHE`, else `$XDG_CACHE_HOME/ratchet-k8s`, else
/// `~/.cache/ratchet-k8s`: outside the module (a module cache inside it
/// breaks `go`) and outside the work tree (it outlives checkouts).
fn cache_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("RATCHET_K8S_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    let base = match std::env::var_os("XDG_CACHE_HOME") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".cache"),
    };
    Ok(base.join("ratchet-k8s"))
}

/// `-s -w` and the version variables, with a fixed build date so that two
/// builds of the same sources are byte-identical.
fn ldflags() -> String {
    let minor = KUBERNETES_VERSION.split('.').nth(1).expect("vMAJOR.MINOR.PATCH");
    let mut flags = String::from("-s -w");
    for package in VERSION_PACKAGES {
        for (name, value) in [
            ("gitVersion", KUBERNETES_VERSION),
            ("gitMajor", "1"),
            ("gitMinor", minor),
            ("gitTreeState", "clean"),
            ("gitCommit", "0000000000000000000000000000000000000000"),
            ("buildDate", "2026-01-01T00:00:00Z"),
        ] {
            flags.push_str(&format!(" -X {package}.{name}={value}"));
        }
    }
    flags
}

/// A digest of the module files, Go's version and the flags.
fn cache_key(go: &Path, module: &Path, ldflags: &str) -> anyhow::Result<String> {
    let mut input = util::stdout_of(command(go).arg("version"))?;
    input.push_str(ldflags);
    for file in MODULE_FILES {
        let path = module.join(file);
        input.push_str(&std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?);
    }
    let mut sum = command("sha256sum");
    let digest = util::stdout_with_input(&mut sum, input.as_bytes())?;
    let hex = digest.split_whitespace().next().filter(|hex| hex.len() == 64);
    match hex {
        Some(hex) => Ok(hex[..16].to_owned()),
        None => bail!("sha256sum printed {digest:?}"),
    }
}

/// Removes the binaries of other keys (a version bump leaves 560 MB behind).
fn forget_other_builds(cache: &Path, keep: &Path) {
    for entry in std::fs::read_dir(cache).into_iter().flatten().flatten() {
        let path = entry.path();
        let is_build = entry.file_name().to_string_lossy().starts_with("bin-");
        if is_build && path != keep {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}
