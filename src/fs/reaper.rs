//! A mount's background work: each second it commits deferred attribute
//! changes and sweeps expired cache entries; every ten seconds it renews
//! the registrations of the files it holds open for writing (so move-to-s3
//! leaves them alone), and the reaper purges the rows of inodes that lost
//! their last link — after a grace period (another mount may still read
//! them), or at once when the mount that held them open is gone (it
//! crashed); each minute it renews its database connection pools (so the
//! connections of a burst do not stay). Cancellable; a failing node is
//! logged and retried next round.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{Fs, now_ns};

const TICK: Duration = Duration::from_secs(1);
/// Ticks between reaper rounds.
const REAP_EVERY: u32 = 10;
/// Ticks between renewals of the database connection pools (see
/// `Cluster::recycle_pools`): a connect per pool each minute.
const RECYCLE_EVERY: u32 = 60;

pub struct Reaper {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Reaper {
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

pub fn spawn(fs: Arc<Fs>) -> Reaper {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let thread = std::thread::Builder::new()
        .name("tshs-reaper".into())
        .spawn(move || {
            let mut tick = 0;
            while !s.load(Ordering::Acquire) {
                fs.commit_changes(None);
                fs.trim();
                fs.release_lingering();
                // Give freed extent buffers back to the system.
                unsafe { libc::malloc_trim(0) };
                if tick % super::handles::SWEEP_EVERY == 0 {
                    fs.renew_open_writers();
                }
                if tick % REAP_EVERY == 0 {
                    round(&fs);
                }
                if tick % RECYCLE_EVERY == RECYCLE_EVERY - 1 {
                    fs.cluster().recycle_pools();
                }
                tick += 1;
                std::thread::park_timeout(TICK);
            }
            fs.commit_changes(None);
        })
        .expect("spawn reaper");
    Reaper {
        stop,
        thread: Some(thread),
    }
}

/// One pass over every node; returns the number of inodes purged.
pub fn round(fs: &Fs) -> u64 {
    let cluster = fs.cluster();
    // This mount is alive whatever the Admin Node says (it may have missed
    // heartbeats): its own open unlinked files stay.
    let own = fs.holder.load(std::sync::atomic::Ordering::Acquire);
    let live = || -> anyhow::Result<Vec<u64>> {
        let mut ids: Vec<u64> = cluster.access_points()?.into_iter().map(|a| a.id).collect();
        ids.push(own);
        Ok(ids)
    };
    let before = now_ns() - fs.cfg.reap_grace.as_nanos() as i64;
    let mut purged = 0;
    for n in cluster.nodes().unwrap_or_default() {
        match cluster
            .shard(n.id)
            .and_then(|s| s.purge_deleted(before, &live))
        {
            Ok(k) => purged += k,
            Err(e) => log::warn!("reaper: storage node {}: {e:#}", n.id),
        }
    }
    purged
}
