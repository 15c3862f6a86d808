//! The read path of an open file: buffered data first, then the cache,
//! then one query (or ranged GET) for what is missing, with the next
//! extents of a sequential reader prefetched by the prefetch workers.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::super::cache::DataCache;
use super::super::error::{Error, FsResult, store_failed};
use super::{
    DB_READ_AHEAD, E, FileState, LoadState, Loading, OBJECT_READ_AHEAD, OpenInode, Prefetch,
    Prefetchers,
};
use crate::shard::extents::{self, Span};

/// A failed read of an object: the kind of store failure, if it was one,
/// and the error for the caller.
type StoreFailure = (Option<crate::object_store::ErrorKind>, Error);

/// How far behind the end of the last read a read still counts as
/// sequential: the kernel reads ahead up to 1 MiB (see `fuse.rs`) in
/// several requests, which the FUSE threads may answer in any order.
const SEQUENTIAL_SLACK: u64 = 2 << 20;

impl OpenInode {
    /// Reads `[off, off+len)`; holes and bytes past the end of an extent read
    /// as zeros. The database is queried without holding the file's lock, so
    /// the kernel's parallel read-ahead requests overlap; a sequential reader
    /// also gets the next extents prefetched by the prefetch workers. Extents
    /// another reader or a prefetch is fetching are not asked for again: a
    /// queued prefetch is taken over, a running one waited for.
    pub fn read(
        self: &Arc<Self>,
        cache: &DataCache,
        prefetch: &Prefetchers,
        off: u64,
        len: u32,
    ) -> FsResult<Vec<u8>> {
        let mut pieces: Vec<(u64, Option<Arc<Vec<u8>>>)> = Vec::new();
        let mut waits: Vec<Arc<Loading>> = Vec::new();
        let mut own: Option<Arc<Loading>> = None;
        let (end, version, jobs) = {
            let mut st = self.state();
            if off + u64::from(len) > st.size && st.behind > 0 {
                // Asked for bytes of an append queued behind its write (a
                // stat counts them): they are read once landed.
                drop(st);
                self.settle();
                st = self.state();
            }
            // Asked past the end, where the kernel may know a larger size:
            // a stat or lookup told it one this read path did not take
            // (another mount's appends), or an append of ours runs whose
            // commit may be in, or landed where this mount does not know
            // (its answer was lost). A short answer would end the reader's
            // read early, and the part of it inside that size would be
            // cached as zeros. Answer up to the database's end, unless a change
            // of this mount landed while it was asked (then once more).
            // After a truncate of ours whose answer was lost, the end may
            // be below `size`: asked wherever the read is.
            let past_end = |st: &FileState| {
                st.size_lost
                    || off + u64::from(len) > st.size
                        && ((off < st.told && st.told > st.size)
                            || st.end_lost
                            || self.appending.load(Ordering::Acquire) > 0)
            };
            for _ in 0..2 {
                if !past_end(&st) {
                    break;
                }
                let (asked, raised) = (super::ticket(), st.told_seq);
                drop(st);
                let size = super::super::meta::getattr(&self.shard, self.space, self.ino)?.size;
                st = self.state();
                if asked > st.info_ticket {
                    self.grown(cache, &mut st, size);
                    // Smaller: truncated since, and nothing told the kernel
                    // more meanwhile. The reader gets the end.
                    if st.told_seq == raised {
                        st.told = st.told.min(size.max(st.size));
                    }
                    break;
                }
            }
            let end = (off + u64::from(len)).min(st.size);
            if off >= end {
                return Ok(Vec::new());
            }
            // Sequential: at the end of the last read, or a little behind it
            // (the kernel's read-ahead requests, answered out of order).
            let sequential = st.last_read_end != u64::MAX
                && off <= st.last_read_end
                && st.last_read_end - off <= SEQUENTIAL_SLACK;
            if sequential {
                st.last_read_end = st.last_read_end.max(end);
                st.sequential_bytes += end - off;
            } else {
                st.last_read_end = end;
                st.sequential_bytes = 0;
                st.prefetched_upto = 0;
            }
            let version = (st.generation, st.write_seq);
            let file_end = st.size.div_ceil(E) * E;
            let mut missing = Vec::new();
            let mut ext = off - off % E;
            while ext < end {
                let d = match Self::buffered(&st, ext) {
                    Some(b) => Some(Arc::new(b.data.clone())),
                    None => {
                        let upto = (end.min(ext + E) - ext) as usize;
                        cache.get_upto((self.space, self.ino, st.generation), ext, upto)
                    }
                };
                if d.is_none() {
                    match st.loading.iter().find(|l| l.covers(ext)) {
                        Some(l) if !waits.iter().any(|w| Arc::ptr_eq(w, l)) => {
                            waits.push(l.clone())
                        }
                        Some(_) => {}
                        None => missing.push(ext),
                    }
                }
                pieces.push((ext, d));
                ext += E;
            }
            if let (Some(&first), Some(&last)) = (missing.first(), missing.last()) {
                let mut upto = if sequential {
                    (last + 2 * E).min(file_end).max(last + E)
                } else {
                    last + E
                };
                // Up to what another fetch brings.
                if let Some(next) = st
                    .loading
                    .iter()
                    .map(|l| l.first)
                    .filter(|&f| f > last)
                    .min()
                {
                    upto = upto.min(next);
                }
                let l = Loading::new(first, upto, LoadState::Running);
                st.loading.push(l.clone());
                own = Some(l);
            }
            let jobs = if sequential {
                let from = own.as_ref().map_or(end.div_ceil(E) * E, |l| l.last);
                self.plan_prefetch(cache, &mut st, from, file_end, version)
            } else {
                Vec::new()
            };
            (end, version, jobs)
        };
        // Sent without the file's lock: a job the channel refuses is
        // dropped, and dropping it takes the lock.
        let tx = if self.in_object.load(Ordering::Acquire) {
            &prefetch.object
        } else {
            &prefetch.db
        };
        for job in jobs {
            let _ = tx.send(job);
        }

        // What this read fetched itself: extents, and the spans they cover
        // (an extent of such a span without a row is a hole).
        let mut got: Vec<(u64, Arc<Vec<u8>>)> = Vec::new();
        let mut spans: Vec<(u64, u64)> = Vec::new();
        let mut run = |l: &Loading, got: &mut Vec<_>| -> FsResult<()> {
            let r = self.fetch(cache, l.first, l.last, version);
            self.loaded(l);
            got.extend(r?);
            spans.push((l.first, l.last));
            Ok(())
        };
        if let Some(l) = own {
            run(&l, &mut got)?;
        }
        for l in waits {
            if l.claim() {
                run(&l, &mut got)?;
            } else {
                l.wait();
            }
        }
        let mut still = Vec::new();
        for (ext, d) in pieces.iter_mut().filter(|(_, d)| d.is_none()) {
            *d = got.iter().find(|(o, _)| o == ext).map(|(_, d)| d.clone());
            if d.is_none() && !spans.iter().any(|&(a, b)| (a..b).contains(ext)) {
                *d = cache.get(self.space, self.ino, version.0, *ext);
                if d.is_none() {
                    still.push(*ext);
                }
            }
        }
        // Waited for a fetch that did not cache them (it failed, or the
        // file changed since it was planned): ask now.
        if let (Some(&first), Some(&last)) = (still.first(), still.last()) {
            let rows = self.fetch(cache, first, last + E, version)?;
            for (ext, d) in pieces.iter_mut().filter(|(_, d)| d.is_none()) {
                *d = rows.iter().find(|(o, _)| o == ext).map(|(_, d)| d.clone());
            }
        }
        let mut out = Vec::with_capacity((end - off) as usize);
        for (ext, d) in pieces {
            let (piece_start, piece_end) = (off.max(ext), end.min(ext + E));
            let (from, to) = ((piece_start - ext) as usize, (piece_end - ext) as usize);
            let have = d
                .as_deref()
                .map_or(&[][..], |d| &d[from.min(d.len())..to.min(d.len())]);
            out.extend_from_slice(have);
            // A hole, or past the end of a short extent: zeros.
            out.resize(out.len() + (to - from - have.len()), 0);
        }
        Ok(out)
    }

