//! A bounded LRU of file data extents, shared by every open file of a mount.
//!
//! Entries are keyed by a per-inode *generation*: when an open finds the file
//! changed by someone else (close-to-open), the generation moves on and the
//! stale entries simply age out. The byte total never exceeds the configured
//! capacity; it counts what an entry costs in memory (its buffer's capacity
//! and the entry itself), not only its length, so that many small files
//! (or extents grown by appends) cannot hold more than the capacity.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use crate::shard::EXTENT_SIZE as E;

type Key = (u32, u64, u64, u64); // (space, ino, generation, extent offset)

/// Marks a key's offset (a multiple of the extent size) as a partial
/// extent's (see [`DataCache::partial`]).
const PARTIAL: u64 = 1;

/// What identifies a version of a file's data: (mtime, ctime, size). ctime
/// is in it because tools restore mtime after rewriting a file (`cp -p`,
/// tar, rsync), while ctime cannot be set.
pub type Stamp = (i64, i64, u64);

/// What an inode's generation stands for: the stamp its cached data
/// belongs to and, when known, the file's change counter then (the
/// database's `inodes.chg`, which appends leave as it is).
type Version = (u64, Stamp, Option<u64>);

pub struct DataCache {
    inner: Mutex<Inner>,
    capacity: usize,
}

struct Inner {
    lru: LruCache<Key, Arc<Vec<u8>>>,
    bytes: usize,
    /// Bytes being fetched (see [`DataCache::reserve`]).
    reserved: usize,
    /// Per inode: its generation and what that stands for.
    gens: Gens,
    next_gen: u64,
    hits: u64,
    misses: u64,
}

/// What an entry costs besides its buffer's capacity: the LRU node, its
/// slot in the map, the `Arc` and the allocator's headers.
const ENTRY_COST: usize = 160;

/// The memory `data` holds in the cache.
fn cost(data: &Vec<u8>) -> usize {
    data.capacity() + ENTRY_COST
}

/// The most a file may have grown by appends elsewhere for its cached
/// extents below the old end to be kept (the extents in between are
/// dropped one by one under the cache's lock); past that, a new generation.
const MAX_KEPT_GROWTH: u64 = 64 * E;

/// Most inodes whose generation the cache remembers (about 50 bytes each).
/// An inode forgotten gets a new generation at its next open: its cached
/// extents (if any are left) age out and the kernel drops its pages, a
/// re-read, nothing else.
const MAX_GENS: usize = 1 << 16;

/// The inodes' generations, the recently used ones: two tables, the
/// current one and the one before it, which is dropped when the current
/// one is full (an approximate LRU in two flat tables: no allocation per
/// inode to pin heap pages long after the inode was last seen).
#[derive(Default)]
struct Gens {
    now: HashMap<(u32, u64), Version>,
    before: HashMap<(u32, u64), Version>,
}

impl Gens {
    fn get(&mut self, k: (u32, u64)) -> Option<Version> {
        if let Some(v) = self.now.get(&k) {
            return Some(*v);
        }
        let v = self.before.remove(&k)?;
        self.insert(k, v);
        Some(v)
    }

    fn insert(&mut self, k: (u32, u64), v: Version) {
        if self.now.len() >= MAX_GENS / 2 && !self.now.contains_key(&k) {
            self.before = std::mem::take(&mut self.now);
        }
        self.now.insert(k, v);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.now.len() + self.before.len()
    }
}

impl DataCache {
    pub fn new(capacity: usize) -> DataCache {
        DataCache {
            inner: Mutex::new(Inner {
                lru: LruCache::unbounded(),
                bytes: 0,
                reserved: 0,
                gens: Gens::default(),
                next_gen: 1,
                hits: 0,
                misses: 0,
            }),
            capacity,
        }
    }

