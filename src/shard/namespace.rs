//! The namespace of one space on its Storage Node: names, inodes and their
//! attributes, xattrs. Each change is one transaction, so rename, link and
//! unlink are atomic. Inode numbers here are per-space (`1` is the space's
//! root); the [`Attr`]s returned carry FUSE inode numbers.

use std::fmt::Write;

use mysql::prelude::Queryable;
use mysql::{Row, Transaction};

use super::access::Access;
use super::attrs::{self, AttrChange};
use super::error::{ShardError, ShardResult};
use super::extents::Lacking;
use super::inode::{self, Attr, COLUMNS, DELETED, I_COLUMNS, Node, ORPHAN};
use crate::clock::now_ns;
use crate::db::{Body, DbError, Once, TxError};

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

type Tx<'a> = Transaction<'a>;

pub(super) fn get_attr(
    tx: &mut Tx<'_>,
    space: u32,
    ino: u64,
    lock: bool,
) -> Result<Option<Attr>, mysql::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM inodes WHERE space_id = ? AND ino = ? AND state < {DELETED}{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    let row: Option<Row> = tx.exec_first(sql, (space, ino))?;
    Ok(row.map(|r| inode::from_row(space, &r)))
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
             WHERE d.space_id = ? AND d.parent = ? AND d.name = ? AND i.state < {DELETED} FOR UPDATE"
        ),
        (space, parent, name),
    )?;
    Ok(row.map(|r| inode::from_row(space, &r)))
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
            "UPDATE inodes SET nlink = 0, ctime = ?, state = ?, holder = ? WHERE space_id = ? AND ino = ?",
            (now, ORPHAN, ap, space, ino),
        ),
        None => tx.exec_drop(
            "UPDATE inodes SET nlink = 0, ctime = ?, state = ?, deleted_at = ? WHERE space_id = ? AND ino = ?",
            (now, DELETED, now, space, ino),
        ),
    }
}

pub fn getattr(s: &impl Access, space: u32, ino: u64) -> ShardResult<Attr> {
    let row: Option<Row> = s.query("read", |conn| {
        conn.exec_first(
            format!(
                "SELECT {COLUMNS} FROM inodes WHERE space_id = ? AND ino = ? AND state < {DELETED}"
            ),
            (space, ino),
        )
    })?;
    row.map(|r| inode::from_row(space, &r))
        .ok_or(ShardError::NotFound)
}

/// What an open wants with a file's attributes.
#[derive(Clone, Copy, Debug)]
pub enum Head<'a> {
    /// Nothing more.
    No,
    /// The data of a small regular file (one slot), unless the mount has
    /// it (`Known`).
    Unless(Option<Known<'a>>),
}

/// What a mount has cached of a small file's data.
#[derive(Clone, Copy, Debug)]
pub struct Known<'a> {
    /// The file's `(mtime, ctime, size)` and change counter the cached
    /// bytes belong to: a file still at them sends no data.
    pub stamp: (i64, i64, u64),
    pub chg: u64,
    /// Its first bytes, as cached (at most its size then): a file only
    /// appended to since (same counter, at least this long) sends only its
    /// rows that end past them.
    pub cached: &'a [u8],
}

impl Known<'_> {
    fn lacking(&self, space: u32, ino: u64) -> Lacking {
        Lacking {
            space,
            ino,
            have: self.cached.len() as u64,
            chg: self.chg,
        }
    }
}

