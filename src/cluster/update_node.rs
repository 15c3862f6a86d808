//! Node identities and `update-storage-node`: a node's database moved to
//! other servers, or its Galera cluster's member list changed, while the
//! cluster runs.
//!
//! Each Storage Node database holds an identity row (node id and a random
//! token, see `shard/identity.rs`); the Admin Node records the token too
//! (`storage_nodes.identity`). New options must reach a database holding
//! that identity, and caught up:
//! - Galera members must be synced members of the cluster the node's
//!   current members belong to (`wsrep_cluster_state_uuid`);
//! - another server (a replica) must show a mark written on the old
//!   server after the node's spaces were fenced: it has every write;
//! - if the old servers cannot be reached, the identity alone is checked
//!   (what was not copied is the administrator's to know).
//!
//! The switch: every open space of the node is fenced on the old servers
//! (writers wait, as behind a move's fence), the mark is seen on the new
//! ones, the options change with a topology epoch bump, every live access
//! point acknowledges (none uses the old options any more), and the fences
//! are lifted through the new options. For a different database (not the
//! same Galera cluster) the old server's fences are sealed first, so a
//! process that missed the switch can never write there.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use mysql::prelude::Queryable;

use super::{Cluster, NodeRow, Phase};
use crate::config::ConnOptions;
use crate::db::Db;
use crate::shard::{Identity, Shard, cluster_uuid, new_token, read_identity};

/// How long the old servers stay fenced if this command dies mid-switch:
/// writers wait at most this long.
const FENCE_SECS: u32 = 30;
/// How long a new server may take to show a mark written on the old one.
const CATCH_UP: Duration = Duration::from_secs(10);
/// How long to wait for the access points' acknowledgements.
const ACK_WAIT: Duration = Duration::from_secs(20);

/// What `update-storage-node` did.
#[derive(Debug, Default)]
pub struct NodeUpdate {
    /// Spaces fenced for the switch (none when the old servers were gone).
    pub fenced: usize,
    /// How long writes to the node were held (fence to lift).
    pub paused: Duration,
    /// Live access points that did not acknowledge in time (`None`: they
    /// could not be counted).
    pub unacknowledged: Option<u64>,
    /// The old servers could not be reached: nothing was fenced.
    pub old_gone: bool,
    /// The options were unchanged: `fenced` counts the fences a switch
    /// that died half-way had left, lifted now.
    pub repaired: bool,
}

impl Cluster {
    /// The token the Admin Node records for node `id`.
    fn recorded_identity(&self, id: u32) -> Result<Option<String>> {
        let t: Option<Option<String>> = self
            .admin
            .conn()?
            .exec_first("SELECT identity FROM storage_nodes WHERE id = ?", (id,))
            .map_err(|e| self.admin.err(e))?;
        Ok(t.flatten())
    }

    fn record_identity(&self, id: u32, token: &str) -> Result<()> {
        self.admin
            .conn()?
            .exec_drop(
                "UPDATE storage_nodes SET identity = ? WHERE id = ? AND identity IS NULL",
                (token, id),
            )
            .map_err(|e| self.admin.err(e))?;
        Ok(())
    }

    /// Node `id`'s identity token, written where it is missing: in the
    /// node's database (a node made before identities, or a database
    /// rebuilt by restore-from-s3) and in the Admin Node.
    pub fn ensure_identity(&self, id: u32) -> Result<String> {
        let shard = self.shard(id)?;
        self.ensure_identity_on(&shard)
    }

    fn ensure_identity_on(&self, shard: &Shard) -> Result<String> {
        let id = shard.id();
        let recorded = self.recorded_identity(id)?;
        let held = match read_identity(shard.db())? {
            Some(i) => i,
            None => shard
                .write_identity(recorded.as_deref().unwrap_or(&new_token()))
                .with_context(|| format!("storage node {id}: cannot write its identity"))?,
        };
        if held.node != id {
            bail!(
                "database '{}' on {} holds storage node {}, not storage node {id}",
                shard.db().opts().database.as_deref().unwrap_or(""),
                shard.db().opts().server(),
                held.node
            );
        }
        match recorded {
            None => self.record_identity(id, &held.token)?,
            Some(t) if t != held.token => bail!(
                "database '{}' on {} holds another copy of storage node {id} than the one the Admin Node recorded",
                shard.db().opts().database.as_deref().unwrap_or(""),
                shard.db().opts().server()
            ),
            Some(_) => {}
        }
        Ok(held.token)
    }

