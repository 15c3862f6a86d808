//! Import of an existing on-disk `/spacedata` tree (the reference's
//! `TSHSImportVolumes`), while the spaces are in use.
//!
//! `tshs import-volumes <path>` records an `IMPORT` job and, in the Admin
//! Node, every volume and space found under the path, each space with the
//! directory it comes from (`spaces.import_from`). From then on the spaces
//! are served by the cluster; the disk tree is only read, never changed.
//! An import happens in two steps per space:
//!
//! 1. Its tree: names, attributes, symlinks, hard links and xattrs become the
//!    space's rows in one Storage Node transaction ([`import_tree`]), and each
//!    regular file's inode names its file on disk (`inodes.import_path`).
//!    The mount does this the first time the space is used, perform-import
//!    ahead of time, whichever comes first; the other finds it done.
//! 2. Its data: perform-import copies each file's bytes into extents and
//!    clears `import_path`, one transaction per file. Until then the mount
//!    reads the file from disk ([`read_span`]); the first write, append or
//!    truncate brings it in first (the same step), so writes go to the cluster.
//!
//! When no space of the job has anything left, the job becomes `IMPORTED`.
//! The disk tree must not be written to once the job exists: the cluster
//! serves those spaces, and a file changed on disk behind its back is read
//! with the size the import recorded.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use mysql::prelude::Queryable;

use crate::cluster::{Cluster, check_volume_name, parse_space_id};
use crate::shard::Shard;

/// A volume found on disk and its spaces (ID, directory).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskVolume {
    pub name: String,
    pub spaces: Vec<(u32, PathBuf)>,
}

/// Reads the layout of a `/spacedata` tree: `<volume>/<space id>/…` (a
/// volume or space directory may be a symlink to where it lives). Anything
/// else at those two levels is refused (the mount could not show it),
/// except `lost+found`.
pub fn scan_root(root: &Path) -> Result<Vec<DiskVolume>> {
    let meta =
        std::fs::metadata(root).with_context(|| format!("cannot import {}", root.display()))?;
    if !meta.is_dir() {
        bail!("cannot import {}: not a directory", root.display());
    }
    if root.as_os_str().as_bytes().contains(&b';') {
        bail!(
            "cannot import {}: the path may not contain ';'",
            root.display()
        );
    }
    let fs = nix::sys::statfs::statfs(root)
        .with_context(|| format!("cannot import {}", root.display()))?;
    if fs.filesystem_type().0 as i64 == FUSE_SUPER_MAGIC {
        bail!(
            "cannot import {}: it is on a FUSE file system (a tshs mount cannot import itself)",
            root.display()
        );
    }
    let is_dir = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_dir());
    let mut volumes = Vec::new();
    for (name, path) in sorted_dir(root)? {
        if name == "lost+found" {
            continue;
        }
        let text = name
            .to_str()
            .ok_or_else(|| anyhow!("cannot import {}: not a UTF-8 name", path.display()))?;
        check_volume_name(text).with_context(|| format!("cannot import {}", path.display()))?;
        if !is_dir(&path) {
            bail!(
                "cannot import {}: only volume directories may be at the top",
                path.display()
            );
        }
        let mut spaces = Vec::new();
        for (sname, spath) in sorted_dir(&path)? {
            if sname == "lost+found" {
                continue;
            }
            let id = sname.to_str().and_then(parse_space_id).ok_or_else(|| {
                anyhow!(
                    "cannot import {}: not a space directory (a space's name is its decimal ID)",
                    spath.display()
                )
            })?;
            if !is_dir(&spath) {
                bail!(
                    "cannot import {}: a space must be a directory",
                    spath.display()
                );
            }
            spaces.push((id, spath));
        }
        volumes.push(DiskVolume {
            name: text.to_string(),
            spaces,
        });
    }
    let mut seen = HashMap::new();
    for v in &volumes {
        for (id, path) in &v.spaces {
            if let Some(other) = seen.insert(*id, path) {
                bail!(
                    "cannot import: space {id} is both {} and {}",
                    other.display(),
                    path.display()
                );
            }
        }
    }
    Ok(volumes)
}

/// `statfs`'s type of a FUSE file system.
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

fn sorted_dir(dir: &Path) -> Result<Vec<(std::ffi::OsString, PathBuf)>> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .map(|e| e.map(|e| (e.file_name(), e.path())))
        .collect::<io::Result<_>>()
        .with_context(|| format!("cannot read {}", dir.display()))?;
    out.sort();
    Ok(out)
}

