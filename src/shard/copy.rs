//! Copying one space's rows from one Storage Node to another while it is in
//! use, and the fence that makes the last round exact (see `space_fence` in
//! the schema).
//!
//! A round compares the two nodes table by table, streaming both sides in
//! primary-key order with a digest of each row (blobs digested by the
//! server, so only keys and digests travel), and copies or deletes the rows
//! that differ. The first round copies everything; later rounds compare
//! extents and xattrs only for inodes whose row changed, because every write
//! of a file's data or xattrs also writes its inode row (size, mtime, ctime)
//! in the same transaction. Rounds while writers run converge; the last one
//! runs with the source fenced, so it leaves the copy identical.
//!
//! All of it runs on copier connections ([`Shard::copier`]), which pass the
//! fence. Every write to the receiving node checks, under a row lock, that its
//! `copy_token` is still the one written there: a copy-shards process whose
//! move was taken over cannot write stale rows after the new owner started.

use std::cmp::Ordering;

use anyhow::{Context, Result, bail};
use mysql::prelude::Queryable;
use mysql::{Row, Transaction, Value};

use super::Shard;
use crate::db::TxError;

/// The tables a space's rows live in, copied in this order: its snapshots'
/// kept rows and moments too (see `snapshot.rs`), so they move with it.
const TABLES: &[&str] = &[
    "spaces",
    "inodes",
    "dentries",
    "xattrs",
    "extents",
    "inodes_v",
    "dentries_v",
    "xattrs_v",
    "extents_v",
    "snapshot_moments",
];
/// Tables whose rows are inserted and deleted, never updated (a key names
/// one content for good): compared by key alone.
const INSERT_ONLY: &[&str] = &[
    "inodes_v",
    "dentries_v",
    "xattrs_v",
    "extents_v",
    "snapshot_moments",
];
/// Tables whose rows belong to an inode: compared per changed inode after round 1.
const PER_INODE: &[&str] = &["xattrs", "extents"];
/// Far-future fence: the space will not be written here again.
pub(super) const SEALED: &str = "9999-12-31 00:00:00";
/// Rows per copy batch: blob rows are up to 256 KiB, the packet limit is 16 MiB.
const BLOB_BATCH: usize = 16;
const ROW_BATCH: usize = 500;
/// Inodes per `ino IN (…)` query.
const INO_BATCH: usize = 500;

/// One component of a primary key, comparable the way the server orders it
/// (integers numerically, VARBINARY bytewise).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum KeyPart {
    Num(i128),
    Bytes(Vec<u8>),
}

impl KeyPart {
    fn from_value(v: &Value) -> Result<KeyPart> {
        Ok(match v {
            Value::Int(i) => KeyPart::Num(*i as i128),
            Value::UInt(u) => KeyPart::Num(*u as i128),
            Value::Bytes(b) => KeyPart::Bytes(b.clone()),
            other => bail!("unexpected primary key value {other:?}"),
        })
    }

    fn to_value(&self) -> Value {
        match self {
            KeyPart::Num(n) if *n < 0 => Value::Int(*n as i64),
            KeyPart::Num(n) => Value::UInt(*n as u64),
            KeyPart::Bytes(b) => Value::Bytes(b.clone()),
        }
    }
}

type Key = Vec<KeyPart>;

/// A table's columns as both nodes have them.
struct Table {
    name: &'static str,
    columns: Vec<String>,
    /// Primary key columns after `space_id`.
    key: Vec<String>,
    digest: String,
    blobs: bool,
}

