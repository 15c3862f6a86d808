//! perform-import: finishes the `IMPORT` job (see [`crate::import`]). For
//! each space of the job: its tree if no mount brought it in yet, then each
//! file's data, on up to `--max-threads` threads. A job with an S3 host
//! (`s3-host-id=…`) uploads the files that host takes (its MinSize and
//! MaxSize; never a `last.log`) straight from disk to it, as move-to-s3
//! would, instead of writing them to the database first; every other file
//! is copied into its extents, small files many to a transaction. Stopped
//! (`--time-limit`, a signal) between files, it resumes where it stopped:
//! what is left is what still names its file on disk.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Result, anyhow, bail};

use super::move_to_s3::{Moved, move_one};
use super::{Outcome, Progress, ProgressFn, TaskOptions};
use crate::cluster::{Cluster, ImportJob, ImportLeases as Leases, ImportingSpace, Route, Router};
use crate::object_store::{S3Host, S3Store};
use crate::shard::Candidate;

/// A file left on disk: inode, size, mtime, ctime, stored, its path, and
/// whether it is a `last.log`.
use crate::shard::OnDisk as File;

/// Files fetched per query.
const BATCH: usize = 500;

pub fn run(
    cluster: &Cluster,
    opts: &TaskOptions,
    stop: &AtomicBool,
    progress: ProgressFn,
) -> Result<Outcome> {
    let mut out = Outcome::default();
    for job in cluster.import_jobs()?.into_iter().filter(|j| !j.finished) {
        run_job(cluster, &job, opts, stop, progress, &mut out)?;
    }
    Ok(out)
}

fn run_job(
    cluster: &Cluster,
    job: &ImportJob,
    opts: &TaskOptions,
    stop: &AtomicBool,
    progress: ProgressFn,
    out: &mut Outcome,
) -> Result<()> {
    let spaces = cluster.importing_spaces(job.id)?;
    let s3 = match job.s3_host {
        Some(h) => Some((cluster.s3_host(h)?, cluster.object_store(h)?)),
        None => None,
    };
    let w = Work {
        cluster,
        s3: s3.as_ref(),
        opts,
        stop,
        progress,
        total: spaces.len() as u64,
        done: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
    };
    let mut errors: Vec<(u32, String)> = Vec::new();
    let mut leases = Leases::new(cluster)?;
    // Processes running at once start at different spaces.
    let start = (std::process::id() as usize) % spaces.len().max(1);
    for s in spaces.iter().cycle().skip(start).take(spaces.len()) {
        if opts.should_stop(stop) {
            break;
        }
        if !leases.take(s.id)? {
            out.lines.push(format!(
                "space {}: another perform-import is at it; left to it",
                s.id
            ));
            continue;
        }
        let r = w.space(s, &mut out.lines);
        leases.give_back(s.id);
        match r {
            Ok(true) => {
                w.done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(false) => {}
            // One space failing does not hold up the others.
            Err(e) => {
                log::debug!("perform-import: space {}: {e:#}", s.id);
                errors.push((s.id, format!("space {}: {e:#}", s.id)));
            }
        }
    }
    out.done += w.done.load(Ordering::Relaxed);
    out.bytes += w.bytes.load(Ordering::Relaxed);
    if let Some((_, first)) = errors.first() {
        let ids: Vec<String> = errors.iter().map(|e| e.0.to_string()).collect();
        bail!(
            "import job {}: {} space(s) could not be imported ({}; the others went on); first: {first}",
            job.id,
            errors.len(),
            ids.join(", ")
        );
    }
    if cluster.finish_import(job.id)? {
        out.lines.push(format!(
            "import job {}: everything is imported from {}; the job is IMPORTED",
            job.id,
            job.path.display()
        ));
    } else {
        out.remaining += cluster.importing_spaces(job.id)?.len() as u64;
        out.lines.push(format!(
            "import job {}: {} of {} space(s) finished in this run, {} left",
            job.id,
            w.done.load(Ordering::Relaxed),
            w.total,
            out.remaining
        ));
    }
    Ok(())
}

/// One run over a job's spaces.
struct Work<'a> {
    cluster: &'a Cluster,
    s3: Option<&'a (S3Host, Arc<S3Store>)>,
    opts: &'a TaskOptions,
    stop: &'a AtomicBool,
    progress: ProgressFn<'a>,
    total: u64,
    done: AtomicU64,
    bytes: AtomicU64,
}

