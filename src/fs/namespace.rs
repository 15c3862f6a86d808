//! Names and attributes: each call goes to the root and volume
//! directories (`top`) or inside a space, to its Storage Node ([`meta`]),
//! with this mount's deferred creates and attribute changes (`deferred`)
//! committed first where the database must see them, and shown where it
//! answers.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::dir_names::{self, Known};
use super::error::failed;
use super::meta::{NewInode, SetAttr};
use super::{Attr, Caller, Error, Fs, FsResult, Node, acl, meta, now_ns};

/// What a lookup found (see [`Fs::lookup_aged`]).
pub enum Looked {
    Found(Attr),
    /// No such name, known since this long ago.
    Missing(Duration),
}

/// Directory entries: (offset of the next entry, name, attributes).
pub(super) type Listing = Vec<(u64, Vec<u8>, Attr)>;

/// The offset after a directory's last entry (that of ext4, `i64::MAX`):
/// asked for what follows it, readdir answers nothing without a query.
const END: u64 = i64::MAX as u64;

/// The root's hidden directory of snapshots (see [`super::snapshots`]).
const SNAPSHOTS_DIR: &[u8] = b".snapshots";

impl Fs {
    pub fn getattr(&self, ino: u64) -> FsResult<Attr> {
        self.getattr_aged(ino).map(|(a, _)| a)
    }

    /// The attributes, and how old the stored ones they come from are (see
    /// [`super::attr_cache`]): the kernel keeps them for what is left of the TTL.
    pub fn getattr_aged(&self, ino: u64) -> FsResult<(Attr, Duration)> {
        let fresh = |a| (a, Duration::ZERO);
        match Node::from_ino(ino) {
            Node::Root => self.root_attr(ino).map(fresh),
            Node::Volume(v) => self.volume_attr(ino, v).map(fresh),
            Node::Snapshot(n) => self.snapshot_getattr(n).map(fresh),
            Node::Space(space, i) => {
                let stamp = self.attrs.stamp();
                let change = self.changes.get(space, i);
                let open = self.open.lock().unwrap().get(&(space, i)).cloned();
                if let Some(mut a) = open.as_ref().and_then(|o| o.pending_attr()) {
                    if let Some(c) = change {
                        c.apply(&mut a);
                    }
                    return Ok(fresh(a));
                }
                // A closed file: the attributes read lately (see
                // [`super::attr_cache`]), unless a create is pending (its
                // commit changes the directory's attributes). An open file
                // keeps its own (see `OpenInode::cached_attr`).
                let quiet = || open.is_none() && self.pending.load(Ordering::Acquire) == 0;
                let cacheable = quiet();
                let cached = if cacheable {
                    self.attrs.get(space, i)
                } else {
                    None
                };
                // The ticket before the database was asked (0: not now).
                let mut asked = 0;
                let (mut a, age) = match cached {
                    Some(c) => c,
                    None => {
                        if i == 1
                            && let Some(dir) = self.space(space)?.0.import_from
                        {
                            // Not imported yet: `ls -l` of a volume must not
                            // import every space in it.
                            return super::attr::of_disk_dir(ino, &dir)
                                .map(fresh)
                                .map_err(|e| failed(format!("space {space}: {e:#}")));
                        }
                        let open_epoch = self.attrs.epoch();
                        let kept = open
                            .as_ref()
                            .and_then(|o| o.cached_attr(open_epoch, self.cfg.xattr_ttl));
                        match kept {
                            Some(a) => fresh(a),
                            None => {
                                asked = super::data::ticket();
                                let a = meta::getattr(&self.shard_after_import(space)?, space, i)?;
                                if let Some(o) = &open {
                                    o.keep_attr(a, open_epoch, asked);
                                }
                                if cacheable && quiet() {
                                    self.attrs.put(space, i, stamp, a);
                                }
                                fresh(a)
                            }
                        }
                    }
                };
                if let Some(c) = change {
                    c.apply(&mut a);
                }
                if let Some(o) = &open {
                    o.set_owner_mode(a.gid, a.mode);
                    a.size = o.size_to_tell(&self.cache, a.size, asked);
                }
                Ok((a, age))
            }
        }
    }

    pub fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<Attr> {
        match self.lookup_aged(parent, name)? {
            Looked::Found(a) => Ok(a),
            Looked::Missing(_) => Err(Error::ENOENT),
        }
    }