    /// The size to tell the kernel for an answer to a stat or lookup that
    /// read `size` from the database after [`ticket`] `asked` (0: not read
    /// now): this mount's own while it has data buffered; else `size`,
    /// which the read path then answers up to. It takes that end at once
    /// if nothing of this mount changed the file since the query began
    /// (else the answer may be older than what the file shows); else a
    /// read past its own end asks the database.
    ///
    /// [`ticket`]: super::ticket
    pub fn size_to_tell(&self, cache: &DataCache, size: u64, asked: u64) -> u64 {
        let mut st = self.state();
        if st.behind > 0 {
            // Ours land after whatever the database holds now. `size` may
            // hold one of them committed and not yet recorded here, and
            // other mounts' appends after it: once ours landed, the read
            // path still answers up to what was told.
            let tell = size.max(st.size).max(st.db_size + st.behind);
            if tell > st.told {
                st.told = tell;
                st.told_seq += 1;
            }
            return tell;
        }
        if !st.dirty.is_empty() || st.inflight.is_some() {
            return st.size;
        }
        if size > st.told {
            st.told = size;
            st.told_seq += 1;
        }
        if asked > st.info_ticket && !self.is_pending() {
            self.grown(cache, &mut st, size);
        }
        size
    }

    /// The file grew to `size` in the database (another mount's appends,
    /// or an append's commit that this mount has not recorded yet): takes
    /// the new size and drops the cached extents from the old end on (the
    /// one holding it was cached shorter). The append, recording its
    /// commit, starts a new version.
    pub(super) fn grown(&self, cache: &DataCache, st: &mut FileState, size: u64) {
        if !st.dirty.is_empty() || st.inflight.is_some() {
            return;
        }
        // The database's end is known again.
        st.end_lost = false;
        if std::mem::take(&mut st.size_lost) && size < st.size {
            // A truncate of ours landed, its answer lost: the cache
            // generation is new since, and the end is this one.
            st.write_seq += 1;
            st.size = size;
            st.db_size = if st.behind > 0 {
                st.db_size.min(size)
            } else {
                size
            };
            return;
        }
        if size <= st.size {
            return;
        }
        self.uncache(cache, st, st.size, size);
        st.write_seq += 1;
        st.size = size;
        // A write from here on extends what the database holds. Not while
        // appends of ours are queued: `size` may hold some of them committed
        // and not yet recorded here, which count once, in `behind`.
        if st.behind == 0 {
            st.db_size = st.db_size.max(size);
        }
    }

