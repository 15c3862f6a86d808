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

/// When a read began, as [`AttrCache::put`] compares it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Stamp {
    epoch: u64,
    forgets: u64,
}

/// Names a lookup lately found absent, by (space, directory, name).
type Absent = LruCache<(u32, u64, Vec<u8>), (Instant, u64)>;

/// How many absent names are kept.
const ABSENT_NAMES: usize = 1024;

/// How long an absent name serves a create: the kernel's lookup comes
/// right before its create, but keeps a missing name for the entry TTL
/// and then sends the create alone, which must ask the database (another
/// mount may have made the name meanwhile).
const ABSENT_FOR: Duration = Duration::from_millis(50);

pub struct AttrCache {
    map: Mutex<LruCache<(u32, u64), Entry>>,
    /// When and in which epoch: a create of such a name right after
    /// (`open(O_CREAT)`: the kernel's lookup, then the create) need not ask
    /// again whether it is free (see [`AttrCache::take_absent`]).
    absent: Mutex<Absent>,
    /// Moves on with every change through this mount (the open files' kept
    /// attributes follow it too: `OpenInode::cached_attr`).
    epoch: AtomicU64,
    /// Moves on with every [`AttrCache::forget`] (an append): a read that
    /// began before one is not kept, whichever file it was about.
    forgets: AtomicU64,
    ttl: Duration,
}

impl AttrCache {
    pub fn new(entries: usize, ttl: Duration) -> AttrCache {
        AttrCache {
            map: Mutex::new(LruCache::sparse(NonZeroUsize::new(entries.max(1)).unwrap())),
            absent: Mutex::new(LruCache::new(NonZeroUsize::new(ABSENT_NAMES).unwrap())),
            epoch: AtomicU64::new(0),
            forgets: AtomicU64::new(0),
            ttl,
        }
    }

