//! Where ratchet keeps what it knows: the topology, which link ends are
//! attached to which containers, and their host interfaces.
//!
//! The store is a key-value space with exclusive transactions: ADD and DEL run
//! their whole read-decide-write step (including the eBPF map updates that
//! must agree with the records) inside one, so two plugin processes never pair
//! the same link twice or redirect into an end that is going away. This is the
//! shape an etcd backend implements too (a lock plus a transaction), so the
//! verbs never know which backend they talk to: [`open`] picks one from the
//! config.
//!
//! The key layout (all under `/ratchet/`: topology, ends, containers,
//! sandboxes, nodes, liveness, VNIs) is [`records`]' alone; this module only
//! knows the prefix everything lives under ([`records::ROOT`]).

mod embedded;
mod etcd;
pub mod records;

use std::time::Duration;

pub use embedded::{EmbeddedStore, EmbeddedTx};
pub use etcd::{EtcdConfig, EtcdStore, EtcdTls, EtcdTx};

use crate::config::Settings;

/// What can go wrong talking to a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the store for longer than we wait: retrying helps.
    #[error("store at {path} is busy (locked for more than {waited:?})")]
    Busy {
        /// The store file or lock file that is held.
        path: String,
        /// How long we waited ([`crate::files::LOCK_WAIT`]).
        waited: Duration,
    },
    /// A file the store needs (its database, directory or lock) could not
    /// be used; not transient.
    #[error("store at {path}: {message}")]
    Io {
        /// The file or directory it failed on.
        path: String,
        /// What went wrong, as SQLite or the kernel put it.
        message: String,
    },
    /// A record or its key does not parse, or an index names a record that
    /// is not there: the store was damaged or written by something else.
    #[error("store record {key} is not valid: {message}")]
    Corrupt {
        /// The record's key.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// etcd cannot be reached or did not answer in time: retrying helps.
    #[error("etcd at {endpoints} is unavailable: {message}")]
    Unavailable {
        /// The configured endpoints, comma-separated.
        endpoints: String,
        /// The client's error.
        message: String,
    },
    /// etcd refused the request (bad credentials, no permission): the
    /// config must change, retrying does not help.
    #[error("etcd at {endpoints} refused: {message}")]
    Refused {
        /// The configured endpoints, comma-separated.
        endpoints: String,
        /// etcd's reason, or why the TLS files could not be read.
        message: String,
    },
    /// Another node changed what this transaction read: retrying helps.
    #[error("etcd at {endpoints}: another writer changed these records first")]
    Conflict {
        /// The configured endpoints, comma-separated.
        endpoints: String,
    },
    /// The store holds nothing while the node's maps count attached ends:
    /// it was deleted, truncated or emptied under them.
    #[error(
        "store at {path} holds no records, but {ends} link end(s) are attached on this node (counted under \
         {pin_root}): the store was deleted, truncated or damaged, and no link can be paired or released safely \
         without it. Run `ratchet reset --state-dir {state_dir} --pin-root {pin_root}` to remove this node's link \
         ends and pins, then apply the topology again and recreate the pods"
    )]
    Lost {
        /// The store's file.
        path: String,
        /// The node's `state_dir`, for the `ratchet reset` the message gives.
        state_dir: String,
        /// The node's `pin_root`, whose counters show the attached ends.
        pin_root: String,
        /// How many host veths the pinned counters track.
        ends: usize,
    },
}

impl StoreError {
    /// Whether the runtime should simply try the verb again (CNI code 11).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Busy { .. } | StoreError::Unavailable { .. } | StoreError::Conflict { .. })
    }
}

/// The store the config names: etcd when it gives endpoints, else the
/// embedded store in `state_dir`. As it is: a verb opens it through
/// [`crate::ends::open_store`], which also tells a lost store from a new one.
pub async fn open(settings: &Settings) -> Result<AnyStore, StoreError> {
    match EtcdConfig::from_settings(settings) {
        Some(config) => Ok(AnyStore::Etcd(Box::new(EtcdStore::connect(&config, &settings.state_dir).await?))),
        None => Ok(AnyStore::Embedded(EmbeddedStore::open(&settings.state_dir)?)),
    }
}

