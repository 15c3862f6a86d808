//! File data: open inodes with their write buffers, and reads through the
//! cache with read-ahead.
//!
//! Every handle of one inode in this mount shares one [`OpenInode`], so a
//! read sees what another handle of the same process wrote, as on a local
//! disk. Writes collect in per-extent buffers and reach the database at
//! flush (close), fsync, or when a file's buffers pass [`FLUSH_THRESHOLD`];
//! one flush is one transaction. A threshold flush runs on a background
//! worker while the writer goes on filling new buffers (at most one flush
//! in flight per file, so a file holds at most twice the threshold); close
//! and fsync wait for it and report its error. `O_APPEND` writes skip the buffer: each is
//! appended at the database's end of file in a group commit (see
//! [`AppendQueues`]), so appenders on different mounts never overwrite each
//! other or interleave. Unless the file is open `O_SYNC`/`O_DSYNC`, an
//! append is queued behind its write, which returns at once: like a write
//! into a local disk's page cache, it is durable at `fsync`, which waits
//! for it and reports its failure (a writer's close waits too, for
//! [`CLOSE_WAIT`] at most); a read of its bytes or a change of the file
//! here waits for it too, and a stat counts it in the size.
//!
//! A file that move-to-s3 moved to the object store has no extents: its
//! inode names the object. Reads find that out in the same query that looks
//! for extents (so a move between two reads is seen at once) and fetch the
//! span with a ranged GET instead, cached like extents and read ahead in
//! larger GETs (see [`OBJECT_READ_AHEAD`]). The first write, append or
//! truncate brings the file back into the database inside its own
//! transaction ([`extents::recall`]): POSIX semantics do not change. The
//! statements are the Storage Node's ([`crate::shard::extents`]).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};

mod group;
mod merge;
mod read;

use group::Append;
pub use group::AppendQueues;
pub use merge::{Merger, Pieces};

use super::attr::Attr;
use super::attr_cache::AttrCache;
use super::cache::DataCache;
use super::error::{Error, FsResult};
use super::now_ns;
use crate::cluster::Route;
use crate::shard::EXTENT_SIZE;
use crate::shard::extents::{self, Buffered, NewName};

const E: u64 = EXTENT_SIZE;
/// Largest file: writes beyond fail with `EFBIG`.
pub const MAX_FILE_SIZE: u64 = 1 << 44;
/// A file's buffered bytes that trigger a flush.
pub const FLUSH_THRESHOLD: usize = 4 << 20;
/// How a sequential reader's next extents are read ahead: up to `window`
/// extents ahead of it, in jobs of `job` extents (one query or ranged GET
/// each).
#[derive(Clone, Copy)]
struct ReadAhead {
    window: u64,
    job: u64,
}

/// Extents in the database: queries of 512 KiB, 4 MiB ahead.
const DB_READ_AHEAD: ReadAhead = ReadAhead { window: 16, job: 2 };
/// A file in the object store: each GET costs a round trip and the store's
/// own lookup whatever its size, so GETs of 4 MiB, 32 MiB ahead (with
/// [`OBJECT_PREFETCH_WORKERS`] in flight). Measured on SeaweedFS: cold
/// ranged GETs of 512 KiB, 4 at once, ran at 270–330 MiB/s; of 4 MiB, 8 at
/// once, at 520–760 MiB/s (BENCHMARKS.md, issue 15).
const OBJECT_READ_AHEAD: ReadAhead = ReadAhead {
    window: 128,
    job: 16,
};
/// Prefetch workers for extents in the database: each runs one query at a
/// time, so a sequential reader has this many queries in flight.
pub const DB_PREFETCH_WORKERS: usize = 4;
/// Prefetch workers for files in the object store: GETs in flight.
pub const OBJECT_PREFETCH_WORKERS: usize = 8;

/// A prefetch for a worker: extents `[first, last)` of `node`. Dropping it
/// (done, or never run) lets readers waiting for those extents go on.
pub struct Prefetch {
    pub node: Arc<OpenInode>,
    pub loading: Arc<Loading>,
    pub version: (u64, u64),
}

/// A file gone from this mount with its create never committed (its close
/// reported why) no longer counts as pending: while one does, attributes
/// are not answered from the attribute cache (see `Fs::getattr_aged`).
impl Drop for OpenInode {
    fn drop(&mut self) {
        if self.pending_flag.load(Ordering::Acquire) {
            self.pending_gauge.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.node.loaded(&self.loading);
    }
}

/// The prefetch workers' queues: extents in the database, and files in the
/// object store (larger reads, more of them at once).
pub struct Prefetchers {
    pub db: crossbeam_channel::Sender<Prefetch>,
    pub object: crossbeam_channel::Sender<Prefetch>,
}

/// Extents `[first, last)` of a file that a prefetch was queued for or a
/// reader is fetching: a reader that needs them takes the job over if it
/// has not started, else waits for it, instead of asking for them again.
pub struct Loading {
    pub first: u64,
    pub last: u64,
    /// Queued, running, or done.
    state: Mutex<LoadState>,
    done: Condvar,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum LoadState {
    Queued,
    Running,
    Done,
}

impl Loading {
    fn new(first: u64, last: u64, state: LoadState) -> Arc<Loading> {
        Arc::new(Loading {
            first,
            last,
            state: Mutex::new(state),
            done: Condvar::new(),
        })
    }

    fn covers(&self, ext: u64) -> bool {
        (self.first..self.last).contains(&ext)
    }

    /// Takes a queued job: true if the caller is to run it.
    pub fn claim(&self) -> bool {
        let mut s = self.state.lock().unwrap();
        let queued = *s == LoadState::Queued;
        if queued {
            *s = LoadState::Running;
        }
        queued
    }

    /// Waits until whoever runs the job is done.
    fn wait(&self) {
        let mut s = self.state.lock().unwrap();
        while *s != LoadState::Done {
            s = self.done.wait(s).unwrap();
        }
    }

