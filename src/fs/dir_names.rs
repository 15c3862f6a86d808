//! Every name of a small directory, as read lately: a lookup of a name
//! not among them is answered "no such file" without a query.
//!
//! rsync into a mount asks for each file's name (the generator's `lstat`)
//! and for its temporary name (the kernel's lookup before the create):
//! two queries per file that find nothing. A directory this mount made,
//! or listed whole, is known; each name a change through this mount may
//! add is added *before* the change is sent (so the set is never short of
//! a name this mount made), and a name is taken out only once its removal
//! landed. What another mount does is seen within the entry TTL, as the
//! kernel's own cache of a missing name promises: a set is used for the
//! TTL from the moment its read began.
//!
//! Memory: at most [`DIRS`] directories of at most [`NAMES`] names each.

use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lru::LruCache;

/// How many directories' names are kept.
pub const DIRS: usize = 256;

/// A directory with more names than this is not kept.
pub const NAMES: usize = 512;

/// How many TTLs names stay after their read, to tell a lookup that the
/// directory is worth reading again ([`Known::MissingBefore`]).
pub const KEPT_FOR: u32 = 4;

/// (when the read began, the names).
type Names = (Instant, HashSet<Vec<u8>>);

pub struct DirNames {
    map: Mutex<LruCache<(u32, u64), Names>>,
    /// Moves on with every name added or set dropped: a read that began
    /// before one is not kept (it may lack the name).
    changes: AtomicU64,
    ttl: Duration,
}

/// What a directory's names kept say of one name.
#[derive(Debug, PartialEq)]
pub enum Known {
    /// Not among them, read this long ago (within the TTL).
    Missing(Duration),
    /// Not among them, but read longer ago than the TTL: the directory is
    /// small and busy, its names are worth reading again.
    MissingBefore,
    /// Among them, or no names kept: the database is asked.
    Nothing,
}

/// When a read of a directory's names began (see [`DirNames::put`]).
#[derive(Clone, Copy)]
pub struct Began {
    at: Instant,
    changes: u64,
}

impl DirNames {
    pub fn new(ttl: Duration) -> DirNames {
        DirNames {
            map: Mutex::new(LruCache::new(NonZeroUsize::new(DIRS).unwrap())),
            changes: AtomicU64::new(0),
            ttl,
        }
    }

    /// Taken before a read of a directory's names.
    pub fn began(&self) -> Began {
        Began {
            at: Instant::now(),
            changes: self.changes.load(Ordering::Acquire),
        }
    }

    /// What is known of `name` in the directory.
    pub fn known(&self, space: u32, dir: u64, name: &[u8]) -> Known {
        let mut m = self.map.lock().unwrap();
        match m.get(&(space, dir)) {
            Some((_, names)) if names.contains(name) => Known::Nothing,
            Some((at, _)) if at.elapsed() < self.ttl => Known::Missing(at.elapsed()),
            Some(_) => Known::MissingBefore,
            None => Known::Nothing,
        }
    }

    /// Keeps the names of a directory read whole since `began`, unless a
    /// name was added meanwhile (the read may lack it) or there are too
    /// many.
    pub fn put(&self, space: u32, dir: u64, began: Began, names: HashSet<Vec<u8>>) {
        if self.ttl.is_zero() || names.len() > NAMES {
            return;
        }
        let mut m = self.map.lock().unwrap();
        if self.changes.load(Ordering::Acquire) == began.changes {
            m.put((space, dir), (began.at, names));
        }
    }

    /// A directory this mount made (empty), before anything could be made
    /// in it: no name can have been added meanwhile.
    pub fn put_new(&self, space: u32, dir: u64, began: Began) {
        if !self.ttl.is_zero() {
            let names = HashSet::new();
            self.map
                .lock()
                .unwrap()
                .put((space, dir), (began.at, names));
        }
    }

