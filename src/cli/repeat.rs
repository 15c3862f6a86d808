//! `repeat <seconds> <command> [and <command>]… [repeat <seconds> …]…`: each
//! entry runs its commands one after the other every <seconds>, on a thread
//! of its own so a long entry never delays another, until stopped or the
//! time limit passes. A failing command is logged and runs again at the next
//! round: repeat never exits because a task failed.
//!
//! Sub-commands are parsed by the same clap [`Command`] as the command line,
//! so a bad one fails at start. A leading `tshs` in a sub-command is ignored
//! (the reference writes `repeat 14400 tshs do-tasks all`).

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use clap::Parser;

use super::progress::Display;
use super::runner::{MAX_SECONDS, Runner};
use super::stop::Stop;
use super::{Cli, Command, admin_options, connect_admin, execute, one_line};
use crate::cluster::{AccessPoint, Cluster};
use crate::config::ConnOptions;

/// What `tshs --start` runs when given no command: every task once a
/// minute, and copy-to-s3 (the `last.log` backups) every four hours too.
pub const DEFAULT_SERVICE: &[&str] = &[
    "60",
    "do-tasks",
    "all-not-s3-copy",
    "repeat",
    "14400",
    "do-tasks",
    "all",
];

/// A sub-command: one of the `tshs` commands, without the global options.
#[derive(Parser, Debug)]
#[command(name = "tshs", no_binary_name = true)]
struct SubCommand {
    #[command(subcommand)]
    command: Command,
}

/// One `repeat <seconds> …` of the command line.
#[derive(Debug)]
pub struct Entry {
    every: Duration,
    /// Each with its words as typed, for log lines.
    commands: Vec<(Command, String)>,
    /// As typed, for log lines.
    text: String,
}

/// The words after `repeat` → the entries to run.
pub fn parse(words: &[String]) -> Result<Vec<Entry>> {
    if words.is_empty() {
        bail!("repeat: expected <seconds> <command> (e.g. repeat 60 do-tasks all)");
    }
    words
        .split(|w| w == "repeat")
        .map(|group| {
            let (secs, rest) = group
                .split_first()
                .ok_or_else(|| anyhow!("repeat: expected <seconds> after 'repeat'"))?;
            let every = secs
                .parse::<u64>()
                .ok()
                .filter(|s| (1..=MAX_SECONDS).contains(s))
                .ok_or_else(|| {
                    anyhow!("repeat: '{secs}' is not a number of seconds (1 to {MAX_SECONDS})")
                })?;
            if rest.is_empty() {
                bail!("repeat {secs}: no command to repeat");
            }
            let commands = rest
                .split(|w| w == "and")
                .map(|words| parse_command(secs, words))
                .collect::<Result<_>>()?;
            Ok(Entry {
                every: Duration::from_secs(every),
                commands,
                text: format!("repeat {}", group.join(" ")),
            })
        })
        .collect()
}

fn parse_command(secs: &str, words: &[String]) -> Result<(Command, String)> {
    let words = match words.split_first() {
        Some((first, rest)) if first == "tshs" => rest,
        _ => words,
    };
    if words.is_empty() {
        bail!("repeat {secs}: a command is missing (before or after 'and')");
    }
    let typed = words.join(" ");
    let command = SubCommand::try_parse_from(words)
        .map_err(|e| anyhow!("repeat {secs}: '{typed}': {}", one_line(&e)))?
        .command;
    match command {
        Command::Mount(_) => bail!("repeat {secs}: mount cannot be repeated"),
        c => {
            c.check().map_err(|e| anyhow!("repeat {secs}: {e:#}"))?;
            Ok((c, typed))
        }
    }
}

/// Where each round's output goes.
#[derive(Clone, Copy, Debug)]
pub enum Sink {
    Stdout,
    /// The daemon's log file, one info line per output line.
    Log,
}

impl Sink {
    fn emit(self, out: &[u8]) {
        if out.is_empty() {
            return;
        }
        match self {
            Sink::Stdout => {
                let mut o = std::io::stdout().lock();
                let _ = o.write_all(out).and_then(|()| o.flush());
            }
            Sink::Log => {
                for line in String::from_utf8_lossy(out).lines() {
                    log::info!("{line}");
                }
            }
        }
    }
}

/// A process running `repeat`: connected, checked, and registered as the
/// access point `tshs repeat`.
pub struct Attached {
    pub cluster: Cluster,
    pub runner: Runner,
    _ap: AccessPoint,
}

