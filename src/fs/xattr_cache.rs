//! A short-lived cache of each inode's extended attributes.
//!
//! `ls -l` asks for two xattrs of every entry and the kernel asks for
//! `security.capability` before every write; without this cache each is a
//! query. An inode's whole (usually empty) xattr list is loaded at once and
//! kept for the attribute TTL: changes made through this mount drop the
//! entry at once, changes made elsewhere are seen within the TTL, as for
//! other attributes.
//!
//! Memory: expired entries are swept each second ([`XattrCache::sweep`]),
//! so a listing of many files (readdirplus records each entry) holds memory
//! only for the TTL; inodes without xattrs (nearly all) share one empty list.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lru::LruCache;

/// (name, value) pairs of one inode, sorted by name.
pub type Xattrs = Arc<Vec<(Vec<u8>, Vec<u8>)>>;

pub struct XattrCache {
    map: Mutex<LruCache<u64, (Instant, Xattrs)>>,
    ttl: Duration,
    /// The list of every inode without xattrs.
    empty: Xattrs,
}

impl XattrCache {
    pub fn new(entries: usize, ttl: Duration) -> XattrCache {
        XattrCache {
            // Sparse: the map grows with what is cached, not to the bound.
            map: Mutex::new(LruCache::sparse(NonZeroUsize::new(entries.max(1)).unwrap())),
            ttl,
            empty: Arc::default(),
        }
    }

    pub fn get(&self, ino: u64) -> Option<Xattrs> {
        let mut m = self.map.lock().unwrap();
        match m.get(&ino) {
            Some((at, x)) if at.elapsed() < self.ttl => Some(x.clone()),
            _ => None,
        }
    }

    pub fn put(&self, ino: u64, x: Xattrs) {
        let x = if x.is_empty() { self.empty.clone() } else { x };
        self.map.lock().unwrap().put(ino, (Instant::now(), x));
    }

    /// Records that an inode has no xattrs (learnt from a directory listing).
    pub fn put_empty(&self, ino: u64) {
        self.put(ino, self.empty.clone());
    }

    pub fn forget(&self, ino: u64) {
        self.map.lock().unwrap().pop(&ino);
    }

    /// Drops the expired entries, and the room a burst left.
    pub fn sweep(&self) {
        let mut m = self.map.lock().unwrap();
        sweep_lru(&mut m, |(at, _)| at.elapsed() >= self.ttl);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().unwrap().len()
    }
}

/// Drops the entries `expired` says are, then gives back the room of a
/// map far larger than what is left (hash maps never shrink by themselves).
pub(super) fn sweep_lru<K: std::hash::Hash + Eq, V>(
    m: &mut LruCache<K, V>,
    expired: impl Fn(&V) -> bool,
) {
    if m.is_empty() {
        return;
    }
    let before = m.len();
    m.retain(|_, v| !expired(v));
    // LruCache has no shrink_to_fit, but a resize shrinks its map: to one
    // less and back, which evicts nothing (at most a quarter is left).
    if m.len() * 4 < before && before > 1024 {
        let cap = m.cap();
        if let Some(one_less) = NonZeroUsize::new(cap.get() - 1) {
            m.resize(one_less);
            m.resize(cap);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_can_be_forgotten() {
        let c = XattrCache::new(10, Duration::from_millis(50));
        c.put_empty(1);
        assert!(c.get(1).is_some_and(|x| x.is_empty()));
        c.forget(1);
        assert!(c.get(1).is_none());
        c.put_empty(2);
        std::thread::sleep(Duration::from_millis(60));
        assert!(c.get(2).is_none());
    }

    #[test]
    fn a_sweep_drops_expired_entries_only() {
        let c = XattrCache::new(100_000, Duration::from_millis(50));
        for ino in 0..5000 {
            c.put_empty(ino);
        }
        std::thread::sleep(Duration::from_millis(60));
        c.put(7, Arc::new(vec![(b"user.a".to_vec(), b"1".to_vec())]));
        c.sweep();
        assert_eq!(c.len(), 1, "only the fresh entry is left");
        assert_eq!(c.get(7).unwrap()[0].1, b"1");
        // The bound is what it was.
        assert_eq!(c.map.lock().unwrap().cap().get(), 100_000);
    }

    #[test]
    fn inodes_without_xattrs_share_one_list() {
        let c = XattrCache::new(10, Duration::from_secs(5));
        c.put_empty(1);
        c.put(2, Arc::default());
        assert!(Arc::ptr_eq(&c.get(1).unwrap(), &c.get(2).unwrap()));
    }
}
