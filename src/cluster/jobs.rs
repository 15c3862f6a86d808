//! Jobs: long-running cluster work recorded in the Admin Node (`DELETE` of a
//! removed space, `IMPORT` of an on-disk volume), shown by `list-jobs`.

use anyhow::{Result, anyhow};
use mysql::prelude::Queryable;

use super::Cluster;

/// One row of `list-jobs`.
#[derive(Clone, Debug)]
pub struct JobRow {
    pub id: u64,
    pub job: String,
    pub parameters: String,
}

/// A `DELETE` job: a space removed with `rmdir`, for remove-deleted.
#[derive(Clone, Debug)]
pub struct DeleteJob {
    pub id: u64,
    pub parameters: String,
    /// Seconds since the job was recorded.
    pub age_secs: u64,
}

/// What claiming a deleted space for its purge found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PurgeClaim {
    /// The space's row is gone already: only its job is left.
    Gone,
    /// Reactivated, or being moved or purged by another process.
    Busy,
    /// Claimed (state `purging` in `space_moves`); its rows are on this node.
    Claimed(u32),
}

/// How long a purge claim keeps others off; a claim older than this was
/// left by a process that is gone and is taken over.
const PURGE_LEASE_SECS: u64 = 60;

impl Cluster {
    pub fn jobs(&self) -> Result<Vec<JobRow>> {
        let rows: Vec<(u64, String, String)> = self
            .admin
            .conn()?
            .query("SELECT id, job, parameters FROM jobs ORDER BY id")
            .map_err(|e| self.admin.err(e))?;
        Ok(rows
            .into_iter()
            .map(|(id, job, parameters)| JobRow {
                id,
                job,
                parameters,
            })
            .collect())
    }

    /// Records a job inside the caller's transaction, so the job exists exactly
    /// when the change that needs it does.
    pub(super) fn add_job(
        &self,
        tx: &mut mysql::Transaction<'_>,
        job: &str,
        parameters: &str,
    ) -> Result<u64> {
        tx.exec_drop(
            "INSERT INTO jobs (job, parameters) VALUES (?, ?)",
            (job, parameters),
        )
        .map_err(|e| self.admin.err(e))?;
        Ok(tx.last_insert_id().unwrap_or(0))
    }

    /// The `DELETE` jobs, oldest first.
    pub fn delete_jobs(&self) -> Result<Vec<DeleteJob>> {
        let rows: Vec<(u64, String, u64)> = self
            .admin
            .conn()?
            .query(
                "SELECT id, parameters, TIMESTAMPDIFF(SECOND, created_at, NOW()) FROM jobs
                 WHERE job = 'DELETE' ORDER BY id",
            )
            .map_err(|e| self.admin.err(e))?;
        Ok(rows
            .into_iter()
            .map(|(id, parameters, age_secs)| DeleteJob {
                id,
                parameters,
                age_secs,
            })
            .collect())
    }

    /// Claims a deleted space for its purge, so copy-shards never moves it
    /// meanwhile (a lapsed purge claim is taken over).
    pub fn claim_purge(&self, space: u32) -> Result<PurgeClaim> {
        self.admin
            .tx(|tx| {
                let node: Option<(u32, String)> = tx.exec_first(
                    "SELECT node_id, status FROM spaces WHERE id = ? FOR UPDATE",
                    (space,),
                )?;
                let node = match node {
                    None => return Ok(PurgeClaim::Gone),
                    Some((_, status)) if status != "deleted" => return Ok(PurgeClaim::Busy), // reactivated
                    Some((n, _)) => n,
                };
                tx.exec_drop(
                    "DELETE FROM space_moves WHERE space_id = ? AND state = 'purging' AND lease_until < UTC_TIMESTAMP()",
                    (space,),
                )?;
                tx.exec_drop(
                    "INSERT IGNORE INTO space_moves (space_id, from_node, to_node, state, token, owner, lease_until)
                     VALUES (?, ?, ?, 'purging', 0, 'remove-deleted', UTC_TIMESTAMP() + INTERVAL ? SECOND)",
                    (space, node, node, PURGE_LEASE_SECS),
                )?;
                Ok(if tx.affected_rows() == 1 {
                    PurgeClaim::Claimed(node)
                } else {
                    PurgeClaim::Busy
                })
            })
            .map_err(|e| anyhow!("admin node: {e}"))
    }

    /// After the purge of a space's rows: drops its row (if still
    /// deleted), its claim and its `DELETE` job, together.
    pub fn finish_purge(&self, space: u32, job: u64) -> Result<()> {
        self.admin
            .tx(|tx| {
                tx.exec_drop(
                    "DELETE FROM spaces WHERE id = ? AND status = 'deleted'",
                    (space,),
                )?;
                tx.exec_drop(
                    "DELETE FROM space_moves WHERE space_id = ? AND state = 'purging'",
                    (space,),
                )?;
                tx.exec_drop("DELETE FROM jobs WHERE id = ?", (job,))
            })
            .map_err(|e| anyhow!("admin node: {e}"))
    }

    /// Gives up a purge claim (the purge failed or waits for a later run).
    pub fn release_purge(&self, space: u32) -> Result<()> {
        self.admin
            .conn()?
            .exec_drop(
                "DELETE FROM space_moves WHERE space_id = ? AND state = 'purging'",
                (space,),
            )
            .map_err(|e| self.admin.err(e))?;
        Ok(())
    }
}
