//! A private containerd driven over CRI as kubelet drives it, for the tests
//! that take kubelet's path (`containerd.rs`: ratchet as the node's network;
//! `daemonset.rs`: deploy/'s DaemonSet run as kubelet runs it).
//!
//! [`Containerd`] is Debian's containerd 1.6 (runc underneath) with
//! everything under one temp dir: config, root, state, socket, CNI dirs, logs
//! and runc's state. Its CRI plugin gets a conflist and a CNI bin dir of its
//! own. No image can be pulled here, so the tests build a sandbox (pause) and
//! a busybox image ([`Containerd::import_test_images`]) and import them with
//! `ctr`, as a node without a registry takes ratchet's own image. Traps it
//! works around: runc needs `restrict_oom_score_adj = true` (root lacks
//! CAP_SYS_RESOURCE on these VMs; without it runc fails with "can't get final
//! child's PID from pipe"); containerd 1.6 takes one CNI `bin_dir`, so it is
//! a folder of symlinks to the reference plugins (loopback included) plus
//! ratchet.
//!
//! The CRI client is the `k8s-cri` crate over tonic: the plugin already
//! builds tonic and prost for etcd-client, so it costs only its generated
//! code (about 12 s of a cold build) and keeps the tests in Rust, with no
//! Python client to install.

use std::{
    future::Future,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatus, ContainerStatusRequest,
    CreateContainerRequest, ImageSpec, ImageStatusRequest, LinuxPodSandboxConfig, LinuxSandboxSecurityContext,
    ListPodSandboxRequest, NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxFilter, PodSandboxMetadata,
    PodSandboxState, PodSandboxStatusRequest, PodSandboxStatusResponse, RemoveContainerRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, RuntimeCondition, StartContainerRequest, StatusRequest,
    StopContainerRequest, StopPodSandboxRequest, image_service_client::ImageServiceClient,
    runtime_service_client::RuntimeServiceClient,
};
use serde_json::{Value, json};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::{
    containerd::{cgroup_dirs, mounts_under, processes_mentioning},
    util::{ratchet_bin, run, unique},
};

/// The images the tests build; they live only in their own containerd.
pub const PAUSE_IMAGE: &str = "localhost/ratchet-test/pause:1";
pub const BUSYBOX_IMAGE: &str = "localhost/ratchet-test/busybox:1";

/// containerd's CRI namespace, where kubelet's images and pods live.
pub const K8S_NAMESPACE: &str = "k8s.io";

/// Directories containerd's shims and libcni make outside our dir (shim
/// sockets, cached CNI results); removed after the test if it made them and
/// they are empty again.
const SHARED_DIRS: [&str; 4] = ["/run/containerd/s", "/run/containerd", "/var/lib/cni/results", "/var/lib/cni"];

/// Where containerd puts the containers of a sandbox that names no cgroup
/// parent: kubelet without QoS cgroups (`tests/src/kube.rs`) sends none.
/// Removed when empty afterwards, if it was not there before.
const NO_PARENT_CGROUP: &str = "/k8s.io";

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
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A private containerd: config, root, state, socket, CNI dirs, logs and
/// runc's state all under one temp dir. Dropping it removes every sandbox
/// left, stops containerd by PID, and removes what it made outside that dir
/// (netns, libcni's cached results) and every mount under it.
pub struct Containerd {
    pub dir: tempfile::TempDir,
    child: Child,
    /// The pods' cgroup parent, as kubelet gives each pod one: runc removes
    /// each container's cgroup but not the parent.
    pub cgroup_parent: String,
    /// Which of [`SHARED_DIRS`] were there before.
    shared_dirs_before: Vec<bool>,
    /// Whether [`NO_PARENT_CGROUP`] was there before.
    no_parent_cgroup_before: bool,
    runtime: tokio::runtime::Runtime,
    channel: Option<Channel>,
    /// The ids and netns paths of the sandboxes it ran, for cleaning up after
    /// a failure.
    sandboxes: Vec<String>,
    pub netns: Vec<String>,
    /// containerd and every shim seen: a shim outlives its command line as a
    /// zombie until init reaps it (here about a second later), so a drop waits
    /// for these PIDs rather than looking for the name.
    pub pids: Vec<i32>,
}

impl Containerd {
    /// Starts containerd with `conflist` and a CNI bin dir of the reference
    /// plugins plus ratchet, and waits until CRI reports its network ready.
    pub fn start(conflist: &Value) -> Self {
        let dir = tempfile::Builder::new().prefix("ratchet-cri-").tempdir().unwrap();
        let bin = dir.path().join("cni-bin");
        link_reference_plugins(&bin);
        std::os::unix::fs::symlink(ratchet_bin(), bin.join("ratchet")).unwrap();
        let conf_dir = dir.path().join("net.d");
        std::fs::create_dir(&conf_dir).unwrap();
        std::fs::write(conf_dir.join("10-ratchet.conflist"), conflist.to_string()).unwrap();
        Self::launch(dir, &bin, &conf_dir, Ready::WithNetwork)
    }

