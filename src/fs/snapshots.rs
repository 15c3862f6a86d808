//! The snapshots' tree, read-only: `/.snapshots/<name>/<volume>/<space>/…`
//! shows each space as it was at its snapshot's moment (see
//! `shard::snapshot`). `/.snapshots` is not listed in the root (so an rsync
//! of the whole mount does not copy every snapshot), only found by name, as
//! ZFS's hidden `.zfs`.
//!
//! Node numbers: this mount hands them out from [`SNAPSHOTS_INO`] on, one
//! per (snapshot, space, inode), so hard links in a snapshot share one, and
//! takes them back when the kernel forgets them (lookup counts). A
//! snapshot never changes: its data may stay in the kernel's page cache.
//!
//! Every change gets `EROFS` (see [`Fs::refuse_in_snapshot`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use super::namespace::Listing;
use super::{Attr, Error, Fs, FsResult, Node, Opened};
use crate::cluster::SnapshotRow;
use crate::shard::EXTENT_SIZE;
use crate::shard::extents::Span;
use crate::shard::inode::SNAPSHOTS_INO;
use crate::shard::snapshot::{self, At, SnapInode};

/// What a node of the snapshots' tree names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum SnapNode {
    /// `/.snapshots`
    Top,
    /// `/.snapshots/<name>`
    Snapshot(u64),
    /// `/.snapshots/<name>/<volume>`
    Volume(u64, u32),
    /// An inode of a space in snapshot `.0` (1: the space's directory).
    Inode(u64, At, u64),
}

/// Node numbers handed out, with the kernel's lookup count of each.
#[derive(Default)]
struct Ids {
    by_node: HashMap<SnapNode, u32>,
    by_id: HashMap<u32, Entry>,
    /// Entries with no lookup and no pin (see [`Ids::drop_uncounted`]).
    uncounted: usize,
    next: u32,
}

struct Entry {
    node: SnapNode,
    /// Lookups the kernel holds.
    count: u64,
    /// Kept for the snapshot's life: a file with several links keeps its
    /// number (rsync -H, find -samefile) even while the kernel forgets it.
    pinned: bool,
}

impl Entry {
    fn loose(&self) -> bool {
        self.count == 0 && !self.pinned
    }
}

impl Ids {
    fn node(&self, id: u32) -> Option<SnapNode> {
        if id == 0 {
            return Some(SnapNode::Top);
        }
        self.by_id.get(&id).map(|e| e.node)
    }

    /// The number of `n`, handed out if new; `counted`: the kernel will
    /// count a lookup of it (an entry in a reply).
    fn id(&mut self, n: SnapNode, counted: bool) -> u32 {
        if n == SnapNode::Top {
            return 0;
        }
        let id = match self.by_node.get(&n) {
            Some(id) => *id,
            None => {
                if self.uncounted >= UNCOUNTED_LIMIT {
                    self.drop_uncounted();
                }
                let id = loop {
                    self.next = if self.next >= (1 << 31) - 1 {
                        1
                    } else {
                        self.next + 1
                    };
                    if !self.by_id.contains_key(&self.next) {
                        break self.next;
                    }
                };
                self.by_node.insert(n, id);
                self.by_id.insert(
                    id,
                    Entry {
                        node: n,
                        count: 0,
                        pinned: false,
                    },
                );
                self.uncounted += 1;
                id
            }
        };
        if counted && let Some(e) = self.by_id.get_mut(&id) {
            if e.loose() {
                self.uncounted -= 1;
            }
            e.count += 1;
        }
        id
    }

    fn pin(&mut self, id: u32) {
        if let Some(e) = self.by_id.get_mut(&id)
            && !e.pinned
        {
            if e.loose() {
                self.uncounted -= 1;
            }
            e.pinned = true;
        }
    }