/// A file whose data is still on the imported disk tree: its path and what
/// the import recorded of it.
pub struct DiskFile<'a> {
    pub path: &'a Path,
    pub size: u64,
    /// Its mtime in ns (`None`: imported before that was recorded).
    pub mtime: Option<i64>,
}

impl<'a> DiskFile<'a> {
    /// From an inode's `import_path`, `size` and `import_mtime`.
    pub fn new(path: &'a [u8], size: u64, mtime: Option<i64>) -> DiskFile<'a> {
        DiskFile {
            path: path_of(path),
            size,
            mtime,
        }
    }
}

/// Reads `[first, last)` of an imported file, cut at its recorded size. A
/// file that is no longer what was imported (another size or mtime, or no
/// longer a regular file) is an error naming it: its bytes would be wrong.
pub fn read_span(f: &DiskFile, first: u64, last: u64) -> io::Result<Vec<u8>> {
    let (path, size) = (f.path, f.size);
    let end = last.min(size);
    if first >= end {
        return Ok(Vec::new());
    }
    let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    // Not following a symlink, not waiting on a FIFO put in its place.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(named)?;
    let meta = file.metadata().map_err(named)?;
    let (len, mtime) = (meta.len(), times_ns(&meta)[1]);
    if !meta.is_file() || len != size || f.mtime.is_some_and(|m| m != mtime) {
        return Err(io::Error::other(format!(
            "{}: changed on disk since it was imported ({len} bytes, mtime {mtime} ns; {size} bytes, mtime {} ns recorded)",
            path.display(),
            f.mtime.map_or("-".to_string(), |m| m.to_string())
        )));
    }
    let mut buf = vec![0u8; (end - first) as usize];
    file.read_exact_at(&mut buf, first).map_err(named)?;
    Ok(buf)
}

/// What [`import_tree`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeStats {
    pub inodes: u64,
    pub entries: u64,
    /// Bytes of regular files left on disk for the data step.
    pub bytes: u64,
}

/// Brings the tree of space `space` in from `dir` (step 1 above) on the
/// node the Admin Node names, unless it is in already. Returns what was
/// imported, `None` if another process had done it.
///
/// A space whose tree is not in has no rows anywhere, so copy-shards moves
/// it by renaming its node (see [`Cluster::switch_unimported`]); the import
/// is recorded only if the space is still on the node it was imported into,
/// else the rows this call made are dropped and the import runs again on
/// the new node. (Rows found there already belong to whoever made them.)
pub fn bring_tree_in(cluster: &Cluster, space: u32, dir: &Path) -> Result<Option<TreeStats>> {
    for _ in 0..5 {
        let row = cluster
            .space(space)?
            .ok_or_else(|| anyhow!("space {space} is not in the Admin Node"))?;
        if row.import_from.is_none() {
            return Ok(None);
        }
        let shard = cluster.shard(row.node_id)?;
        let stats = import_tree(&shard, space, dir)?;
        if cluster.tree_imported(space, row.node_id)? {
            return Ok(stats);
        }
        if stats.is_some() {
            // Rows this call made on a node the space left: nothing else
            // uses them (no file of a tree not yet recorded has data
            // elsewhere), and the fence row stays.
            log::info!(
                "space {space} moved off storage node {} while its tree was imported there: again on its new node",
                row.node_id
            );
            shard.purge_rows(space, &[])?;
        }
    }
    bail!("space {space} kept moving while its tree was imported")
}

/// Imports the tree of space `space` from `dir` into `shard`, in one
/// transaction, directory by directory: memory stays bounded by the
/// directories still to visit and the hard-linked files seen. Returns
/// `None` if the space is already there (another process imported it).
fn import_tree(shard: &Shard, space: u32, dir: &Path) -> Result<Option<TreeStats>> {
    let failure: RefCell<Option<anyhow::Error>> = RefCell::new(None);
    let r = shard.tx(|tx| {
        // The fence row before the space's: the fence trigger on `spaces`
        // reads it with a share lock, and a locking read of a missing row
        // locks the gap beside it, so imports of neighbouring spaces would
        // deadlock each other (as would a locking read of the missing space
        // row). A second importer of the same space waits at the space row
        // for the first, then finds it there.
        tx.exec_drop(
            "INSERT IGNORE INTO space_fence (space_id) VALUES (?)",
            (space,),
        )?;
        tx.exec_drop(
            "INSERT IGNORE INTO spaces (space_id, next_ino, next_seq) VALUES (?, 2, 2)",
            (space,),
        )?;
        if tx.affected_rows() == 0 {
            return Ok(None);
        }
        let mut w = Walker {
            tx,
            space,
            next: 2,
            links: HashMap::new(),
            inodes: Vec::new(),
            dentries: Vec::new(),
            stats: TreeStats::default(),
        };
        let stats = w.run(dir).map_err(|e| match e {
            WalkError::Sql(e) => e,
            WalkError::Disk(e) => {
                *failure.borrow_mut() = Some(e);
                crate::db::body_failed("the tree could not be read")
            }
        })?;
        Ok(Some(stats))
    });
    if let Some(e) = failure.into_inner() {
        return Err(e);
    }
    match r {
        Ok(stats) => Ok(stats),
        Err(e) => Err(anyhow!(
            "storage node {}: importing space {space}: {e}",
            shard.id()
        )),
    }
}

