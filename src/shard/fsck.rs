//! fsck's statements on a Storage Node: a space's inodes and names read in
//! batches in key order (keyset pagination, so a node with millions of
//! inodes is never loaded whole), which of a page of objects in the store
//! its rows name, and the repairs.
//!
//! Each check is one statement, so the rows it compares come from one
//! consistent snapshot: an inode created with its name, or unlinked with
//! it, is never seen half-way. Each repair re-checks its finding under row
//! locks in its own transaction and does nothing if the rows changed
//! meanwhile (a mount working on them), so a live change is never undone.

use std::collections::{BTreeMap, HashSet};

use mysql::prelude::Queryable;

use super::access::Access;
use super::error::ShardResult;
use super::extents;
use super::inode::{DELETED, InodeState, LIVE};
use crate::clock::now_ns;

/// The space's root directory: the one inode no entry names.
const ROOT: u64 = 1;

/// An inode as fsck looks at it (deleted ones are not looked at: they wait
/// for remove-deleted).
#[derive(Clone, Debug)]
pub struct InodeFacts {
    pub ino: u64,
    pub mode: u32,
    pub state: InodeState,
    pub size: u64,
    /// Some directory entry names it.
    pub named: bool,
    /// Where its last row of data ends (none: no rows). Rows never
    /// overlap, so the last one ends furthest.
    pub data_end: Option<u64>,
    /// The object holding its data: (S3 host, key).
    pub object: Option<(u32, String)>,
}

/// Up to `limit` inodes of a space after inode `after`, in inode order.
/// (The indexes are named: with a million names the optimizer was seen to
/// look a name up by scanning the space's entries.)
pub fn inodes(
    s: &impl Access,
    space: u32,
    after: u64,
    limit: usize,
) -> ShardResult<Vec<InodeFacts>> {
    type Row = (
        u64,
        u32,
        u8,
        u64,
        Option<u32>,
        Option<Vec<u8>>,
        u8,
        Option<u64>,
    );
    let rows: Vec<Row> = s.query("fsck: reading inodes", |c| {
        c.exec(
            format!(
                "SELECT i.ino, i.mode, i.state, i.size, i.s3_host, i.s3_key,
                        EXISTS (SELECT 1 FROM dentries d FORCE INDEX (by_ino)
                                WHERE d.space_id = i.space_id AND d.ino = i.ino),
                        (SELECT e.off + e.len FROM extents e WHERE e.space_id = i.space_id AND e.ino = i.ino
                         ORDER BY e.off DESC LIMIT 1)
                 FROM inodes i FORCE INDEX (PRIMARY) WHERE i.space_id = ? AND i.ino > ? AND i.state < {DELETED}
                 ORDER BY i.ino LIMIT {limit}"
            ),
            (space, after),
        )
    })?;
    Ok(rows
        .into_iter()
        .map(
            |(ino, mode, state, size, host, key, named, data_end)| InodeFacts {
                ino,
                mode,
                state: InodeState::from_db(state),
                size,
                named: named != 0,
                data_end,
                object: host
                    .zip(key)
                    .map(|(h, k)| (h, String::from_utf8_lossy(&k).into_owned())),
            },
        )
        .collect())
}

/// A directory entry and what its inode is.
#[derive(Clone, Debug)]
pub struct EntryFacts {
    pub parent: u64,
    pub name: Vec<u8>,
    pub ino: u64,
    /// The state of the inode it names; none: there is no such inode.
    pub target: Option<InodeState>,
}

/// Up to `limit` entries of a space after `(parent, name)`, in key order
/// (start with `(0, [])`).
pub fn entries(
    s: &impl Access,
    space: u32,
    after: (u64, &[u8]),
    limit: usize,
) -> ShardResult<Vec<EntryFacts>> {
    let rows: Vec<(u64, Vec<u8>, u64, Option<u8>)> = s.query("fsck: reading names", |c| {
        c.exec(
            // The rest of `after`'s directory, then the directories after
            // it: two ranges of the primary key (one `OR` would scan).
            format!(
                "SELECT d.parent, d.name, d.ino, i.state FROM (
                   (SELECT parent, name, ino FROM dentries FORCE INDEX (PRIMARY)
                    WHERE space_id = ? AND parent = ? AND name > ? ORDER BY name LIMIT {limit})
                   UNION ALL
                   (SELECT parent, name, ino FROM dentries FORCE INDEX (PRIMARY)
                    WHERE space_id = ? AND parent > ? ORDER BY parent, name LIMIT {limit})
                 ) d LEFT JOIN inodes i ON i.space_id = ? AND i.ino = d.ino
                 ORDER BY d.parent, d.name LIMIT {limit}"
            ),
            (space, after.0, after.1, space, after.0, space),
        )
    })?;
    Ok(rows
        .into_iter()
        .map(|(parent, name, ino, state)| EntryFacts {
            parent,
            name,
            ino,
            target: state.map(InodeState::from_db),
        })
        .collect())
}