    /// The generation for an inode whose current stamp is `stamp` and change
    /// counter `chg`, and whether cached data of it is still valid (the
    /// kernel may keep its page cache). A file that only grew by appends
    /// since (same counter, longer by at most [`MAX_KEPT_GROWTH`]) keeps its
    /// generation: only the
    /// extents from the old end on are dropped (the one holding it was
    /// cached shorter), and the kernel's pages go.
    pub fn generation_for(&self, space: u32, ino: u64, stamp: Stamp, chg: u64) -> (u64, bool) {
        let mut g = self.inner.lock().unwrap();
        match g.gens.get((space, ino)) {
            // (A counter not known stays unknown: this mount's own writes
            // left it so, and its cache is not known to match the new one.
            // A known one moved with the stamp unchanged, by a change of no
            // byte (the data moved to the object store), is taken.)
            Some((generation, s, c)) if s == stamp => {
                if c.is_some_and(|c| c != chg) {
                    g.gens.insert((space, ino), (generation, stamp, Some(chg)));
                }
                return (generation, true);
            }
            Some((generation, s, Some(c)))
                if c == chg && stamp.2 > s.2 && stamp.2 - s.2 <= MAX_KEPT_GROWTH =>
            {
                Self::drop_range(&mut g, (space, ino, generation), s.2, stamp.2);
                g.gens.insert((space, ino), (generation, stamp, Some(chg)));
                return (generation, false);
            }
            _ => {}
        }
        let generation = g.next_gen;
        g.next_gen += 1;
        g.gens.insert((space, ino), (generation, stamp, Some(chg)));
        (generation, false)
    }

    /// The file's first slot as cached (or its first bytes, see
    /// [`DataCache::partial`]), if it is, with the stamp and change counter
    /// its generation stands for (see `namespace::Known`).
    pub fn head(&self, space: u32, ino: u64) -> Option<(Stamp, u64, Arc<Vec<u8>>)> {
        let mut g = self.inner.lock().unwrap();
        let (generation, stamp, chg) = g.gens.get((space, ino))?;
        // Used: kept in the cache as a read would keep it.
        let data = match g.lru.get(&(space, ino, generation, 0)) {
            Some(d) => d.clone(),
            None => g.lru.get(&(space, ino, generation, PARTIAL))?.clone(),
        };
        Some((stamp, chg?, data))
    }

    /// Records that our own writes moved the file to `stamp` (cache still
    /// valid), and its change counter if known (an append's answer).
    pub fn restamp(
        &self,
        (space, ino, generation): (u32, u64, u64),
        stamp: Stamp,
        chg: Option<u64>,
    ) {
        let mut g = self.inner.lock().unwrap();
        g.gens.insert((space, ino), (generation, stamp, chg));
    }

    /// An append of ours landed with the file at change counter `chg`, and
    /// the file is now at `stamp`. If `generation` stands for that counter
    /// (only appends happened since), it goes on at `stamp`, and with
    /// `stale` the cached extents holding `[from, to)` are dropped (another
    /// mount's appends came before ours, so the extent that held the end we
    /// knew lacks them); true then. False, changing nothing, if the file
    /// changed otherwise, the counter is not known, or more than
    /// [`MAX_KEPT_GROWTH`] would have to be dropped.
    pub fn appended(
        &self,
        (space, ino, generation): (u32, u64, u64),
        chg: u64,
        stamp: Stamp,
        stale: Option<(u64, u64)>,
    ) -> bool {
        let mut g = self.inner.lock().unwrap();
        let Some((gen_, s, Some(c))) = g.gens.get((space, ino)) else {
            return false;
        };
        if gen_ != generation || c != chg {
            return false;
        }
        if let Some((from, to)) = stale {
            let from = from.min(s.2);
            if to.saturating_sub(from) > MAX_KEPT_GROWTH {
                return false;
            }
            Self::drop_range(&mut g, (space, ino, generation), from, to);
        }
        g.gens.insert((space, ino), (generation, stamp, Some(chg)));
        true
    }

