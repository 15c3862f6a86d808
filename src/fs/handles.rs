//! Open files: open and create, the handle table, and the calls on a
//! handle (read, write, fallocate, seek, flush, fsync, release). Each inode open in this mount
//! has one [`OpenInode`], shared by its handles, that buffers its writes
//! and caches its data (see [`super::data`]).

use super::snapshots::is_snapshot_fh;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::data::{self, OpenInode};
use super::meta::{self, NewInode, SetAttr};
use super::{Attr, CHANGING_NS, Caller, Error, Fs, FsResult, Node, Opened, Written, now_ns};
use crate::cluster::VolumeStatus;
use crate::shard::open_writers;

/// How often `open(O_CREAT)` tries again when the name it found taken is
/// gone by the time it looks (renamed away by a log rotation).
const CREATE_TRIES: u32 = 8;

/// A handle open for writing this long has its file registered with its
/// Storage Node, so that move-to-s3 leaves it alone (see
/// `shard::open_writers`). Handles that live shorter (a create, a write, a
/// close: rsync, tar) never cost a round trip for it.
const REGISTER_AFTER: Duration = Duration::from_secs(10);

/// Reaper ticks (seconds) between two renewals of the registrations: a
/// lease (`shard::open_writers::LEASE_SECS`, 30 s) outlives two missed ones.
///
/// So a file is registered at most 20 s (`REGISTER_AFTER + SWEEP_EVERY`)
/// after its open for writing. A file written after its open cannot have
/// settled (unchanged for `shard::SETTLE_SECS`, 60 s; a `--settle` of 20 s
/// or more) before then, so it never moves while open. Only a file that
/// had settled before it was opened, and is not written in those first
/// 20 s, may move meanwhile: its writer's first write brings it back (an
/// upload and a recall lost, never data).
pub(super) const SWEEP_EVERY: u32 = 10;

/// An open file handle.
struct Handle {
    node: Arc<OpenInode>,
    append: bool,
    /// When it was opened, for a handle open for writing.
    writing_since: Option<Instant>,
    /// The file's failed queued appends this handle has reported (or that
    /// came before its open): see [`OpenInode::flush`].
    failures_seen: Arc<AtomicU64>,
    /// Where the last append through this handle landed, if it waited for
    /// its commit and this mount knows (else `u64::MAX`): see
    /// `protocol::LANDED_IOCTL`.
    landed: Arc<AtomicU64>,
}

impl Handle {
    /// Open `O_APPEND` for writing.
    fn appends(&self) -> bool {
        self.append && self.writing_since.is_some()
    }
}

/// This mount's open file handles, by number (from 1).
pub(super) struct Handles {
    table: Mutex<HashMap<u64, Handle>>,
    next: AtomicU64,
}

impl Handles {
    pub(super) fn new() -> Handles {
        Handles {
            table: Mutex::default(),
            next: AtomicU64::new(1),
        }
    }