impl Table {
    fn describe(shard: &Shard, name: &'static str) -> Result<Table> {
        let cols: Vec<(String, String, String)> = shard
            .db
            .read(|c| {
                c.exec(
                    "SELECT column_name, data_type, column_key FROM information_schema.columns
                     WHERE table_schema = DATABASE() AND table_name = ? ORDER BY ordinal_position",
                    (name,),
                )
            })
            .map_err(|e| anyhow::anyhow!("storage node {}: {e}", shard.id))?;
        let key_order: Vec<String> = shard
            .db
            .read(|c| {
                c.exec(
                    "SELECT column_name FROM information_schema.key_column_usage
                     WHERE table_schema = DATABASE() AND table_name = ? AND constraint_name = 'PRIMARY'
                     ORDER BY ordinal_position",
                    (name,),
                )
            })
            .map_err(|e| anyhow::anyhow!("storage node {}: {e}", shard.id))?;
        if key_order.first().map(String::as_str) != Some("space_id") {
            bail!(
                "storage node {}: table {name} is missing or not keyed by space",
                shard.id
            );
        }
        let blob = |t: &str| t.contains("blob");
        let digest = cols
            .iter()
            .filter(|(c, _, _)| !key_order.contains(c))
            .map(|(c, t, _)| {
                if blob(t) {
                    format!("IFNULL(MD5(`{c}`), 'N')")
                } else {
                    format!("IFNULL(HEX(`{c}`), 'N')")
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        // Rows kept for snapshots and their moments are only ever inserted
        // and deleted, never changed: their keys say it all, and no blob is
        // hashed again in the fenced last round.
        let digest = if INSERT_ONLY.contains(&name) {
            "'='".to_string()
        } else {
            format!("MD5(CONCAT_WS(0x1f, {digest}))")
        };
        Ok(Table {
            name,
            blobs: cols.iter().any(|(_, t, _)| blob(t)),
            columns: cols.into_iter().map(|(c, _, _)| c).collect(),
            key: key_order[1..].to_vec(),
            digest,
        })
    }

    fn batch(&self) -> usize {
        if self.blobs { BLOB_BATCH } else { ROW_BATCH }
    }

    fn key_list(&self) -> String {
        self.key
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `AND (k1, k2) IN ((?, ?), …)` for `n` keys (nothing for a table keyed
    /// by space alone).
    fn keys_in(&self, n: usize) -> String {
        if self.key.is_empty() {
            return String::new();
        }
        let one = format!("({})", vec!["?"; self.key.len()].join(", "));
        format!(
            " AND ({}) IN ({})",
            self.key_list(),
            vec![one; n].join(", ")
        )
    }
}

/// What a round changed on the receiving node.
#[derive(Debug, Default)]
pub struct RoundStats {
    pub rows: u64,
    pub bytes: u64,
    /// Inodes whose rows differed (copied, changed or deleted).
    pub changed_inodes: Vec<u64>,
}

/// A copy of one space from `src` to `dst` by the holder of `token`.
pub struct SpaceCopy<'a> {
    pub src: &'a Shard,
    pub dst: &'a Shard,
    pub space: u32,
    pub token: u64,
    tables: Vec<Table>,
}

impl<'a> SpaceCopy<'a> {
    pub fn new(src: &'a Shard, dst: &'a Shard, space: u32, token: u64) -> Result<SpaceCopy<'a>> {
        let mut tables = Vec::new();
        for name in TABLES {
            let t = Table::describe(src, name)?;
            let d = Table::describe(dst, name)?;
            if t.columns != d.columns || t.key != d.key {
                bail!(
                    "storage nodes {} and {} have different schemas for {name}: run tshs create-admin-node to upgrade them",
                    src.id,
                    dst.id
                );
            }
            tables.push(t);
        }
        Ok(SpaceCopy {
            src,
            dst,
            space,
            token,
            tables,
        })
    }

    /// Claims the space on both nodes for this copy: `token` becomes the
    /// high-water mark of each fence row, so whoever claimed before (a
    /// stalled process whose move was taken over) can no longer fence,
    /// seal, open or write there. The receiving node is fenced for everyone
    /// else. A fence an earlier holder left on the source (it died between
    /// sealing and switching) is lifted: the Admin Node still names the
    /// source, so writes belong there until our own cut-over.
    pub fn claim(&self) -> Result<()> {
        for (shard, fence) in [(self.src, None), (self.dst, Some(SEALED))] {
            let ours = shard
                .tx(|tx| {
                    let held: Option<Option<u64>> = tx.exec_first(
                        "SELECT copy_token FROM space_fence WHERE space_id = ? FOR UPDATE",
                        (self.space,),
                    )?;
                    if held.flatten().is_some_and(|t| t >= self.token) {
                        return Ok(false);
                    }
                    tx.exec_drop(
                        "INSERT INTO space_fence (space_id, fenced_until, copy_token) VALUES (?, ?, ?)
                         ON DUPLICATE KEY UPDATE fenced_until = VALUES(fenced_until), copy_token = VALUES(copy_token)",
                        (self.space, fence, self.token),
                    )?;
                    Ok(true)
                })
                .map_err(|e| anyhow::anyhow!("storage node {}: {e}", shard.id))?;
            if !ours {
                bail!(
                    "the move of space {} was taken over by another copy-shards process",
                    self.space
                );
            }
        }
        Ok(())
    }

    /// One comparison round. Unless `full`, extents and xattrs are compared
    /// only for inodes whose row differed in this round. `keep_going` is
    /// asked between batches.
    pub fn round(
        &self,
        full: bool,
        keep_going: &mut dyn FnMut(&RoundStats) -> Result<()>,
    ) -> Result<RoundStats> {
        let present: Option<u32> = self
            .src
            .db
            .read(|c| {
                c.exec_first(
                    "SELECT space_id FROM spaces WHERE space_id = ?",
                    (self.space,),
                )
            })
            .map_err(|e| self.src_msg(e))?;
        if present.is_none() {
            bail!(
                "space {} has no rows on storage node {}: nothing to copy",
                self.space,
                self.src.id
            );
        }
        let mut stats = RoundStats::default();
        for t in &self.tables {
            if PER_INODE.contains(&t.name) && !full {
                // The inodes whose rows differed in this round's pass over
                // `inodes` (which comes first).
                let mut list = stats.changed_inodes.clone();
                list.sort_unstable();
                list.dedup();
                for chunk in list.chunks(INO_BATCH) {
                    self.sync(t, Some(chunk), &mut stats, keep_going)?;
                }
            } else {
                self.sync(t, None, &mut stats, keep_going)?;
            }
        }
        // The snapshot epoch: rows copied keep their `born`, so later
        // snapshots on the receiving node must count on from here.
        let snap: Option<(u64, u64)> = self
            .src
            .db
            .read(|c| {
                c.exec_first(
                    "SELECT snap_epoch, snap_keep FROM space_fence WHERE space_id = ?",
                    (self.space,),
                )
            })
            .map_err(|e| self.src_msg(e))?;
        if let Some((epoch, keep)) = snap {
            self.write_dst(|tx| {
                tx.exec_drop(
                    "UPDATE space_fence SET snap_epoch = ?, snap_keep = ? WHERE space_id = ?",
                    (epoch, keep, self.space),
                )
            })?;
        }
        stats.changed_inodes.sort_unstable();
        stats.changed_inodes.dedup();
        Ok(stats)
    }

    /// Streams both sides of one table in key order and fixes the differences.
    fn sync(
        &self,
        t: &Table,
        inodes: Option<&[u64]>,
        stats: &mut RoundStats,
        keep_going: &mut dyn FnMut(&RoundStats) -> Result<()>,
    ) -> Result<()> {
        let mut params: Vec<Value> = vec![self.space.into()];
        let filter = match inodes {
            Some(list) => {
                params.extend(list.iter().map(|&i| Value::from(i)));
                format!(" AND ino IN ({})", vec!["?"; list.len()].join(", "))
            }
            None => String::new(),
        };
        let order = if t.key.is_empty() {
            String::new()
        } else {
            format!(" ORDER BY {}", t.key_list())
        };
        let select_keys = if t.key.is_empty() {
            String::new()
        } else {
            format!("{}, ", t.key_list())
        };
        let sql = format!(
            "SELECT {select_keys}{} FROM {} WHERE space_id = ?{filter}{order}",
            t.digest, t.name
        );
        let mut src_conn = self.src.db.conn().map_err(|e| self.src_msg(e))?;
        let mut dst_conn = self.dst.db.conn().map_err(|e| self.dst_msg(e))?;
        let mut src_rows = src_conn
            .exec_iter(&sql, params.clone())
            .map_err(|e| self.src_msg(self.src.db.err(e)))?;
        let mut dst_rows = dst_conn
            .exec_iter(&sql, params)
            .map_err(|e| self.dst_msg(self.dst.db.err(e)))?;
        let nkey = t.key.len();
        let split = |r: Row| -> Result<(Key, Vec<u8>)> {
            let vals = r.unwrap();
            let key = vals[..nkey]
                .iter()
                .map(KeyPart::from_value)
                .collect::<Result<Key>>()?;
            let digest = match &vals[nkey] {
                Value::Bytes(b) => b.clone(),
                other => bail!("unexpected digest {other:?}"),
            };
            Ok((key, digest))
        };
        let mut next_src = || -> Result<Option<(Key, Vec<u8>)>> {
            src_rows
                .next()
                .transpose()
                .map_err(|e| self.src_msg(self.src.db.err(e)))?
                .map(split)
                .transpose()
        };
        let mut s = next_src()?;
        let mut d = dst_rows
            .next()
            .transpose()
            .map_err(|e| self.dst_msg(self.dst.db.err(e)))?
            .map(split)
            .transpose()?;
        let (mut copy, mut delete) = (Vec::new(), Vec::new());
        while s.is_some() || d.is_some() {
            let ord = match (&s, &d) {
                (Some(a), Some(b)) => a.0.cmp(&b.0),
                (Some(_), None) => Ordering::Less,
                _ => Ordering::Greater,
            };
            match ord {
                Ordering::Less => {
                    copy.push(s.take().unwrap().0);
                    s = next_src()?;
                }
                Ordering::Greater => {
                    delete.push(d.take().unwrap().0);
                    d = dst_rows
                        .next()
                        .transpose()
                        .map_err(|e| self.dst_msg(self.dst.db.err(e)))?
                        .map(split)
                        .transpose()?;
                }
                Ordering::Equal => {
                    let (a, b) = (s.take().unwrap(), d.take().unwrap());
                    if a.1 != b.1 {
                        copy.push(a.0);
                    }
                    s = next_src()?;
                    d = dst_rows
                        .next()
                        .transpose()
                        .map_err(|e| self.dst_msg(self.dst.db.err(e)))?
                        .map(split)
                        .transpose()?;
                }
            }
            if delete.len() >= ROW_BATCH {
                self.delete(t, &std::mem::take(&mut delete), stats)?;
                keep_going(stats)?;
            }
            if copy.len() >= t.batch() {
                self.copy(t, &std::mem::take(&mut copy), stats)?;
                keep_going(stats)?;
            }
        }
        self.delete(t, &delete, stats)?;
        self.copy(t, &copy, stats)?;
        keep_going(stats)
    }

    fn note_inodes(t: &Table, keys: &[Key], stats: &mut RoundStats) {
        if let Some(pos) = t.key.iter().position(|k| k == "ino")
            && t.name != "dentries"
        {
            stats
                .changed_inodes
                .extend(keys.iter().filter_map(|k| match &k[pos] {
                    KeyPart::Num(n) => Some(*n as u64),
                    KeyPart::Bytes(_) => None,
                }));
        }
    }

    fn key_params(&self, keys: &[Key]) -> Vec<Value> {
        let mut p: Vec<Value> = vec![self.space.into()];
        for k in keys {
            p.extend(k.iter().map(KeyPart::to_value));
        }
        p
    }

    fn delete(&self, t: &Table, keys: &[Key], stats: &mut RoundStats) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        Self::note_inodes(t, keys, stats);
        let sql = format!(
            "DELETE FROM {} WHERE space_id = ?{}",
            t.name,
            t.keys_in(keys.len())
        );
        let params = self.key_params(keys);
        self.write_dst(|tx| tx.exec_drop(&sql, params.clone()))?;
        stats.rows += keys.len() as u64;
        Ok(())
    }

    fn copy(&self, t: &Table, keys: &[Key], stats: &mut RoundStats) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        Self::note_inodes(t, keys, stats);
        let cols = t
            .columns
            .iter()
            .map(|c| format!("`{c}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT {cols} FROM {} WHERE space_id = ?{}",
            t.name,
            t.keys_in(keys.len())
        );
        let rows: Vec<Row> = self
            .src
            .db
            .read(|c| c.exec(&sql, self.key_params(keys)))
            .map_err(|e| self.src_msg(e))?;
        if rows.is_empty() {
            return Ok(()); // gone meanwhile; the next round deletes them here
        }
        let one = format!("({})", vec!["?"; t.columns.len()].join(", "));
        let insert = format!(
            "REPLACE INTO {} ({cols}) VALUES {}",
            t.name,
            vec![one; rows.len()].join(", ")
        );
        let mut params = Vec::with_capacity(rows.len() * t.columns.len());
        let mut bytes = 0u64;
        for r in rows {
            for v in r.unwrap() {
                if let Value::Bytes(b) = &v {
                    bytes += b.len() as u64;
                }
                params.push(v);
            }
        }
        let n = params.len() / t.columns.len();
        self.write_dst(|tx| tx.exec_drop(&insert, params.clone()))?;
        stats.rows += n as u64;
        stats.bytes += bytes;
        Ok(())
    }

    /// A transaction on the receiving node, only while `token` holds the space.
    fn write_dst(
        &self,
        mut f: impl FnMut(&mut Transaction<'_>) -> mysql::Result<()>,
    ) -> Result<()> {
        let lost = std::cell::Cell::new(false);
        let r = self.dst.tx(|tx| {
            let token: Option<Option<u64>> = tx.exec_first(
                "SELECT copy_token FROM space_fence WHERE space_id = ? FOR UPDATE",
                (self.space,),
            )?;
            if token.flatten() != Some(self.token) {
                lost.set(true);
                return Ok(());
            }
            f(tx)
        });
        r.map_err(|e| self.dst_err(e))?;
        if lost.get() {
            bail!(
                "the move of space {} was taken over by another copy-shards process",
                self.space
            );
        }
        Ok(())
    }

    /// Fences the space on the source for `secs` seconds (waits for the
    /// writes in flight); from now on writers wait for the cut-over.
    pub fn fence_source(&self, secs: u32) -> Result<()> {
        let n = self
            .src
            .tx(|tx| {
                tx.exec_drop(
                    "UPDATE space_fence SET fenced_until = UTC_TIMESTAMP(3) + INTERVAL ? SECOND
                     WHERE space_id = ? AND copy_token = ?",
                    (secs, self.space, self.token),
                )?;
                Ok(tx.affected_rows())
            })
            .map_err(|e| self.src_err(e))?;
        self.still_ours(n)
    }

    /// Makes the fence permanent if it has not lapsed (so no write slipped in
    /// since it was set). False: it lapsed, fence and copy again.
    pub fn seal_source(&self) -> Result<bool> {
        let live = self
            .src
            .tx(|tx| {
                let live: Option<Option<u8>> = tx.exec_first(
                    "SELECT fenced_until > UTC_TIMESTAMP(3) + INTERVAL 1 SECOND FROM space_fence
                     WHERE space_id = ? AND copy_token = ? FOR UPDATE",
                    (self.space, self.token),
                )?;
                if live.flatten() == Some(1) {
                    tx.exec_drop(
                        "UPDATE space_fence SET fenced_until = ? WHERE space_id = ?",
                        (SEALED, self.space),
                    )?;
                }
                Ok(live.map(|l| l == Some(1)))
            })
            .map_err(|e| self.src_err(e))?;
        match live {
            None => self.still_ours(0).map(|_| false),
            Some(l) => Ok(l),
        }
    }

    /// Lifts our temporary fence after a failed attempt (best effort: it lapses anyway).
    pub fn unfence_source(&self) {
        let _ = self.src.tx(|tx| {
            tx.exec_drop(
                "UPDATE space_fence SET fenced_until = NULL
                 WHERE space_id = ? AND copy_token = ? AND fenced_until < ?",
                (self.space, self.token, SEALED),
            )
        });
    }

    /// Opens the space on the receiving node to everyone. Done before the
    /// Admin Node names it (nobody routes there yet), so a copier dying
    /// right after the switch leaves nothing fenced.
    pub fn open_destination(&self) -> Result<()> {
        let n = self
            .dst
            .tx(|tx| {
                tx.exec_drop(
                    "UPDATE space_fence SET fenced_until = NULL WHERE space_id = ? AND copy_token = ?",
                    (self.space, self.token),
                )?;
                Ok(tx.affected_rows())
            })
            .map_err(|e| self.dst_err(e))?;
        // affected_rows is 0 also when it was open already: check the token.
        if n == 0 {
            let t: Option<Option<u64>> = self
                .dst
                .db
                .read(|c| {
                    c.exec_first(
                        "SELECT copy_token FROM space_fence WHERE space_id = ?",
                        (self.space,),
                    )
                })
                .map_err(|e| self.dst_msg(e))?;
            return self.still_ours(u64::from(t.flatten() == Some(self.token)));
        }
        Ok(())
    }

    fn still_ours(&self, rows: u64) -> Result<()> {
        if rows == 0 {
            bail!(
                "the move of space {} was taken over by another copy-shards process",
                self.space
            );
        }
        Ok(())
    }
}

impl SpaceCopy<'_> {
    fn src_msg(&self, e: impl std::fmt::Display) -> anyhow::Error {
        anyhow::anyhow!(
            "storage node {} (source of space {}): {e}",
            self.src.id,
            self.space
        )
    }
    fn dst_msg(&self, e: impl std::fmt::Display) -> anyhow::Error {
        anyhow::anyhow!(
            "storage node {} (destination of space {}): {e}",
            self.dst.id,
            self.space
        )
    }
    fn src_err(&self, e: TxError) -> anyhow::Error {
        self.src_msg(e)
    }
    fn dst_err(&self, e: TxError) -> anyhow::Error {
        self.dst_msg(e)
    }
}

/// Opens `space` on `shard` for a move that already switched (a takeover
/// finishing it), unless a later claim holds it.
pub fn open_space(shard: &Shard, space: u32, token: u64) -> Result<()> {
    shard
        .tx(|tx| {
            tx.exec_drop(
                "UPDATE space_fence SET fenced_until = NULL, copy_token = ?
                 WHERE space_id = ? AND IFNULL(copy_token, 0) <= ?",
                (token, space, token),
            )
        })
        .with_context(|| format!("storage node {}: cannot open space {space}", shard.id))
}

/// Drops a moved-away space's rows from its old node (`shard` is a copier
/// connection); its sealed fence row stays, so a writer that still thinks
/// the space is here keeps being refused. Returns the rows deleted.
pub fn purge_moved(shard: &Shard, space: u32) -> Result<u64> {
    shard.purge_rows(space, &[])
}
