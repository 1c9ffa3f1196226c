//! Host-side interface names for link ends.
//!
//! Each link end's host veth gets a name derived only from the link id and
//! the side, so every verb (and every node) computes the same name without
//! asking the store, and a retried ADD finds what an earlier one left.

use crate::topology::Side;

/// Every host veth ratchet makes starts with this, so an operator (and GC)
/// can tell them apart from other plugins' interfaces.
pub const HOST_PREFIX: &str = "rt";

/// Base32 digits (RFC 4648, lower case): interface names are case sensitive
/// but people read them, so avoid mixed case.
const DIGITS: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// `rt` + 12 base32 digits (60 bits of the link id's hash) + `a`/`b`:
/// 15 bytes, the kernel's limit. With 60 bits, a collision among even a
/// million links has odds below one in a million; ADD still refuses to take
/// over an interface that belongs to another link.
pub fn host_ifname(link_id: &str, side: Side) -> String {
    let mut hash = fnv1a64(link_id.as_bytes());
    let mut name = String::with_capacity(15);
    name.push_str(HOST_PREFIX);
    for _ in 0..12 {
        name.push(DIGITS[(hash & 31) as usize] as char);
        hash >>= 5;
    }
    name.push_str(side.as_str());
    name
}

/// Whether `name` is shaped like a name [`host_ifname`] gives.
pub fn is_host_ifname(name: &str) -> bool {
    name.len() == 15
        && name.starts_with(HOST_PREFIX)
        && name[2..14].bytes().all(|b| DIGITS.contains(&b))
        && (name.ends_with('a') || name.ends_with('b'))
}

/// FNV-1a: tiny, and stable across Rust releases (std's hashers are not).
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn is_stable_and_fits_the_kernel_limit() {
        let name = host_ifname("l1", Side::A);
        assert_eq!(name, host_ifname("l1", Side::A));
        assert_eq!(name.len(), 15);
        assert!(name.starts_with("rt") && name.ends_with('a'));
        assert!(is_host_ifname(&name) && !is_host_ifname("rtvx0") && !is_host_ifname("eth0"));
        assert_eq!(host_ifname("l1", Side::B)[..14], name[..14]);
    }

    #[test]
    fn distinct_links_get_distinct_names() {
        let names: HashSet<_> = (0..100_000).map(|i| host_ifname(&format!("link-{i}"), Side::A)).collect();
        assert_eq!(names.len(), 100_000);
    }

    #[test]
    fn known_vector() {
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c (the reference test vector).
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
