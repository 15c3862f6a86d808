//! Group commit of `O_APPEND` writes: one transaction, one commit, for the
//! appends of many threads to files of one Storage Node.
//!
//! Each node has a queue. An append that finds no transaction in flight for
//! its node runs at once, alone (a lone writer waits for nobody); appends
//! that arrive while one is in flight wait, and when it ends, one of them
//! takes every waiting append into the next transaction (the way MariaDB's
//! own binlog group commit works). In that transaction each append lands
//! at its file's end as the database has it, in arrival order, each one
//! whole and contiguous, so appends from other mounts stay exactly once.
//!
//! An append either waits for the commit that carries it ([`AppendQueues::
//! append`]), or is queued behind its write ([`AppendQueues::submit`]): the
//! write returns at once and a later `fsync`, close or read of the bytes
//! waits ([`Append::wait`]). The kernel holds a FUSE file's lock through
//! each `O_APPEND` write and each `fsync`, so with writes that wait, one
//! log's writers commit one at a time; queued behind their writes, the
//! appends of all of them meet in the next transaction. Each queue has a
//! committer thread that runs what is queued when nobody waits for it.
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
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
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

/// Test hook: while the file this names exists, batches wait, so a test
/// can finish a move between an append's queueing and its batch. Empty, it
/// holds them before they run; holding `landed`, after their commit and
/// before this mount records it; holding `lose`, a batch that landed is
/// taken as one whose answer was lost; holding `lose rewrite`, so is a
/// truncate or fallocate of an open file that landed.
const HOLD_ENV: &str = "TSHS_TEST_APPEND_HOLD";

/// What the test hook's file holds, if there is one.
pub(super) fn test_hook() -> Option<Vec<u8>> {
    static HOLD: OnceLock<Option<std::path::PathBuf>> = OnceLock::new();
    let hold = HOLD.get_or_init(|| std::env::var_os(HOLD_ENV).map(Into::into));
    hold.as_ref().and_then(|p| std::fs::read(p).ok())
}

