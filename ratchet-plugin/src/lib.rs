//! ratchet: a CNI plugin that gives pods point-to-point links whose frames
//! are moved by a TC eBPF program (`bpf_redirect_peer`), with no bridge.
//!
//! One binary: the CNI plugin when a runtime sets `CNI_COMMAND` ([`cni`]), an
//! operator's CLI otherwise ([`cli`]).

#![warn(missing_docs)]

pub mod agent;
pub mod cli;
pub mod cni;
pub mod config;
pub mod dataplane;
pub mod ends;
pub mod files;
pub mod install;
pub mod naming;
pub mod netlink;
pub mod pairing;
pub mod reset;
pub mod shaping;
pub mod store;
pub mod tc;
pub mod topology;
mod trace;

/// Everything ratchet creates for itself (store and journal, lock files,
/// logs, pin directories) names every pod's netns and interfaces: make it
/// root-only whatever umask the runtime started us with.
pub fn keep_files_private() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
}
