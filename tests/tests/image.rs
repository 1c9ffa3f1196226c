//! ratchet's container image, as `cargo xtask image` leaves it (an OCI
//! archive; `cargo xtask test` builds it and passes its path in
//! `RATCHET_IMAGE`): a valid OCI layout with one image named
//! `localhost/ratchet:<version>`, one layer holding one static binary,
//! `/ratchet`, its entrypoint; and the way a node without a registry takes
//! it: `ctr -n k8s.io images import` into a private containerd, then `ctr
//! run`. Also that deploy/'s DaemonSet names this image and needs no shell.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use ratchet_harness::image::{IMAGE_ENTRYPOINT, elf_linkage, image_reference};
use ratchet_tests::{cgroup_dirs, mounts_under, processes_mentioning, ratchet_image, run, unique};
use serde_json::Value;

/// Where a node's runtime keeps kubelet's images.
const NAMESPACE: &str = "k8s.io";

/// What containerd 1.6's shims make outside its directory (their sockets);
/// removed after the test if it made them and they are empty again.
const SHARED_DIRS: [&str; 2] = ["/run/containerd/s", "/run/containerd"];

/// How long containerd may take to answer, and any one `ctr` call.
const WITHIN: Duration = Duration::from_secs(20);

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The blob a descriptor names, checked against its digest and size.
fn blob(layout: &Path, descriptor: &Value) -> PathBuf {
    let digest = descriptor["digest"].as_str().expect("a digest");
    let hex = digest.strip_prefix("sha256:").unwrap_or_else(|| panic!("{digest} is not sha256"));
    let path = layout.join("blobs/sha256").join(hex);
    let size = std::fs::metadata(&path).unwrap_or_else(|e| panic!("blob {digest}: {e}")).len();
    assert_eq!(Some(size), descriptor["size"].as_u64(), "size of {digest}");
    assert_eq!(sha256(&path), hex, "content of {digest}");
    path
}

fn sha256(path: &Path) -> String {
    run("sha256sum", &[path.to_str().unwrap()]).split_whitespace().next().unwrap().to_owned()
}

fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

