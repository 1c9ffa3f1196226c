//! The store on its own, called as the verbs call it (`store::open` with a
//! node's settings, then `begin`, reads, buffered writes and `commit`): the
//! same contract for both backends (`on_each_backend!`), and for etcd what
//! makes two nodes pairing one link safe: a commit applies only if nothing it
//! read changed, so of two ends added at the same moment on two nodes exactly
//! one completes the link, never zero or two.
//!
//! Two "nodes" are two store connections with state dirs of their own, so the
//! node-local lock does not serialise them; one node is one state dir.

use std::{
    path::Path,
    sync::{Arc, Barrier, mpsc},
    thread,
    time::{Duration, Instant},
};

use ratchet_plugin::{
    config::Settings,
    store::{
        self, AnyStore, Store, StoreError, Transaction,
        records::{self, EndRecord},
    },
    topology::Side,
};
use ratchet_tests::Etcd;
use serde_json::json;

/// Runs a store test on a one-thread runtime, as the verbs run.
fn block_on<T>(future: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(future)
}

/// A node's settings: its own state dir, and etcd's endpoint when given
/// (else the embedded store in the state dir).
fn settings(state_dir: &Path, etcd: Option<&Etcd>) -> Settings {
    let etcd_endpoints = etcd.map(|etcd| vec![etcd.endpoint()]).unwrap_or_default();
    // A pin root of its own (never made), so no test reads a node's real one.
    let pin_root = state_dir.join("pins");
    Settings { state_dir: state_dir.to_owned(), pin_root, etcd_endpoints, ..Settings::default() }
}

async fn open(settings: &Settings) -> AnyStore {
    store::open(settings).await.unwrap_or_else(|e| panic!("open the store: {e}"))
}

/// What `key` holds, read in a transaction of its own.
async fn read(store: &mut AnyStore, key: &str) -> Option<Vec<u8>> {
    store.begin().await.unwrap().get(key).await.unwrap()
}

/// Every key and value under `prefix`, read in a transaction of its own.
async fn scan(store: &mut AnyStore, prefix: &str) -> Vec<(String, Vec<u8>)> {
    store.begin().await.unwrap().scan(prefix).await.unwrap()
}

/// Commits `key = value` in a transaction of its own.
async fn write(store: &mut AnyStore, key: &str, value: &[u8]) {
    let mut tx = store.begin().await.unwrap();
    tx.put(key, value).await.unwrap();
    tx.commit().await.unwrap();
}

fn pairs(items: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
    items.iter().map(|(key, value)| ((*key).to_owned(), value.to_vec())).collect()
}

/// Runs each named `async fn name(settings: Settings)` once per backend: as
/// `name::embedded` and as `name::etcd` (an etcd of that test's own).
macro_rules! on_each_backend {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn embedded() {
                let dir = tempfile::tempdir().unwrap();
                super::block_on(super::$name(super::settings(dir.path(), None)));
            }

            #[test]
            fn etcd() {
                let etcd = ratchet_tests::Etcd::new();
                let dir = tempfile::tempdir().unwrap();
                super::block_on(super::$name(super::settings(dir.path(), Some(&etcd))));
                assert!(!dir.path().join("store.sqlite").exists(), "etcd settings never open the embedded store");
            }
        }
    )*};
}

on_each_backend!(
    put_get_scan_delete,
    scan_sees_the_transactions_own_writes,
    dropping_a_transaction_rolls_it_back,
    a_second_transaction_on_one_node_waits_and_sees_the_whole_commit,
);

