//! The `tshs` command line: clap definitions, dispatch to the core, and table
//! printing; the maintenance tasks' runner, `repeat` and the daemon. Nothing
//! here touches a database directly.

mod check;
mod daemon;
mod fsck;
mod progress;
mod repeat;
mod runner;
mod s3;
mod shell;
mod snapshot;
mod stop;
pub mod table;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use crate::cluster::Cluster;
use crate::config::{self, ConnOptions};
use crate::tasks::TaskOptions;
use crate::tasks::restore;
use progress::Display;
use runner::{Retry, Runner, Task, parse_retry, parse_seconds, parse_tasks};
use stop::Stop;
use table::{Line, render};

/// Scalable hosting storage for TeamDrive-style spaces.
#[derive(Parser, Debug)]
#[command(name = "tshs", version, disable_help_subcommand = false)]
pub struct Cli {
    /// MySQL options file whose [tshs] group names the Admin Node.
    #[arg(long, global = true, value_name = "PATH")]
    pub mysql_cfg_file: Option<PathBuf>,
    /// tshs options file holding long options, one per line.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Most database connections per node this process opens.
    #[arg(long, global = true, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_threads: u32,
    /// Seconds to pause after a maintenance task failed, before a retry.
    #[arg(
        long,
        global = true,
        default_value = "120",
        value_name = "SECS",
        value_parser = parse_seconds,
        allow_negative_numbers = true
    )]
    pub pause_on_error: u64,
    /// Retries of a failed maintenance task: a number or `unlimited` (not
    /// under repeat: its next round is the retry).
    #[arg(
        long,
        global = true,
        default_value = "0",
        value_name = "N|unlimited",
        value_parser = parse_retry,
        allow_negative_numbers = true
    )]
    pub retry: Retry,
    /// Stop maintenance tasks (between steps) this many seconds after start; 0: no limit.
    #[arg(
        long,
        global = true,
        default_value = "0",
        value_name = "SECS",
        value_parser = parse_seconds,
        allow_negative_numbers = true
    )]
    pub time_limit: u64,
    /// Only move data away from this Storage Node.
    #[arg(long, global = true, value_name = "ID")]
    pub storage_node: Option<u32>,
    /// The daemon's log file.
    #[arg(long, default_value = "/var/log/tshs.log", value_name = "PATH")]
    pub log_file: PathBuf,
    /// Serve Prometheus metrics while `repeat` or the daemon runs: PORT
    /// (on 127.0.0.1) or ADDR:PORT. Off unless given.
    #[arg(long, global = true, value_name = "ADDR", value_parser = parse_metrics_addr)]
    pub metrics: Option<std::net::SocketAddr>,
    /// The daemon's pid file.
    #[arg(long, default_value = "/run/tshs.pid", value_name = "PATH")]
    pub pid_file: PathBuf,
    /// Run the repeat command as a daemon (default: repeat 60 do-tasks
    /// all-not-s3-copy repeat 14400 do-tasks all).
    #[arg(long, conflicts_with = "stop")]
    pub start: bool,
    /// Stop the daemon of the pid file; wait until it has exited.
    #[arg(long)]
    pub stop: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create the Admin Node tables (running it again changes nothing).
    CreateAdminNode,
    /// Create a Storage Node in an existing empty database (only while the cluster is empty).
    CreateStorageNode {
        /// host=…;port=…;user=…;password=…;database=…
        connection_options: String,
    },
    /// Delete a Storage Node (only while the cluster is empty).
    DeleteStorageNode {
        storage_id: u32,
        /// The node's database is gone or broken: do not ask it whether it
        /// is empty (the Admin Node must still hold no space).
        #[arg(long)]
        force: bool,
    },
    /// List the Storage Nodes with their key ranges and totals.
    ListStorageNodes,
    /// List the processes connected to the cluster.
    ListAccessPoints,
    /// List the jobs (DELETE, IMPORT, …).
    ListJobs,
    /// Create a volume: a directory under the mount's root that holds spaces.
    CreateVolume { name: String },
    /// List the volumes (list_volumes).
    ListVolumes,
    /// Set a volume's status: Operational, or Standby (read-only through the mount).
    SetVolumeStatus {
        volume_id: u32,
        /// Operational or Standby
        status: String,
    },
    /// List the spaces with volume, title, resource id and status (list_spaces; 0 active, 1 deactivated, 2 deleted).
    ListSpaces,
    /// Set a space's title (kept only while StoreSpaceNames is True) and/or resource ID.
    SetSpaceInfo {
        space_id: u32,
        #[arg(long)]
        title: Option<String>,
        #[arg(long)]
        resource_id: Option<String>,
    },
    /// List the cluster settings with their values.
    ListSettings,
    /// Change a cluster setting (StoreSpaceNames True|False).
    SetSetting { name: String, value: String },
    /// Deactivate a space for a restore (deactivate_space).
    DeactivateSpace { space_id: u32 },
    /// Reactivate a deactivated or deleted space after a restore (reactivate_space).
    ReactivateSpace {
        space_id: u32,
        /// Where the tree is mounted, for the log line.
        #[arg(long, default_value = "/spacedata")]
        root: String,
    },
    /// Deactivate every active space of a volume (deactivate_volume).
    DeactivateVolume { volume_id: u32 },
    /// Reactivate every deactivated space of a volume (reactivate_volume).
    ReactivateVolume {
        volume_id: u32,
        /// Where the tree is mounted, for the log lines.
        #[arg(long, default_value = "/spacedata")]
        root: String,
    },
    /// How to restore a space or volume (restore_help).
    RestoreHelp,
    /// Split a Storage Node: a new node takes half of its range.
    ///
    /// The new node, in an existing empty database, takes the upper half of
    /// the ACTIVE_SHARD node's range and stays MIRROR_SHARD until
    /// copy-shards has moved its spaces.
    SplitStorageNode {
        storage_id: u32,
        /// host=…;port=…;user=…;password=…;database=…
        connection_options: String,
    },
    /// Point a Storage Node at other servers holding its database, online.
    ///
    /// The new servers must hold the node (its identity row) and be caught
    /// up: synced members of the node's Galera cluster (to add or remove
    /// members), or a replica of its server. Writes to the node pause
    /// behind a fence while the options switch and every access point
    /// acknowledges.
    UpdateStorageNode {
        storage_id: u32,
        /// host=…;port=…;user=…;password=…;database=…
        connection_options: String,
    },
    /// Import an on-disk /spacedata tree while it is in use (TSHSImportVolumes).
    ///
    /// Records an IMPORT job and the volumes and spaces under PATH; the
    /// mount serves them from then on (reading files not yet imported from
    /// PATH), and perform-import copies the data in. PATH must not be
    /// written to afterwards.
    ImportVolumes {
        path: PathBuf,
        /// The S3 host the tree's files are tiered to (recorded in the job).
        #[arg(long)]
        s3_host_id: Option<u32>,
    },
    /// Maintenance task: import what the IMPORT job has left.
    PerformImport,
    /// Maintenance task: move the spaces of split nodes to their new node.
    CopyShards,
    /// Maintenance task: purge the files and spaces marked deleted.
    RemoveDeleted {
        /// Report what would be purged; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Seconds a file or space stays after it was deleted (default 60).
        #[arg(long, value_name = "SECS", value_parser = parse_seconds, allow_negative_numbers = true)]
        grace: Option<u64>,
    },
    /// List the files of a space (or of a path in it) with their state.
    ListFiles { space_id: u32, path: Option<String> },
    /// Check the Storage Nodes' rows against each other and the buckets.
    ///
    /// Reports lost data (a file whose object is missing or has the wrong
    /// size), inodes without a name, extents beyond a file's size, names of
    /// missing inodes, and orphaned objects; exit 0 clean, 1 problems
    /// found, 2 could not check (or bad input).
    Fsck {
        /// Fix what can be fixed (all but lost data).
        #[arg(long)]
        repair: bool,
        // --space and --grace are checked by fsck::parse, not clap: a bad
        // value exits 2 like every other fsck failure (clap's would be 1).
        /// Only this space (its rows, and its objects in the buckets).
        #[arg(long, value_name = "ID", allow_hyphen_values = true)]
        space: Option<String>,
        /// Seconds an object no row names must be old to count as orphaned
        /// (default 60, remove-deleted's grace period).
        #[arg(long, value_name = "SECS", allow_hyphen_values = true)]
        grace: Option<String>,
    },
    /// Run maintenance tasks one after the other (e.g. do-tasks all).
    DoTasks {
        /// all, copy-shards, remove-deleted, perform-import, move-to-s3,
        /// copy-to-s3, all-not-s3-copy (all but copy-to-s3). They run in
        /// that order, each once.
        #[arg(value_name = "TASK")]
        tasks: Vec<String>,
    },
    /// Run commands every few seconds (e.g. repeat 60 do-tasks all).
    Repeat {
        /// <SECONDS> <COMMAND> [and <COMMAND>]… [repeat <SECONDS> <COMMAND>…]…:
        /// each repeat has its own interval; `and` chains commands.
        #[arg(
            value_name = "SECONDS COMMAND",
            trailing_var_arg = true,
            allow_hyphen_values = true
        )]
        words: Vec<String>,
    },
    /// Mount the cluster as a POSIX tree.
    Mount(crate::mount::MountArgs),
    /// Nagios/Icinga plugin: [--warning MS] [--critical MS] [--mountpoint PATH] [--timeout SECS].
    ///
    /// One status line with perfdata; exit 0 OK, 1 WARNING, 2 CRITICAL, 3
    /// UNKNOWN (see tshs check --help).
    #[command(disable_help_flag = true)]
    Check {
        #[arg(
            value_name = "OPTIONS",
            trailing_var_arg = true,
            allow_hyphen_values = true
        )]
        args: Vec<String>,
    },
    /// Add an S3 object store (after a test request); it becomes the current S3 host.
    AddS3Host {
        /// AMAZON, OPENSTACK, or GENERIC (any S3-compatible store; server = http(s)://host:port)
        brand: String,
        server: String,
        bucket: String,
        #[arg(allow_hyphen_values = true)]
        access_key: String,
        #[arg(allow_hyphen_values = true)]
        secret_key: s3::Secret,
        /// MinSize=…;RedirectTimeout=…;MinBlockSize=…;MaxParts=…;MaxSize=…;MaxUploadThreads=…
        options: Option<String>,
    },
    /// List the S3 hosts (secret keys masked).
    ListS3Hosts,
    /// Make an S3 host the one move-to-s3 uploads to.
    SetCurrentS3Host { host_id: u32 },
    /// Change options of an S3 host (the others keep their values).
    UpdateS3Host { host_id: u32, options: String },
    /// How many files and bytes wait for move-to-s3.
    TransferToS3Info,
    /// Maintenance task: back up each changed space's manifest and last.log files to S3.
    CopyToS3,
    /// Rebuild a lost Storage Node's spaces in a new empty database from the object store.
    RestoreFromS3 {
        storage_id: u32,
        /// host=…;port=…;user=…;password=…;database=… of the new database
        connection_options: String,
    },
    /// Point-in-time, read-only snapshots of spaces and volumes (create, list, delete).
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCommand),
    /// Maintenance task: move settled files to the current S3 host.
    MoveToS3 {
        /// Seconds a file must be unchanged (default 60).
        #[arg(long, value_name = "SECS", value_parser = parse_seconds, allow_negative_numbers = true)]
        settle: Option<u64>,
    },
}