    /// Unpins the numbers of snapshots no longer in `live`.
    fn unpin_gone(&mut self, live: &std::collections::HashSet<u64>) {
        let gone = |n: &SnapNode| match n {
            SnapNode::Inode(snap, ..) | SnapNode::Snapshot(snap) | SnapNode::Volume(snap, _) => {
                !live.contains(snap)
            }
            SnapNode::Top => false,
        };
        let ids: Vec<u32> = self
            .by_id
            .iter()
            .filter(|(_, e)| e.pinned && gone(&e.node))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let e = self.by_id.get_mut(&id).expect("listed above");
            e.pinned = false;
            if e.count == 0 {
                let node = e.node;
                self.by_id.remove(&id);
                self.by_node.remove(&node);
            }
        }
    }

    /// Numbers the kernel holds no lookup of (given in a plain readdir, or
    /// as a `..`) are only used in passing: dropped when many.
    fn drop_uncounted(&mut self) {
        let by_node = &mut self.by_node;
        self.by_id.retain(|_, e| {
            let keep = !e.loose();
            if !keep {
                by_node.remove(&e.node);
            }
            keep
        });
        self.uncounted = 0;
    }

    /// The kernel dropped `n` lookups of `id`.
    fn forget(&mut self, id: u32, n: u64) {
        if let Some(e) = self.by_id.get_mut(&id) {
            let was_loose = e.loose();
            e.count = e.count.saturating_sub(n);
            if e.count == 0 && !e.pinned {
                let node = e.node;
                self.by_id.remove(&id);
                self.by_node.remove(&node);
                if was_loose {
                    self.uncounted -= 1;
                }
            }
        }
        if self.by_id.len() < self.by_id.capacity() / 4 {
            self.by_id.shrink_to_fit();
            self.by_node.shrink_to_fit();
        }
    }
}

/// Loose node numbers (see [`Ids::drop_uncounted`]) held at most.
const UNCOUNTED_LIMIT: usize = 1 << 16;

/// A file of a snapshot open for reading.
struct SnapFile {
    snap: u64,
    at: At,
    inode: SnapInode,
}

/// Handles of snapshot files carry this bit (the others never reach it).
const FH_BIT: u64 = 1 << 63;

#[derive(Default)]
pub(super) struct Snapshots {
    ids: Mutex<Ids>,
    catalog: RwLock<Option<(Instant, Arc<Vec<SnapshotRow>>)>>,
    files: Mutex<HashMap<u64, Arc<SnapFile>>>,
    next_fh: AtomicU64,
}

pub(super) fn is_snapshot_fh(fh: u64) -> bool {
    fh & FH_BIT != 0
}

impl Fs {
    /// A change asked of a node of the snapshots' tree.
    pub(super) fn refuse_in_snapshot(&self, ino: u64) -> FsResult<()> {
        match Node::from_ino(ino) {
            Node::Snapshot(_) => Err(Error::EROFS),
            _ => Ok(()),
        }
    }

    /// The snapshots, from a view at most `admin_ttl` old; only the ready ones.
    fn catalog(&self, fresh: bool) -> FsResult<Arc<Vec<SnapshotRow>>> {
        let s = &self.snapshots;
        if !fresh
            && let Some((at, c)) = &*s.catalog.read().unwrap()
            && at.elapsed() < self.cfg.admin_ttl
        {
            return Ok(c.clone());
        }
        let rows = self
            .cluster
            .snapshots()
            .map_err(super::admin_view::admin_failed)?;
        let c = Arc::new(
            rows.into_iter()
                .filter(SnapshotRow::ready)
                .collect::<Vec<_>>(),
        );
        let live = c.iter().map(|s| s.id).collect();
        s.ids.lock().unwrap().unpin_gone(&live);
        *s.catalog.write().unwrap() = Some((Instant::now(), c.clone()));
        Ok(c)
    }

    fn snapshot(&self, id: u64) -> FsResult<SnapshotRow> {
        self.catalog(false)?
            .iter()
            .find(|s| s.id == id)
            .cloned()
            .ok_or(Error::ENOENT)
    }

    fn snap_node(&self, n: u32) -> FsResult<SnapNode> {
        self.snapshots
            .ids
            .lock()
            .unwrap()
            .node(n)
            .ok_or(Error::ENOENT)
    }

    fn snap_ino(&self, n: SnapNode, counted: bool) -> u64 {
        SNAPSHOTS_INO + u64::from(self.snapshots.ids.lock().unwrap().id(n, counted))
    }

