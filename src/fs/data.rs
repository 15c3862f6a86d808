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
//! a transaction that appends at the database's end of file, so appenders on
//! different mounts never overwrite each other or interleave.
//!
//! A file that move-to-s3 moved to the object store has no extents: its
//! inode names the object. Reads find that out in the same query that looks
//! for extents (so a move between two reads is seen at once) and fetch the
//! span with a ranged GET instead, cached and read ahead like extents. The
//! first write, append or truncate brings the file back into the database
//! inside its own transaction ([`extents::recall`]): POSIX semantics do not
//! change. The statements are the Storage Node's ([`crate::shard::extents`]).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crossbeam_channel::Sender;

use super::attr::Attr;
use super::cache::DataCache;
use super::error::{Error, FsResult, store_failed};
use super::now_ns;
use crate::cluster::Route;
use crate::shard::EXTENT_SIZE;
use crate::shard::extents::{self, Buffered, NewName, Span};

const E: u64 = EXTENT_SIZE;
/// Largest file: writes beyond fail with `EFBIG`.
pub const MAX_FILE_SIZE: u64 = 1 << 44;
/// A file's buffered bytes that trigger a flush.
pub const FLUSH_THRESHOLD: usize = 4 << 20;
/// How far ahead of a sequential reader extents are prefetched, in extents.
const PREFETCH_WINDOW: u64 = 16;
/// Extents per prefetch query.
const PREFETCH_JOB: u64 = 2;

/// A prefetch for a worker: extents `[first, last)` of `node`.
pub struct Prefetch {
    pub node: Arc<OpenInode>,
    pub first: u64,
    pub last: u64,
    pub version: (u64, u64),
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
    /// End of the last read, for sequential detection.
    last_read_end: u64,
    /// Prefetches have been queued up to here.
    prefetched_upto: u64,
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
}