    /// Drops the cached extents holding `[from, to)`, where the file grew
    /// (what they held is kept apart: see `fetch`).
    pub(super) fn uncache(&self, cache: &DataCache, st: &FileState, from: u64, to: u64) {
        let mut ext = from - from % E;
        while ext < to {
            cache.grew(self.space, self.ino, st.generation, ext);
            ext += E;
        }
    }

    /// Plans prefetches of the extents from `from` up to the read-ahead
    /// window, in whole jobs (the last one ends the file), skipping what is
    /// being fetched already. The window slides with every sequential read.
    fn plan_prefetch(
        self: &Arc<Self>,
        cache: &DataCache,
        st: &mut FileState,
        from: u64,
        file_end: u64,
        version: (u64, u64),
    ) -> Vec<Prefetch> {
        let ahead = if self.in_object.load(Ordering::Acquire) {
            OBJECT_READ_AHEAD
        } else {
            DB_READ_AHEAD
        };
        // The window opens as the reader goes on (four times what it read
        // in a row), so a random read that happens to follow another one
        // costs one job, not a window of them; and it takes at most a
        // quarter of the cache, which holds it until it is read.
        let most = (cache.capacity() as u64 / 4 / E).clamp(1, ahead.window);
        let job = ahead.job.min(most);
        let grown = (4 * st.sequential_bytes).div_ceil(E).clamp(job, most);
        let stop = (from + grown * E).min(file_end);
        let mut jobs = Vec::new();
        let mut at = st.prefetched_upto.max(from);
        while at < stop {
            if let Some(l) = st.loading.iter().find(|l| l.covers(at)) {
                at = l.last;
                continue;
            }
            let until = (at + job * E).min(file_end);
            if until > stop {
                break;
            }
            // Up to what another fetch brings.
            let until = st
                .loading
                .iter()
                .map(|l| l.first)
                .filter(|&f| f > at)
                .fold(until, u64::min);
            let loading = Loading::new(at, until, LoadState::Queued);
            st.loading.push(loading.clone());
            jobs.push(Prefetch {
                node: self.clone(),
                loading,
                version,
            });
            at = until;
        }
        st.prefetched_upto = st.prefetched_upto.max(at);
        jobs
    }

