//! perform-import: finishes the `IMPORT` job (see [`crate::import`]). For
//! each space of the job: its tree if no mount brought it in yet, then each
//! file's data, on up to `--max-threads` threads. A job with an S3 host
//! (`s3-host-id=…`) uploads the files that host takes (its MinSize and
//! MaxSize; never a `last.log`) straight from disk to it, as move-to-s3
//! would, instead of writing them to the database first; every other file
//! is copied into its extents, one transaction per file. Stopped
//! (`--time-limit`, a signal) between files, it resumes where it stopped:
//! what is left is what still names its file on disk.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::{Result, anyhow, bail};
use mysql::prelude::Queryable;

use super::move_to_s3::{Moved, move_one};
use super::{Outcome, Progress, ProgressFn, TaskOptions};
use crate::cluster::{Cluster, ImportJob, Router};
use crate::object_store::{S3Host, S3Store};
use crate::shard::{Candidate, Shard};

/// A file left on disk: inode, size, mtime, ctime, stored, its path, and
/// whether it is a `last.log`.
type File = (u64, u64, i64, i64, u64, Vec<u8>, bool);

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
    let total = spaces.len() as u64;
    let (done, bytes, failed) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let report = |item: String| {
        progress(&Progress {
            task: "perform-import",
            done: done.load(Ordering::Relaxed),
            total,
            bytes: bytes.load(Ordering::Relaxed),
            item,
        })
    };
    let s3 = match job.s3_host {
        Some(h) => Some((cluster.s3_host(h)?, cluster.object_store(h)?)),
        None => None,
    };
    let mut finished_spaces = 0u64;
    for s in &spaces {
        if opts.should_stop(stop) {
            break;
        }
        // A route of our own per space: this process does not follow moves
        // by acknowledging them, so it looks placement up afresh.
        let route = Router::new(cluster.clone()).route(s.id);
        if let Some(dir) = &s.tree {
            report(format!("space {}: tree", s.id));
            if let Some(t) = crate::import::import_tree(&route, s.id, dir)? {
                out.lines.push(format!(
                    "space {}: imported {} inodes, {} names from {}",
                    s.id,
                    t.inodes,
                    t.entries,
                    dir.display()
                ));
            }
            cluster.tree_imported(s.id)?;
        }
        let node = cluster
            .space(s.id)?
            .map(|r| r.node_id)
            .ok_or_else(|| anyhow!("space {} is not in the Admin Node", s.id))?;
        let shard = cluster.shard(node)?;
        let mut after = 0u64;
        loop {
            let files: Vec<File> = route.read(|c| {
                c.exec(
                    format!(
                        "SELECT i.ino, i.size, i.mtime, i.ctime, i.stored, i.import_path,
                           EXISTS (SELECT 1 FROM dentries d WHERE d.space_id = i.space_id AND d.ino = i.ino AND d.name = 'last.log')
                         FROM inodes i WHERE i.space_id = ? AND i.ino > ? AND i.import_path IS NOT NULL
                         ORDER BY i.ino LIMIT {BATCH}"
                    ),
                    (s.id, after),
                )
            })?;
            let Some(last) = files.last() else { break };
            after = last.0;
            let queue = Mutex::new(files.into_iter());
            std::thread::scope(|scope| {
                for _ in 0..opts.max_threads.max(1) {
                    scope.spawn(|| {
                        let route = Router::new(cluster.clone()).route(s.id);
                        loop {
                            if opts.should_stop(stop) {
                                return;
                            }
                            let Some(f) = queue.lock().unwrap().next() else {
                                return;
                            };
                            report(format!("space {}: inode {}, {} bytes", s.id, f.0, f.1));
                            let r = match &s3 {
                                Some((host, store)) if !f.6 && host.options.eligible(f.1) => {
                                    upload(&shard, store, host, s.id, &f, opts, stop)
                                }
                                _ => crate::fs::data::bring_in(&route, s.id, f.0)
                                    .map_err(|e| anyhow!("errno {} (see the log)", e.0)),
                            };
                            match r {
                                Ok(n) => {
                                    bytes.fetch_add(n, Ordering::Relaxed);
                                }
                                Err(_) if opts.should_stop(stop) => return,
                                Err(e) => {
                                    log::error!("space {} inode {}: {e:#}", s.id, f.0);
                                    failed.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    });
                }
            });
            if opts.should_stop(stop) || failed.load(Ordering::Relaxed) > 0 {
                break;
            }
        }
        // Done when nothing names a file on disk any more (an upload that
        // lost a race with a change or a move leaves its file for later).
        let left: Option<u64> = route.read(|c| {
            c.exec_first(
                "SELECT COUNT(*) FROM inodes WHERE space_id = ? AND import_path IS NOT NULL",
                (s.id,),
            )
        })?;
        let complete = left == Some(0);
        if complete {
            cluster.data_imported(s.id)?;
            finished_spaces += 1;
            done.fetch_add(1, Ordering::Relaxed);
        }
    }
    out.done += finished_spaces;
    out.bytes += bytes.load(Ordering::Relaxed);
    let failed = failed.load(Ordering::Relaxed);
    if failed > 0 {
        bail!(
            "import job {}: {failed} file(s) could not be imported from {} (see the log); the rest goes on at the next run",
            job.id,
            job.path.display()
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
            "import job {}: {} of {total} space(s) finished in this run, {} left",
            job.id, finished_spaces, out.remaining
        ));
    }
    Ok(())
}

/// Uploads one file from disk to the job's S3 host; the bytes moved (0 if
/// it changed meanwhile: then it is in the database already, or is taken
/// up at the next run).
fn upload(
    shard: &Shard,
    store: &S3Store,
    host: &S3Host,
    space: u32,
    f: &File,
    opts: &TaskOptions,
    stop: &AtomicBool,
) -> Result<u64> {
    let c = Candidate {
        space,
        ino: f.0,
        size: f.1,
        mtime: f.2,
        ctime: f.3,
        stored: f.4,
    };
    let path = crate::import::path_of(&f.5);
    let read = |off: u64, len: usize| -> Result<Vec<u8>> {
        Ok(crate::import::read_span(
            path,
            c.size,
            off,
            off + len as u64,
        )?)
    };
    Ok(match move_one(shard, store, host, &c, &read, opts, stop)? {
        Moved::Done => c.size,
        Moved::Changed => 0,
    })
}