/// The attributes, the change counter (`inodes.chg`: moved by every change
/// but appends), and the first slot's data if `head` asks for it (empty for
/// a hole or an empty file), from one query.
pub fn getattr_with_head(
    s: &impl Access,
    space: u32,
    ino: u64,
    head: Head,
) -> ShardResult<(Attr, u64, Option<Vec<u8>>)> {
    // One row per row of data wanted (pieces after appends); one row when
    // none is.
    let rows: Vec<Row> = s.query("read", |conn| {
        let wanted = format!(
            "i.size <= {} AND i.mode & {} = {} AND i.s3_key IS NULL AND i.import_path IS NULL",
            super::EXTENT_SIZE,
            libc::S_IFMT,
            libc::S_IFREG
        );
        let query = |wanted: &str, rows: &str| {
            format!(
                "SELECT {I_COLUMNS}, i.chg, IF({wanted}, COALESCE(e.data, ''), NULL), e.off
                 FROM inodes i LEFT JOIN extents e ON e.space_id = i.space_id AND e.ino = i.ino
                   AND e.off < {} AND {wanted} AND {rows}
                 WHERE i.space_id = ? AND i.ino = ? AND i.state < {DELETED} ORDER BY e.off",
                super::EXTENT_SIZE
            )
        };
        match head {
            Head::No => conn.exec(
                format!(
                    "SELECT {I_COLUMNS}, i.chg, NULL, NULL FROM inodes i
                     WHERE i.space_id = ? AND i.ino = ? AND i.state < {DELETED}"
                ),
                (space, ino),
            ),
            Head::Unless(None) => conn.exec(query(&wanted, "TRUE"), (space, ino)),
            Head::Unless(Some(k)) => {
                let changed = format!(
                    "{wanted} AND NOT (i.mtime <=> ? AND i.ctime <=> ? AND i.size <=> ? AND i.chg <=> ?)"
                );
                let (mtime, ctime, size) = k.stamp;
                let mut params: Vec<mysql::Value> = Vec::new();
                for _ in 0..2 {
                    params.extend([mtime.into(), ctime.into(), size.into(), k.chg.into()]);
                }
                params.extend(k.lacking(space, ino).params());
                params.extend([space.into(), ino.into()]);
                conn.exec(
                    query(&changed, Lacking::ROWS),
                    mysql::Params::Positional(params),
                )
            }
        }
    })?;
    let first = rows.first().ok_or(ShardError::NotFound)?;
    let attr = inode::from_row(space, first);
    let chg = first.get::<u64, _>(12).unwrap_or(0);
    if first.get::<Option<Vec<u8>>, _>(13).flatten().is_none() {
        return Ok((attr, chg, None));
    }
    let pieces: Vec<(u64, Vec<u8>)> = rows
        .into_iter()
        .filter_map(|mut r| {
            let off = r.take::<Option<u64>, _>(14).flatten()?;
            Some((off, r.take::<Option<Vec<u8>>, _>(13).flatten()?))
        })
        .collect();
    super::extents::data_read(pieces.iter().map(|(_, d)| d.len()).sum());
    if let Head::Unless(Some(k)) = head
        && k.lacking(space, ino).only_grew(chg, attr.size)
    {
        return Ok((
            attr,
            chg,
            Some(super::extents::overlay(0, k.cached, pieces)),
        ));
    }
    let whole = super::extents::assemble(pieces)
        .pop()
        .map_or(Vec::new(), |e| e.1);
    Ok((attr, chg, Some(whole)))
}

/// The inode `name` points to, and whether it has any xattrs (so that
/// `ls -l`'s ACL and security lookups need no query of their own).
pub fn lookup(s: &impl Access, space: u32, parent: u64, name: &[u8]) -> ShardResult<(Attr, bool)> {
    let row: Option<Row> = s.query("read", |conn| {
        conn.exec_first(
            format!(
                "SELECT {I_COLUMNS}, EXISTS (SELECT 1 FROM xattrs x WHERE x.space_id = d.space_id AND x.ino = d.ino)
                 FROM dentries d JOIN inodes i ON i.space_id = d.space_id AND i.ino = d.ino
                 WHERE d.space_id = ? AND d.parent = ? AND d.name = ?"
            ),
            (space, parent, name),
        )
    })?;
    let row = row.ok_or(ShardError::NotFound)?;
    let has_xattrs = row.get::<u8, _>(12).unwrap_or(1) != 0;
    Ok((inode::from_row(space, &row), has_xattrs))
}

/// The names in `dir`, if it has at most `most`.
pub fn names(
    s: &impl Access,
    space: u32,
    dir: u64,
    most: usize,
) -> ShardResult<Option<Vec<Vec<u8>>>> {
    let names: Vec<Vec<u8>> = s.query("read", |conn| {
        conn.exec(
            format!(
                "SELECT name FROM dentries WHERE space_id = ? AND parent = ? LIMIT {}",
                most + 1
            ),
            (space, dir),
        )
    })?;
    Ok((names.len() <= most).then_some(names))
}

