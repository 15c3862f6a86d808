//! Snapshots of a space on its Storage Node: taking one (a moment of the
//! space), letting it go, and reading the space as it was at a moment.
//!
//! The rows are versioned by the schema's triggers (migration 10): a row
//! carries the snapshot epoch it was written in (`born`), and a row changed
//! or deleted while a live snapshot needs it is kept in its table's `_v`
//! twin with the epoch of the change (`died`). A snapshot of moment `m`
//! sees the live rows with `born < m` and the kept ones with
//! `born < m <= died`: exactly the rows committed before its moment, in
//! any later state of the tables. Nothing is copied when a snapshot is
//! taken; a writer pays one row copy for the first change after a snapshot
//! of each row the snapshot sees.

use std::collections::HashMap;

use mysql::Value;
use mysql::prelude::Queryable;

use super::access::Access;
use super::error::{ShardError, ShardResult};
use super::extents::{Span, assemble};
use super::inode::{self, Attr, Node};

/// A space a live snapshot still shows cannot be purged.
#[derive(Debug, thiserror::Error)]
#[error("a snapshot still shows the space")]
pub struct HeldBySnapshot;

/// A space as it was at a snapshot's moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct At {
    pub space: u32,
    pub moment: u64,
}

/// An inode as a snapshot sees it.
#[derive(Clone, Debug)]
pub struct SnapInode {
    pub attr: Attr,
    /// A symlink's target.
    pub target: Option<Vec<u8>>,
    /// Where its data is when not in extents: the object store (host, key)
    /// or an imported disk file (path, mtime).
    pub object: Option<(u32, String)>,
    pub disk: Option<(Vec<u8>, Option<i64>)>,
}

/// Takes snapshot `snapshot` of space `space`: bumps the space's epoch and
/// records the moment. Waits for the writers in flight (the fence row's
/// lock); a space being moved is refused by its fence (the route runs it
/// again on the new node). Taking the same snapshot again answers the
/// moment it has.
pub fn take(s: &impl Access, space: u32, snapshot: u64) -> ShardResult<u64> {
    s.run("take a snapshot", |tx| {
        let had: Option<u64> = tx.exec_first(
            "SELECT moment FROM snapshot_moments WHERE space_id = ? AND snapshot_id = ?",
            (space, snapshot),
        )?;
        if let Some(m) = had {
            return Ok(m);
        }
        // The fence check (a move's fence refuses), then the bump.
        tx.exec_drop("CALL tshs_guard(?, @tshs_e, @tshs_k)", (space,))?;
        tx.exec_drop(
            "UPDATE space_fence SET snap_epoch = snap_epoch + 1 WHERE space_id = ?",
            (space,),
        )?;
        let moment: Option<u64> = tx.exec_first(
            "SELECT f.snap_epoch FROM space_fence f JOIN spaces s ON s.space_id = f.space_id
             WHERE f.space_id = ?",
            (space,),
        )?;
        let moment = moment.ok_or(ShardError::NotFound)?;
        tx.exec_drop(
            "UPDATE space_fence SET snap_keep = ? WHERE space_id = ?",
            (moment, space),
        )?;
        tx.exec_drop(
            "INSERT INTO snapshot_moments (space_id, snapshot_id, moment) VALUES (?, ?, ?)",
            (space, snapshot, moment),
        )?;
        Ok(moment)
    })
}

/// The kept rows' tables, in the order they are freed.
const KEPT: &[(&str, u32)] = &[
    ("extents_v", 64),
    ("xattrs_v", 1000),
    ("dentries_v", 5000),
    ("inodes_v", 5000),
];

/// Lets snapshot `snapshot` of `space` go: its moment is forgotten, writers
/// stop keeping rows for it, and the kept rows no live snapshot sees are
/// deleted (a batch per transaction). Returns the rows deleted. Letting a
/// snapshot go twice is harmless.
pub fn release(s: &impl Access, space: u32, snapshot: u64) -> ShardResult<u64> {
    s.run("let a snapshot go", |tx| {
        // The fence row first: a take (which bumps it) waits, so the
        // newest moment read below stays the newest.
        tx.exec_drop(
            "SELECT snap_epoch FROM space_fence WHERE space_id = ? FOR UPDATE",
            (space,),
        )?;
        tx.exec_drop(
            "DELETE FROM snapshot_moments WHERE space_id = ? AND snapshot_id = ?",
            (space, snapshot),
        )?;
        let keep: Option<u64> = tx.exec_first(
            "SELECT IFNULL(MAX(moment), 0) FROM snapshot_moments WHERE space_id = ?",
            (space,),
        )?;
        tx.exec_drop(
            "UPDATE space_fence SET snap_keep = ? WHERE space_id = ?",
            (keep.unwrap_or(0), space),
        )?;
        Ok(())
    })?;
    let mut total = 0;
    for (t, batch) in KEPT {
        loop {
            let n = s.run("free a snapshot's rows", |tx| {
                tx.exec_drop(
                    format!(
                        "DELETE FROM {t} WHERE space_id = ? AND NOT EXISTS (
                           SELECT 1 FROM snapshot_moments m WHERE m.space_id = {t}.space_id
                             AND {t}.born < m.moment AND m.moment <= {t}.died)
                         LIMIT {batch}"
                    ),
                    (space,),
                )?;
                Ok(tx.affected_rows())
            })?;
            total += n;
            if n < u64::from(*batch) {
                break;
            }
        }
    }
    Ok(total)
}

