//! Extended attributes of a space's inodes (ACLs included), each change one
//! transaction that also stamps the inode's ctime.

use mysql::prelude::Queryable;

use super::access::Access;
use super::error::{ShardError, ShardResult};
use super::namespace::get_attr;
use crate::clock::now_ns;

pub const XATTR_CREATE: i32 = 1;
pub const XATTR_REPLACE: i32 = 2;

/// Sets an xattr (`XATTR_CREATE`: only a new one, `XATTR_REPLACE`: only an
/// existing one).
pub fn set(
    s: &impl Access,
    space: u32,
    ino: u64,
    name: &[u8],
    value: &[u8],
    flags: i32,
) -> ShardResult<()> {
    let now = now_ns();
    s.run("setxattr", |tx| {
        get_attr(tx, space, ino, true)?.ok_or(ShardError::NotFound)?;
        let exists: Option<u8> = tx.exec_first(
            "SELECT 1 FROM xattrs WHERE space_id = ? AND ino = ? AND name = ?",
            (space, ino, name),
        )?;
        if flags & XATTR_CREATE != 0 && exists.is_some() {
            return Err(ShardError::Exists.into());
        }
        if flags & XATTR_REPLACE != 0 && exists.is_none() {
            return Err(ShardError::NoAttribute.into());
        }
        tx.exec_drop(
            "REPLACE INTO xattrs (space_id, ino, name, value) VALUES (?, ?, ?, ?)",
            (space, ino, name, value),
        )?;
        tx.exec_drop(
            "UPDATE inodes SET ctime = ? WHERE space_id = ? AND ino = ?",
            (now, space, ino),
        )?;
        Ok(())
    })
}

/// Every xattr of an inode, sorted by name.
pub fn all(s: &impl Access, space: u32, ino: u64) -> ShardResult<Vec<(Vec<u8>, Vec<u8>)>> {
    s.query("read", |conn| {
        conn.exec(
            "SELECT name, value FROM xattrs WHERE space_id = ? AND ino = ? ORDER BY name",
            (space, ino),
        )
    })
}

pub fn remove(s: &impl Access, space: u32, ino: u64, name: &[u8]) -> ShardResult<()> {
    let now = now_ns();
    s.run("removexattr", |tx| {
        tx.exec_drop(
            "DELETE FROM xattrs WHERE space_id = ? AND ino = ? AND name = ?",
            (space, ino, name),
        )?;
        if tx.affected_rows() == 0 {
            return Err(ShardError::NoAttribute.into());
        }
        tx.exec_drop(
            "UPDATE inodes SET ctime = ? WHERE space_id = ? AND ino = ?",
            (now, space, ino),
        )?;
        Ok(())
    })
}

/// Sets (`Some`) or removes an ACL xattr; `mode_bits`, when given, become
/// the inode's permission bits in the same transaction, `kill_sgid` drops
/// set-group-ID. `ENODATA` when there is nothing to remove.
pub fn set_acl(
    s: &impl Access,
    space: u32,
    ino: u64,
    name: &[u8],
    value: Option<&[u8]>,
    mode_bits: Option<u32>,
    kill_sgid: bool,
) -> ShardResult<()> {
    let now = now_ns();
    s.run("setxattr", |tx| {
            get_attr(tx, space, ino, true)?.ok_or(ShardError::NotFound)?;
            match value {
                Some(v) => tx.exec_drop(
                    "REPLACE INTO xattrs (space_id, ino, name, value) VALUES (?, ?, ?, ?)",
                    (space, ino, name, v),
                )?,
                None => tx.exec_drop(
                    "DELETE FROM xattrs WHERE space_id = ? AND ino = ? AND name = ?",
                    (space, ino, name),
                )?,
            }
            let removed_nothing = value.is_none() && tx.affected_rows() == 0;
            if removed_nothing && mode_bits.is_none() {
                return Err(ShardError::NoAttribute.into());
            }
            let keep = if kill_sgid { !(0o777 | libc::S_ISGID) } else { !0o777 };
            tx.exec_drop(
                "UPDATE inodes SET mode = IF(? IS NULL, mode, (mode & ?) | ?), ctime = ? WHERE space_id = ? AND ino = ?",
                (mode_bits, keep, mode_bits.unwrap_or(0), now, space, ino),
            )?;
            Ok(())
        })
}