enum WalkError {
    Sql(mysql::Error),
    Disk(anyhow::Error),
}

impl From<mysql::Error> for WalkError {
    fn from(e: mysql::Error) -> Self {
        WalkError::Sql(e)
    }
}

impl From<anyhow::Error> for WalkError {
    fn from(e: anyhow::Error) -> Self {
        WalkError::Disk(e)
    }
}

/// An inode row waiting to be inserted.
struct InodeRow {
    ino: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    size: u64,
    rdev: u32,
    times: [i64; 3],
    target: Option<Vec<u8>>,
    /// The file on disk its data is read from (regular files with data).
    data: Option<Vec<u8>>,
}

impl InodeRow {
    fn new(ino: u64, m: &std::fs::Metadata, nlink: u32) -> InodeRow {
        InodeRow {
            ino,
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            nlink,
            size: if m.is_dir() { 0 } else { m.size() },
            rdev: m.rdev() as u32,
            times: times_ns(m),
            target: None,
            data: None,
        }
    }
}

/// Rows per multi-row INSERT.
const ROWS: usize = 200;

/// Walks a space's tree on disk and inserts its rows in the transaction.
struct Walker<'t, 'c> {
    tx: &'t mut mysql::Transaction<'c>,
    space: u32,
    /// The next inode number / readdir sequence (one counter, as the mount's).
    next: u64,
    /// Hard-linked files seen: (device, inode) on disk → (inode here, links).
    links: HashMap<(u64, u64), (u64, u32)>,
    inodes: Vec<InodeRow>,
    /// (parent, name, inode, sequence)
    dentries: Vec<(u64, Vec<u8>, u64, u64)>,
    stats: TreeStats,
}

impl Walker<'_, '_> {
    fn run(&mut self, root: &Path) -> Result<TreeStats, WalkError> {
        let mut stack = vec![(root.to_path_buf(), 1u64)];
        while let Some((dir, ino)) = stack.pop() {
            self.directory(&dir, ino, &mut stack)?;
        }
        self.flush()?;
        // Hard links: every name is in now.
        let linked: Vec<(u64, u32)> = self.links.values().filter(|l| l.1 > 1).copied().collect();
        for (ino, n) in linked {
            self.tx.exec_drop(
                "UPDATE inodes SET nlink = ? WHERE space_id = ? AND ino = ?",
                (n, self.space, ino),
            )?;
        }
        self.tx.exec_drop(
            "UPDATE spaces SET next_ino = ?, next_seq = ? WHERE space_id = ?",
            (self.next, self.next, self.space),
        )?;
        Ok(self.stats)
    }

    /// Inserts a directory's entries (and their inodes, but for
    /// subdirectories, which come when they are visited), then its own inode.
    fn directory(
        &mut self,
        dir: &Path,
        ino: u64,
        stack: &mut Vec<(PathBuf, u64)>,
    ) -> Result<(), WalkError> {
        // The space's own directory may be a symlink to where it lives.
        let meta = if ino == 1 {
            std::fs::metadata(dir)
        } else {
            std::fs::symlink_metadata(dir)
        }
        .with_context(|| format!("cannot import {}", dir.display()))?;
        let mut subdirs = 0u32;
        for (name, child) in sorted_dir(dir)? {
            let bytes = name.as_bytes();
            if bytes.len() > crate::fs::meta::NAME_MAX {
                return Err(anyhow!(
                    "cannot import {}: name longer than 255 bytes",
                    child.display()
                )
                .into());
            }
            let m = std::fs::symlink_metadata(&child)
                .with_context(|| format!("cannot import {}", child.display()))?;
            self.stats.entries += 1;
            let key = (m.dev(), m.ino());
            if !m.is_dir()
                && m.nlink() > 1
                && let Some(l) = self.links.get_mut(&key)
            {
                l.1 += 1;
                let (target, seq) = (l.0, self.next);
                self.next += 1;
                self.entry(ino, bytes, target, seq)?;
                continue;
            }
            let child_ino = self.next;
            self.next += 1;
            self.entry(ino, bytes, child_ino, child_ino)?;
            if m.is_dir() {
                subdirs += 1;
                stack.push((child, child_ino));
                continue;
            }
            if m.nlink() > 1 {
                self.links.insert(key, (child_ino, 1));
            }
            let mut row = InodeRow::new(child_ino, &m, 1);
            if m.file_type().is_symlink() {
                let t = std::fs::read_link(&child)
                    .with_context(|| format!("cannot import {}", child.display()))?;
                row.target = Some(t.into_os_string().into_vec());
            } else {
                self.xattrs(child_ino, &child)?;
                if m.is_file() && m.size() > 0 {
                    if child.as_os_str().len() > MAX_PATH {
                        return Err(anyhow!(
                            "cannot import {}: path longer than {MAX_PATH} bytes",
                            child.display()
                        )
                        .into());
                    }
                    self.stats.bytes += m.size();
                    row.data = Some(child.into_os_string().into_vec());
                }
            }
            self.inode(row)?;
        }
        self.xattrs(ino, dir)?;
        let mut row = InodeRow::new(ino, &meta, 2 + subdirs);
        row.mode = libc::S_IFDIR | (meta.mode() & 0o7777);
        self.inode(row)
    }