impl Command {
    /// Checks what clap cannot, before anything connects.
    fn check(&self) -> Result<()> {
        match self {
            Command::DoTasks { tasks } => parse_tasks(tasks).map(drop),
            Command::Repeat { words } => repeat::parse(words).map(drop),
            Command::Fsck { space, grace, .. } => {
                fsck::parse(space.as_deref(), grace.as_deref()).map(drop)
            }
            _ => Ok(()),
        }
    }

    fn is_task(&self) -> bool {
        matches!(
            self,
            Command::CopyShards
                | Command::PerformImport
                | Command::RemoveDeleted { .. }
                | Command::DoTasks { .. }
                | Command::MoveToS3 { .. }
                | Command::CopyToS3
                | Command::Fsck { .. }
        )
    }
}

/// `import-volumes`: checks the tree, then registers it in one transaction.
fn import_volumes(cluster: &Cluster, path: &Path, s3_host: Option<u32>) -> Result<String> {
    let root = std::fs::canonicalize(path)
        .map_err(|e| anyhow::anyhow!("cannot import {}: {e}", path.display()))?;
    let volumes = crate::import::scan_root(&root)?;
    if volumes.iter().all(|v| v.spaces.is_empty()) {
        bail!(
            "cannot import {}: it holds no spaces (<volume>/<space id>/…)",
            root.display()
        );
    }
    let r = cluster.register_import(&root, &volumes, s3_host)?;
    let mut s = format!(
        "Import job {} created: {} space(s) in {} volume(s) from {}\n",
        r.job,
        r.spaces,
        volumes.len(),
        root.display()
    );
    for v in &r.new_volumes {
        s += &format!("Volume '{v}' created\n");
    }
    s += "The mount serves these spaces now; run tshs perform-import to copy their data in.\n";
    Ok(s)
}

