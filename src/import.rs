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

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use mysql::prelude::Queryable;

use crate::cluster::{Route, check_volume_name, parse_space_id};
use crate::db::TxError;

/// A volume found on disk and its spaces (ID, directory).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskVolume {
    pub name: String,
    pub spaces: Vec<(u32, PathBuf)>,
}

/// Reads the layout of a `/spacedata` tree: `<volume>/<space id>/…`.
/// Anything else at those two levels is refused (it would not be visible
/// through the mount), except a `lost+found` at the top.
pub fn scan_root(root: &Path) -> Result<Vec<DiskVolume>> {
    let meta =
        std::fs::metadata(root).with_context(|| format!("cannot import {}", root.display()))?;
    if !meta.is_dir() {
        bail!("cannot import {}: not a directory", root.display());
    }
    let mut volumes = Vec::new();
    for entry in sorted_dir(root)? {
        let (name, path) = entry;
        if name == "lost+found" {
            continue;
        }
        let text = name
            .to_str()
            .ok_or_else(|| anyhow!("cannot import {}: not a UTF-8 name", path.display()))?;
        check_volume_name(text).with_context(|| format!("cannot import {}", path.display()))?;
        if !std::fs::symlink_metadata(&path)?.is_dir() {
            bail!(
                "cannot import {}: only volume directories may be at the top",
                path.display()
            );
        }
        let mut spaces = Vec::new();
        for (sname, spath) in sorted_dir(&path)? {
            let id = sname.to_str().and_then(parse_space_id).ok_or_else(|| {
                anyhow!(
                    "cannot import {}: not a space directory (a space's name is its decimal ID)",
                    spath.display()
                )
            })?;
            if !std::fs::symlink_metadata(&spath)?.is_dir() {
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

fn sorted_dir(dir: &Path) -> Result<Vec<(std::ffi::OsString, PathBuf)>> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .map(|e| e.map(|e| (e.file_name(), e.path())))
        .collect::<io::Result<_>>()
        .with_context(|| format!("cannot read {}", dir.display()))?;
    out.sort();
    Ok(out)
}

/// Reads `[first, last)` of an imported file, cut at `size` (what the import
/// recorded). Bytes the file on disk lacks read as zeros.
pub fn read_span(path: &Path, size: u64, first: u64, last: u64) -> io::Result<Vec<u8>> {
    let end = last.min(size);
    if first >= end {
        return Ok(Vec::new());
    }
    let file = File::open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let mut buf = vec![0u8; (end - first) as usize];
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], first + done as u64) {
            Ok(0) => break, // shorter on disk: the rest stays zero
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        }
    }
    Ok(buf)
}

/// One inode of the tree being imported.
struct Node {
    ino: u64,
    meta: std::fs::Metadata,
    nlink: u32,
    target: Option<Vec<u8>>,
    /// The file on disk its data is read from (regular files with data).
    data: Option<PathBuf>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// What [`import_tree`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeStats {
    pub inodes: u64,
    pub entries: u64,
    /// Bytes of regular files left on disk for the data step.
    pub bytes: u64,
}

/// Imports the tree of space `space` from `dir` (step 1 above). Returns
/// `None` if the space is already in its Storage Node (another process
/// imported it), which is not an error.
pub fn import_tree(route: &Route, space: u32, dir: &Path) -> Result<Option<TreeStats>> {
    let (nodes, dentries) = walk(dir)?;
    let next = nodes.iter().map(|n| n.ino).max().unwrap_or(1) + 1;
    let next = next.max(dentries.iter().map(|d| d.3).max().unwrap_or(0) + 1);
    let stats = TreeStats {
        inodes: nodes.len() as u64,
        entries: dentries.len() as u64,
        bytes: nodes
            .iter()
            .filter(|n| n.data.is_some())
            .map(|n| n.meta.size())
            .sum(),
    };
    let r = route.tx(|tx| {
        let present: Option<u32> = tx.exec_first(
            "SELECT space_id FROM spaces WHERE space_id = ? FOR UPDATE",
            (space,),
        )?;
        if present.is_some() {
            return Ok(false);
        }
        tx.exec_drop(
            "INSERT INTO spaces (space_id, next_ino, next_seq) VALUES (?, ?, ?)",
            (space, next, next),
        )?;
        tx.exec_drop(
            "INSERT IGNORE INTO space_fence (space_id) VALUES (?)",
            (space,),
        )?;
        for chunk in nodes.chunks(ROWS) {
            insert_inodes(tx, space, chunk)?;
        }
        for chunk in dentries.chunks(ROWS) {
            let mut sql =
                String::from("INSERT INTO dentries (space_id, parent, name, ino, seq) VALUES ");
            let mut params: Vec<mysql::Value> = Vec::new();
            for (i, (parent, name, ino, seq)) in chunk.iter().enumerate() {
                sql.push_str(if i == 0 {
                    "(?, ?, ?, ?, ?)"
                } else {
                    ", (?, ?, ?, ?, ?)"
                });
                params.extend([
                    space.into(),
                    (*parent).into(),
                    name.clone().into(),
                    (*ino).into(),
                    (*seq).into(),
                ]);
            }
            tx.exec_drop(sql, params)?;
        }
        for n in &nodes {
            for (name, value) in &n.xattrs {
                tx.exec_drop(
                    "INSERT INTO xattrs (space_id, ino, name, value) VALUES (?, ?, ?, ?)",
                    (space, n.ino, name, value),
                )?;
            }
        }
        Ok(true)
    });
    match r {
        Ok(true) => Ok(Some(stats)),
        Ok(false) => Ok(None),
        // Another process inserted the space between our check and insert.
        Err(TxError::Sql(code, _, _)) if code == crate::db::code::DUP_ENTRY => Ok(None),
        Err(e) => Err(anyhow!(
            "storage node {}: importing space {space}: {e}",
            route.id()
        )),
    }
}