    fn finish(&self) {
        *self.state.lock().unwrap() = LoadState::Done;
        self.done.notify_all();
    }
}

/// A file created in this mount whose rows are not in the database yet: its
/// inode and name are written by its first flush, in the same transaction as
/// its data (one commit per small file). Other mounts see it at close, as
/// close-to-open promises; this mount commits it before any other namespace
/// operation in the space (see `Fs::commit_pending`).
pub struct PendingCreate {
    pub parent: u64,
    pub name: Vec<u8>,
    pub attr: Attr,
    /// A commit of it failed: perhaps it landed (its answer lost), and the
    /// statements that run it again leave its directory's times as they
    /// find them.
    pub failed: AtomicBool,
}

/// Buffers a background flush is writing, the size it records, and the
/// create it carries.
type Inflight = (
    Arc<BTreeMap<u64, ExtentBuf>>,
    u64,
    Option<Arc<PendingCreate>>,
);

/// Threads whose last `O_APPEND` offset a file remembers; older ones are
/// forgotten. An appender asks right after its write, so this only has to
/// outlast the appends of other threads in between.
const APPEND_THREADS: usize = 256;

/// Bytes of a file's appends queued behind their writes at most: a write
/// that would queue more first waits for those queued.
const BEHIND_BYTES: usize = 1 << 20;

/// A file's appends queued behind their writes, in the order queued, with
/// the thread of each; and how many of them failed, with the last failure:
/// each handle reports a failure once, at its next fsync or close (see
/// [`OpenInode::flush`]).
#[derive(Default)]
struct Behind {
    queued: VecDeque<Queued>,
    /// Numbers the appends queued.
    seq: u64,
    bytes: usize,
    failures: u64,
    last_failure: Option<Error>,
    /// The lock owner that wrote the append that failed last (None: not
    /// known): a close of another owner leaves it to be reported.
    last_failure_owner: Option<u64>,
    /// The last failure was reported by no handle yet: a handle opened
    /// now reports it (Linux does so for an unseen writeback error).
    unseen: bool,
}

/// How long the close of a handle open for writing waits for the appends
/// queued behind its writes (close-to-open): longer only under a move's
/// fence or a node's outage, when a close must not wait for what the
/// closing process may itself have to do (a child's close at `exec` of a
/// command that lifts the fence). `fsync` waits for all of them.
pub const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

struct Queued {
    seq: u64,
    tid: u32,
    /// The FUSE lock owner of its write (the writer's descriptor table),
    /// if the kernel sent one: a close waits only for its own.
    owner: Option<u64>,
    append: Arc<Append>,
}

/// Where each thread's last `O_APPEND` write to a file landed, newest last:
/// (thread id, offset). Lives as long as the file is open in this mount.
#[derive(Default)]
pub struct AppendOffsets(VecDeque<(u32, u64)>);

impl AppendOffsets {
    fn record(&mut self, tid: u32, offset: u64) {
        if let Some(i) = self.0.iter().position(|(t, _)| *t == tid) {
            self.0.remove(i);
        }
        if self.0.len() >= APPEND_THREADS {
            self.0.pop_front();
        }
        self.0.push_back((tid, offset));
    }

    fn forget(&mut self, tid: u32) {
        self.0.retain(|(t, _)| *t != tid);
    }

    fn get(&self, tid: u32) -> Option<u64> {
        self.0.iter().find(|(t, _)| *t == tid).map(|(_, o)| *o)
    }
}

/// Orders what this mount learns of files' sizes: an open takes a ticket
/// before it asks the database for the attributes, a commit here takes one
/// after it committed (see [`OpenInode::refresh`]).
pub fn ticket() -> u64 {
    static CLOCK: AtomicU64 = AtomicU64::new(0);
    CLOCK.fetch_add(1, Ordering::SeqCst) + 1
}

/// One extent being written: its full content from the extent start.
#[derive(Clone)]
struct ExtentBuf {
    data: Vec<u8>,
    /// Length of the extent in the database when loaded (0 if none).
    base_len: usize,
    /// Lowest byte changed since then.
    dirty_from: usize,
}

/// What this mount knows of an open file.
pub struct FileState {
    /// The file size as this mount sees it (database size plus buffered writes).
    pub size: u64,
    /// The size the database had when we last synchronised.
    db_size: u64,
    dirty: BTreeMap<u64, ExtentBuf>,
    dirty_bytes: usize,
    inflight: Option<Inflight>,
    /// Set until the file's rows are committed.
    pending: Option<Arc<PendingCreate>>,
    /// The failure of a background flush, owed to the next flush/fsync/close.
    flush_error: Option<Error>,
    /// Cache generation of this file's data.
    pub generation: u64,
    /// End of the furthest read of a sequential reader, for sequential
    /// detection.
    last_read_end: u64,
    /// Bytes read sequentially since the last read elsewhere.
    sequential_bytes: u64,
    /// Prefetches have been queued up to here.
    prefetched_upto: u64,
    /// Extents being fetched, by prefetch workers or readers.
    loading: Vec<Arc<Loading>>,
    /// Counts changes of the file's data here and in the database (writes,
    /// appends, truncates, and every commit of buffers): a fetch that raced
    /// with one must not put what it read into the cache — it may have read
    /// an extent just before a flush replaced it.
    write_seq: u64,
    /// The [`ticket`] as of which `size` and `db_size` reflect the
    /// database (see [`OpenInode::refresh`]).
    info_ticket: u64,
    /// The last stamp [`OpenInode::refresh`] applied.
    last_stamp: Option<super::cache::Stamp>,
    /// The largest size this mount told the kernel the file has (a stat
    /// or lookup read it from the database): the kernel lets a reader ask
    /// up to there, so a read past `size` asks the database for its end
    /// while this is larger (see [`OpenInode::size_to_tell`]).
    told: u64,
    /// Moved each time `told` grows: the read path lowers `told` (after a
    /// truncate elsewhere) only if nothing raised it while it asked.
    told_seq: u64,
    /// Bytes of appends queued behind their writes that have not landed:
    /// a stat counts them in the size.
    behind: u64,
    /// An append of ours landed where this mount does not know (its answer
    /// was lost): `size` and `db_size` may be short of the database's end
    /// until it is read again (see [`OpenInode::find_end`]).
    end_lost: bool,
    /// A truncate or fallocate of ours may have landed though its answer
    /// was lost (set with `end_lost`): `size` and `db_size` may be past
    /// the database's end, so the end read next is taken even if smaller.
    /// Else the next write here would commit the old size back, and the
    /// file would grow again with zeros.
    size_lost: bool,
}

impl FileState {
    /// The create not committed yet, pending or in a commit under way.
    fn pending_create(&self) -> Option<&PendingCreate> {
        self.pending
            .as_ref()
            .or_else(|| self.inflight.as_ref().and_then(|i| i.2.as_ref()))
            .map(Arc::as_ref)
    }

