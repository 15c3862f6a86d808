//! Snapshots: named, read-only points in time of spaces, with a life.
//!
//! The Admin Node keeps the names (`snapshots`) and each space's moment
//! (`snapshot_spaces`); the moments themselves and the rows they see live on
//! the spaces' Storage Nodes (see `shard::snapshot`), and move with a space.
//!
//! A snapshot is created in three steps, each one safe to stop after: its
//! rows are recorded (`creating`), each space's moment is taken on its node
//! and recorded, then it is `ready`. One that stops halfway is removed by
//! [`Cluster::drop_snapshot`] (remove-deleted does so once it expired),
//! which lets every moment taken go.

use anyhow::{Context, Result, bail};
use mysql::prelude::Queryable;

use super::{Cluster, Router};
use crate::shard::snapshot;

/// The longest a snapshot may live: what it keeps grows with the writes
/// made meanwhile.
pub const MAX_TTL_SECS: u64 = 30 * 24 * 3600;

/// A snapshot as the Admin Node records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotRow {
    pub id: u64,
    pub name: String,
    /// `creating` or `ready`.
    pub state: String,
    /// Unix seconds.
    pub created: i64,
    pub expires: i64,
    /// Past its life (by the Admin Node's clock).
    pub expired: bool,
    /// Seconds since it was created (by the Admin Node's clock).
    pub age_secs: i64,
    pub spaces: Vec<SnapSpace>,
}

/// One space of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapSpace {
    pub space: u32,
    pub volume: u32,
    /// Its moment on its Storage Node, once taken.
    pub moment: Option<u64>,
    /// When it was taken (Unix milliseconds).
    pub taken_ms: Option<i64>,
}

impl SnapshotRow {
    pub fn ready(&self) -> bool {
        self.state == "ready"
    }
}

/// Checks a snapshot's name: what a path component and a table cell can hold.
pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 64 {
        bail!("a snapshot name has 1 to 64 characters: {name:?}");
    }
    if name.starts_with('.') || name.starts_with('-') {
        bail!("a snapshot name cannot start with '.' or '-': {name:?}");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-:+@".contains(&b))
    {
        bail!(
            "a snapshot name may hold letters, digits and . _ - : + @ only (it is a directory's name): {name:?}"
        );
    }
    Ok(())
}

impl Cluster {
    /// Every snapshot with its spaces, oldest first.
    pub fn snapshots(&self) -> Result<Vec<SnapshotRow>> {
        let mut conn = self.admin.conn()?;
        type Row = (u64, String, String, i64, i64, bool, i64);
        let rows: Vec<Row> = conn
            .query(
                "SELECT id, name, state, CAST(UNIX_TIMESTAMP(created_at) AS SIGNED),
                        CAST(UNIX_TIMESTAMP(expires_at) AS SIGNED), expires_at <= NOW(),
                        TIMESTAMPDIFF(SECOND, created_at, NOW())
                 FROM snapshots ORDER BY id",
            )
            .map_err(|e| self.admin.err(e))?;
        type SpaceRow = (u64, u32, u32, Option<u64>, Option<i64>);
        let spaces: Vec<SpaceRow> = conn
            .query(
                "SELECT snapshot_id, space_id, volume_id, moment,
                        CAST(UNIX_TIMESTAMP(taken_at) * 1000 AS SIGNED)
                 FROM snapshot_spaces ORDER BY snapshot_id, space_id",
            )
            .map_err(|e| self.admin.err(e))?;
        Ok(rows
            .into_iter()
            .map(
                |(id, name, state, created, expires, expired, age_secs)| SnapshotRow {
                    id,
                    name,
                    state,
                    created,
                    expires,
                    expired,
                    age_secs,
                    spaces: spaces
                        .iter()
                        .filter(|s| s.0 == id)
                        .map(|s| SnapSpace {
                            space: s.1,
                            volume: s.2,
                            moment: s.3,
                            taken_ms: s.4,
                        })
                        .collect(),
                },
            )
            .collect())
    }