/// Rows per multi-row INSERT.
const ROWS: usize = 200;

fn insert_inodes(
    tx: &mut mysql::Transaction<'_>,
    space: u32,
    nodes: &[Node],
) -> Result<(), mysql::Error> {
    let mut sql = String::from(
        "INSERT INTO inodes (space_id, ino, mode, uid, gid, nlink, size, stored, rdev, atime, mtime, ctime, btime, target, import_path) VALUES ",
    );
    let mut params: Vec<mysql::Value> = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        sql.push_str(if i == 0 {
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        } else {
            ", (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        });
        let m = &n.meta;
        let is_dir = m.is_dir();
        let size = if is_dir { 0 } else { m.size() };
        let ns = |s: i64, n: i64| s * 1_000_000_000 + n;
        params.extend([
            space.into(),
            n.ino.into(),
            m.mode().into(),
            m.uid().into(),
            m.gid().into(),
            n.nlink.into(),
            size.into(),
            // Until the data is in, `stored` counts it where it is.
            if n.data.is_some() {
                size
            } else {
                n.target.as_ref().map_or(0, |t| t.len() as u64)
            }
            .into(),
            (m.rdev() as u32).into(),
            ns(m.atime(), m.atime_nsec()).into(),
            ns(m.mtime(), m.mtime_nsec()).into(),
            ns(m.ctime(), m.ctime_nsec()).into(),
            ns(m.mtime(), m.mtime_nsec()).into(),
            n.target.clone().into(),
            n.data
                .as_ref()
                .map(|p| p.as_os_str().as_bytes().to_vec())
                .into(),
        ]);
    }
    tx.exec_drop(sql, params)
}

/// Every inode under `dir` (the space root is inode 1) and every directory
/// entry (parent, name, inode, readdir sequence). Hard links within the
/// space share one inode; a directory's link count is 2 + its subdirectories.
type Dentry = (u64, Vec<u8>, u64, u64);

fn walk(dir: &Path) -> Result<(Vec<Node>, Vec<Dentry>)> {
    let root = std::fs::symlink_metadata(dir)
        .with_context(|| format!("cannot import {}", dir.display()))?;
    let mut nodes = vec![Node {
        ino: 1,
        nlink: 2,
        target: None,
        data: None,
        xattrs: xattrs(dir)?,
        meta: root,
    }];
    let mut dentries: Vec<Dentry> = Vec::new();
    // (device, inode) on disk → index in `nodes`, for hard links.
    let mut linked: HashMap<(u64, u64), usize> = HashMap::new();
    let mut next = 2u64;
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    while let Some((path, parent)) = stack.pop() {
        for (name, child) in sorted_dir(&path)? {
            let bytes = name.as_bytes();
            if bytes.len() > crate::fs::meta::NAME_MAX {
                bail!(
                    "cannot import {}: name longer than 255 bytes",
                    child.display()
                );
            }
            let meta = std::fs::symlink_metadata(&child)
                .with_context(|| format!("cannot import {}", child.display()))?;
            let parent_ino = nodes[parent].ino;
            let key = (meta.dev(), meta.ino());
            if !meta.is_dir()
                && meta.nlink() > 1
                && let Some(&i) = linked.get(&key)
            {
                nodes[i].nlink += 1;
                dentries.push((parent_ino, bytes.to_vec(), nodes[i].ino, next));
                next += 1;
                continue;
            }
            let ino = next;
            next += 1;
            let ft = meta.file_type();
            let target = if ft.is_symlink() {
                Some(std::fs::read_link(&child)?.as_os_str().as_bytes().to_vec())
            } else {
                None
            };
            let data = (ft.is_file() && meta.size() > 0).then(|| child.clone());
            let is_dir = ft.is_dir();
            if is_dir {
                nodes[parent].nlink += 1;
            }
            nodes.push(Node {
                ino,
                nlink: if is_dir { 2 } else { 1 },
                target,
                data,
                xattrs: if ft.is_symlink() {
                    Vec::new()
                } else {
                    xattrs(&child)?
                },
                meta,
            });
            dentries.push((parent_ino, bytes.to_vec(), ino, ino));
            if is_dir {
                stack.push((child, nodes.len() - 1));
            } else if nodes.last().is_some_and(|n| n.meta.nlink() > 1) {
                linked.insert(key, nodes.len() - 1);
            }
        }
    }
    Ok((nodes, dentries))
}

/// The `user.` extended attributes of a file (other namespaces belong to
/// the system that wrote them).
fn xattrs(path: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
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
    for name in names.split(|b| *b == 0).filter(|n| n.starts_with(b"user.")) {
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

/// The `import_path` bytes of a file, as a path.
pub fn path_of(bytes: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_span_cuts_at_the_recorded_size_and_fills_a_short_file() {
        let dir = std::env::temp_dir().join(format!("tshs-import-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("f");
        std::fs::write(&f, b"0123456789").unwrap();
        assert_eq!(read_span(&f, 10, 2, 5).unwrap(), b"234");
        assert_eq!(read_span(&f, 6, 4, 100).unwrap(), b"45");
        assert_eq!(read_span(&f, 12, 8, 12).unwrap(), b"89\0\0");
        assert!(read_span(&f, 10, 10, 20).unwrap().is_empty());
        assert!(read_span(&dir.join("missing"), 10, 0, 1).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn scan_root_finds_volumes_and_refuses_what_the_mount_cannot_show() {
        let dir = std::env::temp_dir().join(format!("tshs-scan-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("vol01/3")).unwrap();
        std::fs::create_dir_all(dir.join("vol01/12")).unwrap();
        std::fs::create_dir_all(dir.join("lost+found")).unwrap();
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