/// Is moment `at` still held (its snapshot not let go)? Asked after a read:
/// [`release`] forgets the moment before it deletes any kept row, so a read
/// followed by a yes saw every row its snapshot sees.
pub fn held(s: &impl Access, at: At) -> ShardResult<bool> {
    let one: Option<u8> = s.query("read a snapshot", |c| {
        c.exec_first(
            "SELECT 1 FROM snapshot_moments WHERE space_id = ? AND moment = ?",
            (at.space, at.moment),
        )
    })?;
    Ok(one.is_some())
}

/// Every snapshot moment recorded on the node: (space, snapshot id, moment).
pub fn moments(s: &impl Access) -> ShardResult<Vec<(u32, u64, u64)>> {
    s.query("list snapshot moments", |c| {
        c.query("SELECT space_id, snapshot_id, moment FROM snapshot_moments ORDER BY space_id, snapshot_id")
    })
}

/// Rows kept for snapshots on the node and their bytes of file data.
pub fn kept(s: &impl Access) -> ShardResult<(u64, u64)> {
    let row: Option<(u64, u64)> = s.query("count kept rows", |c| {
        c.query_first(
            "SELECT (SELECT COUNT(*) FROM inodes_v) + (SELECT COUNT(*) FROM dentries_v)
                    + (SELECT COUNT(*) FROM xattrs_v) + (SELECT COUNT(*) FROM extents_v),
                    (SELECT IFNULL(SUM(len), 0) FROM extents_v)",
        )
    })?;
    Ok(row.unwrap_or((0, 0)))
}

/// A query of `cols` over a live table and its kept twin, as a snapshot
/// sees them, each half filtered further by `rest` (see [`params`]).
fn union(cols: &str, table: &str, rest: &str) -> String {
    format!(
        "SELECT {cols} FROM {table} WHERE space_id = ? AND born < ?{rest}
         UNION ALL
         SELECT {cols} FROM {table}_v WHERE space_id = ? AND born < ? AND died >= ?{rest}"
    )
}

/// The parameters of [`union`]: `rest`'s given once per half.
fn params(at: At, rest: &[Value]) -> Vec<Value> {
    let mut p = vec![at.space.into(), at.moment.into()];
    p.extend_from_slice(rest);
    p.extend([at.space.into(), at.moment.into(), at.moment.into()]);
    p.extend_from_slice(rest);
    p
}

const INODE_COLS: &str = "ino, mode, uid, gid, nlink, size, stored, rdev, atime, mtime, ctime, btime, target, s3_host, s3_key, import_path, import_mtime";

fn snap_inode(space: u32, row: &mysql::Row) -> SnapInode {
    let attr = inode::from_row(space, row);
    let host: Option<u32> = row.get(13).flatten();
    let key: Option<Vec<u8>> = row.get(14).flatten();
    let path: Option<Vec<u8>> = row.get(15).flatten();
    SnapInode {
        attr,
        target: row.get(12).flatten(),
        object: host
            .zip(key)
            .map(|(h, k)| (h, String::from_utf8_lossy(&k).into_owned())),
        disk: path.map(|p| (p, row.get(16).flatten())),
    }
}

/// Inodes `inos` of the space at `at` (missing ones left out).
pub fn inodes(s: &impl Access, at: At, inos: &[u64]) -> ShardResult<HashMap<u64, SnapInode>> {
    let mut out = HashMap::new();
    for chunk in inos.chunks(500) {
        let marks = vec!["?"; chunk.len()].join(", ");
        let sql = union(INODE_COLS, "inodes", &format!(" AND ino IN ({marks})"));
        let rest: Vec<Value> = chunk.iter().map(|i| Value::from(*i)).collect();
        let rows: Vec<mysql::Row> =
            s.query("read a snapshot", |c| c.exec(&sql, params(at, &rest)))?;
        for r in &rows {
            let i = snap_inode(at.space, r);
            let Node::Space(_, n) = Node::from_ino(i.attr.ino) else {
                continue;
            };
            out.insert(n, i);
        }
    }
    Ok(out)
}