impl Work<'_> {
    fn report(&self, item: String) {
        (self.progress)(&Progress {
            task: "perform-import",
            done: self.done.load(Ordering::Relaxed),
            total: self.total,
            bytes: self.bytes.load(Ordering::Relaxed),
            item,
        })
    }

    /// Imports what is left of one space; true when nothing is left.
    fn space(&self, s: &ImportingSpace, lines: &mut Vec<String>) -> Result<bool> {
        let (cluster, opts, stop) = (self.cluster, self.opts, self.stop);
        if let Some(dir) = &s.tree {
            self.report(format!("space {}: tree", s.id));
            if let Some(t) = crate::import::bring_tree_in(cluster, s.id, dir)? {
                lines.push(format!(
                    "space {}: imported {} inodes, {} names from {}",
                    s.id,
                    t.inodes,
                    t.entries,
                    dir.display()
                ));
            }
        }
        let failed: Mutex<Vec<anyhow::Error>> = Mutex::default();
        let mut after = 0u64;
        loop {
            if opts.should_stop(stop) {
                return Ok(false);
            }
            // Placement afresh for every batch: this process does not follow
            // moves by acknowledging them (see `left_on_disk`).
            let route = Router::new(cluster.clone()).route(s.id);
            let files = crate::shard::files_on_disk(&route, s.id, after, BATCH)?;
            let Some(last) = files.last() else { break };
            after = last.ino;
            let queue = Mutex::new(self.steps(files).into_iter());
            std::thread::scope(|scope| {
                for _ in 0..opts.max_threads.max(1) {
                    scope.spawn(|| {
                        loop {
                            if opts.should_stop(stop) {
                                return;
                            }
                            let Some(step) = queue.lock().unwrap().next() else {
                                return;
                            };
                            let (bytes, errors) = match step {
                                Step::Upload(f) => {
                                    let (host, store) = self.s3.expect("uploads need a host");
                                    self.report(format!(
                                        "space {}: inode {}, {} bytes to S3",
                                        s.id, f.ino, f.size
                                    ));
                                    match upload(cluster, store, host, s.id, &f, opts, stop) {
                                        Ok(n) => (n, Vec::new()),
                                        Err(e) => (0, vec![e]),
                                    }
                                }
                                Step::Copy(group) => {
                                    self.report(format!(
                                        "space {}: {} file(s) from inode {}",
                                        s.id,
                                        group.len(),
                                        group[0]
                                    ));
                                    copy_in(&route, s.id, &group)
                                }
                            };
                            self.bytes.fetch_add(bytes, Ordering::Relaxed);
                            if !errors.is_empty() && !opts.should_stop(stop) {
                                for e in &errors {
                                    log::debug!("{e:#}");
                                }
                                failed.lock().unwrap().extend(errors);
                            }
                        }
                    });
                }
            });
            let failed = std::mem::take(&mut *failed.lock().unwrap());
            if let Some(first) = failed.first() {
                bail!(
                    "{} file(s) could not be imported; first: {first:#}",
                    failed.len()
                );
            }
        }
        if left_on_disk(cluster, s.id)? == Some(0) {
            cluster.data_imported(s.id)?;
            return Ok(true);
        }
        Ok(false)
    }
}

/// What a worker does next: upload one file to S3, or copy a group of
/// files into the database in one transaction.
enum Step {
    Upload(File),
    Copy(Vec<u64>),
}