    /// The kernel forgot `nlookup` lookups of node `ino` (see `Fs::forget`).
    pub(super) fn forget_snapshot_node(&self, ino: u64, nlookup: u64) {
        if let Node::Snapshot(n) = Node::from_ino(ino) {
            self.snapshots.ids.lock().unwrap().forget(n, nlookup);
        }
    }

    /// An entry of a readdirplus reply that did not fit: the kernel did
    /// not count it as a lookup.
    pub fn not_sent(&self, ino: u64) {
        self.forget_snapshot_node(ino, 1);
    }

    /// Runs a read of the space at `at`, then makes sure the snapshot was
    /// not let go meanwhile (its kept rows may be half deleted): `ESTALE`.
    fn held<T>(
        &self,
        at: At,
        read: impl FnOnce(&crate::cluster::Route) -> crate::shard::ShardResult<T>,
    ) -> FsResult<T> {
        let route = self.router.route(at.space);
        let v = read(&route)?;
        if !snapshot::held(&route, at)? {
            return Err(Error::ESTALE);
        }
        Ok(v)
    }

    /// `/.snapshots` itself, found by name in the root.
    pub(super) fn lookup_snapshots_dir(&self) -> FsResult<Attr> {
        self.snap_attr(SnapNode::Top, true)
    }

    fn snap_attr(&self, n: SnapNode, counted: bool) -> FsResult<Attr> {
        let dir = |t: i64| Attr::synthetic_dir(self.snap_ino(n, counted), 2, t * 1_000_000_000);
        match n {
            SnapNode::Top => {
                let t = self
                    .catalog(false)?
                    .iter()
                    .map(|s| s.created)
                    .max()
                    .unwrap_or(0);
                Ok(dir(t))
            }
            SnapNode::Snapshot(id) | SnapNode::Volume(id, _) => {
                let s = self.snapshot(id)?;
                let mut a = dir(s.created);
                a.mode = libc::S_IFDIR | 0o555;
                Ok(a)
            }
            SnapNode::Inode(_, at, ino) => {
                let i = self.held(at, |r| snapshot::inode(r, at, ino))?;
                Ok(self.inode_attr(n, &i, counted))
            }
        }
    }

    fn inode_attr(&self, n: SnapNode, i: &SnapInode, counted: bool) -> Attr {
        let mut a = i.attr;
        let mut ids = self.snapshots.ids.lock().unwrap();
        let id = ids.id(n, counted);
        if a.nlink > 1 && !a.is_dir() {
            ids.pin(id);
        }
        a.ino = SNAPSHOTS_INO + u64::from(id);
        a
    }

    pub(super) fn snapshot_getattr(&self, n: u32) -> FsResult<Attr> {
        self.snap_attr(self.snap_node(n)?, false)
    }

    pub(super) fn snapshot_lookup(&self, parent: u32, name: &[u8]) -> FsResult<Attr> {
        let text = std::str::from_utf8(name).map_err(|_| Error::ENOENT)?;
        match self.snap_node(parent)? {
            SnapNode::Top => {
                let find = |c: &[SnapshotRow]| c.iter().find(|s| s.name == text).map(|s| s.id);
                let id = match find(&self.catalog(false)?) {
                    Some(id) => id,
                    // Taken since this view was read?
                    None => find(&self.catalog(true)?).ok_or(Error::ENOENT)?,
                };
                self.snap_attr(SnapNode::Snapshot(id), true)
            }
            SnapNode::Snapshot(id) => {
                let s = self.snapshot(id)?;
                let vol = self
                    .view()?
                    .volumes
                    .iter()
                    .find(|v| v.name == text)
                    .map(|v| v.id)
                    .ok_or(Error::ENOENT)?;
                if !s.spaces.iter().any(|p| p.volume == vol) {
                    return Err(Error::ENOENT);
                }
                self.snap_attr(SnapNode::Volume(id, vol), true)
            }
            SnapNode::Volume(id, vol) => {
                let space = crate::cluster::parse_space_id(text).ok_or(Error::ENOENT)?;
                let at = self.snap_at(id, space, Some(vol))?;
                self.snap_attr(SnapNode::Inode(id, at, 1), true)
            }
            SnapNode::Inode(id, at, dir) => {
                let i = self.held(at, |r| snapshot::lookup(r, at, dir, name))?;
                let Node::Space(_, ino) = Node::from_ino(i.attr.ino) else {
                    return Err(Error::ENOENT);
                };
                Ok(self.inode_attr(SnapNode::Inode(id, at, ino), &i, true))
            }
        }
    }

