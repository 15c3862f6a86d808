//! `IMPORT` jobs in the Admin Node: which spaces an import brings in and how
//! far each got (see [`crate::import`] for the steps). A space of an import
//! has `import_job` set until its data is in, and `import_from` until its
//! tree is; the job is renamed `IMPORTED` when none of its spaces is left.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use mysql::prelude::Queryable;

use super::Cluster;
use crate::db::Db;
use crate::placement;

/// A volume found on disk and its spaces (ID, directory).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskVolume {
    pub name: String,
    pub spaces: Vec<(u32, PathBuf)>,
}

/// An `IMPORT` (or finished, `IMPORTED`) job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportJob {
    pub id: u64,
    pub path: PathBuf,
    pub s3_host: Option<u32>,
    pub finished: bool,
}

/// A space an import has not finished: its tree is still on disk at
/// `tree` (`None` once imported; then only data may be left).
#[derive(Clone, Debug)]
pub struct ImportingSpace {
    pub id: u32,
    pub tree: Option<PathBuf>,
}

/// What `import-volumes` registered.
#[derive(Clone, Debug)]
pub struct Registered {
    pub job: u64,
    pub new_volumes: Vec<String>,
    pub spaces: usize,
}

impl Cluster {
    /// Records an `IMPORT` job of the tree at `root` (absolute) with its
    /// volumes (created if missing) and spaces, in one transaction: all of
    /// it or nothing. A space ID the cluster already has is refused.
    pub fn register_import(
        &self,
        root: &Path,
        volumes: &[DiskVolume],
        s3_host: Option<u32>,
    ) -> Result<Registered> {
        self.require_admin_node()?;
        if let Some(h) = s3_host {
            self.s3_host(h)?;
        }
        let mut conn = self.admin.conn()?;
        let mut tx = conn
            .start_transaction(Default::default())
            .map_err(|e| self.admin.err(e))?;
        // The topology row serialises registrations: one import at a time.
        tx.query_drop("SELECT epoch FROM topology WHERE id = 1 FOR UPDATE")
            .map_err(|e| self.admin.err(e))?;
        let ranges = self.ranges()?;
        let open: Option<(u64, String)> = tx
            .query_first("SELECT id, parameters FROM jobs WHERE job = 'IMPORT' LIMIT 1")
            .map_err(|e| self.admin.err(e))?;
        if let Some((id, parameters)) = open {
            bail!("import job {id} ({parameters}) is not finished yet (see tshs list-jobs)");
        }
        let mut parameters = format!("path={}", root.display());
        if let Some(h) = s3_host {
            parameters.push_str(&format!(";s3-host-id={h}"));
        }
        let job = self.add_job(&mut tx, "IMPORT", &parameters)?;
        let mut new_volumes = Vec::new();
        let mut spaces = 0;
        for v in volumes {
            let existing: Option<u32> = tx
                .exec_first("SELECT id FROM volumes WHERE name = ?", (&v.name,))
                .map_err(|e| self.admin.err(e))?;
            let vol = match existing {
                Some(id) => id,
                None => {
                    tx.exec_drop("INSERT INTO volumes (name) VALUES (?)", (&v.name,))
                        .map_err(|e| self.admin.err(e))?;
                    new_volumes.push(v.name.clone());
                    tx.last_insert_id().unwrap_or(0) as u32
                }
            };
            for (id, dir) in &v.spaces {
                let node = placement::owner(&ranges, *id).ok_or_else(|| {
                    anyhow!("no storage node owns space {id}: create a storage node first")
                })?;
                tx.exec_drop(
                    "INSERT INTO spaces (id, volume_id, node_id, import_from, import_job) VALUES (?, ?, ?, ?, ?)",
                    (id, vol, node, dir.as_os_str().as_bytes(), job),
                )
                .map_err(|e| match e {
                    mysql::Error::MySqlError(m) if m.code == crate::db::code::DUP_ENTRY => {
                        anyhow!("cannot import {}: space {id} already exists in the cluster", dir.display())
                    }
                    e => self.admin.err(e).into(),
                })?;
                spaces += 1;
            }
        }
        tx.commit().map_err(|e| self.admin.err(e))?;
        Ok(Registered {
            job,
            new_volumes,
            spaces,
        })
    }

    pub fn import_jobs(&self) -> Result<Vec<ImportJob>> {
        Ok(self
            .jobs()?
            .into_iter()
            .filter(|j| j.job == "IMPORT" || j.job == "IMPORTED")
            .map(|j| {
                let param = |name: &str| {
                    j.parameters
                        .split(';')
                        .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
                        .map(str::to_string)
                };
                ImportJob {
                    id: j.id,
                    path: param("path").unwrap_or_default().into(),
                    s3_host: param("s3-host-id").and_then(|h| h.parse().ok()),
                    finished: j.job == "IMPORTED",
                }
            })
            .collect())
    }

