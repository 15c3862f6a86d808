//! `tshs check`: a Nagios/Icinga plugin. It prints ONE status line with
//! perfdata and exits 0 OK, 1 WARNING, 2 CRITICAL or 3 UNKNOWN.
//!
//! It checks that the Admin Node and every Storage Node answer (`SELECT 1`,
//! timed), the copy-shards backlog (spaces of MIRROR_SHARD nodes not moved
//! yet), stale access points (rows whose heartbeat is older than 30 s: a
//! process hangs, or died without unregistering; rows go after 10 minutes),
//! and, with `--mountpoint`, that a
//! tshs mount is mounted there and answers `stat` and `readdir`; with an S3
//! host, that the current one answers and how many files wait for
//! move-to-s3. Each probe
//! runs in a thread of its own and is given up after `--timeout` (a hung
//! server or mount is CRITICAL, never a hung plugin). `--warning` and
//! `--critical` apply to the response times. Bad options or a bad options
//! file are UNKNOWN. Nothing is written to the cluster: the check is not
//! an access point.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;

use super::Cli;
use crate::cluster::{Cluster, Phase};

const OK: i32 = 0;
const WARNING: i32 = 1;
const CRITICAL: i32 = 2;
const UNKNOWN: i32 = 3;
const STATE: [&str; 4] = ["OK", "WARNING", "CRITICAL", "UNKNOWN"];

/// Access points silent this long are stale (as `list-access-points` says).
const STALE_SECS: u64 = 30;

#[derive(Parser, Debug)]
#[command(
    name = "tshs check",
    about = "Nagios/Icinga plugin: one status line with perfdata; exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN"
)]
struct Args {
    /// WARNING when a response time exceeds this many milliseconds.
    #[arg(long, default_value_t = 500.0, value_name = "MS", value_parser = parse_ms)]
    warning: f64,
    /// CRITICAL when a response time exceeds this many milliseconds.
    #[arg(long, default_value_t = 2000.0, value_name = "MS", value_parser = parse_ms)]
    critical: f64,
    /// A tshs mount to check: mounted, and answering stat and readdir.
    #[arg(long, value_name = "PATH")]
    mountpoint: Option<PathBuf>,
    /// Seconds to wait for each answer before it counts as CRITICAL.
    #[arg(long, default_value_t = 5, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=300))]
    timeout: u64,
}

fn parse_ms(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("'{s}' is not a number of milliseconds")),
    }
}

/// Runs the check and exits with its state; never returns.
pub fn run(cli: &Cli, words: &[String]) -> Result<()> {
    let (state, line) = check(cli, words);
    println!("{line}");
    let _ = std::io::Write::flush(&mut std::io::stdout());
    std::process::exit(state);
}

/// One timed answer: milliseconds, or why there was none.
type Answer = Result<f64, String>;

/// The state and the status line.
fn check(cli: &Cli, words: &[String]) -> (i32, String) {
    let argv = std::iter::once("tshs check".to_string()).chain(words.iter().cloned());
    let args = match Args::try_parse_from(argv) {
        Ok(a) => a,
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            print!("{e}");
            std::process::exit(OK);
        }
        Err(e) => return unknown(&super::one_line(&e)),
    };
    if args.warning > args.critical {
        return unknown("--warning must not exceed --critical");
    }
    let opts = match super::admin_options(cli) {
        Ok(o) => o,
        Err(e) => return unknown(&format!("{e:#}")),
    };
    let timeout = Duration::from_secs(args.timeout);
    let mut r = Report::new(args.warning, args.critical);

    // The mount is checked meanwhile: it needs no database.
    let mount = args.mountpoint.clone().map(|p| {
        let q = p.clone();
        (p, spawn(move || probe_mount(&q)))
    });

    let admin = spawn(move || -> Result<(Cluster, f64), String> {
        let t = Instant::now();
        let c = Cluster::connect(&opts, 2).map_err(|e| format!("{e:#}"))?;
        c.ping_admin().map_err(|e| e.to_string())?;
        Ok((c, ms(t)))
    });
    match wait(admin, timeout) {
        Ok((cluster, t)) => {
            r.time("admin", "admin", Ok(t));
            r.cluster(&cluster, timeout);
        }
        Err(e) => r.time("admin", "Admin Node", Err(e)),
    }
    if let Some((path, rx)) = mount {
        let name = format!("mount {}", path.display());
        r.time("mount", &name, wait(rx, timeout));
    }
    r.finish()
}