    /// [`Fs::lookup`], telling how long ago a missing name in a space was
    /// known missing: the kernel keeps that for what is left of the TTL.
    pub fn lookup_aged(&self, parent: u64, name: &[u8]) -> FsResult<Looked> {
        if name.len() > meta::NAME_MAX {
            return Err(Error::ENAMETOOLONG);
        }
        let found = |a| Ok(Looked::Found(a));
        match Node::from_ino(parent) {
            Node::Root if name == SNAPSHOTS_DIR => self.lookup_snapshots_dir().and_then(found),
            Node::Root => self.lookup_volume(name).and_then(found),
            Node::Volume(vol) => self.lookup_space(vol, name).and_then(found),
            Node::Snapshot(n) => self.snapshot_lookup(n, name).and_then(found),
            Node::Space(space, dir) => {
                let stamp = self.attrs.stamp();
                let missing = match self.names.known(space, dir, name) {
                    Known::Missing(age) => Some(age),
                    Known::MissingBefore => self.read_names(space, dir, name)?,
                    Known::Nothing => None,
                };
                if let Some(age) = missing {
                    // The create right after may skip its own check only
                    // on what is as fresh as a lookup's answer.
                    if let Some(read) = Instant::now().checked_sub(age) {
                        self.attrs.put_absent(space, dir, name, stamp, read);
                    }
                    return Ok(Looked::Missing(age));
                }
                self.commit_creates(space);
                let asked = super::data::ticket();
                let read = Instant::now();
                let found = meta::lookup(&self.shard_after_import(space)?, space, dir, name);
                if matches!(&found, Err(e) if *e == Error::ENOENT) {
                    self.attrs.put_absent(space, dir, name, stamp, read);
                    return Ok(Looked::Missing(Duration::ZERO));
                }
                let (a, has_xattrs) = found?;
                // Kept as a getattr's answer is (a lookup after the entry's
                // TTL refreshes the kernel's attributes with it).
                if let Node::Space(_, i) = Node::from_ino(a.ino)
                    && self.pending.load(Ordering::Acquire) == 0
                    && !self.open.lock().unwrap().contains_key(&(space, i))
                {
                    self.attrs.put(space, i, stamp, a);
                }
                if !has_xattrs {
                    self.xattrs.put_empty(a.ino);
                }
                Ok(Looked::Found(self.with_changes(a, asked)))
            }
        }
    }

    /// Reads the names of a small, busy directory again, instead of asking
    /// for one name its names kept lacked: `Some(how long ago the read
    /// began)` if `name` is still missing, `None` if the database is to be
    /// asked for it.
    fn read_names(&self, space: u32, dir: u64, name: &[u8]) -> FsResult<Option<Duration>> {
        // The names of files created here reach the database first. A
        // create here whose commit failed is still to come (and, as after a
        // lookup, is not found meanwhile): no names are kept while one is
        // pending, asked after `began` (one registered before is seen; one
        // registered later, by its directory's last add) and again after
        // the read (one that landed meanwhile may be missing from it).
        self.commit_creates(space);
        let began = self.names.began();
        let keep = !self.pending_in(space, dir);
        let shard = self.shard_after_import(space)?;
        let Some(names) = meta::names(&shard, space, dir, dir_names::NAMES)? else {
            // Grown too large (other mounts' names): not worth reading again.
            self.names.forget(space, dir);
            return Ok(None);
        };
        let missing = !names.iter().any(|n| n == name);
        if keep && !self.pending_in(space, dir) {
            self.names
                .put(space, dir, began, names.into_iter().collect());
        }
        Ok(missing.then(|| began.age()))
    }

    /// Changes attributes. A change of mode, owner or times only is deferred:
    /// kept in this mount (its getattr shows it at once) and committed with
    /// the next namespace operation in the space (inside a rename's own
    /// transaction), an fsync, or within a second — so rsync's `chown; chmod;
    /// utimes; rename` of a copied file is one transaction instead of four.
    /// A size change commits at once.
    ///
    /// A size change by a caller without `CAP_FSETID` clears set-user-ID
    /// and set-group-ID as a local disk does (the kernel's FUSE rule keeps
    /// set-group-ID of a group that may not execute, Linux's own clears it
    /// for callers outside the group; with atomic `O_TRUNC` it sends nothing).
    pub fn setattr(&self, ino: u64, s: &SetAttr, caller: Caller) -> FsResult<Attr> {
        self.setattr_aged(ino, s, caller).map(|(a, _)| a)
    }

