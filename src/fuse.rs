//! The fuser adapter: each kernel request becomes one call into [`Fs`] and
//! one reply. No filesystem logic lives here.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Errno as FErrno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyIoctl, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};

use crate::fs::meta::SetAttr;
use crate::fs::{Attr, Caller, Error, Fs, FsResult, Looked, Opened, Written, now_ns};
use crate::metrics;

pub struct FuseFs {
    pub fs: Arc<Fs>,
    /// Entry and attribute time-to-live handed to the kernel.
    pub ttl: Duration,
    /// The kernel maps files opened for direct I/O (Linux 6.6 on), so
    /// files that may be growing can be opened that way (see `fopen_flags`).
    pub direct_mmap: bool,
    /// Ask the kernel to enforce POSIX ACLs (mount option `acl`, the default).
    pub acl: bool,
    /// Tells the kernel of attribute changes it did not ask for (set once
    /// the session exists).
    pub notifier: Arc<OnceLock<fuser::Notifier>>,
}

/// The core's error as the kernel's, counted under the current op: the one
/// place that converts it.
fn errno(e: Error) -> FErrno {
    metrics::global().error(metrics::current_op(), e.errno());
    FErrno::from_i32(e.errno())
}

fn time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

fn ns(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i64,
        Err(e) => -(e.duration().as_nanos() as i64),
    }
}

fn kind(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks(),
        atime: time(a.atime),
        mtime: time(a.mtime),
        ctime: time(a.ctime),
        crtime: time(a.btime),
        kind: kind(a.mode),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: 4096,
        flags: 0,
    }
}

