//! move-to-s3: moves settled files from the Storage Nodes to the current S3
//! host.
//!
//! A file moves when it is a live regular file in the database, not named
//! `last.log`, unchanged (data and attributes) for the settle time (60 s,
//! `--settle`), at least MinSize and at most MaxSize (0: any size). Files
//! go in key order, several at once (`--max-threads`); each is:
//!
//! 1. recorded in the node's `s3_uploads` (renewed every few seconds while
//!    its upload runs);
//! 2. uploaded under a fresh key `<space>/<inode>/<unique>` (multipart above
//!    MinBlockSize) and verified (see [`crate::object_store::S3Store::put`]);
//! 3. handed over in one transaction that re-checks the inode is the version
//!    uploaded ([`crate::shard::Shard::finish_move`]).
//!
//! A file that changed meanwhile keeps its data in the database and its
//! object is deleted. A run that is stopped, killed or fails leaves at most
//! a record whose object remove-deleted deletes; the next run starts over
//! with what is still in the database. The database never loses data
//! before the object holding it is verified and named.
//!
//! A file that a mount has held open for writing for more than a few
//! seconds is registered on its node ([`crate::shard::open_writers`]) and
//! does not move until its last close (or until the registration lapses,
//! 30 s after its mount stopped renewing it: a crashed mount blocks
//! nothing for longer). The registration is checked again in step 3. A
//! file opened for writing in the seconds before it is registered may still
//! move: its next write brings it back into the database first
//! (copy-on-write in the mount), so nothing changes for its writer.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, bail};

use super::{Outcome, Progress, ProgressFn, TaskOptions};
use crate::clock::now_ns;
use crate::cluster::Cluster;
use crate::object_store::{S3Host, S3Store, Upload, unique};
use crate::shard::{Candidate, SETTLE_SECS, Shard};

/// How often an upload's record is renewed.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// An upload record not renewed for this long (or the grace period, if
/// longer) belongs to a process that is gone.
pub const UPLOAD_STALE: Duration = Duration::from_secs(10);
/// Candidates fetched per query.
const BATCH: usize = 200;

/// What happened to one file.
pub(super) enum Moved {
    Done,
    Changed,
}

pub fn run(
    cluster: &Cluster,
    opts: &TaskOptions,
    stop: &AtomicBool,
    progress: ProgressFn,
) -> Result<Outcome> {
    let mut out = Outcome::default();
    let Some(host) = cluster.current_s3_host()? else {
        return Ok(out); // no object store: nothing to do
    };
    let store = cluster.object_store(host.id)?;
    let settle = opts
        .settle
        .unwrap_or(Duration::from_secs(SETTLE_SECS as u64));
    let owner: std::collections::HashMap<u32, u32> = cluster
        .live_spaces()?
        .into_iter()
        .map(|s| (s.id, s.node_id))
        .collect();
    let (done, bytes, changed) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));

    for n in cluster.nodes()? {
        if opts.should_stop(stop) {
            break;
        }
        if opts.storage_node.is_some_and(|s| s != n.id) {
            continue;
        }
        let shard = cluster.shard(n.id)?;
        let settled_before = now_ns() - settle.as_nanos() as i64;
        let mut after = (0, 0);
        loop {
            if opts.should_stop(stop) {
                break;
            }
            let batch = shard.s3_candidates(
                after,
                settled_before,
                host.options.min_size,
                host.options.max_size,
                BATCH,
            )?;
            let Some(last) = batch.last() else { break };
            after = (last.space, last.ino);
            // Only the spaces this node owns (a node being split still
            // holds copies of spaces that moved on).
            let work: Vec<Candidate> = batch
                .into_iter()
                .filter(|c| owner.get(&c.space) == Some(&n.id))
                .collect();
            let queue = Mutex::new(work.into_iter());
            let failed: Mutex<Option<anyhow::Error>> = Mutex::default();
            let threads = opts.max_threads.clamp(1, 16);
            std::thread::scope(|s| {
                for _ in 0..threads {
                    s.spawn(|| {
                        loop {
                            if failed.lock().unwrap().is_some() || opts.should_stop(stop) {
                                return;
                            }
                            let Some(c) = queue.lock().unwrap().next() else {
                                return;
                            };
                            let read = |off: u64, len: usize| {
                                shard.read_for_upload(c.space, c.ino, off, len)
                            };
                            match move_one(&shard, &store, &host, &c, &read, opts, stop) {
                                Ok(Moved::Done) => {
                                    let d = done.fetch_add(1, Ordering::AcqRel) + 1;
                                    let b = bytes.fetch_add(c.size, Ordering::AcqRel) + c.size;
                                    progress(&Progress {
                                        task: "move-to-s3",
                                        done: d,
                                        total: 0,
                                        bytes: b,
                                        item: format!("space {} inode {}", c.space, c.ino),
                                    });
                                }
                                Ok(Moved::Changed) => {
                                    changed.fetch_add(1, Ordering::AcqRel);
                                }
                                // Stopped in the middle of an upload: not a failure.
                                Err(_) if opts.should_stop(stop) => return,
                                Err(e) => {
                                    failed.lock().unwrap().get_or_insert(e.context(format!(
                                        "space {} inode {} on storage node {}",
                                        c.space, c.ino, n.id
                                    )));
                                    return;
                                }
                            }
                        }
                    });
                }
            });
            if let Some(e) = failed.into_inner().unwrap() {
                return Err(e);
            }
        }
    }
    out.done = done.into_inner();
    out.bytes = bytes.into_inner();
    let changed = changed.into_inner();
    if changed > 0 {
        out.lines.push(format!(
            "move-to-s3: {changed} file(s) changed or were opened for writing during their upload and stay in the database"
        ));
    }
    if out.done > 0 {
        out.lines
            .push(format!("move-to-s3: moved to {}", host.describe()));
    }
    // Counting is a scan of every node: only when the run stopped early.
    if opts.should_stop(stop) {
        out.remaining = waiting(cluster, &host, settle, opts)?;
    }
    Ok(out)
}

