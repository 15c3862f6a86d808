//! What this mount defers, and shows at once: creates of regular files
//! (written with the file's first flush, see [`super::data::PendingCreate`]) and
//! changes of mode, owner or times only (see [`Fs::setattr`]). Both are
//! committed before another operation in the space needs the database to
//! see them; attribute changes also at fsync, and within a second (the
//! reaper's tick).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::data::OpenInode;
use super::meta::{self, AttrChange};
use super::{Attr, Fs, FsResult, Node};
use crate::cluster::Route;

/// Inode numbers a mount reserves at once for deferred creates.
const ID_BLOCK: u64 = 64;

/// Attribute changes not committed yet, by (space, inode).
#[derive(Default)]
pub(super) struct Changes {
    map: Mutex<HashMap<(u32, u64), AttrChange>>,
    /// Held while changes are committed: one committer at a time, so an
    /// older snapshot never lands after a newer one.
    order: Mutex<()>,
}

impl Changes {
    /// The uncommitted change of an inode.
    pub(super) fn get(&self, space: u32, i: u64) -> Option<AttrChange> {
        self.map.lock().unwrap().get(&(space, i)).copied()
    }

    /// Keeps `change` of an inode, after any earlier one not committed yet.
    pub(super) fn defer(&self, space: u32, i: u64, change: AttrChange) {
        let mut changes = self.map.lock().unwrap();
        let merged = match changes.get(&(space, i)) {
            Some(earlier) => earlier.then(change),
            None => change,
        };
        changes.insert((space, i), merged);
    }

    /// A write after a deferred utimes sets mtime anew, as it would on disk.
    pub(super) fn written(&self, space: u32, i: u64) {
        if let Some(c) = self.map.lock().unwrap().get_mut(&(space, i)) {
            c.mtime = None;
        }
    }

    pub(super) fn shrink(&self) {
        super::memory::shrink(&mut self.map.lock().unwrap());
    }

    /// Drops committed changes, unless a newer change replaced them meanwhile.
    fn forget(&self, space: u32, committed: &[(u64, AttrChange)]) {
        let mut changes = self.map.lock().unwrap();
        for (i, c) in committed {
            if changes.get(&(space, *i)) == Some(c) {
                changes.remove(&(space, *i));
            }
        }
    }
}

impl Fs {
    /// A fresh inode number for a deferred create, from the mount's reserved block.
    pub(super) fn next_id(&self, shard: &Route, space: u32) -> FsResult<u64> {
        loop {
            {
                let mut ids = self.reserved_ids.lock().unwrap();
                let (next, end) = ids.entry(space).or_insert((0, 0));
                if *next < *end {
                    *next += 1;
                    return Ok(*next - 1);
                }
            }
            // Reserve outside the lock: a slow node must not stall other spaces.
            let first = meta::reserve_ids(shard, space, ID_BLOCK)?;
            let mut ids = self.reserved_ids.lock().unwrap();
            let (next, end) = ids.entry(space).or_insert((0, 0));
            if *next >= *end {
                (*next, *end) = (first, first + ID_BLOCK);
            }
        }
    }

    /// Commits this mount's deferred creates and attribute changes in
    /// `space`, so a namespace change sees them in the database. A failed
    /// create stays with the file (its close reports it), failed changes are
    /// kept for the next attempt.
    pub fn commit_pending(&self, space: u32) {
        self.commit_creates(space);
        self.commit_changes(Some(space));
    }

    /// Commits every deferred create of `space` in this mount (the rows of
    /// files not flushed yet), so the database has them.
    pub(super) fn commit_creates(&self, space: u32) {
        if self.pending.load(Ordering::Acquire) == 0 {
            return;
        }
        for n in self.pending_nodes(space) {
            // A commit moves the attribute epoch itself. (No append is
            // queued behind a pending create: the first append through an
            // open file commits it and waits for its own commit.)
            if let Err(e) = n.flush_buffers(&self.cache) {
                log::warn!(
                    "space {space}: committing a new file failed: errno {}",
                    e.errno()
                );
            }
        }
    }

    /// Tells the attribute cache that something changed through this mount
    /// (see [`super::attr_cache`]).
    pub fn attrs_changed(&self) {
        self.attrs.changed();
    }

