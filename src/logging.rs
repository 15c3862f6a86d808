//! Log lines to stderr, or to a file for daemons: `time level message`.
//! `TSHS_LOG=debug|info|warn` sets the level (default `info`).

use std::io::Write;
use std::sync::Mutex;

static OUT: Mutex<Option<Box<dyn Write + Send>>> = Mutex::new(None);

struct Logger {
    level: log::LevelFilter,
}

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= self.level && m.target().starts_with("tshs")
    }
    fn log(&self, r: &log::Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let line = format!(
            "{}.{:03} {} {}\n",
            now.as_secs(),
            now.subsec_millis(),
            r.level(),
            r.args()
        );
        match OUT.lock().unwrap().as_mut() {
            Some(f) => {
                let _ = f.write_all(line.as_bytes());
            }
            None => eprint!("{line}"),
        }
    }
    fn flush(&self) {}
}

/// Logs to stderr until [`to_file`] is called.
pub fn init() {
    let level = std::env::var("TSHS_LOG")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(log::LevelFilter::Info);
    if log::set_boxed_logger(Box::new(Logger { level })).is_ok() {
        log::set_max_level(level);
    }
}

/// Sends log lines to a file (appending), for daemons.
pub fn to_file(path: &std::path::Path) -> std::io::Result<()> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    *OUT.lock().unwrap() = Some(Box::new(f));
    Ok(())
}
