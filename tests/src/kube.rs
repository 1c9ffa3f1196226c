//! A single-node Kubernetes cluster for the tests that put ratchet under a
//! real kubelet (`kubernetes.rs`): etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler and kubelet as `cargo xtask k8s`
//! built them from source (`RATCHET_K8S_BIN`, set by `cargo xtask test`),
//! kubelet on a test's private containerd ([`crate::cri::Containerd`]).
//!
//! Everything listens on 127.0.0.1 on free ports and keeps its files under
//! the test's directory: a PKI from openssl (the harness's [`Tls`]: the
//! apiserver's serving certificate for 127.0.0.1 and the CA clients check it
//! against), a service-account key, one static admin token (kubelet and the
//! controllers use it too: the test checks ratchet, not Kubernetes' own
//! authorisation), kubelet's root and pod logs. The host is cgroup v1 without
//! systemd, so kubelet runs with `failCgroupV1: false`, the cgroupfs driver
//! and no QoS cgroups; no image can be pulled, so pods name images imported
//! into containerd with `imagePullPolicy: Never` (or `IfNotPresent`).
//! Dropping the cluster stops every process by PID (kubelet first) and
//! unmounts what kubelet mounted under its root; the containerd fixture then
//! removes the pods kubelet left.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::{containerd::mounts_under, etcd::Tls, util::unique};

/// How long the control plane may take to serve, and kubelet to register.
const START_WITHIN: Duration = Duration::from_secs(60);

/// A running single-node cluster.
pub struct Kubernetes {
    dir: PathBuf,
    bin: PathBuf,
    /// The node's name (kubelet's `--hostname-override`).
    pub node_name: String,
    /// The apiserver's port on 127.0.0.1.
    pub apiserver_port: u16,
    kubeconfig: PathBuf,
    /// The components in the order they started.
    processes: Vec<(&'static str, Child)>,
}

impl Kubernetes {
    /// Starts the control plane and a kubelet on `containerd_socket`, all
    /// under `dir` (which the caller removes), and waits until the node is
    /// registered (Ready comes with a CNI config in containerd's conf dir).
    pub fn start(dir: &Path, containerd_socket: &Path) -> Self {
        let bin = kubernetes_bin();
        std::fs::create_dir_all(dir.join("pki")).unwrap();
        let [etcd_client, etcd_peer, apiserver, kubelet] = free_ports();
        let mut cluster = Self {
            dir: dir.to_owned(),
            bin,
            node_name: unique("k8snode"),
            apiserver_port: apiserver,
            kubeconfig: dir.join("kubeconfig"),
            processes: Vec::new(),
        };
        let tls = Tls::generate(&dir.join("pki"), "127.0.0.1").expect("the cluster's certificates (openssl)");
        let sa_key = dir.join("pki/sa.key");
        crate::util::run("openssl", &["genrsa", "-out", sa_key.to_str().unwrap(), "2048"]);
        let token = unique("token");
        std::fs::write(dir.join("tokens.csv"), format!("{token},admin,admin,system:masters\n")).unwrap();
        cluster.write_kubeconfig(&tls.ca, apiserver, &token);

        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        cluster.spawn(
            "etcd",
            &[
                &format!("--data-dir={}", dir.join("etcd").display()),
                &format!("--listen-client-urls={etcd_url}"),
                &format!("--advertise-client-urls={etcd_url}"),
                &format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"),
                &format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"),
                &format!("--initial-cluster=default=http://127.0.0.1:{etcd_peer}"),
            ],
        );
        let (sa_key, ca) = (sa_key.display().to_string(), tls.ca.display().to_string());
        cluster.spawn(
            "kube-apiserver",
            &[
                &format!("--etcd-servers={etcd_url}"),
                "--bind-address=127.0.0.1",
                &format!("--secure-port={apiserver}"),
                &format!("--tls-cert-file={}", tls.server_cert.display()),
                &format!("--tls-private-key-file={}", tls.server_key.display()),
                &format!("--client-ca-file={ca}"),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                &format!("--service-account-key-file={sa_key}"),
                &format!("--service-account-signing-key-file={sa_key}"),
                &format!("--token-auth-file={}", dir.join("tokens.csv").display()),
                "--authorization-mode=Node,RBAC",
                "--service-cluster-ip-range=10.96.0.0/16",
                // The DaemonSet's agent is privileged.
                "--allow-privileged=true",
            ],
        );
        cluster.wait_until("the apiserver is ready", |k| k.try_kubectl(&["get", "--raw", "/readyz"]).status.success());
        let kubeconfig = format!("--kubeconfig={}", cluster.kubeconfig.display());
        cluster.spawn(
            "kube-controller-manager",
            &[
                &kubeconfig,
                "--secure-port=0",
                "--leader-elect=false",
                &format!("--service-account-private-key-file={sa_key}"),
                &format!("--root-ca-file={ca}"),
                "--use-service-account-credentials=true",
            ],
        );
        cluster.spawn("kube-scheduler", &[&kubeconfig, "--secure-port=0", "--leader-elect=false"]);
        std::fs::write(dir.join("kubelet.yaml"), kubelet_config(dir, containerd_socket, kubelet)).unwrap();
        let node_name = cluster.node_name.clone();
        cluster.spawn(
            "kubelet",
            &[
                &kubeconfig,
                &format!("--config={}", dir.join("kubelet.yaml").display()),
                &format!("--root-dir={}", dir.join("kubelet").display()),
                &format!("--hostname-override={node_name}"),
            ],
        );
        cluster
            .wait_until("kubelet registers the node", |k| k.try_kubectl(&["get", "node", &node_name]).status.success());
        cluster.wait_until("the default service account", |k| {
            k.try_kubectl(&["get", "serviceaccount", "default"]).status.success()
        });
        cluster
    }

