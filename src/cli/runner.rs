//! Running maintenance tasks from the command line: the task names and the
//! order `do-tasks` runs them in, retries after an error (one-off runs
//! only), the progress display, and the lines a run prints. The tasks
//! themselves live in [`crate::tasks`].

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use indicatif::BinaryBytes;

use super::Cli;
use super::progress::{Display, Reporter, unit};
use super::stop::Stop;
use crate::cluster::Cluster;
use crate::tasks::{self, Outcome, ProgressFn, TaskOptions};

/// The maintenance tasks, in the order the reference runs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Task {
    CopyShards,
    RemoveDeleted,
    PerformImport,
    MoveToS3,
    CopyToS3,
}

const ALL: [Task; 5] = [
    Task::CopyShards,
    Task::RemoveDeleted,
    Task::PerformImport,
    Task::MoveToS3,
    Task::CopyToS3,
];

const NAMES: &str =
    "all, copy-shards, remove-deleted, perform-import, move-to-s3, copy-to-s3, all-not-s3-copy";

impl Task {
    pub fn name(self) -> &'static str {
        match self {
            Task::CopyShards => "copy-shards",
            Task::RemoveDeleted => "remove-deleted",
            Task::PerformImport => "perform-import",
            Task::MoveToS3 => "move-to-s3",
            Task::CopyToS3 => "copy-to-s3",
        }
    }
}

/// `do-tasks` arguments → the tasks to run, each once, in the reference's order.
pub fn parse_tasks(names: &[String]) -> Result<Vec<Task>> {
    if names.is_empty() {
        bail!("do-tasks: name at least one task ({NAMES})");
    }
    let mut tasks = BTreeSet::new();
    for name in names {
        match name.as_str() {
            "all" => tasks.extend(ALL),
            "all-not-s3-copy" => tasks.extend(ALL.into_iter().filter(|t| *t != Task::CopyToS3)),
            other => {
                let t = ALL
                    .into_iter()
                    .find(|t| t.name() == other)
                    .ok_or_else(|| anyhow!("do-tasks: unknown task '{other}' (known: {NAMES})"))?;
                tasks.insert(t);
            }
        }
    }
    Ok(tasks.into_iter().collect())
}

/// `--retry`: how often a failed one-off task is tried again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    Times(u32),
    Unlimited,
}

impl Retry {
    fn allows(self, failures: u32) -> bool {
        match self {
            Retry::Times(n) => failures < n,
            Retry::Unlimited => true,
        }
    }
}

/// The `--retry` value parser.
pub fn parse_retry(s: &str) -> Result<Retry, String> {
    match s {
        "unlimited" => Ok(Retry::Unlimited),
        _ => s
            .parse()
            .map(Retry::Times)
            .map_err(|_| "expected a number of retries or 'unlimited'".into()),
    }
}

/// Longest pause, interval or time limit: about 30 years, so adding it to
/// the clock never overflows.
pub const MAX_SECONDS: u64 = 1_000_000_000;

/// The value parser of options given in whole seconds.
pub fn parse_seconds(s: &str) -> Result<u64, String> {
    s.parse()
        .ok()
        .filter(|n| *n <= MAX_SECONDS)
        .ok_or_else(|| format!("expected a whole number of seconds (0 to {MAX_SECONDS})"))
}

/// How this process runs maintenance tasks (command line or `/etc/tshs.conf`).
pub struct Runner {
    opts: TaskOptions,
    retry: Retry,
    pause: Duration,
    stop: Arc<Stop>,
    display: Display,
    /// Under `repeat` and the daemon: no retries (the next round is the
    /// retry), and "nothing to do" goes to the debug log, not the output.
    repeating: bool,
}

impl Runner {
    /// The `--time-limit` clock starts now.
    pub fn new(cli: &Cli, stop: Arc<Stop>, repeating: bool, display: Display) -> Runner {
        Runner {
            opts: TaskOptions {
                max_threads: cli.max_threads as usize,
                deadline: (cli.time_limit > 0)
                    .then(|| Instant::now() + Duration::from_secs(cli.time_limit)),
                storage_node: cli.storage_node,
                ..TaskOptions::default()
            },
            retry: if repeating {
                Retry::Times(0)
            } else {
                cli.retry
            },
            pause: Duration::from_secs(cli.pause_on_error),
            stop,
            display,
            repeating,
        }
    }

    /// Refuses a `--storage-node` that does not exist, before any work.
    pub fn check(&self, cluster: &Cluster) -> Result<()> {
        if let Some(id) = self.opts.storage_node {
            cluster.node(id)?;
        }
        Ok(())
    }

    /// Stop was raised or the time limit passed.
    pub fn should_stop(&self) -> bool {
        self.opts.should_stop(self.stop.flag())
    }

    pub fn stop(&self) -> &Stop {
        &self.stop
    }

    /// The options every task gets; a command adds its own (`--dry-run`).
    pub fn options(&self) -> TaskOptions {
        self.opts.clone()
    }

    /// How progress shows (a bar, or log lines).
    pub fn display(&self) -> Display {
        self.display
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.opts.deadline
    }

    /// `do-tasks`: runs every task, also after one failed (they are
    /// independent); the error names every failure.
    pub fn do_tasks(&self, cluster: &Cluster, tasks: &[Task], out: &mut dyn Write) -> Result<()> {
        let mut failed = Vec::new();
        for &task in tasks {
            if self.should_stop() {
                let why = if self.stop.is_raised() {
                    "stopped"
                } else {
                    "time limit reached"
                };
                writeln!(out, "{}: not started ({why})", task.name())?;
                continue;
            }
            if let Err(e) = self.run_task(cluster, task, &self.opts, out) {
                failed.push(format!("{e:#}"));
            }
        }
        match failed.len() {
            0 => Ok(()),
            1 => bail!("{}", failed[0]),
            n => bail!("{n} tasks failed: {}", failed.join("; ")),
        }
    }