    /// Starts containerd as a node's runtime before its network is
    /// installed: the CNI bin dir `bin` (the reference plugins linked into
    /// it) and the conf dir `conf_dir` (empty until a CNI's installer writes
    /// there), and waits until CRI answers, its network not ready yet.
    pub fn start_node(bin: &Path, conf_dir: &Path) -> Self {
        let dir = tempfile::Builder::new().prefix("ratchet-cri-").tempdir().unwrap();
        link_reference_plugins(bin);
        std::fs::create_dir_all(conf_dir).unwrap();
        Self::launch(dir, bin, conf_dir, Ready::RuntimeOnly)
    }

    fn launch(dir: tempfile::TempDir, bin: &Path, conf_dir: &Path, ready: Ready) -> Self {
        std::fs::write(dir.path().join("config.toml"), config_toml(dir.path(), bin, conf_dir)).unwrap();
        let shared_dirs_before = SHARED_DIRS.iter().map(|d| Path::new(d).exists()).collect();
        let child = crate::containerd::spawn(dir.path());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        // From here on, a failure drops (and so stops) what is already running.
        let mut containerd = Self {
            dir,
            child,
            cgroup_parent: format!("/{}", unique("ratchet-cri-")),
            shared_dirs_before,
            no_parent_cgroup_before: !cgroup_dirs(NO_PARENT_CGROUP).is_empty(),
            runtime,
            channel: None,
            sandboxes: Vec::new(),
            netns: Vec::new(),
            pids: Vec::new(),
        };
        containerd.wait_ready(ready);
        containerd
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// Connects once the socket is there, then waits for CRI's
    /// `RuntimeReady`, and `NetworkReady` (the conflist loaded) when asked.
    fn wait_ready(&mut self, ready: Ready) {
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
                let needed = |c: &&RuntimeCondition| ready == Ready::WithNetwork || c.r#type == "RuntimeReady";
                if !conditions.is_empty() && conditions.iter().filter(needed).all(|c| c.status) {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn cri(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel.clone().expect("connected"))
    }

    pub fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel.clone().expect("connected"))
    }

    /// Runs one CRI call to completion; panics with its status on error.
    pub fn call<T>(&self, what: &str, call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>) -> T {
        self.runtime.block_on(call).unwrap_or_else(|status| panic!("{what}: {status}")).into_inner()
    }

    /// Imports an OCI image-layout tarball as `ctr` does for a node without a
    /// registry, and waits until CRI's image store has it.
    pub fn import(&self, tarball: &Path, image: &str) {
        let (address, tarball) = (self.socket(), tarball.to_str().unwrap());
        run("ctr", &["--address", address.to_str().unwrap(), "-n", K8S_NAMESPACE, "image", "import", tarball]);
        self.wait_for_image(image);
    }

    /// Tags `image` as `tag` too (`ctr images tag`), and waits until CRI's
    /// image store has the new name.
    pub fn tag(&self, image: &str, tag: &str) {
        let address = self.socket();
        run("ctr", &["--address", address.to_str().unwrap(), "-n", K8S_NAMESPACE, "image", "tag", image, tag]);
        self.wait_for_image(tag);
    }