    /// Space `space`'s moment in snapshot `id` (in volume `vol` if given).
    fn snap_at(&self, id: u64, space: u32, vol: Option<u32>) -> FsResult<At> {
        let s = self.snapshot(id)?;
        let p = s
            .spaces
            .iter()
            .find(|p| p.space == space && vol.is_none_or(|v| v == p.volume))
            .ok_or(Error::ENOENT)?;
        Ok(At {
            space,
            moment: p.moment.ok_or(Error::ENOENT)?,
        })
    }

    /// Entries after `offset`, as [`Fs::readdir`]; `plus`: the kernel
    /// counts a lookup of each entry (readdirplus).
    pub(super) fn snapshot_readdir(
        &self,
        ino: u64,
        n: u32,
        offset: u64,
        limit: usize,
        plus: bool,
    ) -> FsResult<Listing> {
        let node = self.snap_node(n)?;
        let entry = |n: SnapNode| self.snap_ino(n, plus);
        match node {
            SnapNode::Top => {
                let mut out = self.dots(ino, offset, crate::shard::inode::ROOT_INO);
                for (i, s) in self
                    .catalog(false)?
                    .iter()
                    .enumerate()
                    .skip(offset.saturating_sub(2) as usize)
                {
                    let mut a = Attr::synthetic_dir(0, 2, s.created * 1_000_000_000);
                    a.mode = libc::S_IFDIR | 0o555;
                    a.ino = entry(SnapNode::Snapshot(s.id));
                    out.push((i as u64 + 3, s.name.clone().into_bytes(), a));
                }
                Ok(out)
            }
            SnapNode::Snapshot(id) => {
                let s = self.snapshot(id)?;
                let mut out = self.dots(ino, offset, SNAPSHOTS_INO);
                let mut vols: Vec<u32> = s.spaces.iter().map(|p| p.volume).collect();
                vols.sort_unstable();
                vols.dedup();
                let view = self.view()?;
                for v in vols.into_iter().filter(|v| u64::from(*v) + 2 > offset) {
                    let Some(vol) = view.volumes.iter().find(|x| x.id == v) else {
                        continue;
                    };
                    let mut a = Attr::synthetic_dir(0, 2, s.created * 1_000_000_000);
                    a.mode = libc::S_IFDIR | 0o555;
                    a.ino = entry(SnapNode::Volume(id, v));
                    out.push((u64::from(v) + 2, vol.name.clone().into_bytes(), a));
                }
                Ok(out)
            }
            SnapNode::Volume(id, vol) => {
                let s = self.snapshot(id)?;
                let parent = self.snap_ino(SnapNode::Snapshot(id), false);
                let mut out = self.dots(ino, offset, parent);
                let mut spaces: Vec<_> = s.spaces.iter().filter(|p| p.volume == vol).collect();
                spaces.sort_unstable_by_key(|p| p.space);
                for p in spaces
                    .into_iter()
                    .filter(|p| u64::from(p.space) + 2 > offset)
                    .take(limit)
                {
                    // From the row in hand: no lookup of the snapshot per space.
                    let Some(moment) = p.moment else {
                        continue;
                    };
                    let at = At {
                        space: p.space,
                        moment,
                    };
                    let node = SnapNode::Inode(id, at, 1);
                    match self.held(at, |r| snapshot::inode(r, at, 1)) {
                        Ok(i) => out.push((
                            u64::from(p.space) + 2,
                            p.space.to_string().into_bytes(),
                            self.inode_attr(node, &i, plus),
                        )),
                        Err(e) => log::warn!("snapshot {}: space {}: {e}", s.name, p.space),
                    }
                }
                Ok(out)
            }
            SnapNode::Inode(id, at, dir) => {
                let mut out = Vec::new();
                if offset < 2 {
                    let parent = if dir == 1 {
                        let vol = self
                            .snapshot(id)?
                            .spaces
                            .iter()
                            .find(|p| p.space == at.space)
                            .map(|p| p.volume)
                            .ok_or(Error::ENOENT)?;
                        self.snap_ino(SnapNode::Volume(id, vol), false)
                    } else {
                        let p = self.held(at, |r| snapshot::parent_of(r, at, dir))?;
                        self.snap_ino(SnapNode::Inode(id, at, p), false)
                    };
                    out.extend(self.dots(ino, offset, parent));
                }
                let after = offset.saturating_sub(2);
                let page = self.held(at, |r| snapshot::list(r, at, dir, after, limit))?;
                for (seq, name, i) in page {
                    let Node::Space(_, child) = Node::from_ino(i.attr.ino) else {
                        continue;
                    };
                    out.push((
                        seq + 2,
                        name,
                        self.inode_attr(SnapNode::Inode(id, at, child), &i, plus),
                    ));
                }
                Ok(out)
            }
        }
    }