async fn put_get_scan_delete(settings: Settings) {
    let mut store = open(&settings).await;
    let mut tx = store.begin().await.unwrap();
    tx.put("/ratchet/t/a/1", b"one").await.unwrap();
    tx.put("/ratchet/t/a/2", b"\x00\xffbinary").await.unwrap();
    tx.put("/ratchet/t/a0", b"beside a/, not under it").await.unwrap();
    tx.put("/ratchet/t/b/1", b"other").await.unwrap();
    tx.commit().await.unwrap();

    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.get("/ratchet/t/a/1").await.unwrap().as_deref(), Some(&b"one"[..]));
    assert_eq!(tx.get("/ratchet/t/a/2").await.unwrap().as_deref(), Some(&b"\x00\xffbinary"[..]));
    assert_eq!(tx.get("/ratchet/t/none").await.unwrap(), None);
    let found = tx.scan("/ratchet/t/a/").await.unwrap();
    assert_eq!(found, pairs(&[("/ratchet/t/a/1", b"one"), ("/ratchet/t/a/2", b"\x00\xffbinary")]), "key order");
    assert_eq!(tx.scan("/ratchet/t/c/").await.unwrap(), pairs(&[]));
    tx.put("/ratchet/t/a/1", b"uno").await.unwrap();
    tx.delete("/ratchet/t/a/2").await.unwrap();
    tx.delete("/ratchet/t/never-there").await.unwrap();
    tx.commit().await.unwrap();

    // Another connection to the same store (another plugin process) sees it.
    let mut again = open(&settings).await;
    let expected = pairs(&[
        ("/ratchet/t/a/1", b"uno"),
        ("/ratchet/t/a0", b"beside a/, not under it"),
        ("/ratchet/t/b/1", b"other"),
    ]);
    assert_eq!(scan(&mut again, "/ratchet/t/").await, expected);
}

async fn scan_sees_the_transactions_own_writes(settings: Settings) {
    let mut store = open(&settings).await;
    let mut tx = store.begin().await.unwrap();
    tx.put("/ratchet/t/a/1", b"old").await.unwrap();
    tx.put("/ratchet/t/a/2", b"to delete").await.unwrap();
    tx.commit().await.unwrap();

    let mut tx = store.begin().await.unwrap();
    tx.put("/ratchet/t/a/3", b"new").await.unwrap();
    tx.put("/ratchet/t/a/1", b"changed").await.unwrap();
    tx.delete("/ratchet/t/a/2").await.unwrap();
    tx.put("/ratchet/t/b/1", b"outside the prefix").await.unwrap();
    let seen = tx.scan("/ratchet/t/a/").await.unwrap();
    assert_eq!(seen, pairs(&[("/ratchet/t/a/1", b"changed"), ("/ratchet/t/a/3", b"new")]));
    assert_eq!(tx.get("/ratchet/t/a/2").await.unwrap(), None, "its own delete");
    assert_eq!(tx.get("/ratchet/t/a/3").await.unwrap().as_deref(), Some(&b"new"[..]), "its own put");
    drop(tx);

    let committed = scan(&mut store, "/ratchet/t/").await;
    assert_eq!(committed, pairs(&[("/ratchet/t/a/1", b"old"), ("/ratchet/t/a/2", b"to delete")]));
}

async fn dropping_a_transaction_rolls_it_back(settings: Settings) {
    let mut store = open(&settings).await;
    write(&mut store, "/ratchet/t/kept", b"v").await;
    let mut tx = store.begin().await.unwrap();
    tx.put("/ratchet/t/new", b"never committed").await.unwrap();
    tx.put("/ratchet/t/kept", b"overwritten").await.unwrap();
    tx.delete("/ratchet/t/kept").await.unwrap();
    drop(tx);
    assert_eq!(scan(&mut store, "/ratchet/t/").await, pairs(&[("/ratchet/t/kept", b"v")]));
}

/// Plugin processes on one node serialise on the store (the embedded store's
/// write lock, etcd's node-local lock): a second transaction begins only
/// after the first is committed, and then sees every one of its writes.
async fn a_second_transaction_on_one_node_waits_and_sees_the_whole_commit(settings: Settings) {
    let mut store = open(&settings).await;
    write(&mut store, "/ratchet/t/gone", b"deleted by the first").await;
    let mut first = store.begin().await.unwrap();
    for i in 0..50 {
        first.put(&format!("/ratchet/t/k{i:02}"), b"x").await.unwrap();
    }
    first.delete("/ratchet/t/gone").await.unwrap();

    let second_settings = settings.clone();
    let (began_tx, began) = mpsc::channel();
    let second = thread::spawn(move || {
        block_on(async {
            let mut store = open(&second_settings).await;
            let mut tx = store.begin().await.unwrap();
            began_tx.send(()).unwrap();
            tx.scan("/ratchet/t/").await.unwrap().len()
        })
    });
    assert!(began.recv_timeout(Duration::from_millis(300)).is_err(), "the second transaction waits for the first");
    first.commit().await.unwrap();
    began.recv_timeout(Duration::from_secs(5)).expect("the second transaction begins once the first committed");
    assert_eq!(second.join().unwrap(), 50, "it sees all fifty writes and the delete, not part of them");
}

