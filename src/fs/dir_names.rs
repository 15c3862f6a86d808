//! Every name of a small directory this mount made, as read lately: a
//! lookup of a name not among them is answered "no such file" without a
//! query.
//!
//! rsync into a mount asks for each file's name (the generator's `lstat`)
//! and for its temporary name (the kernel's lookup before the create):
//! two queries per file that find nothing. A directory this mount made is
//! known (empty); each name a change through this mount may add is added
//! *before* the change is sent (so the set is never short of a name this
//! mount made), no read of the directory's names is kept while such a
//! change runs or if one ran since the read began, nor while a file
//! created here in it waits for its commit, and a name is taken out only
//! once its removal landed. What another mount does is seen within the
//! entry TTL, as the kernel's own cache of a missing name promises: a set
//! is used for the TTL from the moment its read began, and once past it
//! the next lookup of a name not among them reads them again (one query
//! instead of one per name). Directories this mount did not make are not
//! kept: a log directory other mounts write to (the space servers of a
//! volume on several hosts) shows their new files at once, as before.
//!
//! Memory: at most [`DIRS`] directories of at most [`NAMES`] names each.

use std::collections::{HashMap, HashSet};
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
    /// Per directory, the changes that may add a name and have not ended
    /// ([`Adding`]): no read of its names is kept meanwhile.
    in_flight: HashMap<(u32, u64), u32>,
}

impl Kept {
    fn note_add(&mut self, key: (u32, u64)) {
        self.adds += 1;
        if let Some((other, at)) = self.last_add.push(key, self.adds)
            && other != key
        {
            self.forgotten = self.forgotten.max(at);
        }
    }
}

/// A change that may add a name to a directory, from before it is sent
/// until it ended, landed or not (see [`DirNames::add`]).
pub struct Adding<'a> {
    names: &'a DirNames,
    key: (u32, u64),
}

impl Drop for Adding<'_> {
    fn drop(&mut self) {
        let mut k = self.names.kept.lock().unwrap();
        // A read that began while the change ran may lack the name.
        k.note_add(self.key);
        if let Some(n) = k.in_flight.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                k.in_flight.remove(&self.key);
            }
        }
    }
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

impl Began {
    /// How long ago the read began.
    pub fn age(&self) -> Duration {
        self.at.elapsed()
    }
}