    /// Attributes as this mount sees them: with its uncommitted changes.
    ///
    /// `a` was read from the database after [`super::data::ticket`]
    /// `asked`. A lookup or readdir tells the kernel its size: an open
    /// file's read path learns it too (see [`OpenInode::size_to_tell`]).
    pub(super) fn with_changes(&self, mut a: Attr, asked: u64) -> Attr {
        if let Node::Space(s, i) = Node::from_ino(a.ino) {
            if let Some(c) = self.changes.get(s, i) {
                c.apply(&mut a);
            }
            // And with the size of data this mount has buffered.
            let open = self.open.lock().unwrap().get(&(s, i)).cloned();
            if let Some(o) = open {
                a.size = o.size_to_tell(&self.cache, a.size, asked);
            }
        }
        a
    }

    /// Commits deferred attribute changes, of one space or of all; one
    /// transaction per space. A failure is logged and the changes kept for
    /// the next attempt.
    pub fn commit_changes(&self, space: Option<u32>) {
        self.flush_changed_files(space);
        let _order = self.changes.order.lock().unwrap();
        let mut by_space: HashMap<u32, Vec<(u64, AttrChange)>> = HashMap::new();
        for ((s, i), c) in self.snapshot_changes(space) {
            by_space.entry(s).or_default().push((i, c));
        }
        for (s, list) in by_space {
            let r = self
                .shard_after_import(s)
                .and_then(|shard| meta::apply_changes(&shard, s, &list));
            self.attrs.changed();
            match r {
                Ok(()) => self.changes.forget(s, &list),
                Err(e) => log::warn!(
                    "space {s}: committing attribute changes failed: errno {}",
                    e.errno()
                ),
            }
        }
    }

    /// Runs `change`, a namespace change in `space` that commits the space's
    /// deferred attribute changes it is given in its own transaction; they
    /// are forgotten when it succeeds, after `end` ended the attribute
    /// epoch (see [`super::attr_cache`]), knowing the outcome and what was
    /// carried.
    pub(super) fn commit_changes_with<T>(
        &self,
        space: u32,
        change: impl FnOnce(&[(u64, AttrChange)]) -> FsResult<T>,
        end: impl FnOnce(&FsResult<T>, &[(u64, AttrChange)]),
    ) -> FsResult<T> {
        self.flush_changed_files(Some(space));
        let order = self.changes.order.lock().unwrap();
        let changes: Vec<(u64, AttrChange)> = self
            .snapshot_changes(Some(space))
            .into_iter()
            .map(|((_, i), c)| (i, c))
            .collect();
        let _order = if changes.is_empty() {
            drop(order);
            None
        } else {
            Some(order)
        };
        let r = change(&changes);
        end(&r, &changes);
        if r.is_ok() {
            self.changes.forget(space, &changes);
        }
        r
    }

    /// The deferred changes (of one space or all) that may be committed now:
    /// not those of a file whose create is still pending. They stay in the
    /// map — and visible to getattr — until their commit succeeded.
    fn snapshot_changes(&self, space: Option<u32>) -> Vec<((u32, u64), AttrChange)> {
        let changes = self.changes.map.lock().unwrap();
        if changes.is_empty() {
            return Vec::new();
        }
        let open = self.open.lock().unwrap();
        changes
            .iter()
            .filter(|((s, _), _)| space.is_none_or(|x| x == *s))
            .filter(|(k, _)| !open.get(k).is_some_and(|n| n.is_pending()))
            .map(|(k, c)| (*k, *c))
            .collect()
    }

    /// Flushes the buffered data of files (of one space or all) whose
    /// attributes have deferred changes, before those commit: the data's
    /// commit sets mtime, and a utimes that came after the write (tar:
    /// write, utimes, chmod, setxattr, then close) must land after it, as
    /// on a local disk. Rare: a file still being written whose times or
    /// mode changed. A failed flush is reported at close or fsync. Appends
    /// queued behind their writes are not waited for: they came after the
    /// change (a change waits for those queued before it, see
    /// `Fs::setattr`), and their write dropped its mtime (`written`).
    fn flush_changed_files(&self, space: Option<u32>) {
        let keys: Vec<(u32, u64)> = self
            .changes
            .map
            .lock()
            .unwrap()
            .keys()
            .filter(|(s, _)| space.is_none_or(|x| x == *s))
            .copied()
            .collect();
        if keys.is_empty() {
            return;
        }
        let nodes: Vec<Arc<OpenInode>> = {
            let open = self.open.lock().unwrap();
            keys.iter().filter_map(|k| open.get(k).cloned()).collect()
        };
        for n in nodes {
            if n.local_size().is_some() && !n.has_queued_appends() {
                let _ = n.flush_buffers(&self.cache);
            }
        }
    }
}