    /// A new handle on `node` opened with `flags`.
    fn insert(&self, node: Arc<OpenInode>, flags: i32) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        let h = Handle {
            failures_seen: Arc::new(AtomicU64::new(node.failures())),
            node,
            append: flags & libc::O_APPEND != 0,
            writing_since: (flags & libc::O_ACCMODE != libc::O_RDONLY).then(Instant::now),
            landed: Arc::new(AtomicU64::new(u64::MAX)),
        };
        self.table.lock().unwrap().insert(fh, h);
        fh
    }

    /// The files with a handle open for writing for `age` or longer.
    fn writing_for(&self, age: Duration) -> Vec<Arc<OpenInode>> {
        let mut files = HashMap::new();
        for h in self.table.lock().unwrap().values() {
            if h.writing_since.is_some_and(|t| t.elapsed() >= age) {
                files
                    .entry((h.node.space, h.node.ino))
                    .or_insert_with(|| h.node.clone());
            }
        }
        files.into_values().collect()
    }

    /// The file of handle `fh`, and whether it is `O_APPEND`.
    fn get(&self, fh: u64) -> FsResult<(Arc<OpenInode>, bool)> {
        let h = self.table.lock().unwrap();
        let h = h.get(&fh).ok_or(Error::EBADF)?;
        Ok((h.node.clone(), h.append))
    }

    /// The file of handle `fh`, and if it is `O_APPEND`, where it records
    /// the offset its appends landed at.
    fn get_for_write(&self, fh: u64) -> FsResult<(Arc<OpenInode>, Option<Arc<AtomicU64>>)> {
        let h = self.table.lock().unwrap();
        let h = h.get(&fh).ok_or(Error::EBADF)?;
        Ok((h.node.clone(), h.append.then(|| h.landed.clone())))
    }

    /// Where the last append through handle `fh` (open `O_APPEND` for
    /// writing, else `EBADF`) landed, if it waited for its commit and this
    /// mount knows.
    fn landed(&self, fh: u64) -> FsResult<Option<u64>> {
        let h = self.table.lock().unwrap();
        let h = h.get(&fh).ok_or(Error::EBADF)?;
        if !h.appends() {
            return Err(Error::EBADF);
        }
        Ok(Some(h.landed.load(Ordering::Acquire)).filter(|&at| at != u64::MAX))
    }

    /// Whether handle `fh` was opened for appending (`O_APPEND`, for
    /// writing).
    fn appends(&self, fh: u64) -> FsResult<bool> {
        let h = self.table.lock().unwrap();
        Ok(h.get(&fh).ok_or(Error::EBADF)?.appends())
    }

    /// The file of handle `fh`, what the handle has reported of failed
    /// queued appends, and whether it was opened for writing.
    fn get_for_flush(&self, fh: u64) -> FsResult<(Arc<OpenInode>, Arc<AtomicU64>, bool)> {
        let h = self.table.lock().unwrap();
        let h = h.get(&fh).ok_or(Error::EBADF)?;
        Ok((
            h.node.clone(),
            h.failures_seen.clone(),
            h.writing_since.is_some(),
        ))
    }

    fn remove(&self, fh: u64) -> FsResult<Handle> {
        self.table.lock().unwrap().remove(&fh).ok_or(Error::EBADF)
    }

    pub(super) fn shrink(&self) {
        super::memory::shrink(&mut self.table.lock().unwrap());
    }
}

impl Fs {
    /// Opens a file; returns the handle and whether the kernel may keep its
    /// cached pages (the file did not change since we last saw it).
    /// `O_APPEND` handles must bypass the kernel's page cache (see
    /// [`Opened::direct`]).
    pub fn open(&self, ino: u64, flags: i32, caller: Caller) -> FsResult<Opened> {
        if let Node::Snapshot(n) = Node::from_ino(ino) {
            return self.snapshot_open(n, flags);
        }
        let Node::Space(space, i) = Node::from_ino(ino) else {
            return Err(Error::EISDIR);
        };
        let writing = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        let shard = if writing {
            self.shard_rw_after_import(space)?
        } else {
            self.shard_after_import(space)?
        };
        self.commit_creates(space);
        // The attributes (close-to-open: has the file changed?), and for a
        // small file read-only its data too, in one round trip. Not the
        // data this mount has: a file open here keeps its own (and would
        // drop what came), and a cached one still at the stamp its data
        // belongs to is unchanged (a log read again and again).
        let epoch = self.attrs.epoch();
        let asked = data::ticket();
        let cached = if writing || self.open.lock().unwrap().contains_key(&(space, i)) {
            None
        } else {
            Some(self.cache.head(space, i))
        };
        let head = match &cached {
            None => meta::Head::No,
            Some(c) => meta::Head::Unless(c.as_ref().map(|(stamp, chg, data)| meta::Known {
                stamp: *stamp,
                chg: *chg,
                cached: &data[..data.len().min(stamp.2 as usize)],
            })),
        };
        let (a, chg, head) = meta::getattr_with_head(&shard, space, i, head)?;
        if a.is_dir() {
            return Err(Error::EISDIR);
        }
        let mut keep = false;
        let node = {
            let mut open = self.open.lock().unwrap();
            let node = open
                .entry((space, i))
                .or_insert_with(|| {
                    let (generation, valid) =
                        self.cache
                            .generation_for(space, i, (a.mtime, a.ctime, a.size), chg);
                    keep = valid;
                    if let Some(data) = head {
                        self.cache.put(space, i, generation, 0, Arc::new(data));
                    }
                    Arc::new(OpenInode::new(
                        space,
                        i,
                        shard.clone(),
                        (a.gid, a.mode),
                        a.size,
                        generation,
                        None,
                        self.pending.clone(),
                        self.merger.clone(),
                        self.attrs.clone(),
                    ))
                })
                .clone();
            *node.opens.lock().unwrap() += 1;
            node
        };
        // With this mount's deferred chmod (see `OpenInode::owner_mode`).
        let now = self.with_changes(a, asked);
        node.set_owner_mode(now.gid, now.mode);
        node.keep_attr(a, epoch, asked);
        // Also when this open made the node: another may have found it since.
        let refreshed = node.refresh(
            &self.cache,
            ((a.mtime, a.ctime, a.size), chg),
            asked,
            || {
                let (a, chg, _) = meta::getattr_with_head(&shard, space, i, meta::Head::No)?;
                Ok(((a.mtime, a.ctime, a.size), chg))
            },
        );
        if let Err(e) = refreshed {
            self.release_node(&node);
            return Err(e);
        }
        // Truncate by the size this mount sees: it may have buffered data.
        // Also an empty file with set-user-ID or set-group-ID: a truncate
        // may clear them (with atomic O_TRUNC the kernel leaves it to us).
        let setid = now.mode & (libc::S_ISUID | libc::S_ISGID) != 0;
        if flags & libc::O_TRUNC != 0 {
            // Appends queued behind their writes land first (they count).
            node.settle();
        }
        if flags & libc::O_TRUNC != 0 && (a.size > 0 || node.state().size > 0 || setid) {
            if let Err(e) = self.setattr(
                ino,
                &SetAttr {
                    size: Some(0),
                    ..Default::default()
                },
                caller,
            ) {
                self.release_node(&node);
                return Err(e);
            }
            keep = false;
        }
        let fh = self.handles.insert(node, flags);
        Ok(Opened {
            fh,
            keep_cache: keep,
            direct: flags & libc::O_APPEND != 0,
            changing: now_ns() - a.mtime < CHANGING_NS,
        })
    }

