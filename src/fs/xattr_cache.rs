//! A short-lived cache of each inode's extended attributes.
//!
//! `ls -l` asks for two xattrs of every entry and the kernel asks for
//! `security.capability` before every write; without this cache each is a
//! query. An inode's whole (usually empty) xattr list is loaded at once and
//! kept for the attribute TTL: changes made through this mount drop the
//! entry at once, changes made elsewhere are seen within the TTL, as for
//! other attributes.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lru::LruCache;

/// (name, value) pairs of one inode, sorted by name.
pub type Xattrs = Arc<Vec<(Vec<u8>, Vec<u8>)>>;

pub struct XattrCache {
    map: Mutex<LruCache<u64, (Instant, Xattrs)>>,
    ttl: Duration,
}

impl XattrCache {
    pub fn new(entries: usize, ttl: Duration) -> XattrCache {
        XattrCache {
            map: Mutex::new(LruCache::new(NonZeroUsize::new(entries.max(1)).unwrap())),
            ttl,
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
        self.map.lock().unwrap().put(ino, (Instant::now(), x));
    }

    /// Records that an inode has no xattrs (learnt from a directory listing).
    pub fn put_empty(&self, ino: u64) {
        self.put(ino, Arc::default());
    }

    pub fn forget(&self, ino: u64) {
        self.map.lock().unwrap().pop(&ino);
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
}