    fn entry(&mut self, parent: u64, name: &[u8], ino: u64, seq: u64) -> Result<(), WalkError> {
        self.dentries.push((parent, name.to_vec(), ino, seq));
        if self.dentries.len() >= ROWS {
            self.flush()?;
        }
        Ok(())
    }

    fn inode(&mut self, row: InodeRow) -> Result<(), WalkError> {
        self.stats.inodes += 1;
        self.inodes.push(row);
        if self.inodes.len() >= ROWS {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), mysql::Error> {
        if !self.inodes.is_empty() {
            let mut sql = String::from(
                "INSERT INTO inodes (space_id, ino, mode, uid, gid, nlink, size, stored, rdev, atime, mtime, ctime, btime, target, import_path, import_mtime) VALUES ",
            );
            let mut params: Vec<mysql::Value> = Vec::new();
            for (i, r) in self.inodes.drain(..).enumerate() {
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str("(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
                // Until the data is in, `stored` counts it where it is.
                let stored = match (&r.data, &r.target) {
                    (Some(_), _) => r.size,
                    (None, Some(t)) => t.len() as u64,
                    _ => 0,
                };
                let disk_mtime = r.data.is_some().then_some(r.times[1]);
                params.extend([
                    self.space.into(),
                    r.ino.into(),
                    r.mode.into(),
                    r.uid.into(),
                    r.gid.into(),
                    r.nlink.into(),
                    r.size.into(),
                    stored.into(),
                    r.rdev.into(),
                    r.times[0].into(),
                    r.times[1].into(),
                    r.times[2].into(),
                    r.times[1].into(),
                    r.target.into(),
                    r.data.into(),
                    disk_mtime.into(),
                ]);
            }
            self.tx.exec_drop(sql, params)?;
        }
        if !self.dentries.is_empty() {
            let mut sql =
                String::from("INSERT INTO dentries (space_id, parent, name, ino, seq) VALUES ");
            let mut params: Vec<mysql::Value> = Vec::new();
            for (i, (parent, name, ino, seq)) in self.dentries.drain(..).enumerate() {
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str("(?, ?, ?, ?, ?)");
                params.extend([
                    self.space.into(),
                    parent.into(),
                    name.into(),
                    ino.into(),
                    seq.into(),
                ]);
            }
            self.tx.exec_drop(sql, params)?;
        }
        Ok(())
    }

    /// Copies a file's extended attributes (all that root can read: `user.`,
    /// ACLs, `trusted.`, `security.`).
    fn xattrs(&mut self, ino: u64, path: &Path) -> Result<(), WalkError> {
        for (name, value) in disk_xattrs(path)? {
            self.tx.exec_drop(
                "INSERT INTO xattrs (space_id, ino, name, value) VALUES (?, ?, ?, ?)",
                (self.space, ino, name, value),
            )?;
        }
        Ok(())
    }
}

/// Longest on-disk path an inode can name (`inodes.import_path`).
const MAX_PATH: usize = 4096;

/// The extended attributes of a file (not following a symlink).
pub fn disk_xattrs(path: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    let err = || {
        anyhow!(
            "cannot import {}: {}",
            path.display(),
            io::Error::last_os_error()
        )
    };
    // SAFETY: valid C string; a null buffer asks for the size.
    let n = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOTSUP) {
            return Ok(Vec::new());
        }
        return Err(err());
    }
    let mut names = vec![0u8; n as usize];
    // SAFETY: the buffer is as long as we say.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n < 0 {
        return Err(err());
    }
    names.truncate(n as usize);
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name)?;
        // SAFETY: as above.
        let len = unsafe { libc::lgetxattr(c.as_ptr(), cname.as_ptr(), std::ptr::null_mut(), 0) };
        if len < 0 {
            return Err(err());
        }
        let mut value = vec![0u8; len as usize];
        // SAFETY: as above.
        let len = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if len < 0 {
            return Err(err());
        }
        value.truncate(len as usize);
        out.push((name.to_vec(), value));
    }
    Ok(out)
}

