//! Group commit of `O_APPEND` writes: one transaction, one commit, for the
//! appends of many threads to files of one Storage Node.
//!
//! Each node has a queue. An append that finds no transaction in flight for
//! its node runs at once, alone (a lone writer waits for nobody); appends
//! that arrive while one is in flight wait, and when it ends, one of them
//! takes every waiting append into the next transaction (the way MariaDB's
//! own binlog group commit works). In that transaction each append lands
//! at its file's end as the database has it, in arrival order, each one
//! whole and contiguous, so appends from other mounts stay exactly once. A
//! write returns after the commit that carries it, so an `fsync` after it
//! has nothing left to wait for.
//!
//! A batch is first sent as one request, one round trip
//! ([`extents::append_in_one_trip`]). If the server refuses it (an append
//! to a file held in the object store or growing too big, a deadlock), the
//! batch runs as a transaction of separate statements
//! ([`extents::append_batch`], which brings files back from elsewhere and
//! answers each append), and if that is refused as a whole (a space of it
//! fenced by a move), append by append, each on its own route: one bad
//! append fails only itself. If the answer to a batch is lost, the batch's
//! operation id tells whether it landed (all of it) or not (run again).

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use super::super::cache::DataCache;
use super::super::error::{Error, FsResult, failed};
use super::super::now_ns;
use super::{MAX_FILE_SIZE, OpenInode};
use crate::db::{Failed, OpId};
use crate::shard::extents::{self, AppendReq, OneTrip};
use crate::shard::{ShardError, is_fenced};

/// Bytes of appends gathered into one transaction at most (the rest wait
/// for the next). The data travels as hex, so a full batch is a statement
/// of about 2 MiB, below even an old server's 4 MiB `max_allowed_packet`
/// (one append of up to 1 MiB, the space server's limit, always fits).
const BATCH_BYTES: usize = 1 << 20;

/// Test hook: while the file this names exists, batches wait before they
/// run, so a test can finish a move between an append's queueing and its
/// batch.
const HOLD_ENV: &str = "TSHS_TEST_APPEND_HOLD";

fn test_hold() {
    static HOLD: OnceLock<Option<std::path::PathBuf>> = OnceLock::new();
    let hold = HOLD.get_or_init(|| std::env::var_os(HOLD_ENV).map(Into::into));
    while hold.as_ref().is_some_and(|p| p.exists()) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The group commit queues of a mount, one per Storage Node.
#[derive(Default)]
pub struct AppendQueues(Mutex<HashMap<u32, Arc<Queue>>>);

#[derive(Default)]
struct Queue {
    state: Mutex<QueueState>,
    turn: Condvar,
}

#[derive(Default)]
struct QueueState {
    /// A transaction of this queue is in flight.
    busy: bool,
    waiting: Vec<Arc<Append>>,
}

/// One append waiting for, or carried by, a transaction.
struct Append {
    node: Arc<OpenInode>,
    data: Vec<u8>,
    /// Where it landed, or why not; set by whoever ran its transaction.
    result: Mutex<Option<FsResult<Option<u64>>>>,
}

impl AppendQueues {
    /// Appends `data` to `node`'s file at the database's end of file and
    /// returns the offset it landed at, once committed (`None` if it landed
    /// but the answer saying where was lost). This mount's view
    /// of the file (size, cache) is updated by whoever ran the transaction,
    /// in the order the appends landed.
    pub fn append(
        &self,
        cache: &DataCache,
        node: &Arc<OpenInode>,
        data: &[u8],
    ) -> FsResult<Option<u64>> {
        // The queue only: the batch asks again under a pin (see `run`).
        // Placement that must be confirmed goes to queue 0, whose appends
        // run one by one on their routes (which confirm it).
        let id = node.shard.node_now().map_err(Error::from)?.unwrap_or(0);
        let queue = self.0.lock().unwrap().entry(id).or_default().clone();
        let me = Arc::new(Append {
            node: node.clone(),
            data: data.to_vec(),
            result: Mutex::default(),
        });
        let mut st = queue.state.lock().unwrap();
        st.waiting.push(me.clone());
        loop {
            if let Some(r) = me.result.lock().unwrap().take() {
                return r;
            }
            if !st.busy {
                // Lead the next transaction: everything waiting, in order.
                st.busy = true;
                let batch = take_batch(&mut st.waiting);
                drop(st);
                let leading = Leading {
                    queue: &queue,
                    batch: &batch,
                };
                run(cache, id, &batch);
                drop(leading);
                st = queue.state.lock().unwrap();
                continue;
            }
            st = queue.turn.wait(st).unwrap();
        }
    }
}

/// A leader's turn: when it ends, also by a panic, the next may lead, and
/// an append it did not answer fails instead of waiting forever.
struct Leading<'a> {
    queue: &'a Queue,
    batch: &'a [Arc<Append>],
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        // Only a panic leaves appends unanswered (a follower may already
        // have taken its answer, leaving its slot empty).
        for a in self.batch.iter().filter(|_| std::thread::panicking()) {
            let mut r = a.result.lock().unwrap_or_else(|e| e.into_inner());
            if r.is_none() {
                *r = Some(Err(failed(
                    "an append's group commit ended without an answer",
                )));
            }
        }
        let mut st = self.queue.state.lock().unwrap_or_else(|e| e.into_inner());
        st.busy = false;
        self.queue.turn.notify_all();
    }
}