/// Creates a file, directory, FIFO, device or symlink. A directory with the
/// set-group-ID bit passes its group (and, to directories, the bit) on.
/// Returns the new inode's attributes and, when known, its directory's
/// after the create (read locked, then changed by it).
pub fn create(
    s: &impl Access,
    space: u32,
    parent: u64,
    name: &[u8],
    new: &NewInode<'_>,
) -> ShardResult<(Attr, Option<Attr>)> {
    let now = now_ns();
    let done = s.run_once("create", |tx| {
        let p = get_attr(tx, space, parent, true)?.ok_or(ShardError::NotFound)?;
        let ino = allocate(tx, space)?;
        let a = new_attr(&p, space, ino, new, now)?;
        insert_new(tx, space, parent, name, &a, new.target)?;
        for (n, v) in new.xattrs {
            tx.exec_drop(
                "INSERT INTO xattrs (space_id, ino, name, value) VALUES (?, ?, ?, ?)",
                (space, ino, n, v),
            )?;
        }
        // As `insert_new` left it.
        let p = Attr {
            nlink: p.nlink + u32::from(a.is_dir()),
            mtime: a.ctime,
            ctime: a.ctime,
            ..p
        };
        Ok((a, Some(p)))
    })?;
    match done {
        Once::Done(made) => Ok(made),
        // A run whose COMMIT got no answer made it: not EEXIST.
        Once::AlreadyDone => lookup(s, space, parent, name).map(|(a, _)| (a, None)),
    }
}

/// The attributes of a new inode in directory `p`: a set-group-ID directory
/// passes its group (and, to directories, the bit) on.
pub fn new_attr(p: &Attr, space: u32, ino: u64, new: &NewInode<'_>, now: i64) -> ShardResult<Attr> {
    if !p.is_dir() {
        return Err(ShardError::NotDir);
    }
    if p.nlink == 0 {
        return Err(ShardError::NotFound);
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
        ino: Node::Space(space, ino).ino(),
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
) -> Result<(), Body<ShardError>> {
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
            Body::Abort(ShardError::Exists)
        }
        e => Body::Sql(e),
    })?;
    Ok(touch_dir(
        tx,
        space,
        parent,
        i32::from(a.is_dir()),
        a.ctime,
    )?)
}

/// Checks that `name` can be created in `parent` (a read, no locks): returns
/// the parent's attributes.
pub fn check_create(s: &impl Access, space: u32, parent: u64, name: &[u8]) -> ShardResult<Attr> {
    let row: Option<Row> = s.query("read", |conn| {
        conn.exec_first(
            format!(
                "SELECT {I_COLUMNS}, d.ino FROM inodes i
                 LEFT JOIN dentries d ON d.space_id = i.space_id AND d.parent = i.ino AND d.name = ?
                 WHERE i.space_id = ? AND i.ino = ? AND i.state < {DELETED}"
            ),
            (name, space, parent),
        )
    })?;
    let row = row.ok_or(ShardError::NotFound)?;
    if row.get::<Option<u64>, _>(12).flatten().is_some() {
        return Err(ShardError::Exists);
    }
    Ok(inode::from_row(space, &row))
}

/// Reserves `n` numbers of a space's counter for this mount; returns the
/// first. `spaces` has no update trigger (it would hide LAST_INSERT_ID), and
/// this is the one transaction that writes nothing else, so it checks the
/// move fence itself.
pub fn reserve_ids(s: &impl Access, space: u32, n: u64) -> ShardResult<u64> {
    let end = s.run("reserve inode numbers", |tx| {
            tx.exec_drop("CALL tshs_check_fence(?)", (space,))?;
            tx.exec_drop(
                "UPDATE spaces SET next_ino = GREATEST(next_ino, next_seq) + ?, next_seq = LAST_INSERT_ID(next_ino)
                 WHERE space_id = ?",
                (n, space),
            )?;
            Ok(tx.last_insert_id().unwrap_or(n))
        })?;
    Ok(end - n)
}