    /// An append of `len` bytes queued behind its write landed or failed.
    fn behind_gone(&mut self, len: usize) {
        // Saturating: a panic between an append's landing and its answer
        // counts it gone twice.
        self.behind = self.behind.saturating_sub(len as u64);
        if self.behind == 0 {
            // None of ours is in flight: an end taken from the database
            // while some were (`grown`, `refresh`) is all in it.
            self.db_size = self.db_size.max(self.size);
        }
    }
}

/// An inode open in this mount.
pub struct OpenInode {
    pub space: u32,
    pub ino: u64,
    pub shard: Route,
    pub opens: Mutex<usize>,
    state: Mutex<FileState>,
    /// Held by this mount's changes of the file's data before `state`:
    /// shared by appends (the group commit orders them), exclusive for
    /// writes, flushes and truncates. So an append runs its transaction
    /// without `state`, and readers, stat and opens of a log that is
    /// appended to all the time do not wait for its commits.
    data_turn: RwLock<()>,
    /// Appends of this mount whose transaction is running (see
    /// [`OpenInode::read`]).
    appending: AtomicUsize,
    /// Where slots that hold pieces are sent to be joined.
    merger: Merger,
    /// The mount's attributes read lately: commits of data here end their
    /// epoch, appends drop the file's entry.
    attrs: Arc<AttrCache>,
    /// The attributes last read from the database, with this mount's
    /// appends since applied: when, and the attribute epoch before the
    /// read (see [`OpenInode::cached_attr`]).
    attr: Mutex<Option<(Attr, std::time::Instant, u64)>>,
    /// Signalled when a background flush finishes.
    idle: Condvar,
    /// The mount's count of pending creates.
    pending_gauge: Arc<AtomicUsize>,
    /// The create is not committed yet. An atomic, not in `state`: it is
    /// read under the mount's global locks, which must never wait for a
    /// file's lock (that may be held across a transaction).
    pending_flag: AtomicBool,
    /// The last name went away while open (set inside an unlink
    /// transaction, so also lock-free).
    pub unlinked: AtomicBool,
    /// This mount registered the file as open for writing (see
    /// `Fs::renew_open_writers`): its last close drops the registration.
    pub registered: AtomicBool,
    /// Where each thread's last append landed (its own lock: asking must
    /// not wait for another thread's append transaction).
    appended: Mutex<AppendOffsets>,
    /// An append through this open file landed: the file takes appends
    /// in the database (not held in the object store, imported), so later
    /// ones may be queued behind their writes.
    took_append: AtomicBool,
    /// Appends queued behind their writes (see [`OpenInode::append`]).
    behind: Mutex<Behind>,
    /// The file's group and mode (`gid << 32 | mode`) as this mount last
    /// saw them (open, stat, chmod here): a write tells from them, without
    /// a query, whether it must clear set-user-ID or set-group-ID.
    owner_mode: AtomicU64,
    /// The last read found the file's data in the object store: it is read
    /// ahead as an object.
    in_object: AtomicBool,
}

impl OpenInode {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        space: u32,
        ino: u64,
        shard: Route,
        (gid, mode): (u32, u32),
        size: u64,
        generation: u64,
        pending: Option<PendingCreate>,
        pending_gauge: Arc<AtomicUsize>,
        merger: Merger,
        attrs: Arc<AttrCache>,
    ) -> OpenInode {
        if pending.is_some() {
            pending_gauge.fetch_add(1, Ordering::AcqRel);
        }
        let pending_flag = AtomicBool::new(pending.is_some());
        OpenInode {
            space,
            ino,
            shard,
            opens: Mutex::new(0),
            state: Mutex::new(FileState {
                size,
                db_size: size,
                dirty: BTreeMap::new(),
                dirty_bytes: 0,
                inflight: None,
                pending: pending.map(Arc::new),
                flush_error: None,
                generation,
                last_read_end: u64::MAX,
                sequential_bytes: 0,
                prefetched_upto: 0,
                loading: Vec::new(),
                write_seq: 0,
                info_ticket: 0,
                last_stamp: None,
                end_lost: false,
                size_lost: false,
                told: size,
                told_seq: 0,
                behind: 0,
            }),
            data_turn: RwLock::default(),
            appending: AtomicUsize::new(0),
            merger,
            attrs,
            attr: Mutex::default(),
            idle: Condvar::new(),
            pending_gauge,
            pending_flag,
            unlinked: AtomicBool::new(false),
            registered: AtomicBool::new(false),
            appended: Mutex::default(),
            took_append: AtomicBool::new(false),
            behind: Mutex::default(),
            owner_mode: AtomicU64::new(u64::from(gid) << 32 | u64::from(mode)),
            in_object: AtomicBool::new(false),
        }
    }