    /// The epoch a read starting now belongs to: taken before the query,
    /// so that a change racing with it keeps its answer out.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// What a read starting now must find unchanged to be kept (see
    /// [`AttrCache::put`]): the epoch, and the appends' forgets.
    pub fn stamp(&self) -> Stamp {
        Stamp {
            epoch: self.epoch(),
            forgets: self.forgets.load(Ordering::Acquire),
        }
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

    /// Keeps attributes read by a query that started at `stamp`, unless a
    /// change or an append through this mount came since.
    pub fn put(&self, space: u32, ino: u64, stamp: Stamp, a: Attr) {
        if self.ttl.is_zero() {
            return;
        }
        let mut m = self.map.lock().unwrap();
        if self.stamp() == stamp {
            m.put((space, ino), (Instant::now(), stamp.epoch, a));
        }
    }

    /// One file's data changed through this mount (an append): only its
    /// entry is stale.
    pub fn forget(&self, space: u32, ino: u64) {
        let mut m = self.map.lock().unwrap();
        self.forgets.fetch_add(1, Ordering::AcqRel);
        m.pop(&(space, ino));
    }

    /// The kernel forgot an inode: its entry goes (nothing changed).
    pub fn drop_entry(&self, space: u32, ino: u64) {
        self.map.lock().unwrap().pop(&(space, ino));
    }

    /// Drops the entries past the TTL or from before the last change.
    pub fn sweep(&self) {
        let epoch = self.epoch();
        let mut m = self.map.lock().unwrap();
        super::xattr_cache::sweep_lru(&mut m, |(at, e, _)| *e != epoch || at.elapsed() >= self.ttl);
        drop(m);
        let mut absent = self.absent.lock().unwrap();
        super::xattr_cache::sweep_lru(&mut absent, |(at, e)| {
            *e != epoch || at.elapsed() >= self.ttl
        });
    }

    /// A lookup that started at `stamp` found `name` absent from `dir`,
    /// in what was read at `read`.
    pub fn put_absent(&self, space: u32, dir: u64, name: &[u8], stamp: Stamp, read: Instant) {
        if self.ttl.is_zero() || self.epoch() != stamp.epoch || read.elapsed() >= ABSENT_FOR {
            return;
        }
        self.absent
            .lock()
            .unwrap()
            .put((space, dir, name.to_vec()), (read, stamp.epoch));
    }

    /// The attributes of `dir`, kept, if a lookup found `name` absent from
    /// it since the last change through this mount, just now:
    /// what a create's own check would have read (the database decides
    /// at the create's commit, as after that check).
    pub fn take_absent(&self, space: u32, dir: u64, name: &[u8]) -> Option<Attr> {
        let epoch = self.epoch();
        let (at, e) = self
            .absent
            .lock()
            .unwrap()
            .pop(&(space, dir, name.to_vec()))?;
        if e != epoch || at.elapsed() >= ABSENT_FOR.min(self.ttl) {
            return None;
        }
        self.get(space, dir).map(|(a, _)| a)
    }

    /// Something changed through this mount: nothing cached so far is used.
    pub fn changed(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// A change through this mount, begun in epoch `before`, whose
    /// outcome is known without asking: the directories `dirs` got the
    /// times `t` and nothing else of theirs changed, and the inodes of
    /// `known` (a new file, or rows the change read locked and wrote) have
    /// those attributes now. [`AttrCache::changed`], and what is known is
    /// kept if nothing else changed meanwhile (which could have changed it
    /// too): a directory of `dirs` only if it was kept before, and as old
    /// as it was. Returns the epoch it is kept in.
    pub fn changed_knowing(
        &self,
        before: u64,
        space: u32,
        (dirs, t): (&[u64], i64),
        known: &[(u64, Attr)],
    ) -> Option<u64> {
        let mut m = self.map.lock().unwrap();
        let after = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        if after != before + 1 || self.ttl.is_zero() {
            return None;
        }
        for &dir in dirs {
            if let Some((at, e, d)) = m.peek(&(space, dir)).copied()
                && e == before
                && at.elapsed() < self.ttl
            {
                let d = Attr {
                    mtime: t,
                    ctime: t,
                    ..d
                };
                m.put((space, dir), (at, after, d));
            }
        }
        for &(ino, a) in known {
            m.put((space, ino), (Instant::now(), after, a));
        }
        Some(after)
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
        c.put(1, 2, c.stamp(), attr(2));
        assert_eq!(c.get(1, 2).map(|(a, _)| a.ino), Some(2));
        c.changed();
        assert!(c.get(1, 2).is_none());
        // A read that started before a change is not kept, nor one that
        // started before an append (of any file).
        let before = c.stamp();
        c.changed();
        c.put(1, 3, before, attr(3));
        assert!(c.get(1, 3).is_none());
        let before = c.stamp();
        c.forget(1, 9);
        c.put(1, 3, before, attr(3));
        assert!(c.get(1, 3).is_none());
        // The kernel forgetting an inode changes nothing.
        let before = c.stamp();
        c.drop_entry(1, 9);
        c.put(1, 3, before, attr(3));
        assert!(c.get(1, 3).is_some());
        c.put(1, 4, c.stamp(), attr(4));
        std::thread::sleep(Duration::from_millis(60));
        assert!(c.get(1, 4).is_none());
    }

    #[test]
    fn a_known_outcome_is_kept_only_if_nothing_else_changed() {
        let c = AttrCache::new(10, Duration::from_secs(5));
        let before = c.epoch();
        c.put(1, 2, c.stamp(), attr(2));
        c.put(1, 8, c.stamp(), attr(8));
        assert_eq!(
            c.changed_knowing(before, 1, (&[2], 77), &[(3, attr(3))]),
            Some(before + 1)
        );
        assert_eq!(c.get(1, 3).map(|(a, _)| a.ino), Some(3));
        let (dir, _) = c.get(1, 2).unwrap();
        assert_eq!((dir.ino, dir.mtime, dir.ctime), (2, 77, 77));
        // Inodes not named are not kept.
        assert!(c.get(1, 8).is_none());
        // A rename: both directories.
        let before = c.epoch();
        c.put(1, 8, c.stamp(), attr(8));
        assert!(c.changed_knowing(before, 1, (&[2, 8], 80), &[]).is_some());
        assert_eq!(c.get(1, 2).map(|(a, _)| a.mtime), Some(80));
        assert_eq!(c.get(1, 8).map(|(a, _)| a.ctime), Some(80));
        // A directory not kept before is not made up.
        let before = c.epoch();
        assert!(
            c.changed_knowing(before, 1, (&[9], 77), &[(4, attr(4))])
                .is_some()
        );
        assert!(c.get(1, 9).is_none());
        // Another change began meanwhile: its effect is not known here.
        let before = c.epoch();
        c.changed();
        assert_eq!(
            c.changed_knowing(before, 1, (&[2], 78), &[(5, attr(5))]),
            None
        );
        assert!(c.get(1, 5).is_none() && c.get(1, 2).is_none());
        // And one after it ends what was kept.
        let before = c.epoch();
        assert!(
            c.changed_knowing(before, 1, (&[2], 79), &[(6, attr(6))])
                .is_some()
        );
        c.changed();
        assert!(c.get(1, 6).is_none());
    }

    #[test]
    fn an_absent_name_answers_a_create_once_until_a_change() {
        let c = AttrCache::new(10, Duration::from_secs(5));
        let e = c.stamp();
        c.put(1, 2, e, attr(2));
        c.put_absent(1, 2, b"x", e, Instant::now());
        assert_eq!(c.take_absent(1, 2, b"x").map(|a| a.ino), Some(2));
        assert!(c.take_absent(1, 2, b"x").is_none());
        // Not on what was read longer ago.
        let long_ago = Instant::now() - ABSENT_FOR;
        c.put_absent(1, 2, b"w", e, long_ago);
        assert!(c.take_absent(1, 2, b"w").is_none());
        // Not without the directory's attributes, nor after a change.
        c.put_absent(1, 3, b"x", e, Instant::now());
        assert!(c.take_absent(1, 3, b"x").is_none());
        c.put_absent(1, 2, b"y", e, Instant::now());
        c.changed();
        c.put(1, 2, c.stamp(), attr(2));
        assert!(c.take_absent(1, 2, b"y").is_none());
        // A lookup that began before a change is not kept.
        c.put_absent(1, 2, b"z", e, Instant::now());
        assert!(c.take_absent(1, 2, b"z").is_none());
    }

    #[test]
    fn a_sweep_keeps_only_valid_entries() {
        let c = AttrCache::new(10, Duration::from_secs(5));
        c.put(1, 2, c.stamp(), attr(2));
        c.changed();
        c.put(1, 3, c.stamp(), attr(3));
        c.sweep();
        assert_eq!(c.map.lock().unwrap().len(), 1);
        assert_eq!(c.get(1, 3).map(|(a, _)| a.ino), Some(3));
    }

    #[test]
    fn a_zero_ttl_keeps_nothing() {
        let c = AttrCache::new(10, Duration::ZERO);
        c.put(1, 2, c.stamp(), attr(2));
        assert!(c.get(1, 2).is_none());
    }
}