    /// Creates snapshot `name` of `spaces` ((space, volume) pairs), living
    /// `ttl_secs`: every space's moment is taken on its Storage Node, one
    /// after the other. On failure what was made is removed again.
    pub fn create_snapshot(
        &self,
        name: &str,
        spaces: &[(u32, u32)],
        ttl_secs: u64,
    ) -> Result<SnapshotRow> {
        check_name(name)?;
        if ttl_secs == 0 || ttl_secs > MAX_TTL_SECS {
            bail!(
                "a snapshot lives from 1 second to {} days",
                MAX_TTL_SECS / 86400
            );
        }
        if spaces.is_empty() {
            bail!("nothing to snapshot: no spaces");
        }
        let id = self
            .admin
            .tx(|tx| {
                tx.exec_drop(
                    "INSERT INTO snapshots (name, state, created_at, expires_at)
                     VALUES (?, 'creating', NOW(), NOW() + INTERVAL ? SECOND)",
                    (name, ttl_secs),
                )?;
                let id = tx.last_insert_id().unwrap_or(0);
                for (space, volume) in spaces {
                    tx.exec_drop(
                        "INSERT INTO snapshot_spaces (snapshot_id, space_id, volume_id) VALUES (?, ?, ?)",
                        (id, space, volume),
                    )?;
                }
                Ok(id)
            })
            .map_err(|e| {
                if matches!(&e, crate::db::TxError::Sql(1062, ..)) {
                    anyhow::anyhow!("a snapshot named {name:?} exists already")
                } else {
                    e.into_db().into()
                }
            })?;
        if let Err(e) = self.take_moments(id, spaces) {
            if let Err(undo) = self.drop_snapshot(id) {
                log::warn!("snapshot {name}: could not remove what was made: {undo:#}");
            }
            return Err(e.context(format!("snapshot {name} not created")));
        }
        self.admin
            .tx(|tx| tx.exec_drop("UPDATE snapshots SET state = 'ready' WHERE id = ?", (id,)))
            .map_err(|e| e.into_db())?;
        self.snapshots()?
            .into_iter()
            .find(|s| s.id == id)
            .context("the snapshot vanished as it was made")
    }

    fn take_moments(&self, id: u64, spaces: &[(u32, u32)]) -> Result<()> {
        let router = Router::new(self.clone());
        for (space, _) in spaces {
            let row = self
                .space(*space)?
                .with_context(|| format!("space {space} does not exist"))?;
            if row.import_from.is_some() {
                bail!("space {space} is still being imported from disk: use it once first");
            }
            let moment = snapshot::take(&router.route(*space), *space, id)
                .with_context(|| format!("space {space}"))?;
            self.admin
                .tx(|tx| {
                    tx.exec_drop(
                        "UPDATE snapshot_spaces SET moment = ?, taken_at = NOW(3)
                         WHERE snapshot_id = ? AND space_id = ?",
                        (moment, id, space),
                    )
                })
                .map_err(|e| e.into_db())?;
        }
        Ok(())
    }

    /// Removes snapshot `id`: each space lets its moment go (the rows kept
    /// only for it are freed), then the Admin Node forgets it. Safe to run
    /// again after a failure. Returns the kept rows freed.
    pub fn drop_snapshot(&self, id: u64) -> Result<u64> {
        let spaces: Vec<u32> = self
            .admin
            .read(|c| {
                c.exec(
                    "SELECT space_id FROM snapshot_spaces WHERE snapshot_id = ?",
                    (id,),
                )
            })
            .map_err(anyhow::Error::from)?;
        let router = Router::new(self.clone());
        let mut freed = 0;
        for space in spaces {
            match self.space(space)? {
                // A space deleted since: its rows went with it.
                None => {}
                Some(_) => {
                    freed += snapshot::release(&router.route(space), space, id)
                        .with_context(|| format!("space {space}"))?
                }
            }
            self.admin
                .tx(|tx| {
                    tx.exec_drop(
                        "DELETE FROM snapshot_spaces WHERE snapshot_id = ? AND space_id = ?",
                        (id, space),
                    )
                })
                .map_err(|e| e.into_db())?;
        }
        self.admin
            .tx(|tx| tx.exec_drop("DELETE FROM snapshots WHERE id = ?", (id,)))
            .map_err(|e| e.into_db())?;
        Ok(freed)
    }

    /// Moments Storage Nodes hold for snapshots the Admin Node does not know
    /// (a creation that stopped before it recorded them): let go. Returns
    /// how many.
    pub fn release_unknown_moments(&self) -> Result<u64> {
        // The nodes first: a moment is taken only after its snapshot's row
        // was recorded, so one taken meanwhile is known to the list below.
        let mut held = Vec::new();
        for node in self.nodes()? {
            // A node that does not answer keeps its moments for a later run.
            match self.shard(node.id).and_then(|s| Ok(snapshot::moments(&s)?)) {
                Ok(m) => held.extend(m),
                Err(e) => log::warn!("storage node {}: snapshot moments not read: {e:#}", node.id),
            }
        }
        let known: std::collections::HashSet<(u64, u32)> = self
            .snapshots()?
            .iter()
            .flat_map(|s| s.spaces.iter().map(move |p| (s.id, p.space)))
            .collect();
        let router = Router::new(self.clone());
        let mut n = 0;
        for (space, snap, _) in held {
            if !known.contains(&(snap, space)) {
                snapshot::release(&router.route(space), space, snap)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Rows kept for snapshots and the bytes of file data among them, over
    /// the nodes that answer.
    pub fn kept_for_snapshots(&self) -> Result<(u64, u64)> {
        let mut total = (0, 0);
        for node in self.nodes()? {
            let (rows, bytes) = snapshot::kept(&self.shard(node.id)?)?;
            total = (total.0 + rows, total.1 + bytes);
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_path_components() {
        for ok in ["nightly", "2026-12-05T03:00", "a.b_c+d@e", "x"] {
            check_name(ok).unwrap();
        }
        for bad in [
            "",
            "a/b",
            ".hidden",
            "-x",
            "with space",
            "é",
            &"n".repeat(65),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