/// An inode open in this mount.
pub struct OpenInode {
    pub space: u32,
    pub ino: u64,
    pub shard: Route,
    pub opens: Mutex<usize>,
    state: Mutex<FileState>,
    /// Held by this mount's changes of the file's data (writes, appends,
    /// truncates), before `state`: they take turns here, so an append can
    /// run its transaction without `state`, and readers, stat and opens of
    /// a log that is appended to all the time do not wait for its commits.
    data_turn: Mutex<()>,
    /// An append's transaction is running (see [`OpenInode::read`]).
    appending: AtomicBool,
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
    /// Where each thread's last append landed (its own lock: asking must
    /// not wait for another thread's append transaction).
    appended: Mutex<AppendOffsets>,
    /// The file's group and mode (`gid << 32 | mode`) as this mount last
    /// saw them (open, stat, chmod here): a write tells from them, without
    /// a query, whether it must clear set-user-ID or set-group-ID.
    owner_mode: AtomicU64,
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
                prefetched_upto: 0,
                write_seq: 0,
                info_ticket: 0,
                last_stamp: None,
            }),
            data_turn: Mutex::default(),
            appending: AtomicBool::new(false),
            idle: Condvar::new(),
            pending_gauge,
            pending_flag,
            unlinked: AtomicBool::new(false),
            appended: Mutex::default(),
            owner_mode: AtomicU64::new(u64::from(gid) << 32 | u64::from(mode)),
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

    /// The attributes of a file whose create is not committed yet.
    pub fn pending_attr(&self) -> Option<Attr> {
        let st = self.state();
        let p = st
            .pending
            .as_ref()
            .or_else(|| st.inflight.as_ref().and_then(|i| i.2.as_ref()))?;
        Some(Attr {
            size: st.size,
            ..p.attr
        })
    }

    pub fn is_pending(&self) -> bool {
        self.pending_flag.load(Ordering::Acquire)
    }

    /// The create was committed.
    fn created(&self) {
        self.pending_flag.store(false, Ordering::Release);
        self.pending_gauge.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn state(&self) -> MutexGuard<'_, FileState> {
        self.state.lock().unwrap()
    }

    /// The size to report while this file has buffered writes.
    pub fn local_size(&self) -> Option<u64> {
        let st = self.state();
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

    /// Reads `[off, off+len)`; holes and bytes past the end of an extent read
    /// as zeros. The database is queried without holding the file's lock, so
    /// the kernel's parallel read-ahead requests overlap; a sequential reader
    /// also gets the next extents prefetched by the prefetch workers.
    pub fn read(
        self: &Arc<Self>,
        cache: &DataCache,
        prefetch: &Sender<Prefetch>,
        off: u64,
        len: u32,
    ) -> FsResult<Vec<u8>> {
        let mut pieces: Vec<(u64, Option<Arc<Vec<u8>>>)> = Vec::new();
        let mut missing = Vec::new();
        let (end, file_end, version, sequential) = {
            let mut st = self.state();
            if off + u64::from(len) > st.size && self.appending.load(Ordering::Acquire) {
                // Asked past the end while an append of ours runs: its
                // commit may be in, and the kernel may know the new size
                // (a stat reads the database); the part of a short answer
                // inside that size would be cached as zeros. Answer up to
                // the database's end.
                drop(st);
                let size = super::meta::getattr(&self.shard, self.space, self.ino)?.size;
                st = self.state();
                self.grown(cache, &mut st, size);
            }
            let end = (off + u64::from(len)).min(st.size);
            if off >= end {
                return Ok(Vec::new());
            }
            let sequential = st.last_read_end == off;
            st.last_read_end = end;
            if !sequential {
                st.prefetched_upto = 0;
            }
            let version = (st.generation, st.write_seq);
            let mut ext = off - off % E;
            while ext < end {
                let d = match Self::buffered(&st, ext) {
                    Some(b) => Some(Arc::new(b.data.clone())),
                    None => cache.get(self.space, self.ino, st.generation, ext),
                };
                if d.is_none() {
                    missing.push(ext);
                }
                pieces.push((ext, d));
                ext += E;
            }
            (end, st.size.div_ceil(E) * E, version, sequential)
        };
        if let (Some(&first), Some(&last)) = (missing.first(), missing.last()) {
            let upto = if sequential {
                (last + 2 * E).min(file_end)
            } else {
                last + E
            };
            let rows = self.fetch(cache, first, upto.max(last + E), version)?;
            for (ext, d) in pieces.iter_mut().filter(|(_, d)| d.is_none()) {
                *d = rows.iter().find(|(o, _)| o == ext).map(|(_, d)| d.clone());
            }
            if sequential {
                self.schedule_prefetch(prefetch, upto, file_end, version);
            }
        }
        let mut out = vec![0u8; (end - off) as usize];
        for (ext, d) in pieces {
            let Some(d) = d else { continue };
            let (piece_start, piece_end) = (off.max(ext), end.min(ext + E));
            let from = (piece_start - ext) as usize;
            let to = ((piece_end - ext) as usize).min(d.len());
            if from < to {
                let o = (piece_start - off) as usize;
                out[o..o + (to - from)].copy_from_slice(&d[from..to]);
            }
        }
        Ok(out)
    }

    /// The file grew to `size` in the database (an append's commit that
    /// this mount has not recorded yet): takes the new size and drops the
    /// cached extents from the old end on (the one holding it was cached
    /// shorter). The append, recording its commit, starts a new version.
    fn grown(&self, cache: &DataCache, st: &mut FileState, size: u64) {
        if size <= st.size || !st.dirty.is_empty() || st.inflight.is_some() {
            return;
        }
        self.uncache(cache, st, st.size, size);
        st.write_seq += 1;
        st.size = size;
    }

    /// Drops the cached extents holding `[from, to)`.
    fn uncache(&self, cache: &DataCache, st: &FileState, from: u64, to: u64) {
        let mut ext = from - from % E;
        while ext < to {
            cache.remove(self.space, self.ino, st.generation, ext);
            ext += E;
        }
    }

    /// Queues prefetches of the extents from `from` up to the read-ahead window.
    fn schedule_prefetch(
        self: &Arc<Self>,
        tx: &Sender<Prefetch>,
        from: u64,
        file_end: u64,
        version: (u64, u64),
    ) {
        let mut st = self.state();
        let start = st.prefetched_upto.max(from);
        let stop = (from + PREFETCH_WINDOW * E).min(file_end);
        let mut at = start;
        while at < stop {
            let until = (at + PREFETCH_JOB * E).min(stop);
            let _ = tx.send(Prefetch {
                node: self.clone(),
                first: at,
                last: until,
                version,
            });
            at = until;
        }
        st.prefetched_upto = st.prefetched_upto.max(stop);
    }

    /// One extent as the file holds it (empty if none), for a partial
    /// overwrite. Called with the file's lock held: nothing here can change it.
    fn load_extent(&self, ext: u64) -> FsResult<Vec<u8>> {
        let rows = self.load_span(ext, ext + E)?;
        Ok(rows
            .into_iter()
            .find(|(o, _)| *o == ext)
            .map(|(_, d)| d)
            .unwrap_or_default())
    }

    /// The extents in `[first, last)` (holes missing), from the database
    /// or, for a file in the object store, from its object.
    fn load_span(&self, first: u64, last: u64) -> FsResult<Vec<(u64, Vec<u8>)>> {
        let mut attempt = 0;
        loop {
            match extents::span(&self.shard, self.space, self.ino, first, last)? {
                Span::Extents(rows) => return Ok(rows),
                Span::Disk { path, size, mtime } => {
                    // Not imported yet: read from the on-disk tree.
                    let file = crate::import::DiskFile::new(&path, size, mtime);
                    let data = crate::import::read_span(&file, first, last)
                        .map_err(|e| store_failed(self.space, self.ino, e))?;
                    return Ok(extents_of(first, &data));
                }
                Span::Object { host, key, size } => {
                    match self.get_object_span(host, &key, size, first, last) {
                        Ok(out) => return Ok(out),
                        // Brought back into the database (and the object
                        // deleted) since the query: look again, once.
                        Err(Some(crate::object_store::ErrorKind::NotFound)) if attempt == 0 => {
                            attempt += 1;
                        }
                        Err(_) => return Err(Error::EIO),
                    }
                }
            }
        }
    }

    /// `[first, last)` of the file's object, cut into extents. The error is
    /// logged; it carries the kind of store failure, if it was one.
    fn get_object_span(
        &self,
        host: u32,
        key: &str,
        size: u64,
        first: u64,
        last: u64,
    ) -> Result<Vec<(u64, Vec<u8>)>, Option<crate::object_store::ErrorKind>> {
        let end = last.min(size);
        if first >= end {
            return Ok(Vec::new());
        }
        let store = self.shard.cluster().object_store(host).map_err(|e| {
            store_failed(self.space, self.ino, format!("S3 host {host}: {e:#}"));
            None
        })?;
        let data = store.get_range(key, first, end - first).map_err(|e| {
            let kind = e.kind;
            store_failed(self.space, self.ino, e);
            Some(kind)
        })?;
        Ok(extents_of(first, &data))
    }

    /// Runs one prefetch (on a prefetch worker).
    pub fn prefetch(&self, cache: &DataCache, first: u64, last: u64, version: (u64, u64)) {
        let all_cached = (first..last)
            .step_by(E as usize)
            .all(|o| cache.get(self.space, self.ino, version.0, o).is_some());
        if !all_cached && let Err(e) = self.fetch(cache, first, last, version) {
            log::debug!(
                "prefetch of space {} inode {}: errno {}",
                self.space,
                self.ino,
                e.errno()
            );
        }
    }

    /// Fetches extents `[first, last)` in one query (no lock held) and caches
    /// them, unless the file was written meanwhile (`version` = generation
    /// and write count when the read was planned).
    fn fetch(
        &self,
        cache: &DataCache,
        first: u64,
        last: u64,
        version: (u64, u64),
    ) -> FsResult<Vec<(u64, Arc<Vec<u8>>)>> {
        let rows = self.load_span(first, last)?;
        let rows: Vec<(u64, Arc<Vec<u8>>)> =
            rows.into_iter().map(|(o, d)| (o, Arc::new(d))).collect();
        if *self.opens.lock().unwrap() == 0 {
            // Closed meanwhile: a new open may already use a newer version.
            return Ok(rows);
        }
        let st = self.state();
        if (st.generation, st.write_seq) == version {
            // Holes are cached as empty extents so a re-read does not query again.
            let mut found = rows.iter().peekable();
            for o in (first..last).step_by(E as usize) {
                let d = match found.peek() {
                    Some((fo, d)) if *fo == o => {
                        let d = d.clone();
                        found.next();
                        d
                    }
                    _ => Arc::new(Vec::new()),
                };
                if Self::buffered(&st, o).is_none() {
                    cache.put(self.space, self.ino, st.generation, o, d);
                }
            }
        }
        Ok(rows)
    }

    /// Buffers a write at `off`. Returns true when a background flush was
    /// started: the caller hands the inode to a flush worker.
    pub fn write(&self, cache: &DataCache, off: u64, data: &[u8]) -> FsResult<bool> {
        let end = off.checked_add(data.len() as u64).ok_or(Error::EFBIG)?;
        if end > MAX_FILE_SIZE {
            return Err(Error::EFBIG);
        }
        let _turn = self.data_turn.lock().unwrap();
        let mut st = self.state();
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
        let now = now_ns();
        let r = self.commit(&bufs, size, now, pending.as_deref());
        let mut st = self.state();
        match r {
            Ok(()) => {
                st.inflight = None;
                // The last reference now: move the buffers into the cache.
                let bufs = Arc::try_unwrap(bufs).unwrap_or_else(|b| (*b).clone());
                self.committed(cache, &mut st, bufs, size, now);
                if pending.is_some() {
                    self.created();
                }
            }
            Err(e) => {
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

    /// Writes the buffers in one transaction.
    pub fn flush(&self, cache: &DataCache) -> FsResult<()> {
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
        let (size, now) = (st.size, now_ns());
        let bufs = std::mem::take(&mut st.dirty);
        st.dirty_bytes = 0;
        let pending = st.pending.take();
        match self.commit(&bufs, size, now, pending.as_deref()) {
            Ok(()) => {
                self.committed(cache, &mut st, bufs, size, now);
                if pending.is_some() {
                    self.created();
                }
                Ok(st)
            }
            Err(e) => {
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
        Ok(extents::commit(
            &self.shard,
            self.shard.cluster(),
            (self.space, self.ino),
            &bufs,
            size,
            now,
            pending,
        )?)
    }

    /// After a commit: the written extents become clean cached data.
    fn committed(
        &self,
        cache: &DataCache,
        st: &mut FileState,
        bufs: BTreeMap<u64, ExtentBuf>,
        size: u64,
        now: i64,
    ) {
        let generation = st.generation;
        st.write_seq += 1;
        for (off, b) in bufs {
            if !st.dirty.contains_key(&off) {
                cache.put(self.space, self.ino, generation, off, Arc::new(b.data));
            }
        }
        st.db_size = st.db_size.max(size);
        st.info_ticket = ticket();
        cache.restamp(self.space, self.ino, generation, (now, now, st.size));
    }

    /// Appends at the database's end of file in one transaction (`O_APPEND`)
    /// for thread `tid`. Returns the offset the data landed at, which is
    /// also remembered for that thread ([`OpenInode::last_append`]).
    ///
    /// The transaction runs without the file's state lock: no write, flush
    /// or truncate of this mount can start meanwhile (they wait for
    /// `data_turn`), and a reader that fetches meanwhile caches what it got
    /// only if the file's version is unchanged afterwards, or has it removed
    /// below.
    pub fn append(&self, cache: &DataCache, data: &[u8], tid: u32) -> FsResult<u64> {
        let _turn = self.data_turn.lock().unwrap();
        drop(self.flush_locked(cache, self.state())?);
        let (space, ino, now) = (self.space, self.ino, now_ns());
        self.appending.store(true, Ordering::Release);
        let eof = extents::append(
            &self.shard,
            self.shard.cluster(),
            (space, ino),
            data,
            now,
            MAX_FILE_SIZE,
        )
        .map_err(Error::from);
        let mut st = self.state();
        self.appending.store(false, Ordering::Release);
        let eof = eof?;
        let end = eof + data.len() as u64;
        st.write_seq += 1;
        if eof != st.db_size {
            // Another mount appended meanwhile: what we cached is stale.
            st.generation = cache.invalidate(space, ino);
        } else {
            cache.restamp(space, ino, st.generation, (now, now, end));
        }
        self.uncache(cache, &st, eof, end);
        st.size = st.size.max(end);
        st.db_size = st.db_size.max(end);
        st.info_ticket = ticket();
        drop(st);
        self.appended.lock().unwrap().record(tid, eof);
        Ok(eof)
    }

    /// The offset at which thread `tid`'s last `O_APPEND` write to this
    /// file (while it stayed open here) landed.
    pub fn last_append(&self, tid: u32) -> Option<u64> {
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
        stamp: super::cache::Stamp,
        asked: u64,
        ask: impl FnOnce() -> FsResult<super::cache::Stamp>,
    ) -> FsResult<()> {
        let mut st = self.state();
        if !st.dirty.is_empty() || st.inflight.is_some() || self.is_pending() {
            return Ok(());
        }
        let stamp = if asked > st.info_ticket {
            stamp
        } else if st.last_stamp == Some(stamp) {
            return Ok(()); // nothing newer in it (the common case)
        } else {
            ask()?
        };
        // Taken now, after the query answered: a later stamp is used only
        // if its query began after this (so it saw at least as much).
        st.info_ticket = ticket();
        st.last_stamp = Some(stamp);
        let (generation, valid) = cache.generation_for(self.space, self.ino, stamp);
        if !valid || generation != st.generation {
            st.generation = generation;
            st.size = stamp.2;
            st.db_size = stamp.2;
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
        let _turn = self.data_turn.lock().unwrap();
        let mut st = self.flush_locked(cache, self.state())?;
        let a = apply()?;
        st.write_seq += 1;
        st.size = a.size;
        st.db_size = a.size;
        st.info_ticket = ticket();
        st.generation = cache.invalidate(self.space, self.ino);
        Ok(a)
    }
}

/// `data` read from `first` on, cut into extents.
fn extents_of(first: u64, data: &[u8]) -> Vec<(u64, Vec<u8>)> {
    data.chunks(E as usize)
        .enumerate()
        .map(|(i, d)| (first + i as u64 * E, d.to_vec()))
        .collect()
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
