//! copy-shards' moves in the Admin Node: which spaces a MIRROR_SHARD node
//! still has to receive, and the `space_moves` row a move is claimed
//! (under a lease and a token), switched and ended with. The protocol is
//! described in `tasks/copy_shards.rs`.

use anyhow::{Result, anyhow};
use mysql::prelude::Queryable;

use super::{Cluster, Phase};

/// How long a claim keeps other copy-shards processes off a move; its
/// holder renews it while it works, a lapsed one is taken over.
pub const MOVE_LEASE_SECS: u64 = 30;

/// A move of a space this process holds (its claim's token).
#[derive(Clone, Debug)]
pub struct SpaceMove {
    pub space: u32,
    pub from: u32,
    pub to: u32,
    pub token: u64,
    /// The space is on `to` already; only the old rows are left to drop.
    pub switched: bool,
}

impl Cluster {
    /// The spaces on `node` that copy-shards moves: all but the deleted
    /// ones (remove-deleted purges those where they are), unless their move
    /// had begun.
    pub fn movable_spaces(&self, node: u32) -> Result<Vec<u32>> {
        self.admin
            .conn()?
            .exec(
                "SELECT id FROM spaces WHERE node_id = ? AND (status <> 'deleted'
                     OR id IN (SELECT space_id FROM space_moves WHERE state <> 'purging'))",
                (node,),
            )
            .map_err(|e| self.admin.err(e).into())
    }

    /// The spaces switched to `node` whose old rows are still to be dropped.
    pub fn switched_moves(&self, node: u32) -> Result<Vec<u32>> {
        self.admin
            .conn()?
            .exec(
                "SELECT space_id FROM space_moves WHERE to_node = ? AND state = 'switched'",
                (node,),
            )
            .map_err(|e| self.admin.err(e).into())
    }

    /// The spaces on `node`, whatever their status.
    pub fn spaces_on(&self, node: u32) -> Result<Vec<u32>> {
        self.admin
            .conn()?
            .exec("SELECT id FROM spaces WHERE node_id = ?", (node,))
            .map_err(|e| self.admin.err(e).into())
    }

    /// (space, node) of the spaces on either node.
    pub fn spaces_on_either(&self, a: u32, b: u32) -> Result<Vec<(u32, u32)>> {
        self.admin
            .conn()?
            .exec(
                "SELECT id, node_id FROM spaces WHERE node_id IN (?, ?)",
                (a, b),
            )
            .map_err(|e| self.admin.err(e).into())
    }

    /// How many moves to `node` are unfinished.
    pub fn moves_to(&self, node: u32) -> Result<u64> {
        let n: Option<u64> = self
            .admin
            .conn()?
            .exec_first(
                "SELECT COUNT(*) FROM space_moves WHERE to_node = ?",
                (node,),
            )
            .map_err(|e| self.admin.err(e))?;
        Ok(n.unwrap_or(0))
    }

    /// Turns a MIRROR_SHARD node ACTIVE_SHARD and bumps the topology epoch.
    /// False if the node was no longer MIRROR_SHARD.
    pub fn activate_mirror(&self, node: u32) -> Result<bool> {
        self.admin
            .tx(|tx| {
                tx.exec_drop(
                    "UPDATE storage_nodes SET phase = ?, source_id = NULL WHERE id = ? AND phase = ?",
                    (
                        Phase::ActiveShard.as_str(),
                        node,
                        Phase::MirrorShard.as_str(),
                    ),
                )?;
                let changed = tx.affected_rows() == 1;
                tx.query_drop("UPDATE topology SET epoch = epoch + 1 WHERE id = 1")?;
                Ok(changed)
            })
            .map_err(|e| anyhow!("admin node: {e}"))
    }

    /// Claims the move of `space` from `from` to `to` for `owner`: a new one, or one whose holder's lease lapsed (then
    /// its own nodes and state). `None` if someone holds it, remove-deleted
    /// does, or the space left `from` meanwhile. Locks the space's row
    /// before its move's row, like [`Cluster::switch_move`], so the two
    /// never deadlock.
    pub fn claim_move(
        &self,
        space: u32,
        from: u32,
        to: u32,
        owner: &str,
    ) -> Result<Option<SpaceMove>> {
        self.admin
            .tx(|tx| {
                let node: Option<u32> =
                    tx.exec_first("SELECT node_id FROM spaces WHERE id = ? FOR UPDATE", (space,))?;
                let existing: Option<(String, u8, u32, u32)> = tx.exec_first(
                    "SELECT state, lease_until < UTC_TIMESTAMP(), from_node, to_node FROM space_moves WHERE space_id = ? FOR UPDATE",
                    (space,),
                )?;
                // The token last: rows locked in the same order as `switch_move`.
                tx.query_drop(
                    "UPDATE topology SET move_token = LAST_INSERT_ID(move_token + 1) WHERE id = 1",
                )?;
                let token = tx.last_insert_id().unwrap_or(0);
                Ok(match existing {
                    Some((_, 0, _, _)) => None, // someone holds it
                    // remove-deleted's claim: it takes lapsed ones back itself.
                    Some((state, _, _, _)) if state == "purging" => None,
                    Some((state, _, from, to)) => {
                        tx.exec_drop(
                            "UPDATE space_moves SET token = ?, owner = ?, lease_until = UTC_TIMESTAMP() + INTERVAL ? SECOND
                             WHERE space_id = ?",
                            (token, owner, MOVE_LEASE_SECS, space),
                        )?;
                        log::info!("space {space}: taking over its move ({state})");
                        Some(SpaceMove {
                            space,
                            from,
                            to,
                            token,
                            switched: state == "switched",
                        })
                    }
                    None if node == Some(from) => {
                        tx.exec_drop(
                            "INSERT INTO space_moves (space_id, from_node, to_node, state, token, owner, lease_until)
                             VALUES (?, ?, ?, 'copying', ?, ?, UTC_TIMESTAMP() + INTERVAL ? SECOND)",
                            (space, from, to, token, owner, MOVE_LEASE_SECS),
                        )?;
                        Some(SpaceMove {
                            space,
                            from,
                            to,
                            token,
                            switched: false,
                        })
                    }
                    None => None, // moved meanwhile
                })
            })
            .map_err(|e| anyhow!("admin node: {e}"))
    }

    /// Gives a claim up (its lease lapses now), so another run can take it
    /// at once.
    pub fn release_move(&self, m: &SpaceMove) -> Result<()> {
        self.admin
            .conn()?
            .exec_drop(
                "UPDATE space_moves SET lease_until = UTC_TIMESTAMP() - INTERVAL 1 SECOND WHERE space_id = ? AND token = ?",
                (m.space, m.token),
            )
            .map_err(|e| self.admin.err(e).into())
    }

    /// Renews a claim's lease and records the bytes copied. False if the
    /// move was taken over.
    pub fn renew_move(&self, m: &SpaceMove, bytes: u64) -> Result<bool> {
        let mut c = self.admin.conn()?;
        c.exec_drop(
            "UPDATE space_moves SET lease_until = UTC_TIMESTAMP() + INTERVAL ? SECOND, bytes = ?
             WHERE space_id = ? AND token = ?",
            (MOVE_LEASE_SECS, bytes, m.space, m.token),
        )
        .map_err(|e| self.admin.err(e))?;
        if c.affected_rows() == 0 {
            // affected_rows is 0 also when nothing changed within the second.
            let held: Option<u64> = c
                .exec_first(
                    "SELECT token FROM space_moves WHERE space_id = ?",
                    (m.space,),
                )
                .map_err(|e| self.admin.err(e))?;
            return Ok(held == Some(m.token));
        }
        Ok(true)
    }

    /// Names the new node for the space, marks the move switched (its
    /// lease renewed) and bumps the epoch, in one transaction. False if the
    /// move is no longer ours.
    pub fn switch_move(&self, m: &SpaceMove) -> Result<bool> {
        self.admin
            .tx(|tx| {
                let node: Option<u32> = tx.exec_first(
                    "SELECT node_id FROM spaces WHERE id = ? FOR UPDATE",
                    (m.space,),
                )?;
                let token: Option<u64> = tx.exec_first(
                    "SELECT token FROM space_moves WHERE space_id = ? FOR UPDATE",
                    (m.space,),
                )?;
                if token != Some(m.token) || node != Some(m.from) {
                    return Ok(false);
                }
                tx.exec_drop(
                    "UPDATE spaces SET node_id = ? WHERE id = ?",
                    (m.to, m.space),
                )?;
                tx.exec_drop(
                    "UPDATE space_moves SET state = 'switched', lease_until = UTC_TIMESTAMP() + INTERVAL ? SECOND WHERE space_id = ?",
                    (MOVE_LEASE_SECS, m.space),
                )?;
                tx.query_drop("UPDATE topology SET epoch = epoch + 1 WHERE id = 1")?;
                Ok(true)
            })
            .map_err(|e| anyhow!("admin node: {e}"))
    }

    /// Ends a move whose old rows are dropped.
    pub fn end_move(&self, m: &SpaceMove) -> Result<()> {
        self.admin
            .conn()?
            .exec_drop(
                "DELETE FROM space_moves WHERE space_id = ? AND token = ?",
                (m.space, m.token),
            )
            .map_err(|e| self.admin.err(e).into())
    }
}