fn parse_metrics_addr(v: &str) -> Result<std::net::SocketAddr, String> {
    crate::metrics::parse_addr(v).map_err(|e| e.to_string())
}

/// Parses `argv` with the options of the tshs options file in front, so the
/// command line overrides the file.
pub fn parse(argv: Vec<String>) -> Result<Cli, clap::Error> {
    let conf = argv
        .windows(2)
        .find(|w| w[0] == "--config")
        .map(|w| PathBuf::from(&w[1]))
        .or_else(|| {
            argv.iter()
                .find_map(|a| a.strip_prefix("--config=").map(PathBuf::from))
        });
    let explicit = conf.is_some();
    let conf = conf.unwrap_or_else(|| PathBuf::from(config::DEFAULT_TSHS_CONF));
    let mut words = vec![argv.first().cloned().unwrap_or_else(|| "tshs".into())];
    if explicit || conf.exists() {
        match config::read_tshs_conf(&conf) {
            // Every command would otherwise start or stop the daemon.
            Ok(w) if w.iter().any(|w| w == "--start" || w == "--stop") => {
                return Err(clap::Error::raw(
                    clap::error::ErrorKind::ArgumentConflict,
                    format!(
                        "{}: start and stop belong on the command line, not in the options file\n",
                        conf.display()
                    ),
                ));
            }
            Ok(w) => words.extend(w),
            Err(e) => {
                return Err(clap::Error::raw(
                    clap::error::ErrorKind::Io,
                    format!("{e:#}\n"),
                ));
            }
        }
    }
    words.extend(argv.into_iter().skip(1));
    Cli::try_parse_from(words)
}

