//! copy-shards: after a split, moves each space of the new (MIRROR_SHARD)
//! node's range from the node that holds it, while the space is in use.
//!
//! A move is claimed in the Admin Node's `space_moves` under a lease that the
//! worker renews; a lapsed lease is taken over (a new token), so a killed
//! process delays a move but never blocks or duplicates it. The phases:
//! 1. `copying`: online rounds copy the space (see [`SpaceCopy`]); then the
//!    source is fenced for a few seconds, a last round makes the copy exact,
//!    and the fence is sealed if it held (else fence again);
//! 2. one Admin Node transaction names the new node for the space, marks
//!    the move `switched` and bumps the topology epoch; the new node opens;
//! 3. once every live access point acknowledged that epoch (none still
//!    reads the old placement), the old rows are dropped and the move ends.
//!
//! A run stopped by `--time-limit` or SIGTERM releases its lease; the next
//! run compares instead of copying again, so nothing is redone or lost.

use std::cell::Cell;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::{Outcome, Progress, ProgressFn, TaskOptions};
use crate::cluster::{Cluster, NodeRow, Phase, SpaceMove};
use crate::placement::hash32;
use crate::shard::{RoundStats, Shard, SpaceCopy, open_space, purge_moved};

/// How often a claimed move's lease is renewed while the worker works (it
/// lasts [`crate::cluster::MOVE_LEASE_SECS`]).
const RENEW: Duration = Duration::from_secs(5);
/// How long the source stays fenced for the last round before it must be
/// sealed; a write waits at most about this long.
const FENCE_SECS: u32 = 10;
/// The longest fence, for the biggest spaces (see `move_space`).
const MAX_FENCE_SECS: u32 = 60;
const FENCE_ATTEMPTS: usize = 3;
/// Online rounds before fencing (the first copies, the second catches up).
const ONLINE_ROUNDS: usize = 2;
/// How long to wait for access points to acknowledge a cut-over.
const ACK_WAIT: Duration = Duration::from_secs(60);

/// A space that has to move from `from` to `to`.
#[derive(Clone, Debug)]
struct Candidate {
    space: u32,
    from: u32,
    to: u32,
}

pub fn run(
    cluster: &Cluster,
    opts: &TaskOptions,
    stop: &AtomicBool,
    progress: ProgressFn,
) -> Result<Outcome> {
    let mut out = Outcome::default();
    let owner = format!(
        "{}:{}",
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default(),
        std::process::id()
    );
    // Spaces this run could not claim (someone else holds them) or failed.
    let mut skipped: Vec<u32> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    loop {
        let candidates = candidates(cluster, opts)?;
        activate_finished(cluster, &candidates, &mut out)?;
        let todo: Vec<&Candidate> = candidates
            .iter()
            .filter(|c| !skipped.contains(&c.space))
            .collect();
        out.remaining = candidates.len() as u64;
        if todo.is_empty() || opts.should_stop(stop) {
            break;
        }
        // Start at a different place in each process, so parallel runs
        // rarely contend for the same space.
        let start = (std::process::id() as usize) % todo.len();
        let mut claimed = None;
        let mut renamed = false;
        for c in todo.iter().cycle().skip(start).take(todo.len()) {
            // A space whose tree is still to be imported has no rows yet.
            if cluster.switch_unimported(c.space, c.from, c.to)? {
                out.done += 1;
                out.lines.push(format!(
                    "Space {}: moved from storage node {} to {} (not imported yet: nothing to copy)",
                    c.space, c.from, c.to
                ));
                renamed = true;
                continue;
            }
            if let Some(claim) = cluster.claim_move(c.space, c.from, c.to, &owner)? {
                claimed = Some(claim);
                break;
            }
            skipped.push(c.space);
        }
        let Some(claim) = claimed else {
            if renamed {
                continue;
            }
            break;
        };
        progress(&Progress {
            task: "copy-shards",
            done: out.done,
            total: out.done + candidates.len() as u64,
            bytes: out.bytes,
            item: format!("space {}: node {} -> {}", claim.space, claim.from, claim.to),
        });
        match move_space(cluster, &claim, opts, stop, &mut |bytes| {
            progress(&Progress {
                task: "copy-shards",
                done: out.done,
                total: out.done + candidates.len() as u64,
                bytes: out.bytes + bytes,
                item: format!("space {}: {} copied", claim.space, human(bytes)),
            })
        }) {
            Ok(Some(bytes)) => {
                out.done += 1;
                out.bytes += bytes;
                out.lines.push(format!(
                    "Space {}: moved from storage node {} to {} ({})",
                    claim.space,
                    claim.from,
                    claim.to,
                    human(bytes)
                ));
            }
            Ok(None) => {
                release(cluster, &claim);
                break; // stopped: time limit or signal
            }
            Err(e) if e.is::<AckTimeout>() => {
                // Every other space would wait as long: stop here.
                release(cluster, &claim);
                return Err(e.context(format!("space {}", claim.space)));
            }
            Err(e) => {
                // One space failing does not stop the others; the run
                // fails at the end (a later run retries the space).
                release(cluster, &claim);
                log::warn!("copy-shards: space {}: {e:#}", claim.space);
                skipped.push(claim.space);
                failures.push(format!("space {}: {e:#}", claim.space));
            }
        }
    }
    let left = candidates(cluster, opts)?;
    activate_finished(cluster, &left, &mut out)?;
    out.remaining = left.len() as u64;
    if let Some(first) = failures.first() {
        bail!(
            "{} space(s) could not be moved ({} moved); first: {first}",
            failures.len(),
            out.done
        );
    }
    Ok(out)
}

