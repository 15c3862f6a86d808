//! Storage Nodes in the Admin Node: creation (only while the cluster is
//! empty, ranges spread evenly), deletion, listing with real totals.

use anyhow::{Context, Result, anyhow, bail};
use mysql::prelude::Queryable;

use super::Cluster;
use crate::config::ConnOptions;
use crate::placement::{Range, even_ranges};
use crate::shard::{self, Shard};

/// A Storage Node's life cycle, as in the reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Owns its range and holds all of its spaces.
    ActiveShard,
    /// New from a split: receives the spaces of its range from copy-shards.
    MirrorShard,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::ActiveShard => "ACTIVE_SHARD",
            Phase::MirrorShard => "MIRROR_SHARD",
        }
    }

    fn parse(s: &str) -> Result<Phase> {
        match s {
            "ACTIVE_SHARD" => Ok(Phase::ActiveShard),
            "MIRROR_SHARD" => Ok(Phase::MirrorShard),
            other => bail!("unknown storage node phase '{other}' in the Admin Node"),
        }
    }
}

/// One row of `storage_nodes`.
#[derive(Clone, Debug)]
pub struct NodeRow {
    pub id: u32,
    pub phase: Phase,
    pub range: Range,
    pub conn: ConnOptions,
    /// For a MIRROR_SHARD node: the node its spaces are copied from.
    pub source: Option<u32>,
}

/// What a Storage Node holds, computed from its rows (see [`Shard::totals`]).
pub use crate::shard::Totals as NodeTotals;

impl Cluster {
    pub fn nodes(&self) -> Result<Vec<NodeRow>> {
        type Row = (u32, String, u64, u64, String, Option<u32>);
        let rows: Vec<Row> = self
            .admin
            .conn()?
            .query("SELECT id, phase, boundary, size, conn_options, source_id FROM storage_nodes ORDER BY boundary, id")
            .map_err(|e| self.admin.err(e))?;
        rows.into_iter()
            .map(|(id, phase, boundary, size, conn, source)| {
                Ok(NodeRow {
                    id,
                    phase: Phase::parse(&phase)?,
                    range: Range { boundary, size },
                    conn: ConnOptions::parse(&conn)
                        .with_context(|| format!("connection options of storage node {id}"))?,
                    source,
                })
            })
            .collect()
    }

    pub fn node(&self, id: u32) -> Result<NodeRow> {
        self.nodes()?
            .into_iter()
            .find(|n| n.id == id)
            .ok_or_else(|| anyhow!("there is no storage node {id} (see tshs list-storage-nodes)"))
    }

    /// Fails unless every Storage Node (but `unasked`) is empty and no space exists.
    fn require_empty_cluster(&self, what: &str, unasked: Option<u32>) -> Result<()> {
        let spaces: u64 = self
            .admin
            .conn()?
            .query_first("SELECT COUNT(*) FROM spaces")
            .map_err(|e| self.admin.err(e))?
            .unwrap_or(0);
        if spaces > 0 {
            bail!(
                "{what} is only allowed while the cluster is empty, but it holds {spaces} space(s) (use split-storage-node)"
            );
        }
        for n in self.nodes()?.into_iter().filter(|n| Some(n.id) != unasked) {
            let t = self.shard(n.id).and_then(|s| s.totals()).with_context(|| {
                format!(
                    "cannot check that storage node {0} is empty (if its database is gone: delete-storage-node {0} --force)",
                    n.id
                )
            })?;
            if t.spaces > 0 {
                bail!(
                    "{what} is only allowed while the cluster is empty, but storage node {} holds data (use split-storage-node)",
                    n.id
                );
            }
        }
        Ok(())
    }

    /// Creates a Storage Node in an existing empty database and spreads the
    /// key space evenly over all nodes. On any failure nothing is left behind.
    pub fn create_storage_node(&self, conn: &ConnOptions) -> Result<u32> {
        self.require_admin_node()?;
        conn.database()?;
        let stored = conn.to_stored();
        let nodes = self.nodes()?;
        refuse_known_database(&nodes, conn)?;
        self.require_empty_cluster("create-storage-node", None)?;
        let db = shard::create_tables(conn)?;
        let created = (|| -> Result<u32> {
            let mut ranges = even_ranges(nodes.len() + 1).into_iter();
            let mut conn = self.admin.conn()?;
            let mut tx = conn
                .start_transaction(Default::default())
                .map_err(|e| self.admin.err(e))?;
            for n in &nodes {
                let r = ranges.next().expect("one range per node");
                tx.exec_drop(
                    "UPDATE storage_nodes SET boundary = ?, size = ? WHERE id = ?",
                    (r.boundary, r.size, n.id),
                )
                .map_err(|e| self.admin.err(e))?;
            }
            let r = ranges.next().expect("a range for the new node");
            tx.exec_drop(
                "INSERT INTO storage_nodes (phase, boundary, size, conn_options) VALUES (?, ?, ?, ?)",
                (Phase::ActiveShard.as_str(), r.boundary, r.size, &stored),
            )
            .map_err(|e| self.admin.err(e))?;
            let id = tx.last_insert_id().unwrap_or(0) as u32;
            tx.query_drop("UPDATE topology SET epoch = epoch + 1 WHERE id = 1")
                .map_err(|e| self.admin.err(e))?;
            tx.commit().map_err(|e| self.admin.err(e))?;
            Ok(id)
        })();
        if created.is_err() {
            let _ = shard::drop_tables(&db);
        }
        created.inspect(|&id| self.identify(id))
    }

    /// Writes a new node's identity (if this fails, its first use does).
    pub(super) fn identify(&self, id: u32) {
        if let Err(e) = self.ensure_identity(id) {
            log::warn!("storage node {id}: identity not written yet: {e:#}");
        }
    }

