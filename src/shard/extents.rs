//! A file's data on its Storage Node: extents of at most [`EXTENT_SIZE`]
//! bytes keyed by `(space, inode, offset)` (holes are missing extents), or,
//! for a file elsewhere, the object that holds it or its file on an imported
//! disk tree. Each change is one transaction; a change of a file held
//! elsewhere first brings its data back into extents ([`recall`]).

use std::collections::BTreeMap;

use mysql::Transaction;
use mysql::prelude::Queryable;

use super::EXTENT_SIZE;
use super::access::{Access, Stores};
use super::error::{ShardError, ShardResult};
use super::inode::{Attr, DELETED};
use super::namespace::insert_new;
use crate::clock::now_ns;
use crate::db::Body;

const E: u64 = EXTENT_SIZE;

/// Where the bytes of a span of a file are.
pub enum Span {
    /// Its extents in the span, by offset (holes missing), sorted.
    Extents(Vec<(u64, Vec<u8>)>),
    /// An object of S3 host `host` holds the whole file of `size` bytes.
    Object { host: u32, key: String, size: u64 },
    /// The file is still on the imported disk tree.
    Disk {
        path: Vec<u8>,
        size: u64,
        mtime: Option<i64>,
    },
}

/// Where `[first, last)` of a file is, in one query: its extents, or the
/// object or disk file that holds it (a move between two reads is seen at
/// once).
pub fn span(s: &impl Access, space: u32, ino: u64, first: u64, last: u64) -> ShardResult<Span> {
    type Row = (Option<u64>, Vec<u8>, Option<u32>, Option<u64>, Option<i64>);
    let rows: Vec<Row> = s.query("read", |c| {
        c.exec(
            "SELECT off, data, NULL, NULL, NULL FROM extents WHERE space_id = ? AND ino = ? AND off >= ? AND off < ?
             UNION ALL
             SELECT NULL, COALESCE(s3_key, import_path), s3_host, size, import_mtime FROM inodes
             WHERE space_id = ? AND ino = ? AND (s3_key IS NOT NULL OR import_path IS NOT NULL)",
            (space, ino, first, last, space, ino),
        )
    })?;
    if let Some((_, path, _, Some(size), mtime)) =
        rows.iter().find(|r| r.0.is_none() && r.2.is_none())
    {
        return Ok(Span::Disk {
            path: path.clone(),
            size: *size,
            mtime: *mtime,
        });
    }
    if let Some((_, key, Some(host), Some(size), _)) = rows.iter().find(|r| r.0.is_none()) {
        return Ok(Span::Object {
            host: *host,
            key: String::from_utf8_lossy(key).into_owned(),
            size: *size,
        });
    }
    let mut out: Vec<(u64, Vec<u8>)> = rows
        .into_iter()
        .filter_map(|(o, d, ..)| o.map(|o| (o, d)))
        .collect();
    out.sort_unstable_by_key(|(o, _)| *o);
    Ok(Span::Extents(out))
}

/// The S3 host and key of the object holding a live file's data, if it is
/// in the object store.
pub fn object_of(s: &impl Access, space: u32, ino: u64) -> ShardResult<Option<(u32, String)>> {
    let row: Option<(u32, Vec<u8>)> = s.query("read", |c| {
        c.exec_first(
            "SELECT s3_host, s3_key FROM inodes
             WHERE space_id = ? AND ino = ? AND state < ? AND s3_key IS NOT NULL",
            (space, ino, DELETED),
        )
    })?;
    Ok(row.map(|(host, key)| (host, String::from_utf8_lossy(&key).into_owned())))
}

/// One extent a mount buffered: its whole content from the extent's start,
/// the length it had when the mount loaded it, and the lowest byte changed.
pub struct Buffered<'a> {
    pub off: u64,
    pub data: &'a [u8],
    pub base_len: usize,
    pub dirty_from: usize,
}

/// A create not in the database yet: written by its file's first commit.
pub struct NewName<'a> {
    pub parent: u64,
    pub name: &'a [u8],
    pub attr: &'a Attr,
}

