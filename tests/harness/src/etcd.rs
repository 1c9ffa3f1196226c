//! A real etcd (Debian's etcd-server) of the caller's own: one member, the
//! short election timeout (it leads within about 0.1 s), its data and log in
//! a directory of its own. By default it serves plain HTTP on 127.0.0.1 on
//! ports picked free for it; [`EtcdOptions`] puts it inside a netns on a
//! fixed address (the two-node rig), or behind TLS with client certificates
//! ([`Tls`]). Dropping it kills it, waits for it and removes its directory.

use std::{
    fs::File,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::{Echo, in_netns, run, scratch_path};

/// How long a fresh or restarted etcd may take to report itself healthy.
const HEALTHY_WITHIN: Duration = Duration::from_secs(10);

/// Where and how an etcd runs. `EtcdOptions::default()` is plain HTTP on
/// 127.0.0.1, free ports, here.
#[derive(Clone, Debug)]
pub struct EtcdOptions {
    /// Run it inside this netns (`ip netns exec`) instead of the caller's.
    pub netns: Option<String>,
    /// The address it serves clients on.
    pub host: String,
    /// Client and peer ports. `None`: free ones in the caller's netns (tried
    /// again with new ones if another process takes one first), or 2379 and
    /// 2380 inside `netns`.
    pub ports: Option<(u16, u16)>,
    /// Serve clients over TLS only, to holders of a certificate the CA
    /// signed; a plain-HTTP listener on 127.0.0.1 then answers `/health`.
    pub tls: Option<Tls>,
    /// Its directory (data and log), removed on drop; by default a fresh one
    /// under the temporary directory.
    pub dir: Option<PathBuf>,
    /// Check that it is healthy from inside this netns (with etcdctl), as
    /// its clients there will reach it; by default from where it runs.
    pub checked_from: Option<String>,
    /// Shown every command it runs (the start of etcd itself, as `... &`).
    pub echo: Option<Echo>,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        Self {
            netns: None,
            host: "127.0.0.1".into(),
            ports: None,
            tls: None,
            dir: None,
            checked_from: None,
            echo: None,
        }
    }
}