    pub(super) fn snapshot_readlink(&self, n: u32) -> FsResult<Vec<u8>> {
        let SnapNode::Inode(_, at, ino) = self.snap_node(n)? else {
            return Err(Error::EINVAL);
        };
        self.held(at, |r| snapshot::inode(r, at, ino))?
            .target
            .ok_or(Error::EINVAL)
    }

    pub(super) fn snapshot_xattrs(&self, n: u32) -> FsResult<Vec<(Vec<u8>, Vec<u8>)>> {
        match self.snap_node(n)? {
            SnapNode::Inode(_, at, ino) => self.held(at, |r| snapshot::xattrs(r, at, ino)),
            _ => Ok(Vec::new()),
        }
    }

    /// Opens a file of a snapshot for reading (a write: `EROFS`).
    pub(super) fn snapshot_open(&self, n: u32, flags: i32) -> FsResult<Opened> {
        if flags & (libc::O_ACCMODE | libc::O_TRUNC) != libc::O_RDONLY {
            return Err(Error::EROFS);
        }
        let SnapNode::Inode(snap, at, ino) = self.snap_node(n)? else {
            return Err(Error::EISDIR);
        };
        let inode = self.held(at, |r| snapshot::inode(r, at, ino))?;
        let fh = FH_BIT | self.snapshots.next_fh.fetch_add(1, Ordering::Relaxed);
        self.snapshots
            .files
            .lock()
            .unwrap()
            .insert(fh, Arc::new(SnapFile { snap, at, inode }));
        Ok(Opened {
            fh,
            keep_cache: true,
            direct: false,
            changing: false,
        })
    }

    /// `SEEK_DATA` / `SEEK_HOLE` in an open snapshot file: all data (a
    /// snapshot's holes are not worth a query).
    pub(super) fn snapshot_seek(&self, fh: u64, offset: u64, data: bool) -> FsResult<u64> {
        let size = self.snapshot_file(fh)?.inode.attr.size;
        match (offset < size, data) {
            (false, _) => Err(Error::ENXIO),
            (true, true) => Ok(offset),
            (true, false) => Ok(size),
        }
    }

    fn snapshot_file(&self, fh: u64) -> FsResult<Arc<SnapFile>> {
        let files = self.snapshots.files.lock().unwrap();
        files.get(&fh).cloned().ok_or(Error::EBADF)
    }

    pub(super) fn snapshot_release(&self, fh: u64) {
        self.snapshots.files.lock().unwrap().remove(&fh);
    }

