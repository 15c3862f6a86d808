//! The tree walker: brings a space's tree in from disk (step 1 of
//! [`super`]), writing its rows through [`TreeWriter`].

use std::collections::HashMap;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

use super::sorted_dir;
use crate::cluster::Cluster;
use crate::disk_tier::{self, times_ns};
use crate::shard::{IMPORT_PATH_MAX, ImportedInode, NAME_MAX, Shard, TreeError, TreeWriter};

/// What [`bring_tree_in`] imported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeStats {
    pub inodes: u64,
    pub entries: u64,
    /// Bytes of regular files left on disk for the data step.
    pub bytes: u64,
}

/// Brings the tree of space `space` in from `dir` (step 1 of [`super`]) on the
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
    shard.import_tree(space, |rows| {
        Walker {
            next: 2,
            links: HashMap::new(),
            stats: TreeStats::default(),
        }
        .run(rows, dir)
    })
}

fn inode_row(ino: u64, m: &std::fs::Metadata, nlink: u32) -> ImportedInode {
    ImportedInode {
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

/// Walks a space's tree on disk, handing its rows to a [`TreeWriter`].
struct Walker {
    /// The next inode number / readdir sequence (one counter, as the mount's).
    next: u64,
    /// Hard-linked files seen: (device, inode) on disk → (inode here, links).
    links: HashMap<(u64, u64), (u64, u32)>,
    stats: TreeStats,
}

impl Walker {
    fn run(&mut self, rows: &mut TreeWriter, root: &Path) -> Result<TreeStats, TreeError> {
        let mut stack = vec![(root.to_path_buf(), 1u64)];
        while let Some((dir, ino)) = stack.pop() {
            self.directory(rows, &dir, ino, &mut stack)?;
        }
        // Hard links: every name is in now.
        let linked: Vec<(u64, u32)> = self.links.values().filter(|l| l.1 > 1).copied().collect();
        rows.finish(&linked, self.next)?;
        Ok(self.stats)
    }

    /// Hands over a directory's entries (and their inodes, but for
    /// subdirectories, which come when they are visited), then its own inode.
    fn directory(
        &mut self,
        rows: &mut TreeWriter,
        dir: &Path,
        ino: u64,
        stack: &mut Vec<(PathBuf, u64)>,
    ) -> Result<(), TreeError> {
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
            if bytes.len() > NAME_MAX {
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
                rows.entry(ino, bytes, target, seq)?;
                continue;
            }
            let child_ino = self.next;
            self.next += 1;
            rows.entry(ino, bytes, child_ino, child_ino)?;
            if m.is_dir() {
                subdirs += 1;
                stack.push((child, child_ino));
                continue;
            }
            if m.nlink() > 1 {
                self.links.insert(key, (child_ino, 1));
            }
            let mut row = inode_row(child_ino, &m, 1);
            if m.file_type().is_symlink() {
                let t = std::fs::read_link(&child)
                    .with_context(|| format!("cannot import {}", child.display()))?;
                row.target = Some(t.into_os_string().into_vec());
            } else {
                xattrs(rows, child_ino, &child)?;
                if m.is_file() && m.size() > 0 {
                    if child.as_os_str().len() > IMPORT_PATH_MAX {
                        return Err(anyhow!(
                            "cannot import {}: path longer than {IMPORT_PATH_MAX} bytes",
                            child.display()
                        )
                        .into());
                    }
                    self.stats.bytes += m.size();
                    row.data = Some(child.into_os_string().into_vec());
                }
            }
            self.inode(rows, row)?;
        }
        xattrs(rows, ino, dir)?;
        let mut row = inode_row(ino, &meta, 2 + subdirs);
        row.mode = libc::S_IFDIR | (meta.mode() & 0o7777);
        self.inode(rows, row)
    }

    fn inode(&mut self, rows: &mut TreeWriter, row: ImportedInode) -> Result<(), TreeError> {
        self.stats.inodes += 1;
        rows.inode(row)
    }
}

/// Copies a file's extended attributes (all that root can read: `user.`,
/// ACLs, `trusted.`, `security.`).
fn xattrs(rows: &mut TreeWriter, ino: u64, path: &Path) -> Result<(), TreeError> {
    for (name, value) in disk_tier::xattrs(path)? {
        rows.xattr(ino, &name, &value)?;
    }
    Ok(())
}