/// The Admin Node connection from the MySQL options file.
pub fn admin_options(cli: &Cli) -> Result<ConnOptions> {
    let path = cli
        .mysql_cfg_file
        .clone()
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_MYSQL_CFG));
    config::read_mysql_cfg(&path)
}

pub fn connect(cli: &Cli) -> Result<Cluster> {
    connect_admin(&admin_options(cli)?, cli.max_threads)
}

fn connect_admin(opts: &ConnOptions, max_threads: u32) -> Result<Cluster> {
    // import-volumes holds the Admin Node's topology lock on one connection
    // while it reads the node ranges on another: a pool of one would wait
    // on itself.
    Cluster::connect(opts, (max_threads as usize).max(2))
        .with_context(|| format!("cannot connect to the Admin Node ({})", opts.masked()))
}

/// A clap error as one line: the message and any tip, without the usage.
pub fn one_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let parts: Vec<String> = text
        .split("\n\n")
        .filter(|p| !p.starts_with("Usage:") && !p.starts_with("For more information"))
        .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|p| !p.is_empty())
        .collect();
    let line = parts.join("; ");
    line.strip_prefix("error: ").unwrap_or(&line).to_string()
}

/// Runs the command line: one command, the interactive shell, `repeat`, or
/// the daemon's `--start`/`--stop`.
pub fn run(cli: Cli) -> Result<()> {
    if cli.stop {
        if cli.command.is_some() {
            bail!("--stop takes no command");
        }
        return daemon::stop(&cli.pid_file);
    }
    if cli.start {
        return daemon::start(&cli);
    }
    match &cli.command {
        None => shell::run(&cli),
        Some(Command::Mount(args)) => crate::mount::run(cli.mysql_cfg_file.as_deref(), args),
        Some(Command::Check { args }) => check::run(&cli, args),
        Some(Command::Repeat { words }) => repeat::foreground(&cli, words),
        Some(cmd @ Command::Fsck { .. }) => fsck::run(&cli, cmd),
        Some(cmd) => one_off(&cli, cmd),
    }
}