/// Every space that still has to move (or whose old rows still have to be
/// dropped), for every MIRROR_SHARD node.
fn candidates(cluster: &Cluster, opts: &TaskOptions) -> Result<Vec<Candidate>> {
    let nodes = cluster.nodes()?;
    let mut out = Vec::new();
    for m in nodes.iter().filter(|n| n.phase == Phase::MirrorShard) {
        let Some(src) = m.source else { continue };
        if opts.storage_node.is_some_and(|s| s != src) {
            continue;
        }
        // Deleted spaces are not copied: remove-deleted purges them where
        // they are (the node becomes active once they are gone).
        let ids = cluster.movable_spaces(src)?;
        out.extend(
            ids.into_iter()
                .filter(|&s| m.range.contains(hash32(s)))
                .map(|space| Candidate {
                    space,
                    from: src,
                    to: m.id,
                }),
        );
        let switched = cluster.switched_moves(m.id)?;
        out.extend(switched.into_iter().map(|space| Candidate {
            space,
            from: src,
            to: m.id,
        }));
    }
    Ok(out)
}

/// Turns MIRROR_SHARD nodes with nothing left to receive ACTIVE_SHARD.
fn activate_finished(cluster: &Cluster, left: &[Candidate], out: &mut Outcome) -> Result<()> {
    for m in cluster.nodes()? {
        if m.phase != Phase::MirrorShard || left.iter().any(|c| c.to == m.id) {
            continue;
        }
        if !mirror_done(cluster, &m)? {
            continue;
        }
        if cluster.activate_mirror(m.id)? {
            out.lines.push(format!(
                "Storage node {} is ACTIVE_SHARD: all of its spaces have moved",
                m.id
            ));
        }
    }
    Ok(())
}

/// True when no space of the node's range is left on its source and no move
/// to it is unfinished (checked without the task's filters).
fn mirror_done(cluster: &Cluster, m: &NodeRow) -> Result<bool> {
    let Some(src) = m.source else {
        return Ok(true);
    };
    let ids = cluster.spaces_on(src)?;
    if ids.iter().any(|&s| m.range.contains(hash32(s))) {
        return Ok(false);
    }
    Ok(cluster.moves_to(m.id)? == 0)
}

/// (moved, total) spaces of a MIRROR_SHARD node's range, for list-storage-nodes.
pub fn mirror_progress(cluster: &Cluster, m: &NodeRow) -> Result<(u64, u64)> {
    let Some(src) = m.source else {
        return Ok((0, 0));
    };
    let rows = cluster.spaces_on_either(src, m.id)?;
    let mine: Vec<_> = rows
        .into_iter()
        .filter(|(s, _)| m.range.contains(hash32(*s)))
        .collect();
    let moved = mine.iter().filter(|(_, n)| *n == m.id).count() as u64;
    Ok((moved, mine.len() as u64))
}

/// Gives a claim up so another run can take it at once (if that fails, its
/// lease lapses soon anyway).
fn release(cluster: &Cluster, claim: &SpaceMove) {
    let _ = cluster.release_move(claim);
}

/// Renews the lease; fails if the move was taken over.
fn renew(cluster: &Cluster, claim: &SpaceMove, bytes: u64) -> Result<()> {
    if !cluster.renew_move(claim, bytes)? {
        bail!("the move was taken over by another copy-shards process");
    }
    Ok(())
}