/// Inode `ino` of the space at `at`.
pub fn inode(s: &impl Access, at: At, ino: u64) -> ShardResult<SnapInode> {
    inodes(s, at, &[ino])?
        .remove(&ino)
        .ok_or(ShardError::NotFound)
}

/// The inode named `name` in directory `parent` at `at`.
pub fn lookup(s: &impl Access, at: At, parent: u64, name: &[u8]) -> ShardResult<SnapInode> {
    let sql = union("ino", "dentries", " AND parent = ? AND name = ?");
    let ino: Option<u64> = s.query("read a snapshot", |c| {
        c.exec_first(&sql, params(at, &[parent.into(), name.into()]))
    })?;
    inode(s, at, ino.ok_or(ShardError::NotFound)?)
}

/// Directory `dir`'s entries at `at` after readdir cookie `after` (entries'
/// `seq`), at most `limit`: (seq, name, inode).
pub fn list(
    s: &impl Access,
    at: At,
    dir: u64,
    after: u64,
    limit: usize,
) -> ShardResult<Vec<(u64, Vec<u8>, SnapInode)>> {
    let sql = format!(
        "SELECT seq, name, ino FROM ({}) d ORDER BY seq LIMIT {limit}",
        union("seq, name, ino", "dentries", " AND parent = ? AND seq > ?")
    );
    let names: Vec<(u64, Vec<u8>, u64)> = s.query("read a snapshot", |c| {
        c.exec(&sql, params(at, &[dir.into(), after.into()]))
    })?;
    let inos: Vec<u64> = names.iter().map(|n| n.2).collect();
    let found = inodes(s, at, &inos)?;
    // Hard links: one inode under several names.
    Ok(names
        .into_iter()
        .filter_map(|(seq, name, ino)| Some((seq, name, found.get(&ino)?.clone())))
        .collect())
}

/// The parent of directory `dir` at `at` (a directory has one name).
pub fn parent_of(s: &impl Access, at: At, dir: u64) -> ShardResult<u64> {
    let sql = union("parent", "dentries", " AND ino = ?");
    let p: Option<u64> = s.query("read a snapshot", |c| {
        c.exec_first(&sql, params(at, &[dir.into()]))
    })?;
    p.ok_or(ShardError::NotFound)
}

/// Every xattr of inode `ino` at `at`, sorted by name.
pub fn xattrs(s: &impl Access, at: At, ino: u64) -> ShardResult<Vec<(Vec<u8>, Vec<u8>)>> {
    let sql = format!(
        "SELECT name, value FROM ({}) x ORDER BY name",
        union("name, value", "xattrs", " AND ino = ?")
    );
    s.query("read a snapshot", |c| {
        c.exec(&sql, params(at, &[ino.into()]))
    })
}

/// Where `[first, last)` of file `i` is at `at` (see [`super::extents::span`]).
pub fn span(s: &impl Access, at: At, i: &SnapInode, first: u64, last: u64) -> ShardResult<Span> {
    let Node::Space(_, ino) = Node::from_ino(i.attr.ino) else {
        return Err(ShardError::NotFound);
    };
    if let Some((path, mtime)) = &i.disk {
        return Ok(Span::Disk {
            path: path.clone(),
            size: i.attr.size,
            mtime: *mtime,
        });
    }
    if let Some((host, key)) = &i.object {
        return Ok(Span::Object {
            host: *host,
            key: key.clone(),
            size: i.attr.size,
        });
    }
    let sql = union(
        "off, data",
        "extents",
        " AND ino = ? AND off >= ? AND off < ?",
    );
    let mut rows: Vec<(u64, Vec<u8>)> = s.query("read a snapshot", |c| {
        c.exec(&sql, params(at, &[ino.into(), first.into(), last.into()]))
    })?;
    rows.sort_unstable_by_key(|(o, _)| *o);
    Ok(Span::Extents(assemble(rows)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn union_gives_each_half_its_parameters() {
        let sql = union("ino", "dentries", " AND parent = ?");
        assert_eq!(sql.matches('?').count(), 7);
        let p = params(
            At {
                space: 7,
                moment: 3,
            },
            &[Value::from(1u64)],
        );
        assert_eq!(p.len(), 7);
        assert_eq!(p[0], Value::from(7u32));
        assert_eq!(p[2], Value::from(1u64));
        assert_eq!(p[5], Value::from(3u64));
        assert_eq!(p[6], Value::from(1u64));
    }
}
