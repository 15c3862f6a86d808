//! Attributes of a space's inodes: setattr (with truncate), fallocate, the
//! clearing of set-id bits by a write, and the deferred changes a mount
//! writes in one transaction. Each change is one transaction on the locked
//! row; a size change of a file held elsewhere first brings its data back.

use mysql::Transaction;
use mysql::prelude::Queryable;

use super::access::{Access, Stores};
use super::error::{ShardError, ShardResult};
use super::extents;
use super::inode::Attr;
use super::namespace::get_attr;
use crate::clock::now_ns;

type Tx<'a> = Transaction<'a>;

/// A change of mode, owner or times not yet in the database (see
/// `Fs::setattr`): `None` leaves a field alone; `ctime` is always set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttrChange {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub atime: Option<i64>,
    pub mtime: Option<i64>,
    pub ctime: i64,
}

impl AttrChange {
    /// This change followed by `later`.
    pub fn then(self, later: AttrChange) -> AttrChange {
        AttrChange {
            mode: later.mode.or(self.mode),
            uid: later.uid.or(self.uid),
            gid: later.gid.or(self.gid),
            atime: later.atime.or(self.atime),
            mtime: later.mtime.or(self.mtime),
            ctime: later.ctime,
        }
    }

    pub fn apply(&self, a: &mut Attr) {
        if let Some(m) = self.mode {
            a.mode = (a.mode & libc::S_IFMT) | (m & 0o7777);
        }
        a.uid = self.uid.unwrap_or(a.uid);
        a.gid = self.gid.unwrap_or(a.gid);
        a.atime = self.atime.unwrap_or(a.atime);
        a.mtime = self.mtime.unwrap_or(a.mtime);
        a.ctime = self.ctime;
    }
}

/// Writes deferred attribute changes of one space in one transaction.
pub fn apply_changes(
    s: &impl Access,
    space: u32,
    changes: &[(u64, AttrChange)],
) -> ShardResult<()> {
    if changes.is_empty() {
        return Ok(());
    }
    s.run("setattr", |tx| Ok(update_attrs(tx, space, changes)?))
}

pub(super) fn update_attrs(
    tx: &mut Tx<'_>,
    space: u32,
    changes: &[(u64, AttrChange)],
) -> Result<(), mysql::Error> {
    // Bounded requests, however many changes piled up (an outage).
    for some in changes.chunks(256) {
        crate::db::run_statements(tx, &update_attrs_sql(space, some))?;
    }
    Ok(())
}

/// The statements applying deferred attribute changes, `;`-separated, as
/// one request (all values are numbers).
pub(super) fn update_attrs_sql(space: u32, changes: &[(u64, AttrChange)]) -> String {
    fn or_null<T: std::fmt::Display>(v: Option<T>) -> String {
        v.map_or_else(|| "NULL".to_owned(), |v| v.to_string())
    }
    let statements: Vec<String> = changes
        .iter()
        .map(|(ino, c)| {
            format!(
                "UPDATE inodes SET mode = IF({} IS NULL, mode, (mode & {}) | {}), uid = COALESCE({}, uid), \
                 gid = COALESCE({}, gid), atime = COALESCE({}, atime), mtime = COALESCE({}, mtime), \
                 ctime = GREATEST(ctime, {}) WHERE space_id = {space} AND ino = {ino}",
                or_null(c.mode),
                libc::S_IFMT,
                c.mode.unwrap_or(0),
                or_null(c.uid),
                or_null(c.gid),
                or_null(c.atime),
                or_null(c.mtime),
                c.ctime,
            )
        })
        .collect();
    statements.join("; ")
}

/// Clears set-user-ID/set-group-ID as `rule` decides on the locked row;
/// the new attributes if it changed them.
pub fn clear_setid(
    s: &impl Access,
    space: u32,
    ino: u64,
    rule: SetIdRule<'_>,
) -> ShardResult<Option<Attr>> {
    let now = now_ns();
    s.run("setattr", |tx| {
        let mut a = get_attr(tx, space, ino, true)?.ok_or(ShardError::NotFound)?;
        let Some(m) = rule(a.gid, a.mode) else {
            return Ok(None);
        };
        a.mode = (a.mode & libc::S_IFMT) | m;
        a.ctime = now;
        tx.exec_drop(
            "UPDATE inodes SET mode = ?, ctime = ? WHERE space_id = ? AND ino = ?",
            (a.mode, a.ctime, space, ino),
        )?;
        Ok(Some(a))
    })
}

