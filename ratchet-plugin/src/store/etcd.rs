//! The store for several nodes: etcd, through `etcd-client`.
//!
//! Transactions are optimistic: reads remember each key's `mod_revision`
//! (0 for a key that is not there), writes are buffered, and the commit is
//! one etcd transaction that applies them only if no key read has changed
//! since. Two nodes attaching the two ends of one link at the same moment
//! therefore complete it once: the second commit fails (try again later, 11)
//! and its retry finds the first end. Plugin processes on one node also
//! take a node-local lock, as with the embedded store, so their kernel
//! changes (map entries) never interleave.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
    time::Duration,
};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, LeaseKeepAliveStream, LeaseKeeper,
    PutOptions, TlsOptions, Txn, TxnOp, WatchOptions, WatchStream,
};
use nix::fcntl::Flock;

use super::{Store, StoreError, Transaction};

/// How long connecting, and each request, may take before the verb gives
/// up with "try again later".
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How to reach etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdConfig {
    /// The endpoints, `http://host:port` (`https://` with TLS); never empty.
    pub endpoints: Vec<String>,
    /// User and password, when etcd has authentication on.
    pub credentials: Option<(String, String)>,
    /// TLS, when the config names a CA; plain HTTP otherwise.
    pub tls: Option<EtcdTls>,
}

impl EtcdConfig {
    /// How to reach etcd, if the config names it (`etcd_endpoints`, or the
    /// seed's `etcd_host` with `etcd_port`, 2379 by default).
    pub fn from_settings(settings: &crate::config::Settings) -> Option<Self> {
        let mut endpoints = settings.etcd_endpoints.clone();
        if let Some(host) = &settings.etcd_host {
            endpoints.push(format!("http://{host}:{}", settings.etcd_port.unwrap_or(2379)));
        }
        let credentials = settings.etcd_username.clone().zip(settings.etcd_password.clone());
        let client = settings.etcd_cert_file.clone().zip(settings.etcd_key_file.clone());
        let tls = settings.etcd_ca_file.clone().map(|ca| EtcdTls { ca, client });
        (!endpoints.is_empty()).then_some(Self { endpoints, credentials, tls })
    }
}

/// TLS to etcd: the CA to trust, and a client certificate and key if etcd
/// asks for one. All PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdTls {
    /// The CA that signed etcd's server certificate.
    pub ca: PathBuf,
    /// A client certificate and its key, for etcd's `--client-cert-auth`;
    /// `None` unless the config gives both.
    pub client: Option<(PathBuf, PathBuf)>,
}

impl EtcdTls {
    fn options(&self, endpoints: &str) -> Result<TlsOptions, StoreError> {
        let read = |path: &Path| {
            crate::files::read_bounded(path, crate::files::MAX_INPUT).map_err(|e| StoreError::Refused {
                endpoints: endpoints.into(),
                message: format!("{}: {e}", path.display()),
            })
        };
        let mut options = TlsOptions::new().ca_certificate(Certificate::from_pem(read(&self.ca)?));
        if let Some((cert, key)) = &self.client {
            options = options.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(options)
    }
}

/// etcd as a [`Store`]: a client, and the node-local lock file that keeps
/// this node's verbs (and their map changes) one at a time.
pub struct EtcdStore {
    client: Client,
    endpoints: String,
    lock_file: std::path::PathBuf,
    /// The lease this process keeps its node's liveness key under.
    lease: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
}

impl EtcdStore {
    /// Connects; `state_dir` holds the node-local lock file.
    pub async fn connect(config: &EtcdConfig, state_dir: &Path) -> Result<Self, StoreError> {
        let endpoints = config.endpoints.join(",");
        let mut options = ConnectOptions::new().with_connect_timeout(CONNECT_TIMEOUT).with_timeout(REQUEST_TIMEOUT);
        if let Some((user, password)) = &config.credentials {
            options = options.with_user(user, password);
        }
        if let Some(tls) = &config.tls {
            options = options.with_tls(tls.options(&endpoints)?);
        }
        let client = Client::connect(&config.endpoints, Some(options)).await.map_err(|e| classify(&endpoints, e))?;
        let io = |e: std::io::Error| StoreError::Io { path: state_dir.display().to_string(), message: e.to_string() };
        fs::DirBuilder::new().recursive(true).mode(0o700).create(state_dir).map_err(io)?;
        Ok(Self { client, endpoints, lock_file: state_dir.join("etcd.lock"), lease: None })
    }

    /// A stream that yields whenever a key under `prefix` changes.
    pub async fn watch(&mut self, prefix: &str) -> Result<WatchStream, StoreError> {
        let options = WatchOptions::new().with_prefix();
        self.client.watch(prefix, Some(options)).await.map_err(|e| classify(&self.endpoints, e))
    }

    /// Keeps `key` alive under a lease of `ttl`: the first call grants the
    /// lease and puts the key, later ones renew it (granting afresh if it
    /// lapsed, e.g. while etcd was away). If this process stops renewing,
    /// etcd deletes the key when the lease runs out.
    pub async fn keep_alive(&mut self, key: &str, ttl: Duration) -> Result<(), StoreError> {
        let unavailable = |e: etcd_client::Error| StoreError::Unavailable {
            endpoints: self.endpoints.clone(),
            message: e.to_string(),
        };
        if let Some((keeper, stream)) = &mut self.lease {
            let renewed = async {
                keeper.keep_alive().await?;
                Ok::<_, etcd_client::Error>(stream.message().await?.is_some_and(|answer| answer.ttl() > 0))
            };
            if renewed.await.map_err(unavailable)? {
                return Ok(());
            }
        }
        let seconds = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX).max(1);
        let granted = self.client.lease_grant(seconds, None).await.map_err(unavailable)?;
        let options = PutOptions::new().with_lease(granted.id());
        self.client.put(key, Vec::new(), Some(options)).await.map_err(unavailable)?;
        self.lease = Some(self.client.lease_keep_alive(granted.id()).await.map_err(unavailable)?);
        Ok(())
    }
}

