//! remove-deleted: purges what was marked deleted, once nothing can use it.
//!
//! - A space removed with `rmdir` left a `DELETE` job: after the grace
//!   period its rows are dropped from its node, then its Admin Node row and
//!   the job. The space is claimed in `space_moves` (state `purging`) first,
//!   so copy-shards never moves a space while it is being purged.
//! - Inodes whose last link went: purged after the grace period (another
//!   mount may still read them within its attribute TTL); inodes unlinked
//!   while open stay while the access point holding them is alive.
//!
//! The grace period also covers an upload in flight: move-to-s3 records the
//! object on the inode only after it is complete, and a file deleted
//! meanwhile keeps its rows for the grace period.
//! - Objects in the store that no inode names (see `s3_uploads` in the
//!   shard schema): those of purged inodes and spaces, those replaced when
//!   a file came back into the database (after the grace period: another
//!   mount may still be reading them), and uploads whose process stopped
//!   renewing them (interrupted move-to-s3 runs).
//! - Registrations of files open for writing whose mount stopped renewing
//!   them (see [`crate::shard::open_writers`]).
//! - Snapshots past their life, and those a creation left half made
//!   (first: what they kept may then go too). A deleted space, an inode
//!   and an object a live snapshot still sees wait for its end.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Result;

use super::move_to_s3::UPLOAD_STALE;
use super::{Outcome, Progress, ProgressFn, TaskOptions};
use crate::clock::now_ns;
use crate::cluster::{Cluster, PurgeClaim};
use crate::shard::{Fenced, HeldBySnapshot};

/// A snapshot still `creating` this long after it began was left half made.
const CREATING_STALE_SECS: i64 = 3600;

/// Removes expired and half-made snapshots, and moments nodes keep for
/// snapshots the Admin Node does not know; returns the snapshots that live on.
fn expire_snapshots(
    cluster: &Cluster,
    opts: &TaskOptions,
    out: &mut Outcome,
) -> Result<Vec<crate::cluster::SnapshotRow>> {
    let mut live = Vec::new();
    for s in cluster.snapshots()? {
        let why = if s.expired {
            "expired"
        } else if !s.ready() && s.age_secs >= CREATING_STALE_SECS {
            "left half made"
        } else {
            live.push(s);
            continue;
        };
        if opts.dry_run {
            out.lines
                .push(format!("would remove snapshot {} ({why})", s.name));
        } else {
            let freed = cluster.drop_snapshot(s.id)?;
            out.lines.push(format!(
                "removed snapshot {} ({why}; {freed} kept rows freed)",
                s.name
            ));
        }
        out.done += 1;
    }
    if !opts.dry_run {
        let n = cluster.release_unknown_moments()?;
        if n > 0 {
            log::info!("remove-deleted: let go {n} snapshot moments the Admin Node does not know");
        }
    }
    Ok(live)
}

/// Default grace period before anything marked deleted is purged.
pub const GRACE: Duration = Duration::from_secs(60);

pub fn run(
    cluster: &Cluster,
    opts: &TaskOptions,
    stop: &AtomicBool,
    progress: ProgressFn,
) -> Result<Outcome> {
    let grace = opts.grace.unwrap_or(GRACE);
    let mut out = Outcome::default();
    let verb = if opts.dry_run {
        "would remove"
    } else {
        "removed"
    };

    let snapshots = expire_snapshots(cluster, opts, &mut out)?;
    // Spaces whose garbage objects a live snapshot may still need.
    let held: Vec<u32> = snapshots
        .iter()
        .flat_map(|s| s.spaces.iter().map(|p| p.space))
        .collect();

    // Deleted spaces (DELETE jobs).
    for j in cluster.delete_jobs()? {
        let (job, params, age) = (j.id, j.parameters, j.age_secs);
        if opts.should_stop(stop) {
            break;
        }
        let Some(space) = params
            .strip_prefix("space=")
            .and_then(|s| s.trim().parse::<u32>().ok())
        else {
            log::warn!("remove-deleted: DELETE job {job} has unknown parameters '{params}'");
            continue;
        };
        if age < grace.as_secs() {
            out.remaining += 1;
            continue;
        }
        if let Some(s) = snapshots
            .iter()
            .find(|s| s.spaces.iter().any(|p| p.space == space))
        {
            log::info!(
                "remove-deleted: space {space} waits for snapshot {} (expires {})",
                s.name,
                s.expires
            );
            out.remaining += 1;
            continue;
        }
        let row = cluster.space(space)?;
        if let (Some(r), Some(only)) = (&row, opts.storage_node)
            && r.node_id != only
        {
            continue;
        }
        if opts.dry_run {
            out.lines.push(match &row {
                Some(r) => format!(
                    "{verb} space {space} (storage node {}, DELETE job {job})",
                    r.node_id
                ),
                None => format!("{verb} DELETE job {job} (space {space} is already gone)"),
            });
            out.done += 1;
            continue;
        }
        match purge_space(cluster, job, space)? {
            true => {
                out.done += 1;
                out.lines
                    .push(format!("{verb} space {space} (DELETE job {job})"));
            }
            false => out.remaining += 1,
        }
        progress(&Progress {
            task: "remove-deleted",
            done: out.done,
            total: out.done + out.remaining,
            bytes: 0,
            item: format!("space {space}"),
        });
    }

    let spaces_done = out.done;
    let (mut inodes, mut objects) = (0, 0);
    // Deleted inodes, node by node.
    let live =
        || -> Result<Vec<u64>> { Ok(cluster.access_points()?.into_iter().map(|a| a.id).collect()) };
    let before = now_ns() - grace.as_nanos() as i64;
    for n in cluster.nodes()? {
        if opts.should_stop(stop) || opts.storage_node.is_some_and(|s| s != n.id) {
            continue;
        }
        let shard = cluster.shard(n.id)?;
        let k = if opts.dry_run {
            shard.count_deleted(before, &live)?
        } else {
            // Not counted: bookkeeping of mounts that are gone.
            shard.forget_lapsed_open_writers()?;
            shard.purge_deleted(before, &live)?
        };
        if k > 0 {
            out.done += k;
            inodes += k;
            out.lines.push(format!(
                "{verb} {k} deleted inode(s) on storage node {}",
                n.id
            ));
        }
    }

    // Objects no inode names any more, node by node (after the inodes, so
    // the objects of the inodes just purged go in the same run).
    let stale_before = now_ns() - grace.max(UPLOAD_STALE).as_nanos() as i64;
    for n in cluster.nodes()? {
        if opts.should_stop(stop) || opts.storage_node.is_some_and(|s| s != n.id) {
            continue;
        }
        let shard = cluster.shard(n.id)?;
        let k = if opts.dry_run {
            shard.count_orphans(before, stale_before, &held)?
        } else {
            let window = Window {
                before,
                stale_before,
                held: &held,
            };
            delete_orphans(cluster, &shard, &window, opts, stop)?
        };
        if k > 0 {
            out.done += k;
            objects += k;
            out.lines.push(format!(
                "{verb} {k} object(s) from the object store (recorded on storage node {})",
                n.id
            ));
        }
    }
    out.kinds = vec![
        (spaces_done, "space", "spaces"),
        (inodes, "inode", "inodes"),
        (objects, "object", "objects"),
    ];
    Ok(out)
}