/// Settings for two nodes on one etcd: state dirs of their own.
struct TwoNodes {
    etcd: Etcd,
    _dirs: [tempfile::TempDir; 2],
    settings: [Settings; 2],
}

impl TwoNodes {
    fn new() -> Self {
        let etcd = Etcd::new();
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let settings = [settings(dirs[0].path(), Some(&etcd)), settings(dirs[1].path(), Some(&etcd))];
        Self { etcd, _dirs: dirs, settings }
    }
}

fn assert_conflict(result: Result<(), StoreError>, what: &str) {
    match result {
        Err(error @ StoreError::Conflict { .. }) => assert!(error.is_transient(), "a conflict is retried (11)"),
        other => panic!("{what}: expected a conflict, got {other:?}"),
    }
}

#[test]
fn etcd_two_nodes_write_after_reading_the_same_absent_key_one_commit_wins() {
    let nodes = TwoNodes::new();
    block_on(async {
        let mut one = open(&nodes.settings[0]).await;
        let mut two = open(&nodes.settings[1]).await;
        let mut tx1 = one.begin().await.unwrap();
        let mut tx2 = two.begin().await.unwrap();
        assert_eq!(tx1.get("/ratchet/t/claim").await.unwrap(), None);
        assert_eq!(tx2.get("/ratchet/t/claim").await.unwrap(), None);
        tx1.put("/ratchet/t/claim", b"node-1").await.unwrap();
        tx1.put("/ratchet/t/by-1", b"x").await.unwrap();
        tx2.put("/ratchet/t/claim", b"node-2").await.unwrap();
        tx2.put("/ratchet/t/by-2", b"x").await.unwrap();
        tx1.commit().await.unwrap();
        assert_conflict(tx2.commit().await, "the second commit");

        let left = scan(&mut one, "/ratchet/t/").await;
        assert_eq!(
            left,
            pairs(&[("/ratchet/t/by-1", b"x"), ("/ratchet/t/claim", b"node-1")]),
            "none of node 2's writes"
        );
        // The retry (what the runtime does on 11) reads again and sees the winner.
        let mut retry = two.begin().await.unwrap();
        assert_eq!(retry.get("/ratchet/t/claim").await.unwrap().as_deref(), Some(&b"node-1"[..]));
        retry.put("/ratchet/t/by-2", b"x").await.unwrap();
        retry.commit().await.unwrap();
    });
    assert_eq!(nodes.etcd.keys("/ratchet/t/"), ["/ratchet/t/by-1", "/ratchet/t/by-2", "/ratchet/t/claim"]);
}

/// One end record as ADD writes it, for node `node`.
fn end_record(link: &str, side: Side, node: &str) -> EndRecord {
    serde_json::from_value(json!({
        "container_id": format!("c-{link}-{}", side.as_str()),
        "cni_ifname": "eth0",
        "pod": format!("default/pod-{}", side.as_str()),
        "netns": "/run/netns/none",
        "ifname": "in1",
        "host_ifname": format!("rt{}", side.as_str()),
        "host_ifindex": 1000,
        "node": node,
    }))
    .unwrap()
}

/// The pairing step of ADD on one node: read both ends, record its own, and
/// commit; on a conflict, try again (as the runtime does on 11). Returns
/// whether it found the peer already attached, i.e. completed the link.
async fn attach_end(store: &mut AnyStore, link: &str, side: Side, node: &str, start: &Barrier) -> (bool, u32) {
    let mut conflicts = 0;
    loop {
        let mut tx = store.begin().await.unwrap();
        let ends = records::ends(&mut tx, link).await.unwrap();
        if conflicts == 0 {
            // Both nodes have read before either writes: the worst case.
            start.wait();
        }
        records::put_end(&mut tx, link, side, &end_record(link, side, node)).await.unwrap();
        match tx.commit().await {
            Ok(()) => return (ends[side.other().index()].is_some(), conflicts),
            Err(StoreError::Conflict { .. }) => conflicts += 1,
            Err(other) => panic!("{node} attaching {link}/{}: {other}", side.as_str()),
        }
    }
}

