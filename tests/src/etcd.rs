//! The tests' etcd: the harness's one etcd fixture
//! ([`ratchet_harness::etcd`]), started and driven with a panic instead of
//! an error. [`Etcd::new`] is plain HTTP on 127.0.0.1 on free ports;
//! [`Etcd::with_tls`] serves only holders of a client certificate ([`Tls`]).
//! Dropping it kills it and removes its data.

use std::ops::{Deref, DerefMut};

use ratchet_harness::etcd::{self, EtcdOptions};

pub use ratchet_harness::etcd::Tls;

/// A real etcd (Debian's etcd-server) of this test's own, listening on
/// 127.0.0.1 only (see [`ratchet_harness::etcd::Etcd`] for the rest:
/// `endpoint`, `stop`, `client_port`).
pub struct Etcd(etcd::Etcd);

impl Etcd {
    /// Starts a fresh, single-member etcd and waits until it is healthy.
    pub fn new() -> Self {
        Self::start_with(EtcdOptions::default())
    }

    /// One that serves clients over TLS only, to holders of a certificate
    /// `tls`'s CA signed.
    pub fn with_tls(tls: &Tls) -> Self {
        Self::start_with(EtcdOptions { tls: Some(tls.clone()), ..EtcdOptions::default() })
    }

    fn start_with(options: EtcdOptions) -> Self {
        Self(etcd::Etcd::start_with(options).unwrap_or_else(|failure| panic!("{failure:#}")))
    }

    /// Starts etcd again on the same ports and data dir, and waits until it is
    /// healthy.
    pub fn start(&mut self) {
        self.0.start().unwrap_or_else(|failure| panic!("etcd did not restart: {failure:#}"));
    }

    /// Freezes etcd (SIGSTOP): it still accepts connections but answers
    /// nothing, as a hung or partitioned etcd does. [`Etcd::resume`] thaws it;
    /// dropping it kills it either way.
    pub fn pause(&self) {
        self.0.pause().expect("SIGSTOP etcd");
    }

    pub fn resume(&self) {
        self.0.resume().expect("SIGCONT etcd");
    }

    /// Every key under `prefix`, as etcdctl (an independent witness) lists it.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        self.0.keys(prefix).unwrap_or_else(|failure| panic!("{failure:#}"))
    }
}

impl Default for Etcd {
    fn default() -> Self {
        Self::new()
    }
}

impl Deref for Etcd {
    type Target = etcd::Etcd;

    fn deref(&self) -> &etcd::Etcd {
        &self.0
    }
}

impl DerefMut for Etcd {
    fn deref_mut(&mut self) -> &mut etcd::Etcd {
        &mut self.0
    }
}