/// Which orphaned objects go: garbage recorded before `before` in a space
/// no live snapshot holds (`held`), uploads not renewed since `stale_before`.
struct Window<'a> {
    before: i64,
    stale_before: i64,
    held: &'a [u32],
}

/// Deletes the orphaned objects recorded on one node; returns how many. A
/// host that fails is skipped for the rest of the run (the others go on);
/// the first failure is the result.
fn delete_orphans(
    cluster: &Cluster,
    shard: &crate::shard::Shard,
    w: &Window<'_>,
    opts: &TaskOptions,
    stop: &AtomicBool,
) -> Result<u64> {
    let mut n = 0;
    let mut failed = None;
    for host in shard.s3_orphan_hosts(w.before, w.stale_before, w.held)? {
        match delete_orphans_of(cluster, shard, host, w, opts, stop) {
            Ok(k) => n += k,
            Err((k, e)) => {
                n += k;
                log::warn!("remove-deleted: {e:#}");
                failed.get_or_insert(e);
            }
        }
    }
    match failed {
        Some(e) => Err(e.context(format!(
            "{n} object(s) deleted, the others stay for the next run"
        ))),
        None => Ok(n),
    }
}

fn delete_orphans_of(
    cluster: &Cluster,
    shard: &crate::shard::Shard,
    host: u32,
    w: &Window<'_>,
    opts: &TaskOptions,
    stop: &AtomicBool,
) -> Result<u64, (u64, anyhow::Error)> {
    let mut n = 0;
    let store = cluster.object_store(host).map_err(|e| (0, e))?;
    loop {
        let batch = shard
            .s3_orphans(host, w.before, w.stale_before, w.held, 500)
            .map_err(|e| (n, e))?;
        if batch.is_empty() || opts.should_stop(stop) {
            return Ok(n);
        }
        for o in batch {
            if !shard.claim_orphan(&o, w.stale_before).map_err(|e| (n, e))? {
                continue; // its upload finished meanwhile
            }
            if let Some(u) = &o.upload_id {
                store.abort_upload(&o.key, u);
            }
            store.delete(&o.key).map_err(|e| (n, e.into()))?;
            shard.forget_orphan(o.id).map_err(|e| (n, e))?;
            n += 1;
        }
    }
}

/// Purges one deleted space under a `purging` claim; false when it is busy
/// (being moved or purged by another process) and must wait for a later run.
fn purge_space(cluster: &Cluster, job: u64, space: u32) -> Result<bool> {
    let node = match cluster.claim_purge(space)? {
        PurgeClaim::Busy => return Ok(false),
        PurgeClaim::Gone => None,
        PurgeClaim::Claimed(node) => Some(node),
    };
    if let Some(node) = node {
        match cluster.shard(node).and_then(|s| s.purge_space(space)) {
            Ok(()) => {}
            Err(e) if e.is::<Fenced>() || e.is::<HeldBySnapshot>() => {
                let _ = cluster.release_purge(space);
                return Ok(false);
            }
            Err(e) => {
                let _ = cluster.release_purge(space);
                return Err(e.context(format!("purging space {space}")));
            }
        }
    }
    cluster.finish_purge(space, job)?;
    Ok(true)
}