    /// Drops the cached extents of a generation holding `[from, to)`: the
    /// file grew there. What each held is kept apart as a partial extent:
    /// reads below its end use it ([`DataCache::get_upto`]), a read past it
    /// fetches only the rest while only appends came ([`DataCache::partial`]).
    fn drop_range(g: &mut Inner, (space, ino, generation): (u32, u64, u64), from: u64, to: u64) {
        let mut ext = from - from % E;
        while ext < to {
            if let Some(v) = g.lru.pop(&(space, ino, generation, ext)) {
                // Replaces an older partial of it, if any.
                if let Some(old) = g.lru.put((space, ino, generation, ext | PARTIAL), v) {
                    g.bytes -= cost(&old);
                }
            }
            ext += E;
        }
    }

    /// The first bytes of extent `off` of a file that grew past them since
    /// they were cached (`generation` unchanged), with the change counter
    /// the generation stands for: a read asks only for the rows past them
    /// if the file is still at that counter (see `extents::extent_past`).
    pub fn partial(
        &self,
        space: u32,
        ino: u64,
        generation: u64,
        off: u64,
    ) -> Option<(Arc<Vec<u8>>, u64)> {
        let mut g = self.inner.lock().unwrap();
        let (current, _, chg) = g.gens.get((space, ino))?;
        if current != generation {
            return None;
        }
        let data = g.lru.get(&(space, ino, generation, off | PARTIAL))?.clone();
        Some((data, chg?))
    }

    /// A fresh generation: everything cached of the inode is stale. `chg`:
    /// the change counter it starts at, if known.
    pub fn invalidate(&self, space: u32, ino: u64, chg: Option<u64>) -> u64 {
        let mut g = self.inner.lock().unwrap();
        let generation = g.next_gen;
        g.next_gen += 1;
        g.gens
            .insert((space, ino), (generation, (i64::MIN, i64::MIN, 0), chg));
        generation
    }

    /// The cached extent at `off`, whole.
    pub fn get(&self, space: u32, ino: u64, generation: u64, off: u64) -> Option<Arc<Vec<u8>>> {
        self.get_upto((space, ino, generation), off, usize::MAX)
    }

    /// The cached extent at `off`, or, of one the file grew past since it
    /// was cached, its first bytes if they hold its first `upto` (they are
    /// the generation's as much as a whole extent is: a read below the old
    /// end needs nothing new).
    pub fn get_upto(
        &self,
        (space, ino, generation): (u32, u64, u64),
        off: u64,
        upto: usize,
    ) -> Option<Arc<Vec<u8>>> {
        let mut g = self.inner.lock().unwrap();
        let v = match g.lru.get(&(space, ino, generation, off)) {
            Some(v) => Some(v.clone()),
            None => g
                .lru
                .get(&(space, ino, generation, off | PARTIAL))
                .filter(|p| p.len() >= upto)
                .cloned(),
        };
        if v.is_some() {
            g.hits += 1;
            crate::metrics::global().cache_hits.inc();
        } else {
            g.misses += 1;
            crate::metrics::global().cache_misses.inc();
        }
        v
    }

    pub fn put(&self, space: u32, ino: u64, generation: u64, off: u64, data: Arc<Vec<u8>>) {
        if cost(&data) > self.capacity {
            return;
        }
        let mut g = self.inner.lock().unwrap();
        g.bytes += cost(&data);
        if let Some(old) = g.lru.put((space, ino, generation, off), data) {
            g.bytes -= cost(&old);
        }
        // The whole extent supersedes what was kept of it.
        if let Some(old) = g.lru.pop(&(space, ino, generation, off | PARTIAL)) {
            g.bytes -= cost(&old);
        }
        self.evict(&mut g);
    }

    /// Drops what is cached of extent `off`, whole or its first bytes.
    pub fn forget(&self, space: u32, ino: u64, generation: u64, off: u64) {
        let mut g = self.inner.lock().unwrap();
        for key in [off, off | PARTIAL] {
            if let Some(old) = g.lru.pop(&(space, ino, generation, key)) {
                g.bytes -= cost(&old);
            }
        }
    }