    /// Creates and opens a regular file. Inside a space the create is
    /// deferred: the rows are written with the file's first flush, in one
    /// transaction with its data.
    pub fn create(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        flags: i32,
        caller: Caller,
    ) -> FsResult<(Attr, Opened)> {
        let mode = libc::S_IFREG | (mode & 0o7777);
        let Node::Space(space, dir) = Node::from_ino(parent) else {
            let a = self.mknod(parent, name, mode, umask, 0, None, caller)?;
            let opened = self.open(a.ino, flags & !libc::O_TRUNC, caller)?;
            return Ok((a, opened));
        };
        let shard = self.shard_rw_after_import(space)?;
        // One pending create per space at a time keeps names unambiguous.
        self.commit_pending(space);
        // Until the file is registered as pending, which `pending_in`
        // tells readers of names.
        let _adding = self.names.add(space, dir, name);
        let (mode, xattrs) = self.new_mode(parent, mode, umask)?;
        if flags & libc::O_APPEND != 0 || !xattrs.is_empty() {
            // Logs: several mounts may create `last.log` at the same moment
            // (after a rotation). Create now, in one transaction, or open the
            // file another process created first — never fail later. A file
            // that inherits ACLs is created now too, with them. (A deferred
            // create changes no attributes until its commit.)
            let _changing = self.changing();
            let new = NewInode {
                mode,
                uid: caller.uid,
                gid: caller.gid,
                rdev: 0,
                target: None,
                xattrs: &xattrs,
            };
            let create = || meta::create(&shard, space, dir, name, &new).map(|(a, _)| a);
            return match self.create_or_open(parent, name, flags, caller, create)? {
                Ok(a) => Ok((a, self.open(a.ino, flags & !libc::O_TRUNC, caller)?)),
                Err(opened) => Ok(opened),
            };
        }
        // The kernel's lookup just found the name free, most often.
        let check = || match self.attrs.take_absent(space, dir, name) {
            Some(p) => meta::check_name(name).map(|()| p),
            None => meta::check_create(&shard, space, dir, name),
        };
        let p = match self.create_or_open(parent, name, flags, caller, check)? {
            Ok(p) => p,
            Err(opened) => return Ok(opened),
        };
        let ino = self.next_id(&shard, space)?;
        let new = NewInode {
            mode,
            uid: caller.uid,
            gid: caller.gid,
            rdev: 0,
            target: None,
            xattrs: &[],
        };
        let a = meta::new_attr(&p, space, ino, &new, now_ns())?;
        let generation = self.cache.invalidate(space, ino, None);
        self.xattrs.put_empty(a.ino);
        let pending = data::PendingCreate {
            parent: dir,
            name: name.to_vec(),
            attr: a,
            failed: Default::default(),
        };
        let node = Arc::new(OpenInode::new(
            space,
            ino,
            shard,
            (a.gid, a.mode),
            0,
            generation,
            Some(pending),
            self.pending.clone(),
            self.merger.clone(),
            self.attrs.clone(),
        ));
        *node.opens.lock().unwrap() += 1;
        self.open.lock().unwrap().insert((space, ino), node.clone());
        let append = flags & libc::O_APPEND != 0;
        let fh = self.handles.insert(node, flags);
        Ok((
            a,
            Opened {
                fh,
                keep_cache: false,
                direct: append,
                // Its writer's own handle: its cached pages are its writes.
                changing: false,
            },
        ))
    }

