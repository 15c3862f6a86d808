//! Stopping cleanly: the flag the maintenance tasks check between steps, a
//! sleep that ends as soon as the flag is raised, and SIGINT/SIGTERM raising
//! it. A task stopped this way has lost nothing: the next run resumes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use anyhow::Result;
use nix::sys::signal::{SigSet, Signal};

/// Raised once; never lowered.
#[derive(Default)]
pub struct Stop {
    raised: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Stop {
    pub fn new() -> Arc<Stop> {
        Arc::new(Stop::default())
    }

    /// The flag the core's tasks poll.
    pub fn flag(&self) -> &AtomicBool {
        &self.raised
    }

    pub fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }

    pub fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        // Taking the lock orders this with a sleeper's check of the flag.
        let _g = self.lock.lock().unwrap();
        self.wake.notify_all();
    }

    /// Sleeps until `until` or until the flag is raised; true if raised.
    pub fn sleep_until(&self, until: Instant) -> bool {
        let mut g = self.lock.lock().unwrap();
        loop {
            if self.is_raised() {
                return true;
            }
            let now = Instant::now();
            if now >= until {
                return false;
            }
            g = self.wake.wait_timeout(g, until - now).unwrap().0;
        }
    }
}

/// The first SIGINT or SIGTERM raises `stop` (finish the current step, then
/// exit); a second one exits at once. Call before starting other threads:
/// they inherit the blocked signals, so only the waiting thread sees them.
pub fn on_signals(stop: Arc<Stop>) -> Result<()> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block()?;
    std::thread::Builder::new()
        .name("tshs-signals".into())
        .spawn(move || {
            if let Ok(sig) = set.wait() {
                log::info!("{sig:?}: stopping after the current step");
                stop.raise();
            }
            if let Ok(sig) = set.wait() {
                log::warn!("{sig:?} again: exiting now");
                std::process::exit(1);
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn raise_ends_a_sleep() {
        let stop = Stop::new();
        let s = stop.clone();
        let t = std::thread::spawn(move || s.sleep_until(Instant::now() + Duration::from_secs(60)));
        std::thread::sleep(Duration::from_millis(50));
        stop.raise();
        assert!(t.join().unwrap());
        assert!(!Stop::new().sleep_until(Instant::now() + Duration::from_millis(10)));
    }
}