fn unknown(why: &str) -> (i32, String) {
    (UNKNOWN, format!("TSHS UNKNOWN - {}", one_line(why)))
}

/// The status line must stay one line, and `|` starts the perfdata.
fn one_line(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "/")
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn spawn<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> mpsc::Receiver<Result<T, String>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx
}

/// The probe's answer, or CRITICAL-worthy silence after `timeout` (the
/// thread is left behind; the process exits soon).
fn wait<T>(rx: mpsc::Receiver<Result<T, String>>, timeout: Duration) -> Result<T, String> {
    match rx.recv_timeout(timeout) {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {} s", timeout.as_secs())),
    }
}

/// Is `path` a tshs mount, and does it answer? Milliseconds for stat and
/// the first directory entry.
fn probe_mount(path: &Path) -> Answer {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| e.to_string())?
            .join(path)
    };
    match crate::mount::mounted_at(&abs) {
        None => return Err("not mounted".into()),
        Some(m) if m.is_tshs() => {}
        Some(m) => return Err(format!("not a tshs mount ({} {})", m.fstype, m.source)),
    }
    let t = Instant::now();
    std::fs::metadata(&abs).map_err(|e| e.to_string())?;
    if let Some(e) = std::fs::read_dir(&abs).map_err(|e| e.to_string())?.next() {
        e.map_err(|e| e.to_string())?;
    }
    Ok(ms(t))
}

/// What the probes found, turned into a state, a line and perfdata.
struct Report {
    warning: f64,
    critical: f64,
    state: i32,
    problems: Vec<String>,
    facts: Vec<String>,
    perf: Vec<String>,
}

impl Report {
    fn new(warning: f64, critical: f64) -> Report {
        Report {
            warning,
            critical,
            state: OK,
            problems: Vec::new(),
            facts: Vec::new(),
            perf: Vec::new(),
        }
    }

    fn raise(&mut self, state: i32, problem: String) {
        self.state = self.state.max(state);
        self.problems.push(problem);
    }

    /// A response time, judged by the thresholds; an error is CRITICAL.
    fn time(&mut self, label: &str, name: &str, answer: Answer) {
        let (w, c) = (self.warning, self.critical);
        match answer {
            Ok(t) => {
                self.perf.push(format!("{label}_ms={t:.3};{w};{c};0"));
                if t > c {
                    self.raise(CRITICAL, format!("{name} slow ({t:.0} ms > {c} ms)"));
                } else if t > w {
                    self.raise(WARNING, format!("{name} slow ({t:.0} ms > {w} ms)"));
                } else if label == "admin" || label == "mount" {
                    // Storage nodes are summed up in one fact.
                    self.facts.push(format!("{name} {t:.0} ms"));
                }
            }
            Err(e) => {
                self.perf.push(format!("{label}_ms=U;{w};{c};0"));
                self.raise(CRITICAL, format!("{name}: {e}"));
            }
        }
    }