/// The path of an inode inside its space (`/docs/a.pdf`, by its first
/// name; `?` where the chain of names breaks), or none if nothing names it.
pub fn path_of(s: &impl Access, space: u32, ino: u64) -> ShardResult<Option<String>> {
    if ino == ROOT {
        return Ok(Some("/".into()));
    }
    let mut parts: Vec<String> = Vec::new();
    let mut at = ino;
    while at != ROOT {
        let up: Option<(u64, Vec<u8>)> = s.query("fsck: reading a path", |c| {
            c.exec_first(
                "SELECT parent, name FROM dentries FORCE INDEX (by_ino)
                 WHERE space_id = ? AND ino = ? ORDER BY parent, name LIMIT 1",
                (space, at),
            )
        })?;
        match up {
            None if at == ino => return Ok(None),
            None => {
                parts.push("?".into());
                break;
            }
            Some((parent, name)) => {
                parts.push(String::from_utf8_lossy(&name).into_owned());
                at = parent;
            }
        }
        // A cycle of directories (a broken tree) ends somewhere.
        if parts.len() > 4096 {
            parts.push("?".into());
            break;
        }
    }
    parts.reverse();
    Ok(Some(format!("/{}", parts.join("/"))))
}

/// Which of `objects`, (space, inode, key) of objects in the store, a row of
/// this node names: the inode's `s3_key` (whatever its state, also in the
/// rows kept for snapshots), or an
/// `s3_uploads` record (an upload in flight, or garbage remove-deleted is
/// to delete). A key names its space and inode, so the inodes are found by
/// their primary key; `s3_uploads` is small (it empties every
/// remove-deleted run) and has no index on keys.
pub fn named_objects(
    s: &impl Access,
    objects: &[(u32, u64, String)],
) -> ShardResult<HashSet<String>> {
    let mut named = HashSet::new();
    if objects.is_empty() {
        return Ok(named);
    }
    let mut by_space: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for (space, ino, _) in objects {
        by_space.entry(*space).or_default().push(*ino);
    }
    for (space, inos) in by_space {
        let keys: Vec<Vec<u8>> = s.query("fsck: reading objects' inodes", |c| {
            let marks = vec!["?"; inos.len()].join(", ");
            let mut params: Vec<mysql::Value> = vec![space.into()];
            params.extend(inos.iter().map(|i| mysql::Value::from(*i)));
            params.extend_from_slice(&params.clone());
            c.exec(
                format!(
                    "SELECT s3_key FROM inodes WHERE space_id = ? AND ino IN ({marks}) AND s3_key IS NOT NULL
                     UNION ALL
                     SELECT s3_key FROM inodes_v WHERE space_id = ? AND ino IN ({marks}) AND s3_key IS NOT NULL"
                ),
                params,
            )
        })?;
        named.extend(
            keys.into_iter()
                .map(|k| String::from_utf8_lossy(&k).into_owned()),
        );
    }
    let recorded: Vec<Vec<u8>> = s.query("fsck: reading upload records", |c| {
        let marks = vec!["?"; objects.len()].join(", ");
        let params: Vec<mysql::Value> = objects
            .iter()
            .map(|(_, _, k)| mysql::Value::from(k.as_bytes()))
            .collect();
        c.exec(
            format!("SELECT s3_key FROM s3_uploads WHERE s3_key IN ({marks})"),
            params,
        )
    })?;
    named.extend(
        recorded
            .into_iter()
            .map(|k| String::from_utf8_lossy(&k).into_owned()),
    );
    Ok(named)
}

/// The object a file's data is in, with the file's size: (S3 host, key, size).
pub fn file_object(
    s: &impl Access,
    space: u32,
    ino: u64,
) -> ShardResult<Option<(u32, String, u64)>> {
    let row: Option<(u32, Vec<u8>, u64)> = s.query("fsck: reading an inode", |c| {
        c.exec_first(
            "SELECT s3_host, s3_key, size FROM inodes
             WHERE space_id = ? AND ino = ? AND state < ? AND s3_key IS NOT NULL",
            (space, ino, DELETED),
        )
    })?;
    Ok(row.map(|(h, k, size)| (h, String::from_utf8_lossy(&k).into_owned(), size)))
}