impl AnyStore {
    /// Marks `node` alive for `ttl` (renewed by calling again): what the
    /// agent does each round, so a node whose agent died can be found. The
    /// embedded store serves one node, which is alive while it answers.
    pub async fn keep_alive(&mut self, node: &str, ttl: Duration) -> Result<(), StoreError> {
        match self {
            AnyStore::Embedded(_) => Ok(()),
            AnyStore::Etcd(store) => store.keep_alive(&format!("{}{node}", records::ALIVE), ttl).await,
        }
    }

    /// With etcd, a stream that yields on every change under `/ratchet/`;
    /// the embedded store has none (its one node's plugin tells itself).
    pub async fn watch(&mut self) -> Result<Option<etcd_client::WatchStream>, StoreError> {
        match self {
            AnyStore::Embedded(_) => Ok(None),
            AnyStore::Etcd(store) => store.watch(records::ROOT).await.map(Some),
        }
    }

    /// Whether this is etcd, the only backend that knows which nodes'
    /// agents are alive.
    pub fn is_etcd(&self) -> bool {
        matches!(self, AnyStore::Etcd(_))
    }
}

/// Either backend, so the verbs are written once.
pub enum AnyStore {
    /// The SQLite file in `state_dir`, for one node.
    Embedded(EmbeddedStore),
    /// Boxed: the etcd client is a few KiB.
    Etcd(Box<EtcdStore>),
}

/// A transaction on either backend, as [`AnyStore`] begins it.
pub enum AnyTx<'a> {
    /// A SQLite `BEGIN IMMEDIATE` transaction: exclusive among writers.
    Embedded(EmbeddedTx<'a>),
    /// An optimistic etcd transaction, checked against what it read at commit.
    Etcd(EtcdTx<'a>),
}

impl Store for AnyStore {
    type Tx<'a> = AnyTx<'a>;

    async fn begin(&mut self) -> Result<AnyTx<'_>, StoreError> {
        Ok(match self {
            AnyStore::Embedded(store) => AnyTx::Embedded(store.begin().await?),
            AnyStore::Etcd(store) => AnyTx::Etcd(store.begin().await?),
        })
    }
}

impl Transaction for AnyTx<'_> {
    async fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            AnyTx::Embedded(tx) => tx.get(key).await,
            AnyTx::Etcd(tx) => tx.get(key).await,
        }
    }

    async fn scan(&mut self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        match self {
            AnyTx::Embedded(tx) => tx.scan(prefix).await,
            AnyTx::Etcd(tx) => tx.scan(prefix).await,
        }
    }

    async fn put(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        match self {
            AnyTx::Embedded(tx) => tx.put(key, value).await,
            AnyTx::Etcd(tx) => tx.put(key, value).await,
        }
    }

    async fn delete(&mut self, key: &str) -> Result<(), StoreError> {
        match self {
            AnyTx::Embedded(tx) => tx.delete(key).await,
            AnyTx::Etcd(tx) => tx.delete(key).await,
        }
    }

    async fn commit(self) -> Result<(), StoreError> {
        match self {
            AnyTx::Embedded(tx) => tx.commit().await,
            AnyTx::Etcd(tx) => tx.commit().await,
        }
    }
}

/// A backend that can open transactions. The verbs run on one thread, so
/// the futures need not be `Send`.
#[allow(async_fn_in_trait)]
pub trait Store {
    /// The backend's transaction; it borrows the store until committed or dropped.
    type Tx<'a>: Transaction
    where
        Self: 'a;

    /// Starts a transaction that excludes every other writer on this node
    /// until it is committed or dropped (dropping rolls it back).
    async fn begin(&mut self) -> Result<Self::Tx<'_>, StoreError>;
}

/// Reads and writes inside one transaction; nothing is visible to others
/// before [`Transaction::commit`], and a commit applies all or nothing.
#[allow(async_fn_in_trait)]
pub trait Transaction {
    /// The value at `key` as this transaction sees it, its own writes
    /// included; `None` when there is none.
    async fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Every key starting with `prefix`, in key order, with its value.
    async fn scan(&mut self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Sets `key` to `value`, replacing whatever it held.
    async fn put(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError>;
    /// Removes `key`; removing a key that is not there is not an error.
    async fn delete(&mut self, key: &str) -> Result<(), StoreError>;
    /// Applies every write, or none; with etcd, fails with
    /// [`StoreError::Conflict`] when a key read has changed since.
    async fn commit(self) -> Result<(), StoreError>;
}
