//! Attribute rules of the core: which set-id bits a change of the data
//! clears. The attributes themselves are the Storage Node's inode rows
//! ([`crate::shard::inode`]).

pub use crate::shard::inode::{Attr, Node, ROOT_INO};

/// The permission bits left after a write or truncate by a caller without
/// `CAP_FSETID`, as Linux leaves them on a local disk: set-user-ID goes;
/// set-group-ID goes where the group may execute, or where the caller is
/// not in the file's group (`in_group`, asked only then). `None` when
/// nothing changes.
pub fn setid_cleared(mode: u32, in_group: impl FnOnce() -> bool) -> Option<u32> {
    let perm = mode & 0o7777;
    let mut m = perm & !libc::S_ISUID;
    if m & libc::S_ISGID != 0 && (m & libc::S_IXGRP != 0 || !in_group()) {
        m &= !libc::S_ISGID;
    }
    (m != perm).then_some(m)
}

/// The attributes of a space directory not imported yet, as the mount
/// shows it: those of its directory on disk (see [`crate::import`]).
pub fn of_disk_dir(ino: u64, dir: &std::path::Path) -> anyhow::Result<Attr> {
    use anyhow::Context;
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(dir).with_context(|| format!("cannot import {}", dir.display()))?;
    let [atime, mtime, ctime] = crate::disk_tier::times_ns(&m);
    Ok(Attr {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setid_cleared_as_the_kernel_clears_it() {
        let member = || true;
        let outsider = || false;
        assert_eq!(setid_cleared(libc::S_IFREG | 0o4777, member), Some(0o777));
        assert_eq!(setid_cleared(0o6777, member), Some(0o777));
        assert_eq!(setid_cleared(0o2777, member), Some(0o777));
        // Set-group-ID without group execute: kept for the file's group only.
        assert_eq!(setid_cleared(0o2767, member), None);
        assert_eq!(setid_cleared(0o2767, outsider), Some(0o767));
        assert_eq!(setid_cleared(0o6767, member), Some(0o2767));
        assert_eq!(setid_cleared(0o777, outsider), None);
    }
}