#[test]
fn etcd_two_ends_attached_at_once_on_two_nodes_complete_the_link_exactly_once() {
    let nodes = TwoNodes::new();
    let links: Vec<String> = (0..20).map(|i| format!("race-{i}")).collect();
    let barriers: Arc<Vec<Barrier>> = Arc::new(links.iter().map(|_| Barrier::new(2)).collect());
    let started = Instant::now();
    let handles: Vec<_> = [(Side::A, "node-a"), (Side::B, "node-b")]
        .into_iter()
        .zip(nodes.settings.clone())
        .map(|((side, node), settings)| {
            let (links, barriers) = (links.clone(), barriers.clone());
            thread::spawn(move || {
                block_on(async {
                    let mut store = open(&settings).await;
                    let mut outcomes = Vec::new();
                    for (link, start) in links.iter().zip(barriers.iter()) {
                        outcomes.push(attach_end(&mut store, link, side, node, start).await);
                    }
                    outcomes
                })
            })
        })
        .collect();
    let outcomes: Vec<Vec<(bool, u32)>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for (i, link) in links.iter().enumerate() {
        let (a, b) = (outcomes[0][i], outcomes[1][i]);
        assert_eq!(u32::from(a.0) + u32::from(b.0), 1, "{link}: exactly one ADD completes the link: {a:?} {b:?}");
        assert_eq!(a.1 + b.1, 1, "{link}: both read before either wrote, so exactly one commit conflicted");
    }
    block_on(async {
        let mut store = open(&nodes.settings[0]).await;
        let mut tx = store.begin().await.unwrap();
        for link in &links {
            let [a, b] = records::ends(&mut tx, link).await.unwrap();
            assert_eq!(a.map(|a| a.node).as_deref(), Some("node-a"), "{link}");
            assert_eq!(b.map(|b| b.node).as_deref(), Some("node-b"), "{link}");
        }
    });
    eprintln!("20 racing pairs in {:?}", started.elapsed());
}

#[test]
fn etcd_a_key_changed_or_deleted_after_it_was_read_makes_the_commit_conflict() {
    let nodes = TwoNodes::new();
    block_on(async {
        let mut one = open(&nodes.settings[0]).await;
        let mut two = open(&nodes.settings[1]).await;
        for (case, read_by_scan, change) in
            [("get-put", false, Some(&b"v2"[..])), ("get-delete", false, None), ("scan-put", true, Some(&b"v2"[..]))]
        {
            let (prefix, key) = (format!("/ratchet/{case}/"), format!("/ratchet/{case}/k"));
            write(&mut one, &key, b"v1").await;
            let mut tx = one.begin().await.unwrap();
            if read_by_scan {
                assert_eq!(tx.scan(&prefix).await.unwrap().len(), 1);
            } else {
                assert!(tx.get(&key).await.unwrap().is_some());
            }
            let mut other = two.begin().await.unwrap();
            match change {
                Some(value) => other.put(&key, value).await.unwrap(),
                None => other.delete(&key).await.unwrap(),
            }
            other.commit().await.unwrap();
            tx.put(&format!("{prefix}decided-on-v1"), b"x").await.unwrap();
            assert_conflict(tx.commit().await, case);
            assert_eq!(read(&mut one, &format!("{prefix}decided-on-v1")).await, None, "{case}: nothing applied");
        }
    });
}

#[test]
fn etcd_writes_elsewhere_do_not_conflict() {
    let nodes = TwoNodes::new();
    block_on(async {
        let mut one = open(&nodes.settings[0]).await;
        let mut two = open(&nodes.settings[1]).await;
        write(&mut one, "/ratchet/t/mine", b"v").await;
        let mut tx = one.begin().await.unwrap();
        tx.get("/ratchet/t/mine").await.unwrap();
        tx.get("/ratchet/t/absent").await.unwrap();
        tx.scan("/ratchet/t/m").await.unwrap();
        write(&mut two, "/ratchet/u/theirs", b"w").await;
        write(&mut two, "/ratchet/t/other", b"w").await;
        tx.put("/ratchet/t/mine", b"v2").await.unwrap();
        tx.commit().await.expect("nothing this transaction read changed");
        assert_eq!(read(&mut two, "/ratchet/t/mine").await.as_deref(), Some(&b"v2"[..]));

        let mut read_only = one.begin().await.unwrap();
        read_only.get("/ratchet/t/mine").await.unwrap();
        write(&mut two, "/ratchet/t/mine", b"v3").await;
        read_only.commit().await.expect("a transaction that writes nothing has nothing to conflict");
    });
}