/// Writes a pending create, buffered extents and the new size in one
/// transaction (a flush of a mount's buffers).
pub fn commit(
    s: &impl Access,
    stores: &dyn Stores,
    (space, ino): (u32, u64),
    bufs: &[Buffered<'_>],
    size: u64,
    now: i64,
    pending: Option<NewName<'_>>,
) -> ShardResult<()> {
    s.run("flush", |tx| {
        let mut fresh = false;
        if let Some(p) = &pending {
            // The parent must still exist (another mount may have
            // removed it), and a commit whose outcome was unknown may
            // already have created the file.
            let row: Option<(u32, Option<u64>)> = tx.exec_first(
                "SELECT p.nlink, (SELECT d.ino FROM dentries d
                                  WHERE d.space_id = p.space_id AND d.parent = p.ino AND d.name = ?)
                 FROM inodes p WHERE p.space_id = ? AND p.ino = ? AND p.state < ? FOR UPDATE",
                (p.name, space, p.parent, DELETED),
            )?;
            match row {
                None | Some((0, _)) => return Err(ShardError::NotFound.into()),
                Some((_, Some(existing))) if existing == ino => {}
                Some((_, Some(_))) => return Err(ShardError::Exists.into()),
                Some((_, None)) => {
                    insert_new(tx, space, p.parent, p.name, p.attr, None)?;
                    fresh = true;
                }
            }
        }
        let (Some(lo), Some(hi)) = (bufs.first().map(|b| b.off), bufs.last().map(|b| b.off)) else {
            return Ok(());
        };
        if !fresh {
            // Moved to the object store since the mount loaded its buffers:
            // back into the database first (same bytes: a move needs the
            // file unchanged).
            recall(tx, stores, space, ino, true)?;
        }
        let old: BTreeMap<u64, u64> = if fresh {
            BTreeMap::new() // a new file has no extents yet
        } else {
            tx.exec::<(u64, u64), _, _>(
                "SELECT off, len FROM extents WHERE space_id = ? AND ino = ? AND off BETWEEN ? AND ? FOR UPDATE",
                (space, ino, lo, hi),
            )?
            .into_iter()
            .collect()
        };
        let mut delta: i64 = 0;
        for b in bufs {
            let old_len = old.get(&b.off).copied();
            let appending =
                b.base_len > 0 && b.dirty_from >= b.base_len && old_len == Some(b.base_len as u64);
            if appending {
                tx.exec_drop(
                    "UPDATE extents SET data = CONCAT(data, ?), len = ? WHERE space_id = ? AND ino = ? AND off = ?",
                    (&b.data[b.base_len..], b.data.len(), space, ino, b.off),
                )?;
            } else {
                tx.exec_drop(
                    "INSERT INTO extents (space_id, ino, off, len, data) VALUES (?, ?, ?, ?, ?)
                     ON DUPLICATE KEY UPDATE len = VALUES(len), data = VALUES(data)",
                    (space, ino, b.off, b.data.len(), b.data),
                )?;
            }
            delta += b.data.len() as i64 - old_len.unwrap_or(0) as i64;
        }
        tx.exec_drop(
            "UPDATE inodes SET size = GREATEST(size, ?), stored = CAST(stored AS SIGNED) + ?, mtime = ?, ctime = ?
             WHERE space_id = ? AND ino = ?",
            (size, delta, now, now, space, ino),
        )?;
        Ok(())
    })
}

/// Appends `data` at the database's end of file in one transaction
/// (`O_APPEND`); the file may not grow past `max_size`. Returns the offset
/// the data landed at.
pub fn append(
    s: &impl Access,
    stores: &dyn Stores,
    (space, ino): (u32, u64),
    data: &[u8],
    now: i64,
    max_size: u64,
) -> ShardResult<u64> {
    s.run("append", |tx| {
        let (eof, _) = recall(tx, stores, space, ino, true)?.ok_or(ShardError::NotFound)?;
        let end = eof + data.len() as u64;
        if end > max_size {
            return Err(ShardError::TooBig.into());
        }
        let stored = write_at(tx, space, ino, eof, data)?;
        tx.exec_drop(
            "UPDATE inodes SET size = ?, stored = stored + ?, mtime = ?, ctime = ? WHERE space_id = ? AND ino = ?",
            (end, stored, now, now, space, ino),
        )?;
        Ok(eof)
    })
}

