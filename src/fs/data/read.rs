//! The read path of an open file: buffered data first, then the cache,
//! then one query (or ranged GET) for what is missing, with the next
//! extents of a sequential reader prefetched by the prefetch workers.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crossbeam_channel::Sender;

use super::super::cache::DataCache;
use super::super::error::{Error, FsResult, store_failed};
use super::{E, FileState, OpenInode, PREFETCH_JOB, PREFETCH_WINDOW, Prefetch};
use crate::shard::extents::{self, Span};

/// A failed read of an object: the kind of store failure, if it was one,
/// and the error for the caller.
type StoreFailure = (Option<crate::object_store::ErrorKind>, Error);

impl OpenInode {
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
                let size = super::super::meta::getattr(&self.shard, self.space, self.ino)?.size;
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
    pub(super) fn uncache(&self, cache: &DataCache, st: &FileState, from: u64, to: u64) {
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
                Span::Extents(rows) => return Ok(rows),
                Span::Disk { path, size, mtime } => {
                    // Not imported yet: read from the on-disk tree.
                    let file = crate::disk_tier::DiskFile::new(&path, size, mtime);
                    let data = crate::disk_tier::read_span(&file, first, last)
                        .map_err(|e| store_failed(self.space, self.ino, e))?;
                    return Ok(extents_of(first, &data));
                }
                Span::Object { host, key, size } => {
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
        let data = store.get_range(key, first, end - first).map_err(|e| {
            let kind = e.kind;
            (Some(kind), store_failed(self.space, self.ino, e))
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
}

/// `data` read from `first` on, cut into extents.
fn extents_of(first: u64, data: &[u8]) -> Vec<(u64, Vec<u8>)> {
    data.chunks(E as usize)
        .enumerate()
        .map(|(i, d)| (first + i as u64 * E, d.to_vec()))
        .collect()
}