#[test]
fn etcd_a_key_read_twice_is_checked_against_the_first_read() {
    let nodes = TwoNodes::new();
    block_on(async {
        let mut one = open(&nodes.settings[0]).await;
        let mut two = open(&nodes.settings[1]).await;
        write(&mut one, "/ratchet/t/k", b"v1").await;
        let mut tx = one.begin().await.unwrap();
        assert_eq!(tx.get("/ratchet/t/k").await.unwrap().as_deref(), Some(&b"v1"[..]));
        write(&mut two, "/ratchet/t/k", b"v2").await;
        // A second read (DEL's release and ADD's pairing both read a link's
        // ends) sees the new value; the first decision was made on v1.
        assert_eq!(tx.get("/ratchet/t/k").await.unwrap().as_deref(), Some(&b"v2"[..]));
        tx.put("/ratchet/t/decided", b"x").await.unwrap();
        assert_conflict(tx.commit().await, "a transaction that saw two versions of one key");
    });
}

/// With etcd gone, every store call fails soon with `Unavailable`
/// (transient: 11), and a commit that could not reach etcd applied nothing.
#[test]
fn etcd_unreachable_is_unavailable_and_applies_nothing() {
    let mut nodes = TwoNodes::new();
    let started = Instant::now();
    block_on(async {
        let mut store = open(&nodes.settings[0]).await;
        let mut tx = store.begin().await.unwrap();
        assert_eq!(tx.get("/ratchet/t/k").await.unwrap(), None);
        tx.put("/ratchet/t/k", b"v").await.unwrap();
        tx.put("/ratchet/t/k2", b"v").await.unwrap();
        nodes.etcd.stop();
        let failed = Instant::now();
        match tx.commit().await {
            Err(error @ StoreError::Unavailable { .. }) => assert!(error.is_transient()),
            other => panic!("commit with etcd down: {other:?}"),
        }
        assert!(failed.elapsed() < Duration::from_secs(10), "it fails within the request timeout");

        let failed = Instant::now();
        let opened = store::open(&nodes.settings[1]).await;
        let error = match opened {
            Err(error) => error,
            Ok(mut store) => store.begin().await.unwrap().get("/ratchet/t/k").await.unwrap_err(),
        };
        assert!(matches!(error, StoreError::Unavailable { .. }), "{error:?}");
        assert!(error.to_string().contains(&nodes.etcd.endpoint()), "names the endpoint: {error}");
        assert!(failed.elapsed() < Duration::from_secs(10));

        nodes.etcd.start();
        let mut fresh = open(&nodes.settings[1]).await;
        assert_eq!(scan(&mut fresh, "/ratchet/t/").await, pairs(&[]), "the failed commit applied nothing");
        write(&mut fresh, "/ratchet/t/after", b"v").await;
        // A connection made before the outage works again too (the agent keeps one).
        assert_eq!(read(&mut store, "/ratchet/t/after").await.as_deref(), Some(&b"v"[..]));
    });
    eprintln!("outage round trip in {:?}", started.elapsed());
}

/// A scan guards its whole range: a key another node adds under the prefix
/// afterwards (a phantom) makes the commit conflict.
#[test]
fn etcd_a_key_added_under_a_scanned_prefix_makes_the_commit_conflict() {
    let nodes = TwoNodes::new();
    block_on(async {
        let mut one = open(&nodes.settings[0]).await;
        let mut two = open(&nodes.settings[1]).await;
        write(&mut one, "/ratchet/t/items/1", b"v").await;
        let mut tx = one.begin().await.unwrap();
        assert_eq!(tx.scan("/ratchet/t/items/").await.unwrap().len(), 1);
        write(&mut two, "/ratchet/t/items/2", b"v").await;
        tx.put("/ratchet/t/count", b"1").await.unwrap();
        assert_conflict(tx.commit().await, "a transaction whose scan missed a key added since");
    });
}