/// Bytes of an object fetched per ranged GET while a file comes back.
const RECALL_CHUNK: u64 = 32 * E;

/// Brings files' data into the database from wherever it is (the object
/// store or an imported disk tree), in one transaction: perform-import's
/// step. Returns the bytes brought in (files with nothing elsewhere, or
/// gone, count 0), or why it could not (then none was brought in).
pub fn bring_in(
    s: &impl Access,
    stores: &dyn Stores,
    space: u32,
    inos: &[u64],
) -> ShardResult<u64> {
    s.run("bring in", |tx| {
        let mut bytes = 0;
        for &ino in inos {
            if let Some((size, Some(_))) = recall(tx, stores, space, ino, true)? {
                bytes += size;
            }
        }
        Ok(bytes)
    })
}

/// Locks the inode's row and, if its data is in the object store or still
/// on the imported disk tree, brings it into extents (`need_data`;
/// otherwise the file is being emptied and the data is simply let go), in
/// the caller's transaction. An object is recorded as garbage:
/// remove-deleted deletes it after the grace period (other mounts may still
/// be reading it); an imported file on disk is left as it is. Returns the
/// inode's size and, if its data was elsewhere, its new `stored`; `None` if
/// there is no such inode. A store or disk failure aborts the transaction.
pub fn recall(
    tx: &mut Transaction<'_>,
    stores: &dyn Stores,
    space: u32,
    ino: u64,
    need_data: bool,
) -> Result<Option<(u64, Option<u64>)>, Body<ShardError>> {
    type Row = (
        u64,
        Option<u32>,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
        Option<i64>,
    );
    let row: Option<Row> = tx.exec_first(
        "SELECT size, s3_host, s3_key, import_path, import_mtime FROM inodes WHERE space_id = ? AND ino = ? FOR UPDATE",
        (space, ino),
    )?;
    let Some((size, host, key, import_path, import_mtime)) = row else {
        return Ok(None);
    };
    let stored = if let Some(path) = import_path {
        let file = crate::disk_tier::DiskFile::new(&path, size, import_mtime);
        let stored = if need_data {
            copy_in(tx, space, ino, size, |off, n| {
                crate::disk_tier::read_span(&file, off, off + n)
                    .map_err(|e| Body::Abort(ShardError::store(space, ino, e)))
            })?
        } else {
            0
        };
        tx.exec_drop(
            "UPDATE inodes SET import_path = NULL, import_mtime = NULL, stored = ? WHERE space_id = ? AND ino = ?",
            (stored, space, ino),
        )?;
        stored
    } else if let (Some(host), Some(key)) = (host, key) {
        let stored = if need_data {
            let text = String::from_utf8_lossy(&key).into_owned();
            let store = stores
                .object_store(host)
                .map_err(|e| ShardError::store(space, ino, format!("S3 host {host}: {e:#}")))?;
            copy_in(tx, space, ino, size, |off, n| {
                store
                    .get_range(&text, off, n)
                    .map_err(|e| Body::Abort(ShardError::store(space, ino, e)))
            })?
        } else {
            0
        };
        tx.exec_drop(
            "UPDATE inodes SET s3_host = NULL, s3_key = NULL, stored = ? WHERE space_id = ? AND ino = ?",
            (stored, space, ino),
        )?;
        tx.exec_drop(
            "INSERT INTO s3_uploads (s3_host, s3_key, space_id, ino, state, touched_at) VALUES (?, ?, ?, ?, 'garbage', ?)",
            (host, &key, space, ino, now_ns()),
        )?;
        log::debug!("space {space} inode {ino}: back from S3 host {host} for a change");
        stored
    } else {
        return Ok(Some((size, None)));
    };
    Ok(Some((size, Some(stored))))
}