/// The most inodes of a space open here for which a file's removal goes
/// as one request (their numbers ride in it).
pub const UNLINK_TRIP_HELD: usize = 256;

/// Removes a name. `open_here` tells an inode this mount still has open:
/// it then survives, unlinked, until the last close. `held` lists the
/// space's inodes open here (by number within the space), if known.
/// Returns the removal's time (the directory's new times).
pub fn unlink(
    s: &impl Access,
    space: u32,
    parent: u64,
    name: &[u8],
    rmdir: bool,
    (open_here, held): (OpenHere<'_>, Option<Vec<u64>>),
) -> ShardResult<i64> {
    let now = now_ns();
    if !rmdir && let Some(held) = held {
        // The procedure leaves the last name of a file open here to the
        // statements, which keep it as this mount's orphan.
        let call = format!(
            "CALL tshs_unlink_file({space}, {parent}, X'{}', '{}', {now})",
            hex::encode(name),
            super::id_list(&held)
        );
        match in_one_trip(s, "unlink", &call) {
            OneTrip::Done => return Ok(now),
            OneTrip::Lost(detail) => return Err(lost_answer(s, "unlink", detail)),
            OneTrip::NotTaken => {}
        }
    }
    s.run("unlink", |tx| {
        let a = entry_attr(tx, space, parent, name)?.ok_or(ShardError::NotFound)?;
        let ino = local(a.ino);
        if rmdir {
            if !a.is_dir() {
                return Err(ShardError::NotDir.into());
            }
            let child: Option<u64> = tx.exec_first(
                "SELECT ino FROM dentries WHERE space_id = ? AND parent = ? LIMIT 1",
                (space, ino),
            )?;
            if child.is_some() {
                return Err(ShardError::NotEmpty.into());
            }
        } else if a.is_dir() {
            return Err(ShardError::IsDir.into());
        }
        tx.exec_drop(
            "DELETE FROM dentries WHERE space_id = ? AND parent = ? AND name = ?",
            (space, parent, name),
        )?;
        drop_link(tx, space, &a, now, open_here(a.ino))?;
        touch_dir(tx, space, parent, if a.is_dir() { -1 } else { 0 }, now)?;
        Ok(now)
    })
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

/// A rename's rows, locked in one round trip: both parents (in a fixed
/// order, against deadlocks), then the inodes the old and the new name
/// point to.
type RenameRows = (Vec<Attr>, Option<Attr>, Option<Attr>);

fn lock_for_rename(
    tx: &mut Tx<'_>,
    space: u32,
    parent: u64,
    name: &[u8],
    newparent: u64,
    newname: &[u8],
) -> Result<RenameRows, mysql::Error> {
    let dir = format!(
        "(SELECT {I_COLUMNS}, 0 FROM inodes i WHERE i.space_id = ? AND i.ino = ? AND i.state < {DELETED} FOR UPDATE)"
    );
    let entry = |k: u8| {
        format!(
            "(SELECT {I_COLUMNS}, {k} FROM dentries d JOIN inodes i ON i.space_id = d.space_id AND i.ino = d.ino
              WHERE d.space_id = ? AND d.parent = ? AND d.name = ? AND i.state < {DELETED} FOR UPDATE)"
        )
    };
    let mut params: Vec<mysql::Value> = vec![space.into(), parent.min(newparent).into()];
    let mut parts = vec![dir.clone()];
    if parent != newparent {
        parts.push(dir);
        params.extend([space.into(), parent.max(newparent).into()]);
    }
    parts.extend([entry(1), entry(2)]);
    params.extend([space.into(), parent.into(), name.into()]);
    params.extend([space.into(), newparent.into(), newname.into()]);
    let rows: Vec<Row> = tx.exec(parts.join(" UNION ALL "), mysql::Params::Positional(params))?;
    let (mut parents, mut src, mut dst) = (Vec::new(), None, None);
    for r in rows {
        let a = inode::from_row(space, &r);
        match r.get::<u8, _>(12) {
            Some(0) => parents.push(a),
            Some(1) => src = Some(a),
            _ => dst = Some(a),
        }
    }
    Ok((parents, src, dst))
}

pub const RENAME_NOREPLACE: u32 = 1;
pub const RENAME_EXCHANGE: u32 = 2;

/// Renames within one space, atomically. Returns the rename's time if it
/// was the common one (a file to a free name, in one request): then it
/// changed nothing but the name, the file's ctime and both directories'
/// times, to that time (and the deferred `changes`).
#[allow(clippy::too_many_arguments)]
pub fn rename(
    s: &impl Access,
    space: u32,
    parent: u64,
    name: &[u8],
    newparent: u64,
    newname: &[u8],
    flags: u32,
    changes: &[(u64, AttrChange)],
    open_here: OpenHere<'_>,
) -> ShardResult<Option<i64>> {
    let now = now_ns();
    if flags & RENAME_EXCHANGE == 0 {
        let names = ((parent, name), (newparent, newname));
        match rename_in_one_trip(s, space, names, changes, now) {
            OneTrip::Done => return Ok(Some(now)),
            OneTrip::Lost(detail) => return Err(lost_answer(s, "rename", detail)),
            OneTrip::NotTaken => {}
        }
    }
    s.run("rename", |tx| {
            attrs::update_attrs(tx, space, changes)?;
            let (parents, sa, da) = lock_for_rename(tx, space, parent, name, newparent, newname)?;
            if parents.len() < 1 + usize::from(parent != newparent) {
                return Err(ShardError::NotFound.into());
            }
            if parents.iter().any(|a| !a.is_dir()) {
                return Err(ShardError::NotDir.into());
            }
            let sa = sa.ok_or(ShardError::NotFound)?;
            let src = local(sa.ino);
            if sa.is_dir() && parent != newparent && is_within(tx, space, newparent, src)? {
                return Err(ShardError::Invalid.into());
            }
            if flags & RENAME_EXCHANGE != 0 {
                let da = da.ok_or(ShardError::NotFound)?;
                if da.is_dir() && parent != newparent && is_within(tx, space, parent, local(da.ino))? {
                    return Err(ShardError::Invalid.into());
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
                    return Err(ShardError::Exists.into());
                }
                if local(da.ino) == src {
                    return Ok(()); // two names of one inode: nothing to do
                }
                if sa.is_dir() && !da.is_dir() {
                    return Err(ShardError::NotDir.into());
                }
                if !sa.is_dir() && da.is_dir() {
                    return Err(ShardError::IsDir.into());
                }
                if da.is_dir() {
                    let child: Option<u64> = tx.exec_first(
                        "SELECT ino FROM dentries WHERE space_id = ? AND parent = ? LIMIT 1",
                        (space, local(da.ino)),
                    )?;
                    if child.is_some() {
                        return Err(ShardError::NotEmpty.into());
                    }
                    touch_dir(tx, space, newparent, -1, now)?;
                }
                tx.exec_drop(
                    "DELETE FROM dentries WHERE space_id = ? AND parent = ? AND name = ?",
                    (space, newparent, newname),
                )?;
                drop_link(tx, space, &da, now, open_here(da.ino))?;
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
        .map(|()| None)
}

/// A name in a directory: (directory, name).
type Entry<'a> = (u64, &'a [u8]);

/// How a one-request change went.
enum OneTrip {
    Done,
    /// Not sent, or refused (nothing applied).
    NotTaken,
    /// Sent, no answer: whether it was applied is unknown.
    Lost(String),
}

/// Deferred attribute changes a one-request rename carries at most (each
/// is a statement of ~330 bytes; more go by the statements).
const RENAME_TRIP_CHANGES: usize = 64;

/// The common rename (a file to a free name) with the deferred attribute
/// changes it carries, as one request (`tshs_rename_file`, migration 14);
/// anything else the server refuses, having changed nothing. The request
/// records itself in `applied_ops`, so a lost answer is told apart.
fn rename_in_one_trip(
    s: &impl Access,
    space: u32,
    ((parent, name), (newparent, newname)): (Entry<'_>, Entry<'_>),
    changes: &[(u64, AttrChange)],
    now: i64,
) -> OneTrip {
    if changes.len() > RENAME_TRIP_CHANGES {
        return OneTrip::NotTaken;
    }
    let mut sql = String::new();
    if !changes.is_empty() {
        sql.push_str(&attrs::update_attrs_sql(space, changes));
        sql.push_str("; ");
    }
    let _ = write!(
        sql,
        "CALL tshs_rename_file({space}, {parent}, X'{}', {newparent}, X'{}', {now})",
        hex::encode(name),
        hex::encode(newname)
    );
    in_one_trip(s, "rename", &sql)
}

/// Statements `sql` (a procedure's call, with what rides along) as one
/// transaction in one request that records itself in `applied_ops`, so a
/// lost answer is told apart. A refusal (the procedure's 1643 for what it
/// leaves to the statement way, a move's fence, a lock wait) changed
/// nothing.
fn in_one_trip(s: &impl Access, what: &'static str, sql: &str) -> OneTrip {
    let op = crate::db::OpId::next();
    let sql = format!(
        "START TRANSACTION; {}; {sql}; COMMIT",
        super::extents::record_op(&op)
    );
    let sent = s.one_trip(|c, lost, node| {
        if super::extents::lacks(node, what) {
            return None;
        }
        Some(match crate::db::run_statements(c, &sql) {
            Ok(()) => OneTrip::Done,
            Err(mysql::Error::MySqlError(e)) => {
                super::extents::refused(node, what, &e);
                super::extents::roll_back(c, lost);
                OneTrip::NotTaken
            }
            // A connection that broke before the request went (a server
            // restarted since) applied nothing: the statements run it. The
            // node it went to is asked, also if a move ended since.
            Err(e) => {
                let why = lost(e);
                match s.landed(node, &op) {
                    Ok(true) => OneTrip::Done,
                    Ok(false) => OneTrip::NotTaken,
                    Err(asking) => {
                        OneTrip::Lost(format!("{why}; asking whether it landed: {asking}"))
                    }
                }
            }
        })
    });
    let Some(Some(r)) = sent else {
        return OneTrip::NotTaken;
    };
    // Counted when sent and answered (an unknown outcome fails the change).
    if !matches!(r, OneTrip::Lost(_)) {
        crate::metrics::global().one_request(what, matches!(r, OneTrip::Done));
    }
    r
}

/// A one-request change whose outcome is unknown: it fails.
fn lost_answer(s: &impl Access, what: &'static str, detail: String) -> ShardError {
    let server = format!("storage node {}", s.node());
    ShardError::Tx {
        node: s.node(),
        what,
        source: Box::new(TxError::Commit(DbError::Other { server, detail })),
    }
}

pub fn link(
    s: &impl Access,
    space: u32,
    ino: u64,
    newparent: u64,
    newname: &[u8],
) -> ShardResult<Attr> {
    let now = now_ns();
    s.run("link", |tx| {
        let p = get_attr(tx, space, newparent, true)?.ok_or(ShardError::NotFound)?;
        if !p.is_dir() {
            return Err(ShardError::NotDir.into());
        }
        let mut a = get_attr(tx, space, ino, true)?.ok_or(ShardError::NotFound)?;
        if a.is_dir() {
            return Err(ShardError::NotPermitted.into());
        }
        if a.nlink == 0 {
            return Err(ShardError::NotFound.into());
        }
        if a.nlink >= 65_000 {
            return Err(ShardError::TooManyLinks.into());
        }
        if entry(tx, space, newparent, newname)?.is_some() {
            return Err(ShardError::Exists.into());
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
}

pub fn readlink(s: &impl Access, space: u32, ino: u64) -> ShardResult<Vec<u8>> {
    let t: Option<Option<Vec<u8>>> = s.query("read", |conn| {
        conn.exec_first(
            "SELECT target FROM inodes WHERE space_id = ? AND ino = ? AND state < ?",
            (space, ino, DELETED),
        )
    })?;
    t.ok_or(ShardError::NotFound)?.ok_or(ShardError::Invalid)
}

/// Asked when an inode loses its last name: the access point that must
/// keep it (this mount has it open), if any.
pub type OpenHere<'a> = &'a dyn Fn(u64) -> Option<u64>;

/// One directory entry for readdir: (offset cookie, name, attributes).
pub struct DirEntry {
    pub seq: u64,
    pub name: Vec<u8>,
    pub attr: Attr,
    pub has_xattrs: bool,
}

/// A page of a directory listing.
pub struct DirPage {
    pub entries: Vec<DirEntry>,
    /// The directory's parent, when asked for (`None` for a space's root
    /// or a directory removed meanwhile).
    pub parent: Option<u64>,
}

/// Up to `limit` entries of `dir` after sequence `after`, in sequence order:
/// offsets stay valid while entries are added and removed. With `parent`,
/// also the directory's parent (for `..`), in the same query unless the
/// page is empty.
pub fn readdir(
    s: &impl Access,
    space: u32,
    dir: u64,
    after: u64,
    limit: usize,
    parent: bool,
) -> ShardResult<DirPage> {
    let parent_col = if parent {
        "(SELECT p.parent FROM dentries p WHERE p.space_id = d.space_id AND p.ino = d.parent LIMIT 1)"
    } else {
        "NULL"
    };
    let rows: Vec<Row> = s.query("read", |conn| {
        conn.exec(
            format!(
                "SELECT {I_COLUMNS}, d.seq, d.name,
                        EXISTS (SELECT 1 FROM xattrs x WHERE x.space_id = d.space_id AND x.ino = d.ino),
                        {parent_col}
                 FROM dentries d
                 JOIN inodes i ON i.space_id = d.space_id AND i.ino = d.ino
                 WHERE d.space_id = ? AND d.parent = ? AND d.seq > ? ORDER BY d.seq LIMIT {limit}"
            ),
            (space, dir, after),
        )
    })?;
    let parent = match rows.first() {
        Some(r) => r.get::<Option<u64>, _>(15).flatten(),
        None if parent => parent_of(s, space, dir)?,
        None => None,
    };
    let entries = rows
        .into_iter()
        .map(|r| DirEntry {
            attr: inode::from_row(space, &r),
            seq: r.get(12).unwrap_or(0),
            name: r.get(13).unwrap_or_default(),
            has_xattrs: r.get::<u8, _>(14).unwrap_or(1) != 0,
        })
        .collect();
    Ok(DirPage { entries, parent })
}

/// The parent of a directory (for `..`); the space root is its own parent here.
fn parent_of(s: &impl Access, space: u32, dir: u64) -> ShardResult<Option<u64>> {
    s.query("read", |conn| {
        conn.exec_first(
            "SELECT parent FROM dentries WHERE space_id = ? AND ino = ? LIMIT 1",
            (space, dir),
        )
    })
}

/// True if the directory has no entries.
pub fn is_empty_dir(s: &impl Access, space: u32, dir: u64) -> ShardResult<bool> {
    let child: Option<u64> = s.query("read", |conn| {
        conn.exec_first(
            "SELECT ino FROM dentries WHERE space_id = ? AND parent = ? LIMIT 1",
            (space, dir),
        )
    })?;
    Ok(child.is_none())
}

/// The last close of an unlinked inode: it becomes deleted, for the reaper.
pub fn release_orphan(s: &impl Access, space: u32, ino: u64) -> ShardResult<()> {
    let now = now_ns();
    s.run("release", |tx| {
            tx.exec_drop(
                "UPDATE inodes SET state = ?, deleted_at = ?, holder = NULL WHERE space_id = ? AND ino = ? AND state = ?",
                (DELETED, now, space, ino, ORPHAN),
            )?;
            Ok(())
        })
}

/// Counts for statfs: (inodes in use, bytes stored) over the whole node.
pub fn usage(s: &impl Access) -> ShardResult<(u64, u64)> {
    let r: Option<(u64, Option<u64>)> = s.query("statfs", |conn| {
        conn.exec_first(
            "SELECT COUNT(*), SUM(stored) FROM inodes WHERE state < ?",
            (DELETED,),
        )
    })?;
    let (n, b) = r.unwrap_or((0, None));
    Ok((n, b.unwrap_or(0)))
}
