//! Impairing a link's directions: the topology's `loss`, `rate`, `delay`
//! and `jitter` keys at ADD, `ratchet link set` on a live link.
//!
//! What the frames one end sends go through is in that end's record
//! ([`EndRecord::impairment`]). Its loss is in the end's forwarding entry,
//! where the program draws a random number for lossy links only (so an
//! unimpaired one pays a compare), drops that share and counts it in the
//! `lost` map. Its rate, delay and jitter are a qdisc on the pod end
//! ([`crate::shaping`]). Each node applies its own ends: the CLI at once,
//! an ADD to the ends it makes, the agent (from the records) to the rest.

use std::collections::HashMap;

use tracing::warn;

use super::{EndsByLink, EndsError, is_live};
use crate::{
    dataplane::Dataplane,
    netlink::{Netlink, open_netns},
    shaping,
    store::{StoreError, Transaction, records, records::EndRecord},
    topology::{Impairment, Link, Side},
};

/// What the frames `side` of `link` sends go through: as `ratchet link
/// set` left it, else as the topology says.
pub async fn wanted(tx: &mut impl Transaction, link: &Link, side: Side) -> Result<Impairment, StoreError> {
    Ok(match records::impairments(tx, &link.id()).await? {
        Some(sides) => sides[side.index()],
        None => link.impairment(side),
    })
}

/// Shapes the pod end of `end` as its record says, when the end is on this
/// node. True when it was.
pub async fn apply(host: &Netlink, end: &EndRecord) -> Result<bool, EndsError> {
    if !is_live(host, end).await? {
        return Ok(false);
    }
    let netns = open_netns(&end.netns)?;
    shape_pod_end(&Netlink::in_netns(&netns, &end.netns)?, end.ifname.as_str(), &end.impairment).await?;
    Ok(true)
}

/// Shapes the interface `ifname` of the netns `in_pod` is bound to.
pub async fn shape_pod_end(in_pod: &Netlink, ifname: &str, impairment: &Impairment) -> Result<(), EndsError> {
    let pod_end = in_pod.link_by_name(ifname).await?.ok_or_else(|| {
        EndsError::Drift(format!("pod interface {ifname} is gone; its pod's next ADD makes it again"))
    })?;
    Ok(shaping::set(in_pod, (pod_end.index, ifname, pod_end.mtu), &impairment.shaping()).await?)
}

/// What an agent last shaped each of its node's ends to (by host
/// ifindex), so that a round enters only the pods whose ends changed.
#[derive(Debug, Default)]
pub struct Applied(HashMap<u32, Impairment>);

impl Applied {
    /// Brings this node's ends of `by_link` in line with their records: the
    /// first round shapes every end (removing a qdisc of ours that a missed
    /// `link set --clear` left), later ones those whose impairment changed.
    /// An end that cannot be shaped is logged and not retried until its
    /// impairment changes again. Returns how many ends it shaped.
    pub async fn sync(&mut self, host: &Netlink, node: &str, by_link: &EndsByLink) -> usize {
        let mut seen = HashMap::with_capacity(self.0.len());
        let mut changed = 0;
        for (link, ends) in by_link {
            for end in ends.iter().flatten().filter(|end| end.node == node) {
                let wanted = end.impairment.shaping();
                if self.0.get(&end.host_ifindex) != Some(&wanted) {
                    match apply(host, end).await {
                        Ok(shaped) => changed += usize::from(shaped),
                        Err(error) => warn!(%error, link, pod = %end.pod, "could not shape the link end"),
                    }
                }
                seen.insert(end.host_ifindex, wanted);
            }
        }
        self.0 = seen;
        changed
    }
}

/// One key of `ratchet link set`: a new value, or `none` to drop it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change<T> {
    /// Set the key.
    To(T),
    /// Drop the key.
    Drop,
}

impl<T: std::str::FromStr<Err = String>> std::str::FromStr for Change<T> {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "none" => Ok(Self::Drop),
            _ => text.parse().map(Self::To),
        }
    }
}

impl<T> Change<T> {
    fn apply(change: Option<Self>, key: &mut Option<T>) {
        match change {
            Some(Self::To(value)) => *key = Some(value),
            Some(Self::Drop) => *key = None,
            None => {}
        }
    }
}

/// What `ratchet link set` changes: the keys given (the rest stay), or
/// every key (`clear`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Changes {
    /// Drop every key first.
    pub clear: bool,
    /// The new loss.
    pub loss: Option<Change<crate::topology::impair::Loss>>,
    /// The new rate.
    pub rate: Option<Change<crate::topology::impair::Rate>>,
    /// The new delay.
    pub delay: Option<Change<crate::topology::impair::Delay>>,
    /// The new jitter.
    pub jitter: Option<Change<crate::topology::impair::Delay>>,
}