/// Writes a file's whole data, read in `RECALL_CHUNK` pieces with `read`,
/// as its extents (replacing any; all-zero extents stay holes). Returns the
/// bytes stored.
pub fn copy_in<Er: From<mysql::Error>>(
    tx: &mut Transaction<'_>,
    space: u32,
    ino: u64,
    size: u64,
    read: impl Fn(u64, u64) -> Result<Vec<u8>, Er>,
) -> Result<u64, Er> {
    tx.exec_drop(
        "DELETE FROM extents WHERE space_id = ? AND ino = ?",
        (space, ino),
    )?;
    let mut stored = 0u64;
    let mut off = 0;
    while off < size {
        let n = RECALL_CHUNK.min(size - off);
        let data = read(off, n)?;
        for (i, piece) in data.chunks(E as usize).enumerate() {
            // All-zero extents stay holes.
            if piece.iter().any(|b| *b != 0) {
                tx.exec_drop(
                    "INSERT INTO extents (space_id, ino, off, len, data) VALUES (?, ?, ?, ?, ?)",
                    (space, ino, off + i as u64 * E, piece.len(), piece),
                )?;
                stored += piece.len() as u64;
            }
        }
        off += n;
    }
    Ok(stored)
}

/// Writes `data` at `pos` where `pos` is at or past every extent's end (an
/// append): extends the last extent with `CONCAT`, starts new ones as needed.
/// Returns the bytes added to `stored` (data plus zero fill of gaps).
fn write_at(
    tx: &mut Transaction<'_>,
    space: u32,
    ino: u64,
    pos: u64,
    data: &[u8],
) -> Result<u64, mysql::Error> {
    let mut added = 0u64;
    let mut p = pos;
    let mut rest = data;
    while !rest.is_empty() {
        let ext = p - p % E;
        let n = rest.len().min((ext + E - p) as usize);
        let len: Option<u64> = tx.exec_first(
            "SELECT len FROM extents WHERE space_id = ? AND ino = ? AND off = ? FOR UPDATE",
            (space, ino, ext),
        )?;
        let have = len.unwrap_or(0);
        let gap = (p - ext).saturating_sub(have) as usize;
        let mut piece = vec![0u8; gap];
        piece.extend_from_slice(&rest[..n]);
        if len.is_some() {
            tx.exec_drop(
                "UPDATE extents SET data = CONCAT(LEFT(data, ?), ?), len = ? WHERE space_id = ? AND ino = ? AND off = ?",
                (p - ext - gap as u64, &piece, p - ext + n as u64, space, ino, ext),
            )?;
            added += (p - ext + n as u64).saturating_sub(have);
        } else {
            tx.exec_drop(
                "INSERT INTO extents (space_id, ino, off, len, data) VALUES (?, ?, ?, ?, ?)",
                (space, ino, ext, piece.len(), &piece),
            )?;
            added += piece.len() as u64;
        }
        p += n as u64;
        rest = &rest[n..];
    }
    Ok(added)
}

/// Zeroes `[from, to)`: extents wholly inside go (holes read as zeros),
/// the ones at its ends are cut or zeroed in place. Returns the bytes still
/// stored.
pub fn zero_range(
    tx: &mut Transaction<'_>,
    space: u32,
    ino: u64,
    from: u64,
    to: u64,
) -> Result<u64, mysql::Error> {
    if from < to {
        // Extents wholly inside go in one statement; only the (at most
        // two) extents at the ends are read and edited.
        let (inner_from, inner_to) = (from.div_ceil(E) * E, to - to % E);
        if inner_from < inner_to {
            tx.exec_drop(
                "DELETE FROM extents WHERE space_id = ? AND ino = ? AND off >= ? AND off < ?",
                (space, ino, inner_from, inner_to),
            )?;
        }
        let mut ends = vec![from - from % E];
        if to - to % E != ends[0] && !to.is_multiple_of(E) {
            ends.push(to - to % E);
        }
        let mut rows: Vec<(u64, Vec<u8>)> = Vec::new();
        for off in ends {
            let data: Option<Vec<u8>> = tx.exec_first(
                "SELECT data FROM extents WHERE space_id = ? AND ino = ? AND off = ? FOR UPDATE",
                (space, ino, off),
            )?;
            rows.extend(data.map(|d| (off, d)));
        }
        for (off, mut data) in rows {
            let a = from.saturating_sub(off).min(data.len() as u64) as usize;
            let b = (to - off).min(data.len() as u64) as usize;
            if a >= b {
                continue;
            }
            data[a..b].fill(0);
            // Trailing zeros need no storage: short extents read as zeros.
            let keep = data.iter().rposition(|&x| x != 0).map_or(0, |p| p + 1);
            if keep == 0 {
                tx.exec_drop(
                    "DELETE FROM extents WHERE space_id = ? AND ino = ? AND off = ?",
                    (space, ino, off),
                )?;
            } else {
                data.truncate(keep);
                tx.exec_drop(
                    "UPDATE extents SET data = ?, len = ? WHERE space_id = ? AND ino = ? AND off = ?",
                    (&data, keep, space, ino, off),
                )?;
            }
        }
    }
    stored_bytes(tx, space, ino)
}