/// Files per copy transaction, and bytes: one commit per small file would
/// bound the import by the database's commit rate.
const GROUP_FILES: usize = 64;
const GROUP_BYTES: u64 = 8 << 20;

impl Work<'_> {
    /// A batch of files as steps: uploads for what the job's S3 host takes,
    /// the rest copied in groups.
    fn steps(&self, files: Vec<File>) -> Vec<Step> {
        let mut steps = Vec::new();
        let (mut group, mut bytes) = (Vec::new(), 0u64);
        for f in files {
            if let Some((host, _)) = self.s3
                && !f.is_last_log
                && host.options.eligible(f.size)
            {
                steps.push(Step::Upload(f));
                continue;
            }
            if !group.is_empty() && (group.len() >= GROUP_FILES || bytes + f.size > GROUP_BYTES) {
                steps.push(Step::Copy(std::mem::take(&mut group)));
                bytes = 0;
            }
            bytes += f.size;
            group.push(f.ino);
        }
        if !group.is_empty() {
            steps.push(Step::Copy(group));
        }
        steps
    }
}

/// Copies a group of files in; if that fails, one by one, so one bad file
/// does not keep the others out. Returns the bytes copied and what failed.
fn copy_in(route: &Route, space: u32, group: &[u64]) -> (u64, Vec<anyhow::Error>) {
    use crate::shard::extents::bring_in;
    match bring_in(route, route.cluster(), space, group) {
        Ok(n) => (n, Vec::new()),
        Err(e) if group.len() == 1 => (0, vec![anyhow!(e)]),
        Err(_) => {
            let (mut bytes, mut errors) = (0, Vec::new());
            for &ino in group {
                match bring_in(route, route.cluster(), space, &[ino]) {
                    Ok(n) => bytes += n,
                    Err(e) => errors.push(anyhow!(e)),
                }
            }
            (bytes, errors)
        }
    }
}

/// How many live files of a space still name their file on disk, counted
/// on the node that holds the space: `None` if it is being moved or moved
/// while counting (a node it left may already have lost its rows).
fn left_on_disk(cluster: &Cluster, space: u32) -> Result<Option<u64>> {
    let placed = || -> Result<Option<u32>> {
        if cluster.space_moving(space)? {
            return Ok(None);
        }
        Ok(cluster.space(space)?.map(|r| r.node_id))
    };
    let Some(node) = placed()? else {
        return Ok(None);
    };
    let n = crate::shard::count_on_disk(&cluster.shard(node)?, space)?;
    Ok(if placed()? == Some(node) { n } else { None })
}

/// Uploads one file from disk to the job's S3 host; the bytes moved (0 if
/// it changed meanwhile: then it is in the database already, or is taken
/// up at the next run).
fn upload(
    cluster: &Cluster,
    store: &S3Store,
    host: &S3Host,
    space: u32,
    f: &File,
    opts: &TaskOptions,
    stop: &AtomicBool,
) -> Result<u64> {
    let c = Candidate {
        space,
        ino: f.ino,
        size: f.size,
        mtime: f.mtime,
        ctime: f.ctime,
        stored: f.stored,
    };
    // The node that holds the space now (a move since the batch began makes
    // the last step fail, and the file waits for the next run).
    let node = cluster
        .space(space)?
        .ok_or_else(|| anyhow!("space {space} is not in the Admin Node"))?
        .node_id;
    let shard = cluster.shard(node)?;
    let file = crate::disk_tier::DiskFile::new(&f.path, c.size, f.disk_mtime);
    let read = |off: u64, len: usize| -> Result<Vec<u8>> {
        Ok(crate::disk_tier::read_span(&file, off, off + len as u64)?)
    };
    Ok(
        match move_one(&shard, store, host, &c, &read, opts, stop)? {
            Moved::Done => c.size,
            Moved::Changed => 0,
        },
    )
}
