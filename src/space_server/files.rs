//! The space server's file operations on the mounted tree: plain system
//! calls, blocking (the HTTP layer runs them on tokio's blocking pool), no
//! database access.
//!
//! Invariants:
//! - Every path is opened with `openat2(RESOLVE_BENEATH)` from a descriptor
//!   of the root, so neither `..` nor a symlink can reach outside it (the
//!   kernel answers `EXDEV`, which becomes a 403). Operations on a name
//!   (`renameat`, `linkat`, `unlinkat`) act on one validated segment inside
//!   a directory opened that way.
//! - PUT never shows half a file: the data goes to a temporary name in the
//!   same directory, is fsynced, and is renamed over the target.
//! - POST appends the body to `protolog/last.log` on an `O_APPEND`
//!   descriptor, so the mount appends it in one transaction at the
//!   database's end of file (never interleaved with another mount's
//!   append), and answers once it is durable. On a tshs mount a body that
//!   fits goes through the mount's append call (`protocol::APPEND_IOCTL`),
//!   which answers where it landed; appends to one log through this
//!   server then run at once and meet in the mount's group commit. Else it
//!   is one `write(2)` on a descriptor open `O_SYNC` (durable when it
//!   returns), one append per log at a time, and the offset is what the
//!   mount says it was: `protocol::LANDED_IOCTL` on the same descriptor
//!   names where its last append landed, whatever other mounts or
//!   processes appended at the same moment. Elsewhere (a local disk, another
//!   file system) it is found from the file's size before and after, read
//!   fresh (`AT_STATX_FORCE_SYNC`): a log grows by appends only, so when
//!   they differ by exactly the body's length nothing else landed in
//!   between and the offset is the size before; when another process
//!   appended meanwhile, the span between the two sizes is read back and
//!   the body must occur in it exactly once.
//! - GET of a file whose data is in S3 may answer with the presigned URL
//!   the mount offers as `user.tshs.s3_url` (`--s3-redirect`).
//! - Rotation renames a full `last.log` to the next free `<n>.log` without
//!   ever overwriting a rotated log or rotating one file twice, also with
//!   several servers on several mounts (see [`Tree::rotate`]).
//! - A rotated log does not grow: a rotated log is full, so an append that
//!   opens a full file checks (reading the directory) that it is still
//!   named `last.log` before writing. Another mount's kernel keeps the old
//!   name for up to its entry TTL after a rotation; the append waits until
//!   it sees the new `last.log`. A rotation waits for the appends in
//!   flight through this server; only an append through another server
//!   that opened `last.log` before the rotation (and was still in flight)
//!   lands in the rotated log, and its answer names that file.

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2, renameat};
use nix::sys::stat::Mode;
use nix::unistd::{UnlinkatFlags, fsync, unlinkat};

use super::path::RelPath;
use super::range::{self, Want};
use crate::protocol;

/// The most one append may carry: the mount keeps one `write(2)` of up to
/// 1 MiB in one transaction; a larger one could interleave with another
/// mount's append.
pub const MAX_APPEND: u64 = 1 << 20;

/// How long an append waits for this mount to stop showing a log another
/// mount rotated under the name `last.log` (the entry TTL, 1 s by default).
pub(super) const STALE_NAME_WAIT: Duration = Duration::from_secs(3);

/// Pauses before a GET opens again a file that changed under it (see
/// [`Tree::get`]): a rename on the mount can leave the name unopenable for
/// some 25 ms.
const REOPEN_MS: &[u64] = &[0, 2, 5, 10, 20, 40, 80];