    /// Runs one task, retrying as `--retry` allows, and writes its result.
    pub fn run_task(
        &self,
        cluster: &Cluster,
        task: Task,
        opts: &TaskOptions,
        out: &mut dyn Write,
    ) -> Result<()> {
        type TaskFn = fn(&Cluster, &TaskOptions, &AtomicBool, ProgressFn) -> Result<Outcome>;
        let run: TaskFn = match task {
            Task::CopyShards => tasks::copy_shards,
            Task::RemoveDeleted => tasks::remove_deleted,
            Task::MoveToS3 => tasks::move_to_s3,
            Task::CopyToS3 => tasks::copy_to_s3,
            Task::PerformImport => tasks::perform_import,
        };
        let mut failures = 0;
        loop {
            let reporter = Reporter::new(self.display);
            let result = run(cluster, opts, self.stop.flag(), &|p| reporter.update(p));
            reporter.finish();
            let e = match result {
                Ok(o) => return self.report(task, &o, opts.dry_run, out),
                Err(e) => e.context(task.name()),
            };
            if !self.retry.allows(failures) || self.should_stop() {
                return Err(e);
            }
            failures += 1;
            log::warn!("{e:#}; retry {failures} in {} s", self.pause.as_secs());
            let until = Instant::now() + self.pause;
            let until = self.opts.deadline.map_or(until, |d| d.min(until));
            if self.stop.sleep_until(until) || self.should_stop() {
                return Err(e);
            }
        }
    }

    fn report(&self, task: Task, o: &Outcome, dry_run: bool, out: &mut dyn Write) -> Result<()> {
        for line in &o.lines {
            writeln!(out, "{line}")?;
        }
        // Under repeat, a round that did nothing (perhaps because what
        // remains must wait) is not worth a log line.
        let idle = o.done == 0 && o.lines.is_empty();
        self.say(out, &summary(task, o, dry_run), idle)
    }

    fn say(&self, out: &mut dyn Write, line: &str, idle: bool) -> Result<()> {
        if idle && self.repeating {
            log::debug!("{line}");
        } else {
            writeln!(out, "{line}")?;
        }
        Ok(())
    }
}

/// The closing line of a task run: `copy-shards: 3 spaces, 11.92 MiB; 17 remaining`,
/// `remove-deleted: 1 space, 12 inodes, 0 objects`.
fn summary(task: Task, o: &Outcome, dry_run: bool) -> String {
    if o.done == 0 && o.remaining == 0 {
        return format!("{}: nothing to do", task.name());
    }
    let mut s = if o.kinds.is_empty() {
        format!("{}: {} {}", task.name(), o.done, unit(task.name()))
    } else {
        let kinds: Vec<String> = o
            .kinds
            .iter()
            .map(|&(n, one, many)| format!("{n} {}", if n == 1 { one } else { many }))
            .collect();
        format!("{}: {}", task.name(), kinds.join(", "))
    };
    if o.bytes > 0 {
        s += &format!(", {}", BinaryBytes(o.bytes));
    }
    if o.remaining > 0 {
        s += &format!("; {} remaining", o.remaining);
    }
    if dry_run {
        s += " (dry run: nothing changed)";
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(words: &[&str]) -> Result<Vec<&'static str>> {
        let words: Vec<String> = words.iter().map(|w| w.to_string()).collect();
        Ok(parse_tasks(&words)?.into_iter().map(Task::name).collect())
    }

    #[test]
    fn task_names_run_once_in_the_reference_order() {
        assert_eq!(
            names(&["copy-to-s3", "copy-shards", "copy-to-s3"]).unwrap(),
            ["copy-shards", "copy-to-s3"]
        );
        assert_eq!(names(&["all"]).unwrap().len(), 5);
        assert_eq!(
            names(&["all-not-s3-copy"]).unwrap(),
            [
                "copy-shards",
                "remove-deleted",
                "perform-import",
                "move-to-s3"
            ]
        );
        assert!(
            names(&["copy-shard"])
                .unwrap_err()
                .to_string()
                .contains("unknown task 'copy-shard'")
        );
        assert!(names(&[]).is_err());
    }

    #[test]
    fn option_values() {
        assert_eq!(parse_retry("unlimited"), Ok(Retry::Unlimited));
        assert_eq!(parse_retry("3"), Ok(Retry::Times(3)));
        for bad in ["-1", "banana", ""] {
            assert!(parse_retry(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_seconds("120"), Ok(120));
        for bad in ["-5", "1.5", "x", "99999999999"] {
            assert!(parse_seconds(bad).is_err(), "{bad}");
        }
        assert!(Retry::Times(2).allows(1) && !Retry::Times(2).allows(2));
    }

    #[test]
    fn summaries() {
        let mut o = Outcome::default();
        assert_eq!(
            summary(Task::CopyShards, &o, false),
            "copy-shards: nothing to do"
        );
        o.done = 3;
        o.remaining = 17;
        o.bytes = 12_500_000;
        assert_eq!(
            summary(Task::CopyShards, &o, false),
            "copy-shards: 3 spaces, 11.92 MiB; 17 remaining"
        );
        o.remaining = 0;
        o.bytes = 0;
        o.kinds = vec![
            (1, "space", "spaces"),
            (2, "inode", "inodes"),
            (0, "object", "objects"),
        ];
        assert_eq!(
            summary(Task::RemoveDeleted, &o, true),
            "remove-deleted: 1 space, 2 inodes, 0 objects (dry run: nothing changed)"
        );
    }
}