    /// [`Fs::setattr`], with the age of the stored attributes the answer
    /// comes from (see [`Fs::getattr_aged`]).
    pub fn setattr_aged(
        &self,
        ino: u64,
        s: &SetAttr,
        caller: Caller,
    ) -> FsResult<(Attr, Duration)> {
        self.refuse_in_snapshot(ino)?;
        let Node::Space(space, i) = Node::from_ino(ino) else {
            return Err(Error::EPERM);
        };
        let shard = self.shard_rw_after_import(space)?;
        if s.size.is_none() {
            // Nothing changes in the database yet: the cached attributes
            // stay valid, every answer lays the deferred change over them,
            // and its commit ends them (see `Fs::commit_changes`). After
            // the appends queued before it, as a write or truncate of the
            // file here: their commit sets mtime.
            let open = self.open.lock().unwrap().get(&(space, i)).cloned();
            if let Some(o) = open {
                o.settle();
            }
            let (mut a, age) = self.getattr_aged(ino)?;
            let change = meta::AttrChange {
                mode: s.mode,
                uid: s.uid,
                gid: s.gid,
                atime: s.atime,
                mtime: s.mtime,
                ctime: s.ctime.unwrap_or_else(now_ns),
            };
            self.changes.defer(space, i, change);
            change.apply(&mut a);
            self.note_owner_mode(space, i, &a);
            return Ok((a, age));
        }
        let _changing = self.changing();
        self.commit_pending(space);
        let open = self.open.lock().unwrap().get(&(space, i)).cloned();
        // Decided on the row the transaction locks, not on a cached mode.
        let setid = |gid, mode| caller.setid_cleared(gid, mode);
        let a = match (open, s.size) {
            // An open file: flush, truncate and reset its buffers under its
            // lock, so no write or flush slips in between.
            (Some(o), Some(_)) => {
                o.rewrite(&self.cache, || meta::setattr(&shard, space, i, s, &setid))
            }
            _ => {
                self.cache.invalidate(space, i, None);
                meta::setattr(&shard, space, i, s, &setid)
            }
        };
        self.attrs.changed();
        let a = a?;
        self.note_owner_mode(space, i, &a);
        Ok((a, Duration::ZERO))
    }

    /// Keeps an open file's group and mode (see [`super::data::OpenInode::owner_mode`])
    /// as this mount set them.
    pub(super) fn note_owner_mode(&self, space: u32, i: u64, a: &Attr) {
        if let Some(o) = self.open.lock().unwrap().get(&(space, i)) {
            o.set_owner_mode(a.gid, a.mode);
        }
    }

    /// Creates a node of any kind. In a volume only `mkdir` of a space ID is allowed.
    /// `umask` applies unless the parent has a default ACL (see [`acl`]).
    #[allow(clippy::too_many_arguments)]
    pub fn mknod(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        rdev: u32,
        target: Option<&[u8]>,
        caller: Caller,
    ) -> FsResult<Attr> {
        match Node::from_ino(parent) {
            Node::Root => {
                log::warn!(
                    "refused to create {:?} in the root: volumes are made with tshs create-volume",
                    String::from_utf8_lossy(name)
                );
                Err(Error::EPERM)
            }
            Node::Volume(vol) => {
                let _changing = self.changing();
                self.create_space(vol, name, mode & !umask, caller)
            }
            Node::Snapshot(_) => Err(Error::EROFS),
            Node::Space(space, dir) => {
                self.commit_pending(space);
                if let Some(t) = target
                    && t.len() > meta::PATH_MAX
                {
                    return Err(Error::ENAMETOOLONG);
                }
                let (mode, xattrs) = self.new_mode(parent, mode, umask)?;
                let new = NewInode {
                    mode,
                    uid: caller.uid,
                    gid: caller.gid,
                    rdev,
                    target,
                    xattrs: &xattrs,
                };
                let _adding = self.names.add(space, dir, name);
                let began = self.names.began();
                // The create keeps the new inode's attributes and its
                // directory's (rsync's `chmod` and `utimes` of each new
                // directory, the kernel's `stat` of its parent, ask next).
                let before = self.attrs.epoch();
                let made =
                    meta::create(&self.shard_rw_after_import(space)?, space, dir, name, &new);
                match &made {
                    Ok((a, Some(p))) => {
                        if let Node::Space(_, i) = Node::from_ino(a.ino) {
                            let known = [(dir, *p), (i, *a)];
                            self.attrs.changed_knowing(before, space, (&[], 0), &known);
                        }
                    }
                    _ => self.attrs.changed(),
                }
                // (Not if the create's answer was lost: found, not made.)
                let (a, made_here) = made.map(|(a, p)| (a, p.is_some()))?;
                if let Node::Space(_, new_dir) = Node::from_ino(a.ino)
                    && a.is_dir()
                    && made_here
                {
                    // Empty, and out of the kernel's reach until this reply.
                    self.names.put_new(space, new_dir, began);
                }
                if xattrs.is_empty() {
                    // Known to have none: a create inside it asks (default ACL).
                    self.xattrs.put_empty(a.ino);
                }
                Ok(a)
            }
        }
    }