    /// The spaces of a job with something left to import.
    pub fn importing_spaces(&self, job: u64) -> Result<Vec<ImportingSpace>> {
        let rows: Vec<(u32, Option<Vec<u8>>)> = self
            .admin
            .read(|c| {
                c.exec(
                    "SELECT id, import_from FROM spaces WHERE import_job = ? ORDER BY id",
                    (job,),
                )
            })
            .map_err(|e| anyhow!(e))?;
        Ok(rows
            .into_iter()
            .map(|(id, tree)| ImportingSpace {
                id,
                tree: tree.map(|t| OsString::from_vec(t).into()),
            })
            .collect())
    }

    /// Records that a space's tree is in Storage Node `node`, if the space
    /// is still on that node (else false: it moved meanwhile).
    pub fn tree_imported(&self, space: u32, node: u32) -> Result<bool> {
        let mut conn = self.admin.conn()?;
        conn.exec_drop(
            "UPDATE spaces SET import_from = NULL WHERE id = ? AND node_id = ?",
            (space, node),
        )
        .map_err(|e| self.admin.err(e))?;
        if conn.affected_rows() == 1 {
            return Ok(true);
        }
        // Back to the pool before the next checkout: threads holding one
        // connection while waiting for another can empty the pool for good.
        drop(conn);
        // Already recorded (by another process) on this node is fine too.
        let row = self.space(space)?;
        Ok(row.is_some_and(|r| r.node_id == node && r.import_from.is_none()))
    }

    /// Sets a space of an unfinished import to have its tree imported again
    /// from `<job path>/<volume>/<space>` (restore-from-s3 of a lost node).
    pub fn import_tree_again(&self, space: u32) -> Result<()> {
        let jobs = self.import_jobs()?;
        let mut conn = self.admin.conn()?;
        let row: Option<(u64, String)> = conn
            .exec_first(
                "SELECT s.import_job, v.name FROM spaces s JOIN volumes v ON v.id = s.volume_id
                 WHERE s.id = ? AND s.import_job IS NOT NULL",
                (space,),
            )
            .map_err(|e| self.admin.err(e))?;
        let Some((job, volume)) = row else {
            bail!("space {space} is not part of an import");
        };
        let root = jobs
            .into_iter()
            .find(|j| j.id == job)
            .ok_or_else(|| anyhow!("import job {job} is gone"))?
            .path;
        let dir = root.join(volume).join(space.to_string());
        conn.exec_drop(
            "UPDATE spaces SET import_from = ? WHERE id = ?",
            (dir.as_os_str().as_bytes(), space),
        )
        .map_err(|e| self.admin.err(e))?;
        Ok(())
    }

    /// True while copy-shards holds a move of the space.
    pub fn space_moving(&self, space: u32) -> Result<bool> {
        let n: Option<u32> = self
            .admin
            .read(|c| {
                c.exec_first(
                    "SELECT space_id FROM space_moves WHERE space_id = ?",
                    (space,),
                )
            })
            .map_err(|e| anyhow!(e))?;
        Ok(n.is_some())
    }

    /// copy-shards' move of a space whose tree is not imported yet: it has
    /// no rows, so naming the new node is the whole move. False if the
    /// space is not (or no longer) such a space on `from`.
    pub fn switch_unimported(&self, space: u32, from: u32, to: u32) -> Result<bool> {
        let mut conn = self.admin.conn()?;
        conn.exec_drop(
            "UPDATE spaces SET node_id = ? WHERE id = ? AND node_id = ? AND import_from IS NOT NULL",
            (to, space, from),
        )
        .map_err(|e| self.admin.err(e))?;
        Ok(conn.affected_rows() == 1)
    }

    /// Records that a space's data is in too.
    pub fn data_imported(&self, space: u32) -> Result<()> {
        self.admin
            .conn()?
            .exec_drop(
                "UPDATE spaces SET import_job = NULL WHERE id = ? AND import_from IS NULL",
                (space,),
            )
            .map_err(|e| self.admin.err(e).into())
    }

    /// Renames a job `IMPORTED` if none of its spaces has anything left.
    /// Returns whether it is finished.
    pub fn finish_import(&self, job: u64) -> Result<bool> {
        let mut conn = self.admin.conn()?;
        conn.exec_drop(
            "UPDATE jobs SET job = 'IMPORTED' WHERE id = ? AND job = 'IMPORT'
             AND NOT EXISTS (SELECT 1 FROM spaces WHERE import_job = ?)",
            (job, job),
        )
        .map_err(|e| self.admin.err(e))?;
        let state: Option<String> = conn
            .exec_first("SELECT job FROM jobs WHERE id = ?", (job,))
            .map_err(|e| self.admin.err(e))?;
        Ok(state.as_deref() == Some("IMPORTED"))
    }
}