    /// `update-storage-node <id> <options>`: points node `id` at other
    /// servers holding its database (see the module header), online. On
    /// refusal nothing changed (fences set are lifted again).
    pub fn update_storage_node(&self, id: u32, new: &ConnOptions) -> Result<NodeUpdate> {
        self.require_admin_node()?;
        new.database()?;
        let node = self.node(id)?;
        self.refuse_moving(&node)?;
        if *new == node.conn {
            return self.lift_left_fences(id);
        }
        crate::db::check_members(new).context("the new connection options")?;
        // The old servers, if any answers: the node's identity from there.
        let old = Shard::connect(id, &node.conn, 2).ok();
        let token = match &old {
            Some(s) => self.ensure_identity_on(s)?,
            None => self.recorded_identity(id)?.ok_or_else(|| {
                anyhow!(
                    "storage node {id}'s servers ({}) cannot be reached and its identity was never recorded: cannot check that the new servers hold it",
                    node.conn.server()
                )
            })?,
        };
        let target = Db::connect(new, 2).context("the new connection options")?;
        let held = read_identity(&target)?.ok_or_else(|| {
            anyhow!(
                "database '{}' on {} holds no storage node (copy storage node {id}'s database there first)",
                new.database.as_deref().unwrap_or(""),
                new.server()
            )
        })?;
        if held.node != id {
            bail!(
                "database '{}' on {} holds storage node {}, not storage node {id}",
                new.database.as_deref().unwrap_or(""),
                new.server(),
                held.node
            );
        }
        if held.token != token {
            bail!(
                "database '{}' on {} holds another copy of storage node {id} (its identity differs)",
                new.database.as_deref().unwrap_or(""),
                new.server()
            );
        }
        let Some(old) = old else {
            self.switch_options(&node, new)?;
            let unacknowledged = self.wait_acks().ok();
            return Ok(NodeUpdate {
                unacknowledged,
                old_gone: true,
                ..NodeUpdate::default()
            });
        };
        let old_uuid = cluster_uuid(old.db())?;
        let new_uuid = cluster_uuid(&target)?;
        if new.members().len() > 1 && old_uuid != new_uuid {
            bail!(
                "the new members ({}) belong to another Galera cluster than storage node {id}'s members ({})",
                new.server(),
                node.conn.server()
            );
        }
        let same_db = new.database == node.conn.database
            && ((!old_uuid.is_empty() && old_uuid == new_uuid)
                || new
                    .members()
                    .iter()
                    .any(|m| node.conn.members().iter().any(|o| o.server() == m.server())));
        if !same_db {
            // Before anything is fenced: is it a replica that keeps up?
            mark_seen(&old, &target, id, new)?;
        }

        let t = Instant::now();
        let fenced = old
            .fence_all(FENCE_SECS)
            .with_context(|| format!("storage node {id}: cannot fence its spaces"))?;
        let unfence = |e: anyhow::Error| -> anyhow::Error {
            if let Err(u) = old.lift_fences(&fenced) {
                log::warn!("storage node {id}: fences left to lapse ({FENCE_SECS} s): {u}");
            }
            e
        };
        mark_seen(&old, &target, id, new).map_err(unfence)?;
        if !same_db {
            // Sealed on the old server for good; the seals reach the
            // replica before the fences are lifted there.
            old.seal_fences(&fenced).map_err(|e| unfence(e.into()))?;
            mark_seen(&old, &target, id, new).map_err(unfence)?;
        }
        self.switch_options(&node, new).map_err(unfence)?;
        let unacknowledged = self
            .wait_acks()
            .inspect_err(|e| log::warn!("cannot count the acknowledgements: {e:#}"))
            .ok();
        // Also the node's spaces a run that died after sealing left sealed.
        let mut lift = fenced.clone();
        lift.extend(self.spaces_on(id)?);
        lift.sort_unstable();
        lift.dedup();
        let lifted = Shard::connect(id, new, 2)
            .and_then(|s| Ok(s.lift_fences(&lift)?))
            .with_context(|| {
                format!(
                    "storage node {id}: switched, but its fences could not be lifted (run the command again with the same options)"
                )
            });
        let paused = t.elapsed();
        lifted?;
        Ok(NodeUpdate {
            fenced: fenced.len(),
            paused,
            unacknowledged,
            ..NodeUpdate::default()
        })
    }