    /// Runs `create` (of `name` in `parent`). When the name is taken and the
    /// open is not `O_EXCL`, opens the file that has it instead (`Err`), as
    /// a local filesystem does; should the name go again before that open
    /// (a rotation renamed it away), creates once more, as the VFS does.
    fn create_or_open<T>(
        &self,
        parent: u64,
        name: &[u8],
        flags: i32,
        caller: Caller,
        mut create: impl FnMut() -> FsResult<T>,
    ) -> FsResult<Result<T, (Attr, Opened)>> {
        let mut tries = 0;
        loop {
            match create() {
                Err(e) if e == Error::EEXIST && flags & libc::O_EXCL == 0 => {}
                r => return r.map(Ok),
            }
            match self.open_existing(parent, name, flags, caller) {
                Err(e) if e == Error::ENOENT && tries < CREATE_TRIES => tries += 1,
                r => return r.map(Err),
            }
        }
    }

    /// `open(O_CREAT)` of a name another process created: that file.
    fn open_existing(
        &self,
        parent: u64,
        name: &[u8],
        flags: i32,
        caller: Caller,
    ) -> FsResult<(Attr, Opened)> {
        let a = self.lookup(parent, name)?;
        if a.is_dir() {
            return Err(Error::EISDIR);
        }
        let opened = self.open(a.ino, flags, caller)?;
        Ok((a, opened))
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        if is_snapshot_fh(fh) {
            return self.snapshot_read(fh, offset, size);
        }
        let (node, _) = self.handles.get(fh)?;
        node.read(&self.cache, &self.prefetcher, offset, size)
    }

    /// Writes for `caller`, whose thread's `O_APPEND` offsets are
    /// remembered (see [`super::own_xattrs`]). An append to a file open
    /// `O_SYNC` or `O_DSYNC` (`sync`) returns once committed, any other once
    /// queued (see [`super::data`]). A caller without `CAP_FSETID`
    /// clears set-user-ID and set-group-ID, as on a local disk, on every
    /// path: the kernel leaves it to us for direct I/O, and its own rule
    /// for cached writes keeps set-group-ID that Linux clears.
    ///
    /// Also returns where an append that waited for its commit landed, if
    /// this mount knows.
    pub fn write(
        &self,
        fh: u64,
        offset: u64,
        data: &[u8],
        caller: Caller,
        sync: bool,
        lock_owner: Option<u64>,
    ) -> FsResult<(Written, Option<u64>)> {
        let (node, landed_at) = self.handles.get_for_write(fh)?;
        // Only a write that clears set-id bits changes attributes here (a
        // flush of buffered data moves the epoch itself).
        let _changing =
            (node.owner_mode().1 & (libc::S_ISUID | libc::S_ISGID) != 0).then(|| self.changing());
        let mode_changed = self.clear_setid(&node, caller)?;
        let tid = caller.pid;
        self.changes.written(node.space, node.ino);
        if let Ok((_, vol)) = self.space(node.space)
            && vol.status == VolumeStatus::Standby
        {
            return Err(Error::EROFS);
        }
        let mut landed = None;
        if let Some(at) = landed_at {
            let r = node.append(&self.cache, &self.appends, data, (tid, lock_owner), !sync);
            // Unknown after a failure or a queued append.
            let told = r.as_ref().ok().copied().flatten();
            at.store(told.unwrap_or(u64::MAX), Ordering::Release);
            landed = r?;
        } else if node.write(&self.cache, offset, data)? {
            // The workers live as long as the Fs: sending cannot fail.
            let _ = self.flusher.send(node);
        }
        let written = Written {
            len: data.len() as u32,
            mode_changed,
        };
        Ok((written, landed))
    }