    /// Adds `data` at the end of a cached extent that holds exactly `at`
    /// bytes (an append of this mount): in place unless a reader holds the
    /// extent. Returns false, changing nothing, if the extent is not cached
    /// or is not `at` bytes long.
    pub fn extend(&self, (space, ino, generation, off): Key, at: usize, data: &[u8]) -> bool {
        let mut g = self.inner.lock().unwrap();
        let Some(v) = g.lru.get_mut(&(space, ino, generation, off)) else {
            return false;
        };
        if v.len() != at {
            return false;
        }
        let before = cost(v);
        Arc::make_mut(v).extend_from_slice(data);
        let after = cost(v);
        g.bytes = g.bytes + after - before;
        self.evict(&mut g);
        true
    }

    /// Drops the least recently used extents until the cache, with the
    /// bytes being fetched, fits its capacity (the newest entry stays).
    fn evict(&self, g: &mut Inner) {
        while g.bytes + g.reserved > self.capacity && g.lru.len() > 1 {
            if let Some((_, v)) = g.lru.pop_lru() {
                g.bytes -= cost(&v);
            }
        }
    }

    /// Room for `bytes` about to be fetched into the cache: they count
    /// against its capacity until the returned guard is dropped, so what is
    /// in flight and what is cached together stay within it.
    pub fn reserve(&self, bytes: usize) -> Reservation<'_> {
        let mut g = self.inner.lock().unwrap();
        g.reserved += bytes;
        self.evict(&mut g);
        Reservation { cache: self, bytes }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Drops extent `off`, which lacks bytes appended since it was cached,
    /// keeping what it holds as their first bytes (see
    /// [`DataCache::partial`]).
    pub fn grew(&self, space: u32, ino: u64, generation: u64, off: u64) {
        let mut g = self.inner.lock().unwrap();
        Self::drop_range(&mut g, (space, ino, generation), off, off + 1);
    }

    /// (bytes held, hits, misses)
    pub fn stats(&self) -> (usize, u64, u64) {
        let g = self.inner.lock().unwrap();
        (g.bytes, g.hits, g.misses)
    }
}