    /// The mode and ACL xattrs of a new inode in `parent` (see [`acl::inherit`]).
    pub(super) fn new_mode(
        &self,
        parent: u64,
        mode: u32,
        umask: u32,
    ) -> FsResult<(u32, acl::BornXattrs)> {
        if mode & libc::S_IFMT == libc::S_IFLNK {
            return Ok((mode, Vec::new()));
        }
        let x = self.xattrs_of(parent)?;
        let default = x
            .as_ref()
            .and_then(|x| x.iter().find(|(n, _)| n == acl::DEFAULT));
        Ok(acl::inherit(
            default.map(|(_, v)| v.as_slice()),
            mode,
            umask,
        ))
    }

    pub fn unlink(&self, parent: u64, name: &[u8], rmdir: bool) -> FsResult<()> {
        match Node::from_ino(parent) {
            Node::Root => Err(Error::EPERM),
            Node::Snapshot(_) => Err(Error::EROFS),
            Node::Volume(vol) => {
                if !rmdir {
                    return Err(Error::EPERM);
                }
                let _changing = self.changing();
                self.delete_space(parent, vol, name)
            }
            Node::Space(space, dir) => {
                let shard = self.shard_rw_after_import(space)?;
                self.commit_pending(space);
                // Whatever happens, the unlink ends the attribute epoch; a
                // file's keeps its directory's attributes, with its time
                // (`rm -rf` asks for them after each file).
                let before = self.attrs.epoch();
                let r = meta::unlink(
                    &shard,
                    space,
                    dir,
                    name,
                    rmdir,
                    (
                        &self.mark_unlinked_if_open(space),
                        // (A directory's removal goes by the statements.)
                        (!rmdir)
                            .then(|| self.open_in(space, meta::UNLINK_TRIP_HELD))
                            .flatten(),
                    ),
                );
                match &r {
                    Ok(t) if !rmdir => {
                        self.attrs.changed_knowing(before, space, (&[dir], *t), &[]);
                    }
                    _ => self.attrs.changed(),
                }
                if r.is_ok() {
                    self.names.remove(space, dir, name);
                }
                r.map(drop)
            }
        }
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        self.refuse_in_snapshot(parent)?;
        self.refuse_in_snapshot(newparent)?;
        match (Node::from_ino(parent), Node::from_ino(newparent)) {
            (Node::Space(s1, p1), Node::Space(s2, p2)) => {
                if s1 != s2 {
                    return Err(Error::EXDEV);
                }
                let shard = self.shard_rw_after_import(s1)?;
                self.commit_creates(s1);
                // The old name stays among those kept: a rename between two
                // names of one file leaves both.
                let _adding = self.names.add(s1, p2, newname);
                // Deferred attribute changes ride in the rename's transaction
                // (rsync: chmod, chown, utimes, then rename the temporary
                // file). Whatever happens, the rename ends the attribute
                // epoch; the common one keeps its directories' attributes,
                // with its time (rsync's next file asks for them).
                let before = self.attrs.epoch();
                let end = |r: &FsResult<Option<i64>>, carried: &[(u64, meta::AttrChange)]| {
                    let dirs = [p1, p2];
                    match r {
                        Ok(Some(t)) if !carried.iter().any(|(i, _)| dirs.contains(i)) => {
                            self.attrs.changed_knowing(before, s1, (&dirs, *t), &[]);
                        }
                        _ => self.attrs.changed(),
                    }
                };
                let r = self.commit_changes_with(
                    s1,
                    |changes| {
                        meta::rename(
                            &shard,
                            s1,
                            p1,
                            name,
                            p2,
                            newname,
                            flags,
                            changes,
                            &self.mark_unlinked_if_open(s1),
                        )
                    },
                    end,
                );
                r.map(drop)
            }
            (Node::Space(..), _) | (_, Node::Space(..)) => Err(Error::EXDEV),
            _ => Err(Error::EPERM),
        }
    }