/// A file that changed lately is read past the kernel's page cache: while
/// it grows (a log appended to, here or through another mount), a page
/// read at its old end and cached there would read as zeros past that end
/// once the kernel learns the new size (a reply that crosses a stat's or an
/// append's). This mount caches its data anyway.
fn fopen_flags(o: Opened, direct_mmap: bool) -> FopenFlags {
    let mut f = FopenFlags::empty();
    if o.keep_cache {
        f |= FopenFlags::FOPEN_KEEP_CACHE;
    }
    if o.direct || (o.changing && direct_mmap) {
        f |= FopenFlags::FOPEN_DIRECT_IO;
    }
    f
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

fn tn(t: Option<TimeOrNow>) -> Option<i64> {
    t.map(|t| match t {
        TimeOrNow::Now => now_ns(),
        TimeOrNow::SpecificTime(s) => ns(s),
    })
}

/// A fuser reply: each type has its own `error`, with no trait in common.
trait Reply {
    fn error(self, e: FErrno);
}

macro_rules! impl_reply {
    ($($t:ty),*) => {
        $(impl Reply for $t {
            fn error(self, e: FErrno) {
                <$t>::error(self, e)
            }
        })*
    };
}

impl_reply!(
    ReplyAttr,
    ReplyCreate,
    ReplyData,
    ReplyDirectory,
    ReplyDirectoryPlus,
    ReplyEmpty,
    ReplyEntry,
    ReplyIoctl,
    ReplyLseek,
    ReplyOpen,
    ReplyStatfs,
    ReplyWrite,
    ReplyXattr
);

/// The preamble of a FUSE method: opens the metrics op `$op` until the
/// method returns and, for each inode given, returns the guard's error to
/// the kernel if the caller may not use it (see [`FuseFs::guard`]).
macro_rules! begin {
    ($op:literal) => {
        let _op = metrics::global().op($op);
    };
    ($op:literal, $self:ident, $req:ident, $reply:ident, $($ino:expr),+) => {
        let _op = metrics::global().op($op);
        $(
            if let Err(e) = $self.guard($req, $ino) {
                return $reply.error(e);
            }
        )+
    };
}

/// Replies with `ok` to a success, with the error to a failure.
fn answer<R: Reply, T>(r: FsResult<T>, reply: R, ok: impl FnOnce(R, T)) {
    match r {
        Ok(v) => ok(reply, v),
        Err(e) => reply.error(errno(e)),
    }
}

fn empty(r: FsResult<()>, reply: ReplyEmpty) {
    answer(r, reply, |reply, ()| reply.ok())
}

fn xattr(r: FsResult<Vec<u8>>, size: u32, reply: ReplyXattr) {
    answer(r, reply, |reply, v| {
        if size == 0 {
            reply.size(v.len() as u32)
        } else if v.len() > size as usize {
            reply.error(FErrno::from_i32(libc::ERANGE))
        } else {
            reply.data(&v)
        }
    })
}

impl FuseFs {
    /// A deactivated space is the administrator's alone (restore).
    fn guard(&self, req: &Request, ino: INodeNo) -> Result<(), FErrno> {
        self.fs
            .check_caller(ino.0, req.uid(), req.gid())
            .map_err(errno)
    }

    /// A write that cleared set-user-ID/set-group-ID: the kernel's cached
    /// attributes are stale (attributes only, offset < 0: no inode lock).
    fn attrs_changed(&self, ino: INodeNo, w: &Written) {
        if w.mode_changed
            && let Some(n) = self.notifier.get()
        {
            let _ = n.inval_inode(ino, -1, 0);
        }
    }

    fn entry(&self, r: FsResult<Attr>, reply: ReplyEntry) {
        answer(r, reply, |reply, a| {
            reply.entry(&self.ttl, &file_attr(&a), Generation(0))
        })
    }

    /// Attributes read `age` ago (see `Fs::getattr_aged`) are kept by the
    /// kernel for the rest of the TTL only.
    fn attr(&self, r: FsResult<(Attr, Duration)>, reply: ReplyAttr) {
        answer(r, reply, |reply, (a, age)| {
            reply.attr(&self.ttl.saturating_sub(age), &file_attr(&a))
        })
    }
}

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // readdirplus saves one lookup per entry for `ls -l`; atomic O_TRUNC
        // lets open(O_TRUNC) be a single request.
        // DONT_MASK: the umask comes to us apart from the mode, because a
        // directory's default ACL replaces it (see `fs::acl`).
        let _ = config.add_capabilities(
            InitFlags::FUSE_DO_READDIRPLUS
                | InitFlags::FUSE_READDIRPLUS_AUTO
                | InitFlags::FUSE_ATOMIC_O_TRUNC
                | InitFlags::FUSE_DONT_MASK,
        );
        if self.acl && config.add_capabilities(InitFlags::FUSE_POSIX_ACL).is_err() {
            log::warn!(
                "the kernel cannot enforce POSIX ACLs on FUSE: only the mode bits are checked"
            );
        }
        self.direct_mmap = config
            .add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP)
            .is_ok();
        if !self.direct_mmap {
            log::warn!(
                "the kernel cannot map files opened for direct I/O (Linux < 6.6): files being appended to are read through its page cache, where a reader may briefly see zeros at their end"
            );
        }
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_write(1 << 20);
        Ok(())
    }

    /// A name missing inside a space is answered as a negative entry, which
    /// the kernel keeps for the entry TTL: rsync's stat, open and rename of
    /// the same missing name cost one request. This mount's own creates
    /// replace it at once; another mount's are seen within the TTL, as its
    /// removals are.
    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        begin!("lookup", self, req, reply, parent);
        match self.fs.lookup_aged(parent.0, name.as_bytes()) {
            Ok(Looked::Found(a)) => self.entry(Ok(a), reply),
            // A missing name the kernel keeps for what is left of the TTL
            // since it was known missing.
            Ok(Looked::Missing(age)) if self.ttl > age => {
                metrics::global().error(metrics::current_op(), libc::ENOENT);
                let none = Attr::synthetic_dir(0, 0, 0);
                reply.entry(&(self.ttl - age), &file_attr(&none), Generation(0))
            }
            Ok(Looked::Missing(_)) => reply.error(errno(Error::ENOENT)),
            Err(e) => reply.error(errno(e)),
        }
    }

    /// What this mount caches about the inode for the TTL goes with it, and
    /// a snapshot node's number once the kernel holds no lookup of it
    /// (fuser's `batch_forget` calls this for each inode).
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        begin!("getattr", self, req, reply, ino);
        self.attr(self.fs.getattr_aged(ino.0), reply)
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        begin!("setattr", self, req, reply, ino);
        let s = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: tn(atime),
            mtime: tn(mtime),
            ctime: ctime.map(ns),
        };
        self.attr(self.fs.setattr_aged(ino.0, &s, caller(req)), reply)
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        begin!("readlink", self, req, reply, ino);
        answer(self.fs.readlink(ino.0), reply, |reply, t| reply.data(&t))
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        begin!("mknod", self, req, reply, parent);
        let r = self.fs.mknod(
            parent.0,
            name.as_bytes(),
            mode,
            umask,
            rdev,
            None,
            caller(req),
        );
        self.entry(r, reply)
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        begin!("mkdir", self, req, reply, parent);
        let mode = libc::S_IFDIR | (mode & 0o7777);
        let r = self
            .fs
            .mknod(parent.0, name.as_bytes(), mode, umask, 0, None, caller(req));
        self.entry(r, reply)
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        begin!("unlink", self, req, reply, parent);
        let r = self.fs.unlink(parent.0, name.as_bytes(), false);
        empty(r, reply)
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        begin!("rmdir", self, req, reply, parent);
        let r = self.fs.unlink(parent.0, name.as_bytes(), true);
        empty(r, reply)
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        begin!("symlink", self, req, reply, parent);
        let r = self.fs.mknod(
            parent.0,
            link_name.as_bytes(),
            libc::S_IFLNK | 0o777,
            0,
            0,
            Some(target.as_os_str().as_bytes()),
            caller(req),
        );
        self.entry(r, reply)
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        begin!("rename", self, req, reply, parent, newparent);
        let r = self.fs.rename(
            parent.0,
            name.as_bytes(),
            newparent.0,
            newname.as_bytes(),
            flags.bits(),
        );
        empty(r, reply)
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        begin!("link", self, req, reply, ino, newparent);
        let r = self.fs.link(ino.0, newparent.0, newname.as_bytes());
        self.fs.attrs_changed();
        self.entry(r, reply)
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        begin!("open", self, req, reply, ino);
        // An open changes attributes only by a truncate or a create's
        // commit, which end the attribute epoch themselves: the space
        // server's opens of a log for each append keep what is cached.
        let r = self.fs.open(ino.0, flags.0, caller(req));
        answer(r, reply, |reply, o| {
            reply.opened(FileHandle(o.fh), fopen_flags(o, self.direct_mmap))
        })
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        begin!("read");
        answer(self.fs.read(fh.0, offset, size), reply, |reply, d| {
            metrics::global().bytes_read.inc_by(d.len() as u64);
            reply.data(&d)
        })
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        begin!("write");
        // The file's flags now (`fcntl` may have changed them since open).
        let sync = flags.0 & (libc::O_SYNC | libc::O_DSYNC) != 0;
        // The kernel's FUSE_WRITE_KILL_SUIDGID is not needed: the core
        // decides for every write (see `Fs::write`).
        // Attributes: a write clearing set-id bits, and each commit of
        // buffered data, move the epoch in the core; an append updates the
        // file's own.
        // Sent with direct I/O writes (every append): a close waits only
        // for its own process's appends.
        let owner = lock_owner.map(|o| o.0);
        let r = self.fs.write(fh.0, offset, data, caller(req), sync, owner);
        answer(r, reply, |reply, (w, _)| {
            metrics::global().bytes_written.inc_by(u64::from(w.len));
            self.attrs_changed(ino, &w);
            reply.written(w.len)
        })
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        begin!("flush");
        empty(self.fs.flush(fh.0, lock_owner.0), reply)
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        begin!("release");
        empty(self.fs.release(fh.0), reply)
    }

    /// `protocol::APPEND_IOCTL` and `protocol::LANDED_IOCTL`; any other is
    /// not ours (`ENOTTY`).
    fn ioctl(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        begin!("ioctl");
        if cmd == crate::protocol::LANDED_IOCTL {
            let r = self.fs.landed(fh.0);
            return answer(r, reply, |reply, at| reply.ioctl(0, &at.to_ne_bytes()));
        }
        if cmd != crate::protocol::APPEND_IOCTL {
            return reply.error(FErrno::ENOTTY);
        }
        let Some(data) = crate::protocol::append_ioctl_data(in_data) else {
            return reply.error(FErrno::EINVAL);
        };
        let r = self.fs.append_durably(fh.0, data, caller(req));
        answer(r, reply, |reply, (w, at)| {
            metrics::global().bytes_written.inc_by(u64::from(w.len));
            self.attrs_changed(ino, &w);
            // The kernel learns the new size at its next stat (a write
            // would have told it).
            if let Some(n) = self.notifier.get() {
                let _ = n.inval_inode(ino, -1, 0);
            }
            reply.ioctl(0, &at.unwrap_or(u64::MAX).to_ne_bytes())
        })
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        begin!("fsync");
        empty(self.fs.fsync(fh.0), reply)
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        begin!("readdir", self, req, reply, ino);
        answer(
            self.fs.readdir(ino.0, offset, 512, false),
            reply,
            |mut reply, entries| {
                for (off, name, a) in entries {
                    if reply.add(INodeNo(a.ino), off, kind(a.mode), OsStr::from_bytes(&name)) {
                        break;
                    }
                }
                reply.ok()
            },
        )
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        begin!("readdirplus", self, req, reply, ino);
        answer(
            self.fs.readdir(ino.0, offset, 256, true),
            reply,
            |mut reply, entries| {
                let mut entries = entries.into_iter();
                for (off, name, a) in entries.by_ref() {
                    if reply.add(
                        INodeNo(a.ino),
                        off,
                        OsStr::from_bytes(&name),
                        &self.ttl,
                        &file_attr(&a),
                        Generation(0),
                    ) {
                        // Not sent: the kernel will not count it.
                        if name != b"." && name != b".." {
                            self.fs.not_sent(a.ino);
                        }
                        break;
                    }
                }
                for (_, name, a) in entries {
                    if name != b"." && name != b".." {
                        self.fs.not_sent(a.ino);
                    }
                }
                reply.ok()
            },
        )
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        begin!("fsyncdir");
        empty(self.fs.fsyncdir(ino.0), reply)
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        begin!("statfs");
        answer(self.fs.statfs(), reply, |reply, s| {
            reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            )
        })
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        begin!("setxattr", self, req, reply, ino);
        let r = self
            .fs
            .setxattr(ino.0, name.as_bytes(), value, flags, caller(req));
        self.fs.attrs_changed();
        empty(r, reply)
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        begin!("getxattr", self, req, reply, ino);
        xattr(
            self.fs
                .getxattr(ino.0, name.as_bytes(), req.pid(), caller(req)),
            size,
            reply,
        )
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        begin!("listxattr", self, req, reply, ino);
        xattr(self.fs.listxattr(ino.0), size, reply)
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        begin!("removexattr", self, req, reply, ino);
        let r = self.fs.removexattr(ino.0, name.as_bytes());
        self.fs.attrs_changed();
        empty(r, reply)
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        begin!("access");
        // The kernel checks permissions itself (default_permissions).
        reply.ok()
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        begin!("fallocate");
        let r = self.fs.fallocate(fh.0, offset, length, mode, caller(req));
        self.fs.attrs_changed();
        answer(r, reply, |reply, w| {
            self.attrs_changed(ino, &w);
            reply.ok()
        })
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        begin!("lseek");
        let data = match whence {
            libc::SEEK_DATA => true,
            libc::SEEK_HOLE => false,
            // The kernel answers the others itself.
            _ => return reply.error(FErrno::from_i32(libc::EINVAL)),
        };
        if offset < 0 {
            return reply.error(FErrno::from_i32(libc::ENXIO));
        }
        answer(
            self.fs.seek_data(fh.0, offset as u64, data),
            reply,
            |reply, o| reply.offset(o as i64),
        )
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        begin!("create", self, req, reply, parent);
        let r = self
            .fs
            .create(parent.0, name.as_bytes(), mode, umask, flags, caller(req));
        answer(r, reply, |reply, (a, o)| {
            reply.created(
                &self.ttl,
                &file_attr(&a),
                Generation(0),
                FileHandle(o.fh),
                fopen_flags(o, self.direct_mmap),
            )
        })
    }
}
