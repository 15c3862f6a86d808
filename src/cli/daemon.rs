//! `tshs --start [repeat …]`, the maintenance daemon, and `tshs --stop`.
//!
//! `--start` checks everything it can in the foreground (the schedule, the
//! cluster, the log file, the pid file), then daemonises and returns only
//! once the daemon has registered as an access point, or fails with the
//! daemon's reason. The daemon logs to `--log-file` and stops cleanly on
//! SIGTERM/SIGINT after its current step, removing its pid file.
//!
//! The pid file is locked (`flock`) for the daemon's whole life: the lock,
//! not the number in the file, says whether a daemon runs. So a file left by
//! a crash never blocks a start, and `--stop` never signals a process that
//! merely reused the PID.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::{ForkResult, Pid, fork, pipe, setsid};

use super::progress::Display;
use super::repeat::{self, DEFAULT_SERVICE, Entry, Sink};
use super::runner::Runner;
use super::stop::{self, Stop};
use super::{Cli, Command, admin_options, command_name, connect_admin};
use crate::config::ConnOptions;

/// The locked pid file of a running daemon.
struct PidFile {
    path: PathBuf,
    file: File,
}

impl PidFile {
    /// Takes the lock, or fails naming the daemon that holds it.
    fn lock(path: &Path) -> Result<PidFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("cannot open the pid file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(PidFile {
                path: path.to_path_buf(),
                file,
            }),
            Err(TryLockError::WouldBlock) => bail!(
                "tshs is already running (pid {}, pid file {})",
                read_pid(&file).map_or("?".into(), |p| p.to_string()),
                path.display()
            ),
            Err(TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("cannot lock the pid file {}", path.display()))
            }
        }
    }

    fn write_pid(&self) -> Result<()> {
        self.file.set_len(0)?;
        self.file
            .write_all_at(format!("{}\n", std::process::id()).as_bytes(), 0)?;
        Ok(())
    }

    /// Removes the file; the lock goes when the process exits.
    fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn read_pid(mut file: &File) -> Option<i32> {
    let mut s = String::new();
    file.read_to_string(&mut s).ok()?;
    s.trim().parse().ok().filter(|p| *p > 0)
}

/// `tshs --start [repeat …]`: the default is [`DEFAULT_SERVICE`].
pub fn start(cli: &Cli) -> Result<()> {
    let words: Vec<String> = match &cli.command {
        None => DEFAULT_SERVICE.iter().map(|w| w.to_string()).collect(),
        Some(Command::Repeat { words }) => words.clone(),
        Some(other) => bail!(
            "--start runs a repeat command (e.g. tshs --start repeat 60 do-tasks all), not {}",
            command_name(other)
        ),
    };
    let entries = repeat::parse(&words)?;
    let admin = admin_options(cli)?;
    // Fail in the foreground when the cluster is unusable.
    {
        let cluster = connect_admin(&admin, 1)?;
        cluster.require_admin_node()?;
        Runner::new(cli, Stop::new(), true, Display::Log).check(&cluster)?;
    }
    // The daemon works in `/`: make the paths absolute first.
    let log_file = std::path::absolute(&cli.log_file)?;
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_file)
        .with_context(|| format!("cannot open the log file {}", log_file.display()))?;
    let pid_file = PidFile::lock(&std::path::absolute(&cli.pid_file)?)?;

    let (r, w) = pipe()?;
    match unsafe { fork()? } {
        ForkResult::Parent { .. } => {
            drop(w);
            // The lock stays with the daemon, which shares the open file.
            drop(pid_file);
            let mut msg = String::new();
            File::from(r).read_to_string(&mut msg)?;
            match msg.as_str() {
                "ok" => Ok(()),
                "" => bail!(
                    "the tshs daemon exited during startup (see {})",
                    log_file.display()
                ),
                _ => Err(anyhow!(msg)),
            }
        }
        ForkResult::Child => {
            drop(r);
            let mut ready = File::from(w);
            let code = match become_daemon(cli, &admin, &log_file, &pid_file) {
                Err(e) => {
                    log::error!("tshs daemon: {e:#}");
                    let _ = write!(ready, "{e:#}");
                    1
                }
                Ok(attached) => {
                    let _ = ready.write_all(b"ok");
                    drop(ready);
                    serve(&attached, &entries, &words);
                    0
                }
            };
            pid_file.remove();
            std::process::exit(code);
        }
    }
}

/// In the forked child: detach, log to the file, write the pid, handle
/// signals, connect and register.
fn become_daemon(
    cli: &Cli,
    admin: &ConnOptions,
    log_file: &Path,
    pid_file: &PidFile,
) -> Result<repeat::Attached> {
    setsid()?;
    std::env::set_current_dir("/")?;
    crate::logging::to_file(log_file)
        .with_context(|| format!("cannot open the log file {}", log_file.display()))?;
    let devnull = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?
        .into_raw_fd();
    for target in 0..3 {
        unsafe { libc::dup2(devnull, target) };
    }
    drop(unsafe { File::from_raw_fd(devnull) });
    pid_file.write_pid()?;
    let stop = Stop::new();
    stop::on_signals(stop.clone())?;
    repeat::attach(cli, admin, stop)
}

fn serve(a: &repeat::Attached, entries: &[Entry], words: &[String]) {
    log::info!(
        "tshs daemon started (pid {}): repeat {}",
        std::process::id(),
        words.join(" ")
    );
    repeat::run(a, entries, Sink::Log);
    log::info!("tshs daemon stopped");
}

/// `tshs --stop`: SIGTERM to the daemon, then waits until it has exited.
pub fn stop(path: &Path) -> Result<()> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("tshs is not running (no pid file {})", path.display())
        }
        Err(e) => {
            return Err(e).with_context(|| format!("cannot open the pid file {}", path.display()));
        }
    };
    if !locked(&file, path)? {
        let _ = std::fs::remove_file(path);
        bail!(
            "tshs is not running (removed the stale pid file {})",
            path.display()
        );
    }
    let pid = read_pid(&file).ok_or_else(|| {
        anyhow!(
            "the pid file {} is locked but holds no process id (still starting?)",
            path.display()
        )
    })?;
    kill(Pid::from_raw(pid), Signal::SIGTERM)
        .with_context(|| format!("cannot signal tshs (pid {pid})"))?;
    // The lock goes when the daemon exits, after its current step.
    let t = Instant::now();
    let mut told = false;
    while locked(&file, path)? {
        if !told && t.elapsed() > Duration::from_secs(10) {
            eprintln!("tshs: waiting for tshs (pid {pid}) to finish its current step");
            told = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("tshs (pid {pid}) stopped");
    Ok(())
}

/// Whether a daemon holds the lock of the pid file.
fn locked(file: &File, path: &Path) -> Result<bool> {
    match file.try_lock_shared() {
        Ok(()) => {
            file.unlock()?;
            Ok(false)
        }
        Err(TryLockError::WouldBlock) => Ok(true),
        Err(TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock the pid file {}", path.display()))
        }
    }
}