/// Which spaces a perform-import process works on, so that processes running at once
/// (perform-import by hand and by the maintenance runner, or on several
/// hosts) do not copy or upload the same files: a lease per space in the
/// Admin Node (`import_leases`), renewed every few seconds by a thread of
/// this process while it holds it, so it lapses soon after the process
/// dies. Rows rather than a named lock: on a Galera cluster `GET_LOCK` is
/// local to one member, while two members' writes of one row conflict.
pub struct ImportLeases {
    admin: Db,
    owner: String,
    held: Arc<Mutex<Vec<u32>>>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    renewer: Option<std::thread::JoinHandle<()>>,
}

/// How long a lease lasts unless renewed, and how often it is renewed.
const LEASE_SECS: u32 = 30;
const RENEW_EVERY: Duration = Duration::from_secs(5);

impl ImportLeases {
    pub fn new(cluster: &Cluster) -> Result<ImportLeases> {
        let admin = cluster.admin().clone();
        let mut tag = [0u8; 6];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut tag)
            .map_err(|_| anyhow!("no system randomness"))?;
        let owner = format!("perform-import {} {}", std::process::id(), hex::encode(tag));
        let held: Arc<Mutex<Vec<u32>>> = Arc::default();
        let stop: Arc<(Mutex<bool>, Condvar)> = Arc::default();
        let renewer = {
            let (admin, owner, held, stop) =
                (admin.clone(), owner.clone(), held.clone(), stop.clone());
            std::thread::Builder::new()
                .name("import-leases".into())
                .spawn(move || {
                    let (lock, cv) = &*stop;
                    let mut stopped = lock.lock().unwrap();
                    while !*stopped {
                        stopped = cv.wait_timeout(stopped, RENEW_EVERY).unwrap().0;
                        for space in held.lock().unwrap().clone() {
                            let r = admin.tx(|tx| {
                                tx.exec_drop(
                                    "UPDATE import_leases SET lease_until = UTC_TIMESTAMP() + INTERVAL ? SECOND
                                     WHERE space_id = ? AND owner = ?",
                                    (LEASE_SECS, space, &owner),
                                )
                            });
                            if let Err(e) = r {
                                log::warn!("perform-import: renewing the lease of space {space}: {e}");
                            }
                        }
                    }
                })?
        };
        Ok(ImportLeases {
            admin,
            owner,
            held,
            stop,
            renewer: Some(renewer),
        })
    }

    /// Takes space `space` unless another process holds a lease on it.
    pub fn take(&mut self, space: u32) -> Result<bool> {
        let got: bool = self
            .admin
            .tx(|tx| {
                // Assignments run left to right: the owner changes only if
                // the lease lapsed, then the (new or same) owner's lease is
                // extended.
                tx.exec_drop(
                    "INSERT INTO import_leases (space_id, owner, lease_until)
                     VALUES (?, ?, UTC_TIMESTAMP() + INTERVAL ? SECOND)
                     ON DUPLICATE KEY UPDATE
                       owner = IF(lease_until < UTC_TIMESTAMP(), VALUES(owner), owner),
                       lease_until = IF(owner = VALUES(owner), VALUES(lease_until), lease_until)",
                    (space, &self.owner, LEASE_SECS),
                )?;
                let owner: Option<String> = tx.exec_first(
                    "SELECT owner FROM import_leases WHERE space_id = ?",
                    (space,),
                )?;
                Ok(owner.as_deref() == Some(self.owner.as_str()))
            })
            .map_err(|e| anyhow!("admin node: {e}"))?;
        if got {
            self.held.lock().unwrap().push(space);
        }
        Ok(got)
    }

    /// Lets space `space` go (a lease not renewed lapses by itself).
    pub fn give_back(&mut self, space: u32) {
        self.held.lock().unwrap().retain(|s| *s != space);
        let r = self.admin.tx(|tx| {
            tx.exec_drop(
                "DELETE FROM import_leases WHERE space_id = ? AND owner = ?",
                (space, &self.owner),
            )
        });
        if let Err(e) = r {
            log::warn!("perform-import: admin node: releasing space {space}: {e}");
        }
    }
}

impl Drop for ImportLeases {
    fn drop(&mut self) {
        let (lock, cv) = &*self.stop;
        *lock.lock().unwrap() = true;
        cv.notify_all();
        if let Some(t) = self.renewer.take() {
            let _ = t.join();
        }
    }
}