    fn wait_for_image(&self, image: &str) {
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

    /// Builds the sandbox (pause) and busybox images in `work` and imports
    /// them.
    pub fn import_test_images(&self, work: &Path) {
        let source = work.join("pause.c");
        std::fs::write(&source, PAUSE_C).unwrap();
        let pause = work.join("pause");
        run("gcc", &["-static", "-Os", "-o", pause.to_str().unwrap(), source.to_str().unwrap()]);
        self.import(&oci_image(work, PAUSE_IMAGE, &[("/pause", &pause)], &["/pause"]), PAUSE_IMAGE);
        let busybox = Path::new("/bin/busybox");
        assert!(busybox.exists(), "/bin/busybox is missing: apt-get install busybox-static");
        self.import(&oci_image(work, BUSYBOX_IMAGE, &[("/bin/busybox", busybox)], &["/bin/busybox"]), BUSYBOX_IMAGE);
    }

    /// The sandbox config kubelet sends for `namespace/name` (name,
    /// namespace, uid; a log directory and the pods' cgroup parent), laid
    /// out as kubelet lays out a pod: its own netns, a pid namespace per
    /// container, the IPC namespace shared. A caller changes what its pod
    /// spec changes (the host network, privileged) before
    /// [`Containerd::run_sandbox`].
    pub fn pod_config(&self, namespace: &str, name: &str) -> PodSandboxConfig {
        let log_directory = self.dir.path().join("pods").join(unique(&format!("{name}-")));
        PodSandboxConfig {
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
        }
    }

    /// RunPodSandbox for `namespace/name` with [`Containerd::pod_config`].
    pub fn run_pod(&mut self, namespace: &str, name: &str) -> Sandbox {
        let config = self.pod_config(namespace, name);
        self.run_sandbox(config)
    }

    /// RunPodSandbox with `config`; the sandbox's netns (none on the host
    /// network) is read from its verbose status.
    pub fn run_sandbox(&mut self, config: PodSandboxConfig) -> Sandbox {
        let log_directory = PathBuf::from(&config.log_directory);
        std::fs::create_dir_all(&log_directory).unwrap();
        let name = config.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
        let request = RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: String::new() };
        let id = self.call(&format!("RunPodSandbox {name}"), self.cri().run_pod_sandbox(request)).pod_sandbox_id;
        self.sandboxes.push(id.clone());
        let mut sandbox = Sandbox { id, config, log_directory, netns: None };
        let host_network =
            sandbox.config.linux.as_ref().and_then(|l| l.security_context.as_ref()).is_some_and(|c| {
                c.namespace_options.as_ref().is_some_and(|n| n.network == i32::from(NamespaceMode::Node))
            });
        if !host_network {
            let netns =
                netns_path(&self.pod_status(&sandbox, true)).expect("the sandbox's netns in its verbose status");
            self.netns.push(netns.clone());
            sandbox.netns = Some(netns);
        }
        self.note_shims();
        sandbox
    }

    /// Notes every shim running now, while its command line names us.
    fn note_shims(&mut self) {
        for pid in processes_mentioning(self.dir.path()) {
            if !self.pids.contains(&pid) {
                self.pids.push(pid);
            }
        }
    }

    pub fn pod_status(&self, sandbox: &Sandbox, verbose: bool) -> PodSandboxStatusResponse {
        let request = PodSandboxStatusRequest { pod_sandbox_id: sandbox.id.clone(), verbose };
        self.call("PodSandboxStatus", self.cri().pod_sandbox_status(request))
    }

    /// The sandbox's IP as CRI reports it (from the CNI result's `eth0`).
    pub fn pod_ip(&self, sandbox: &Sandbox) -> String {
        let status = self.pod_status(sandbox, false).status.expect("a status");
        status.network.expect("a network status").ip
    }

    /// CreateContainer then StartContainer of `config` in `sandbox`, as
    /// kubelet starts each container of a pod; returns its id.
    pub fn start_container(&mut self, sandbox: &Sandbox, config: ContainerConfig) -> String {
        let name = config.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
        let request = CreateContainerRequest {
            pod_sandbox_id: sandbox.id.clone(),
            config: Some(config),
            sandbox_config: Some(sandbox.config.clone()),
        };
        let id = self.call(&format!("CreateContainer {name}"), self.cri().create_container(request)).container_id;
        let start = StartContainerRequest { container_id: id.clone() };
        self.call(&format!("StartContainer {name}"), self.cri().start_container(start));
        self.note_shims();
        id
    }

    /// ContainerStatus of a container.
    pub fn container_status(&self, id: &str) -> ContainerStatus {
        let request = ContainerStatusRequest { container_id: id.into(), verbose: false };
        self.call("ContainerStatus", self.cri().container_status(request)).status.expect("a container status")
    }

    /// Whether the container is running now.
    pub fn is_running(&self, id: &str) -> bool {
        self.container_status(id).state == i32::from(ContainerState::ContainerRunning)
    }

