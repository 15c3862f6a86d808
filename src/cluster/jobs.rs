//! Jobs: long-running cluster work recorded in the Admin Node (`DELETE` of a
//! removed space, `IMPORT` of an on-disk volume), shown by `list-jobs`.

use anyhow::Result;
use mysql::prelude::Queryable;

use super::Cluster;

/// One row of `list-jobs`.
#[derive(Clone, Debug)]
pub struct JobRow {
    pub id: u64,
    pub job: String,
    pub parameters: String,
}

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
}