    /// The file's (group, mode) as this mount last saw them.
    pub fn owner_mode(&self) -> (u32, u32) {
        let v = self.owner_mode.load(Ordering::Acquire);
        ((v >> 32) as u32, v as u32)
    }

    pub fn set_owner_mode(&self, gid: u32, mode: u32) {
        self.owner_mode
            .store(u64::from(gid) << 32 | u64::from(mode), Ordering::Release);
    }

    /// The attributes kept from the database, if read after every change
    /// of attributes this mount began (`epoch` is the mount's epoch now)
    /// and less than `ttl` ago: a stat of a log being appended to and read
    /// costs no query, and what other mounts change shows within the TTL,
    /// as the kernel's own attribute cache allows.
    pub fn cached_attr(&self, epoch: u64, ttl: std::time::Duration) -> Option<Attr> {
        let kept = self.attr.lock().unwrap();
        let (a, at, e) = kept.as_ref()?;
        (*e == epoch && at.elapsed() < ttl).then_some(*a)
    }

    /// Keeps attributes read from the database when the mount's attribute
    /// epoch was `epoch`, by a query that began after [`ticket`] `asked`:
    /// not if a commit or append of this mount landed since (they would be
    /// older than what the file shows).
    pub fn keep_attr(&self, a: Attr, epoch: u64, asked: u64) {
        let st = self.state();
        if asked > st.info_ticket {
            *self.attr.lock().unwrap() = Some((a, std::time::Instant::now(), epoch));
        }
    }

    /// The data changed here other than by an append: kept attributes are
    /// stale.
    fn data_changed(&self) {
        self.attrs.changed();
        *self.attr.lock().unwrap() = None;
    }

    /// The file's first commit, begun in attribute epoch `before`, left the
    /// row `a` and gave its directory the create's time: kept, so that the
    /// stats after a close (rsync: two, with its `utimes` between, and the
    /// directory's) cost no query.
    fn created_as(&self, before: u64, p: &PendingCreate, a: Attr) {
        let mut kept = self.attr.lock().unwrap();
        *kept = self
            .attrs
            .changed_knowing(
                before,
                self.space,
                (&[p.parent], p.attr.ctime),
                &[(self.ino, a)],
            )
            .map(|epoch| (a, std::time::Instant::now(), epoch));
    }

    /// A commit failed: it may have landed all the same (an answer lost),
    /// so nothing kept from before is used.
    fn commit_failed(&self, pending: Option<&PendingCreate>) {
        if let Some(p) = pending {
            p.failed.store(true, Ordering::Release);
        }
        self.data_changed();
    }

    /// The attributes of a file whose create is not committed yet.
    pub fn pending_attr(&self) -> Option<Attr> {
        let st = self.state();
        let size = st.size;
        st.pending_create().map(|p| Attr { size, ..p.attr })
    }

    pub fn is_pending(&self) -> bool {
        self.pending_flag.load(Ordering::Acquire)
    }

    /// The directory of a file whose create is not committed yet.
    pub fn pending_parent(&self) -> Option<u64> {
        self.state().pending_create().map(|p| p.parent)
    }

    /// The create was committed.
    fn created(&self) {
        self.pending_flag.store(false, Ordering::Release);
        self.pending_gauge.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn state(&self) -> MutexGuard<'_, FileState> {
        self.state.lock().unwrap()
    }

    /// The size to report while this file has buffered writes or appends
    /// queued behind their writes.
    pub fn local_size(&self) -> Option<u64> {
        let st = self.state();
        if st.behind > 0 {
            return Some(st.size.max(st.db_size + st.behind));
        }
        (!st.dirty.is_empty() || st.inflight.is_some()).then_some(st.size)
    }

    /// Waits until no background flush is running.
    fn wait_idle<'a>(&'a self, mut st: MutexGuard<'a, FileState>) -> MutexGuard<'a, FileState> {
        while st.inflight.is_some() {
            st = self.idle.wait(st).unwrap();
        }
        st
    }

    /// A buffered extent: pending, or being flushed.
    fn buffered(st: &FileState, ext: u64) -> Option<&ExtentBuf> {
        st.dirty
            .get(&ext)
            .or_else(|| st.inflight.as_ref().and_then(|(m, _, _)| m.get(&ext)))
    }

    /// Buffers a write at `off`. Returns true when a background flush was
    /// started: the caller hands the inode to a flush worker.
    pub fn write(&self, cache: &DataCache, off: u64, data: &[u8]) -> FsResult<bool> {
        let end = off.checked_add(data.len() as u64).ok_or(Error::EFBIG)?;
        if end > MAX_FILE_SIZE {
            return Err(Error::EFBIG);
        }
        let _turn = self.data_turn.write().unwrap();
        self.settle();
        let mut st = self.find_end(cache, self.state())?;
        st.write_seq += 1;
        let mut ext = off - off % E;
        while ext < end {
            let piece_start = off.max(ext);
            let piece_end = end.min(ext + E);
            if !st.dirty.contains_key(&ext) {
                let in_flight = st
                    .inflight
                    .as_ref()
                    .and_then(|(m, _, _)| m.get(&ext))
                    .map(|b| b.data.clone());
                let existing = if let Some(d) = in_flight {
                    d
                } else if ext < st.db_size {
                    match cache.get(self.space, self.ino, st.generation, ext) {
                        Some(d) => (*d).clone(),
                        None => self.load_extent(ext)?,
                    }
                } else {
                    Vec::new()
                };
                let base_len = existing.len();
                st.dirty_bytes += base_len;
                st.dirty.insert(
                    ext,
                    ExtentBuf {
                        data: existing,
                        base_len,
                        dirty_from: base_len,
                    },
                );
            }
            let b = st.dirty.get_mut(&ext).expect("inserted above");
            let (from, to) = ((piece_start - ext) as usize, (piece_end - ext) as usize);
            let grow = to.saturating_sub(b.data.len());
            if b.data.len() < to {
                b.data.resize(to, 0);
            }
            b.data[from..to]
                .copy_from_slice(&data[(piece_start - off) as usize..(piece_end - off) as usize]);
            b.dirty_from = b.dirty_from.min(from);
            st.dirty_bytes += grow;
            ext += E;
        }
        st.size = st.size.max(end);
        if st.dirty_bytes < FLUSH_THRESHOLD {
            return Ok(false);
        }
        // Back-pressure: one flush in flight per file.
        let mut st = self.wait_idle(st);
        let size = st.size;
        let pending = st.pending.take();
        st.inflight = Some((Arc::new(std::mem::take(&mut st.dirty)), size, pending));
        st.dirty_bytes = 0;
        Ok(true)
    }