    /// Waits (up to [`CALL_TIMEOUT`]) for the container to exit; its exit code.
    pub fn wait_exit(&self, id: &str) -> i32 {
        let started = Instant::now();
        loop {
            let status = self.container_status(id);
            if status.state == i32::from(ContainerState::ContainerExited) {
                return status.exit_code;
            }
            let name = status.metadata.map(|m| m.name).unwrap_or_default();
            assert!(started.elapsed() < CALL_TIMEOUT, "container {name} still running after {CALL_TIMEOUT:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What a container of `sandbox` logged (CRI's log format: a timestamp,
    /// the stream and a tag before each line), by its config's `log_path`.
    pub fn container_log(&self, sandbox: &Sandbox, log_path: &str) -> String {
        std::fs::read_to_string(sandbox.log_directory.join(log_path)).unwrap_or_default()
    }

    /// StopContainer with a grace period of `timeout` seconds (SIGTERM,
    /// then SIGKILL), as kubelet stops each container before its sandbox.
    pub fn stop_container(&self, id: &str, timeout: i64) {
        let request = StopContainerRequest { container_id: id.into(), timeout };
        self.call("StopContainer", self.cri().stop_container(request));
    }

    /// Starts `config` in `sandbox`, waits for it to exit, removes it, and
    /// returns its exit code and log: an init container, or a command run to
    /// its end.
    pub fn run_config_to_exit(&mut self, sandbox: &Sandbox, config: ContainerConfig) -> (i32, String) {
        let log_path = config.log_path.clone();
        let id = self.start_container(sandbox, config);
        let exit_code = self.wait_exit(&id);
        self.call("RemoveContainer", self.cri().remove_container(RemoveContainerRequest { container_id: id }));
        (exit_code, self.container_log(sandbox, &log_path))
    }

    /// Creates and starts a busybox container in `sandbox` running `command`,
    /// waits for it to exit, removes it, and returns its exit code and log.
    pub fn run_to_exit(&mut self, sandbox: &Sandbox, name: &str, command: &[&str]) -> (i32, String) {
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata { name: name.into(), attempt: 0 }),
            image: Some(ImageSpec { image: BUSYBOX_IMAGE.into(), ..Default::default() }),
            command: command.iter().map(|arg| arg.to_string()).collect(),
            log_path: format!("{}.log", unique(&format!("{name}-"))),
            ..Default::default()
        };
        self.run_config_to_exit(sandbox, config)
    }

    /// The network namespace of the ready sandbox kubelet runs for pod
    /// `namespace/name` (found by the labels kubelet gives it), if any.
    pub fn netns_of_pod(&self, namespace: &str, name: &str) -> Option<String> {
        let labels = [("io.kubernetes.pod.namespace", namespace), ("io.kubernetes.pod.name", name)];
        let filter = PodSandboxFilter {
            label_selector: labels.into_iter().map(|(key, value)| (key.into(), value.into())).collect(),
            ..Default::default()
        };
        let request = ListPodSandboxRequest { filter: Some(filter) };
        let pods = self.call("ListPodSandbox", self.cri().list_pod_sandbox(request)).items;
        let ready = pods.into_iter().find(|pod| pod.state == PodSandboxState::SandboxReady as i32)?;
        let request = PodSandboxStatusRequest { pod_sandbox_id: ready.id, verbose: true };
        netns_path(&self.call("PodSandboxStatus", self.cri().pod_sandbox_status(request)))
    }

    /// StopPodSandbox (CNI DEL with the netns), then RemovePodSandbox (DEL
    /// again, with an empty netns), as kubelet ends a pod.
    pub fn stop_and_remove(&self, sandbox: &Sandbox) {
        let id = sandbox.id.clone();
        self.call("StopPodSandbox", self.cri().stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id.clone() }));
        self.call("RemovePodSandbox", self.cri().remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id }));
    }

    /// Best effort, for a test that failed half way: stop and remove every
    /// sandbox containerd still has (kubelet's too, noted for the cleanup of
    /// their cached results).
    fn remove_all_sandboxes(&mut self) {
        if self.channel.is_none() {
            return;
        }
        let listed = self.runtime.block_on(self.cri().list_pod_sandbox(ListPodSandboxRequest { filter: None }));
        for pod in listed.map(|r| r.into_inner().items).unwrap_or_default() {
            let id = pod.id;
            self.sandboxes.push(id.clone());
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
        crate::containerd::delete_containers(&runc_root);
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

    pub fn log_tail(&self) -> String {
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
        let no_parent = (!self.no_parent_cgroup_before).then_some(NO_PARENT_CGROUP);
        for parent in std::iter::once(self.cgroup_parent.as_str()).chain(no_parent) {
            for cgroup in cgroup_dirs(parent) {
                // Fails, as it should, while anything else has a cgroup in it.
                let _ = std::fs::remove_dir(cgroup);
            }
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
pub struct Sandbox {
    pub id: String,
    pub config: PodSandboxConfig,
    pub log_directory: PathBuf,
    /// Its network namespace; `None` on the host network.
    pub netns: Option<String>,
}

/// What [`Containerd::wait_ready`] waits for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ready {
    RuntimeOnly,
    WithNetwork,
}

/// Symlinks in `bin` to each reference plugin: containerd 1.6 takes one
/// `bin_dir`, and loopback must be in it too.
fn link_reference_plugins(bin: &Path) {
    std::fs::create_dir_all(bin).unwrap();
    for plugin in std::fs::read_dir("/usr/lib/cni").expect("containernetworking-plugins").map(|e| e.unwrap()) {
        std::os::unix::fs::symlink(plugin.path(), bin.join(plugin.file_name())).unwrap();
    }
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
fn config_toml(dir: &Path, bin: &Path, conf_dir: &Path) -> String {
    let (d, bin, conf_dir) = (dir.display(), bin.display(), conf_dir.display());
    let cri = format!(
        r#"
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
  bin_dir = "{bin}"
  conf_dir = "{conf_dir}"
  max_conf_num = 1
"#
    );
    crate::containerd::base_config(dir, &[]) + &cri
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
