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
use std::time::{Duration, Instant};

use lru::LruCache;

/// How many directories' names are kept.
pub const DIRS: usize = 256;

/// A directory with more names than this is not kept.
pub const NAMES: usize = 512;

/// How many TTLs names stay after their read, to tell a lookup that the
/// directory is worth reading again ([`Known::MissingBefore`]).
pub const KEPT_FOR: u32 = 30;

/// (when the read began, the names).
type Names = (Instant, HashSet<Vec<u8>>);

/// How many directories' last added names are remembered (see
/// [`DirNames::put`]).
const ADDS: usize = 4 * DIRS;

pub struct DirNames {
    kept: Mutex<Kept>,
    ttl: Duration,
}

struct Kept {
    names: LruCache<(u32, u64), Names>,
    /// Counts every name added through this mount.
    adds: u64,
    /// Per directory, the count at its last added name: a read of its
    /// names that began before is not kept (it may lack the name). Names
    /// added to other directories meanwhile do not matter.
    last_add: LruCache<(u32, u64), u64>,
    /// The largest count [`Kept::last_add`] forgot, taken for every
    /// directory it no longer holds.
    forgotten: u64,
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
    adds: u64,
}

impl DirNames {
    pub fn new(ttl: Duration) -> DirNames {
        DirNames {
            kept: Mutex::new(Kept {
                names: LruCache::new(NonZeroUsize::new(DIRS).unwrap()),
                adds: 0,
                last_add: LruCache::new(NonZeroUsize::new(ADDS).unwrap()),
                forgotten: 0,
            }),
            ttl,
        }
    }

    /// Taken before a read of a directory's names.
    pub fn began(&self) -> Began {
        let adds = self.kept.lock().unwrap().adds;
        Began {
            at: Instant::now(),
            adds,
        }
    }

    /// What is known of `name` in the directory.
    pub fn known(&self, space: u32, dir: u64, name: &[u8]) -> Known {
        let mut k = self.kept.lock().unwrap();
        match k.names.get(&(space, dir)) {
            Some((_, names)) if names.contains(name) => Known::Nothing,
            Some((at, _)) if at.elapsed() < self.ttl => Known::Missing(at.elapsed()),
            Some(_) => Known::MissingBefore,
            None => Known::Nothing,
        }
    }

    /// Keeps the names of a directory read whole since `began`, unless a
    /// name was added to it meanwhile (the read may lack it) or there are
    /// too many.
    pub fn put(&self, space: u32, dir: u64, began: Began, names: HashSet<Vec<u8>>) {
        if self.ttl.is_zero() || names.len() > NAMES {
            return;
        }
        let mut k = self.kept.lock().unwrap();
        let last = k.last_add.peek(&(space, dir)).copied();
        if last.unwrap_or(k.forgotten) <= began.adds {
            k.names.put((space, dir), (began.at, names));
        }
    }

    /// A directory this mount made (empty), before anything could be made
    /// in it: no name can have been added meanwhile.
    pub fn put_new(&self, space: u32, dir: u64, began: Began) {
        if !self.ttl.is_zero() {
            let names = HashSet::new();
            let mut k = self.kept.lock().unwrap();
            k.names.put((space, dir), (began.at, names));
        }
    }

    /// A change through this mount may give the directory `name`: called
    /// before it is sent.
    pub fn add(&self, space: u32, dir: u64, name: &[u8]) {
        let mut k = self.kept.lock().unwrap();
        k.adds += 1;
        let adds = k.adds;
        if let Some((other, at)) = k.last_add.push((space, dir), adds)
            && other != (space, dir)
        {
            k.forgotten = k.forgotten.max(at);
        }
        if let Some((_, names)) = k.names.get_mut(&(space, dir)) {
            names.insert(name.to_vec());
            if names.len() > NAMES {
                k.names.pop(&(space, dir));
            }
        }
    }

    /// A removal through this mount landed: the name is gone.
    pub fn remove(&self, space: u32, dir: u64, name: &[u8]) {
        let mut k = self.kept.lock().unwrap();
        if let Some((_, names)) = k.names.get_mut(&(space, dir)) {
            names.remove(name);
        }
    }

    /// Drops what was read longer ago than [`KEPT_FOR`] TTLs.
    pub fn sweep(&self) {
        let mut k = self.kept.lock().unwrap();
        let old: Vec<(u32, u64)> = k
            .names
            .iter()
            .filter(|(_, (at, _))| at.elapsed() >= self.ttl * KEPT_FOR)
            .map(|(key, _)| *key)
            .collect();
        for key in old {
            k.names.pop(&key);
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
        let d = DirNames::new(Duration::from_millis(50));
        assert!(!d.absent(1, 2, b"a"), "nothing known");
        d.put(1, 2, d.began(), set(&["a"]));
        assert!(!d.absent(1, 2, b"a"));
        assert!(d.absent(1, 2, b"b"));
        assert!(!d.absent(1, 3, b"b"), "another directory");
        assert!(!d.absent(2, 2, b"b"), "another space");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(d.known(1, 2, b"b"), Known::MissingBefore, "past the TTL");
        assert_eq!(d.known(1, 2, b"a"), Known::Nothing);
        d.sweep();
        assert_eq!(d.kept.lock().unwrap().names.len(), 1, "kept for a few TTLs");
        std::thread::sleep(Duration::from_millis(50) * KEPT_FOR);
        d.sweep();
        assert_eq!(d.kept.lock().unwrap().names.len(), 0);
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
        d.add(1, 6, b"z");
        d.put(1, 5, began, set(&[]));
        assert!(!d.absent(1, 5, b"x"));
        assert!(!d.absent(1, 5, b"y"), "nothing kept");
        // Names added to other directories meanwhile do not matter.
        let began = d.began();
        d.add(1, 6, b"w");
        d.put(1, 5, began, set(&["x"]));
        assert!(d.absent(1, 5, b"y"));
        assert!(!d.absent(1, 5, b"x"));
        // Nor does a directory's record forgotten before the read began;
        // one forgotten after it counts for every directory.
        let d = DirNames::new(Duration::from_secs(10));
        d.add(1, 5, b"x");
        for dir in 100..100 + ADDS as u64 {
            d.add(1, dir, b"n");
        }
        d.put(1, 5, d.began(), set(&["x"]));
        assert!(d.absent(1, 5, b"y"), "forgotten before the read");
        let began = d.began();
        d.add(1, 8, b"n");
        for dir in 10_000..10_000 + ADDS as u64 {
            d.add(1, dir, b"n");
        }
        d.put(1, 8, began, set(&[]));
        assert!(!d.absent(1, 8, b"y"), "forgotten after the read began");
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
