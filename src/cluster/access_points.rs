//! Access points: every process that uses the cluster registers, heartbeats
//! and acknowledges the topology epoch. A process silent for [`EXPIRE_SECS`]
//! is stale: moves no longer wait for its acknowledgement (when it speaks
//! again it sees the new epoch, forgets placement and acknowledges, like
//! any other). Its row stays for [`FORGET_SECS`], and with it the files it
//! holds open after their last name went (a mount stalled for a minute
//! keeps them); then the next registration or listing removes it, and
//! reapers purge those files.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Result;
use mysql::prelude::Queryable;

use super::Cluster;
use crate::db::DbError;

/// Seconds between heartbeats.
pub const HEARTBEAT_SECS: u64 = 5;
/// How often a process looks for a new topology epoch (one cheap query):
/// a move's old rows wait for every acknowledgement, so this bounds how
/// long each move takes (measured: ~1 s per space at a 1 s poll).
const EPOCH_POLL: Duration = Duration::from_millis(200);
/// A process silent this long is stale: not waited for.
pub const EXPIRE_SECS: u64 = 30;
/// A process silent this long is gone: its row and its unlinked-but-open
/// files are removed.
pub const FORGET_SECS: u64 = 600;

/// One row of `list-access-points`.
#[derive(Clone, Debug)]
pub struct AccessPointRow {
    pub id: u64,
    pub ack: bool,
    /// Silent for [`EXPIRE_SECS`]: no longer waited for by moves.
    pub stale: bool,
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
    liveness: Liveness,
}

/// When this process last heartbeated successfully.
#[derive(Clone)]
pub struct Liveness(Arc<Mutex<Instant>>);

impl Default for Liveness {
    fn default() -> Self {
        Liveness(Arc::new(Mutex::new(Instant::now())))
    }
}

impl Liveness {
    /// A heartbeat sent at `sent` was recorded (the server's time then).
    fn ok(&self, sent: Instant) {
        *self.0.lock().unwrap() = sent;
    }

    /// True if the last successful heartbeat is younger than `max`.
    pub fn fresh(&self, max: Duration) -> bool {
        self.0.lock().unwrap().elapsed() < max
    }
}

/// The heartbeat thread's state.
struct Heartbeat {
    id: u64,
    /// The newest epoch handed to the acknowledging thread.
    requested: u64,
    /// The acknowledgement the row holds.
    written: u64,
    last: Instant,
}