/// Where the next data (`SEEK_DATA`) or hole (`SEEK_HOLE`) at or after
/// `offset` begins in a file of `size` bytes, from its extents: a missing
/// extent, or the part of one past its length, is a hole; the end of the
/// file is one too. `None` past the end (`ENXIO`).
pub fn seek(
    s: &impl Access,
    space: u32,
    ino: u64,
    size: u64,
    offset: u64,
    data: bool,
) -> ShardResult<Option<u64>> {
    if offset >= size {
        return Ok(None);
    }
    // A file held elsewhere (object store, imported disk) is data throughout.
    let elsewhere: Option<u8> = s.query("seek", |c| {
        c.exec_first(
            "SELECT 1 FROM inodes WHERE space_id = ? AND ino = ? AND (s3_key IS NOT NULL OR import_path IS NOT NULL)",
            (space, ino),
        )
    })?;
    if elsewhere.is_some() {
        return Ok(Some(if data { offset } else { size }));
    }
    let mut pos = offset;
    let mut after = offset - offset % E;
    loop {
        let rows: Vec<(u64, u64)> = s.query("seek", |c| {
            c.exec(
                "SELECT off, len FROM extents WHERE space_id = ? AND ino = ? AND off >= ? AND len > 0 ORDER BY off LIMIT 64",
                (space, ino, after),
            )
        })?;
        let Some(&(last, _)) = rows.last() else {
            return Ok(if data { None } else { Some(pos.min(size)) });
        };
        for (off, len) in &rows {
            let end = off + len;
            if end <= pos {
                continue;
            }
            if data {
                return Ok((pos.max(*off) < size).then_some(pos.max(*off)));
            }
            if *off > pos {
                return Ok(Some(pos));
            }
            pos = end;
            if len % E != 0 || pos >= size {
                // A short extent: a hole follows it (or the end).
                return Ok(Some(pos.min(size)));
            }
        }
        after = last + E;
    }
}

/// Drops the data at and beyond `size`; returns the bytes still stored.
pub fn truncate(
    tx: &mut Transaction<'_>,
    space: u32,
    ino: u64,
    size: u64,
) -> Result<u64, mysql::Error> {
    let keep_from = size - size % E;
    tx.exec_drop(
        "DELETE FROM extents WHERE space_id = ? AND ino = ? AND off >= ?",
        (space, ino, size.div_ceil(E) * E),
    )?;
    if !size.is_multiple_of(E) {
        tx.exec_drop(
            "UPDATE extents SET data = LEFT(data, ?), len = ? WHERE space_id = ? AND ino = ? AND off = ? AND len > ?",
            (size - keep_from, size - keep_from, space, ino, keep_from, size - keep_from),
        )?;
    }
    stored_bytes(tx, space, ino)
}

fn stored_bytes(tx: &mut Transaction<'_>, space: u32, ino: u64) -> Result<u64, mysql::Error> {
    let stored: Option<Option<u64>> = tx.exec_first(
        "SELECT CAST(SUM(len) AS UNSIGNED) FROM extents WHERE space_id = ? AND ino = ?",
        (space, ino),
    )?;
    Ok(stored.flatten().unwrap_or(0))
}