fn one_off(cli: &Cli, cmd: &Command) -> Result<()> {
    cmd.check()?;
    let stop = Stop::new();
    if cmd.is_task() {
        // Ctrl-C or SIGTERM: finish the current step, report, unregister.
        stop::on_signals(stop.clone())?;
    }
    let cluster = connect(cli)?;
    // Every process using the cluster is an access point while it runs.
    let _ap = match cmd {
        Command::CreateAdminNode => None,
        _ => {
            cluster.require_admin_node()?;
            Some(cluster.register(&format!("tshs {}", command_name(cmd)), |_| {})?)
        }
    };
    let runner = Runner::new(cli, stop, false, Display::detect());
    runner.check(&cluster)?;
    execute(&cluster, &runner, cmd, &mut std::io::stdout())
}

/// Executes one command against the cluster, writing what it prints to
/// `out` as it goes (a task's result as soon as that task is done).
pub fn execute(
    cluster: &Cluster,
    runner: &Runner,
    cmd: &Command,
    out: &mut dyn Write,
) -> Result<()> {
    if !matches!(cmd, Command::CreateAdminNode) {
        cluster.require_admin_node()?;
    }
    let text = match cmd {
        Command::CreateAdminNode => {
            let applied = cluster.create_admin_node()?;
            if applied.is_empty() {
                "Admin Node is up to date\n".into()
            } else {
                format!(
                    "Admin Node created (schema version {})\n",
                    applied.last().unwrap()
                )
            }
        }
        Command::CreateStorageNode { connection_options } => {
            let opts = ConnOptions::parse(connection_options)?;
            let id = cluster.create_storage_node(&opts)?;
            format!(
                "Storage node {id} created\n{}",
                list_storage_nodes(cluster)?
            )
        }
        Command::DeleteStorageNode { storage_id, force } => {
            cluster.delete_storage_node(*storage_id, *force)?;
            format!("Storage node {storage_id} deleted\n")
        }
        Command::ListStorageNodes => list_storage_nodes(cluster)?,
        Command::ListAccessPoints => {
            let rows = cluster
                .access_points()?
                .into_iter()
                .map(|a| {
                    Line::Row(vec![
                        a.id.to_string(),
                        u8::from(a.ack).to_string(),
                        if a.stale { "stale" } else { "live" }.to_string(),
                        a.access_time,
                        a.description,
                    ])
                })
                .collect::<Vec<_>>();
            render(&["ID", "Ack", "State", "Access time", "Description"], &rows)
        }
        Command::ListJobs => {
            let rows = cluster
                .jobs()?
                .into_iter()
                .map(|j| Line::Row(vec![j.id.to_string(), j.job, j.parameters]))
                .collect::<Vec<_>>();
            render(&["ID", "Job", "Parameters"], &rows)
        }
        Command::CreateVolume { name } => {
            let id = cluster.create_volume(name)?;
            format!("Volume {id} '{name}' created\n")
        }
        Command::Snapshot(cmd) => snapshot::run(cluster, cmd)?,
        Command::ListVolumes => {
            let rows = cluster
                .volumes()?
                .into_iter()
                .map(|v| vec![v.id.to_string(), v.name, v.status.as_str().into()])
                .collect::<Vec<_>>();
            table::render_pipes("Volumes", &["ID", "Name", "Status"], &rows)
        }
        Command::SetVolumeStatus { volume_id, status } => {
            let status = crate::cluster::VolumeStatus::parse(status)?;
            cluster.set_volume_status(*volume_id, status)?;
            format!("Volume {volume_id}: {}\n", status.as_str())
        }
        Command::SetSpaceInfo {
            space_id,
            title,
            resource_id,
        } => {
            cluster.set_space_info(*space_id, title.as_deref(), resource_id.as_deref())?;
            format!("Space {space_id} updated\n")
        }
        Command::ListSettings => {
            let rows = cluster
                .settings()?
                .into_iter()
                .zip(crate::cluster::SETTINGS)
                .map(|((name, value), (_, default, about))| {
                    Line::Row(vec![name, value, default.to_string(), about.to_string()])
                })
                .collect::<Vec<_>>();
            table::render(&["Setting", "Value", "Default", "Meaning"], &rows)
        }
        Command::SetSetting { name, value } => {
            let (name, value) = cluster.set_setting(name, value)?;
            format!("{name} = {value}\n")
        }
        Command::ListSpaces => {
            let rows = cluster
                .space_listing()?
                .into_iter()
                .map(|s| {
                    vec![
                        s.volume,
                        s.id.to_string(),
                        s.title,
                        s.resource_id,
                        s.status.code().to_string(),
                    ]
                })
                .collect::<Vec<_>>();
            table::render_pipes(
                "Spaces",
                &["Volume", "ID", "Title", "ResID", "Status"],
                &rows,
            )
        }
        Command::DeactivateSpace { space_id } => restore::deactivate_space(cluster, *space_id)?,
        Command::ReactivateSpace { space_id, root } => {
            restore::reactivate_space(cluster, *space_id, root)?
        }
        Command::DeactivateVolume { volume_id } => restore::deactivate_volume(cluster, *volume_id)?,
        Command::ReactivateVolume { volume_id, root } => {
            restore::reactivate_volume(cluster, *volume_id, root)?
        }
        Command::RestoreHelp => restore::HELP.to_string(),
        Command::SplitStorageNode {
            storage_id,
            connection_options,
        } => {
            let opts = ConnOptions::parse(connection_options)?;
            let id = cluster.split_storage_node(*storage_id, &opts)?;
            format!(
                "Storage node {id} created (MIRROR_SHARD; run tshs copy-shards)\n{}",
                list_storage_nodes(cluster)?
            )
        }
        Command::UpdateStorageNode {
            storage_id,
            connection_options,
        } => {
            let opts = ConnOptions::parse(connection_options)?;
            let u = cluster.update_storage_node(*storage_id, &opts)?;
            let mut line = if u.repaired {
                format!(
                    "Storage node {storage_id}: connection options unchanged; lifted the fences a switch left on {} space(s)",
                    u.fenced
                )
            } else if u.old_gone {
                format!(
                    "Storage node {storage_id}: connection options updated (its old servers could not be reached: nothing was fenced)"
                )
            } else {
                format!(
                    "Storage node {storage_id}: connection options updated ({} space(s) fenced for {} ms)",
                    u.fenced,
                    u.paused.as_millis()
                )
            };
            match u.unacknowledged {
                Some(0) => {}
                Some(n) => {
                    line += &format!(
                        "; {n} access point(s) did not acknowledge within 20 s (see tshs list-access-points)"
                    )
                }
                None if u.repaired => {}
                None => line += "; the acknowledgements could not be counted",
            }
            format!("{line}\n{}", list_storage_nodes(cluster)?)
        }
        Command::ImportVolumes { path, s3_host_id } => import_volumes(cluster, path, *s3_host_id)?,
        Command::PerformImport => {
            return runner.run_task(cluster, Task::PerformImport, &runner.options(), out);
        }
        Command::CopyShards => {
            return runner.run_task(cluster, Task::CopyShards, &runner.options(), out);
        }
        Command::RemoveDeleted { dry_run, grace } => {
            let opts = TaskOptions {
                dry_run: *dry_run,
                grace: grace.map(Duration::from_secs),
                ..runner.options()
            };
            return runner.run_task(cluster, Task::RemoveDeleted, &opts, out);
        }
        Command::DoTasks { tasks } => return runner.do_tasks(cluster, &parse_tasks(tasks)?, out),
        Command::ListFiles { space_id, path } => {
            let rows = crate::tasks::list_files(cluster, *space_id, path.as_deref())?
                .into_iter()
                .map(|f| {
                    Line::Row(vec![
                        f.ino.to_string(),
                        f.size.to_string(),
                        f.state.as_str().into(),
                        f.path,
                    ])
                })
                .collect::<Vec<_>>();
            render(&["Inode", "Size", "State", "Path"], &rows)
        }
        Command::Fsck {
            repair,
            space,
            grace,
        } => {
            return fsck::execute(
                cluster,
                runner,
                *repair,
                space.as_deref(),
                grace.as_deref(),
                out,
            );
        }
        Command::Repeat { .. } => {
            bail!("repeat cannot run inside the shell (run tshs repeat … or tshs --start repeat …)")
        }
        Command::Mount(_) => bail!("mount cannot run inside the shell"),
        Command::Check { .. } => bail!("check cannot run inside the shell"),
        Command::AddS3Host {
            brand,
            server,
            bucket,
            access_key,
            secret_key,
            options,
        } => s3::add_host(
            cluster,
            brand,
            server,
            bucket,
            access_key,
            secret_key,
            options.as_deref(),
        )?,
        Command::ListS3Hosts => s3::list_hosts(cluster)?,
        Command::SetCurrentS3Host { host_id } => s3::set_current(cluster, *host_id)?,
        Command::UpdateS3Host { host_id, options } => s3::update_host(cluster, *host_id, options)?,
        Command::TransferToS3Info => s3::transfer_info(cluster)?,
        Command::CopyToS3 => {
            return runner.run_task(cluster, Task::CopyToS3, &runner.options(), out);
        }
        Command::RestoreFromS3 {
            storage_id,
            connection_options,
        } => s3::restore(cluster, *storage_id, connection_options)?,
        Command::MoveToS3 { settle } => {
            let opts = TaskOptions {
                settle: settle.map(Duration::from_secs),
                ..runner.options()
            };
            return runner.run_task(cluster, Task::MoveToS3, &opts, out);
        }
    };
    out.write_all(text.as_bytes())?;
    Ok(())
}