    /// Runs the background flush started by [`OpenInode::write`] (on a worker).
    pub fn flush_inflight(&self, cache: &DataCache) {
        let Some((bufs, size, pending)) = self.state().inflight.clone() else {
            return;
        };
        let (now, before) = (now_ns(), self.attrs.epoch());
        let r = self.commit(&bufs, size, now, pending.as_deref());
        let mut st = self.state();
        match r {
            Ok(()) => {
                st.inflight = None;
                // The last reference now: move the buffers into the cache.
                let bufs = Arc::try_unwrap(bufs).unwrap_or_else(|b| (*b).clone());
                let created = pending.as_deref().map(|p| (before, p));
                self.committed(cache, &mut st, bufs, size, now, created);
                if pending.is_some() {
                    self.created();
                }
            }
            Err(e) => {
                self.commit_failed(pending.as_deref());
                if pending.is_some() {
                    st.pending = pending;
                }
                // Keep the data: put back what was not written over since. A
                // buffer written over since was copied from this one, so it
                // holds these changes too, but must not count as based on them.
                for (off, b) in bufs.iter() {
                    match st.dirty.get_mut(off) {
                        Some(newer) => {
                            newer.base_len = newer.base_len.min(b.base_len);
                            newer.dirty_from = newer.dirty_from.min(b.dirty_from);
                        }
                        None => {
                            st.dirty_bytes += b.data.len();
                            st.dirty.insert(*off, b.clone());
                        }
                    }
                }
                st.flush_error = Some(e);
            }
        }
        st.inflight = None;
        self.idle.notify_all();
    }

    /// Failures of appends queued behind their writes so far, less one
    /// that no handle reported yet: a handle takes this at its open (see [`OpenInode::flush`]).
    pub fn failures(&self) -> u64 {
        let b = self.behind.lock().unwrap();
        b.failures - u64::from(b.unseen)
    }

    /// Writes the buffers in one transaction, after the appends queued
    /// behind their writes landed (`wait`: waiting at most that long, and
    /// with a lock owner, only for the appends it wrote), and
    /// reports a failure of those that a handle that had seen `seen` of
    /// them has not reported yet: as Linux reports a writeback error once
    /// to each open file description.
    pub fn flush(
        &self,
        cache: &DataCache,
        seen: &AtomicU64,
        wait: Option<(std::time::Duration, Option<u64>)>,
    ) -> FsResult<()> {
        let closer = wait.and_then(|(_, owner)| owner);
        match wait {
            None => self.settle(),
            Some((d, owner)) => self.settle_until(std::time::Instant::now() + d, owner),
        }
        let owed = {
            let mut b = self.behind.lock().unwrap();
            // A close reports only its own process's failure (or one of an
            // owner not known): a child closing an inherited descriptor
            // must not take the failure its parent's fsync or close reports.
            let others = closer.is_some_and(|c| b.last_failure_owner.is_some_and(|o| o != c));
            let before = if others {
                u64::MAX
            } else {
                seen.fetch_max(b.failures, Ordering::AcqRel)
            };
            let owed = (b.failures > before)
                .then(|| b.last_failure.clone())
                .flatten();
            b.unseen &= owed.is_none();
            owed
        };
        // The append's failure first: the handle reports it now or never.
        let r = self.flush_buffers(cache);
        owed.map_or(r, Err)
    }

    /// Writes the buffers in one transaction (appends queued behind their
    /// writes go on).
    pub fn flush_buffers(&self, cache: &DataCache) -> FsResult<()> {
        self.flush_locked(cache, self.state()).map(drop)
    }

