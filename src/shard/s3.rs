//! The Storage Node's side of the object store: which files move-to-s3 may
//! move, the `s3_uploads` records that make an upload safe to interrupt,
//! and the transaction that hands a file's data over to its object.
//!
//! A move is: record the upload (`uploading`), upload and verify, then one
//! transaction that re-checks the inode is unchanged and the record is still
//! ours, points the inode at the object, drops its extents and the record.
//! Whatever stops it first leaves the record behind, and remove-deleted
//! deletes that object later; a file is never without its data.

use anyhow::{Context, Result, anyhow};
use mysql::prelude::Queryable;

use super::{EXTENT_SIZE, Shard};
use crate::db::TxError;

/// A file move-to-s3 may move, with the version of it that is uploaded.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub space: u32,
    pub ino: u64,
    pub size: u64,
    pub mtime: i64,
    pub ctime: i64,
    pub stored: u64,
}

/// An object no inode names: delete it once it is old enough.
#[derive(Clone, Debug)]
pub struct Orphan {
    pub id: u64,
    pub host: u32,
    pub key: String,
    pub upload_id: Option<String>,
    pub uploading: bool,
}

/// The files that may move: regular, live, in the database, unchanged
/// since `settled_before` (data and attributes), not named `last.log`, of
/// an eligible size (`max` 0: no limit), and not held open for writing by
/// a mount (see [`super::open_writers`]), in a space no live snapshot sees
/// (moving would copy the file's extents into the snapshot's kept rows:
/// its files wait until the snapshot is gone).
const ELIGIBLE: &str = "i.state = LIVE AND i.mode & 0o170000 = 0o100000 AND i.s3_key IS NULL AND i.import_path IS NULL
     AND i.mtime < ? AND i.ctime < ? AND i.size >= ? AND (? = 0 OR i.size <= ?)
     AND NOT EXISTS (SELECT 1 FROM dentries d WHERE d.space_id = i.space_id AND d.ino = i.ino AND d.name = 'last.log')
     AND NOT EXISTS (SELECT 1 FROM snapshot_moments m WHERE m.space_id = i.space_id)";

/// The garbage recorded before the first `?` that may go: no row kept for
/// a snapshot on this node names it, and its space is none of `held`, the
/// spaces live snapshots hold (a space moved away with a snapshot took its
/// kept rows along; its garbage records stayed here).
fn garbage_due(held: &[u32]) -> String {
    let mut sql = String::from(
        "(state = 'garbage' AND touched_at < ? AND NOT EXISTS (
           SELECT 1 FROM inodes_v v WHERE v.s3_host = s3_uploads.s3_host AND v.s3_key = s3_uploads.s3_key)",
    );
    if !held.is_empty() {
        sql.push_str(&format!(" AND space_id NOT IN ({})", super::id_list(held)));
    }
    sql.push(')');
    sql
}

/// Extents read per query while uploading (16 MiB).
const READ_EXTENTS: u64 = 64;

fn eligible() -> String {
    let sql = ELIGIBLE
        .replace("LIVE", &super::inode::LIVE.to_string())
        .replace("0o170000", &libc::S_IFMT.to_string())
        .replace("0o100000", &libc::S_IFREG.to_string());
    format!("{sql} AND {}", super::open_writers::not_open_for_writing())
}

impl Shard {
    /// Up to `limit` files that may move, after `(space, ino)` in key order.
    pub fn s3_candidates(
        &self,
        after: (u32, u64),
        settled_before: i64,
        min: u64,
        max: u64,
        limit: usize,
    ) -> Result<Vec<Candidate>> {
        type Row = (u32, u64, u64, i64, i64, u64);
        let rows: Vec<Row> = self.db.read(|c| {
            c.exec(
                format!(
                    "SELECT i.space_id, i.ino, i.size, i.mtime, i.ctime, i.stored FROM inodes i
                     WHERE (i.space_id > ? OR (i.space_id = ? AND i.ino > ?)) AND {}
                     ORDER BY i.space_id, i.ino LIMIT {limit}",
                    eligible()
                ),
                (
                    after.0,
                    after.0,
                    after.1,
                    settled_before,
                    settled_before,
                    min,
                    max,
                    max,
                ),
            )
        })?;
        Ok(rows
            .into_iter()
            .map(|(space, ino, size, mtime, ctime, stored)| Candidate {
                space,
                ino,
                size,
                mtime,
                ctime,
                stored,
            })
            .collect())
    }

    /// (files, bytes) that may move.
    pub fn waiting_for_s3(&self, settled_before: i64, min: u64, max: u64) -> Result<(u64, u64)> {
        let r: Option<(u64, Option<u64>)> = self.db.read(|c| {
            c.exec_first(
                format!(
                    "SELECT COUNT(*), CAST(SUM(i.size) AS UNSIGNED) FROM inodes i WHERE {}",
                    eligible()
                ),
                (settled_before, settled_before, min, max, max),
            )
        })?;
        let (n, b) = r.unwrap_or((0, None));
        Ok((n, b.unwrap_or(0)))
    }