/// Moves one claimed space. `Ok(None)`: stopped before the cut-over.
fn move_space(
    cluster: &Cluster,
    claim: &SpaceMove,
    opts: &TaskOptions,
    stop: &AtomicBool,
    report: &mut dyn FnMut(u64),
) -> Result<Option<u64>> {
    let src_node = cluster.node(claim.from)?;
    let dst_node = cluster.node(claim.to)?;
    // Two connections each: a copy round streams from one of the source and
    // writes through one of the destination while it reads or writes with
    // the other (`SpaceCopy::sync`).
    let src = Shard::copier(claim.from, &src_node.conn, 2)
        .with_context(|| format!("storage node {}", claim.from))?;
    let dst = Shard::copier(claim.to, &dst_node.conn, 2)
        .with_context(|| format!("storage node {}", claim.to))?;
    let bytes = Cell::new(0u64);
    if !claim.switched {
        let copy = SpaceCopy::new(&src, &dst, claim.space, claim.token)?;
        copy.claim()?;
        renew(cluster, claim, 0)?;
        let last_renew = Cell::new(Instant::now());
        let stopped = Cell::new(false);
        let mut keep_going = |s: &RoundStats, online: bool| -> Result<()> {
            if last_renew.get().elapsed() >= RENEW {
                renew(cluster, claim, bytes.get() + s.bytes)?;
                last_renew.set(Instant::now());
            }
            report(bytes.get() + s.bytes);
            if online && opts.should_stop(stop) {
                stopped.set(true);
                bail!("stopped");
            }
            Ok(())
        };
        let mut last_round = Duration::ZERO;
        for round in 0..ONLINE_ROUNDS {
            let t = Instant::now();
            match copy.round(round == 0, &mut |s| keep_going(s, true)) {
                Ok(s) => {
                    bytes.set(bytes.get() + s.bytes);
                    last_round = t.elapsed();
                }
                Err(_) if stopped.get() => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        // The last round compares what the online one did; a big space
        // needs a longer fence (writers wait at most this long).
        let fence_secs = (FENCE_SECS as f64).max(3.0 * last_round.as_secs_f64() + 2.0);
        let fence_secs = fence_secs.min(MAX_FENCE_SECS as f64).ceil() as u32;
        let mut sealed = false;
        for attempt in 1..=FENCE_ATTEMPTS {
            copy.fence_source(fence_secs)?;
            let t = Instant::now();
            let s = match copy.round(false, &mut |s| keep_going(s, false)) {
                Ok(s) => s,
                Err(e) => {
                    copy.unfence_source();
                    return Err(e);
                }
            };
            bytes.set(bytes.get() + s.bytes);
            if copy.seal_source()? {
                log::debug!(
                    "space {}: cut-over round copied {} rows in {:?}",
                    claim.space,
                    s.rows,
                    t.elapsed()
                );
                sealed = true;
                break;
            }
            log::warn!(
                "space {}: the last round took {:?}, longer than the fence (attempt {attempt})",
                claim.space,
                t.elapsed()
            );
        }
        if !sealed {
            copy.unfence_source();
            bail!(
                "could not copy the last changes within {fence_secs} s; the space stays on node {} for now",
                claim.from
            );
        }
        copy.open_destination()?;
        switch(cluster, claim)?;
    } else {
        open_space(&dst, claim.space, claim.token)?;
    }
    wait_for_acks(cluster, claim)?;
    purge_moved(&src, claim.space)?;
    cluster.end_move(claim)?;
    Ok(Some(bytes.get()))
}

/// Names the new node for the space and bumps the epoch, if the move is still ours.
fn switch(cluster: &Cluster, claim: &SpaceMove) -> Result<()> {
    if !cluster.switch_move(claim)? {
        bail!("the move was taken over by another copy-shards process");
    }
    Ok(())
}

/// Live access points that did not acknowledge a cut-over in time.
#[derive(Debug, thiserror::Error)]
#[error(
    "{0} access point(s) did not acknowledge the cut-over within 60 s (see tshs list-access-points); the old rows stay until a later run"
)]
struct AckTimeout(u64);

/// Waits until every live access point acknowledged the current epoch.
fn wait_for_acks(cluster: &Cluster, claim: &SpaceMove) -> Result<()> {
    let epoch = cluster.epoch()?;
    let start = Instant::now();
    let mut last_renew = Instant::now();
    loop {
        let n = cluster.unacknowledged(epoch)?;
        if n == 0 {
            return Ok(());
        }
        if start.elapsed() > ACK_WAIT {
            return Err(AckTimeout(n).into());
        }
        if last_renew.elapsed() >= RENEW {
            renew(cluster, claim, 0)?;
            last_renew = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sizes in binary units (KiB, MiB), as everywhere else in tshs.
pub(super) fn human(bytes: u64) -> String {
    indicatif::BinaryBytes(bytes).to_string()
}