/// What a repair did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Repair {
    Done,
    /// The rows changed since the check: nothing to repair any more.
    Changed,
    /// Not repaired, for this reason.
    Refused(&'static str),
}

/// A live inode that nothing names (not the root): marked deleted, as an
/// unlink of its last name would, so remove-deleted purges it (and records
/// its object, if any, for deletion) after the grace period. A directory
/// that still has entries is left alone: marking it would orphan them.
pub fn mark_nameless_deleted(s: &impl Access, space: u32, ino: u64) -> ShardResult<Repair> {
    if ino == ROOT {
        return Ok(Repair::Changed);
    }
    let now = now_ns();
    s.run("fsck: marking a nameless inode deleted", |tx| {
        let row: Option<(u32, u8)> = tx.exec_first(
            "SELECT mode, state FROM inodes WHERE space_id = ? AND ino = ? FOR UPDATE",
            (space, ino),
        )?;
        let Some((mode, LIVE)) = row else {
            return Ok(Repair::Changed);
        };
        // Locks the names of the inode (or the gap where one would go).
        let name: Option<u64> = tx.exec_first(
            "SELECT parent FROM dentries FORCE INDEX (by_ino) WHERE space_id = ? AND ino = ? LIMIT 1 FOR UPDATE",
            (space, ino),
        )?;
        if name.is_some() {
            return Ok(Repair::Changed);
        }
        if mode & libc::S_IFMT == libc::S_IFDIR {
            let child: Option<u64> = tx.exec_first(
                "SELECT ino FROM dentries WHERE space_id = ? AND parent = ? LIMIT 1",
                (space, ino),
            )?;
            if child.is_some() {
                return Ok(Repair::Refused("a directory with entries is left alone"));
            }
        }
        tx.exec_drop(
            "UPDATE inodes SET nlink = 0, state = ?, deleted_at = ? WHERE space_id = ? AND ino = ?",
            (DELETED, now, space, ino),
        )?;
        Ok(Repair::Done)
    })
}

/// Drops a file's extents beyond its size (they would show as data if the
/// file grew again) and sets `stored` to what is left.
pub fn cut_extents(s: &impl Access, space: u32, ino: u64) -> ShardResult<Repair> {
    s.run("fsck: cutting extents", |tx| {
        let size: Option<u64> = tx.exec_first(
            "SELECT size FROM inodes WHERE space_id = ? AND ino = ? AND state < ? AND s3_key IS NULL FOR UPDATE",
            (space, ino, DELETED),
        )?;
        let Some(size) = size else {
            return Ok(Repair::Changed);
        };
        let end: Option<u64> = tx.exec_first(
            "SELECT off + len FROM extents WHERE space_id = ? AND ino = ? ORDER BY off DESC LIMIT 1",
            (space, ino),
        )?;
        if end.is_none_or(|e| e <= size) {
            return Ok(Repair::Changed);
        }
        let stored = extents::truncate(tx, space, ino, size)?;
        tx.exec_drop(
            "UPDATE inodes SET stored = ? WHERE space_id = ? AND ino = ?",
            (stored, space, ino),
        )?;
        Ok(Repair::Done)
    })
}

/// Removes a name whose inode is missing or deleted, and stamps its
/// directory changed (as an unlink does, so mounts see the change).
pub fn remove_dangling_entry(
    s: &impl Access,
    space: u32,
    parent: u64,
    name: &[u8],
    ino: u64,
) -> ShardResult<Repair> {
    let now = now_ns();
    s.run("fsck: removing a name", |tx| {
        let names: Option<u64> = tx.exec_first(
            "SELECT ino FROM dentries WHERE space_id = ? AND parent = ? AND name = ? FOR UPDATE",
            (space, parent, name),
        )?;
        if names != Some(ino) {
            return Ok(Repair::Changed);
        }
        let state: Option<u8> = tx.exec_first(
            "SELECT state FROM inodes WHERE space_id = ? AND ino = ? FOR UPDATE",
            (space, ino),
        )?;
        if state.is_some_and(|st| st < DELETED) {
            return Ok(Repair::Changed);
        }
        tx.exec_drop(
            "DELETE FROM dentries WHERE space_id = ? AND parent = ? AND name = ?",
            (space, parent, name),
        )?;
        tx.exec_drop(
            "UPDATE inodes SET mtime = ?, ctime = ? WHERE space_id = ? AND ino = ?",
            (now, now, space, parent),
        )?;
        Ok(Repair::Done)
    })
}