#[test]
fn the_image_is_one_static_binary_that_containerd_runs() {
    let Some(archive) = ratchet_image() else { return };
    let started = Instant::now();
    let reference = image_reference();
    let work = tempfile::Builder::new().prefix("ratchet-image-").tempdir().unwrap();
    let layout = work.path().join("layout");
    std::fs::create_dir(&layout).unwrap();
    run("tar", &["-xf", archive.to_str().unwrap(), "-C", layout.to_str().unwrap()]);

    // The layout: its marker, an index naming one image, three blobs.
    assert_eq!(read_json(&layout.join("oci-layout"))["imageLayoutVersion"], "1.0.0");
    let index = read_json(&layout.join("index.json"));
    assert_eq!(index["schemaVersion"], 2);
    let manifests = index["manifests"].as_array().expect("manifests");
    assert_eq!(manifests.len(), 1, "one image: {index}");
    let descriptor = &manifests[0];
    assert_eq!(descriptor["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    for key in ["io.containerd.image.name", "org.opencontainers.image.ref.name"] {
        assert_eq!(descriptor["annotations"][key], reference.as_str(), "{key}");
    }
    let manifest = read_json(&blob(&layout, descriptor));
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["config"]["mediaType"], "application/vnd.oci.image.config.v1+json");
    let config = read_json(&blob(&layout, &manifest["config"]));
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1, "one layer: {manifest}");
    assert_eq!(layers[0]["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip");
    let layer = blob(&layout, &layers[0]);
    let blobs = std::fs::read_dir(layout.join("blobs/sha256")).unwrap().count();
    assert_eq!(blobs, 3, "the manifest, the config and the layer, nothing else");

    // The config: this machine's platform, the entrypoint, nothing else to run.
    assert_eq!((config["os"].as_str(), config["architecture"].as_str()), (Some("linux"), Some(oci_arch())));
    assert_eq!(config["config"], serde_json::json!({"Entrypoint": [IMAGE_ENTRYPOINT]}), "no Cmd, Env or User");
    let uncompressed = work.path().join("layer.tar");
    let status = Command::new("gzip")
        .args(["-dc", layer.to_str().unwrap()])
        .stdout(std::fs::File::create(&uncompressed).unwrap())
        .status()
        .unwrap();
    assert!(status.success(), "the layer is gzip");
    assert_eq!(config["rootfs"]["diff_ids"], serde_json::json!([format!("sha256:{}", sha256(&uncompressed))]));

    // The layer: one file, root's, the entrypoint, static, and it runs here.
    let listing = run("tar", &["--numeric-owner", "-tvf", uncompressed.to_str().unwrap()]);
    let entries: Vec<&str> = listing.lines().collect();
    assert_eq!(entries.len(), 1, "one entry:\n{listing}");
    let fields: Vec<&str> = entries[0].split_whitespace().collect();
    let (mode, owner, name) = (fields[0], fields[1], fields[fields.len() - 1]);
    assert_eq!(name.trim_start_matches("./").trim_start_matches('/'), IMAGE_ENTRYPOINT.trim_start_matches('/'));
    assert_eq!((mode, owner), ("-rwxr-xr-x", "0/0"), "a root-owned executable file");
    let rootfs = work.path().join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    run("tar", &["-xf", uncompressed.to_str().unwrap(), "-C", rootfs.to_str().unwrap()]);
    let binary = rootfs.join(IMAGE_ENTRYPOINT.trim_start_matches('/'));
    assert!(std::fs::metadata(&binary).unwrap().permissions().mode() & 0o111 != 0);
    let linkage = elf_linkage(&binary).unwrap();
    assert!(linkage.is_static(), "no loader, no shared library: {linkage:?}");
    let file = run("file", &[binary.to_str().unwrap()]);
    assert!(file.contains("static"), "{file}");
    let version = run(binary.to_str().unwrap(), &["--version"]);
    assert_eq!(version.trim(), format!("ratchet {}", env!("CARGO_PKG_VERSION")));

    // A node without a registry: import, then run it as its entrypoint.
    let (dir, cgroup_parent) = {
        let containerd = Containerd::start();
        let out = containerd.ctr(&["images", "import", archive.to_str().unwrap()]);
        assert!(out.status.success(), "import: {}", String::from_utf8_lossy(&out.stderr));
        let listed = containerd.ctr(&["images", "ls", "--quiet"]);
        let listed = String::from_utf8_lossy(&listed.stdout);
        assert!(listed.lines().any(|line| line == reference), "`ctr images ls` names {reference}:\n{listed}");

        let help = containerd.run(&reference, &["/ratchet", "--help"]);
        let stdout = String::from_utf8_lossy(&help.stdout);
        assert!(help.status.success(), "ctr run {reference} /ratchet --help: {help:?}");
        assert!(stdout.contains("Usage: ratchet") && stdout.contains("install"), "{stdout}");
        // No command: the entrypoint alone, which asks for a subcommand.
        let bare = containerd.run(&reference, &[]);
        assert_eq!(bare.status.code(), Some(2), "clap's usage error: {bare:?}");
        assert!(String::from_utf8_lossy(&bare.stderr).contains("Usage: ratchet"), "{bare:?}");
        (containerd.dir.path().to_owned(), containerd.cgroup_parent.clone())
    };
    assert!(processes_mentioning(&dir).is_empty(), "containerd and its shims are gone");
    assert!(mounts_under(&dir).is_empty(), "no mount left under {}", dir.display());
    assert!(!dir.exists());
    assert!(cgroup_dirs(&cgroup_parent).is_empty(), "no cgroup left");
    eprintln!("image checked and run in {:.1} s", started.elapsed().as_secs_f64());
}

/// deploy/daemonset.yaml runs this image (the same reference, never pulled
/// when the node has it) by its entrypoint's path: there is no shell and no
/// PATH in it.
#[test]
fn the_daemonset_runs_this_image_without_a_shell() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/daemonset.yaml");
    let manifest: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let spec = &manifest["spec"]["template"]["spec"];
    let mut containers = 0;
    for list in ["initContainers", "containers"] {
        for container in spec[list].as_sequence().unwrap_or_else(|| panic!("{list}")) {
            let name = container["name"].as_str().unwrap();
            assert_eq!(container["image"].as_str(), Some(image_reference().as_str()), "{name}");
            assert_eq!(container["imagePullPolicy"].as_str(), Some("IfNotPresent"), "{name}");
            assert_eq!(container["command"][0].as_str(), Some(IMAGE_ENTRYPOINT), "{name}");
            containers += 1;
        }
    }
    assert_eq!(containers, 2, "the install init container and the agent");
}