/// A failed file operation. The HTTP layer maps each variant to a status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call failed; the errno decides the status.
    #[error("{op}: {}", errno.desc())]
    Sys { op: &'static str, errno: Errno },
    /// The path may not be used (it leaves the root, or names a volume or
    /// space where a file is needed).
    #[error("{0}")]
    Refused(&'static str),
    /// The path exists but is the wrong kind of thing for the request.
    #[error("{0}")]
    Conflict(&'static str),
    /// The data was appended and is durable, but where could not be told
    /// (another process appended the same bytes at the same moment).
    #[error("appended, but the offset is ambiguous: {0}")]
    OffsetUnknown(String),
    /// Try again soon (a rotation by another server is still settling).
    #[error("{0}")]
    Busy(&'static str),
    /// The space is deactivated for a restore (the mount said so).
    #[error("space {0} is deactivated for a restore: try again later")]
    Deactivated(u32),
    /// A bug (a panic in a file operation).
    #[error("internal error: {0}")]
    Internal(String),
}

pub(super) fn sys(op: &'static str) -> impl Fn(Errno) -> Error {
    move |errno| Error::Sys { op, errno }
}

/// Attributes of a file as the mount reports them.
#[derive(Clone, Copy, Debug)]
pub struct Stat {
    pub ino: u64,
    pub size: u64,
    pub nlink: u32,
    pub mode: u32,
    pub mtime: i64,
}

impl Stat {
    fn kind(&self) -> u32 {
        self.mode & libc::S_IFMT
    }
    pub fn is_dir(&self) -> bool {
        self.kind() == libc::S_IFDIR
    }
    pub fn is_file(&self) -> bool {
        self.kind() == libc::S_IFREG
    }
}

fn statx(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> Result<Stat, Errno> {
    let mut b = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: `name` is NUL-terminated, `b` is a valid statx buffer.
    let r = unsafe {
        libc::statx(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags,
            libc::STATX_BASIC_STATS,
            b.as_mut_ptr(),
        )
    };
    Errno::result(r)?;
    // SAFETY: statx filled the buffer (it was zeroed anyway).
    let b = unsafe { b.assume_init() };
    Ok(Stat {
        ino: b.stx_ino,
        size: b.stx_size,
        nlink: b.stx_nlink,
        mode: b.stx_mode as u32,
        mtime: b.stx_mtime.tv_sec,
    })
}

/// The attributes of an open file, asked of the mount (not the kernel's
/// attribute cache, which may be a second old).
pub fn fresh_fstat(fd: BorrowedFd<'_>) -> Result<Stat, Errno> {
    statx(fd, c"", libc::AT_EMPTY_PATH | libc::AT_STATX_FORCE_SYNC)
}

/// The attributes of `name` in `dir` (not following a symlink), fresh.
pub(super) fn fresh_stat_at(dir: BorrowedFd<'_>, name: &str) -> Result<Stat, Errno> {
    let c = CString::new(name).map_err(|_| Errno::EINVAL)?;
    statx(
        dir,
        &c,
        libc::AT_SYMLINK_NOFOLLOW | libc::AT_STATX_FORCE_SYNC,
    )
}

/// What a GET or HEAD found.
pub enum Got {
    /// A regular file: the open file, its size, and what the Range header asks.
    File {
        file: Arc<File>,
        size: u64,
        want: Want,
    },
    /// A directory: its listing as JSON.
    Dir(Vec<u8>),
    /// A file whose data is in S3: a presigned URL of its object (only when
    /// asked for, see [`Tree::get`]).
    Redirect(String),
}

/// Where an append landed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Appended {
    /// The body occupies `[offset, end)` of the file…
    pub offset: u64,
    pub end: u64,
    /// …whose inode number is this (stable across rotation),…
    pub ino: u64,
    /// …and whose name, when the server answered, was this
    /// (`last.log`, or `<n>.log` when this append's rotation renamed it).
    pub file: String,
}

/// The served tree: a descriptor of its root and the per-file append locks.
pub struct Tree {
    pub(super) root: OwnedFd,
    /// `last.log` is rotated once it reaches this size; 0: never.
    pub(super) rotate_size: u64,
    pub(super) appends: Mutex<HashMap<std::path::PathBuf, Arc<RwLock<()>>>>,
    pub(super) seq: AtomicU64,
    /// Appends go through the mount's append call (until it refuses one:
    /// not a tshs mount).
    pub(super) append_calls: AtomicBool,
}

const RESOLVE: ResolveFlag = ResolveFlag::RESOLVE_BENEATH.union(ResolveFlag::RESOLVE_NO_MAGICLINKS);

impl Tree {
    pub fn open(root: &Path, rotate_size: u64) -> std::io::Result<Tree> {
        let dir = File::open(root)?;
        if !dir.metadata()?.is_dir() {
            return Err(std::io::Error::other(format!(
                "{} is not a directory",
                root.display()
            )));
        }
        Ok(Tree {
            root: dir.into(),
            rotate_size,
            appends: Mutex::default(),
            seq: AtomicU64::new(0),
            append_calls: AtomicBool::new(true),
        })
    }

    /// The space `rel` lies in, if the mount refuses it because it is
    /// deactivated for a restore (its volume's `user.tshs.deactivated_spaces`).
    pub fn deactivated(&self, rel: &RelPath) -> Option<u32> {
        let (volume, space) = rel.volume_and_space()?;
        let space = crate::cluster::parse_space_id(space.to_str()?)?;
        let dir = self
            .open_at(&volume, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty())
            .ok()?;
        let ids = fgetxattr(dir.as_fd(), protocol::DEACTIVATED_SPACES).ok()??;
        protocol::decode_space_ids(&ids)
            .contains(&space)
            .then_some(space)
    }

    /// Opens `rel` below the root; symlinks are followed only while they
    /// stay below it.
    pub(super) fn open_at(
        &self,
        rel: &RelPath,
        flags: OFlag,
        mode: Mode,
    ) -> Result<OwnedFd, Error> {
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .mode(mode)
            .resolve(RESOLVE);
        // openat2 answers EAGAIN when a rename or a mount anywhere on the
        // machine raced the lookup (RESOLVE_BENEATH); it is then retried.
        let path = rel.to_path();
        let mut r = openat2(self.root.as_fd(), &path, how);
        for _ in 0..20 {
            if !matches!(r, Err(Errno::EAGAIN)) {
                break;
            }
            std::thread::yield_now();
            r = openat2(self.root.as_fd(), &path, how);
        }
        r.map_err(|e| match e {
            Errno::EXDEV => Error::Refused("the path leads outside the served tree"),
            Errno::ELOOP => Error::Refused("too many symbolic links in the path"),
            errno => Error::Sys { op: "open", errno },
        })
    }

    /// The directory holding a file of a space and the file's name; refuses
    /// paths that are not inside a space.
    fn parent_of<'a>(&self, rel: &'a RelPath, flags: OFlag) -> Result<(OwnedFd, &'a OsStr), Error> {
        if rel.depth() < 3 {
            return Err(Error::Refused(
                "only files inside a space (/<volume>/<space>/…) can be changed",
            ));
        }
        let (parent, name) = rel.split_last().expect("depth >= 3");
        let dir = self.open_at(&parent, flags | OFlag::O_DIRECTORY, Mode::empty())?;
        Ok((dir, name))
    }

    /// GET / HEAD: a file with the part the `Range` header asks for, or a
    /// directory's listing.
    ///
    /// Two habits of the mount are met here by opening again (after the
    /// pauses of [`REOPEN_MS`]): a file that a rename replaced between the
    /// lookup and the open, or the stat, answers `ENOENT` where a local file
    /// system would serve the old file; and an open file reads only up to
    /// its size when it was opened (close-to-open), while the fresh size
    /// may already be larger (another mount appended): the last byte to be
    /// sent is read first, and a new open sees it.
    ///
    /// With `redirect`, a regular file the mount offers a presigned S3 URL
    /// for is answered with that URL (whatever the range: S3 honours it).
    pub fn get(&self, rel: &RelPath, range: Option<&str>, redirect: bool) -> Result<Got, Error> {
        // O_NONBLOCK: opening a FIFO must not wait for a writer.
        let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK;
        let mut pauses = REOPEN_MS.iter();
        loop {
            let again = match pauses.next() {
                Some(ms) => {
                    std::thread::sleep(std::time::Duration::from_millis(*ms));
                    true
                }
                None => false,
            };
            let fd = match self.open_at(rel, flags, Mode::empty()) {
                // Only a name that is there (a lookup, no open) is worth
                // another try: a missing file is a 404 at once.
                Err(Error::Sys {
                    errno: Errno::ENOENT,
                    ..
                }) if again && self.open_at(rel, OFlag::O_PATH, Mode::empty()).is_ok() => {
                    continue;
                }
                fd => fd?,
            };
            let st = match fresh_fstat(fd.as_fd()) {
                Err(Errno::ENOENT) if again => continue,
                st => st.map_err(sys("stat"))?,
            };
            if st.is_dir() {
                return Ok(Got::Dir(listing(fd, rel)?));
            }
            if !st.is_file() {
                return Err(Error::Conflict("not a regular file"));
            }
            if redirect
                && let Some(url) =
                    fgetxattr(fd.as_fd(), protocol::S3_URL).map_err(sys("getxattr"))?
            {
                let url = String::from_utf8(url)
                    .map_err(|_| Error::Internal("the mount's S3 URL is not UTF-8".into()))?;
                return Ok(Got::Redirect(url));
            }
            let want = range::parse(range, st.size);
            let last = match want {
                Want::All if st.size > 0 => Some(st.size - 1),
                Want::Part { end, .. } => Some(end - 1),
                _ => None,
            };
            let file = File::from(fd);
            if let Some(b) = last
                && again
                && matches!(file.read_at(&mut [0], b), Ok(0) | Err(_))
            {
                continue;
            }
            return Ok(Got::File {
                file: Arc::new(file),
                size: st.size,
                want,
            });
        }
    }

    /// PUT: replaces (or creates) a file atomically; true if it was new.
    pub fn put(&self, rel: &RelPath, data: &[u8]) -> Result<bool, Error> {
        let (dir, name) = self.parent_of(rel, OFlag::O_RDONLY)?;
        let existed = match nix::sys::stat::fstatat(dir.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW)
        {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                return Err(Error::Conflict("a directory has that name"));
            }
            Ok(_) => true,
            Err(Errno::ENOENT) => false,
            Err(errno) => return Err(Error::Sys { op: "stat", errno }),
        };
        let tmp = format!(
            ".tshs-put.{}.{}.tmp",
            std::process::id(),
            self.seq.fetch_add(1, Ordering::Relaxed)
        );
        let fd = openat(
            dir.as_fd(),
            tmp.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        )
        .map_err(sys("create"))?;
        let written = (|| {
            let mut f = File::from(fd);
            f.write_all(data).map_err(|e| Error::Sys {
                op: "write",
                errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            })?;
            fsync(f.as_fd()).map_err(sys("fsync"))?;
            drop(f);
            renameat(dir.as_fd(), tmp.as_str(), dir.as_fd(), name).map_err(sys("rename"))
        })();
        if let Err(e) = written {
            let _ = unlinkat(dir.as_fd(), tmp.as_str(), UnlinkatFlags::NoRemoveDir);
            return Err(e);
        }
        // The new name is durable once the directory is.
        fsync(dir.as_fd()).map_err(sys("fsync"))?;
        Ok(!existed)
    }

    /// DELETE: unlinks a file, or removes an empty directory.
    pub fn delete(&self, rel: &RelPath) -> Result<(), Error> {
        let (dir, name) = self.parent_of(rel, OFlag::O_RDONLY)?;
        let st = nix::sys::stat::fstatat(dir.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(sys("stat"))?;
        let flag = if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            UnlinkatFlags::RemoveDir
        } else {
            UnlinkatFlags::NoRemoveDir
        };
        unlinkat(dir.as_fd(), name, flag).map_err(sys("unlink"))?;
        fsync(dir.as_fd()).map_err(sys("fsync"))
    }
}

/// Reads a directory afresh (the mount answers readdir from the database).
pub(super) fn entries(dir: BorrowedFd<'_>) -> Result<Vec<(String, u64)>, Error> {
    let fd = openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(sys("open"))?;
    let mut d = nix::dir::Dir::from_fd(fd).map_err(sys("opendir"))?;
    let mut out = Vec::new();
    for e in d.iter() {
        let e = e.map_err(sys("readdir"))?;
        let name = OsStr::from_bytes(e.file_name().to_bytes());
        if name == "." || name == ".." {
            continue;
        }
        out.push((name.to_string_lossy().into_owned(), e.ino()));
    }
    Ok(out)
}

/// The value of xattr `name` of an open file; `None` if it has none or the
/// file system has no xattrs.
pub(super) fn fgetxattr(fd: BorrowedFd<'_>, name: &CStr) -> Result<Option<Vec<u8>>, Errno> {
    // Room for a presigned URL at once: each ask of `user.tshs.s3_url` is
    // a query and a signature in the mount.
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: `name` is NUL-terminated and `buf` is writable for its length.
        let r = unsafe {
            libc::fgetxattr(
                fd.as_raw_fd(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        match Errno::result(r) {
            Ok(n) => {
                buf.truncate(n as usize);
                return Ok(Some(buf));
            }
            Err(Errno::ENODATA | Errno::EOPNOTSUPP) => return Ok(None),
            // Larger than the buffer: ask its size, then again.
            Err(Errno::ERANGE) if buf.len() < 1 << 16 => {
                // SAFETY: a size query writes nothing.
                let n = unsafe {
                    libc::fgetxattr(fd.as_raw_fd(), name.as_ptr(), std::ptr::null_mut(), 0)
                };
                buf.resize(Errno::result(n)?.max(buf.len() as isize * 2) as usize, 0);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Reads up to `len` bytes at `pos` (fewer only at the end of the file).
pub fn read_chunk(f: &File, pos: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0; len];
    let mut got = 0;
    while got < len {
        match f.read_at(&mut buf[got..], pos + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// A directory listing: `{"path": …, "entries": [{"name", "type", "size",
/// "mtime"}, …]}`, sorted by name. Names that are not UTF-8 are shown
/// lossily. An entry that vanished while listing is left out.
fn listing(fd: OwnedFd, rel: &RelPath) -> Result<Vec<u8>, Error> {
    let mut items = entries(fd.as_fd())?;
    items.sort();
    let mut out = Vec::with_capacity(items.len());
    for (name, _) in items {
        let Ok(c) = CString::new(name.as_bytes()) else {
            continue;
        };
        let st = match statx(fd.as_fd(), &c, libc::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => continue,
            Err(errno) => return Err(Error::Sys { op: "stat", errno }),
        };
        let kind = match st.kind() {
            libc::S_IFREG => "file",
            libc::S_IFDIR => "dir",
            libc::S_IFLNK => "symlink",
            _ => "other",
        };
        out.push(serde_json::json!({
            "name": name,
            "type": kind,
            "size": st.size,
            "mtime": st.mtime,
        }));
    }
    let doc = serde_json::json!({ "path": rel.display(), "entries": out });
    Ok(serde_json::to_vec(&doc).expect("JSON of plain values"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_offsets_on_a_local_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("vol01/3")).unwrap();
        let t = Tree::open(dir.path(), 10).unwrap();
        let rel = RelPath::parse("/vol01/3/protolog/last.log").unwrap();
        let a = t.append(&rel, b"hello").unwrap();
        assert_eq!((a.offset, a.end, a.file.as_str()), (0, 5, "last.log"));
        let b = t.append(&rel, b"world!").unwrap();
        assert_eq!((b.offset, b.end, b.file.as_str()), (5, 11, "0.log"));
        let c = t.append(&rel, b"x").unwrap();
        assert_eq!((c.offset, c.file.as_str()), (0, "last.log"));
        let p = dir.path().join("vol01/3/protolog");
        assert_eq!(std::fs::read(p.join("0.log")).unwrap(), b"helloworld!");
        assert_eq!(std::fs::read(p.join("last.log")).unwrap(), b"x");
    }

    #[test]
    fn symlinks_out_of_the_root_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("vol01/3")).unwrap();
        std::fs::write(dir.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink("../../../secret", root.join("vol01/3/out")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("vol01/3/etc")).unwrap();
        let t = Tree::open(&root, 0).unwrap();
        for p in ["/vol01/3/out", "/vol01/3/etc/passwd"] {
            let r = t.get(&RelPath::parse(p).unwrap(), None, true);
            assert!(matches!(r, Err(Error::Refused(_))), "{p}");
        }
        let r = t.put(&RelPath::parse("/vol01/3/etc/x").unwrap(), b"x");
        assert!(matches!(r, Err(Error::Refused(_))));
    }
}
