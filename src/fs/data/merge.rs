//! Joining the pieces that appends leave in a slot (see
//! [`crate::shard::extents`]) into one row, off the writers' path: a slot
//! that filled up at once, the last slot of a file once it has not been
//! appended to for [`MERGE_IDLE`] (a log still growing would only be joined
//! again and again). Pieces left unjoined (a mount that stopped) cost reads
//! a few more rows, nothing else.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::cluster::Route;
use crate::shard::extents;

/// How long a file's last slot must go without appends before it is joined.
const MERGE_IDLE: Duration = Duration::from_secs(5);
/// Files whose last slot waits to be joined, at most: beyond, the oldest
/// are joined at once.
const MAX_TAILS: usize = 10_000;
/// Slots waiting in the queue to the merge thread, at most.
const QUEUE: usize = 65_536;

/// A slot of a file that holds pieces.
pub struct Pieces {
    pub route: Route,
    pub space: u32,
    pub ino: u64,
    pub slot: u64,
    /// The file has grown past the slot: it will not change by appends.
    pub complete: bool,
}

/// Hands slots with pieces to the merge thread.
#[derive(Clone)]
pub struct Merger(Sender<Pieces>);

impl Merger {
    pub fn start() -> Merger {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        std::thread::Builder::new()
            .name("tshs-merge".into())
            .spawn(move || work(&rx))
            .expect("spawn merge thread");
        Merger(tx)
    }

    /// Never waits: with the queue full (the node slow or away), the
    /// slot stays in pieces, which costs reads a few rows, nothing else.
    pub fn pieces(&self, p: Pieces) {
        let _ = self.0.try_send(p);
    }
}

fn work(rx: &Receiver<Pieces>) {
    let mut tails: HashMap<(u32, u64), (Pieces, Instant)> = HashMap::new();
    let mut swept = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(p) if p.complete => merge(&p),
            Ok(p) => {
                tails.insert((p.space, p.ino), (p, Instant::now()));
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if swept.elapsed() >= Duration::from_secs(1) || tails.len() > MAX_TAILS {
            swept = Instant::now();
            let mut idle: Vec<(u32, u64)> = tails
                .iter()
                .filter(|(_, (_, at))| at.elapsed() >= MERGE_IDLE)
                .map(|(k, _)| *k)
                .collect();
            if tails.len() > MAX_TAILS {
                let mut by_age: Vec<_> = tails.iter().map(|(k, (_, at))| (*at, *k)).collect();
                by_age.sort_unstable();
                idle.extend(by_age.iter().take(tails.len() - MAX_TAILS).map(|e| e.1));
            }
            for k in idle {
                if let Some((p, _)) = tails.remove(&k) {
                    merge(&p);
                }
            }
        }
    }
}

fn merge(p: &Pieces) {
    if let Err(e) = extents::merge(&p.route, p.space, p.ino, p.slot) {
        // Harmless: reads assemble the pieces; a later append tries again.
        log::debug!(
            "space {} inode {}: joining the pieces at {}: {e}",
            p.space,
            p.ino,
            p.slot
        );
    }
}
