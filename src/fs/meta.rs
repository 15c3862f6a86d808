//! Namespace operations inside one space: each is one transaction on the
//! Storage Node that owns the space, so rename, link and unlink are atomic.
//! Inode numbers here are per-space (`1` is the space's root).

use mysql::prelude::Queryable;
use mysql::{Row, Transaction};

use super::attr::{self, Attr, COLUMNS, I_COLUMNS};
use super::error::{Abort, Errno, FsResult, tx_errno};
use super::now_ns;
use crate::cluster::Route;

/// Longest name of a directory entry, in bytes.
pub const NAME_MAX: usize = 255;
/// Longest symlink target, in bytes.
pub const PATH_MAX: usize = 4096;

pub fn check_name(name: &[u8]) -> FsResult<()> {
    if name.len() > NAME_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    if name.is_empty() || name.contains(&0) || name.contains(&b'/') || name == b"." || name == b".."
    {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

/// What to create.
pub struct NewInode<'a> {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub target: Option<&'a [u8]>,
    /// Xattrs it is born with (ACLs inherited from the directory).
    pub xattrs: &'a [(Vec<u8>, Vec<u8>)],
}

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
pub fn apply_changes(shard: &Route, space: u32, changes: &[(u64, AttrChange)]) -> FsResult<()> {
    if changes.is_empty() {
        return Ok(());
    }
    shard
        .tx(|tx| update_attrs(tx, space, changes))
        .map_err(|e| tx_errno(shard.id(), "setattr", e, &Abort::default()))
}

fn update_attrs(
    tx: &mut Tx<'_>,
    space: u32,
    changes: &[(u64, AttrChange)],
) -> Result<(), mysql::Error> {
    for (ino, c) in changes {
        tx.exec_drop(
            "UPDATE inodes SET mode = IF(? IS NULL, mode, (mode & ?) | ?), uid = COALESCE(?, uid),
             gid = COALESCE(?, gid), atime = COALESCE(?, atime), mtime = COALESCE(?, mtime), ctime = GREATEST(ctime, ?)
             WHERE space_id = ? AND ino = ?",
            mysql::Params::Positional(vec![
                c.mode.into(),
                libc::S_IFMT.into(),
                c.mode.unwrap_or(0).into(),
                c.uid.into(),
                c.gid.into(),
                c.atime.into(),
                c.mtime.into(),
                c.ctime.into(),
                space.into(),
                ino.into(),
            ]),
        )?;
    }
    Ok(())
}

/// Clears set-user-ID/set-group-ID as `rule` decides on the locked row;
/// the new attributes if it changed them.
pub fn clear_setid(
    shard: &Route,
    space: u32,
    ino: u64,
    rule: SetIdRule<'_>,
) -> FsResult<Option<Attr>> {
    let abort = Abort::default();
    let now = now_ns();
    shard
        .tx(|tx| {
            let mut a = get_attr(tx, space, ino, true)?.ok_or_else(|| abort.fail(Errno::ENOENT))?;
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
        .map_err(|e| tx_errno(shard.id(), "setattr", e, &abort))
}

/// Sets (`Some`) or removes an ACL xattr; `mode_bits`, when given, become
/// the inode's permission bits in the same transaction, `kill_sgid` drops
/// set-group-ID. `ENODATA` when there is nothing to remove.
pub fn set_acl(
    shard: &Route,
    space: u32,
    ino: u64,
    name: &[u8],
    value: Option<&[u8]>,
    mode_bits: Option<u32>,
    kill_sgid: bool,
) -> FsResult<()> {
    let abort = Abort::default();
    let now = now_ns();
    shard
        .tx(|tx| {
            get_attr(tx, space, ino, true)?.ok_or_else(|| abort.fail(Errno::ENOENT))?;
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
                return Err(abort.fail(Errno::ENODATA));
            }
            let keep = if kill_sgid { !(0o777 | libc::S_ISGID) } else { !0o777 };
            tx.exec_drop(
                "UPDATE inodes SET mode = IF(? IS NULL, mode, (mode & ?) | ?), ctime = ? WHERE space_id = ? AND ino = ?",
                (mode_bits, keep, mode_bits.unwrap_or(0), now, space, ino),
            )
        })
        .map_err(|e| tx_errno(shard.id(), "setxattr", e, &abort))
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

type Tx<'a> = Transaction<'a>;

fn get_attr(
    tx: &mut Tx<'_>,
    space: u32,
    ino: u64,
    lock: bool,
) -> Result<Option<Attr>, mysql::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM inodes WHERE space_id = ? AND ino = ? AND state < 2{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    let row: Option<Row> = tx.exec_first(sql, (space, ino))?;
    Ok(row.map(|r| attr::from_row(space, &r)))
}

fn entry(
    tx: &mut Tx<'_>,
    space: u32,
    parent: u64,
    name: &[u8],
) -> Result<Option<u64>, mysql::Error> {
    tx.exec_first(
        "SELECT ino FROM dentries WHERE space_id = ? AND parent = ? AND name = ? FOR UPDATE",
        (space, parent, name),
    )
}

/// The inode a name points to, both rows locked, in one round trip.
fn entry_attr(
    tx: &mut Tx<'_>,
    space: u32,
    parent: u64,
    name: &[u8],
) -> Result<Option<Attr>, mysql::Error> {
    let row: Option<Row> = tx.exec_first(
        format!(
            "SELECT {I_COLUMNS} FROM dentries d JOIN inodes i ON i.space_id = d.space_id AND i.ino = d.ino
             WHERE d.space_id = ? AND d.parent = ? AND d.name = ? AND i.state < 2 FOR UPDATE"
        ),
        (space, parent, name),
    )?;
    Ok(row.map(|r| attr::from_row(space, &r)))
}

fn local(ino: u64) -> u64 {
    ino & 0xffff_ffff
}

fn touch_dir(
    tx: &mut Tx<'_>,
    space: u32,
    dir: u64,
    nlink_delta: i32,
    now: i64,
) -> Result<(), mysql::Error> {
    tx.exec_drop(
        "UPDATE inodes SET mtime = ?, ctime = ?, nlink = CAST(nlink AS SIGNED) + ? WHERE space_id = ? AND ino = ?",
        (now, now, nlink_delta, space, dir),
    )
}

/// Allocates a number from the space's counter, in one statement: it serves
/// as a new inode's number and as a directory entry's sequence (readdir
/// offset). Both counters move together so neither repeats. Callers insert
/// a directory entry in the same transaction, which checks the move fence.
fn allocate(tx: &mut Tx<'_>, space: u32) -> Result<u64, mysql::Error> {
    tx.exec_drop(
        "UPDATE spaces SET next_ino = GREATEST(next_ino, next_seq) + 1, next_seq = LAST_INSERT_ID(next_ino)
         WHERE space_id = ?",
        (space,),
    )?;
    Ok(tx.last_insert_id().unwrap_or(1) - 1)
}

/// Drops one link of `ino`; at zero links the inode is marked deleted (its
/// rows wait for the reaper) or, if this mount still has it open, orphaned.
fn drop_link(
    tx: &mut Tx<'_>,
    space: u32,
    a: &Attr,
    now: i64,
    holder: Option<u64>,
) -> Result<(), mysql::Error> {
    let ino = local(a.ino);
    let last = a.nlink <= 1 || a.is_dir();
    if !last {
        return tx.exec_drop(
            "UPDATE inodes SET nlink = nlink - 1, ctime = ? WHERE space_id = ? AND ino = ?",
            (now, space, ino),
        );
    }
    match holder {
        Some(ap) => tx.exec_drop(
            "UPDATE inodes SET nlink = 0, ctime = ?, state = 1, holder = ? WHERE space_id = ? AND ino = ?",
            (now, ap, space, ino),
        ),
        None => tx.exec_drop(
            "UPDATE inodes SET nlink = 0, ctime = ?, state = 2, deleted_at = ? WHERE space_id = ? AND ino = ?",
            (now, now, space, ino),
        ),
    }
}

pub fn getattr(shard: &Route, space: u32, ino: u64) -> FsResult<Attr> {
    let row: Option<Row> = shard.read(|conn| {
        conn.exec_first(
            format!("SELECT {COLUMNS} FROM inodes WHERE space_id = ? AND ino = ? AND state < 2"),
            (space, ino),
        )
    })?;
    row.map(|r| attr::from_row(space, &r)).ok_or(Errno::ENOENT)
}

/// The attributes, and when `small` and the file fits in one extent, its
/// data (empty for a hole or an empty file), from one query.
pub fn getattr_with_head(
    shard: &Route,
    space: u32,
    ino: u64,
    small: bool,
) -> FsResult<(Attr, Option<Vec<u8>>)> {
    if !small {
        return Ok((getattr(shard, space, ino)?, None));
    }
    let row: Option<Row> = shard.read(|conn| {
        conn.exec_first(
            format!(
                "SELECT {I_COLUMNS}, IF(i.size <= ? AND i.mode & ? = ? AND i.s3_key IS NULL AND i.import_path IS NULL, COALESCE(e.data, ''), NULL)
                 FROM inodes i LEFT JOIN extents e ON e.space_id = i.space_id AND e.ino = i.ino AND e.off = 0
                 WHERE i.space_id = ? AND i.ino = ? AND i.state < 2"
            ),
            (crate::shard::EXTENT_SIZE, libc::S_IFMT, libc::S_IFREG, space, ino),
        )
    })?;
    let row = row.ok_or(Errno::ENOENT)?;
    let head: Option<Vec<u8>> = row.get::<Option<Vec<u8>>, _>(12).flatten();
    Ok((attr::from_row(space, &row), head))
}

pub fn lookup(shard: &Route, space: u32, parent: u64, name: &[u8]) -> FsResult<Attr> {
    if name.len() > NAME_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    let row: Option<Row> = shard.read(|conn| {
        conn.exec_first(
            format!(
                "SELECT {I_COLUMNS} FROM dentries d JOIN inodes i ON i.space_id = d.space_id AND i.ino = d.ino
                 WHERE d.space_id = ? AND d.parent = ? AND d.name = ?"
            ),
            (space, parent, name),
        )
    })?;
    row.map(|r| attr::from_row(space, &r)).ok_or(Errno::ENOENT)
}

/// Creates a file, directory, FIFO, device or symlink. A directory with the
/// set-group-ID bit passes its group (and, to directories, the bit) on.
pub fn create(
    shard: &Route,
    space: u32,
    parent: u64,
    name: &[u8],
    new: &NewInode<'_>,
) -> FsResult<Attr> {
    check_name(name)?;
    let abort = Abort::default();
    let now = now_ns();
    shard
        .tx(|tx| {
            let p = get_attr(tx, space, parent, true)?.ok_or_else(|| abort.fail(Errno::ENOENT))?;
            let ino = allocate(tx, space)?;
            let a = new_attr(&p, space, ino, new, now).map_err(|e| abort.fail(e))?;
            insert_new(tx, space, parent, name, &a, new.target, &abort)?;
            for (n, v) in new.xattrs {
                tx.exec_drop(
                    "INSERT INTO xattrs (space_id, ino, name, value) VALUES (?, ?, ?, ?)",
                    (space, ino, n, v),
                )?;
            }
            Ok(a)
        })
        .map_err(|e| tx_errno(shard.id(), "create", e, &abort))
}

/// The attributes of a new inode in directory `p`: a set-group-ID directory
/// passes its group (and, to directories, the bit) on.
pub fn new_attr(p: &Attr, space: u32, ino: u64, new: &NewInode<'_>, now: i64) -> FsResult<Attr> {
    if !p.is_dir() {
        return Err(Errno::ENOTDIR);
    }
    if p.nlink == 0 {
        return Err(Errno::ENOENT);
    }
    let mut mode = new.mode;
    let mut gid = new.gid;
    if p.mode & libc::S_ISGID != 0 {
        gid = p.gid;
        if mode & libc::S_IFMT == libc::S_IFDIR {
            mode |= libc::S_ISGID;
        }
    }
    let is_dir = mode & libc::S_IFMT == libc::S_IFDIR;
    Ok(Attr {
        ino: super::attr::Node::Space(space, ino).ino(),
        mode,
        nlink: if is_dir { 2 } else { 1 },
        uid: new.uid,
        gid,
        size: new.target.map_or(0, |t| t.len() as u64),
        stored: 0,
        rdev: new.rdev,
        atime: now,
        mtime: now,
        ctime: now,
        btime: now,
    })
}

/// Inserts a new inode and its name, and updates the parent. The primary key
/// refuses an existing name (`EEXIST`): no lookup first.
pub(super) fn insert_new(
    tx: &mut Tx<'_>,
    space: u32,
    parent: u64,
    name: &[u8],
    a: &Attr,
    target: Option<&[u8]>,
    abort: &Abort,
) -> Result<(), mysql::Error> {
    let ino = local(a.ino);
    tx.exec_drop(
        "INSERT INTO inodes (space_id, ino, mode, uid, gid, nlink, size, stored, rdev, atime, mtime, ctime, btime, target)
         VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?)",
        mysql::Params::Positional(vec![
            space.into(),
            ino.into(),
            a.mode.into(),
            a.uid.into(),
            a.gid.into(),
            a.nlink.into(),
            a.size.into(),
            a.rdev.into(),
            a.atime.into(),
            a.mtime.into(),
            a.ctime.into(),
            a.btime.into(),
            target.into(),
        ]),
    )?;
    tx.exec_drop(
        "INSERT INTO dentries (space_id, parent, name, ino, seq) VALUES (?, ?, ?, ?, ?)",
        (space, parent, name, ino, ino),
    )
    .map_err(|e| match e {
        mysql::Error::MySqlError(m) if m.code == crate::db::code::DUP_ENTRY => {
            abort.fail(Errno::EEXIST)
        }
        e => e,
    })?;
    touch_dir(tx, space, parent, i32::from(a.is_dir()), a.ctime)
}

/// Checks that `name` can be created in `parent` (a read, no locks): returns
/// the parent's attributes.
pub fn check_create(shard: &Route, space: u32, parent: u64, name: &[u8]) -> FsResult<Attr> {
    check_name(name)?;
    let row: Option<Row> = shard.read(|conn| {
        conn.exec_first(
            format!(
                "SELECT {I_COLUMNS}, d.ino FROM inodes i
                 LEFT JOIN dentries d ON d.space_id = i.space_id AND d.parent = i.ino AND d.name = ?
                 WHERE i.space_id = ? AND i.ino = ? AND i.state < 2"
            ),
            (name, space, parent),
        )
    })?;
    let row = row.ok_or(Errno::ENOENT)?;
    if row.get::<Option<u64>, _>(12).flatten().is_some() {
        return Err(Errno::EEXIST);
    }
    Ok(attr::from_row(space, &row))
}

/// Reserves `n` numbers of a space's counter for this mount; returns the
/// first. `spaces` has no update trigger (it would hide LAST_INSERT_ID), and
/// this is the one transaction that writes nothing else, so it checks the
/// move fence itself.
pub fn reserve_ids(shard: &Route, space: u32, n: u64) -> FsResult<u64> {
    let end = shard
        .tx(|tx| {
            tx.exec_drop("CALL tshs_check_fence(?)", (space,))?;
            tx.exec_drop(
                "UPDATE spaces SET next_ino = GREATEST(next_ino, next_seq) + ?, next_seq = LAST_INSERT_ID(next_ino)
                 WHERE space_id = ?",
                (n, space),
            )?;
            Ok(tx.last_insert_id().unwrap_or(n))
        })
        .map_err(|e| tx_errno(shard.id(), "reserve inode numbers", e, &Abort::default()))?;
    Ok(end - n)
}

/// Removes a name. `holder` is set when this mount still has the inode open:
/// the inode then survives, unlinked, until the last close.
pub fn unlink(
    shard: &Route,
    space: u32,
    parent: u64,
    name: &[u8],
    rmdir: bool,
    is_open: &dyn Fn(u64) -> Option<u64>,
) -> FsResult<Attr> {
    if name.len() > NAME_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    let abort = Abort::default();
    let now = now_ns();
    shard
        .tx(|tx| {
            let a =
                entry_attr(tx, space, parent, name)?.ok_or_else(|| abort.fail(Errno::ENOENT))?;
            let ino = local(a.ino);
            if rmdir {
                if !a.is_dir() {
                    return Err(abort.fail(Errno::ENOTDIR));
                }
                let child: Option<u64> = tx.exec_first(
                    "SELECT ino FROM dentries WHERE space_id = ? AND parent = ? LIMIT 1",
                    (space, ino),
                )?;
                if child.is_some() {
                    return Err(abort.fail(Errno::ENOTEMPTY));
                }
            } else if a.is_dir() {
                return Err(abort.fail(Errno::EISDIR));
            }
            tx.exec_drop(
                "DELETE FROM dentries WHERE space_id = ? AND parent = ? AND name = ?",
                (space, parent, name),
            )?;
            drop_link(tx, space, &a, now, is_open(a.ino))?;
            touch_dir(tx, space, parent, if a.is_dir() { -1 } else { 0 }, now)?;
            Ok(a)
        })
        .map_err(|e| tx_errno(shard.id(), "unlink", e, &abort))
}

/// True if `dir` is `ancestor` or lies below it.
fn is_within(
    tx: &mut Tx<'_>,
    space: u32,
    mut dir: u64,
    ancestor: u64,
) -> Result<bool, mysql::Error> {
    for _ in 0..10_000 {
        if dir == ancestor {
            return Ok(true);
        }
        if dir == 1 {
            return Ok(false);
        }
        match tx.exec_first::<u64, _, _>(
            "SELECT parent FROM dentries WHERE space_id = ? AND ino = ? LIMIT 1",
            (space, dir),
        )? {
            Some(p) => dir = p,
            None => return Ok(false),
        }
    }
    Ok(false)
}

pub const RENAME_NOREPLACE: u32 = 1;
pub const RENAME_EXCHANGE: u32 = 2;

/// Renames within one space, atomically. Returns the inode a replaced name
/// pointed to, if it lost its last link.
#[allow(clippy::too_many_arguments)]
pub fn rename(
    shard: &Route,
    space: u32,
    parent: u64,
    name: &[u8],
    newparent: u64,
    newname: &[u8],
    flags: u32,
    changes: &[(u64, AttrChange)],
    is_open: &dyn Fn(u64) -> Option<u64>,
) -> FsResult<()> {
    check_name(newname)?;
    if name.len() > NAME_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0
        || flags == RENAME_NOREPLACE | RENAME_EXCHANGE
    {
        return Err(Errno::EINVAL);
    }
    let abort = Abort::default();
    let now = now_ns();
    shard
        .tx(|tx| {
            update_attrs(tx, space, changes)?;
            // Lock both parents in a fixed order to avoid deadlocks.
            for p in [parent.min(newparent), parent.max(newparent)] {
                let a = get_attr(tx, space, p, true)?.ok_or_else(|| abort.fail(Errno::ENOENT))?;
                if !a.is_dir() {
                    return Err(abort.fail(Errno::ENOTDIR));
                }
            }
            let sa = entry_attr(tx, space, parent, name)?.ok_or_else(|| abort.fail(Errno::ENOENT))?;
            let src = local(sa.ino);
            let da = entry_attr(tx, space, newparent, newname)?;
            if sa.is_dir() && parent != newparent && is_within(tx, space, newparent, src)? {
                return Err(abort.fail(Errno::EINVAL));
            }
            if flags & RENAME_EXCHANGE != 0 {
                let da = da.ok_or_else(|| abort.fail(Errno::ENOENT))?;
                if da.is_dir() && parent != newparent && is_within(tx, space, parent, local(da.ino))? {
                    return Err(abort.fail(Errno::EINVAL));
                }
                tx.exec_drop(
                    "UPDATE dentries SET ino = ? WHERE space_id = ? AND parent = ? AND name = ?",
                    (local(da.ino), space, parent, name),
                )?;
                tx.exec_drop(
                    "UPDATE dentries SET ino = ? WHERE space_id = ? AND parent = ? AND name = ?",
                    (src, space, newparent, newname),
                )?;
                if parent != newparent {
                    let delta = i32::from(sa.is_dir()) - i32::from(da.is_dir());
                    touch_dir(tx, space, parent, -delta, now)?;
                    touch_dir(tx, space, newparent, delta, now)?;
                } else {
                    touch_dir(tx, space, parent, 0, now)?;
                }
                for i in [src, local(da.ino)] {
                    tx.exec_drop("UPDATE inodes SET ctime = ? WHERE space_id = ? AND ino = ?", (now, space, i))?;
                }
                return Ok(());
            }
            if let Some(da) = da {
                if flags & RENAME_NOREPLACE != 0 {
                    return Err(abort.fail(Errno::EEXIST));
                }
                if local(da.ino) == src {
                    return Ok(()); // two names of one inode: nothing to do
                }
                if sa.is_dir() && !da.is_dir() {
                    return Err(abort.fail(Errno::ENOTDIR));
                }
                if !sa.is_dir() && da.is_dir() {
                    return Err(abort.fail(Errno::EISDIR));
                }
                if da.is_dir() {
                    let child: Option<u64> = tx.exec_first(
                        "SELECT ino FROM dentries WHERE space_id = ? AND parent = ? LIMIT 1",
                        (space, local(da.ino)),
                    )?;
                    if child.is_some() {
                        return Err(abort.fail(Errno::ENOTEMPTY));
                    }
                    touch_dir(tx, space, newparent, -1, now)?;
                }
                tx.exec_drop(
                    "DELETE FROM dentries WHERE space_id = ? AND parent = ? AND name = ?",
                    (space, newparent, newname),
                )?;
                drop_link(tx, space, &da, now, is_open(da.ino))?;
            }
            tx.exec_drop(
                "UPDATE dentries SET parent = ?, name = ? WHERE space_id = ? AND parent = ? AND name = ?",
                (newparent, newname, space, parent, name),
            )?;
            tx.exec_drop("UPDATE inodes SET ctime = ? WHERE space_id = ? AND ino = ?", (now, space, src))?;
            if parent != newparent && sa.is_dir() {
                touch_dir(tx, space, parent, -1, now)?;
                touch_dir(tx, space, newparent, 1, now)?;
            } else {
                touch_dir(tx, space, parent, 0, now)?;
                if parent != newparent {
                    touch_dir(tx, space, newparent, 0, now)?;
                }
            }
            Ok(())
        })
        .map_err(|e| tx_errno(shard.id(), "rename", e, &abort))
}

pub fn link(shard: &Route, space: u32, ino: u64, newparent: u64, newname: &[u8]) -> FsResult<Attr> {
    check_name(newname)?;
    let abort = Abort::default();
    let now = now_ns();
    shard
        .tx(|tx| {
            let p =
                get_attr(tx, space, newparent, true)?.ok_or_else(|| abort.fail(Errno::ENOENT))?;
            if !p.is_dir() {
                return Err(abort.fail(Errno::ENOTDIR));
            }
            let mut a = get_attr(tx, space, ino, true)?.ok_or_else(|| abort.fail(Errno::ENOENT))?;
            if a.is_dir() {
                return Err(abort.fail(Errno::EPERM));
            }
            if a.nlink == 0 {
                return Err(abort.fail(Errno::ENOENT));
            }
            if a.nlink >= 65_000 {
                return Err(abort.fail(Errno::EMLINK));
            }
            if entry(tx, space, newparent, newname)?.is_some() {
                return Err(abort.fail(Errno::EEXIST));
            }
            let seq = allocate(tx, space)?;
            tx.exec_drop(
                "INSERT INTO dentries (space_id, parent, name, ino, seq) VALUES (?, ?, ?, ?, ?)",
                (space, newparent, newname, ino, seq),
            )?;
            tx.exec_drop(
                "UPDATE inodes SET nlink = nlink + 1, ctime = ? WHERE space_id = ? AND ino = ?",
                (now, space, ino),
            )?;
            touch_dir(tx, space, newparent, 0, now)?;
            a.nlink += 1;
            a.ctime = now;
            Ok(a)
        })
        .map_err(|e| tx_errno(shard.id(), "link", e, &abort))
}

pub fn readlink(shard: &Route, space: u32, ino: u64) -> FsResult<Vec<u8>> {
    let t: Option<Option<Vec<u8>>> = shard.read(|conn| {
        conn.exec_first(
            "SELECT target FROM inodes WHERE space_id = ? AND ino = ? AND state < 2",
            (space, ino),
        )
    })?;
    t.ok_or(Errno::ENOENT)?.ok_or(Errno::EINVAL)
}

/// Which permission bits a change of the data by the caller leaves, given
/// the file's group and mode (see `Caller::setid_cleared`).
pub type SetIdRule<'a> = &'a dyn Fn(u32, u32) -> Option<u32>;

/// Changes attributes; a size change truncates or extends (with a hole)
/// and may clear set-user-ID/set-group-ID (`clear_setid`, on the row read).
pub fn setattr(
    shard: &Route,
    space: u32,
    ino: u64,
    s: &SetAttr,
    clear_setid: SetIdRule<'_>,
) -> FsResult<Attr> {
    let abort = Abort::default();
    let now = now_ns();
    shard
        .tx(|tx| {
            let mut a = get_attr(tx, space, ino, true)?.ok_or_else(|| abort.fail(Errno::ENOENT))?;
            if let Some(size) = s.size {
                if a.is_dir() {
                    return Err(abort.fail(Errno::EISDIR));
                }
                // A file in the object store comes back first (all of it
                // goes when it is truncated to nothing).
                if let Some((_, Some(stored))) =
                    super::data::recall(tx, shard, space, ino, size > 0, &abort)?
                {
                    a.stored = stored;
                }
                if size < a.size {
                    a.stored = super::data::truncate_extents(tx, space, ino, size)?;
                }
                a.size = size;
                a.mtime = now;
                a.ctime = now;
            }
            if let Some(m) = s.mode {
                a.mode = (a.mode & libc::S_IFMT) | (m & 0o7777);
                a.ctime = now;
            }
            if s.size.is_some()
                && let Some(m) = clear_setid(a.gid, a.mode)
            {
                a.mode = (a.mode & libc::S_IFMT) | m;
                a.ctime = now;
            }
            if let Some(u) = s.uid {
                a.uid = u;
                a.ctime = now;
            }
            if let Some(g) = s.gid {
                a.gid = g;
                a.ctime = now;
            }
            if let Some(t) = s.atime {
                a.atime = t;
                a.ctime = now;
            }
            if let Some(t) = s.mtime {
                a.mtime = t;
                a.ctime = now;
            }
            if let Some(t) = s.ctime {
                a.ctime = t;
            }
            tx.exec_drop(
                "UPDATE inodes SET mode = ?, uid = ?, gid = ?, size = ?, stored = ?, atime = ?, mtime = ?, ctime = ?
                 WHERE space_id = ? AND ino = ?",
                (a.mode, a.uid, a.gid, a.size, a.stored, a.atime, a.mtime, a.ctime, space, ino),
            )?;
            Ok(a)
        })
        .map_err(|e| tx_errno(shard.id(), "setattr", e, &abort))
}

/// fallocate: `zero` zeroes `[off, off + len)` within the file (punch hole,
/// zero range), `extend` grows the file to cover it (mode 0, zero range
/// without `KEEP_SIZE`). Nothing is reserved: storage is the database's,
/// so a reservation would promise nothing; `st_blocks` counts only what is
/// stored.
pub fn fallocate(
    shard: &Route,
    space: u32,
    ino: u64,
    (off, len): (u64, u64),
    zero: bool,
    extend: bool,
) -> FsResult<Attr> {
    let abort = Abort::default();
    let now = now_ns();
    shard
        .tx(|tx| {
            let mut a = get_attr(tx, space, ino, true)?.ok_or_else(|| abort.fail(Errno::ENOENT))?;
            let end = off + len;
            let grows = extend && end > a.size;
            let zeroes = zero && off < a.size;
            if !grows && !zeroes {
                return Ok(a);
            }
            if let Some((_, Some(stored))) =
                super::data::recall(tx, shard, space, ino, true, &abort)?
            {
                a.stored = stored;
            }
            if zeroes {
                a.stored = super::data::zero_range(tx, space, ino, off, end.min(a.size))?;
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
        .map_err(|e| tx_errno(shard.id(), "fallocate", e, &abort))
}

/// One directory entry for readdir: (offset cookie, name, attributes).
pub struct DirEntry {
    pub seq: u64,
    pub name: Vec<u8>,
    pub attr: Attr,
    pub has_xattrs: bool,
}

/// Up to `limit` entries of `dir` after sequence `after`, in sequence order:
/// offsets stay valid while entries are added and removed.
pub fn readdir(
    shard: &Route,
    space: u32,
    dir: u64,
    after: u64,
    limit: usize,
) -> FsResult<Vec<DirEntry>> {
    let rows: Vec<Row> = shard.read(|conn| {
        conn.exec(
            format!(
                "SELECT {I_COLUMNS}, d.seq, d.name,
                        EXISTS (SELECT 1 FROM xattrs x WHERE x.space_id = d.space_id AND x.ino = d.ino)
                 FROM dentries d
                 JOIN inodes i ON i.space_id = d.space_id AND i.ino = d.ino
                 WHERE d.space_id = ? AND d.parent = ? AND d.seq > ? ORDER BY d.seq LIMIT {limit}"
            ),
            (space, dir, after),
        )
    })?;
    Ok(rows
        .into_iter()
        .map(|r| DirEntry {
            attr: attr::from_row(space, &r),
            seq: r.get(12).unwrap_or(0),
            name: r.get(13).unwrap_or_default(),
            has_xattrs: r.get::<u8, _>(14).unwrap_or(1) != 0,
        })
        .collect())
}

/// The parent of a directory (for `..`); the space root is its own parent here.
pub fn parent_of(shard: &Route, space: u32, dir: u64) -> FsResult<Option<u64>> {
    Ok(shard.read(|conn| {
        conn.exec_first(
            "SELECT parent FROM dentries WHERE space_id = ? AND ino = ? LIMIT 1",
            (space, dir),
        )
    })?)
}

/// True if the directory has no entries.
pub fn is_empty_dir(shard: &Route, space: u32, dir: u64) -> FsResult<bool> {
    let child: Option<u64> = shard.read(|conn| {
        conn.exec_first(
            "SELECT ino FROM dentries WHERE space_id = ? AND parent = ? LIMIT 1",
            (space, dir),
        )
    })?;
    Ok(child.is_none())
}

/// The last close of an unlinked inode: it becomes deleted, for the reaper.
pub fn release_orphan(shard: &Route, space: u32, ino: u64) -> FsResult<()> {
    let now = now_ns();
    shard
        .tx(|tx| {
            tx.exec_drop(
                "UPDATE inodes SET state = 2, deleted_at = ?, holder = NULL WHERE space_id = ? AND ino = ? AND state = 1",
                (now, space, ino),
            )
        })
        .map_err(|e| tx_errno(shard.id(), "release", e, &Abort::default()))
}

// ---- xattrs ----

pub const XATTR_CREATE: i32 = 1;
pub const XATTR_REPLACE: i32 = 2;

pub fn setxattr(
    shard: &Route,
    space: u32,
    ino: u64,
    name: &[u8],
    value: &[u8],
    flags: i32,
) -> FsResult<()> {
    if name.is_empty() || name.len() > NAME_MAX {
        return Err(if name.is_empty() {
            Errno::EINVAL
        } else {
            Errno::ERANGE
        });
    }
    if value.len() > 65536 {
        return Err(Errno::E2BIG);
    }
    let abort = Abort::default();
    let now = now_ns();
    shard
        .tx(|tx| {
            get_attr(tx, space, ino, true)?.ok_or_else(|| abort.fail(Errno::ENOENT))?;
            let exists: Option<u8> = tx.exec_first(
                "SELECT 1 FROM xattrs WHERE space_id = ? AND ino = ? AND name = ?",
                (space, ino, name),
            )?;
            if flags & XATTR_CREATE != 0 && exists.is_some() {
                return Err(abort.fail(Errno::EEXIST));
            }
            if flags & XATTR_REPLACE != 0 && exists.is_none() {
                return Err(abort.fail(Errno::ENODATA));
            }
            tx.exec_drop(
                "REPLACE INTO xattrs (space_id, ino, name, value) VALUES (?, ?, ?, ?)",
                (space, ino, name, value),
            )?;
            tx.exec_drop(
                "UPDATE inodes SET ctime = ? WHERE space_id = ? AND ino = ?",
                (now, space, ino),
            )
        })
        .map_err(|e| tx_errno(shard.id(), "setxattr", e, &abort))
}

/// Every xattr of an inode, sorted by name.
pub fn xattrs(shard: &Route, space: u32, ino: u64) -> FsResult<Vec<(Vec<u8>, Vec<u8>)>> {
    Ok(shard.read(|conn| {
        conn.exec(
            "SELECT name, value FROM xattrs WHERE space_id = ? AND ino = ? ORDER BY name",
            (space, ino),
        )
    })?)
}

pub fn removexattr(shard: &Route, space: u32, ino: u64, name: &[u8]) -> FsResult<()> {
    let abort = Abort::default();
    let now = now_ns();
    shard
        .tx(|tx| {
            tx.exec_drop(
                "DELETE FROM xattrs WHERE space_id = ? AND ino = ? AND name = ?",
                (space, ino, name),
            )?;
            if tx.affected_rows() == 0 {
                return Err(abort.fail(Errno::ENODATA));
            }
            tx.exec_drop(
                "UPDATE inodes SET ctime = ? WHERE space_id = ? AND ino = ?",
                (now, space, ino),
            )
        })
        .map_err(|e| tx_errno(shard.id(), "removexattr", e, &abort))
}

/// Counts for statfs: (inodes in use, bytes stored) over the whole node.
pub fn usage(shard: &crate::shard::Shard) -> FsResult<(u64, u64)> {
    let r: Option<(u64, Option<u64>)> = shard.db().read(|conn| {
        conn.query_first("SELECT COUNT(*), SUM(stored) FROM inodes WHERE state < 2")
    })?;
    let (n, b) = r.unwrap_or((0, None));
    Ok((n, b.unwrap_or(0)))
}
