//! `ratchet trace`: watch the datapath frame by frame.
//!
//! The program logs through aya-log only while its `trace` switch is on, so
//! the per-frame cost is one load and a branch when nobody is watching. The
//! switch is the node's: the trace turns it off again on SIGINT, SIGTERM and
//! SIGHUP (SIGKILL leaves it on).

use std::{path::Path, time::Duration};

use anyhow::Context;
use ratchet_common::Switches;

use crate::dataplane::Dataplane;

/// Prints aya-log records as they arrive.
struct Printer;

impl log::Log for Printer {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        println!("{}", record.args());
    }

    fn flush(&self) {}
}

pub fn run(pin_root: &Path) -> anyhow::Result<()> {
    let dataplane = Dataplane::open(pin_root)?.with_context(|| {
        format!("nothing is loaded under {}: no link was ever added on this node", pin_root.display())
    })?;
    let mut logger = aya_log::EbpfLogger::init_from_id_with_logger(
        dataplane.program_id(crate::dataplane::Program::ToPeer)?,
        Printer,
    )
    .context("opening the program's log buffer")?;
    dataplane.set_switches(Switches { trace: 1 })?;
    eprintln!("tracing every frame on {}; Ctrl-C stops", pin_root.display());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let watched = runtime.block_on(async {
        // SIGINT (Ctrl-C), and SIGTERM and SIGHUP as `timeout`, a supervisor
        // or a closed terminal send them: each ends the trace, and with it
        // the per-frame logging of the whole node.
        use tokio::signal::unix::{SignalKind, signal};
        let (mut terminate, mut hangup) = (signal(SignalKind::terminate())?, signal(SignalKind::hangup())?);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                stop = tokio::signal::ctrl_c() => break stop,
                _ = terminate.recv() => break Ok(()),
                _ = hangup.recv() => break Ok(()),
                _ = tick.tick() => logger.flush(),
            }
        }
    });
    // Turn tracing off even when a signal handler failed.
    dataplane.set_switches(Switches::default())?;
    watched.context("waiting for a signal to stop")
}
