//! Import of an existing on-disk `/spacedata` tree (the reference's
//! `TSHSImportVolumes`), while the spaces are in use.
//!
//! `tshs import-volumes <path>` checks the tree ([`scan_root`]) and records
//! an `IMPORT` job and, in the Admin Node, every volume and space found
//! under the path, each space with the directory it comes from
//! (`spaces.import_from`). From then on the spaces are served by the
//! cluster; the disk tree is only read, never changed.
//! An import happens in two steps per space:
//!
//! 1. Its tree: names, attributes, symlinks, hard links and xattrs become the
//!    space's rows in one Storage Node transaction ([`bring_tree_in`]), and
//!    each regular file's inode names its file on disk (`inodes.import_path`).
//!    The mount does this the first time the space is used, perform-import
//!    ahead of time, whichever comes first; the other finds it done.
//! 2. Its data: perform-import copies each file's bytes into extents and
//!    clears `import_path`, one transaction per file. Until then the mount
//!    reads the file from disk ([`crate::disk_tier`]); the first write,
//!    append or truncate brings it in first (the same step), so writes go to
//!    the cluster.
//!
//! When no space of the job has anything left, the job becomes `IMPORTED`.
//! The disk tree must not be written to once the job exists: the cluster
//! serves those spaces, and a file changed on disk behind its back is read
//! with the size the import recorded.

mod scan;
mod tree;

use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub use scan::scan_root;
pub use tree::{TreeStats, bring_tree_in};

/// A directory's entries (name, path), sorted by name.
fn sorted_dir(dir: &Path) -> Result<Vec<(std::ffi::OsString, PathBuf)>> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .map(|e| e.map(|e| (e.file_name(), e.path())))
        .collect::<io::Result<_>>()
        .with_context(|| format!("cannot read {}", dir.display()))?;
    out.sort();
    Ok(out)
}