    /// The current S3 host answers (HeadBucket, timed) and the move-to-s3
    /// backlog (files ready for transfer).
    fn object_store(&mut self, cluster: &Cluster, timeout: Duration) {
        let host = match cluster.current_s3_host() {
            Ok(Some(h)) => h,
            Ok(None) => return self.facts.push("no S3 host".into()),
            Err(e) => return self.raise(CRITICAL, format!("S3 hosts: {e:#}")),
        };
        let id = host.id;
        let probe = {
            let host = host.clone();
            spawn(move || {
                let t = Instant::now();
                crate::object_store::S3Store::new(&host)
                    .head_bucket()
                    .map_err(|e| e.to_string())?;
                Ok(ms(t))
            })
        };
        let answer = probe
            .recv_timeout(timeout)
            .unwrap_or_else(|_| Err(format!("no answer within {} s", timeout.as_secs())));
        if let Ok(t) = answer {
            self.facts.push(format!("S3 host {id} {t:.0} ms"));
        }
        self.time("s3", &format!("S3 host {id}"), answer);
        match crate::tasks::waiting_for_s3(cluster, Some(&host)) {
            Ok(waiting) => {
                let files: u64 = waiting
                    .iter()
                    .filter_map(|(_, w)| w.as_ref().ok().map(|(f, _)| *f))
                    .sum();
                self.facts.push(format!("move-to-s3 backlog {files} files"));
                self.perf.push(format!("backlog_move_to_s3={files};;;0"));
            }
            Err(e) => self.raise(CRITICAL, format!("move-to-s3 backlog: {e:#}")),
        }
    }

    /// Storage Nodes (in parallel), the copy-shards backlog, stale access points.
    fn cluster(&mut self, cluster: &Cluster, timeout: Duration) {
        if let Err(e) = cluster.require_admin_node() {
            self.raise(UNKNOWN, format!("{e:#}"));
            return;
        }
        let nodes = match cluster.nodes() {
            Ok(n) => n,
            Err(e) => return self.raise(CRITICAL, format!("cannot list storage nodes: {e:#}")),
        };
        let probes: Vec<_> = nodes
            .iter()
            .map(|n| {
                let (c, id) = (cluster.clone(), n.id);
                spawn(move || {
                    let t = Instant::now();
                    c.shard(id)
                        .map_err(|e| format!("{e:#}"))?
                        .ping()
                        .map_err(|e| e.to_string())?;
                    Ok(ms(t))
                })
            })
            .collect();
        let deadline = Instant::now() + timeout;
        let (mut ok, mut max) = (0, 0.0f64);
        for (n, rx) in nodes.iter().zip(probes) {
            let left = deadline.saturating_duration_since(Instant::now());
            let answer = match rx.recv_timeout(left) {
                Ok(a) => a,
                Err(_) => Err(format!("no answer within {} s", timeout.as_secs())),
            };
            if let Ok(t) = answer {
                ok += 1;
                max = max.max(t);
            }
            self.time(
                &format!("node{}", n.id),
                &format!("storage node {}", n.id),
                answer,
            );
        }
        self.facts.push(format!(
            "{ok} of {} storage nodes ok (slowest {max:.0} ms)",
            nodes.len()
        ));
        self.members("Admin Node", "admin", cluster.admin().opts());
        for n in &nodes {
            self.members(
                &format!("storage node {}", n.id),
                &format!("node{}", n.id),
                &n.conn,
            );
        }

        let mut backlog = 0;
        for n in nodes.iter().filter(|n| n.phase == Phase::MirrorShard) {
            match crate::tasks::mirror_progress(cluster, n) {
                Ok((moved, total)) => backlog += total.saturating_sub(moved),
                Err(e) => self.raise(CRITICAL, format!("copy-shards backlog: {e:#}")),
            }
        }
        self.facts
            .push(format!("copy-shards backlog {backlog} spaces"));
        self.perf.push(format!("backlog_copy_shards={backlog};;;0"));

        self.object_store(cluster, timeout);

        match cluster.silent_access_points(STALE_SECS) {
            Ok(n) => {
                self.perf.push(format!("stale_access_points={n};0;;0"));
                if n > 0 {
                    self.raise(
                        WARNING,
                        format!("{n} stale access points (silent > {STALE_SECS} s: see tshs list-access-points)"),
                    );
                } else {
                    self.facts.push("0 stale access points".into());
                }
            }
            Err(e) => self.raise(CRITICAL, format!("access points: {e}")),
        }
    }

