//! Files a mount holds open for writing, so that move-to-s3 leaves them
//! alone (`open_writers`, migration 6).
//!
//! A row `(space, ino, holder)` is a lease: the mount (`holder`, its access
//! point) renews it every sweep while it has the file open for writing, and
//! deletes it at the last close. A row not renewed for [`LEASE_SECS`] counts
//! for nothing: its mount crashed, lost the node, or its close could not
//! delete it. Renewal and expiry are both measured on the node's own clock
//! (`UTC_TIMESTAMP`), so clocks of mounts and task hosts do not matter.
//!
//! Short-lived handles never write a row (see `fs::handles`), so creating
//! and closing many small files costs nothing here.
//!
//! copy-shards does not copy these rows: a lease is renewed through the
//! space's route, so the new node has it within one sweep of the cut-over,
//! and a row carried over would be dated by another server's clock. The
//! old node's rows go with the space's other rows or lapse.

use mysql::prelude::Queryable;

use super::Shard;
use super::access::Access;
use super::error::ShardResult;
use crate::db::TxError;

/// A lease not renewed for this long has lapsed (mounts renew theirs every
/// 10 s: it survives two missed renewals).
pub const LEASE_SECS: u32 = 30;

/// The condition, on inode `i`, that no mount holds it open for writing.
pub(super) fn not_open_for_writing() -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM open_writers w WHERE w.space_id = i.space_id AND w.ino = i.ino
           AND w.renewed > UTC_TIMESTAMP(3) - INTERVAL {LEASE_SECS} SECOND)"
    )
}

/// Writes or renews `holder`'s leases on inodes `inos` of `space`.
pub fn renew(s: &impl Access, space: u32, inos: &[u64], holder: u64) -> ShardResult<()> {
    for chunk in inos.chunks(500) {
        let rows = vec!["(?, ?, ?, UTC_TIMESTAMP(3))"; chunk.len()].join(", ");
        let params: Vec<mysql::Value> = chunk
            .iter()
            .flat_map(|&ino| [space.into(), ino.into(), holder.into()])
            .collect();
        s.run("registering files open for writing", |tx| {
            tx.exec_drop(
                format!(
                    "INSERT INTO open_writers (space_id, ino, holder, renewed) VALUES {rows}
                     ON DUPLICATE KEY UPDATE renewed = VALUES(renewed)"
                ),
                params.clone(),
            )?;
            Ok(())
        })?;
    }
    Ok(())
}

/// Drops `holder`'s lease on an inode (its last close).
pub fn release(s: &impl Access, space: u32, ino: u64, holder: u64) -> ShardResult<()> {
    s.run("releasing a file open for writing", |tx| {
        tx.exec_drop(
            "DELETE FROM open_writers WHERE space_id = ? AND ino = ? AND holder = ?",
            (space, ino, holder),
        )?;
        Ok(())
    })
}

/// True if a mount holds a lease on the inode (inside move-to-s3's last
/// transaction).
pub(super) fn is_open_for_writing(
    tx: &mut mysql::Transaction<'_>,
    space: u32,
    ino: u64,
) -> Result<bool, mysql::Error> {
    let row: Option<u8> = tx.exec_first(
        format!(
            "SELECT 1 FROM open_writers WHERE space_id = ? AND ino = ?
               AND renewed > UTC_TIMESTAMP(3) - INTERVAL {LEASE_SECS} SECOND LIMIT 1"
        ),
        (space, ino),
    )?;
    Ok(row.is_some())
}

impl Shard {
    /// Deletes the leases that lapsed (their mounts are gone); returns how many.
    pub fn forget_lapsed_open_writers(&self) -> anyhow::Result<u64> {
        self.tx(|tx| {
            tx.exec_drop(
                format!(
                    "DELETE FROM open_writers WHERE renewed < UTC_TIMESTAMP(3) - INTERVAL {LEASE_SECS} SECOND"
                ),
                (),
            )?;
            Ok(tx.affected_rows())
        })
        .map_err(TxError::into_db)
        .map_err(|e| anyhow::anyhow!("storage node {}: {e}", self.id))
    }
}