    fn flush_locked<'a>(
        &'a self,
        cache: &DataCache,
        st: MutexGuard<'a, FileState>,
    ) -> FsResult<MutexGuard<'a, FileState>> {
        let mut st = self.wait_idle(st);
        if let Some(e) = st.flush_error.take() {
            return Err(e);
        }
        if st.dirty.is_empty() && st.pending.is_none() {
            return Ok(st);
        }
        let (size, now, before) = (st.size, now_ns(), self.attrs.epoch());
        let bufs = std::mem::take(&mut st.dirty);
        st.dirty_bytes = 0;
        let pending = st.pending.take();
        match self.commit(&bufs, size, now, pending.as_deref()) {
            Ok(()) => {
                let created = pending.as_deref().map(|p| (before, p));
                self.committed(cache, &mut st, bufs, size, now, created);
                if pending.is_some() {
                    self.created();
                }
                Ok(st)
            }
            Err(e) => {
                self.commit_failed(pending.as_deref());
                st.dirty_bytes = bufs.values().map(|b| b.data.len()).sum();
                st.dirty = bufs;
                st.pending = pending;
                Err(e)
            }
        }
    }

    /// Writes a pending create, buffers and the new size in one transaction.
    fn commit(
        &self,
        bufs: &BTreeMap<u64, ExtentBuf>,
        size: u64,
        now: i64,
        pending: Option<&PendingCreate>,
    ) -> FsResult<()> {
        let bufs: Vec<Buffered<'_>> = bufs
            .iter()
            .map(|(&off, b)| Buffered {
                off,
                data: &b.data,
                base_len: b.base_len,
                dirty_from: b.dirty_from,
            })
            .collect();
        let pending = pending.map(|p| NewName {
            parent: p.parent,
            name: &p.name,
            attr: &p.attr,
        });
        let pieced = extents::commit(
            &self.shard,
            self.shard.cluster(),
            (self.space, self.ino),
            &bufs,
            size,
            now,
            pending,
        )?;
        for slot in pieced {
            self.pieces(slot, slot + E <= size);
        }
        Ok(())
    }

    /// Slot `slot` holds pieces: have them joined.
    fn pieces(&self, slot: u64, complete: bool) {
        self.merger.pieces(Pieces {
            route: self.shard.clone(),
            space: self.space,
            ino: self.ino,
            slot,
            complete,
        });
    }

    /// After a commit (with the file's create, begun in attribute epoch
    /// `created.0`): the written extents become clean cached data.
    fn committed(
        &self,
        cache: &DataCache,
        st: &mut FileState,
        bufs: BTreeMap<u64, ExtentBuf>,
        size: u64,
        now: i64,
        created: Option<(u64, &PendingCreate)>,
    ) {
        let generation = st.generation;
        st.write_seq += 1;
        match created.filter(|(_, p)| !p.failed.load(Ordering::Acquire)) {
            Some((before, p)) => {
                let bytes = bufs.values().map(|b| b.data.len() as u64).sum();
                let a = extents::first_commit_attr(&p.attr, bufs.len(), bytes, size, now);
                self.created_as(before, p, a);
            }
            None => self.data_changed(),
        }
        for (off, b) in bufs {
            if !st.dirty.contains_key(&off) {
                cache.put(self.space, self.ino, generation, off, Arc::new(b.data));
            } else {
                // Written again meanwhile: what is cached of it is older
                // than this commit (should the newer buffer be lost).
                cache.forget(self.space, self.ino, generation, off);
            }
        }
        st.db_size = st.db_size.max(size);
        st.info_ticket = ticket();
        // Our write moved the change counter to a value not known here.
        cache.restamp(
            (self.space, self.ino, generation),
            (now, now, st.size),
            None,
        );
    }

    /// Appends at the database's end of file (`O_APPEND`) for thread
    /// `tid`, in a group commit with other appends to the file's node (see
    /// [`AppendQueues`]). The offset the data landed at is remembered for
    /// that thread ([`OpenInode::last_append`]), unless the answer saying
    /// where was lost (the append landed, once: see `group`).
    ///
    /// Returns where it landed if it waited for its commit and this mount
    /// knows.
    ///
    /// `behind`: returns once the append is queued, behind those queued
    /// before it (see [`OpenInode::settle`]), once one append through the
    /// open file landed; else once it is committed, after those queued.
    ///
    /// The transaction runs without the file's state lock: no write, flush
    /// or truncate of this mount can start meanwhile (they wait for
    /// `data_turn`, then for the appends queued), and a reader that fetches
    /// meanwhile caches what it got only if the file's version is unchanged
    /// afterwards, or has it removed by [`OpenInode::appended`].
    pub fn append(
        self: &Arc<Self>,
        cache: &DataCache,
        queues: &AppendQueues,
        data: &[u8],
        (tid, owner): (u32, Option<u64>),
        behind: bool,
    ) -> FsResult<Option<u64>> {
        let _turn = self.data_turn.read().unwrap();
        let st = self.flush_locked(cache, self.state())?;
        // One that may pass the largest size waits for its `EFBIG`.
        let fits = st.size.max(st.db_size) + st.behind + data.len() as u64 <= MAX_FILE_SIZE;
        drop(st);
        // The first append waits for its commit: one that must bring the
        // file back from the object store fails in its write, as before.
        let took = self.took_append.load(Ordering::Acquire);
        if behind && took && fits && queues.has_room(data.len()) {
            let queue = queues.queue_of(self)?;
            loop {
                let mut b = self.behind.lock().unwrap();
                self.pop_landed(&mut b, u64::MAX);
                // More than enough queued, or queued for another node (the
                // space moved): those land first, to keep the order.
                let Some(last) = b.queued.back() else {
                    break self.queue_behind(b, queues, queue, (tid, owner), data);
                };
                if b.bytes + data.len() <= BEHIND_BYTES && last.append.queue_id() == queue {
                    break self.queue_behind(b, queues, queue, (tid, owner), data);
                }
                drop(b);
                self.settle();
            }
            return Ok(None);
        }
        self.settle();
        self.appending.fetch_add(1, Ordering::AcqRel);
        let eof = queues.append(self, data);
        self.appending.fetch_sub(1, Ordering::AcqRel);
        let mut offsets = self.appended.lock().unwrap();
        let eof = eof?;
        match eof {
            Some(eof) => offsets.record(tid, eof),
            None => offsets.forget(tid),
        }
        self.took_append.store(true, Ordering::Release);
        Ok(eof)
    }

    fn queue_behind(
        self: &Arc<Self>,
        mut b: MutexGuard<'_, Behind>,
        queues: &AppendQueues,
        queue: u32,
        (tid, owner): (u32, Option<u64>),
        data: &[u8],
    ) {
        self.state().behind += data.len() as u64;
        let append = queues.submit(self, queue, data);
        b.bytes += append.len();
        b.seq += 1;
        let seq = b.seq;
        b.queued.push_back(Queued {
            seq,
            tid,
            owner,
            append,
        });
    }

    /// Waits until the appends queued behind their writes so far landed
    /// (leading their transaction, if none is in flight; not those queued
    /// meanwhile): their threads' offsets are recorded, a failure is owed
    /// to the next flush.
    pub fn settle(&self) {
        self.settle_by(None, None);
    }

    /// [`OpenInode::settle`], waiting until `deadline` at most, and
    /// leading no transaction (the committer thread runs them). With
    /// `owner`, only up to the last append written by that lock owner (or
    /// by one not known).
    pub fn settle_until(&self, deadline: std::time::Instant, owner: Option<u64>) {
        self.settle_by(Some(deadline), owner);
    }

    fn settle_by(&self, deadline: Option<std::time::Instant>, owner: Option<u64>) {
        let last = {
            let b = self.behind.lock().unwrap();
            let mut queued = b.queued.iter().rev();
            match owner {
                None => queued.next(),
                Some(o) => queued.find(|q| q.owner.is_none_or(|w| w == o)),
            }
            .map(|q| q.seq)
        };
        let Some(last) = last else {
            return;
        };
        loop {
            let Some(a) = self.pop_landed(&mut self.behind.lock().unwrap(), last) else {
                return;
            };
            match deadline {
                None => drop(a.wait()),
                Some(d) => {
                    if a.wait_until(d).is_none() {
                        return;
                    }
                }
            }
        }
    }

    /// Appends queued behind their writes have not all landed yet.
    pub fn has_queued_appends(&self) -> bool {
        self.pop_landed(&mut self.behind.lock().unwrap(), u64::MAX)
            .is_some()
    }

    /// Takes the appends queued up to `last` (by `Queued::seq`) that landed
    /// (or failed) off the queue, in order; answers the first still in
    /// flight, if any.
    fn pop_landed(&self, b: &mut Behind, last: u64) -> Option<Arc<Append>> {
        while let Some(first) = b.queued.front().filter(|q| q.seq <= last) {
            let Some(r) = first.append.outcome() else {
                return Some(first.append.clone());
            };
            let q = b.queued.pop_front().expect("checked");
            Self::settled(b, &self.appended, (q.tid, q.owner), q.append.len(), r);
        }
        None
    }

    /// An append queued behind its write, taken off the queue once landed
    /// (or failed).
    fn settled(
        b: &mut Behind,
        offsets: &Mutex<AppendOffsets>,
        (tid, owner): (u32, Option<u64>),
        len: usize,
        r: FsResult<Option<u64>>,
    ) {
        b.bytes -= len;
        let mut offsets = offsets.lock().unwrap();
        match r {
            Ok(Some(eof)) => offsets.record(tid, eof),
            Ok(None) => offsets.forget(tid),
            Err(e) => {
                offsets.forget(tid);
                b.failures += 1;
                b.last_failure = Some(e);
                b.last_failure_owner = owner;
                b.unseen = true;
            }
        }
    }

    /// An append queued behind its write will not be in the size as such:
    /// it failed, or landed where this mount does not know.
    fn behind_gone(&self, len: usize) {
        self.state().behind_gone(len);
    }

    /// An append's or a truncate's outcome is unknown: what this mount
    /// cached of the file and its attributes may differ from the database.
    fn lost_track(&self) {
        let mut st = self.state();
        st.write_seq += 1;
        *self.attr.lock().unwrap() = None;
        self.attrs.forget(self.space, self.ino);
        st.info_ticket = ticket();
        // Re-read at the next open, as after another mount's change.
        st.last_stamp = None;
        st.end_lost = true;
    }

    /// Reads the file's end from the database if an append's or a
    /// truncate's answer was lost since: a write past the end this mount
    /// knew would otherwise take a slot holding the landed bytes for a new
    /// one (and zero them), and a write after a lost truncate would commit
    /// the old size back.
    /// Called after `settle`, under `data_turn` held for writing; the
    /// query runs without the file's state lock, which is handed back.
    fn find_end<'a>(
        &'a self,
        cache: &DataCache,
        st: MutexGuard<'a, FileState>,
    ) -> FsResult<MutexGuard<'a, FileState>> {
        if !st.end_lost && !st.size_lost {
            return Ok(st);
        }
        drop(st);
        let size = super::meta::getattr(&self.shard, self.space, self.ino)?.size;
        let mut st = self.state();
        self.grown(cache, &mut st, size);
        Ok(st)
    }

    /// After an append of `data` landed at `eof` (committed at `now`) with
    /// the file's change counter at `chg`, in the order appends landed:
    /// this mount's view of the file follows. The appended bytes join the
    /// cached extents (appends change no byte below the end), unless
    /// another mount appended since this one last knew the end.
    fn appended(
        &self,
        cache: &DataCache,
        (eof, chg): (u64, u64),
        data: &[u8],
        now: i64,
        behind: bool,
    ) {
        let end = eof + data.len() as u64;
        let mut st = self.state();
        st.write_seq += 1;
        if behind {
            st.behind_gone(data.len());
        }
        // Another mount appended meanwhile, so the extent holding the end we
        // knew lacks its bytes. Or after ours: a read that met our commit
        // before this (`grown`) took the database's end, which may hold
        // another mount's appends after ours, so our bytes alone would not
        // fill the slots up to the size readers now use.
        let behind = eof != st.db_size || st.size > end;
        let stale = behind.then(|| (st.db_size.min(st.size).min(eof), end.max(st.size)));
        // If nothing but appends happened since our cached data (the change
        // counter it stands for), what lies below the end we knew stays;
        // else (a write in place elsewhere, even of the same size) all of
        // it is stale.
        let key = (self.space, self.ino, st.generation);
        let kept = cache.appended(key, chg, (now, now, end), stale);
        if !kept || behind {
            if !kept {
                st.generation = cache.invalidate(self.space, self.ino, Some(chg));
            }
            *self.attr.lock().unwrap() = None;
            self.attrs.forget(self.space, self.ino);
        } else {
            if let Some((a, ..)) = self.attr.lock().unwrap().as_mut() {
                // Never back: a stat may have read a later end meanwhile.
                a.size = a.size.max(end);
                a.stored += data.len() as u64;
                (a.mtime, a.ctime) = (a.mtime.max(now), a.ctime.max(now));
            }
            self.attrs.forget(self.space, self.ino);
            let mut at = eof;
            for piece in extents::slot_pieces(eof, data) {
                let slot = at - at % E;
                let key = (self.space, self.ino, st.generation, slot);
                if at == slot {
                    // Nothing was in this slot: the piece is all of it.
                    cache.put(key.0, key.1, key.2, slot, Arc::new(piece.to_vec()));
                } else if !cache.extend(key, (at - slot) as usize, piece) {
                    cache.grew(key.0, key.1, key.2, slot);
                }
                at += piece.len() as u64;
            }
        }
        if std::mem::take(&mut st.size_lost) {
            // After a truncate of ours whose answer was lost: the
            // database's end was `eof`, whatever this mount thought.
            (st.size, st.db_size) = (end, end);
        } else {
            st.size = st.size.max(end);
            st.db_size = st.db_size.max(end);
        }
        // Landed at the database's end: past any append of ours whose
        // answer was lost.
        st.end_lost = false;
        st.info_ticket = ticket();
        drop(st);
        // The slot the append started in, if it began mid-slot: filled up
        // now, or the file's last one.
        let slot = eof - eof % E;
        if eof > slot {
            self.pieces(slot, end >= slot + E);
        }
        if !end.is_multiple_of(E) && end - end % E > slot {
            self.pieces(end - end % E, false);
        }
    }

    /// The offset at which thread `tid`'s last `O_APPEND` write to this
    /// file (while it stayed open here) landed.
    pub fn last_append(&self, tid: u32) -> Option<u64> {
        self.settle();
        self.appended.lock().unwrap().get(tid)
    }

    /// At an open: if the database moved on (another mount wrote it) and
    /// nothing is buffered here, take its size and start a new cache
    /// generation (close-to-open). `stamp` is what the open read from the
    /// database after taking ticket `asked`.
    ///
    /// Opens and commits of one file in this mount run at the same time, so
    /// a stamp may be older than what the file already shows: applying it
    /// would shrink the size under readers (a log appended to from another
    /// mount, opened here by an appender and readers at once). So a stamp
    /// asked for before the file's last commit here or before the last
    /// stamp was applied is not used: unless it is that same stamp, `ask`
    /// reads the attributes again, under the file's lock, which appends
    /// here wait for.
    pub fn refresh(
        &self,
        cache: &DataCache,
        (stamp, chg): (super::cache::Stamp, u64),
        asked: u64,
        ask: impl FnOnce() -> FsResult<(super::cache::Stamp, u64)>,
    ) -> FsResult<()> {
        let mut st = self.state();
        if !st.dirty.is_empty() || st.inflight.is_some() || self.is_pending() {
            return Ok(());
        }
        let (stamp, chg) = if asked > st.info_ticket {
            (stamp, chg)
        } else if st.last_stamp == Some(stamp) {
            return Ok(()); // nothing newer in it (the common case)
        } else {
            ask()?
        };
        // Taken now, after the query answered: a later stamp is used only
        // if its query began after this (so it saw at least as much).
        st.info_ticket = ticket();
        st.last_stamp = Some(stamp);
        let (generation, valid) = cache.generation_for(self.space, self.ino, stamp, chg);
        if !valid || generation != st.generation {
            st.generation = generation;
            st.size = stamp.2;
            st.size_lost = false;
            // With appends of ours queued, the stamp may hold some of them
            // committed and not yet recorded here, which count once, in
            // `behind` (see `OpenInode::grown`).
            st.db_size = if st.behind > 0 {
                st.db_size.min(stamp.2)
            } else {
                stamp.2
            };
            st.write_seq += 1;
        }
        Ok(())
    }

    /// A change of the data in place (truncate, fallocate): buffers are
    /// committed, then `apply` changes the database, all under the file's
    /// lock; the cached data is dropped and the size taken from `apply`.
    pub fn rewrite(
        &self,
        cache: &DataCache,
        apply: impl FnOnce() -> FsResult<Attr>,
    ) -> FsResult<Attr> {
        let _turn = self.data_turn.write().unwrap();
        self.settle();
        let mut st = self.flush_locked(cache, self.state())?;
        let a = apply().and_then(|a| match group::test_hook() {
            Some(h) if h == b"lose rewrite" => Err(Error::EIO),
            _ => Ok(a),
        });
        self.data_changed();
        let a = match a {
            Ok(a) => a,
            Err(e) => {
                // It may have landed (its answer lost): what is cached may
                // be stale, and the size is the database's to tell again.
                st.generation = cache.invalidate(self.space, self.ino, None);
                st.size_lost = true;
                drop(st);
                self.lost_track();
                return Err(e);
            }
        };
        st.write_seq += 1;
        st.size = a.size;
        st.db_size = a.size;
        st.end_lost = false;
        st.size_lost = false;
        st.told = a.size;
        st.info_ticket = ticket();
        st.generation = cache.invalidate(self.space, self.ino, None);
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_offsets_are_per_thread_and_bounded() {
        let mut a = AppendOffsets::default();
        assert_eq!(a.get(7), None);
        a.record(7, 100);
        a.record(8, 200);
        a.record(7, 300);
        assert_eq!((a.get(7), a.get(8)), (Some(300), Some(200)));
        for tid in 1000..1000 + APPEND_THREADS as u32 - 1 {
            a.record(tid, u64::from(tid));
        }
        // 8 was the oldest: forgotten; 7 (renewed later) is still there.
        assert_eq!((a.get(8), a.get(7)), (None, Some(300)));
        assert_eq!(a.0.len(), APPEND_THREADS);
    }
}
