//! Attributes this mount read from a Storage Node lately, kept for the
//! attribute TTL so that a burst of requests about one file costs one
//! query: rsync's `stat`, `utimes` and `chmod` of the file it just closed
//! ask the daemon three times within a millisecond (the kernel drops its
//! own copy at each write and close).
//!
//! Any change made through this mount ([`AttrCache::changed`]) ends the
//! validity of everything cached before it; a change made elsewhere is
//! seen within the TTL, as the kernel's own cache promises: a reply from
//! here carries only what is left of the TTL (see [`AttrCache::get`]).
//! Files with buffered writes, and all files while a create is pending,
//! are never answered from here (see `Fs::getattr_aged`).

use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lru::LruCache;

use super::Attr;

/// (when read, the epoch it was read in, the attributes).
type Entry = (Instant, u64, Attr);

pub struct AttrCache {
    map: Mutex<LruCache<(u32, u64), Entry>>,
    /// Moves on with every change through this mount (the open files' kept
    /// attributes follow it too: `OpenInode::cached_attr`).
    epoch: AtomicU64,
    ttl: Duration,
}

impl AttrCache {
    pub fn new(entries: usize, ttl: Duration) -> AttrCache {
        AttrCache {
            map: Mutex::new(LruCache::sparse(NonZeroUsize::new(entries.max(1)).unwrap())),
            epoch: AtomicU64::new(0),
            ttl,
        }
    }

    /// The epoch a read starting now belongs to: taken before the query,
    /// so that a change racing with it keeps its answer out.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The cached attributes and their age, if read within the TTL and
    /// since the last change through this mount.
    pub fn get(&self, space: u32, ino: u64) -> Option<(Attr, Duration)> {
        if self.ttl.is_zero() {
            return None;
        }
        let epoch = self.epoch();
        let mut m = self.map.lock().unwrap();
        match m.get(&(space, ino)) {
            Some((at, e, a)) if *e == epoch && at.elapsed() < self.ttl => Some((*a, at.elapsed())),
            _ => None,
        }
    }

    /// Keeps attributes read by a query that started in `epoch`.
    pub fn put(&self, space: u32, ino: u64, epoch: u64, a: Attr) {
        if self.ttl.is_zero() || self.epoch() != epoch {
            return;
        }
        self.map
            .lock()
            .unwrap()
            .put((space, ino), (Instant::now(), epoch, a));
    }

    /// One file's data changed through this mount (an append): only its
    /// entry is stale.
    pub fn forget(&self, space: u32, ino: u64) {
        self.map.lock().unwrap().pop(&(space, ino));
    }

    /// Drops the entries past the TTL or from before the last change.
    pub fn sweep(&self) {
        let epoch = self.epoch();
        let mut m = self.map.lock().unwrap();
        super::xattr_cache::sweep_lru(&mut m, |(at, e, _)| *e != epoch || at.elapsed() >= self.ttl);
    }

    /// Something changed through this mount: nothing cached so far is used.
    pub fn changed(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ino: u64) -> Attr {
        Attr::synthetic_dir(ino, 2, 0)
    }

    #[test]
    fn a_change_or_the_ttl_ends_an_entry() {
        let c = AttrCache::new(10, Duration::from_millis(50));
        c.put(1, 2, c.epoch(), attr(2));
        assert_eq!(c.get(1, 2).map(|(a, _)| a.ino), Some(2));
        c.changed();
        assert!(c.get(1, 2).is_none());
        // A read that started before a change is not kept.
        let before = c.epoch();
        c.changed();
        c.put(1, 3, before, attr(3));
        assert!(c.get(1, 3).is_none());
        c.put(1, 4, c.epoch(), attr(4));
        std::thread::sleep(Duration::from_millis(60));
        assert!(c.get(1, 4).is_none());
    }

    #[test]
    fn a_sweep_keeps_only_valid_entries() {
        let c = AttrCache::new(10, Duration::from_secs(5));
        c.put(1, 2, c.epoch(), attr(2));
        c.changed();
        c.put(1, 3, c.epoch(), attr(3));
        c.sweep();
        assert_eq!(c.map.lock().unwrap().len(), 1);
        assert_eq!(c.get(1, 3).map(|(a, _)| a.ino), Some(3));
    }

    #[test]
    fn a_zero_ttl_keeps_nothing() {
        let c = AttrCache::new(10, Duration::ZERO);
        c.put(1, 2, c.epoch(), attr(2));
        assert!(c.get(1, 2).is_none());
    }
}
