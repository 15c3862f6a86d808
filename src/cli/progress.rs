//! Progress of a long maintenance task: a bar (indicatif) when stderr is a
//! terminal, otherwise a plain log line at most every few seconds, so a
//! pipe or the daemon's log gets a pulse without a flood.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{BinaryBytes, ProgressBar, ProgressStyle};

use crate::tasks::Progress;

/// Least time between two plain progress lines.
const LOG_EVERY: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Display {
    Bar,
    Log,
}

impl Display {
    /// A bar where someone watches (the bar draws on stderr), lines elsewhere.
    pub fn detect() -> Display {
        if std::io::stderr().is_terminal() {
            Display::Bar
        } else {
            Display::Log
        }
    }
}

/// Receives one task run's [`Progress`] from any thread.
pub enum Reporter {
    /// The bar and the log level to restore when it goes.
    Bar(ProgressBar, log::LevelFilter),
    Log(Mutex<Instant>),
}

impl Reporter {
    pub fn new(display: Display) -> Reporter {
        match display {
            Display::Bar => {
                let style =
                    ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {wide_msg}")
                        .expect("the template is valid")
                        .progress_chars("=> ");
                let bar = ProgressBar::new(0).with_style(style);
                // Redraw now and then even when a step is long.
                bar.enable_steady_tick(Duration::from_secs(1));
                // The bar says what the tasks' info lines would, and lines
                // written under it garble it: only warnings meanwhile,
                // unless TSHS_LOG asked for debug.
                let level = log::max_level();
                if level == log::LevelFilter::Info {
                    log::set_max_level(log::LevelFilter::Warn);
                }
                Reporter::Bar(bar, level)
            }
            // The first line comes after LOG_EVERY: quick runs stay quiet.
            Display::Log => Reporter::Log(Mutex::new(Instant::now())),
        }
    }

    pub fn update(&self, p: &Progress) {
        match self {
            Reporter::Bar(bar, _) => {
                bar.set_prefix(p.task);
                bar.set_length(p.total.max(p.done));
                bar.set_position(p.done);
                bar.set_message(detail(p));
            }
            Reporter::Log(last) => {
                let mut last = last.lock().unwrap();
                if last.elapsed() >= LOG_EVERY {
                    *last = Instant::now();
                    log::info!("{}", line(p));
                }
            }
        }
    }

    /// Runs `f`, which prints, with the bar out of its way.
    pub fn suspend<T>(&self, f: impl FnOnce() -> T) -> T {
        match self {
            Reporter::Bar(bar, _) => bar.suspend(f),
            Reporter::Log(_) => f(),
        }
    }

    /// Removes the bar, so the task's result prints on a clean line.
    pub fn finish(self) {
        if let Reporter::Bar(bar, level) = self {
            bar.finish_and_clear();
            log::set_max_level(level);
        }
    }
}

/// What a task's progress counts: spaces moved, spaces purged, files moved.
pub fn unit(task: &str) -> &'static str {
    match task {
        "copy-shards" => "spaces",
        "remove-deleted" => "spaces",
        "move-to-s3" => "files",
        "copy-to-s3" => "spaces",
        "perform-import" => "spaces",
        "fsck" => "spaces and buckets",
        _ => "items",
    }
}

fn detail(p: &Progress) -> String {
    let mut s = format!("{}, {}", unit(p.task), BinaryBytes(p.bytes));
    if !p.item.is_empty() {
        s += &format!(" ({})", p.item);
    }
    s
}

/// `copy-shards: 3/20 spaces, 11.92 MiB (space 12: 3.10 MiB)`
pub fn line(p: &Progress) -> String {
    let count = if p.total > 0 {
        format!("{}/{}", p.done, p.total)
    } else {
        p.done.to_string()
    };
    format!("{}: {count} {}", p.task, detail(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_line() {
        let mut p = Progress {
            task: "copy-shards",
            done: 3,
            total: 20,
            bytes: 12_500_000,
            item: String::new(),
        };
        assert_eq!(line(&p), "copy-shards: 3/20 spaces, 11.92 MiB");
        p.total = 0;
        p.item = "space 12".into();
        assert_eq!(line(&p), "copy-shards: 3 spaces, 11.92 MiB (space 12)");
    }
}