/// The files of a test PKI: a CA, a server certificate for one IP address
/// and a client certificate, both signed by the CA.
#[derive(Clone, Debug)]
pub struct Tls {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Tls {
    /// Makes the certificates in `dir` with openssl, the server's for `ip`.
    pub fn generate(dir: &Path, ip: &str) -> anyhow::Result<Tls> {
        let path = |name: &str| dir.join(name);
        let ca_subject = "/CN=ratchet-test-ca";
        run(
            Command::new("openssl")
                .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", ca_subject])
                .arg("-keyout")
                .arg(path("ca.key"))
                .arg("-out")
                .arg(path("ca.crt")),
            None,
        )?;
        let server_usage = format!("subjectAltName=IP:{ip}\nextendedKeyUsage=serverAuth\n");
        for (name, usage) in [("server", server_usage.as_str()), ("client", "extendedKeyUsage=clientAuth\n")] {
            let ext = path(&format!("{name}.ext"));
            std::fs::write(&ext, usage).with_context(|| format!("writing {}", ext.display()))?;
            let (key, csr, crt) =
                (path(&format!("{name}.key")), path(&format!("{name}.csr")), path(&format!("{name}.crt")));
            run(
                Command::new("openssl")
                    .args(["req", "-newkey", "rsa:2048", "-nodes", "-subj", &format!("/CN=ratchet-test-{name}")])
                    .arg("-keyout")
                    .arg(&key)
                    .arg("-out")
                    .arg(&csr),
                None,
            )?;
            run(
                Command::new("openssl")
                    .args(["x509", "-req", "-days", "1", "-in"])
                    .arg(&csr)
                    .arg("-CA")
                    .arg(path("ca.crt"))
                    .arg("-CAkey")
                    .arg(path("ca.key"))
                    .args(["-CAcreateserial", "-extfile"])
                    .arg(&ext)
                    .arg("-out")
                    .arg(&crt),
                None,
            )?;
        }
        Ok(Tls {
            ca: path("ca.crt"),
            server_cert: path("server.crt"),
            server_key: path("server.key"),
            client_cert: path("client.crt"),
            client_key: path("client.key"),
        })
    }
}

/// A running (or stopped, see [`Etcd::stop`]) etcd.
pub struct Etcd {
    pub client_port: u16,
    pub peer_port: u16,
    /// With TLS: the plain-HTTP port that answers `/health`.
    health_port: Option<u16>,
    options: EtcdOptions,
    dir: PathBuf,
    child: Option<Child>,
}

impl Etcd {
    /// Starts a fresh etcd and waits until it is healthy.
    pub fn start_with(options: EtcdOptions) -> anyhow::Result<Etcd> {
        let dir = options.dir.clone().unwrap_or_else(|| scratch_path("ratchet-etcd"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // Free ports are free only in our netns, and only until etcd binds
        // them: another process may take one in between, so try again then.
        let free = options.ports.is_none() && options.netns.is_none();
        let mut failures = Vec::new();
        for _ in 0..if free { 5 } else { 1 } {
            let [client, peer, health] = match options.ports {
                Some((client, peer)) => [client, peer, free_ports::<1>()[0]],
                None if options.netns.is_some() => [2379, 2380, 2381],
                None => free_ports::<3>(),
            };
            let mut etcd = Etcd {
                client_port: client,
                peer_port: peer,
                health_port: options.tls.is_some().then_some(health),
                options: options.clone(),
                dir: dir.clone(),
                child: None,
            };
            match etcd.start() {
                Ok(()) => return Ok(etcd),
                Err(failure) => failures.push(format!("{failure:#}")),
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        bail!("etcd did not start: {failures:#?}")
    }

    /// The client URL, as `etcd_endpoints` and `--etcd-endpoints` take it.
    pub fn endpoint(&self) -> String {
        let scheme = if self.options.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.options.host, self.client_port)
    }

    /// Kills etcd (as a crash would) and waits for it; its data stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes etcd (SIGSTOP): it still accepts connections but answers
    /// nothing, as a hung or partitioned etcd does. [`Etcd::resume`] thaws
    /// it; dropping it kills it either way.
    pub fn pause(&self) -> anyhow::Result<()> {
        self.signal("-STOP")
    }

    pub fn resume(&self) -> anyhow::Result<()> {
        self.signal("-CONT")
    }

    fn signal(&self, signal: &str) -> anyhow::Result<()> {
        // `ip netns exec` execs etcd: the child's pid is etcd's.
        let pid = self.child.as_ref().context("etcd is not running")?.id().to_string();
        run(Command::new("kill").args([signal, &pid]), None).map(drop)
    }

    /// Starts etcd (again) on its ports and data, and waits until it is
    /// healthy.
    pub fn start(&mut self) -> anyhow::Result<()> {
        assert!(self.child.is_none(), "etcd is already running");
        let log = File::options().create(true).append(true).open(self.dir.join("etcd.log"))?;
        let host = &self.options.host;
        let scheme = if self.options.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://{host}:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut etcd = match &self.options.netns {
            Some(netns) => in_netns(netns),
            None => Command::new("etcd"),
        };
        if self.options.netns.is_some() {
            etcd.arg("etcd");
        }
        etcd.arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(["--name", "default", "--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("default={peer}")])
            .args(["--heartbeat-interval=10", "--election-timeout=100"]);
        if let (Some(tls), Some(health)) = (&self.options.tls, self.health_port) {
            etcd.args(["--listen-metrics-urls", &format!("http://127.0.0.1:{health}")])
                .arg("--cert-file")
                .arg(&tls.server_cert)
                .arg("--key-file")
                .arg(&tls.server_key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        etcd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        if let Some(echo) = self.options.echo {
            echo(&etcd);
        }
        self.child = Some(etcd.spawn().context("cannot start etcd")?);
        let started = Instant::now();
        while started.elapsed() < HEALTHY_WITHIN {
            if let Some(status) = self.child.as_mut().expect("just started").try_wait()? {
                self.child = None;
                bail!("etcd exited ({status}): {}", self.log_tail());
            }
            if self.healthy() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.stop();
        bail!("etcd at {} not healthy within {HEALTHY_WITHIN:?}: {}", self.endpoint(), self.log_tail())
    }

    /// True when etcd says it is healthy: `GET /health` answers
    /// `"health":"true"` (on the plain-HTTP port with TLS), or, seen from
    /// another netns, `etcdctl endpoint health` succeeds there.
    pub fn healthy(&self) -> bool {
        if let Some(netns) = self.options.checked_from.as_ref().or(self.options.netns.as_ref()) {
            let mut health = in_netns(netns);
            health.arg("etcdctl").args(self.etcdctl_args()).args(["--dial-timeout=200ms", "endpoint", "health"]);
            return health.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|status| status.success());
        }
        let port = self.health_port.unwrap_or(self.client_port);
        let Some(addr) = (self.options.host.as_str(), port).to_socket_addrs().ok().and_then(|mut addrs| addrs.next())
        else {
            return false;
        };
        http_health(addr)
    }

    /// Every key under `prefix`, as etcdctl (an independent witness) lists
    /// it, run where etcd runs.
    pub fn keys(&self, prefix: &str) -> anyhow::Result<Vec<String>> {
        let mut etcdctl = match &self.options.netns {
            Some(netns) => in_netns(netns),
            None => Command::new("etcdctl"),
        };
        if self.options.netns.is_some() {
            etcdctl.arg("etcdctl");
        }
        etcdctl.args(self.etcdctl_args()).args(["get", "--prefix", "--keys-only", prefix]);
        let out = run(&mut etcdctl, None)?;
        Ok(out.lines().filter(|line| !line.is_empty()).map(String::from).collect())
    }

    /// etcdctl's endpoint (and client certificate) for this etcd.
    fn etcdctl_args(&self) -> Vec<String> {
        let mut args = vec!["--endpoints".to_owned(), self.endpoint()];
        if let Some(tls) = &self.options.tls {
            for (flag, file) in [("--cacert", &tls.ca), ("--cert", &tls.client_cert), ("--key", &tls.client_key)] {
                args.extend([flag.to_owned(), file.display().to_string()]);
            }
        }
        args
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `GET /health` at `addr` answers `"health":"true"`.
fn http_health(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let request = format!("GET /health HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", addr.ip());
    let mut answer = String::new();
    stream.write_all(request.as_bytes()).is_ok()
        && stream.read_to_string(&mut answer).is_ok()
        && answer.contains(r#""health":"true""#)
}

/// `N` distinct ports on 127.0.0.1 that are free right now.
fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: [TcpListener; N] =
        std::array::from_fn(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port on 127.0.0.1"));
    listeners.map(|listener| listener.local_addr().expect("a bound address").port())
}