fn test_hold(stage: &[u8]) {
    while test_hook().is_some_and(|held| held == stage) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The group commit queues of a mount, one per Storage Node.
pub struct AppendQueues {
    cache: Arc<DataCache>,
    queues: Mutex<HashMap<u32, Arc<Queue>>>,
    /// Bytes of appends queued behind their writes, in all queues.
    behind_bytes: Arc<AtomicUsize>,
    /// [`AppendQueues::drain`] ran.
    drained: AtomicBool,
}

/// Bytes of appends queued behind their writes in a mount at most: past
/// this, an append waits for its commit, so memory stays bounded however
/// many files are appended to while a move's fence or an outage holds the
/// commits.
const BEHIND_TOTAL: usize = 32 << 20;

struct Queue {
    /// The node (0: appends whose placement must be confirmed, which run
    /// one by one on their routes).
    id: u32,
    cache: Arc<DataCache>,
    behind_bytes: Arc<AtomicUsize>,
    state: Mutex<QueueState>,
    /// Signalled when a transaction ends and when an append is queued
    /// behind its write to an idle queue.
    turn: Condvar,
}

#[derive(Default)]
struct QueueState {
    /// A transaction of this queue is in flight.
    busy: bool,
    waiting: Vec<Arc<Append>>,
    /// Transactions ended so far.
    batches: u64,
    /// The mount is going: the committer thread ends.
    closed: bool,
}

/// One append waiting for, or carried by, a transaction.
pub struct Append {
    queue: Arc<Queue>,
    node: Arc<OpenInode>,
    data: Vec<u8>,
    /// Queued behind its write, which returned (see [`OpenInode::append`]).
    behind: bool,
    /// Where it landed, or why not; set by whoever ran its transaction.
    result: Mutex<Option<FsResult<Option<u64>>>>,
}

/// How long an append queued behind its write to an idle queue is left
/// for an `fsync` to carry (which then waits for no thread to wake)
/// before the committer runs it.
const BEHIND_GRACE: Duration = Duration::from_millis(1);

impl AppendQueues {
    pub fn new(cache: Arc<DataCache>) -> AppendQueues {
        AppendQueues {
            cache,
            queues: Mutex::default(),
            behind_bytes: Arc::default(),
            drained: AtomicBool::new(false),
        }
    }

    /// Whether an append of `len` bytes may be queued behind its write
    /// (see [`BEHIND_TOTAL`]).
    pub fn has_room(&self, len: usize) -> bool {
        self.behind_bytes.load(Ordering::Acquire) + len <= BEHIND_TOTAL
    }

    /// Appends `data` to `node`'s file at the database's end of file and
    /// returns the offset it landed at, once committed (`None` if it landed
    /// but the answer saying where was lost). This mount's view
    /// of the file (size, cache) is updated by whoever ran the transaction,
    /// in the order the appends landed.
    pub fn append(&self, node: &Arc<OpenInode>, data: &[u8]) -> FsResult<Option<u64>> {
        let id = self.queue_of(node)?;
        self.queue(node, id, data, false).wait()
    }

    /// The queue `node`'s appends go to now: its node's. The batch asks
    /// again under a pin (see `run`). Placement that must be confirmed goes
    /// to queue 0, whose appends run one by one on their routes (which
    /// confirm it).
    pub fn queue_of(&self, node: &OpenInode) -> FsResult<u32> {
        Ok(node.shard.node_now().map_err(Error::from)?.unwrap_or(0))
    }

    /// Queues `data` to be appended to `node`'s file in queue `id` behind a
    /// write that returns now; [`Append::wait`] waits for its commit.
    pub fn submit(&self, node: &Arc<OpenInode>, id: u32, data: &[u8]) -> Arc<Append> {
        self.queue(node, id, data, true)
    }

    fn queue(&self, node: &Arc<OpenInode>, id: u32, data: &[u8], behind: bool) -> Arc<Append> {
        let queue = self
            .queues
            .lock()
            .unwrap()
            .entry(id)
            .or_insert_with(|| Queue::start(id, self.cache.clone(), self.behind_bytes.clone()))
            .clone();
        let me = Arc::new(Append {
            queue: queue.clone(),
            node: node.clone(),
            data: data.to_vec(),
            behind,
            result: Mutex::default(),
        });
        if behind {
            self.behind_bytes.fetch_add(data.len(), Ordering::AcqRel);
        }
        let mut st = queue.state.lock().unwrap();
        st.waiting.push(me.clone());
        if behind && !st.busy {
            queue.turn.notify_all();
        }
        me
    }

    /// The mount is going: the committers run what is still queued, for
    /// [`DRAIN_WAIT`] at most, and end; what is left then is logged, never
    /// dropped silently.
    pub fn drain(&self) {
        if self.drained.swap(true, Ordering::AcqRel) {
            return;
        }
        let deadline = std::time::Instant::now() + DRAIN_WAIT;
        for q in self.queues.lock().unwrap().values() {
            let mut st = q.state.lock().unwrap_or_else(|e| e.into_inner());
            st.closed = true;
            q.turn.notify_all();
            while st.busy || !st.waiting.is_empty() {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    log::error!(
                        "unmounting: {} append(s) queued for storage node {} did not land",
                        st.waiting.len() + usize::from(st.busy),
                        q.id
                    );
                    break;
                }
                st = q
                    .turn
                    .wait_timeout(st, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
    }
}

/// How long an unmount waits for the appends still queued behind their
/// writes (a close waits a second at most, so some may be left).
const DRAIN_WAIT: Duration = Duration::from_secs(30);

impl Drop for AppendQueues {
    fn drop(&mut self) {
        self.drain();
    }
}

impl Queue {
    fn start(id: u32, cache: Arc<DataCache>, behind_bytes: Arc<AtomicUsize>) -> Arc<Queue> {
        let q = Arc::new(Queue {
            id,
            cache,
            behind_bytes,
            state: Mutex::default(),
            turn: Condvar::new(),
        });
        let committer = q.clone();
        // Restarted after a panic: appends queued behind their writes that
        // nobody waits for would otherwise never land.
        std::thread::Builder::new()
            .name(format!("tshs-append-{id}"))
            .spawn(move || {
                let run = || committer.commit_behind();
                while std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).is_err() {
                    log::error!("the append committer of queue {id} panicked: restarting it");
                    committer.state.clear_poison();
                }
            })
            .expect("starting an append committer thread");
        q
    }

    /// The committer thread: runs appends queued behind their writes that
    /// nobody waits for. Right after a transaction it takes what waits at
    /// once; an append queued to an idle queue it leaves [`BEHIND_GRACE`]
    /// to the `fsync` that usually follows.
    fn commit_behind(&self) {
        let mut st = self.state.lock().unwrap();
        // Transactions ended when it last slept, and whether it gave the
        // appends of an idle queue their moment.
        let (mut seen, mut graced) = (0, false);
        loop {
            // Closed: what waits still runs (see `AppendQueues::drop`).
            if st.closed && !st.busy && st.waiting.is_empty() {
                return;
            }
            if st.busy || st.waiting.is_empty() {
                (seen, graced) = (st.batches, false);
                st = self.turn.wait(st).unwrap();
                continue;
            }
            if st.batches == seen && !graced && !st.closed {
                st = self.turn.wait_timeout(st, BEHIND_GRACE).unwrap().0;
                graced = true;
                continue;
            }
            st = self.lead(st);
        }
    }

    /// Wakes whoever waits for an answer already given. The end of a
    /// transaction wakes them anyway; this is for answers given before it
    /// ends: a close waiting for one need not wait for the rest of the
    /// batch, which may wait at a move's fence.
    fn wake(&self) {
        let _st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.turn.notify_all();
    }

    /// Runs the next transaction: everything waiting, in order.
    fn lead<'a>(&'a self, mut st: MutexGuard<'a, QueueState>) -> MutexGuard<'a, QueueState> {
        st.busy = true;
        let batch = take_batch(&mut st.waiting);
        drop(st);
        let leading = Leading {
            queue: self,
            batch: &batch,
        };
        run(&self.cache, self.id, &batch);
        drop(leading);
        self.state.lock().unwrap()
    }
}

impl Append {
    /// Waits for the commit that carries this append (running it, if no
    /// transaction of its queue is in flight) and answers where it landed.
    pub fn wait(&self) -> FsResult<Option<u64>> {
        let q = &self.queue;
        let mut st = q.state.lock().unwrap();
        loop {
            if let Some(r) = self.result.lock().unwrap().as_ref() {
                return r.clone();
            }
            st = if st.busy {
                q.turn.wait(st).unwrap()
            } else {
                q.lead(st)
            };
        }
    }

    /// Like [`Append::wait`] until `deadline` at most (`None` then), and
    /// never leading a transaction: the committer thread runs it.
    pub fn wait_until(&self, deadline: std::time::Instant) -> Option<FsResult<Option<u64>>> {
        let q = &self.queue;
        let mut st = q.state.lock().unwrap();
        loop {
            if let Some(r) = self.result.lock().unwrap().as_ref() {
                return Some(r.clone());
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            st = q.turn.wait_timeout(st, left).unwrap().0;
        }
    }

    /// Where it landed, or why not, once its transaction ended.
    pub fn outcome(&self) -> Option<FsResult<Option<u64>>> {
        self.result.lock().unwrap().clone()
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// The queue it went to.
    pub fn queue_id(&self) -> u32 {
        self.queue.id
    }

    /// Hands the append its outcome; one queued behind its write that did
    /// not land where known no longer counts in its file's size.
    fn answer(&self, r: FsResult<Option<u64>>) {
        if self.behind {
            if let Err(e) = &r {
                // Reported at the next fsync or close of the file's
                // handles, if one comes: logged in any case.
                log::error!(
                    "space {} inode {}: an append of {} bytes queued behind its write failed: {e}",
                    self.node.space,
                    self.node.ino,
                    self.data.len()
                );
            }
            if !matches!(r, Ok(Some(_))) {
                self.node.behind_gone(self.data.len());
            }
        }
        let mut result = self.result.lock().unwrap_or_else(|e| e.into_inner());
        if result.is_none() && self.behind {
            self.queue
                .behind_bytes
                .fetch_sub(self.data.len(), Ordering::AcqRel);
        }
        *result = Some(r);
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
            let unanswered = a.result.lock().unwrap_or_else(|e| e.into_inner()).is_none();
            if unanswered {
                a.answer(Err(failed(
                    "an append's group commit ended without an answer",
                )));
            }
        }
        let mut st = self.queue.state.lock().unwrap_or_else(|e| e.into_inner());
        st.busy = false;
        st.batches += 1;
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
    test_hold(b"");
    let pinned = batch[0].node.shard.pin();
    // Once one append of a file goes alone, the later ones of that file go
    // alone too, and alone ones run in batch order: a file's appends land
    // in the order they came, also when the answer changes mid-batch.
    let mut alone_files = std::collections::HashSet::new();
    let (here, alone): (Vec<_>, Vec<_>) = batch.iter().cloned().enumerate().partition(|(_, a)| {
        let file = (a.node.space, a.node.ino);
        let here = !alone_files.contains(&file)
            && id != 0
            && a.node.shard.node_now().is_ok_and(|n| n == Some(id));
        if !here {
            alone_files.insert(file);
        }
        here
    });
    let mut alone: Vec<(usize, Arc<Append>)> = alone;
    if !here.is_empty() {
        let appends: Vec<Arc<Append>> = here.iter().map(|(_, a)| a.clone()).collect();
        let refused = run_on(cache, id, &appends);
        alone.extend(
            here.into_iter()
                .filter(|(_, a)| refused.iter().any(|r| Arc::ptr_eq(r, a))),
        );
    }
    drop(pinned);
    if alone.is_empty() {
        return;
    }
    batch[0].queue.wake();
    alone.sort_by_key(|(n, _)| *n);
    let alone: Vec<Arc<Append>> = alone.into_iter().map(|(_, a)| a).collect();
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
    let trip = route.one_trip_on_node(id, |c, lost| {
        extents::append_in_one_trip(c, lost, &op, &reqs, now, MAX_FILE_SIZE)
    });
    let trip = match trip {
        Some(OneTrip::Landed(_)) if test_hook().is_some_and(|h| h == b"lose") => {
            Some(OneTrip::Unknown("the test hook lost the answer".into()))
        }
        trip => trip,
    };
    match trip {
        Some(OneTrip::Landed(landed)) => {
            test_hold(b"landed");
            for (a, off) in batch.iter().zip(landed) {
                a.node.appended(cache, off, &a.data, now, a.behind);
                a.answer(Ok(Some(off.0)));
            }
            return Vec::new();
        }
        Some(OneTrip::Unknown(why)) => match route.was_applied(id, &op) {
            // Never run twice what landed: it did, each append once, only
            // where is not known (this mount reads the file's end afresh).
            Ok(true) => {
                for a in batch {
                    a.node.lost_track();
                    a.answer(Ok(None));
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
                    a.answer(Err(e.clone()));
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
            a.node.appended(cache, off, &a.data, now, a.behind);
        }
        a.answer(r.map(|(off, _)| Some(off)));
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
        );
        if let Err(ShardError::Tx { source, .. }) = &r
            && !is_fenced(source)
        {
            // Perhaps a commit whose answer was lost, as in a batch.
            a.node.lost_track();
        }
        let r = r.map_err(Error::from);
        if let Ok(off) = r {
            a.node.appended(cache, off, &a.data, now, a.behind);
        }
        a.answer(r.map(|(off, _)| Some(off)));
        a.queue.wake();
    }
}