    /// Records an upload about to start; returns its record's id.
    pub fn begin_upload(&self, host: u32, key: &str, space: u32, ino: u64) -> Result<u64> {
        let now = crate::clock::now_ns();
        self.tx(|tx| {
            tx.exec_drop(
                "INSERT INTO s3_uploads (s3_host, s3_key, space_id, ino, state, touched_at)
                 VALUES (?, ?, ?, ?, 'uploading', ?)",
                (host, key, space, ino, now),
            )?;
            Ok(tx.last_insert_id().unwrap_or(0))
        })
        .map_err(TxError::into_db)
        .with_context(|| format!("storage node {}: recording an upload", self.id))
    }

    /// Renews an upload's record (it is alive), and records the id of its
    /// multipart upload.
    pub fn touch_upload(&self, id: u64, upload_id: Option<&str>) -> Result<()> {
        let now = crate::clock::now_ns();
        self.tx(|tx| {
            tx.exec_drop(
                "UPDATE s3_uploads SET touched_at = GREATEST(touched_at, ?), upload_id = COALESCE(?, upload_id)
                 WHERE id = ? AND state = 'uploading'",
                (now, upload_id, id),
            )
        })
        .map_err(TxError::into_db)
        .with_context(|| format!("storage node {}: renewing an upload", self.id))
    }

    /// The move's last step, in one transaction: if the inode is still the
    /// version uploaded, no mount registered it as open for writing and the
    /// upload's record is still ours, the inode names the object and its
    /// extents go (or its file on an imported tree is let go: perform-import
    /// uploads from there). False: the file changed or was opened for
    /// writing (or its space is being moved) and the object is not used.
    /// A file opened for writing within the last seconds of its upload is
    /// not registered yet and may move: its writer's first write brings it
    /// back (an upload and a recall lost, no data).
    pub fn finish_move(&self, c: &Candidate, host: u32, key: &str, upload: u64) -> Result<bool> {
        let r = self.tx(|tx| {
            type Now = (u64, i64, i64, u64, u8, Option<Vec<u8>>, u32);
            let now: Option<Now> = tx.exec_first(
                "SELECT size, mtime, ctime, stored, state, s3_key, nlink FROM inodes
                 WHERE space_id = ? AND ino = ? FOR UPDATE",
                (c.space, c.ino),
            )?;
            let ours: Option<String> = tx.exec_first(
                "SELECT state FROM s3_uploads WHERE id = ? FOR UPDATE",
                (upload,),
            )?;
            let unchanged = matches!(now, Some((size, mtime, ctime, stored, 0, None, n))
                if size == c.size && mtime == c.mtime && ctime == c.ctime && stored == c.stored && n > 0);
            if !unchanged
                || ours.as_deref() != Some("uploading")
                || super::open_writers::is_open_for_writing(tx, c.space, c.ino)?
            {
                return Ok(false);
            }
            tx.exec_drop(
                "UPDATE inodes SET s3_host = ?, s3_key = ?, import_path = NULL, import_mtime = NULL WHERE space_id = ? AND ino = ?",
                (host, key, c.space, c.ino),
            )?;
            tx.exec_drop(
                "DELETE FROM extents WHERE space_id = ? AND ino = ?",
                (c.space, c.ino),
            )?;
            tx.exec_drop("DELETE FROM s3_uploads WHERE id = ?", (upload,))?;
            Ok(true)
        });
        match r {
            Ok(done) => Ok(done),
            Err(ref e) if super::is_fenced(e) => Ok(false),
            Err(e) => Err(anyhow::Error::from(e.into_db()))
                .with_context(|| format!("storage node {}: finishing a move to S3", self.id)),
        }
    }

    /// `len` bytes of a file from `off`, from its extents, for an upload
    /// (holes and bytes past an extent's end read as zeros).
    pub fn read_for_upload(&self, space: u32, ino: u64, off: u64, len: usize) -> Result<Vec<u8>> {
        let e = EXTENT_SIZE;
        let end = off + len as u64;
        let mut out = vec![0u8; len];
        let mut at = off - off % e;
        while at < end {
            let until = (at + READ_EXTENTS * e).min(end.div_ceil(e) * e);
            let rows: Vec<(u64, Vec<u8>)> = self
                .db
                .read(|conn| {
                    conn.exec(
                        "SELECT off, data FROM extents WHERE space_id = ? AND ino = ? AND off >= ? AND off < ? ORDER BY off",
                        (space, ino, at, until),
                    )
                })
                .map_err(|e| anyhow!("storage node {}: reading a file to upload: {e}", self.id))?;
            for (o, d) in rows {
                let (from, to) = (o.max(off), (o + d.len() as u64).min(end));
                if from < to {
                    out[(from - off) as usize..(to - off) as usize]
                        .copy_from_slice(&d[(from - o) as usize..(to - o) as usize]);
                }
            }
            at = until;
        }
        Ok(out)
    }

