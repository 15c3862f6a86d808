//! Access points: every process that uses the cluster registers, heartbeats
//! and acknowledges the topology epoch. A row whose heartbeat is older than
//! [`EXPIRE_SECS`] belongs to a dead process and is removed by the next
//! registration or listing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Result;
use mysql::prelude::Queryable;

use super::Cluster;

/// Seconds between heartbeats.
pub const HEARTBEAT_SECS: u64 = 5;
/// How often a process looks for a new topology epoch (one cheap query):
/// a move's old rows wait for every acknowledgement, so this bounds how
/// long each move takes (measured: ~1 s per space at a 1 s poll).
const EPOCH_POLL: Duration = Duration::from_millis(200);
/// A process silent this long is considered gone.
pub const EXPIRE_SECS: u64 = 30;

/// One row of `list-access-points`.
#[derive(Clone, Debug)]
pub struct AccessPointRow {
    pub id: u64,
    pub ack: bool,
    pub access_time: String,
    pub description: String,
}

/// This process's registration; heartbeats until dropped, then unregisters.
pub struct AccessPoint {
    id: u64,
    epoch: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    cluster: Cluster,
}

impl AccessPoint {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The topology epoch this process has acknowledged.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }
}

impl Drop for AccessPoint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
        if let Ok(mut c) = self.cluster.admin.conn() {
            let _ = c.exec_drop("DELETE FROM access_points WHERE id = ?", (self.id,));
        }
    }
}

impl Cluster {
    /// Registers this process as `<kind>;;pid=<pid>` and starts heartbeating.
    /// `on_epoch` runs (on the heartbeat thread) when the epoch changes, before
    /// the new epoch is acknowledged: that is where caches are dropped.
    pub fn register(
        &self,
        kind: &str,
        on_epoch: impl Fn(u64) + Send + 'static,
    ) -> Result<AccessPoint> {
        let description = format!("{kind};;pid={}", std::process::id());
        let epoch = self.epoch()?;
        let mut conn = self.admin.conn()?;
        self.expire_access_points()?;
        conn.exec_drop(
            "INSERT INTO access_points (ack_epoch, access_time, description) VALUES (?, NOW(), ?)",
            (epoch, &description),
        )
        .map_err(|e| self.admin.err(e))?;
        let id = conn.last_insert_id();
        let epoch = Arc::new(AtomicU64::new(epoch));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (cluster, epoch, stop) = (self.clone(), epoch.clone(), stop.clone());
            std::thread::Builder::new()
                .name("tshs-heartbeat".into())
                .spawn(move || {
                    let mut last = Instant::now();
                    while !stop.load(Ordering::Acquire) {
                        std::thread::park_timeout(EPOCH_POLL);
                        if stop.load(Ordering::Acquire) {
                            break;
                        }
                        let due = last.elapsed() >= Duration::from_secs(HEARTBEAT_SECS);
                        match cluster.heartbeat(id, &epoch, &on_epoch, due) {
                            Ok(true) => last = Instant::now(),
                            Ok(false) => {}
                            Err(e) => log::warn!("access point {id}: heartbeat failed: {e:#}"),
                        }
                    }
                })?
        };
        Ok(AccessPoint {
            id,
            epoch,
            stop,
            thread: Some(thread),
            cluster: self.clone(),
        })
    }

    /// Acknowledges a new epoch at once and heartbeats when `due`; true if
    /// it wrote the row.
    fn heartbeat(
        &self,
        id: u64,
        acked: &AtomicU64,
        on_epoch: &dyn Fn(u64),
        due: bool,
    ) -> Result<bool> {
        let current = self.epoch()?;
        let changed = current != acked.load(Ordering::Acquire);
        if changed {
            on_epoch(current);
            acked.store(current, Ordering::Release);
        } else if !due {
            return Ok(false);
        }
        let mut conn = self.admin.conn()?;
        conn.exec_drop(
            "UPDATE access_points SET access_time = NOW(), ack_epoch = ? WHERE id = ?",
            (current, id),
        )
        .map_err(|e| self.admin.err(e))?;
        if conn.affected_rows() == 0 {
            // Expired while we could not reach the Admin Node: a move may
            // have finished without us, so forget all placement, then
            // register again under the same id.
            on_epoch(current);
            conn.exec_drop(
                "INSERT IGNORE INTO access_points (id, ack_epoch, access_time, description)
                 VALUES (?, ?, NOW(), CONCAT('re-registered;;pid=', ?))",
                (id, current, std::process::id()),
            )
            .map_err(|e| self.admin.err(e))?;
        }
        Ok(true)
    }

    /// How many live access points have not acknowledged `epoch` yet.
    pub fn unacknowledged(&self, epoch: u64) -> Result<u64> {
        let n: Option<u64> = self
            .admin
            .conn()?
            .exec_first(
                "SELECT COUNT(*) FROM access_points
                 WHERE ack_epoch < ? AND access_time >= NOW() - INTERVAL ? SECOND",
                (epoch, EXPIRE_SECS),
            )
            .map_err(|e| self.admin.err(e))?;
        Ok(n.unwrap_or(0))
    }

    /// Removes access points that stopped heartbeating.
    pub fn expire_access_points(&self) -> Result<u64> {
        let mut conn = self.admin.conn()?;
        conn.exec_drop(
            "DELETE FROM access_points WHERE access_time < NOW() - INTERVAL ? SECOND",
            (EXPIRE_SECS,),
        )
        .map_err(|e| self.admin.err(e))?;
        Ok(conn.affected_rows())
    }

    pub fn access_points(&self) -> Result<Vec<AccessPointRow>> {
        self.expire_access_points()?;
        let rows: Vec<(u64, u64, String, String)> = self
            .admin
            .conn()?
            .query(
                "SELECT a.id, a.ack_epoch = t.epoch, DATE_FORMAT(a.access_time, '%Y-%m-%d %H:%i:%s'), a.description
                 FROM access_points a JOIN topology t ON t.id = 1 ORDER BY a.id",
            )
            .map_err(|e| self.admin.err(e))?;
        Ok(rows
            .into_iter()
            .map(|(id, ack, access_time, description)| AccessPointRow {
                id,
                ack: ack == 1,
                access_time,
                description,
            })
            .collect())
    }
}