/// The command's name as typed (`list-storage-nodes`).
fn command_name(cmd: &Command) -> String {
    let dbg = format!("{cmd:?}");
    let name = dbg.split([' ', '(', '{']).next().unwrap_or_default();
    let mut out = String::new();
    for (i, ch) in name.chars().enumerate() {
        if ch.is_uppercase() && i > 0 {
            out.push('-');
        }
        out.push(ch.to_ascii_lowercase());
    }
    out
}

fn list_storage_nodes(cluster: &Cluster) -> Result<String> {
    let mut lines = Vec::new();
    for (n, totals) in cluster.nodes_with_totals()? {
        lines.push(Line::Row(vec![
            n.id.to_string(),
            n.phase.as_str().into(),
            format!("{} ({})", n.range.boundary, n.range.size),
            n.conn.masked(),
        ]));
        let mut text = match totals {
            Ok(t) => format!(
                "(InDB={} OnS3={} R/O={} Bytes={})",
                t.in_db, t.on_s3, t.read_only, t.bytes
            ),
            Err(e) => format!("(unreachable: {e:#})"),
        };
        if n.phase == crate::cluster::Phase::MirrorShard {
            let (moved, total) = crate::tasks::mirror_progress(cluster, &n)?;
            text.push_str(&format!(
                " copy-shards: {moved} of {total} spaces moved from node {}",
                n.source.unwrap_or(0)
            ));
        }
        lines.push(Line::Text(text));
        // A Galera-backed node: each member and its state.
        for m in crate::db::member_states(&n.conn) {
            let state = match &m.state {
                Ok(w) => w.describe(),
                Err(e) => format!("unreachable ({e})"),
            };
            lines.push(Line::Text(format!("Member {}: {state}", m.server)));
        }
    }
    Ok(render(
        &[
            "ID",
            "Phase",
            "Boundary (size)",
            "Connection options (totals)",
        ],
        &lines,
    ))
}