    /// Reads `[off, off+len)` of an open snapshot file.
    pub(super) fn snapshot_read(&self, fh: u64, off: u64, len: u32) -> FsResult<Vec<u8>> {
        let f = self.snapshot_file(fh)?;
        let size = f.inode.attr.size;
        let end = (off + u64::from(len)).min(size);
        if off >= end {
            return Ok(Vec::new());
        }
        let first = off - off % EXTENT_SIZE;
        let last = end.div_ceil(EXTENT_SIZE) * EXTENT_SIZE;
        let failed = |e: String| {
            super::error::failed(format!(
                "snapshot {} space {} inode {}: {e}",
                f.snap,
                f.at.space,
                f.inode.attr.ino & 0xffff_ffff
            ))
        };
        let mut out = vec![0u8; (end - off) as usize];
        match self.held(f.at, |r| snapshot::span(r, f.at, &f.inode, first, last))? {
            Span::Extents(rows) => {
                for (o, d) in rows {
                    copy_into(&mut out, off, o, &d);
                }
            }
            Span::Object { host, key, size } => {
                let store = self
                    .cluster
                    .object_store(host)
                    .map_err(|e| failed(format!("S3 host {host}: {e:#}")))?;
                let data = store
                    .get_range_pieces(&key, off, end.min(size) - off, out.len().max(1))
                    .map_err(|e| failed(e.to_string()))?;
                let mut at = off;
                for d in data {
                    copy_into(&mut out, off, at, &d);
                    at += d.len() as u64;
                }
            }
            Span::Disk { path, size, mtime } => {
                let file = crate::disk_tier::DiskFile::new(&path, size, mtime);
                let data = crate::disk_tier::read_span(&file, off, end)
                    .map_err(|e| failed(e.to_string()))?;
                copy_into(&mut out, off, off, &data);
            }
        }
        Ok(out)
    }
}

/// Copies the part of `data` (at file offset `at`) that falls in `out`
/// (at file offset `off`).
fn copy_into(out: &mut [u8], off: u64, at: u64, data: &[u8]) {
    let end = off + out.len() as u64;
    let from = at.max(off);
    let to = (at + data.len() as u64).min(end);
    if from < to {
        out[(from - off) as usize..(to - off) as usize]
            .copy_from_slice(&data[(from - at) as usize..(to - at) as usize]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_reused_once_forgotten() {
        let mut ids = Ids::default();
        let a = SnapNode::Snapshot(7);
        let id = ids.id(a, true);
        assert_eq!(ids.id(a, true), id);
        assert_eq!(ids.id(a, false), id);
        assert_eq!(ids.node(id), Some(a));
        ids.forget(id, 1);
        assert_eq!(ids.node(id), Some(a));
        ids.forget(id, 1);
        assert_eq!(ids.node(id), None);
        assert_eq!(ids.id(SnapNode::Top, true), 0);
        assert_eq!(ids.node(0), Some(SnapNode::Top));
    }

    #[test]
    fn pinned_ids_last_while_their_snapshot_does() {
        let mut ids = Ids::default();
        let at = At {
            space: 3,
            moment: 1,
        };
        let linked = SnapNode::Inode(7, at, 10);
        let id = ids.id(linked, true);
        ids.pin(id);
        ids.forget(id, 1);
        assert_eq!(ids.id(linked, false), id, "pinned: the same number again");
        ids.unpin_gone(&[7].into_iter().collect());
        assert_eq!(ids.node(id), Some(linked));
        ids.unpin_gone(&Default::default());
        assert_eq!(ids.node(id), None, "its snapshot is gone");
        assert_eq!(ids.uncounted, 0);
    }

    #[test]
    fn loose_ids_are_dropped_in_bulk() {
        let mut ids = Ids::default();
        let held = ids.id(SnapNode::Snapshot(1), true);
        for n in 0..UNCOUNTED_LIMIT as u64 {
            ids.id(SnapNode::Volume(n, 1), false);
        }
        assert_eq!(ids.uncounted, UNCOUNTED_LIMIT);
        ids.id(SnapNode::Volume(u64::MAX, 1), false);
        assert_eq!(ids.uncounted, 1);
        assert_eq!(ids.by_id.len(), 2);
        assert_eq!(ids.node(held), Some(SnapNode::Snapshot(1)));
    }

    #[test]
    fn copy_into_takes_the_overlap() {
        let mut out = vec![0u8; 4];
        copy_into(&mut out, 10, 8, b"abcdef");
        assert_eq!(&out, b"cdef");
        let mut out = vec![0u8; 4];
        copy_into(&mut out, 10, 12, b"xyz");
        assert_eq!(&out, b"\0\0xy");
    }
}