impl Changes {
    /// No key given and no `--clear`.
    pub fn is_empty(&self) -> bool {
        !self.clear && self.loss.is_none() && self.rate.is_none() && self.delay.is_none() && self.jitter.is_none()
    }

    /// `current` with these changes made.
    pub fn applied_to(&self, current: Impairment) -> Impairment {
        let mut new = if self.clear { Impairment::default() } else { current };
        Change::apply(self.loss, &mut new.loss);
        Change::apply(self.rate, &mut new.rate);
        Change::apply(self.delay, &mut new.delay);
        Change::apply(self.jitter, &mut new.jitter);
        new
    }
}

/// What `ratchet link set` did to one side.
#[derive(Debug)]
pub struct SideSet {
    /// The side whose frames it impairs.
    pub side: Side,
    /// Its impairment now.
    pub impairment: Impairment,
    /// Where the change takes effect.
    pub effect: Effect,
}

/// Where `ratchet link set` changed a side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// The end is on this node: changed at once.
    Here,
    /// The end is on this other node: its agent applies the change.
    ByAgentOf(String),
    /// No ADD has attached the end yet: its ADD applies the change.
    AtAdd,
}

impl std::fmt::Display for Effect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Effect::Here => f.write_str("set here"),
            Effect::ByAgentOf(node) => write!(f, "on node {node}: its agent applies it"),
            Effect::AtAdd => f.write_str("not attached yet: its ADD applies it"),
        }
    }
}

/// Records a live end's new impairment and sets its loss in the end's
/// forwarding entry (the caller shapes the pod end).
pub async fn record(
    tx: &mut impl Transaction,
    dataplane: Option<&mut Dataplane>,
    link: &str,
    side: Side,
    end: &EndRecord,
) -> Result<(), EndsError> {
    records::put_end(tx, link, side, end).await?;
    if let Some(dataplane) = dataplane {
        dataplane.set_loss(end.host_ifindex, end.impairment.loss_scaled())?;
    }
    Ok(())
}

/// `ratchet link set`: changes `sides` of `link`, records them over the
/// topology's keys, and applies them to this node's ends at once (`host`,
/// `dataplane`: this node's). An end that cannot be shaped (a delay where
/// the kernel has no netem) fails the whole change before anything is
/// recorded, and the ends shaped before it are shaped back.
pub async fn set_link(
    tx: &mut impl Transaction,
    (host, dataplane): (&Netlink, Option<&mut Dataplane>),
    link: &Link,
    sides: &[Side],
    changes: &Changes,
) -> Result<Vec<SideSet>, EndsError> {
    let id = link.id();
    let mut all = [wanted(tx, link, Side::A).await?, wanted(tx, link, Side::B).await?];
    let ends = records::ends(tx, &id).await?;
    let mut done = Vec::new();
    let mut shaped: Vec<&EndRecord> = Vec::new();
    let mut changed_here = Vec::new();
    for &side in sides {
        let new = changes.applied_to(all[side.index()]);
        let bad = |reason| EndsError::BadImpairment(format!("link {id}: side {}: {reason}", side.as_str()));
        new.validate().map_err(bad)?;
        all[side.index()] = new;
        let mut effect = Effect::AtAdd;
        if let Some(end) = &ends[side.index()] {
            let changed = EndRecord { impairment: new, ..end.clone() };
            match apply(host, &changed).await {
                Ok(true) => effect = Effect::Here,
                Ok(false) => effect = Effect::ByAgentOf(end.node.clone()),
                Err(error) => {
                    for end in shaped {
                        let _ = apply(host, end).await;
                    }
                    return Err(match error {
                        EndsError::Shaping(no_netem @ shaping::ShapingError::NoNetem { .. }) => {
                            bad(no_netem.to_string())
                        }
                        other => other,
                    });
                }
            }
            shaped.push(end);
            records::put_end(tx, &id, side, &changed).await?;
            if effect == Effect::Here {
                changed_here.push(changed);
            }
        }
        done.push(SideSet { side, impairment: new, effect });
    }
    // The losses last, once every side is shaped: a side that fails leaves
    // the forwarding entries as they were.
    if let Some(dataplane) = dataplane {
        for end in changed_here {
            dataplane.set_loss(end.host_ifindex, end.impairment.loss_scaled())?;
        }
    }
    records::set_impairments(tx, &id, &all).await?;
    Ok(done)
}