    /// Deletes a Storage Node while the cluster is empty; its tables are dropped.
    /// `force`: the node's own database is not asked (it may be gone).
    pub fn delete_storage_node(&self, id: u32, force: bool) -> Result<()> {
        self.require_admin_node()?;
        let node = self.node(id)?;
        self.require_empty_cluster("delete-storage-node", force.then_some(id))?;
        let remaining: Vec<NodeRow> = self.nodes()?.into_iter().filter(|n| n.id != id).collect();
        let mut conn = self.admin.conn()?;
        let mut tx = conn
            .start_transaction(Default::default())
            .map_err(|e| self.admin.err(e))?;
        tx.exec_drop("DELETE FROM storage_nodes WHERE id = ?", (id,))
            .map_err(|e| self.admin.err(e))?;
        for (n, r) in remaining.iter().zip(even_ranges(remaining.len())) {
            tx.exec_drop(
                "UPDATE storage_nodes SET boundary = ?, size = ? WHERE id = ?",
                (r.boundary, r.size, n.id),
            )
            .map_err(|e| self.admin.err(e))?;
        }
        tx.query_drop("UPDATE topology SET epoch = epoch + 1 WHERE id = 1")
            .map_err(|e| self.admin.err(e))?;
        tx.commit().map_err(|e| self.admin.err(e))?;
        self.shards.lock().unwrap().remove(&id);
        // The node is gone from the cluster; dropping its (empty) tables is a
        // courtesy, so an unreachable database does not fail the command.
        // Forced, only a database that answers and holds no space loses them.
        if let Ok(s) = Shard::connect(id, &node.conn, 1)
            && (!force || s.totals().is_ok_and(|t| t.spaces == 0))
        {
            let _ = shard::drop_tables(s.db());
        }
        Ok(())
    }

    /// `split-storage-node`: halves the range of ACTIVE_SHARD node `id`; a new
    /// node in the empty database `conn` takes the upper half in
    /// MIRROR_SHARD phase until copy-shards has moved its spaces. Returns
    /// the new node's id.
    pub fn split_storage_node(&self, id: u32, conn: &ConnOptions) -> Result<u32> {
        self.require_admin_node()?;
        conn.database()?;
        let nodes = self.nodes()?;
        let node = nodes.iter().find(|n| n.id == id).ok_or_else(|| {
            anyhow!("there is no storage node {id} (see tshs list-storage-nodes)")
        })?;
        if node.phase != Phase::ActiveShard {
            bail!(
                "storage node {id} is in {} phase: run tshs copy-shards until it is ACTIVE_SHARD, then split it",
                node.phase.as_str()
            );
        }
        if let Some(m) = nodes.iter().find(|n| n.source == Some(id)) {
            bail!(
                "storage node {id} is still being split (node {} is {}): run tshs copy-shards first",
                m.id,
                m.phase.as_str()
            );
        }
        if node.range.size < 2 {
            bail!("storage node {id} owns a single key and cannot be split");
        }
        refuse_known_database(&nodes, conn)?;
        let db = shard::create_tables(conn)?;
        let lower = node.range.size / 2;
        let created = (|| -> Result<u32> {
            let mut c = self.admin.conn()?;
            let mut tx = c
                .start_transaction(Default::default())
                .map_err(|e| self.admin.err(e))?;
            // Only if nobody changed the node meanwhile (two splits at once).
            tx.exec_drop(
                "UPDATE storage_nodes SET size = ? WHERE id = ? AND size = ? AND phase = ?",
                (lower, id, node.range.size, Phase::ActiveShard.as_str()),
            )
            .map_err(|e| self.admin.err(e))?;
            if tx.affected_rows() != 1 {
                bail!("storage node {id} changed while it was being split; try again");
            }
            tx.exec_drop(
                "INSERT INTO storage_nodes (phase, boundary, size, conn_options, source_id) VALUES (?, ?, ?, ?, ?)",
                (
                    Phase::MirrorShard.as_str(),
                    node.range.boundary + lower,
                    node.range.size - lower,
                    conn.to_stored(),
                    id,
                ),
            )
            .map_err(|e| self.admin.err(e))?;
            let new_id = tx.last_insert_id().unwrap_or(0) as u32;
            tx.query_drop("UPDATE topology SET epoch = epoch + 1 WHERE id = 1")
                .map_err(|e| self.admin.err(e))?;
            tx.commit().map_err(|e| self.admin.err(e))?;
            Ok(new_id)
        })();
        if created.is_err() {
            let _ = shard::drop_tables(&db);
        }
        created.inspect(|&id| self.identify(id))
    }

    /// Each node with its totals; a node that cannot be reached gets the error text.
    pub fn nodes_with_totals(&self) -> Result<Vec<(NodeRow, Result<NodeTotals>)>> {
        Ok(self
            .nodes()?
            .into_iter()
            .map(|n| {
                let t = self.shard(n.id).and_then(|s| s.totals());
                (n, t)
            })
            .collect())
    }

    /// The ranges of all nodes, for placement of new spaces.
    pub fn ranges(&self) -> Result<Vec<(u32, Range)>> {
        Ok(self.nodes()?.into_iter().map(|n| (n.id, n.range)).collect())
    }
}

/// Fails if `conn` names the database of an existing node.
fn refuse_known_database(nodes: &[NodeRow], conn: &ConnOptions) -> Result<()> {
    if let Some(n) = nodes.iter().find(|n| same_database(&n.conn, conn)) {
        bail!(
            "database '{}' on {} is already storage node {}",
            conn.database()?,
            conn.server(),
            n.id
        );
    }
    Ok(())
}

fn same_database(a: &ConnOptions, b: &ConnOptions) -> bool {
    a.server() == b.server() && a.database == b.database
}