pub fn attach(cli: &Cli, admin: &ConnOptions, stop: Arc<Stop>) -> Result<Attached> {
    let cluster = connect_admin(admin, cli.max_threads)?;
    cluster.require_admin_node()?;
    let runner = Runner::new(cli, stop, true, Display::Log);
    runner.check(&cluster)?;
    let ap = cluster.register("tshs repeat", |_| {})?;
    if let Some(addr) = cli.metrics {
        crate::metrics::serve(addr)?;
    }
    Ok(Attached {
        cluster,
        runner,
        _ap: ap,
    })
}

/// `tshs repeat …` in the foreground: output on stdout, errors on stderr;
/// SIGINT/SIGTERM stop it after the current step.
pub fn foreground(cli: &Cli, words: &[String]) -> Result<()> {
    let entries = parse(words)?;
    let admin = admin_options(cli)?;
    let stop = Stop::new();
    super::stop::on_signals(stop.clone())?;
    let a = attach(cli, &admin, stop)?;
    run(&a, &entries, Sink::Stdout);
    Ok(())
}

/// Runs every entry on its own thread until stopped or out of time.
pub fn run(a: &Attached, entries: &[Entry], sink: Sink) {
    std::thread::scope(|s| {
        for e in entries {
            s.spawn(move || e.run(a, sink));
        }
    });
}

impl Entry {
    fn run(&self, a: &Attached, sink: Sink) {
        let runner = &a.runner;
        for round in 1.. {
            let started = Instant::now();
            log::debug!("{}: round {round}", self.text);
            for (cmd, typed) in &self.commands {
                if runner.should_stop() {
                    return;
                }
                let mut out = Vec::new();
                let result = execute(&a.cluster, runner, cmd, &mut out);
                sink.emit(&out);
                if let Err(e) = result {
                    log::error!("{typed}: {e:#}");
                }
            }
            // The interval runs from the start of a round, without bursts
            // to catch up after a round that took longer.
            let next = started + self.every;
            let until = runner.deadline().map_or(next, |d| d.min(next));
            if runner.stop().sleep_until(until) || runner.should_stop() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    fn err(s: &str) -> String {
        format!("{:#}", parse(&words(s)).unwrap_err())
    }

    #[test]
    fn the_default_service_command() {
        let e = parse(
            &DEFAULT_SERVICE
                .iter()
                .map(|w| w.to_string())
                .collect::<Vec<_>>(),
        )
        .unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].every, Duration::from_secs(60));
        assert_eq!(e[1].every, Duration::from_secs(14400));
        assert!(matches!(e[1].commands[..], [(Command::DoTasks { .. }, _)]));
    }

    #[test]
    fn tshs_word_and_and() {
        let e = parse(&words(
            "5 tshs list-volumes and list-jobs repeat 7 list-files 3 a/b",
        ))
        .unwrap();
        assert_eq!(e[0].commands.len(), 2);
        assert!(matches!(e[0].commands[1].0, Command::ListJobs));
        assert_eq!(e[0].commands[0].1, "list-volumes");
        assert!(matches!(
            e[1].commands[0].0,
            Command::ListFiles { space_id: 3, .. }
        ));
        assert_eq!(e[1].text, "repeat 7 list-files 3 a/b");
    }

    #[test]
    fn bad_entries() {
        assert!(err("").contains("expected <seconds>"));
        assert!(err("0 list-volumes").contains("'0' is not a number of seconds"));
        assert!(err("-1 list-volumes").contains("'-1' is not a number"));
        assert!(err("ten list-volumes").contains("'ten'"));
        assert!(err("10").contains("no command"));
        assert!(err("10 list-volumes and").contains("missing"));
        assert!(err("10 list-volumes repeat").contains("expected <seconds>"));
        assert!(err("10 bogus").contains("unrecognized subcommand 'bogus'"));
        assert!(err("10 do-tasks bogus").contains("unknown task 'bogus'"));
        assert!(err("10 list-files").contains("<SPACE_ID>"));
        assert!(err("10 list-volumes --time-limit 5").contains("--time-limit"));
        assert!(err("10 mount /x").contains("cannot be repeated"));
        for e in [err("10 bogus"), err("10 list-files")] {
            assert_eq!(e.lines().count(), 1, "{e}");
        }
    }
}