    /// A fetch of `l` is over: readers waiting for it go on.
    pub(super) fn loaded(&self, l: &Loading) {
        self.state()
            .loading
            .retain(|x| !std::ptr::eq(Arc::as_ptr(x), l));
        l.finish();
    }

    /// One extent as the file holds it (empty if none), for a partial
    /// overwrite. Called with the file's lock held: nothing here can change it.
    pub(super) fn load_extent(&self, ext: u64) -> FsResult<Vec<u8>> {
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
                Span::Extents(rows) => {
                    self.in_object.store(false, Ordering::Release);
                    return Ok(rows);
                }
                Span::Disk { path, size, mtime } => {
                    self.in_object.store(false, Ordering::Release);
                    // Not imported yet: read from the on-disk tree.
                    let file = crate::disk_tier::DiskFile::new(&path, size, mtime);
                    let data = crate::disk_tier::read_span(&file, first, last)
                        .map_err(|e| store_failed(self.space, self.ino, e))?;
                    return Ok(extents_of(first, &data));
                }
                Span::Object { host, key, size } => {
                    self.in_object.store(true, Ordering::Release);
                    match self.get_object_span(host, &key, size, first, last) {
                        Ok(out) => return Ok(out),
                        // Brought back into the database (and the object
                        // deleted) since the query: look again, once.
                        Err((Some(crate::object_store::ErrorKind::NotFound), _))
                            if attempt == 0 =>
                        {
                            attempt += 1;
                        }
                        Err((_, e)) => return Err(e),
                    }
                }
            }
        }
    }

    /// `[first, last)` of the file's object, cut into extents. The error
    /// (logged) comes with the kind of store failure, if it was one.
    fn get_object_span(
        &self,
        host: u32,
        key: &str,
        size: u64,
        first: u64,
        last: u64,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreFailure> {
        let end = last.min(size);
        if first >= end {
            return Ok(Vec::new());
        }
        let store = self.shard.cluster().object_store(host).map_err(|e| {
            let e = store_failed(self.space, self.ino, format!("S3 host {host}: {e:#}"));
            (None, e)
        })?;
        let pieces = store
            .get_range_pieces(key, first, end - first, E as usize)
            .map_err(|e| {
                let kind = e.kind;
                (Some(kind), store_failed(self.space, self.ino, e))
            })?;
        Ok((first..).step_by(E as usize).zip(pieces).collect())
    }

    /// Runs one prefetch (on a prefetch worker), unless a reader took it over.
    pub fn prefetch(&self, cache: &DataCache, p: &Prefetch) {
        if !p.loading.claim() {
            return;
        }
        let (first, last, version) = (p.loading.first, p.loading.last, p.version);
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
        let _room = cache.reserve((last - first) as usize);
        // One extent that grew since it was cached: the rest of it, if
        // only appends came since.
        let known = (last - first == E)
            .then(|| cache.partial(self.space, self.ino, version.0, first))
            .flatten();
        let past = match known {
            Some((k, chg)) => {
                extents::extent_past(&self.shard, self.space, self.ino, first, (&k, chg))?
            }
            None => None,
        };
        let rows = match past {
            Some(extent) => {
                self.in_object.store(false, Ordering::Release);
                vec![(first, extent)]
            }
            None => self.load_span(first, last)?,
        };
        let rows: Vec<(u64, Arc<Vec<u8>>)> =
            rows.into_iter().map(|(o, d)| (o, Arc::new(d))).collect();
        // Held while caching: a last close waits, so what is put here is
        // put while the file is open (the next open drops what its old end
        // made stale), not after.
        let opens = self.opens.lock().unwrap();
        if *opens == 0 {
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
}

/// `data` read from `first` on, cut into extents.
fn extents_of(first: u64, data: &[u8]) -> Vec<(u64, Vec<u8>)> {
    data.chunks(E as usize)
        .enumerate()
        .map(|(i, d)| (first + i as u64 * E, d.to_vec()))
        .collect()
}