    /// Records objects of a space that nothing names any more, `(host, key,
    /// ino)`, as garbage: remove-deleted deletes them after the grace period.
    pub fn record_garbage(&self, space: u32, objects: &[(u32, String, u64)]) -> Result<()> {
        let now = crate::clock::now_ns();
        self.tx(|tx| {
            for (h, k, ino) in objects {
                tx.exec_drop(
                    "INSERT INTO s3_uploads (s3_host, s3_key, space_id, ino, state, touched_at)
                     VALUES (?, ?, ?, ?, 'garbage', ?)",
                    (h, k, space, ino, now),
                )?;
            }
            Ok(())
        })
        .map_err(|e| anyhow!("storage node {}: {e}", self.id))
    }

    /// The S3 hosts that have orphans (see [`Shard::s3_orphans`]).
    pub fn s3_orphan_hosts(
        &self,
        before: i64,
        stale_before: i64,
        held: &[u32],
    ) -> Result<Vec<u32>> {
        Ok(self.db.read(|c| {
            c.exec(
                format!(
                    "SELECT DISTINCT s3_host FROM s3_uploads
                     WHERE {} OR (state = 'uploading' AND touched_at < ?)
                     ORDER BY s3_host",
                    garbage_due(held)
                ),
                (before, stale_before),
            )
        })?)
    }

    /// Objects of `host` to delete: garbage recorded before `before` that no
    /// snapshot still sees (see [`garbage_due`]), and uploads not renewed
    /// since `stale_before` (their process is gone).
    pub fn s3_orphans(
        &self,
        host: u32,
        before: i64,
        stale_before: i64,
        held: &[u32],
        limit: usize,
    ) -> Result<Vec<Orphan>> {
        type Row = (u64, u32, Vec<u8>, Option<Vec<u8>>, String);
        let rows: Vec<Row> = self.db.read(|c| {
            c.exec(
                format!(
                    "SELECT id, s3_host, s3_key, upload_id, state FROM s3_uploads
                     WHERE s3_host = ? AND ({} OR (state = 'uploading' AND touched_at < ?))
                     ORDER BY id LIMIT {limit}",
                    garbage_due(held)
                ),
                (host, before, stale_before),
            )
        })?;
        Ok(rows
            .into_iter()
            .map(|(id, host, key, upload_id, state)| Orphan {
                id,
                host,
                key: String::from_utf8_lossy(&key).into_owned(),
                upload_id: upload_id.map(|u| String::from_utf8_lossy(&u).into_owned()),
                uploading: state == "uploading",
            })
            .collect())
    }

    /// Takes an orphan for deletion: an upload becomes garbage only if it
    /// is still stale (its process did not finish it meanwhile). False: it
    /// is no orphan any more.
    pub fn claim_orphan(&self, o: &Orphan, stale_before: i64) -> Result<bool> {
        if !o.uploading {
            return Ok(true);
        }
        self.tx(|tx| {
            tx.exec_drop(
                "UPDATE s3_uploads SET state = 'garbage' WHERE id = ? AND state = 'uploading' AND touched_at < ?",
                (o.id, stale_before),
            )?;
            Ok(tx.affected_rows() == 1)
        })
        .map_err(TxError::into_db)
        .with_context(|| format!("storage node {}: claiming an orphaned upload", self.id))
    }

    /// Drops the record of an object that was deleted.
    pub fn forget_orphan(&self, id: u64) -> Result<()> {
        self.tx(|tx| tx.exec_drop("DELETE FROM s3_uploads WHERE id = ?", (id,)))
            .map_err(TxError::into_db)
            .with_context(|| format!("storage node {}: dropping an upload record", self.id))
    }

    /// Marks an upload record as garbage to delete at once (its upload was
    /// abandoned and deleting the object failed).
    pub fn abandon_upload(&self, id: u64) -> Result<()> {
        self.tx(|tx| {
            tx.exec_drop(
                "UPDATE s3_uploads SET state = 'garbage', touched_at = 0 WHERE id = ?",
                (id,),
            )
        })
        .map_err(TxError::into_db)
        .with_context(|| format!("storage node {}: abandoning an upload", self.id))
    }

    /// How many orphaned objects wait for deletion (for a dry run).
    pub fn count_orphans(&self, before: i64, stale_before: i64, held: &[u32]) -> Result<u64> {
        let n: Option<u64> = self.db.read(|c| {
            c.exec_first(
                format!(
                    "SELECT COUNT(*) FROM s3_uploads
                     WHERE {} OR (state = 'uploading' AND touched_at < ?)",
                    garbage_due(held)
                ),
                (before, stale_before),
            )
        })?;
        Ok(n.unwrap_or(0))
    }
}

/// Inside a transaction that is about to delete inode rows (`where_sql`
/// selects them, with `params`): records their objects as garbage to delete
/// at once.
pub fn garbage_objects_of(
    tx: &mut mysql::Transaction<'_>,
    where_sql: &str,
    params: mysql::Params,
) -> Result<(), mysql::Error> {
    tx.exec_drop(
        format!(
            "INSERT INTO s3_uploads (s3_host, s3_key, space_id, ino, state, touched_at)
             SELECT s3_host, s3_key, space_id, ino, 'garbage', 0 FROM inodes
             WHERE s3_key IS NOT NULL AND {where_sql}"
        ),
        params,
    )
}
