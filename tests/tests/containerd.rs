//! kubelet's path end to end: kubelet -> CRI -> containerd -> libcni -> ratchet.
//!
//! The test starts a private containerd (Debian's 1.6, runc underneath) whose
//! CRI plugin has ratchet's conflist and a CNI bin dir of its own, and makes
//! the CRI calls kubelet makes: RunPodSandbox, CreateContainer and
//! StartContainer, PodSandboxStatus, StopPodSandbox, RemovePodSandbox. No image
//! can be pulled here, so it builds its sandbox (pause) and busybox images and
//! imports them with `ctr`. Traps it works around: runc needs
//! `restrict_oom_score_adj = true` (root lacks CAP_SYS_RESOURCE on these VMs;
//! without it runc fails with "can't get final child's PID from pipe");
//! containerd 1.6 takes one CNI `bin_dir`, so it is a folder of symlinks to
//! the reference plugins (loopback included) plus ratchet; and DEL comes twice,
//! the second time with an empty `CNI_NETNS` and no prevResult.
//!
//! The CRI client is the `k8s-cri` crate over tonic: the plugin already builds
//! tonic and prost for etcd-client, so it costs only its generated code (about
//! 12 s of a cold build) and keeps the test in Rust, with no Python client to
//! install.

use std::{
    future::Future,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatusRequest, CreateContainerRequest, ImageSpec,
    ImageStatusRequest, LinuxPodSandboxConfig, LinuxSandboxSecurityContext, ListPodSandboxRequest, NamespaceMode,
    NamespaceOption, PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest, PodSandboxStatusResponse,
    RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StatusRequest,
    StopPodSandboxRequest, image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient,
};
use ratchet_plugin::{naming::host_ifname, topology::Side};
use ratchet_tests::{
    Bridge, HostLocal, Node, cgroup_dirs, host_link_gone, mounts_under, processes_mentioning, ratchet_bin, run, unique,
};
use serde_json::{Value, json};
use tonic::transport::{Channel, Endpoint, Uri};

/// The images the test builds; they live only in its own containerd.
const PAUSE_IMAGE: &str = "localhost/ratchet-test/pause:1";
const BUSYBOX_IMAGE: &str = "localhost/ratchet-test/busybox:1";

/// containerd's CRI namespace, where kubelet's images and pods live.
const K8S_NAMESPACE: &str = "k8s.io";

/// Directories containerd's shims and libcni make outside our dir (shim
/// sockets, cached CNI results); removed after the test if it made them and
/// they are empty again.
const SHARED_DIRS: [&str; 4] = ["/run/containerd/s", "/run/containerd", "/var/lib/cni/results", "/var/lib/cni"];

/// The sandbox image's program: sleeps until SIGTERM (StopPodSandbox), as
/// Kubernetes' pause does; static, since its image has nothing else.
const PAUSE_C: &str = r#"
#include <signal.h>
#include <unistd.h>
static void done(int sig) { (void)sig; _exit(0); }
int main(void) {
    signal(SIGTERM, done);
    signal(SIGINT, done);
    for (;;) pause();
}
"#;

/// How long containerd may take to answer CRI with its network ready.
const READY_WITHIN: Duration = Duration::from_secs(20);
/// How long any one CRI call may take (RunPodSandbox takes 0.1-0.7 s here).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A private containerd: config, root, state, socket, CNI dirs, logs and
/// runc's state all under one temp dir. Dropping it removes every sandbox
/// left, stops containerd by PID, and removes what it made outside that dir
/// (netns, libcni's cached results) and every mount under it.
struct Containerd {
    dir: tempfile::TempDir,
    child: Child,
    /// The pods' cgroup parent, as kubelet gives each pod one: runc removes
    /// each container's cgroup but not the parent.
    cgroup_parent: String,
    /// Which of [`SHARED_DIRS`] were there before.
    shared_dirs_before: Vec<bool>,
    runtime: tokio::runtime::Runtime,
    channel: Option<Channel>,
    /// The ids and netns paths of the sandboxes it ran, for cleaning up after
    /// a failure.
    sandboxes: Vec<String>,
    netns: Vec<String>,
    /// containerd and every shim seen: a shim outlives its command line as a
    /// zombie until init reaps it (here about a second later), so a drop waits
    /// for these PIDs rather than looking for the name.
    pids: Vec<i32>,
}