    /// The same options again: lifts the fences a switch that died
    /// half-way left on the node's spaces (no move holds any: refused
    /// before), or says there is nothing to do.
    fn lift_left_fences(&self, id: u32) -> Result<NodeUpdate> {
        let shard = self.shard(id)?;
        let left = shard.fenced_among(&self.spaces_on(id)?)?;
        if left.is_empty() {
            bail!("storage node {id} already has these connection options");
        }
        shard.lift_fences(&left)?;
        Ok(NodeUpdate {
            fenced: left.len(),
            repaired: true,
            ..NodeUpdate::default()
        })
    }

    /// Refuses a node copy-shards is working on: its moves hold their own
    /// connections to the node's old servers.
    fn refuse_moving(&self, node: &NodeRow) -> Result<()> {
        let id = node.id;
        let busy =
            node.phase == Phase::MirrorShard || self.nodes()?.iter().any(|n| n.source == Some(id));
        let moves: Option<u64> = self
            .admin
            .conn()?
            .exec_first(
                "SELECT COUNT(*) FROM space_moves WHERE from_node = ? OR to_node = ?",
                (id, id),
            )
            .map_err(|e| self.admin.err(e))?;
        if busy || moves.unwrap_or(0) > 0 {
            bail!(
                "storage node {id} is being split or has spaces being moved: run tshs copy-shards until it is done first"
            );
        }
        Ok(())
    }

    /// Names the new options for the node and bumps the topology epoch,
    /// unless the node's options changed meanwhile.
    fn switch_options(&self, node: &NodeRow, new: &ConnOptions) -> Result<()> {
        let changed = self
            .admin
            .tx(|tx| {
                // A copy-shards move claimed since the command began would
                // work with the old options (its claim locks these rows).
                let moves: Option<u64> = tx.exec_first(
                    "SELECT COUNT(*) FROM space_moves WHERE from_node = ? OR to_node = ? FOR UPDATE",
                    (node.id, node.id),
                )?;
                if moves.unwrap_or(0) > 0 {
                    return Ok(false);
                }
                tx.exec_drop(
                    "UPDATE storage_nodes SET conn_options = ? WHERE id = ? AND conn_options = ?",
                    (new.to_stored(), node.id, node.conn.to_stored()),
                )?;
                if tx.affected_rows() != 1 {
                    return Ok(false);
                }
                tx.query_drop("UPDATE topology SET epoch = epoch + 1 WHERE id = 1")?;
                Ok(true)
            })
            .map_err(|e| anyhow!("admin node: {e}"))?;
        if !changed {
            bail!(
                "storage node {} changed meanwhile (its options, or copy-shards began a move); try again",
                node.id
            );
        }
        self.shards.lock().unwrap().remove(&node.id);
        Ok(())
    }

    /// Waits until every live access point acknowledged the current epoch;
    /// how many did not within [`ACK_WAIT`].
    fn wait_acks(&self) -> Result<u64> {
        let epoch = self.epoch()?;
        let start = Instant::now();
        loop {
            let n = self.unacknowledged(epoch)?;
            if n == 0 || start.elapsed() > ACK_WAIT {
                return Ok(n);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Writes a new mark on the old server and waits until the new one shows
/// it: it has every write the old one had before.
fn mark_seen(old: &Shard, target: &Db, id: u32, new: &ConnOptions) -> Result<()> {
    let mark = new_token();
    old.set_switch_mark(&mark)?;
    let t = Instant::now();
    loop {
        if let Some(Identity { mark: Some(m), .. }) = read_identity(target)?
            && m == mark
        {
            return Ok(());
        }
        if t.elapsed() > CATCH_UP {
            bail!(
                "database '{}' on {} did not catch up with storage node {id}'s database within {} s: it must be a synced member of the node's Galera cluster or a replica of its server",
                new.database.as_deref().unwrap_or(""),
                new.server(),
                CATCH_UP.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