    /// A durable append through handle `fh`, open `O_APPEND` for writing
    /// (else `EBADF`), and the offset it landed at if this mount knows it
    /// (see `protocol::APPEND_IOCTL`): a `write` that commits before it
    /// returns, as with `O_SYNC`.
    pub fn append_durably(
        &self,
        fh: u64,
        data: &[u8],
        caller: Caller,
    ) -> FsResult<(Written, Option<u64>)> {
        if !self.handles.appends(fh)? {
            return Err(Error::EBADF);
        }
        // Its own answer, not the thread's last append: callers FUSE
        // cannot name (a pid namespace of their own) share thread id 0.
        self.write(fh, 0, data, caller, true, None)
    }

    /// Where the last append through handle `fh` landed; `ENODATA` unless
    /// it waited for its commit and this mount knows (see
    /// `protocol::LANDED_IOCTL`).
    pub fn landed(&self, fh: u64) -> FsResult<u64> {
        self.handles.landed(fh)?.ok_or(Error::ENODATA)
    }

    /// A write (or fallocate) by `caller` clears set-user-ID and
    /// set-group-ID as on a local disk; returns whether it did. Rare: only
    /// when this mount saw bits the caller would clear does it ask the
    /// database, which decides on the row it locks (so a chmod meanwhile
    /// is not undone).
    /// Committed before the data, after what this mount buffered.
    fn clear_setid(&self, node: &OpenInode, caller: Caller) -> FsResult<bool> {
        // What this mount saw first: no query for a file without the bits
        // or a caller that keeps them (root writing a set-user-ID binary).
        let (gid, mode) = node.owner_mode();
        if caller.setid_cleared(gid, mode).is_none() {
            return Ok(false);
        }
        self.commit_changes(Some(node.space));
        let cleared = meta::clear_setid(&node.shard, node.space, node.ino, &|gid, mode| {
            caller.setid_cleared(gid, mode)
        })?;
        match cleared {
            Some(a) => {
                node.set_owner_mode(a.gid, a.mode);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// fallocate(2): mode 0 and `KEEP_SIZE` (nothing to reserve: the file
    /// grows unless `KEEP_SIZE`), `PUNCH_HOLE | KEEP_SIZE`, `ZERO_RANGE`
    /// (with or without `KEEP_SIZE`); any other mode is `EOPNOTSUPP`.
    pub fn fallocate(
        &self,
        fh: u64,
        offset: u64,
        length: u64,
        mode: i32,
        caller: Caller,
    ) -> FsResult<Written> {
        let _changing = self.changing();
        const KEEP_SIZE: i32 = libc::FALLOC_FL_KEEP_SIZE;
        const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        const ZERO: i32 = libc::FALLOC_FL_ZERO_RANGE;
        let (zero, extend) = match mode {
            0 => (false, true),
            KEEP_SIZE => (false, false),
            PUNCH => (true, false),
            ZERO => (true, true),
            m if m == ZERO | KEEP_SIZE => (true, false),
            _ => return Err(Error::EOPNOTSUPP),
        };
        if length == 0 {
            return Err(Error::EINVAL);
        }
        if offset
            .checked_add(length)
            .is_none_or(|e| e > data::MAX_FILE_SIZE)
        {
            return Err(Error::EFBIG);
        }
        let (node, _) = self.handles.get(fh)?;
        let (space, i) = (node.space, node.ino);
        let shard = self.shard_rw_after_import(space)?;
        self.commit_pending(space);
        let mode_changed = self.clear_setid(&node, caller)?;
        node.rewrite(&self.cache, || {
            meta::fallocate(&shard, space, i, (offset, length), zero, extend)
        })?;
        Ok(Written {
            len: 0,
            mode_changed,
        })
    }

    /// lseek(2) with `SEEK_DATA` or `SEEK_HOLE`, from the extent map (what
    /// this mount buffered is committed first, so it counts).
    pub fn seek_data(&self, fh: u64, offset: u64, data: bool) -> FsResult<u64> {
        if is_snapshot_fh(fh) {
            return self.snapshot_seek(fh, offset, data);
        }
        let (node, _) = self.handles.get(fh)?;
        node.settle();
        node.flush_buffers(&self.cache)?;
        let size = node.state().size;
        crate::shard::extents::seek(&node.shard, node.space, node.ino, size, offset, data)?
            .ok_or(Error::ENXIO)
    }

    /// Makes buffered writes durable and visible (close). The close of a
    /// handle open for writing also waits for the appends queued behind
    /// their writes (close-to-open), for [`data::CLOSE_WAIT`] at most, and
    /// only for those written under its `lock_owner` (the closing process's
    /// descriptor table): a child that inherited the descriptor and closes
    /// it at `exec` or exit does not wait for its parent's appends. A
    /// reader's close does not wait.
    pub fn flush(&self, fh: u64, lock_owner: u64) -> FsResult<()> {
        if is_snapshot_fh(fh) {
            return Ok(());
        }
        let (node, seen, writer) = self.handles.get_for_flush(fh)?;
        if writer {
            node.flush(
                &self.cache,
                &seen,
                Some((data::CLOSE_WAIT, Some(lock_owner))),
            )
        } else {
            node.flush_buffers(&self.cache)
        }
    }

    /// `fsync`: the file's data, and the attribute changes of its space, are
    /// committed when it returns.
    pub fn fsync(&self, fh: u64) -> FsResult<()> {
        if is_snapshot_fh(fh) {
            return Ok(());
        }
        let (node, seen, _) = self.handles.get_for_flush(fh)?;
        node.flush(&self.cache, &seen, None)?;
        self.commit_changes(Some(node.space));
        Ok(())
    }

    pub fn release(&self, fh: u64) -> FsResult<()> {
        if is_snapshot_fh(fh) {
            self.snapshot_release(fh);
            return Ok(());
        }
        let h = self.handles.remove(fh)?;
        // Bounded as a close is: the kernel sends this in the background,
        // and a FUSE thread held here for a fence's duration is one the
        // whole mount lacks. What is still queued lands on its own (a
        // failure then is logged).
        // Reports nothing (the kernel drops what this answers): a failure
        // settled now stays for the next opener.
        let r = if h.writing_since.is_some() {
            h.node.flush(
                &self.cache,
                &AtomicU64::new(u64::MAX),
                Some((data::CLOSE_WAIT, None)),
            )
        } else {
            h.node.flush_buffers(&self.cache)
        };
        self.release_node(&h.node);
        r
    }

    fn release_node(&self, node: &Arc<OpenInode>) {
        // The map lock is taken first, as in `open`, so a concurrent open
        // either finds the node still counted or not in the map at all.
        {
            let mut map = self.open.lock().unwrap();
            let mut opens = node.opens.lock().unwrap();
            *opens -= 1;
            if *opens > 0 {
                return;
            }
            // Appends a close left queued (it waits a second at most): the
            // node stays until they landed (`release_lingering`), so a stat
            // or an open here meanwhile sees them, and a read waits for them.
            if node.has_queued_appends() {
                return;
            }
            map.remove(&(node.space, node.ino));
        }
        self.forget_node(node);
    }

    /// Each second (the reaper's tick), and at unmount: the nodes kept
    /// only for appends their last close left queued go once those landed.
    pub fn release_lingering(&self) {
        let mut gone = Vec::new();
        self.open.lock().unwrap().retain(|_, n| {
            let idle = *n.opens.lock().unwrap() == 0 && !n.has_queued_appends();
            if idle {
                gone.push(n.clone());
            }
            !idle
        });
        for n in gone {
            self.forget_node(&n);
        }
    }

    /// The mount is going: the appends still queued land (see
    /// [`data::AppendQueues::drain`]).
    pub fn drain_appends(&self) {
        self.appends.drain();
    }

    /// A node no longer open here (and out of the open map): its
    /// registration and, if its last name went meanwhile, its rows go.
    fn forget_node(&self, node: &OpenInode) {
        if node.registered.load(Ordering::SeqCst) {
            self.unregister(node);
        }
        if node.unlinked.load(Ordering::Acquire)
            && let Err(e) = meta::release_orphan(&node.shard, node.space, node.ino)
        {
            log::warn!(
                "space {}: releasing unlinked inode {}: errno {}",
                node.space,
                node.ino,
                e.errno()
            );
        }
    }

    /// Registers (or renews) the files this mount has held open for writing
    /// for [`REGISTER_AFTER`], one statement per space; the reaper calls it
    /// every [`SWEEP_EVERY`] seconds. A failure is logged: the leases lapse
    /// and the next sweep writes them again.
    pub(super) fn renew_open_writers(&self) {
        let holder = self.holder.load(Ordering::Acquire);
        let mut by_space: HashMap<u32, Vec<Arc<OpenInode>>> = HashMap::new();
        // And those a close left with appends queued (`release_node`):
        // they stay registered until those land.
        let lingering: Vec<Arc<OpenInode>> = self
            .open
            .lock()
            .unwrap()
            .values()
            .filter(|n| *n.opens.lock().unwrap() == 0 && n.registered.load(Ordering::SeqCst))
            .cloned()
            .collect();
        for node in self
            .handles
            .writing_for(REGISTER_AFTER)
            .into_iter()
            .chain(lingering)
        {
            by_space.entry(node.space).or_default().push(node);
        }
        for (space, nodes) in by_space {
            // Marked before the row is written: a close from now on
            // deletes it, or is seen below.
            for n in &nodes {
                n.registered.store(true, Ordering::SeqCst);
            }
            let inos: Vec<u64> = nodes.iter().map(|n| n.ino).collect();
            if let Err(e) = open_writers::renew(&nodes[0].shard, space, &inos, holder) {
                log::warn!("space {space}: registering files open for writing: {e}");
                continue;
            }
            // Closed meanwhile: that close may have missed the row.
            let closed =
                |n: &&Arc<OpenInode>| *n.opens.lock().unwrap() == 0 && !n.has_queued_appends();
            for n in nodes.iter().filter(closed) {
                self.unregister(n);
            }
        }
    }

    /// Drops this mount's registration of a file it no longer has open.
    fn unregister(&self, node: &OpenInode) {
        let holder = self.holder.load(Ordering::Acquire);
        if let Err(e) = open_writers::release(&node.shard, node.space, node.ino, holder) {
            // Its lease lapses by itself.
            log::warn!(
                "space {}: unregistering inode {} (open for writing): {e}",
                node.space,
                node.ino
            );
        }
    }

    /// Whether a file created here in `dir` is not committed yet.
    pub(super) fn pending_in(&self, space: u32, dir: u64) -> bool {
        // Each file's state lock may be held across a commit: not under
        // the map's lock.
        self.pending_nodes(space)
            .iter()
            .any(|n| n.pending_parent() == Some(dir))
    }

    /// The files of `space` created here whose create is not committed.
    pub(super) fn pending_nodes(&self, space: u32) -> Vec<Arc<OpenInode>> {
        self.open
            .lock()
            .unwrap()
            .values()
            .filter(|n| n.space == space && n.is_pending())
            .cloned()
            .collect()
    }

    /// The inodes of `space` open here (pending creates, and files whose
    /// last close waits for its appends, too), by number within the space;
    /// `None` when there are more than `most`.
    pub(super) fn open_in(&self, space: u32, most: usize) -> Option<Vec<u64>> {
        let open = self.open.lock().unwrap();
        let mut inos = Vec::new();
        for &(s, ino) in open.keys() {
            if s == space {
                if inos.len() == most {
                    return None;
                }
                inos.push(ino);
            }
        }
        Some(inos)
    }

    /// The [`meta::OpenHere`] of `space` for unlink and rename: an inode
    /// open in this mount is marked unlinked (its last close releases its
    /// rows) and this mount is named as its holder.
    pub(super) fn mark_unlinked_if_open(&self, space: u32) -> impl Fn(u64) -> Option<u64> + '_ {
        move |ino| {
            let open = self.open.lock().unwrap();
            let oi = open.get(&(space, ino & 0xffff_ffff))?;
            oi.unlinked.store(true, Ordering::Release);
            Some(self.holder.load(Ordering::Acquire))
        }
    }
}