/// Files still waiting after a run (a stopped or time-limited run).
fn waiting(cluster: &Cluster, host: &S3Host, settle: Duration, opts: &TaskOptions) -> Result<u64> {
    let settled_before = now_ns() - settle.as_nanos() as i64;
    let mut n = 0;
    for node in cluster.nodes()? {
        if opts.storage_node.is_some_and(|s| s != node.id) {
            continue;
        }
        n += cluster
            .shard(node.id)?
            .waiting_for_s3(settled_before, host.options.min_size, host.options.max_size)?
            .0;
    }
    Ok(n)
}

/// Moves one file (see the module's steps), its data read with `read`.
pub(super) fn move_one(
    shard: &Shard,
    store: &S3Store,
    host: &S3Host,
    c: &Candidate,
    read: &(dyn Fn(u64, usize) -> Result<Vec<u8>> + Sync),
    opts: &TaskOptions,
    stop: &AtomicBool,
) -> Result<Moved> {
    let key = format!("{}/{}/{}", c.space, c.ino, unique());
    let record = shard.begin_upload(host.id, &key, c.space, c.ino)?;
    let finished = Arc::new(AtomicBool::new(false));
    let beat = {
        let (shard, finished) = (shard.clone(), finished.clone());
        std::thread::spawn(move || {
            while !finished.load(Ordering::Acquire) {
                std::thread::park_timeout(HEARTBEAT);
                if !finished.load(Ordering::Acquire)
                    && let Err(e) = shard.touch_upload(record, None)
                {
                    log::warn!("{e:#}");
                }
            }
        })
    };
    let started = |upload_id: &str| shard.touch_upload(record, Some(upload_id));
    let check = |_sent: u64| -> Result<()> {
        if opts.should_stop(stop) {
            bail!("stopped");
        }
        Ok(())
    };
    let uploaded = store.put(
        &key,
        c.size,
        &Upload {
            read: &read,
            started: &started,
            progress: &check,
        },
    );
    let result = uploaded.and_then(|_| shard.finish_move(c, host.id, &key, record));
    finished.store(true, Ordering::Release);
    beat.thread().unpark();
    let _ = beat.join();
    match result {
        Ok(true) => Ok(Moved::Done),
        Ok(false) => {
            discard(shard, store, &key, record);
            Ok(Moved::Changed)
        }
        Err(e) => {
            discard(shard, store, &key, record);
            Err(e)
        }
    }
}

/// Deletes the object of an upload that is not used, then its record; if
/// the store cannot delete it now, remove-deleted does later.
fn discard(shard: &Shard, store: &S3Store, key: &str, record: u64) {
    match store.delete(key) {
        Ok(()) => {
            if let Err(e) = shard.forget_orphan(record) {
                log::warn!("{e:#}");
            }
        }
        Err(e) => {
            // Expected while the store is away; the task's error says why.
            log::info!("{e} (remove-deleted deletes the object later)");
            if let Err(e) = shard.abandon_upload(record) {
                log::warn!("{e:#}");
            }
        }
    }
}

/// (files, bytes) waiting for move-to-s3 on each node, for transfer-to-s3-info.
pub fn waiting_per_node(cluster: &Cluster, host: Option<&S3Host>) -> Result<super::Waiting> {
    let (min, max) = host.map_or((0, 0), |h| (h.options.min_size, h.options.max_size));
    let settled_before = now_ns() - SETTLE_SECS * 1_000_000_000;
    Ok(cluster
        .nodes()?
        .into_iter()
        .map(|n| {
            let w = cluster
                .shard(n.id)
                .and_then(|s| s.waiting_for_s3(settled_before, min, max));
            (n.id, w)
        })
        .collect())
}