/// The attributes of a space directory not imported yet, as the mount
/// shows it (inode `ino`).
pub fn dir_attr(ino: u64, dir: &Path) -> Result<crate::fs::Attr> {
    let m = std::fs::metadata(dir).with_context(|| format!("cannot import {}", dir.display()))?;
    let [atime, mtime, ctime] = times_ns(&m);
    Ok(crate::fs::Attr {
        ino,
        mode: libc::S_IFDIR | (m.mode() & 0o7777),
        nlink: m.nlink() as u32,
        uid: m.uid(),
        gid: m.gid(),
        size: 0,
        stored: 0,
        rdev: 0,
        atime,
        mtime,
        ctime,
        btime: mtime,
    })
}

/// atime, mtime and ctime in nanoseconds since the epoch.
fn times_ns(m: &std::fs::Metadata) -> [i64; 3] {
    let ns = |s: i64, n: i64| s * 1_000_000_000 + n;
    [
        ns(m.atime(), m.atime_nsec()),
        ns(m.mtime(), m.mtime_nsec()),
        ns(m.ctime(), m.ctime_nsec()),
    ]
}

/// The `import_path` bytes of a file, as a path.
pub fn path_of(bytes: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_span_reads_what_was_imported_and_refuses_a_changed_file() {
        let dir = std::env::temp_dir().join(format!("tshs-import-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("f");
        std::fs::write(&f, b"0123456789").unwrap();
        let mtime = times_ns(&std::fs::metadata(&f).unwrap())[1];
        fn file(path: &Path, size: u64, mtime: Option<i64>) -> DiskFile<'_> {
            DiskFile { path, size, mtime }
        }
        let imported = file(&f, 10, Some(mtime));
        assert_eq!(read_span(&imported, 2, 5).unwrap(), b"234");
        assert_eq!(read_span(&imported, 8, 100).unwrap(), b"89");
        assert!(read_span(&imported, 10, 20).unwrap().is_empty());
        assert_eq!(read_span(&file(&f, 10, None), 0, 2).unwrap(), b"01");
        let e = read_span(&file(&f, 12, Some(mtime)), 0, 4)
            .unwrap_err()
            .to_string();
        assert!(e.contains("changed on disk since it was imported"), "{e}");
        // Rewritten to the same size: the mtime tells.
        std::fs::write(&f, b"abcdefghij").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000))
            .unwrap();
        let e = read_span(&imported, 0, 4).unwrap_err().to_string();
        assert!(e.contains("changed on disk since it was imported"), "{e}");
        std::os::unix::fs::symlink(&f, dir.join("link")).unwrap();
        assert!(read_span(&file(&dir.join("link"), 10, None), 0, 1).is_err());
        assert!(read_span(&file(&dir.join("missing"), 10, None), 0, 1).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn scan_root_finds_volumes_and_refuses_what_the_mount_cannot_show() {
        let dir = std::env::temp_dir().join(format!("tshs-scan-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("vol01/3")).unwrap();
        std::fs::create_dir_all(dir.join("vol01/12")).unwrap();
        std::fs::create_dir_all(dir.join("lost+found")).unwrap();
        std::fs::create_dir_all(dir.join("vol01/lost+found")).unwrap();
        let v = scan_root(&dir).unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].name, "vol01");
        assert_eq!(
            v[0].spaces.iter().map(|s| s.0).collect::<Vec<_>>(),
            vec![12, 3]
        );
        std::fs::create_dir_all(dir.join("vol02/3")).unwrap();
        let e = format!("{:#}", scan_root(&dir).unwrap_err());
        assert!(e.contains("space 3 is both"), "{e}");
        std::fs::remove_dir_all(dir.join("vol02")).unwrap();
        std::fs::write(dir.join("vol01/notes"), b"x").unwrap();
        let e = format!("{:#}", scan_root(&dir).unwrap_err());
        assert!(e.contains("not a space directory"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
        let e = format!("{:#}", scan_root(&dir).unwrap_err());
        assert!(e.contains("cannot import"), "{e}");
    }
}