    /// kubectl with the cluster's admin kubeconfig; panics (with its stderr)
    /// unless it succeeds, and returns its stdout.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let output = self.try_kubectl(args);
        assert!(output.status.success(), "kubectl {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// kubectl that must succeed (`wait`, `rollout status`, ...); a failure
    /// says what the cluster's events and kubelet's log say.
    pub fn expect(&self, args: &[&str]) -> String {
        let output = self.try_kubectl(args);
        if !output.status.success() {
            let events = self.try_kubectl(&["get", "events", "--all-namespaces", "--sort-by=.lastTimestamp"]);
            panic!(
                "kubectl {}: {}\nevents:\n{}\nkubelet:\n{}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr),
                String::from_utf8_lossy(&events.stdout),
                self.log_tail("kubelet", 30)
            );
        }
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// kubectl, whatever its exit status.
    pub fn try_kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_command(args).stdin(Stdio::null()).output().expect("run kubectl")
    }

    /// `kubectl apply -f -` of `manifests` (YAML or JSON).
    pub fn apply(&self, manifests: &str) -> String {
        let mut child = self
            .kubectl_command(&["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        child.stdin.take().unwrap().write_all(manifests.as_bytes()).unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "kubectl apply: {}\n{manifests}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The last lines a component logged, for an assertion's message.
    pub fn log_tail(&self, component: &str, lines: usize) -> String {
        let log = std::fs::read_to_string(self.dir.join(format!("{component}.log"))).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn kubectl_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(self.bin.join("kubectl"));
        command.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        command
    }

    fn spawn(&mut self, component: &'static str, args: &[&str]) {
        let log = std::fs::File::create(self.dir.join(format!("{component}.log"))).unwrap();
        let child = Command::new(self.bin.join(component))
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {component}: {e}"));
        self.processes.push((component, child));
    }

    /// Waits for `done`, failing with the logs of what exited or the last
    /// component started.
    fn wait_until(&mut self, what: &str, done: impl Fn(&Self) -> bool) {
        let started = Instant::now();
        while !done(self) {
            let exited =
                self.processes.iter_mut().find_map(|(component, child)| Some((*component, child.try_wait().ok()??)));
            if let Some((component, status)) = exited {
                panic!("{component} exited ({status}) while waiting until {what}:\n{}", self.log_tail(component, 20));
            }
            if started.elapsed() > START_WITHIN {
                let last = self.processes.last().map_or("etcd", |(component, _)| *component);
                panic!("not {what} in {START_WITHIN:?}; {last}:\n{}", self.log_tail(last, 20));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn write_kubeconfig(&self, ca: &Path, port: u16, token: &str) {
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\n\
             clusters: [{{name: test, cluster: {{server: \"https://127.0.0.1:{port}\", certificate-authority: {ca:?}}}}}]\n\
             users: [{{name: admin, user: {{token: {token}}}}}]\n\
             contexts: [{{name: test, context: {{cluster: test, user: admin}}}}]\n\
             current-context: test\n"
        );
        std::fs::write(&self.kubeconfig, kubeconfig).unwrap();
    }
}

impl Drop for Kubernetes {
    fn drop(&mut self) {
        for (_, child) in self.processes.iter_mut().rev() {
            stop(child);
        }
        // kubelet bind-mounts its root, and mounts each pod's volumes under it.
        for mount in mounts_under(&self.dir) {
            let _ = Command::new("umount").args(["--lazy", &mount]).status();
        }
    }
}

/// The directory of `cargo xtask k8s`'s binaries.
fn kubernetes_bin() -> PathBuf {
    let bin = std::env::var_os("RATCHET_K8S_BIN")
        .map(PathBuf::from)
        .expect("RATCHET_K8S_BIN is not set: run `cargo xtask test`, or set it to what `cargo xtask k8s` prints");
    for component in ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kubectl"] {
        assert!(bin.join(component).is_file(), "{} is missing: run `cargo xtask k8s`", bin.join(component).display());
    }
    bin
}

/// kubelet's configuration for this host: the test's containerd, its own
/// ports on 127.0.0.1 (the healthz port off), pod logs under `dir`, cgroup
/// v1 without QoS cgroups, and eviction only at the very end (shared CI
/// disks run nearly full).
fn kubelet_config(dir: &Path, containerd_socket: &Path, port: u16) -> String {
    format!(
        "apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://{socket}
address: 127.0.0.1
port: {port}
healthzPort: 0
readOnlyPort: 0
podLogsDir: {logs}
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
authentication: {{anonymous: {{enabled: false}}, webhook: {{enabled: false}}}}
authorization: {{mode: AlwaysAllow}}
evictionHard: {{memory.available: \"100Mi\", nodefs.available: \"1%\", imagefs.available: \"1%\", nodefs.inodesFree: \"1%\"}}
imageGCHighThresholdPercent: 100
resolvConf: /etc/resolv.conf
",
        socket = containerd_socket.display(),
        logs = dir.join("pod-logs").display(),
    )
}

/// SIGTERM, then SIGKILL after five seconds.
fn stop(child: &mut Child) {
    use nix::{sys::signal, unistd::Pid};
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap());
    let _ = signal::kill(pid, signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Ports nothing listens on now (held together, so they differ).
fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: [std::net::TcpListener; N] =
        std::array::from_fn(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"));
    listeners.map(|listener| listener.local_addr().unwrap().port())
}
