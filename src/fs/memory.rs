//! What the daemon holds besides file data stays bounded over a long day:
//! the caches keyed by inode are LRUs with a bound whose expired entries are
//! swept each second and dropped when the kernel forgets the inode, and the
//! maps that grow with concurrency (open files, handles, deferred changes)
//! give their room back after a burst.

use std::collections::HashMap;
use std::hash::Hash;

use super::{Fs, Node};

/// Gives back the room of a map far larger than what it holds: hash maps
/// never shrink by themselves, so one burst (an `rsync` keeping thousands
/// of files open, a `chmod -R`) would keep its peak for the daemon's life.
pub(crate) fn shrink<K: Hash + Eq, V>(m: &mut HashMap<K, V>) {
    if m.capacity() > 64 && m.len() * 4 < m.capacity() {
        m.shrink_to(m.len() * 2);
    }
}

impl Fs {
    /// The kernel forgot `nlookup` lookups of an inode (FUSE FORGET: memory
    /// pressure, drop_caches, an unlink): what is cached about it for the
    /// TTL goes too, and a snapshot node's number once no lookup is left.
    pub fn forget(&self, ino: u64, nlookup: u64) {
        self.xattrs.forget(ino);
        match Node::from_ino(ino) {
            Node::Space(space, i) => self.attrs.drop_entry(space, i),
            Node::Snapshot(_) => self.forget_snapshot_node(ino, nlookup),
            _ => {}
        }
    }

    /// Each second (the reaper's tick): expired cache entries go, and maps
    /// give back what a burst left.
    pub(super) fn trim(&self) {
        self.xattrs.sweep();
        self.names.sweep();
        self.attrs.sweep();
        shrink(&mut self.open.lock().unwrap());
        self.handles.shrink();
        self.changes.shrink();
        shrink(&mut self.importing.lock().unwrap());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_give_back_the_room_of_a_burst() {
        let mut m: HashMap<u64, u64> = (0..100_000).map(|i| (i, i)).collect();
        let peak = m.capacity();
        m.retain(|k, _| *k < 1000);
        shrink(&mut m);
        assert!(m.capacity() < peak / 10, "{} of {peak}", m.capacity());
        assert_eq!(m.len(), 1000);
        assert!((0..1000).all(|k| m[&k] == k));
        // A map that is still fairly full, or small, is left alone.
        let cap = m.capacity();
        shrink(&mut m);
        assert_eq!(m.capacity(), cap);
        let mut small: HashMap<u64, u64> = HashMap::with_capacity(50);
        shrink(&mut small);
        assert!(small.capacity() >= 50);
    }
}