/// What setattr changes; `None` leaves a field alone. Times: `Some(ns)`.
#[derive(Default, Clone, Copy)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<i64>,
    pub mtime: Option<i64>,
    pub ctime: Option<i64>,
}

/// Which permission bits a change of the data by the caller leaves, given
/// the file's group and mode (see `Caller::setid_cleared`).
pub type SetIdRule<'a> = &'a dyn Fn(u32, u32) -> Option<u32>;

/// Changes attributes; a size change truncates or extends (with a hole)
/// and may clear set-user-ID/set-group-ID (`clear_setid`, on the row read).
pub fn setattr(
    s: &impl Access,
    stores: &dyn Stores,
    space: u32,
    ino: u64,
    change: &SetAttr,
    clear_setid: SetIdRule<'_>,
) -> ShardResult<Attr> {
    let now = now_ns();
    s.run("setattr", |tx| {
            let mut a = get_attr(tx, space, ino, true)?.ok_or(ShardError::NotFound)?;
            if let Some(size) = change.size {
                if a.is_dir() {
                    return Err(ShardError::IsDir.into());
                }
                // A file in the object store comes back first (all of it
                // goes when it is truncated to nothing).
                if let Some((_, Some(stored))) =
                    extents::recall(tx, stores, space, ino, size > 0)?
                {
                    a.stored = stored;
                }
                if size < a.size {
                    a.stored = extents::truncate(tx, space, ino, size)?;
                }
                a.size = size;
                a.mtime = now;
                a.ctime = now;
            }
            if let Some(m) = change.mode {
                a.mode = (a.mode & libc::S_IFMT) | (m & 0o7777);
                a.ctime = now;
            }
            if change.size.is_some()
                && let Some(m) = clear_setid(a.gid, a.mode)
            {
                a.mode = (a.mode & libc::S_IFMT) | m;
                a.ctime = now;
            }
            if let Some(u) = change.uid {
                a.uid = u;
                a.ctime = now;
            }
            if let Some(g) = change.gid {
                a.gid = g;
                a.ctime = now;
            }
            if let Some(t) = change.atime {
                a.atime = t;
                a.ctime = now;
            }
            if let Some(t) = change.mtime {
                a.mtime = t;
                a.ctime = now;
            }
            if let Some(t) = change.ctime {
                a.ctime = t;
            }
            tx.exec_drop(
                "UPDATE inodes SET mode = ?, uid = ?, gid = ?, size = ?, stored = ?, atime = ?, mtime = ?, ctime = ?
                 WHERE space_id = ? AND ino = ?",
                (a.mode, a.uid, a.gid, a.size, a.stored, a.atime, a.mtime, a.ctime, space, ino),
            )?;
            Ok(a)
        })
}

/// fallocate: `zero` zeroes `[off, off + len)` within the file (punch hole,
/// zero range), `extend` grows the file to cover it (mode 0, zero range
/// without `KEEP_SIZE`). Nothing is reserved: storage is the database's,
/// so a reservation would promise nothing; `st_blocks` counts only what is
/// stored.
pub fn fallocate(
    s: &impl Access,
    stores: &dyn Stores,
    space: u32,
    ino: u64,
    (off, len): (u64, u64),
    zero: bool,
    extend: bool,
) -> ShardResult<Attr> {
    let now = now_ns();
    s.run("fallocate", |tx| {
            let mut a = get_attr(tx, space, ino, true)?.ok_or(ShardError::NotFound)?;
            let end = off + len;
            let grows = extend && end > a.size;
            let zeroes = zero && off < a.size;
            if !grows && !zeroes {
                return Ok(a);
            }
            if let Some((_, Some(stored))) =
                extents::recall(tx, stores, space, ino, true)?
            {
                a.stored = stored;
            }
            if zeroes {
                a.stored = extents::zero_range(tx, space, ino, off, end.min(a.size))?;
            }
            if grows {
                a.size = end;
            }
            a.mtime = now;
            a.ctime = now;
            tx.exec_drop(
                "UPDATE inodes SET size = ?, stored = ?, mtime = ?, ctime = ? WHERE space_id = ? AND ino = ?",
                (a.size, a.stored, a.mtime, a.ctime, space, ino),
            )?;
            Ok(a)
        })
}