impl Store for EtcdStore {
    type Tx<'a> = EtcdTx<'a>;

    async fn begin(&mut self) -> Result<EtcdTx<'_>, StoreError> {
        let io =
            |e: std::io::Error| StoreError::Io { path: self.lock_file.display().to_string(), message: e.to_string() };
        let file = fs::File::create(&self.lock_file).map_err(io)?;
        let lock = crate::files::lock_exclusive(file, crate::files::LOCK_WAIT).map_err(|e| match e.kind() {
            std::io::ErrorKind::TimedOut => {
                StoreError::Busy { path: self.lock_file.display().to_string(), waited: crate::files::LOCK_WAIT }
            }
            _ => io(e),
        })?;
        Ok(EtcdTx { store: self, reads: HashMap::new(), scans: Vec::new(), writes: BTreeMap::new(), _lock: lock })
    }
}

/// An optimistic transaction: reads are remembered, writes buffered until
/// [`Transaction::commit`]; the node-local lock is held throughout.
pub struct EtcdTx<'a> {
    store: &'a mut EtcdStore,
    /// Each key read, with the revision it was read at (0: absent).
    reads: HashMap<String, i64>,
    /// Each prefix scanned, with the store revision it was scanned at: no
    /// key under it may change (or appear) before the commit.
    scans: Vec<(String, i64)>,
    /// Buffered writes: `None` deletes.
    writes: BTreeMap<String, Option<Vec<u8>>>,
    _lock: Flock<fs::File>,
}

impl EtcdTx<'_> {
    fn unavailable(&self, error: etcd_client::Error) -> StoreError {
        classify(&self.store.endpoints, error)
    }
}

/// An error from etcd: refused credentials will not get better by retrying;
/// everything else (no answer, a lost leader) may.
fn classify(endpoints: &str, error: etcd_client::Error) -> StoreError {
    use etcd_client::Error::GRpcStatus;
    use tonic::Code::{InvalidArgument, PermissionDenied, Unauthenticated};
    match &error {
        GRpcStatus(status) if matches!(status.code(), Unauthenticated | PermissionDenied | InvalidArgument) => {
            StoreError::Refused { endpoints: endpoints.into(), message: status.message().into() }
        }
        _ => StoreError::Unavailable { endpoints: endpoints.into(), message: error.to_string() },
    }
}

impl Transaction for EtcdTx<'_> {
    async fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(written) = self.writes.get(key) {
            return Ok(written.clone());
        }
        let response = self.store.client.get(key, None).await.map_err(|e| self.unavailable(e))?;
        let found = response.kvs().first();
        self.reads.entry(key.into()).or_insert(found.map_or(0, |kv| kv.mod_revision()));
        Ok(found.map(|kv| kv.value().to_vec()))
    }

    async fn scan(&mut self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let options = GetOptions::new().with_prefix();
        let response = self.store.client.get(prefix, Some(options)).await.map_err(|e| self.unavailable(e))?;
        if let Some(header) = response.header() {
            self.scans.push((prefix.to_owned(), header.revision()));
        }
        let mut found = BTreeMap::new();
        for kv in response.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            self.reads.entry(key.clone()).or_insert(kv.mod_revision());
            found.insert(key, kv.value().to_vec());
        }
        for (key, written) in self.writes.range(prefix.to_owned()..).take_while(|(key, _)| key.starts_with(prefix)) {
            match written {
                Some(value) => found.insert(key.clone(), value.clone()),
                None => found.remove(key),
            };
        }
        Ok(found.into_iter().collect())
    }

    async fn put(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.writes.insert(key.into(), Some(value.to_vec()));
        Ok(())
    }

    async fn delete(&mut self, key: &str) -> Result<(), StoreError> {
        self.writes.insert(key.into(), None);
        Ok(())
    }

    async fn commit(self) -> Result<(), StoreError> {
        if self.writes.is_empty() {
            return Ok(());
        }
        let mut unchanged: Vec<Compare> = self
            .reads
            .iter()
            .map(|(key, revision)| Compare::mod_revision(key.as_str(), CompareOp::Equal, *revision))
            .collect();
        // A key created or changed under a scanned prefix since the scan has
        // a newer mod_revision; one deleted fails its own comparison above.
        unchanged.extend(self.scans.iter().map(|(prefix, revision)| {
            Compare::mod_revision(prefix.as_str(), CompareOp::Less, revision + 1).with_prefix()
        }));
        let writes: Vec<TxnOp> = self
            .writes
            .iter()
            .map(|(key, value)| match value {
                Some(value) => TxnOp::put(key.as_str(), value.clone(), None),
                None => TxnOp::delete(key.as_str(), None),
            })
            .collect();
        let txn = Txn::new().when(unchanged).and_then(writes);
        let response = self.store.client.txn(txn).await.map_err(|e| self.unavailable(e))?;
        if !response.succeeded() {
            return Err(StoreError::Conflict { endpoints: self.store.endpoints.clone() });
        }
        Ok(())
    }
}