    /// A change through this mount may give the directory `name`: called
    /// before it is sent.
    pub fn add(&self, space: u32, dir: u64, name: &[u8]) {
        let mut m = self.map.lock().unwrap();
        self.changes.fetch_add(1, Ordering::AcqRel);
        if let Some((_, names)) = m.get_mut(&(space, dir)) {
            names.insert(name.to_vec());
            if names.len() > NAMES {
                m.pop(&(space, dir));
            }
        }
    }

    /// A removal through this mount landed: the name is gone.
    pub fn remove(&self, space: u32, dir: u64, name: &[u8]) {
        if let Some((_, names)) = self.map.lock().unwrap().get_mut(&(space, dir)) {
            names.remove(name);
        }
    }

    /// Drops what was read longer ago than [`KEPT_FOR`] TTLs.
    pub fn sweep(&self) {
        let mut m = self.map.lock().unwrap();
        let old: Vec<(u32, u64)> = m
            .iter()
            .filter(|(_, (at, _))| at.elapsed() >= self.ttl * KEPT_FOR)
            .map(|(k, _)| *k)
            .collect();
        for k in old {
            m.pop(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl DirNames {
        fn absent(&self, space: u32, dir: u64, name: &[u8]) -> bool {
            matches!(self.known(space, dir, name), Known::Missing(_))
        }
    }

    fn set(names: &[&str]) -> HashSet<Vec<u8>> {
        names.iter().map(|n| n.as_bytes().to_vec()).collect()
    }

    #[test]
    fn a_name_outside_a_fresh_set_is_absent() {
        let d = DirNames::new(Duration::from_millis(100));
        assert!(!d.absent(1, 2, b"a"), "nothing known");
        d.put(1, 2, d.began(), set(&["a"]));
        assert!(!d.absent(1, 2, b"a"));
        assert!(d.absent(1, 2, b"b"));
        assert!(!d.absent(1, 3, b"b"), "another directory");
        assert!(!d.absent(2, 2, b"b"), "another space");
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(d.known(1, 2, b"b"), Known::MissingBefore, "past the TTL");
        assert_eq!(d.known(1, 2, b"a"), Known::Nothing);
        d.sweep();
        assert_eq!(d.map.lock().unwrap().len(), 1, "kept for a few TTLs");
        std::thread::sleep(Duration::from_millis(300));
        d.sweep();
        assert_eq!(d.map.lock().unwrap().len(), 0);
    }

    #[test]
    fn an_added_name_is_never_absent_and_a_removed_one_is() {
        let d = DirNames::new(Duration::from_secs(10));
        d.put(1, 2, d.began(), set(&[]));
        d.add(1, 2, b"new");
        assert!(!d.absent(1, 2, b"new"));
        d.remove(1, 2, b"new");
        assert!(d.absent(1, 2, b"new"));
        // A read begun before a name was added may lack it: not kept.
        let began = d.began();
        d.add(1, 5, b"x");
        d.put(1, 5, began, set(&[]));
        assert!(!d.absent(1, 5, b"x"));
        assert!(!d.absent(1, 5, b"y"), "nothing kept");
    }

    #[test]
    fn too_many_names_are_not_kept() {
        let d = DirNames::new(Duration::from_secs(10));
        let many: HashSet<Vec<u8>> = (0..=NAMES).map(|i| i.to_string().into_bytes()).collect();
        d.put(1, 2, d.began(), many);
        assert!(!d.absent(1, 2, b"x"));
        let full: HashSet<Vec<u8>> = (0..NAMES).map(|i| i.to_string().into_bytes()).collect();
        d.put(1, 2, d.began(), full);
        assert!(d.absent(1, 2, b"x"));
        d.add(1, 2, b"one more");
        assert!(!d.absent(1, 2, b"x"), "grown past the bound: dropped");
    }

    #[test]
    fn nothing_is_kept_without_a_ttl() {
        let d = DirNames::new(Duration::ZERO);
        d.put(1, 2, d.began(), set(&[]));
        assert!(!d.absent(1, 2, b"x"));
    }
}