impl Containerd {
    /// Starts containerd with `conflist` and a CNI bin dir of the reference
    /// plugins plus ratchet, and waits until CRI reports its network ready.
    fn start(conflist: &Value) -> Self {
        let dir = tempfile::Builder::new().prefix("ratchet-cri-").tempdir().unwrap();
        let bin = dir.path().join("cni-bin");
        std::fs::create_dir(&bin).unwrap();
        // containerd 1.6 takes one bin_dir; loopback must be in it too.
        for plugin in std::fs::read_dir("/usr/lib/cni").expect("containernetworking-plugins").map(|e| e.unwrap()) {
            std::os::unix::fs::symlink(plugin.path(), bin.join(plugin.file_name())).unwrap();
        }
        std::os::unix::fs::symlink(ratchet_bin(), bin.join("ratchet")).unwrap();
        let conf_dir = dir.path().join("net.d");
        std::fs::create_dir(&conf_dir).unwrap();
        std::fs::write(conf_dir.join("10-ratchet.conflist"), conflist.to_string()).unwrap();
        std::fs::write(dir.path().join("config.toml"), config_toml(dir.path())).unwrap();

        let shared_dirs_before = SHARED_DIRS.iter().map(|d| Path::new(d).exists()).collect();
        let log = std::fs::File::create(dir.path().join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.path().join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn containerd (apt-get install containerd)");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        // From here on, a failure drops (and so stops) what is already running.
        let mut containerd = Self {
            dir,
            child,
            cgroup_parent: format!("/{}", unique("ratchet-cri-")),
            shared_dirs_before,
            runtime,
            channel: None,
            sandboxes: Vec::new(),
            netns: Vec::new(),
            pids: Vec::new(),
        };
        containerd.wait_ready();
        containerd
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// Connects once the socket is there, then waits for CRI's
    /// `NetworkReady` (the conflist loaded).
    fn wait_ready(&mut self) {
        let started = Instant::now();
        loop {
            assert!(started.elapsed() < READY_WITHIN, "containerd not ready in {READY_WITHIN:?}: {}", self.log_tail());
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("containerd exited ({status}): {}", self.log_tail());
            }
            if self.channel.is_none() && self.socket().exists() {
                self.channel = self.runtime.block_on(connect(self.socket())).ok();
            }
            if self.channel.is_some()
                && let Ok(status) = self.runtime.block_on(self.cri().status(StatusRequest { verbose: false }))
            {
                let conditions = status.into_inner().status.map(|s| s.conditions).unwrap_or_default();
                if !conditions.is_empty() && conditions.iter().all(|c| c.status) {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn cri(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel.clone().expect("connected"))
    }

    fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel.clone().expect("connected"))
    }

    /// Runs one CRI call to completion; panics with its status on error.
    fn call<T>(&self, what: &str, call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>) -> T {
        self.runtime.block_on(call).unwrap_or_else(|status| panic!("{what}: {status}")).into_inner()
    }

    /// Imports an OCI image-layout tarball as `ctr` does for a node without a
    /// registry, and waits until CRI's image store has it.
    fn import(&self, tarball: &Path, image: &str) {
        let (address, tarball) = (self.socket(), tarball.to_str().unwrap());
        run("ctr", &["--address", address.to_str().unwrap(), "-n", K8S_NAMESPACE, "image", "import", tarball]);
        let has_image = || {
            let request = ImageStatusRequest {
                image: Some(ImageSpec { image: image.into(), ..Default::default() }),
                verbose: false,
            };
            self.call("ImageStatus", self.images().image_status(request)).image.is_some()
        };
        let started = Instant::now();
        while !has_image() {
            assert!(started.elapsed() < READY_WITHIN, "CRI never saw {image}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// RunPodSandbox for `namespace/name`, with the metadata kubelet sends
    /// (name, namespace, uid), as kubelet lays out a pod: its own netns, a
    /// pid namespace per container, the IPC namespace shared.
    fn run_pod(&mut self, namespace: &str, name: &str) -> Sandbox {
        let log_directory = self.dir.path().join("pods").join(name);
        std::fs::create_dir_all(&log_directory).unwrap();
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: unique(&format!("{name}-uid-")),
                namespace: namespace.into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: log_directory.to_str().unwrap().into(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent.clone(),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Pod.into(),
                        pid: NamespaceMode::Container.into(),
                        ipc: NamespaceMode::Pod.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let request = RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: String::new() };
        let id = self.call(&format!("RunPodSandbox {name}"), self.cri().run_pod_sandbox(request)).pod_sandbox_id;
        self.sandboxes.push(id.clone());
        let sandbox = Sandbox { id, config, log_directory };
        let netns = netns_path(&self.pod_status(&sandbox, true)).expect("the sandbox's netns in its verbose status");
        self.netns.push(netns);
        // Its shim is running now: note it while its command line names us.
        for pid in processes_mentioning(self.dir.path()) {
            if !self.pids.contains(&pid) {
                self.pids.push(pid);
            }
        }
        sandbox
    }

    fn pod_status(&self, sandbox: &Sandbox, verbose: bool) -> PodSandboxStatusResponse {
        let request = PodSandboxStatusRequest { pod_sandbox_id: sandbox.id.clone(), verbose };
        self.call("PodSandboxStatus", self.cri().pod_sandbox_status(request))
    }

    /// The sandbox's IP as CRI reports it (from the CNI result's `eth0`).
    fn pod_ip(&self, sandbox: &Sandbox) -> String {
        let status = self.pod_status(sandbox, false).status.expect("a status");
        status.network.expect("a network status").ip
    }

    /// Creates and starts a busybox container in `sandbox` running `command`,
    /// waits for it to exit, removes it, and returns its exit code and log.
    fn run_to_exit(&self, sandbox: &Sandbox, name: &str, command: &[&str]) -> (i32, String) {
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata { name: name.into(), attempt: 0 }),
            image: Some(ImageSpec { image: BUSYBOX_IMAGE.into(), ..Default::default() }),
            command: command.iter().map(|arg| arg.to_string()).collect(),
            log_path: format!("{name}.log"),
            ..Default::default()
        };
        let request = CreateContainerRequest {
            pod_sandbox_id: sandbox.id.clone(),
            config: Some(config),
            sandbox_config: Some(sandbox.config.clone()),
        };
        let id = self.call("CreateContainer", self.cri().create_container(request)).container_id;
        self.call("StartContainer", self.cri().start_container(StartContainerRequest { container_id: id.clone() }));
        let started = Instant::now();
        let exit_code = loop {
            let request = ContainerStatusRequest { container_id: id.clone(), verbose: false };
            let status = self.call("ContainerStatus", self.cri().container_status(request)).status.unwrap();
            if status.state == i32::from(ContainerState::ContainerExited) {
                break status.exit_code;
            }
            assert!(started.elapsed() < CALL_TIMEOUT, "container {name} still running after {CALL_TIMEOUT:?}");
            std::thread::sleep(Duration::from_millis(50));
        };
        self.call("RemoveContainer", self.cri().remove_container(RemoveContainerRequest { container_id: id }));
        let log = std::fs::read_to_string(sandbox.log_directory.join(format!("{name}.log"))).unwrap_or_default();
        (exit_code, log)
    }

    /// StopPodSandbox (CNI DEL with the netns), then RemovePodSandbox (DEL
    /// again, with an empty netns), as kubelet ends a pod.
    fn stop_and_remove(&self, sandbox: &Sandbox) {
        let id = sandbox.id.clone();
        self.call("StopPodSandbox", self.cri().stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id.clone() }));
        self.call("RemovePodSandbox", self.cri().remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id }));
    }

    /// Best effort, for a test that failed half way: stop and remove every
    /// sandbox containerd still has.
    fn remove_all_sandboxes(&self) {
        if self.channel.is_none() {
            return;
        }
        let listed = self.runtime.block_on(self.cri().list_pod_sandbox(ListPodSandboxRequest { filter: None }));
        for pod in listed.map(|r| r.into_inner().items).unwrap_or_default() {
            let id = pod.id;
            let _ = self
                .runtime
                .block_on(self.cri().stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id.clone() }));
            let _ =
                self.runtime.block_on(self.cri().remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id }));
        }
    }

    /// Stops containerd by PID: SIGTERM, then SIGKILL if it lingers.
    fn stop(&mut self) {
        use nix::{sys::signal, unistd::Pid};
        let pid = Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        let _ = signal::kill(pid, signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// After a failure containerd may leave containers (in runc's state dir,
    /// ours alone) and shims (their command line names our socket): kill them
    /// by id and PID, and remove the sockets a killed shim leaves in
    /// /run/containerd/s (each bundle in our state dir names its shim's).
    fn kill_leftovers(&self) {
        let runc_root = self.dir.path().join("runc").join(K8S_NAMESPACE);
        for container in std::fs::read_dir(&runc_root).into_iter().flatten().flatten() {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(&runc_root)
                .args(["delete", "--force"])
                .arg(container.file_name())
                .stderr(Stdio::null())
                .status();
        }
        for pid in processes_mentioning(self.dir.path()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        let bundles = self.dir.path().join("state/io.containerd.runtime.v2.task").join(K8S_NAMESPACE);
        for bundle in std::fs::read_dir(bundles).into_iter().flatten().flatten() {
            let address = std::fs::read_to_string(bundle.path().join("address")).unwrap_or_default();
            if let Some(socket) = address.trim().strip_prefix("unix://") {
                let _ = std::fs::remove_file(socket);
            }
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.remove_all_sandboxes();
        self.channel = None;
        self.stop();
        self.kill_leftovers();
        for mount in mounts_under(self.dir.path()) {
            let _ = Command::new("umount").args(["--lazy", &mount]).status();
        }
        for netns in &self.netns {
            if Path::new(netns).exists() {
                let _ = Command::new("umount").args(["--lazy", netns]).stderr(Stdio::null()).status();
                let _ = std::fs::remove_file(netns);
            }
        }
        // libcni caches each ADD result (loopback's and ours) outside our dir,
        // named after the sandbox; DEL removes it, a failed test may not have
        // got that far.
        for entry in std::fs::read_dir("/var/lib/cni/results").into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if self.sandboxes.iter().any(|id| name.contains(id.as_str())) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        for cgroup in cgroup_dirs(&self.cgroup_parent) {
            let _ = std::fs::remove_dir(cgroup);
        }
        for (dir, existed) in SHARED_DIRS.iter().zip(&self.shared_dirs_before) {
            if !existed {
                // Fails, as it should, if anything else put a file there meanwhile.
                let _ = std::fs::remove_dir(dir);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.pids.iter().any(|pid| Path::new(&format!("/proc/{pid}")).exists()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A pod sandbox and the config CreateContainer needs again.
struct Sandbox {
    id: String,
    config: PodSandboxConfig,
    log_directory: PathBuf,
}

/// A tonic channel over containerd's Unix socket (the URI is a placeholder).
async fn connect(socket: PathBuf) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_static("http://[::]:0")
        .timeout(CALL_TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(socket).await?)) }
        }))
        .await
}

/// containerd's config (version 2) with everything under `dir`: overlayfs,
/// runc on cgroupfs, and `restrict_oom_score_adj` (root lacks
/// CAP_SYS_RESOURCE here; without it runc fails "can't get final child's PID
/// from pipe").
fn config_toml(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  # Debian enables AppArmor, but the profile containerd would load needs apparmor_parser.
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = "{d}/runc"

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "{d}/cni-bin"
  conf_dir = "{d}/net.d"
  max_conf_num = 1
"#
    )
}

/// The sandbox's network namespace path, from PodSandboxStatus' verbose info
/// (the OCI spec containerd gave the pause container).
fn netns_path(status: &PodSandboxStatusResponse) -> Option<String> {
    let info: Value = serde_json::from_str(status.info.get("info")?).ok()?;
    let namespaces = info["runtimeSpec"]["linux"]["namespaces"].as_array()?;
    let network = namespaces.iter().find(|n| n["type"] == "network")?;
    network["path"].as_str().map(String::from)
}

/// Packs `files` (path in the image, file on the host) as an OCI image-layout
/// tarball with one uncompressed layer, named `image` for `ctr image import`.
fn oci_image(work: &Path, image: &str, files: &[(&str, &Path)], entrypoint: &[&str]) -> PathBuf {
    let layout = work.join(unique("layout-"));
    let (rootfs, blobs) = (work.join(unique("rootfs-")), layout.join("blobs/sha256"));
    std::fs::create_dir_all(&blobs).unwrap();
    for (inside, host) in files {
        let target = rootfs.join(inside.trim_start_matches('/'));
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(host, &target).unwrap();
    }
    let layer = work.join(unique("layer-"));
    let (rootfs_arg, layer_arg) = (rootfs.to_str().unwrap(), layer.to_str().unwrap());
    run("tar", &["--owner=0", "--group=0", "--numeric-owner", "-C", rootfs_arg, "-cf", layer_arg, "."]);
    let layer = blob(&blobs, &std::fs::read(&layer).unwrap());
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let config = json!({"architecture": arch, "os": "linux", "config": {"Entrypoint": entrypoint},
        "rootfs": {"type": "layers", "diff_ids": [layer.0]}});
    let config = blob(&blobs, config.to_string().as_bytes());
    let manifest = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.0, "size": config.1},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.0, "size": layer.1}]});
    let manifest = blob(&blobs, manifest.to_string().as_bytes());
    let index = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest.0, "size": manifest.1,
        "platform": {"architecture": arch, "os": "linux"},
        "annotations": {"io.containerd.image.name": image}}]});
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    std::fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion": "1.0.0"}"#).unwrap();
    let tarball = work.join(unique("image-"));
    run("tar", &["-C", layout.to_str().unwrap(), "-cf", tarball.to_str().unwrap(), "."]);
    tarball
}