/// The first waiting appends, up to [`BATCH_BYTES`] (at least one).
fn take_batch(waiting: &mut Vec<Arc<Append>>) -> Vec<Arc<Append>> {
    let mut bytes = 0;
    let n = waiting
        .iter()
        .take_while(|a| {
            bytes += a.data.len();
            bytes <= BATCH_BYTES
        })
        .count()
        .max(1);
    waiting.drain(..n).collect()
}

/// Runs one batch on node `id` and hands each append its result.
///
/// The node each append queued for was asked before the batch formed: a
/// move may have ended since, its rows already gone from `id`. So the
/// placement is pinned first and every append's node asked again under
/// the pin; an append whose space left `id` or whose placement must be
/// confirmed (this process cannot heartbeat), and a batch a move's fence
/// refused, go one by one on their own routes after the pin is dropped
/// (those wait for the cut-over, which must not wait for this pin).
fn run(cache: &DataCache, id: u32, batch: &[Arc<Append>]) {
    test_hold();
    let pinned = batch[0].node.shard.pin();
    let (here, mut alone): (Vec<_>, Vec<_>) = batch
        .iter()
        .cloned()
        .partition(|a| id != 0 && a.node.shard.node_now().is_ok_and(|n| n == Some(id)));
    if !here.is_empty() {
        alone.extend(run_on(cache, id, &here));
    }
    drop(pinned);
    one_by_one(cache, &alone);
}

/// Runs a batch on node `id` (under a pin); returns the appends left to
/// run one by one (all of them, if a move's fence refused the batch).
fn run_on(cache: &DataCache, id: u32, batch: &[Arc<Append>]) -> Vec<Arc<Append>> {
    let route = &batch[0].node.shard;
    let reqs: Vec<AppendReq<'_>> = batch
        .iter()
        .map(|a| AppendReq {
            space: a.node.space,
            ino: a.node.ino,
            data: &a.data,
        })
        .collect();
    let now = now_ns();
    // One round trip; what it leaves (or all of it, if it was refused or
    // surely not applied) the slower way.
    let op = OpId::next();
    match route.one_trip_on_node(id, |c, lost| {
        extents::append_in_one_trip(c, lost, &op, &reqs, now, MAX_FILE_SIZE)
    }) {
        Some(OneTrip::Landed(landed)) => {
            for (a, off) in batch.iter().zip(landed) {
                a.node.appended(cache, off, &a.data, now);
                *a.result.lock().unwrap() = Some(Ok(Some(off.0)));
            }
            return Vec::new();
        }
        Some(OneTrip::Unknown(why)) => match route.was_applied(id, &op) {
            // Never run twice what landed: it did, each append once, only
            // where is not known (this mount reads the file's end afresh).
            Ok(true) => {
                for a in batch {
                    a.node.lost_track();
                    *a.result.lock().unwrap() = Some(Ok(None));
                }
                return Vec::new();
            }
            Ok(false) => {} // not applied: run it again below
            Err(e) => {
                let e = failed(format!(
                    "storage node {id}: the answer to {} appends was lost and whether they landed is unknown ({why}; asking: {e})",
                    batch.len()
                ));
                for a in batch {
                    a.node.lost_track();
                    *a.result.lock().unwrap() = Some(Err(e.clone()));
                }
                return Vec::new();
            }
        },
        Some(OneTrip::Refused) | None => {}
    }
    let r = route.tx_on_node(id, |tx| {
        extents::append_batch(tx, route.cluster(), &reqs, now, MAX_FILE_SIZE)
    });
    let results: Vec<FsResult<extents::Landed>> = match r {
        Ok(results) => results
            .into_iter()
            .map(|r| r.map_err(Error::from))
            .collect(),
        // The node failed it (after the database layer's own retries):
        // it fails every append of the batch, logged once.
        Err(Failed::Tx(e)) if !is_fenced(&e) => {
            // Perhaps a commit whose answer was lost: this mount's view of
            // the files may be behind.
            for a in batch {
                a.node.lost_track();
            }
            let e = Error::from(ShardError::Tx {
                node: id,
                what: "append",
                source: Box::new(e),
            });
            batch.iter().map(|_| Err(e.clone())).collect()
        }
        // Refused as a whole: each on its own, on its own route.
        Err(_) => return batch.to_vec(),
    };
    for (a, r) in batch.iter().zip(results) {
        if let Ok(off) = r {
            a.node.appended(cache, off, &a.data, now);
        }
        *a.result.lock().unwrap() = Some(r.map(|(off, _)| Some(off)));
    }
    Vec::new()
}

/// Runs each append in a transaction of its own, on its own route.
fn one_by_one(cache: &DataCache, appends: &[Arc<Append>]) {
    for a in appends {
        let now = now_ns();
        let r = extents::append(
            &a.node.shard,
            a.node.shard.cluster(),
            (a.node.space, a.node.ino),
            &a.data,
            now,
            MAX_FILE_SIZE,
        )
        .map_err(Error::from);
        if let Ok(off) = r {
            a.node.appended(cache, off, &a.data, now);
        }
        *a.result.lock().unwrap() = Some(r.map(|(off, _)| Some(off)));
    }
}
