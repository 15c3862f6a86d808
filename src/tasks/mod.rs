//! Maintenance tasks run by `tshs <task>`, `tshs do-tasks …` and the daemon:
//! copy-shards (finish a split), remove-deleted (purge what was marked
//! deleted), move-to-s3 (tier settled files to the object store),
//! copy-to-s3 and restore-from-s3 (back up to the store, rebuild a lost
//! node from it), perform-import (bring an on-disk tree in), list-files
//! (what a space holds), and fsck (the rows against each other and the
//! buckets). Each task does a bounded step at a time, checks `stop` and the
//! deadline between steps, and can be stopped and restarted at any point
//! without losing anything.

use std::sync::atomic::AtomicBool;
use std::time::Instant;

mod copy_shards;
mod copy_to_s3;
pub mod fsck;
mod import;
mod list_files;
mod manifest;
mod move_to_s3;
mod remove_deleted;
pub mod restore;
mod restore_s3;

pub use restore_s3::Restored;

pub use copy_shards::mirror_progress;

use anyhow::Result;

use crate::cluster::Cluster;

/// How a task runs (from the command line or `/etc/tshs.conf`).
#[derive(Clone, Debug, Default)]
pub struct TaskOptions {
    /// Most worker threads the task starts.
    pub max_threads: usize,
    /// `--time-limit`: stop (between steps) once this passes.
    pub deadline: Option<Instant>,
    /// `--storage-node`: only move data away from this node.
    pub storage_node: Option<u32>,
    /// `--dry-run`: report what would be done, change nothing.
    pub dry_run: bool,
    /// remove-deleted's grace period (default [`remove_deleted::GRACE`]).
    pub grace: Option<std::time::Duration>,
    /// move-to-s3: how long a file must be unchanged (default
    /// [`crate::shard::SETTLE_SECS`]).
    pub settle: Option<std::time::Duration>,
}

impl TaskOptions {
    /// True once the deadline passed or `stop` was raised.
    pub fn should_stop(&self, stop: &AtomicBool) -> bool {
        stop.load(std::sync::atomic::Ordering::Acquire)
            || self.deadline.is_some_and(|d| Instant::now() >= d)
    }
}

/// Where a long task is, for a progress display.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    pub task: &'static str,
    /// Units done and known in total (spaces for copy-shards, inodes for remove-deleted).
    pub done: u64,
    pub total: u64,
    /// Bytes moved or freed so far.
    pub bytes: u64,
    /// What is being worked on now (`space 12: 3.1 MB`).
    pub item: String,
}

/// Receives progress updates (from any thread).
pub type ProgressFn<'a> = &'a (dyn Fn(&Progress) + Sync);

/// What a task run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Units finished in this run.
    pub done: u64,
    /// Units still waiting (0 when the task has nothing more to do).
    pub remaining: u64,
    pub bytes: u64,
    /// Human-readable result lines, printed by the command.
    pub lines: Vec<String>,
    /// What `done` is made of when a task counts several kinds of thing
    /// (remove-deleted: spaces, inodes, objects): (count, one, many).
    pub kinds: Vec<(u64, &'static str, &'static str)>,
}

/// `tshs copy-shards`: moves the spaces of every MIRROR_SHARD node's range
/// from the node that holds them, one space at a time.
pub fn copy_shards(
    cluster: &Cluster,
    opts: &TaskOptions,
    stop: &AtomicBool,
    progress: ProgressFn,
) -> Result<Outcome> {
    counted(
        "copy-shards",
        copy_shards::run(cluster, opts, stop, progress),
    )
}

/// Records a task run in the metrics.
fn counted(task: &'static str, r: Result<Outcome>) -> Result<Outcome> {
    let m = crate::metrics::global();
    let l = crate::metrics::TaskLabel { task };
    m.task_runs.get_or_create(&l).inc();
    match &r {
        Ok(o) => {
            m.task_units.get_or_create(&l).inc_by(o.done);
            m.task_bytes.get_or_create(&l).inc_by(o.bytes);
        }
        Err(_) => {
            m.task_errors.get_or_create(&l).inc();
        }
    }
    r
}

/// `tshs perform-import`: imports what the `IMPORT` job has left.
pub fn perform_import(
    cluster: &Cluster,
    opts: &TaskOptions,
    stop: &AtomicBool,
    progress: ProgressFn,
) -> Result<Outcome> {
    counted("perform-import", import::run(cluster, opts, stop, progress))
}

/// `tshs remove-deleted`: purges inodes and spaces marked deleted once no
/// open handle or upload can still use them.
pub fn remove_deleted(
    cluster: &Cluster,
    opts: &TaskOptions,
    stop: &AtomicBool,
    progress: ProgressFn,
) -> Result<Outcome> {
    counted(
        "remove-deleted",
        remove_deleted::run(cluster, opts, stop, progress),
    )
}

/// `tshs move-to-s3`: moves settled files to the current S3 host.
pub fn move_to_s3(
    cluster: &Cluster,
    opts: &TaskOptions,
    stop: &AtomicBool,
    progress: ProgressFn,
) -> Result<Outcome> {
    counted("move-to-s3", move_to_s3::run(cluster, opts, stop, progress))
}

/// Per Storage Node: the files and bytes waiting for move-to-s3, or why
/// the node could not be asked.
pub type Waiting = Vec<(u32, Result<(u64, u64)>)>;

/// [`Waiting`] for `transfer-to-s3-info`.
pub fn waiting_for_s3(
    cluster: &Cluster,
    host: Option<&crate::object_store::S3Host>,
) -> Result<Waiting> {
    move_to_s3::waiting_per_node(cluster, host)
}

/// `tshs copy-to-s3`: writes each changed space's manifest and backs up
/// every changed `last.log` to the current S3 host.
pub fn copy_to_s3(
    cluster: &Cluster,
    opts: &TaskOptions,
    stop: &AtomicBool,
    progress: ProgressFn,
) -> Result<Outcome> {
    counted("copy-to-s3", copy_to_s3::run(cluster, opts, stop, progress))
}

/// `tshs restore-from-s3 <storage-id> <connection-options>`.
pub fn restore_from_s3(
    cluster: &Cluster,
    node: u32,
    conn: &crate::config::ConnOptions,
) -> Result<Restored> {
    restore_s3::run(cluster, node, conn)
}

/// A file's state, as `list-files` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileState {
    InDb,
    OnS3,
    /// Still read from the tree import-volumes brought in.
    OnDisk,
    ReadOnly,
    Deleted,
}

impl FileState {
    pub fn as_str(self) -> &'static str {
        match self {
            FileState::InDb => "InDB",
            FileState::OnS3 => "OnS3",
            FileState::OnDisk => "OnDisk",
            FileState::ReadOnly => "R/O",
            FileState::Deleted => "deleted",
        }
    }
}

/// One row of `tshs list-files`.
#[derive(Clone, Debug)]
pub struct FileRow {
    /// Inode number as the mount shows it.
    pub ino: u64,
    pub size: u64,
    pub state: FileState,
    /// Path inside the space (`protolog/last.log`); deleted files show their last name or `(inode N)`.
    pub path: String,
}

/// `tshs list-files <space> [path]`: the regular files of a space (under
/// `path`, a directory or a file inside it), sorted by path.
pub fn list_files(cluster: &Cluster, space: u32, path: Option<&str>) -> Result<Vec<FileRow>> {
    list_files::run(cluster, space, path)
}