/// Stores `content` as a content-addressed blob; returns its digest and size.
fn blob(blobs: &Path, content: &[u8]) -> (String, usize) {
    let file = blobs.join(unique("new-"));
    std::fs::write(&file, content).unwrap();
    let sum = run("sha256sum", &[file.to_str().unwrap()]);
    let hex = sum.split_whitespace().next().unwrap().to_owned();
    std::fs::rename(&file, blobs.join(&hex)).unwrap();
    (format!("sha256:{hex}"), content.len())
}

/// Builds both images in `work` and imports them.
fn import_images(containerd: &Containerd, work: &Path) {
    let source = work.join("pause.c");
    std::fs::write(&source, PAUSE_C).unwrap();
    let pause = work.join("pause");
    run("gcc", &["-static", "-Os", "-o", pause.to_str().unwrap(), source.to_str().unwrap()]);
    containerd.import(&oci_image(work, PAUSE_IMAGE, &[("/pause", &pause)], &["/pause"]), PAUSE_IMAGE);
    let busybox = Path::new("/bin/busybox");
    assert!(busybox.exists(), "/bin/busybox is missing: apt-get install busybox-static");
    containerd.import(&oci_image(work, BUSYBOX_IMAGE, &[("/bin/busybox", busybox)], &["/bin/busybox"]), BUSYBOX_IMAGE);
}