/// Bytes reserved by [`DataCache::reserve`], given back on drop.
pub struct Reservation<'a> {
    cache: &'a DataCache,
    bytes: usize,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.cache.inner.lock().unwrap().reserved -= self.bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A buffer that costs `bytes` in the cache.
    fn buf(bytes: usize) -> Arc<Vec<u8>> {
        Arc::new(vec![0; bytes - ENTRY_COST])
    }

    #[test]
    fn small_entries_count_what_they_cost() {
        let c = DataCache::new(100 * (ENTRY_COST + 10));
        for i in 0..1000 {
            c.put(1, i, 1, 0, Arc::new(vec![7; 10]));
        }
        assert_eq!(c.inner.lock().unwrap().lru.len(), 100);
        // An extent grown by appends counts its buffer's capacity.
        let c = DataCache::new(1 << 20);
        let mut v = Vec::with_capacity(4096);
        v.push(1);
        c.put(1, 1, 1, 0, Arc::new(v));
        assert_eq!(c.stats().0, 4096 + ENTRY_COST);
        assert!(c.extend((1, 1, 1, 0), 1, &[2; 5000]));
        let held = c.get(1, 1, 1, 0).unwrap().capacity();
        assert!(held >= 5001);
        assert_eq!(c.stats().0, held + ENTRY_COST);
        // Grown past by appends: kept apart as its first bytes, until the
        // whole extent is cached again.
        c.grew(1, 1, 1, 0);
        assert!(c.get(1, 1, 1, 0).is_none());
        assert!(c.partial(1, 1, 1, 0).is_none(), "no counter known");
        c.inner
            .lock()
            .unwrap()
            .gens
            .insert((1, 1), (1, (0, 0, 0), Some(9)));
        let (kept, chg) = c.partial(1, 1, 1, 0).unwrap();
        assert_eq!((kept.len(), chg), (5001, 9));
        assert_eq!(c.stats().0, held + ENTRY_COST);
        c.put(1, 1, 1, 0, Arc::new(Vec::new()));
        assert!(c.partial(1, 1, 1, 0).is_none());
        assert_eq!(c.stats().0, ENTRY_COST);
    }

    #[test]
    fn stays_within_capacity() {
        let c = DataCache::new(1000);
        for i in 0..100 {
            c.put(1, 1, 1, i * E, buf(300));
            assert!(c.stats().0 <= 1000);
        }
        assert!(c.get(1, 1, 1, 99 * E).is_some());
        assert!(c.get(1, 1, 1, 0).is_none());
    }

    #[test]
    fn bytes_being_fetched_count_against_the_capacity() {
        let c = DataCache::new(1000);
        for i in 0..3 {
            c.put(1, 1, 1, i * E, buf(300));
        }
        let room = c.reserve(500);
        assert_eq!(
            c.stats().0,
            300,
            "900 cached + 500 on the way: two had to go"
        );
        c.put(1, 1, 1, 3 * E, buf(300));
        assert!(c.get(1, 1, 1, 3 * E).is_some() && c.get(1, 1, 1, 2 * E).is_none());
        drop(room);
        c.put(1, 1, 1, 4 * E, buf(300));
        assert!(c.get(1, 1, 1, 3 * E).is_some() && c.get(1, 1, 1, 4 * E).is_some());
    }

    #[test]
    fn extend_adds_only_at_the_exact_end() {
        let c = DataCache::new(1000);
        c.put(1, 1, 1, 0, Arc::new(vec![1, 2]));
        let reader = c.get(1, 1, 1, 0).unwrap();
        assert!(!c.extend((1, 1, 1, 0), 3, &[9]), "a gap: not extended");
        assert!(!c.extend((1, 1, 1, 5), 0, &[9]), "not cached");
        assert!(c.extend((1, 1, 1, 0), 2, &[3, 4]));
        assert_eq!(*c.get(1, 1, 1, 0).unwrap(), vec![1, 2, 3, 4]);
        assert_eq!(*reader, vec![1, 2], "a reader's copy does not change");
        let held = c.get(1, 1, 1, 0).unwrap().capacity();
        assert_eq!(c.stats().0, held + ENTRY_COST);
    }

    #[test]
    fn generations_are_bounded_and_never_reused() {
        let c = DataCache::new(1000);
        let (first, _) = c.generation_for(1, 0, (1, 1, 1), 0);
        let mut last = first;
        for ino in 1..=MAX_GENS as u64 {
            let (g, valid) = c.generation_for(1, ino, (1, 1, 1), 0);
            assert!(!valid && g > last);
            last = g;
        }
        assert!(c.inner.lock().unwrap().gens.len() <= MAX_GENS);
        // The least recently used inode was forgotten: a new generation.
        let (again, valid) = c.generation_for(1, 0, (1, 1, 1), 0);
        assert!(!valid && again > last);
        // A recent one is remembered.
        assert_eq!(
            c.generation_for(1, MAX_GENS as u64, (1, 1, 1), 0),
            (last, true)
        );
    }

    #[test]
    fn an_inode_in_use_keeps_its_generation() {
        let mut g = Gens::default();
        g.insert((1, 0), (7, (1, 1, 1), None));
        for ino in 1..MAX_GENS as u64 * 2 {
            g.insert((1, ino), (ino, (1, 1, 1), None));
            // Asked for now and then: never forgotten.
            if ino % 1000 == 0 {
                assert_eq!(g.get((1, 0)), Some((7, (1, 1, 1), None)));
            }
            assert!(g.len() <= MAX_GENS);
        }
        assert_eq!(g.get((1, 0)), Some((7, (1, 1, 1), None)));
        assert_eq!(g.get((1, 1)), None);
    }

    #[test]
    fn generation_moves_when_stamp_changes() {
        let c = DataCache::new(1000);
        let (g1, valid) = c.generation_for(1, 2, (5, 5, 10), 0);
        assert!(!valid);
        assert_eq!(c.generation_for(1, 2, (5, 5, 10), 0), (g1, true));
        let (g2, valid) = c.generation_for(1, 2, (5, 6, 10), 0);
        assert!(!valid && g2 != g1);
    }

    /// Grown by appends only (same change counter, longer): the extents
    /// below the old end stay, the one holding it and later ones go.
    #[test]
    fn appends_elsewhere_keep_what_lies_below_the_old_end() {
        let c = DataCache::new(10 << 20);
        let (g, _) = c.generation_for(1, 2, (5, 5, 2 * E + 10), 7);
        for slot in [0, E, 2 * E] {
            c.put(1, 2, g, slot, Arc::new(vec![1; 10]));
        }
        // At an open: same counter, longer.
        assert_eq!(c.generation_for(1, 2, (6, 6, 3 * E), 7), (g, false));
        assert!(c.get(1, 2, g, 0).is_some() && c.get(1, 2, g, E).is_some());
        assert!(
            c.get(1, 2, g, 2 * E).is_none(),
            "the old end's extent stays"
        );
        assert_eq!(
            c.partial(1, 2, g, 2 * E).map(|p| (p.0.len(), p.1)),
            Some((10, 7))
        );
        // Another counter (rewritten), or shorter: a new generation.
        assert_ne!(c.generation_for(1, 2, (7, 7, 4 * E), 8).0, g);
        let (g, _) = c.generation_for(1, 3, (5, 5, E + 5), 7);
        assert_ne!(c.generation_for(1, 3, (6, 6, E), 7).0, g);

        // At an append of ours past the end we knew.
        let (g, _) = c.generation_for(1, 4, (5, 5, E + 5), 9);
        c.put(1, 4, g, 0, Arc::new(vec![1; 10]));
        c.put(1, 4, g, E, Arc::new(vec![1; 5]));
        let stale = Some((E + 5, E + 50));
        assert!(
            !c.appended((1, 4, g), 10, (6, 6, E + 50), stale),
            "other counter"
        );
        assert!(c.get(1, 4, g, E).is_some(), "nothing dropped");
        assert!(c.appended((1, 4, g), 9, (6, 6, E + 50), stale));
        assert!(c.get(1, 4, g, 0).is_some() && c.get(1, 4, g, E).is_none());
        // At the end we knew: nothing dropped, the stamp moves on.
        assert!(c.appended((1, 4, g), 9, (7, 7, E + 60), None));
        assert_eq!(c.generation_for(1, 4, (7, 7, E + 60), 9), (g, true));
        c.restamp((1, 4, g), (8, 8, E + 70), None);
        assert!(
            !c.appended((1, 4, g), 9, (9, 9, E + 80), None),
            "counter unknown"
        );
        // An open that finds the stamp our own write left keeps the counter
        // unknown: the cache is not known to match it.
        assert_eq!(c.generation_for(1, 4, (8, 8, E + 70), 9), (g, true));
        assert!(!c.appended((1, 4, g), 9, (9, 9, E + 80), None));

        // Grown by more than is worth dropping extent by extent.
        let (g, _) = c.generation_for(1, 5, (5, 5, 10), 3);
        let far = 10 + MAX_KEPT_GROWTH + 1;
        assert_ne!(c.generation_for(1, 5, (6, 6, far), 3).0, g);
        let (g, _) = c.generation_for(1, 6, (5, 5, 10), 3);
        assert!(!c.appended((1, 6, g), 3, (6, 6, far), Some((10, far))));

        // The counter moved, the stamp did not (the data went to the
        // object store): the cache stands, at the new counter.
        let (g, _) = c.generation_for(1, 7, (5, 5, 10), 3);
        c.put(1, 7, g, 0, Arc::new(vec![1; 10]));
        assert_eq!(c.generation_for(1, 7, (5, 5, 10), 4), (g, true));
        assert_eq!(c.head(1, 7).map(|h| h.1), Some(4));
    }
}