impl DirNames {
    pub fn new(ttl: Duration) -> DirNames {
        DirNames {
            kept: Mutex::new(Kept {
                names: LruCache::new(NonZeroUsize::new(DIRS).unwrap()),
                adds: 0,
                last_add: LruCache::new(NonZeroUsize::new(ADDS).unwrap()),
                forgotten: 0,
                in_flight: HashMap::new(),
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
    /// change that may add a name to it ran meanwhile or still runs (the
    /// read may lack the name) or there are too many. The caller sees to
    /// it that no file created here in it waits for its commit.
    pub fn put(&self, space: u32, dir: u64, began: Began, names: HashSet<Vec<u8>>) {
        if self.ttl.is_zero() || names.len() > NAMES {
            return;
        }
        let mut k = self.kept.lock().unwrap();
        let last = k.last_add.peek(&(space, dir)).copied();
        if last.unwrap_or(k.forgotten) <= began.adds && !k.in_flight.contains_key(&(space, dir)) {
            k.names.put((space, dir), (began.at, names));
        }
    }

    /// Drops what is kept of a directory (it grew too large).
    pub fn forget(&self, space: u32, dir: u64) {
        self.kept.lock().unwrap().names.pop(&(space, dir));
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
    /// before it is sent, the change held until it ended.
    #[must_use = "held until the change ended"]
    pub fn add(&self, space: u32, dir: u64, name: &[u8]) -> Adding<'_> {
        let key = (space, dir);
        let mut k = self.kept.lock().unwrap();
        k.note_add(key);
        *k.in_flight.entry(key).or_default() += 1;
        if let Some((_, names)) = k.names.get_mut(&key) {
            names.insert(name.to_vec());
            if names.len() > NAMES {
                k.names.pop(&key);
            }
        }
        Adding { names: self, key }
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

    /// A read that began `ago`.
    fn began_ago(d: &DirNames, ago: Duration) -> Began {
        Began {
            at: Instant::now() - ago,
            ..d.began()
        }
    }

    #[test]
    fn a_name_outside_a_fresh_set_is_absent() {
        let ttl = Duration::from_secs(10);
        let d = DirNames::new(ttl);
        assert!(!d.absent(1, 2, b"a"), "nothing known");
        d.put(1, 2, d.began(), set(&["a"]));
        assert!(!d.absent(1, 2, b"a"));
        assert!(d.absent(1, 2, b"b"));
        assert!(!d.absent(1, 3, b"b"), "another directory");
        assert!(!d.absent(2, 2, b"b"), "another space");
        // Read long ago (a TTL of 1 s: the clock counts from boot).
        let d = DirNames::new(Duration::from_secs(1));
        let ttl = Duration::from_secs(1);
        d.put(1, 2, began_ago(&d, ttl), set(&["a"]));
        assert_eq!(d.known(1, 2, b"b"), Known::MissingBefore, "past the TTL");
        assert_eq!(d.known(1, 2, b"a"), Known::Nothing);
        d.sweep();
        assert_eq!(d.kept.lock().unwrap().names.len(), 1, "kept for a few TTLs");
        d.put(1, 2, began_ago(&d, ttl * KEPT_FOR), set(&["a"]));
        d.sweep();
        assert_eq!(d.kept.lock().unwrap().names.len(), 0);
    }

    #[test]
    fn an_added_name_is_never_absent_and_a_removed_one_is() {
        let d = DirNames::new(Duration::from_secs(10));
        d.put(1, 2, d.began(), set(&[]));
        drop(d.add(1, 2, b"new"));
        assert!(!d.absent(1, 2, b"new"));
        d.remove(1, 2, b"new");
        assert!(d.absent(1, 2, b"new"));
        // A read begun before a name was added may lack it: not kept.
        let began = d.began();
        drop(d.add(1, 5, b"x"));
        drop(d.add(1, 6, b"z"));
        d.put(1, 5, began, set(&[]));
        assert!(!d.absent(1, 5, b"x"));
        assert!(!d.absent(1, 5, b"y"), "nothing kept");
        // Names added to other directories meanwhile do not matter.
        let began = d.began();
        drop(d.add(1, 6, b"w"));
        d.put(1, 5, began, set(&["x"]));
        assert!(d.absent(1, 5, b"y"));
        assert!(!d.absent(1, 5, b"x"));
        // Nor does a directory's record forgotten before the read began;
        // one forgotten after it counts for every directory.
        let d = DirNames::new(Duration::from_secs(10));
        drop(d.add(1, 5, b"x"));
        for dir in 100..100 + ADDS as u64 {
            drop(d.add(1, dir, b"n"));
        }
        d.put(1, 5, d.began(), set(&["x"]));
        assert!(d.absent(1, 5, b"y"), "forgotten before the read");
        let began = d.began();
        drop(d.add(1, 8, b"n"));
        for dir in 10_000..10_000 + ADDS as u64 {
            drop(d.add(1, dir, b"n"));
        }
        d.put(1, 8, began, set(&[]));
        assert!(!d.absent(1, 8, b"y"), "forgotten after the read began");
    }

    #[test]
    fn no_read_is_kept_while_a_change_may_add_a_name() {
        let d = DirNames::new(Duration::from_secs(10));
        let adding = d.add(1, 9, b"x");
        d.put(1, 9, d.began(), set(&[]));
        assert!(!d.absent(1, 9, b"x"), "kept while the change runs");
        let began = d.began();
        drop(adding);
        d.put(1, 9, began, set(&[]));
        assert!(!d.absent(1, 9, b"y"), "a read begun while it ran");
        d.put(1, 9, d.began(), set(&["x"]));
        assert!(d.absent(1, 9, b"y"));
        // Two changes at once: kept only once both ended.
        let (a, b) = (d.add(1, 10, b"p"), d.add(1, 10, b"q"));
        drop(a);
        d.put(1, 10, d.began(), set(&["p"]));
        assert!(!d.absent(1, 10, b"y"));
        drop(b);
        d.put(1, 10, d.began(), set(&["p", "q"]));
        assert!(d.absent(1, 10, b"y"));
        // Notes of one directory replace each other: nothing forgotten.
        assert_eq!(d.kept.lock().unwrap().forgotten, 0);
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
        drop(d.add(1, 2, b"one more"));
        assert!(!d.absent(1, 2, b"x"), "grown past the bound: dropped");
    }

    #[test]
    fn nothing_is_kept_without_a_ttl() {
        let d = DirNames::new(Duration::ZERO);
        d.put(1, 2, d.began(), set(&[]));
        assert!(!d.absent(1, 2, b"x"));
    }
}
