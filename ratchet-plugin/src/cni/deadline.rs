//! Every verb answers within a deadline, whatever hangs underneath it (a
//! runtime that never closes stdin, a store that stops answering, a delegated
//! plugin that never exits): a runtime that gets no answer holds the pod's
//! sandbox forever.
//!
//! A watchdog thread waits for the deadline; if the verb has not answered by
//! then, it prints the CNI error itself, kills the delegated plugin that is
//! running, if any, and exits. What the verb had made by
//! then is what a verb killed by the runtime leaves: DEL, GC and the next
//! ADD sweep it (see `orphans`), and the store commits all or nothing.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicI32, Ordering},
    },
    time::{Duration, Instant},
};

use rscni_types::version::SpecVersion;

use super::error::CniError;

struct Watch {
    after: Duration,
    deadline: Instant,
    version: SpecVersion,
    answered: bool,
}

static WATCH: Mutex<Option<Watch>> = Mutex::new(None);

/// The pid of the delegated plugin running now (0: none).
static DELEGATE: AtomicI32 = AtomicI32::new(0);

/// Starts the watchdog: the verb must answer within `after` from now.
pub fn arm(after: Duration, version: SpecVersion) {
    *lock() = Some(Watch { after, deadline: Instant::now() + after, version, answered: false });
    std::thread::spawn(watch);
}

/// Moves the deadline to `after` from `started`, and the version the error
/// would carry, once the config has said both.
pub fn adjust(started: Instant, after: Duration, version: SpecVersion) {
    if let Some(watch) = lock().as_mut() {
        watch.after = after;
        watch.deadline = started + after;
        watch.version = version;
    }
}

/// Prints the verb's answer unless the watchdog already answered; the
/// watchdog never answers after this.
pub fn answer(print: impl FnOnce()) {
    let mut watch = lock();
    if let Some(watch) = watch.as_mut() {
        watch.answered = true;
    }
    print();
}

/// Records the pid of a delegated plugin while it runs, so the watchdog
/// can kill it rather than leave it hanging after ratchet has answered.
pub fn delegate_running(pid: Option<u32>) {
    DELEGATE.store(pid.and_then(|pid| i32::try_from(pid).ok()).unwrap_or(0), Ordering::SeqCst);
}

fn lock() -> std::sync::MutexGuard<'static, Option<Watch>> {
    WATCH.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn watch() {
    loop {
        let watch = lock();
        let Some(state) = watch.as_ref() else { return };
        if state.answered {
            return;
        }
        let now = Instant::now();
        if now >= state.deadline {
            let delegate = DELEGATE.load(Ordering::SeqCst);
            if delegate > 0 {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(delegate), nix::sys::signal::SIGKILL);
            }
            let error = CniError::DeadlineExceeded { seconds: state.after.as_secs_f64() };
            super::print_json(&rscni_types::types::ErrorResult::new(state.version, &error.to_wire()));
            // Holding the lock: the verb can no longer print its own answer.
            std::process::exit(1);
        }
        let left = state.deadline - now;
        drop(watch);
        std::thread::sleep(left.min(Duration::from_millis(200)));
    }
}