/// A containerd of the test's own, without CRI (nothing here needs a pod):
/// config, root, state, socket, runc's state and the IO FIFOs under one temp
/// dir. Dropping it kills what it still runs, stops it by PID, and removes
/// what it made outside that dir (shim sockets, cgroups) and every mount
/// under it.
struct Containerd {
    dir: tempfile::TempDir,
    child: Child,
    /// The containers' cgroup parent, this test's alone.
    cgroup_parent: String,
    shared_dirs_before: Vec<bool>,
}

impl Containerd {
    fn start() -> Self {
        let dir = tempfile::Builder::new().prefix("ratchet-ctr-").tempdir().unwrap();
        // No CRI: nothing here needs a pod.
        let config = ratchet_tests::containerd::base_config(dir.path(), &["io.containerd.grpc.v1.cri"]);
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        let shared_dirs_before = SHARED_DIRS.iter().map(|d| Path::new(d).exists()).collect();
        let child = ratchet_tests::containerd::spawn(dir.path());
        // From here on, a failure drops (and so stops) it.
        let mut containerd =
            Self { dir, child, cgroup_parent: format!("/{}", unique("ratchet-image-")), shared_dirs_before };
        let started = Instant::now();
        while !containerd.ctr(&["version"]).status.success() {
            if let Some(status) = containerd.child.try_wait().unwrap() {
                panic!("containerd exited ({status}): {}", containerd.log());
            }
            assert!(started.elapsed() < WITHIN, "containerd not answering in {WITHIN:?}: {}", containerd.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        containerd
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    fn runc_root(&self) -> PathBuf {
        self.dir.path().join("runc")
    }

    /// `ctr` against this containerd in the k8s.io namespace, killed if it
    /// takes longer than [`WITHIN`].
    fn ctr(&self, args: &[&str]) -> Output {
        let seconds = WITHIN.as_secs().to_string();
        Command::new("timeout")
            .args(["--kill-after=5", &seconds, "ctr", "--address"])
            .arg(self.socket())
            .args(["--namespace", NAMESPACE])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("ctr (apt-get install containerd)")
    }

    /// `ctr run --rm` of `image` with `args` as its command (none: its
    /// entrypoint), in a container of a new name.
    fn run(&self, image: &str, args: &[&str]) -> Output {
        let id = unique("run");
        let (runc_root, fifo_dir) = (self.runc_root(), self.dir.path().join("fifo"));
        let cgroup = format!("{}/{id}", self.cgroup_parent);
        let mut command = vec!["run", "--rm", "--runc-root", runc_root.to_str().unwrap()];
        command.extend(["--fifo-dir", fifo_dir.to_str().unwrap(), "--cgroup", &cgroup, image, &id]);
        command.extend(args);
        self.ctr(&command)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        use nix::{
            sys::signal::{Signal, kill},
            unistd::Pid,
        };
        // Containers a failed run left (runc's state is ours alone).
        let runc_root = self.runc_root().join(NAMESPACE);
        ratchet_tests::containerd::delete_containers(&runc_root);
        let _ = kill(Pid::from_raw(i32::try_from(self.child.id()).unwrap()), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Shims name our dir on their command line; each bundle names its
        // shim's socket, which a killed shim leaves in /run/containerd/s.
        let pids = processes_mentioning(self.dir.path());
        for &pid in &pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let bundles = self.dir.path().join("state/io.containerd.runtime.v2.task").join(NAMESPACE);
        for bundle in std::fs::read_dir(bundles).into_iter().flatten().flatten() {
            let address = std::fs::read_to_string(bundle.path().join("address")).unwrap_or_default();
            if let Some(socket) = address.trim().strip_prefix("unix://") {
                let _ = std::fs::remove_file(socket);
            }
        }
        for mount in mounts_under(self.dir.path()) {
            let _ = Command::new("umount").args(["--lazy", &mount]).status();
        }
        // runc removes each container's cgroup, not their parent.
        for parent in cgroup_dirs(&self.cgroup_parent) {
            for child in std::fs::read_dir(&parent).into_iter().flatten().flatten().filter(|e| e.path().is_dir()) {
                let _ = std::fs::remove_dir(child.path());
            }
            let _ = std::fs::remove_dir(parent);
        }
        for (dir, existed) in SHARED_DIRS.iter().zip(&self.shared_dirs_before) {
            if !existed {
                // Fails, as it should, if anything else put a file there meanwhile.
                let _ = std::fs::remove_dir(dir);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while pids.iter().any(|pid| Path::new(&format!("/proc/{pid}")).exists()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
