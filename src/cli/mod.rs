//! The `tshs` command line: clap definitions, dispatch to the core, and table
//! printing. Nothing here touches a database directly.

mod shell;
pub mod table;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::cluster::Cluster;
use crate::config::{self, ConnOptions};
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
    DeleteStorageNode { storage_id: u32 },
    /// List the Storage Nodes with their key ranges and totals.
    ListStorageNodes,
    /// List the processes connected to the cluster.
    ListAccessPoints,
    /// List the jobs (DELETE, IMPORT, …).
    ListJobs,
    /// Create a volume: a directory under the mount's root that holds spaces.
    CreateVolume { name: String },
    /// List the volumes.
    ListVolumes,
    /// Mount the cluster as a POSIX tree.
    Mount(crate::mount::MountArgs),
    /// TEMP
    SplitStorageNode {
        storage_id: u32,
        connection_options: String,
    },
    /// TEMP
    CopyShards {
        #[arg(long)]
        time_limit: Option<u64>,
    },
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
    let opts = admin_options(cli)?;
    Cluster::connect(&opts, cli.max_threads as usize)
        .with_context(|| format!("cannot connect to the Admin Node ({})", opts.masked()))
}

/// Runs the command line: one command, or the interactive shell.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        None => shell::run(&cli),
        Some(Command::Mount(ref args)) => crate::mount::run(&cli, args),
        Some(ref cmd) => {
            let cluster = connect(&cli)?;
            // Every process using the cluster is an access point while it runs.
            let _ap = match cmd {
                Command::CreateAdminNode => None,
                _ => {
                    cluster.require_admin_node()?;
                    Some(cluster.register(&format!("tshs {}", command_name(cmd)), |_| {})?)
                }
            };
            let out = execute(&cluster, cmd)?;
            print!("{out}");
            Ok(())
        }
    }
}

/// Executes one command against the cluster and returns what it prints.
pub fn execute(cluster: &Cluster, cmd: &Command) -> Result<String> {
    if !matches!(cmd, Command::CreateAdminNode) {
        cluster.require_admin_node()?;
    }
    Ok(match cmd {
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
        Command::DeleteStorageNode { storage_id } => {
            cluster.delete_storage_node(*storage_id)?;
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
                        a.access_time,
                        a.description,
                    ])
                })
                .collect::<Vec<_>>();
            render(&["ID", "Ack", "Access time", "Description"], &rows)
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
        Command::ListVolumes => {
            let rows = cluster
                .volumes()?
                .into_iter()
                .map(|v| Line::Row(vec![v.id.to_string(), v.status.as_str().into(), v.name]))
                .collect::<Vec<_>>();
            render(&["ID", "Status", "Name"], &rows)
        }
        Command::Mount(_) => anyhow::bail!("mount cannot run inside the shell"),
        Command::SplitStorageNode {
            storage_id,
            connection_options,
        } => {
            let id = cluster
                .split_storage_node(*storage_id, &ConnOptions::parse(connection_options)?)?;
            format!(
                "Storage node {id} created (MIRROR_SHARD)\n{}",
                list_storage_nodes(cluster)?
            )
        }
        Command::CopyShards { time_limit } => {
            let opts = crate::tasks::TaskOptions {
                max_threads: 1,
                deadline: time_limit
                    .map(|t| std::time::Instant::now() + std::time::Duration::from_secs(t)),
                ..Default::default()
            };
            let stop = std::sync::atomic::AtomicBool::new(false);
            let o = crate::tasks::copy_shards(cluster, &opts, &stop, &|_| {})?;
            format!(
                "{}\ndone {} remaining {}\n",
                o.lines.join("\n"),
                o.done,
                o.remaining
            )
        }
    })
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
        lines.push(Line::Text(match totals {
            Ok(t) => format!(
                "(InDB={} OnS3={} R/O={} Bytes={})",
                t.in_db, t.on_s3, t.read_only, t.bytes
            ),
            Err(e) => format!("(unreachable: {e:#})"),
        }));
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
