//! Deferred veth deletion: DEL's slowest step taken off the runtime's clock.
//!
//! Deleting a veth waits for an RCU grace period inside the kernel (about
//! 20 ms here, two thirds of a synchronous DEL). Once DEL has unwired an end,
//! its veth carries nothing: the peer's map entry is gone and so is the
//! record. So DEL hands the deletion to a detached child (this binary again,
//! `ratchet reap`, stdio on /dev/null so the runtime does not wait for it)
//! and returns. The child deletes each veth by ifindex, and only while it
//! still has the name DEL saw, so a veth a new ADD made under the same name
//! is never touched. If the child cannot be started, DEL deletes in place.
//!
//! A veth whose deletion has not happened yet is harmless and never leaked:
//! no record names it, a new ADD of the same end deletes it first (see
//! `attach`), and it dies with its pod's netns anyway.

use std::{
    os::unix::process::CommandExt,
    process::{Command, Stdio},
    str::FromStr,
};

use crate::netlink::{Netlink, NetlinkError};

/// The hidden CLI subcommand the child runs.
pub const SUBCOMMAND: &str = "reap";

/// A host veth to delete: its ifindex and the name it had when released.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Doomed {
    /// The veth's ifindex, as its end was released.
    pub index: u32,
    /// Its name then: the veth is deleted only while it still has it, so a
    /// veth a new ADD made under that name is never touched.
    pub name: String,
}

impl std::fmt::Display for Doomed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.index, self.name)
    }
}

impl FromStr for Doomed {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (index, name) = text.split_once(':').ok_or_else(|| format!("{text:?} is not IFINDEX:NAME"))?;
        let index = index.parse().map_err(|e| format!("{index:?} is not an ifindex: {e}"))?;
        Ok(Self { index, name: name.into() })
    }
}

/// Deletes the veths in a detached child and returns at once; deletes them
/// here when the child cannot be started.
pub async fn defer(host: &Netlink, doomed: Vec<Doomed>) -> Result<(), NetlinkError> {
    if doomed.is_empty() {
        return Ok(());
    }
    let spawned = Command::new("/proc/self/exe")
        .arg(SUBCOMMAND)
        .args(doomed.iter().map(Doomed::to_string))
        // A CLI run, not a CNI one; and no pipe the runtime waits on.
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
    match spawned {
        Ok(_child) => Ok(()),
        Err(_) => delete_all(host, &doomed).await,
    }
}

/// What the child does: delete each veth that still has its name.
pub async fn delete_all(host: &Netlink, doomed: &[Doomed]) -> Result<(), NetlinkError> {
    for veth in doomed {
        if host.link_by_name(&veth.name).await?.is_some_and(|link| link.index == veth.index) {
            host.delete_link(veth.index).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doomed_round_trips_through_its_argument() {
        let doomed = Doomed { index: 42, name: "rtabcdefghijkla".into() };
        assert_eq!(doomed.to_string().parse::<Doomed>(), Ok(doomed));
        assert!("rtabc".parse::<Doomed>().is_err());
        assert!("x:rtabc".parse::<Doomed>().is_err());
    }
}
