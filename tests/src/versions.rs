//! Running one test body many ways: once per CNI version ratchet speaks
//! ([`VERSIONS`], [`per_version!`](crate::per_version), with what each
//! version has: [`is_legacy`], [`has_check`]), and once per store backend
//! ([`on_each_store!`](crate::on_each_store)).

/// Every version ratchet speaks, oldest first.
pub const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Whether a version's ADD result has the 0.3.x/0.4.0 layout (`ips[].version`).
pub fn is_legacy(version: &str) -> bool {
    version.starts_with("0.")
}

/// Whether a config of this version may ask for CHECK (0.4.0 and later).
pub fn has_check(version: &str) -> bool {
    version != "0.3.0" && version != "0.3.1"
}

/// Runs each named test body, a `fn name(node: &Node)` of the calling file,
/// once per store backend: as `name::embedded` on a node with the embedded
/// store, and as `name::etcd` on a node whose store is an etcd of that test's
/// own. The same assertions hold for both.
#[macro_export]
macro_rules! on_each_store {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn embedded() {
                super::$name(&$crate::Node::new());
            }

            #[test]
            fn etcd() {
                let etcd = $crate::Etcd::new();
                let node = $crate::Node::with_etcd(&etcd);
                super::$name(&node);
                assert!(!node.has_embedded_store(), "a node configured for etcd never falls back to the embedded store");
            }
        }
    )*};
}

/// For each CNI version ratchet speaks, a module (`v0_3_0` ... `v1_1_0`)
/// with one `#[test]` per named function, called as `f(version, index)`:
/// `index` (0 to 4) tells the versions apart, e.g. to give each its own
/// subnet, since the five run in parallel.
#[macro_export]
macro_rules! per_version {
    ($($test:ident),* $(,)?) => {
        $crate::per_version!(@versions [$($test),*]
            v0_3_0 "0.3.0" 0, v0_3_1 "0.3.1" 1, v0_4_0 "0.4.0" 2, v1_0_0 "1.0.0" 3, v1_1_0 "1.1.0" 4);
    };
    (@versions $tests:tt $($module:ident $version:literal $index:literal),*) => {$(
        mod $module {
            $crate::per_version!(@tests $tests $version $index);
        }
    )*};
    (@tests [$($test:ident),*] $version:literal $index:literal) => {$(
        #[test]
        fn $test() {
            super::$test($version, $index);
        }
    )*};
}