/// The verbs ratchet's `log_file` has for a container, in order, each with
/// its outcome (`ADD ok`): what containerd actually asked of it.
fn logged_verbs(log: &Path, container: &str) -> Vec<String> {
    let log = std::fs::read_to_string(log).unwrap_or_default();
    let mine = format!("container={container}");
    log.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let at = fields.iter().position(|f| f.starts_with("verb="))?;
            let (verb, outcome) = (fields[at].strip_prefix("verb=")?, fields.get(at.checked_sub(1)?)?);
            fields.contains(&mine.as_str()).then(|| format!("{verb} {outcome}"))
        })
        .collect()
}

/// A bridge + host-local network, as `delegate` or `boot_network` takes it.
fn bridge_conf(bridge: &Bridge, ipam: &HostLocal) -> Value {
    json!({"type": "bridge", "bridge": bridge.name, "isGateway": true, "ipam": ipam.ipam()})
}

#[test]
fn kubelet_path_through_containerd() {
    let started = Instant::now();
    let node = Node::new();
    let network = unique("rtcri");
    let (delegate, delegate_ipam) = (Bridge::new(), HostLocal::new("10.155.0.0/24"));
    let (boot, boot_ipam) = (Bridge::new(), HostLocal::new("10.156.0.0/24"));
    let link = unique("lk");
    let mut ratchet = node.config();
    ratchet.as_object_mut().unwrap().retain(|key, _| key != "name" && key != "cniVersion");
    ratchet["delegate"] = bridge_conf(&delegate, &delegate_ipam);
    ratchet["boot_network"] = bridge_conf(&boot, &boot_ipam);
    let verbs_log = node.state_dir.path().join("verbs.log");
    ratchet["log_file"] = json!(verbs_log);
    ratchet["topology"] = json!({"links": [{"name": link,
        "a": {"pod": "default/alpha", "ifname": "in1", "ips": ["10.164.0.1/24"]},
        "b": {"pod": "default/beta", "ifname": "in2", "ips": ["10.164.0.2/24"]}}]});
    let conflist = json!({"cniVersion": "1.0.0", "name": network, "plugins": [ratchet]});

    let (dir, netns, cgroup_parent, pids) = {
        let mut containerd = Containerd::start(&conflist);
        let work = tempfile::tempdir().unwrap();
        import_images(&containerd, work.path());

        let alpha = containerd.run_pod("default", "alpha");
        let beta = containerd.run_pod("default", "beta");
        let plain = containerd.run_pod("default", "plain");
        assert_eq!(node.link_state(&link), "up", "both ends attached through containerd");
        assert_eq!(node.map_keys("peers").len(), 2, "wired both ways");
        for (sandbox, subnet, what) in [
            (&alpha, "10.156.0.", "boot network"),
            (&beta, "10.156.0.", "boot network"),
            (&plain, "10.155.0.", "delegate"),
        ] {
            let ip = containerd.pod_ip(sandbox);
            assert!(ip.starts_with(subnet), "{}'s eth0 {ip} should be on the {what} ({subnet}0/24)", sandbox.id);
        }

        let (code, log) = containerd.run_to_exit(
            &alpha,
            "ping",
            &["/bin/busybox", "ping", "-c", "2", "-i", "0.2", "-W", "3", "10.164.0.2"],
        );
        assert_eq!(code, 0, "alpha pings beta over the link:\n{log}");

        for sandbox in [&alpha, &beta, &plain] {
            containerd.stop_and_remove(sandbox);
        }
        assert!(host_link_gone(&host_ifname(&link, Side::A)) && host_link_gone(&host_ifname(&link, Side::B)));
        assert!(node.map_keys("peers").is_empty(), "no forwarding entry left");
        assert_eq!(node.link_state(&link), "down");
        assert!(delegate.ports().is_empty() && boot.ports().is_empty(), "the bridges' veths are gone");
        assert!(delegate_ipam.allocated(&network).is_empty() && boot_ipam.allocated(&network).is_empty());
        for sandbox in [&alpha, &beta, &plain] {
            // DEL twice: on StopPodSandbox, and with an empty netns on RemovePodSandbox.
            assert_eq!(logged_verbs(&verbs_log, &sandbox.id), ["ADD ok", "DEL ok", "DEL ok"], "{}", sandbox.id);
        }
        let pids = containerd.pids.clone();
        (containerd.dir.path().to_owned(), containerd.netns.clone(), containerd.cgroup_parent.clone(), pids)
    };

    assert!(processes_mentioning(&dir).is_empty(), "containerd and its shims are gone");
    assert!(pids.iter().all(|pid| !Path::new(&format!("/proc/{pid}")).exists()), "and reaped: {pids:?}");
    assert!(mounts_under(&dir).is_empty(), "no mount left under {}", dir.display());
    assert!(!dir.exists());
    assert!(netns.iter().all(|n| !Path::new(n).exists()), "containerd removed the pods' netns: {netns:?}");
    assert!(cgroup_dirs(&cgroup_parent).is_empty(), "no cgroup left");
    eprintln!("containerd end to end in {:.1} s", started.elapsed().as_secs_f64());
}