    pub fn link(&self, ino: u64, newparent: u64, newname: &[u8]) -> FsResult<Attr> {
        self.refuse_in_snapshot(ino)?;
        self.refuse_in_snapshot(newparent)?;
        let _changing = self.changing();
        match (Node::from_ino(ino), Node::from_ino(newparent)) {
            (Node::Space(s1, i), Node::Space(s2, p)) => {
                if s1 != s2 {
                    return Err(Error::EXDEV);
                }
                self.commit_pending(s1);
                let _adding = self.names.add(s1, p, newname);
                meta::link(&self.shard_rw_after_import(s1)?, s1, i, p, newname)
            }
            (Node::Space(..), _) => Err(Error::EXDEV),
            _ => Err(Error::EPERM),
        }
    }

    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        match Node::from_ino(ino) {
            Node::Space(s, i) => meta::readlink(&self.shard_after_import(s)?, s, i),
            Node::Snapshot(n) => self.snapshot_readlink(n),
            _ => Err(Error::EINVAL),
        }
    }

    /// Directory entries after `offset` (0 = from the start), each with the
    /// offset of the entry after it. `.` and `..` come first. Inside a
    /// space, one query per page, and the last entry of a short page
    /// carries [`END`]: the kernel's next request, which would find nothing
    /// more, costs none (as on ext4, entries added after the end are seen
    /// from a `rewinddir`). `plus`: a readdirplus, whose entries the kernel
    /// counts as lookups.
    pub fn readdir(
        &self,
        ino: u64,
        offset: u64,
        limit: usize,
        plus: bool,
    ) -> FsResult<Vec<(u64, Vec<u8>, Attr)>> {
        match Node::from_ino(ino) {
            Node::Root => self.list_root(ino, offset),
            Node::Snapshot(n) => self.snapshot_readdir(ino, n, offset, limit, plus),
            Node::Volume(vol) => self.list_volume(ino, vol, offset, limit),
            Node::Space(_, _) if offset >= END => Ok(Vec::new()),
            Node::Space(space, dir) => {
                let shard = self.shard_after_import(space)?;
                self.commit_creates(space);
                let dots = offset < 2;
                let after = offset.saturating_sub(2);
                let asked = super::data::ticket();
                let page = meta::readdir(&shard, space, dir, after, limit, dots && dir != 1)?;
                let mut out = Vec::new();
                if dots {
                    let parent = if dir == 1 {
                        self.space(space)
                            .map(|(s, _)| Node::Volume(s.volume_id).ino())?
                    } else if let Some(p) = page.parent {
                        Node::Space(space, p).ino()
                    } else {
                        // Empty and nameless: removed. As on ext4, a removed
                        // directory lists nothing, not even `.` and `..`.
                        return Ok(Vec::new());
                    };
                    out.extend(self.dots(ino, offset, parent));
                }
                let short = page.entries.len() < limit;
                for e in page.entries {
                    if !e.has_xattrs {
                        self.xattrs.put_empty(e.attr.ino);
                    }
                    out.push((e.seq + 2, e.name, self.with_changes(e.attr, asked)));
                }
                if short && let Some(last) = out.last_mut() {
                    last.0 = END;
                }
                Ok(out)
            }
        }
    }

    /// `.` (`ino`) and `..` (`parent`), those of them after `offset`. Only
    /// their numbers and kind are used: the kernel takes no attributes of
    /// `.` and `..` from a readdirplus reply, and a readdir's carry none.
    pub(super) fn dots(&self, ino: u64, offset: u64, parent: u64) -> Listing {
        let dir = |ino| Attr::synthetic_dir(ino, 2, 0);
        let mut v = Vec::new();
        if offset < 1 {
            v.push((1, b".".to_vec(), dir(ino)));
        }
        if offset < 2 {
            v.push((2, b"..".to_vec(), dir(parent)));
        }
        v
    }

    /// `fsync` of a directory: its entries are durable once this mount's
    /// deferred creates and attribute changes in the space are committed
    /// (every other namespace change commits before it returns).
    pub fn fsyncdir(&self, ino: u64) -> FsResult<()> {
        if let Node::Space(space, _) = Node::from_ino(ino) {
            self.commit_pending(space);
        }
        Ok(())
    }
}