    /// A node on a Galera cluster: WARNING with fewer synced members than
    /// its options name, CRITICAL with none synced or none in a primary
    /// component (the node cannot be written).
    fn members(&mut self, name: &str, label: &str, opts: &crate::config::ConnOptions) {
        self.judge_members(name, label, &crate::db::member_states(opts));
    }

    fn judge_members(&mut self, name: &str, label: &str, states: &[crate::db::MemberState]) {
        if states.is_empty() {
            return;
        }
        let synced = states.iter().filter(|m| m.synced()).count();
        self.perf
            .push(format!("{label}_members={synced};;;0;{}", states.len()));
        if synced == states.len() {
            return;
        }
        let why: Vec<String> = states
            .iter()
            .filter_map(|m| m.problem().map(|p| format!("{}: {p}", m.server)))
            .collect();
        let (state, what) = if !states.iter().any(|m| m.primary()) {
            (
                CRITICAL,
                "no Galera member in a primary component".to_string(),
            )
        } else if synced == 0 {
            (CRITICAL, "no Galera member synced".to_string())
        } else {
            (
                WARNING,
                format!("{synced} of {} Galera members synced", states.len()),
            )
        };
        self.raise(state, format!("{name}: {what} ({})", why.join("; ")));
    }

    fn finish(self) -> (i32, String) {
        let text: Vec<String> = self.problems.into_iter().chain(self.facts).collect();
        (
            self.state,
            format!(
                "TSHS {} - {} | {}",
                STATE[self.state as usize],
                one_line(&text.join(", ")),
                self.perf.join(" ")
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds() {
        let mut r = Report::new(10.0, 100.0);
        r.time("admin", "admin", Ok(1.0));
        assert_eq!(r.state, OK);
        r.time("node1", "storage node 1", Ok(50.0));
        assert_eq!(r.state, WARNING);
        r.time(
            "node2",
            "storage node 2",
            Err("refused | gone\nreally".into()),
        );
        let (state, line) = r.finish();
        assert_eq!(state, CRITICAL);
        assert_eq!(line.lines().count(), 1);
        assert!(line.starts_with("TSHS CRITICAL - storage node 1 slow (50 ms > 10 ms), storage node 2: refused / gone really, admin 1 ms | admin_ms=1.000;10;100;0 node1_ms=50.000;10;100;0 node2_ms=U;10;100;0"), "{line}");
    }

    fn member(server: &str, status: &str, comment: &str) -> crate::db::MemberState {
        crate::db::MemberState {
            server: server.into(),
            state: Ok(crate::db::Wsrep {
                comment: comment.into(),
                local_state: if comment == "Synced" { "4" } else { "1" }.into(),
                cluster_status: status.into(),
                ready: comment == "Synced",
            }),
        }
    }

    #[test]
    fn galera_members() {
        let gone = crate::db::MemberState {
            server: "db3:3306".into(),
            state: Err("cannot reach MySQL server db3:3306: refused".into()),
        };
        let mut r = Report::new(10.0, 100.0);
        r.judge_members(
            "storage node 2",
            "node2",
            &[
                member("db1:3306", "Primary", "Synced"),
                member("db2:3306", "Primary", "Joining"),
                gone.clone(),
            ],
        );
        let (state, line) = r.finish();
        assert_eq!(state, WARNING, "{line}");
        assert!(line.contains("storage node 2: 1 of 3 Galera members synced (db2:3306: not synced (Joining (Primary, not ready)); db3:3306: unreachable: cannot reach"), "{line}");
        assert!(line.ends_with("| node2_members=1;;;0;3"), "{line}");

        let mut r = Report::new(10.0, 100.0);
        r.judge_members(
            "storage node 2",
            "node2",
            &[member("db1:3306", "non-Primary", "Initialized"), gone],
        );
        let (state, line) = r.finish();
        assert_eq!(state, CRITICAL, "{line}");
        assert!(
            line.contains("storage node 2: no Galera member in a primary component (db1:3306: not in the primary component (non-Primary)"),
            "{line}"
        );
    }
}
