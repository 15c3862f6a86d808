//! `tshs fsck [--repair] [--space ID] [--grace SECS]`: runs the check of
//! [`crate::tasks::fsck`] with a progress bar, prints each problem on a line
//! of its own as it is found (`<kind>: <where>: <what>`, and with `--repair`
//! what was done), then a table of the kinds and a closing line.
//!
//! Exit 0 clean, 1 problems found (repaired or not), 2 could not check
//! everything (a node or store unreachable, stopped) or bad input: unlike
//! other commands, 1 is the check's verdict here, not a failure.

use std::cell::RefCell;
use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use super::progress::Reporter;
use super::runner::{Runner, parse_seconds};
use super::table::{Line, render};
use super::{Cli, Command};
use crate::cluster::{Cluster, parse_space_id};
use crate::tasks::TaskOptions;
use crate::tasks::fsck::{Action, Kind, Problem, Report, Scope};

/// The verdict "problems found", as an error: exit 1 on the command line, a
/// failed command in the shell and under `repeat`.
#[derive(Debug, thiserror::Error)]
#[error("fsck: {0} problem(s) found")]
pub struct ProblemsFound(pub u64);

/// Checks `--space` and `--grace` (before anything connects).
pub fn parse(space: Option<&str>, grace: Option<&str>) -> Result<(Option<u32>, Option<Duration>)> {
    let space = space
        .map(|s| {
            parse_space_id(s).ok_or_else(|| {
                anyhow!("fsck: --space '{s}' is not a space ID (a number from 1 to 4294967295)")
            })
        })
        .transpose()?;
    let grace = grace
        .map(|g| parse_seconds(g).map_err(|e| anyhow!("fsck: --grace '{g}': {e}")))
        .transpose()?
        .map(Duration::from_secs);
    Ok((space, grace))
}

/// The command line's `tshs fsck`: runs it and exits with its verdict.
pub fn run(cli: &Cli, cmd: &Command) -> Result<()> {
    let code = match super::one_off(cli, cmd) {
        Ok(()) => 0,
        Err(e) if e.is::<ProblemsFound>() => 1,
        Err(e) => {
            eprintln!("tshs: error: {e:#}");
            2
        }
    };
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

/// Runs the check, writing its lines to `out`.
pub fn execute(
    cluster: &Cluster,
    runner: &Runner,
    repair: bool,
    space: Option<&str>,
    grace: Option<&str>,
    out: &mut dyn Write,
) -> Result<()> {
    let (space, grace) = parse(space, grace)?;
    let opts = TaskOptions {
        grace,
        ..runner.options()
    };
    let reporter = Reporter::new(runner.display());
    let out = RefCell::new(out);
    let failed_write = RefCell::new(None);
    let found = |p: &Problem| {
        reporter.suspend(|| {
            if let Err(e) = writeln!(out.borrow_mut(), "{}", line(p, repair)) {
                failed_write.borrow_mut().get_or_insert(e);
            }
        })
    };
    let result = crate::tasks::fsck::run(
        cluster,
        &opts,
        Scope { repair, space },
        runner.stop().flag(),
        &|p| reporter.update(p),
        &found,
    );
    reporter.finish();
    let report = result.context("fsck")?;
    if let Some(e) = failed_write.take() {
        return Err(e.into());
    }
    out.into_inner()
        .write_all(summary(&report, repair).as_bytes())?;
    if !report.unchecked.is_empty() {
        let mut what = report.unchecked.iter().take(5).cloned().collect::<Vec<_>>();
        if report.unchecked.len() > 5 {
            what.push(format!("and {} more", report.unchecked.len() - 5));
        }
        bail!("fsck: could not check {}", what.join("; "));
    }
    match report.problems() {
        0 => Ok(()),
        n => Err(ProblemsFound(n).into()),
    }
}

/// `nameless-inode: space 3, inode 7: a live regular file of 10 bytes that
/// no directory names; marked deleted`
fn line(p: &Problem, repair: bool) -> String {
    let mut s = format!("{}: {}: {}", p.kind.as_str(), p.place, p.detail);
    match &p.action {
        Action::Repaired => s += &format!("; {}", p.kind.repair().unwrap_or("repaired")),
        Action::NotRepaired(why) => s += &format!("; not repaired: {why}"),
        Action::Reported if repair && p.kind.repair().is_none() => s += "; cannot be repaired",
        Action::Reported => {}
    }
    s
}

/// The table of kinds (when anything was found) and the closing line.
fn summary(r: &Report, repair: bool) -> String {
    let count = |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let checked = [
        count(r.nodes, "storage node", "storage nodes"),
        count(r.spaces, "space", "spaces"),
        count(r.inodes, "inode", "inodes"),
        count(r.names, "name", "names"),
        count(r.buckets, "bucket", "buckets"),
        count(r.objects, "object", "objects"),
    ]
    .join(", ");
    let problems = r.problems();
    if problems == 0 {
        return format!("fsck: clean ({checked} checked)\n");
    }
    let get = |m: &std::collections::HashMap<Kind, u64>, k| m.get(&k).copied().unwrap_or(0);
    let rows: Vec<Line> = Kind::ALL
        .iter()
        .map(|&k| {
            let mut row = vec![k.as_str().to_string(), get(&r.found, k).to_string()];
            if repair {
                row.push(match k.repair() {
                    Some(_) => get(&r.repaired, k).to_string(),
                    None => "-".into(),
                });
            }
            Line::Row(row)
        })
        .collect();
    let headers: &[&str] = if repair {
        &["Problem", "Found", "Repaired"]
    } else {
        &["Problem", "Found"]
    };
    let mut s = render(headers, &rows);
    s += &format!("fsck: {}", count(problems, "problem", "problems"));
    if repair {
        s += &format!(", {} repaired", r.repaired.values().sum::<u64>());
    }
    s += &format!(" ({checked} checked)\n");
    s
}