impl AccessPoint {
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn liveness(&self) -> Liveness {
        self.liveness.clone()
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
    /// `on_epoch` runs when the epoch changes, before the new epoch is
    /// acknowledged: that is where caches are dropped. It runs on a thread
    /// of its own, so a slow acknowledgement never delays the heartbeat.
    pub fn register(
        &self,
        kind: &str,
        on_epoch: impl Fn(u64) + Send + 'static,
    ) -> Result<AccessPoint> {
        let description = format!("{kind};;pid={}", std::process::id());
        let epoch = self.epoch()?;
        self.expire_access_points()?;
        let mut conn = self.admin.conn()?;
        conn.exec_drop(
            "INSERT INTO access_points (ack_epoch, access_time, description) VALUES (?, NOW(), ?)",
            (epoch, &description),
        )
        .map_err(|e| self.admin.err(e))?;
        let id = conn.last_insert_id();
        let acked = Arc::new(AtomicU64::new(epoch));
        let stop = Arc::new(AtomicBool::new(false));
        let liveness = Liveness::default();
        let (to_ack, requests) = crossbeam_channel::unbounded::<u64>();
        let acker = {
            let (cluster, acked) = (self.clone(), acked.clone());
            std::thread::Builder::new()
                .name("tshs-ack".into())
                .spawn(move || {
                    while let Ok(e) = requests.recv() {
                        let e = requests.try_iter().last().unwrap_or(e);
                        // A node may have a new database (restore-from-s3),
                        // an S3 host new options (update-s3-host).
                        cluster.forget_changed_clients();
                        on_epoch(e);
                        acked.store(e, Ordering::Release);
                    }
                })?
        };
        let thread = {
            let (cluster, acked, stop, liveness) =
                (self.clone(), acked.clone(), stop.clone(), liveness.clone());
            std::thread::Builder::new()
                .name("tshs-heartbeat".into())
                .spawn(move || {
                    let mut hb = Heartbeat {
                        id,
                        requested: epoch,
                        written: epoch,
                        last: Instant::now(),
                    };
                    while !stop.load(Ordering::Acquire) {
                        std::thread::park_timeout(EPOCH_POLL);
                        if stop.load(Ordering::Acquire) {
                            break;
                        }
                        let sent = Instant::now();
                        match cluster.heartbeat(&mut hb, &acked, &to_ack) {
                            Ok(true) => liveness.ok(sent),
                            Ok(false) => {}
                            Err(e) => log::warn!("access point {id}: heartbeat failed: {e:#}"),
                        }
                    }
                    drop(to_ack);
                    let _ = acker.join();
                })?
        };
        Ok(AccessPoint {
            id,
            epoch: acked,
            stop,
            thread: Some(thread),
            cluster: self.clone(),
            liveness,
        })
    }

    /// Passes a new epoch to the acknowledging thread, and writes the row
    /// when there is a new acknowledgement or a heartbeat is due; true if
    /// it wrote the row.
    fn heartbeat(
        &self,
        hb: &mut Heartbeat,
        acked: &AtomicU64,
        to_ack: &crossbeam_channel::Sender<u64>,
    ) -> Result<bool> {
        let current = self.epoch()?;
        if current != hb.requested {
            hb.requested = current;
            let _ = to_ack.send(current);
        }
        let ack = acked.load(Ordering::Acquire);
        if ack == hb.written && hb.last.elapsed() < Duration::from_secs(HEARTBEAT_SECS) {
            return Ok(false);
        }
        let mut conn = self.admin.conn()?;
        conn.exec_drop(
            "UPDATE access_points SET access_time = NOW(), ack_epoch = ? WHERE id = ?",
            (ack, hb.id),
        )
        .map_err(|e| self.admin.err(e))?;
        if conn.affected_rows() == 0 {
            // Removed while we could not reach the Admin Node: a move may
            // have finished without us. Register again under the same id,
            // acknowledging nothing until placement is forgotten.
            acked.store(0, Ordering::Release);
            let _ = to_ack.send(current);
            conn.exec_drop(
                "INSERT IGNORE INTO access_points (id, ack_epoch, access_time, description)
                 VALUES (?, 0, NOW(), CONCAT('re-registered;;pid=', ?))",
                (hb.id, std::process::id()),
            )
            .map_err(|e| self.admin.err(e))?;
            hb.written = 0;
            hb.last = Instant::now();
            // Not live again until placement is forgotten and acknowledged.
            return Ok(false);
        }
        hb.written = ack;
        hb.last = Instant::now();
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

    /// How many access points have been silent for `secs` (their rows not
    /// expired yet).
    pub fn silent_access_points(&self, secs: u64) -> Result<u64, DbError> {
        let n: Option<u64> = self.admin.read(|c| {
            c.exec_first(
                "SELECT COUNT(*) FROM access_points WHERE access_time < NOW() - INTERVAL ? SECOND",
                (secs,),
            )
        })?;
        Ok(n.unwrap_or(0))
    }

    /// Removes access points silent for [`FORGET_SECS`].
    pub fn expire_access_points(&self) -> Result<u64> {
        let mut conn = self.admin.conn()?;
        conn.exec_drop(
            "DELETE FROM access_points WHERE access_time < NOW() - INTERVAL ? SECOND",
            (FORGET_SECS,),
        )
        .map_err(|e| self.admin.err(e))?;
        Ok(conn.affected_rows())
    }

    pub fn access_points(&self) -> Result<Vec<AccessPointRow>> {
        self.expire_access_points()?;
        let rows: Vec<(u64, u64, u64, String, String)> = self
            .admin
            .conn()?
            .exec(
                "SELECT a.id, a.ack_epoch = t.epoch, a.access_time < NOW() - INTERVAL ? SECOND,
                        DATE_FORMAT(a.access_time, '%Y-%m-%d %H:%i:%s'), a.description
                 FROM access_points a JOIN topology t ON t.id = 1 ORDER BY a.id",
                (EXPIRE_SECS,),
            )
            .map_err(|e| self.admin.err(e))?;
        Ok(rows
            .into_iter()
            .map(
                |(id, ack, stale, access_time, description)| AccessPointRow {
                    id,
                    ack: ack == 1,
                    stale: stale == 1,
                    access_time,
                    description,
                },
            )
            .collect())
    }
}
