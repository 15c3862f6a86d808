//! The log operations of the space server on the mounted tree: POST's
//! durable append to `protolog/last.log` with its offset, and rotation of
//! a full log (the invariants are in [`super::files`]).

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, mkdirat};
use nix::unistd::{UnlinkatFlags, fsync, linkat, unlinkat};

use super::files::*;
use super::path::RelPath;
use crate::protocol;

impl Tree {
    /// POST: appends `data` to `<volume>/<space>/protolog/last.log` (created
    /// with its directory if missing), durable before it returns; rotates
    /// the log once it reached the rotation size.
    pub fn append(&self, rel: &RelPath, data: &[u8]) -> Result<Appended, Error> {
        if !rel.is_last_log() {
            return Err(Error::Refused(
                "appends go only to /<volume>/<space>/protolog/last.log",
            ));
        }
        let lock = self
            .appends
            .lock()
            .unwrap()
            .entry(rel.to_path())
            .or_default()
            .clone();
        // Appends by the mount's append call share the log: they meet in
        // its group commit. A rotation holds it alone (no append of this
        // server is then in flight), and so does an append by an `O_SYNC`
        // `write` (the kernel runs those one at a time per file anyway).
        let by_call =
            self.append_calls.load(Ordering::Relaxed) && data.len() <= protocol::APPEND_IOCTL_DATA;
        let mut turn = Turn::take(&lock, by_call);
        let protolog = rel.split_last().expect("depth 4").0;
        let deadline = Instant::now() + STALE_NAME_WAIT;
        let (fd, before, dir) = loop {
            let fd = self.open_log(rel)?;
            let before = fresh_fstat(fd.as_fd()).map_err(sys("stat"))?;
            let dir = self.open_at(
                &protolog,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY,
                Mode::empty(),
            )?;
            if self.rotate_size == 0 || before.size < self.rotate_size {
                break (fd, before, dir);
            }
            // A full log: a last.log whose rotation is due (or under way,
            // or was interrupted), or a log another mount rotated, reached
            // through the name this mount's kernel still caches (for the
            // entry TTL). A rotated log must not grow.
            let late = Instant::now() >= deadline;
            if names_of(dir.as_fd(), before.ino)?
                .iter()
                .any(|n| n == "last.log")
            {
                let rotated;
                (turn, rotated) = turn.alone(&lock, || self.rotate(dir.as_fd(), before.ino));
                let renamed = || {
                    fresh_stat_at(dir.as_fd(), "last.log").map(|s| s.ino).ok() != Some(before.ino)
                };
                match rotated {
                    // By this append, or by another of this server between
                    // its turns: open the new last.log.
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) if renamed() => continue,
                    Ok(None) if late => {
                        log::warn!(
                            "{}: last.log is full but cannot be rotated (it has {} names: if ls -i shows it also as the highest <n>.log, a rotation was interrupted: remove last.log)",
                            rel.display(),
                            before.nlink
                        );
                        break (fd, before, dir);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        log::warn!("{}: rotation failed: {e}", rel.display());
                        break (fd, before, dir);
                    }
                }
            } else if late {
                return Err(Error::Busy(
                    "last.log was just rotated and this mount still shows the old file under its name: try again",
                ));
            }
            drop((fd, dir));
            std::thread::sleep(Duration::from_millis(50));
        };
        // On a tshs mount, one call that is durable when it returns.
        let called = if by_call {
            match append_call(fd.as_fd(), data) {
                Ok(told) => Some(told),
                Err(Errno::ENOTTY | Errno::ENOSYS | Errno::EINVAL) => {
                    // Not a tshs mount (or an older one): not asked again;
                    // this append goes the `O_SYNC` `write` way.
                    self.append_calls.store(false, Ordering::Relaxed);
                    drop((turn, fd, dir));
                    return self.append(rel, data);
                }
                Err(errno) => {
                    return Err(Error::Sys {
                        op: "append",
                        errno,
                    });
                }
            }
        } else {
            None
        };
        let told = match called {
            Some(told) => told,
            None => {
                // Durable when it returns (`O_SYNC`).
                let n = nix::unistd::write(&fd, data).map_err(sys("write"))?;
                if n != data.len() {
                    // The mount takes a write of up to 1 MiB whole; this is a bug.
                    return Err(Error::OffsetUnknown(format!(
                        "short write: {n} of {} bytes",
                        data.len()
                    )));
                }
                // The mount tells where this descriptor's append landed.
                // Any refusal (not a tshs mount, an older one, a security
                // module): the append is durable already, so it is found
                // from the sizes instead, never failed (a retry would
                // append it twice).
                landed(fd.as_fd()).ok().flatten()
            }
        };
        let after = fresh_fstat(fd.as_fd()).map_err(sys("stat"))?;
        let len = data.len() as u64;
        let offset = match told {
            Some(o) if o + len <= after.size => o,
            Some(o) => {
                return Err(Error::OffsetUnknown(format!(
                    "the mount's append offset {o} does not fit the file's {} bytes",
                    after.size
                )));
            }
            // A log grows by appends only: a size that moved by this
            // append's length moved by it alone.
            None if after.size == before.size + len => before.size,
            None => find_once(&fd, before.size, after.size, data)?,
        };
        let mut file = "last.log".to_string();
        if self.rotate_size > 0 && after.size >= self.rotate_size {
            let rotated;
            (turn, rotated) = turn.alone(&lock, || self.rotate(dir.as_fd(), after.ino));
            drop(turn);
            match rotated {
                Ok(Some(name)) => file = name,
                Ok(None) => {}
                // The append is done and durable: a failed rotation is
                // retried by the next append.
                Err(e) => log::warn!("{}: rotation failed: {e}", rel.display()),
            }
        }
        if file == "last.log"
            && fresh_stat_at(dir.as_fd(), "last.log").map(|s| s.ino).ok() != Some(after.ino)
        {
            // Another server rotated it meanwhile: name it by its inode.
            if let Some(name) = names_of(dir.as_fd(), after.ino)?.into_iter().next() {
                file = name;
            }
        }
        Ok(Appended {
            offset,
            end: offset + len,
            ino: after.ino,
            file,
        })
    }

    /// Opens `last.log` for appending, creating it (and `protolog/`) if missing.
    fn open_log(&self, rel: &RelPath) -> Result<OwnedFd, Error> {
        // O_SYNC: an append by `write` is durable when it returns, and the
        // mount can tell where it landed.
        let flags = OFlag::O_RDWR | OFlag::O_APPEND | OFlag::O_CREAT | OFlag::O_SYNC;
        let mode = Mode::from_bits_truncate(0o644);
        match self.open_at(rel, flags, mode) {
            Err(Error::Sys {
                errno: Errno::ENOENT,
                ..
            }) => {
                let (protolog, _) = rel.split_last().expect("depth 4");
                let (space, dirname) = protolog.split_last().expect("depth 3");
                let space =
                    self.open_at(&space, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty())?;
                match mkdirat(space.as_fd(), dirname, Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(errno) => return Err(Error::Sys { op: "mkdir", errno }),
                }
                self.open_at(rel, flags, mode)
            }
            other => other,
        }
    }

    /// Renames `last.log` (inode `ino`, which this server just appended to)
    /// to the next free `<n>.log`; the new name, or None when there was
    /// nothing to do.
    ///
    /// Several servers, each on its own mount, may try at once, so:
    /// 1. `last.log` must still be `ino`, at least the rotation size, and
    ///    have one link (more: another rotation is under way; leave it).
    /// 2. `linkat(last.log, <n>.log)` with `n` one past the highest rotated
    ///    log: the mount creates the name in one transaction and fails with
    ///    `EEXIST` if it is taken, so a rotated log is never overwritten.
    ///    Taken: start again.
    /// 3. Read the directory: the names of `ino`. This rotation wins only if
    ///    `last.log` is still among them and `<n>` is the lowest number
    ///    among them; otherwise another rotation of the same file (or a stale
    ///    name) got there first, and this one removes its own `<n>.log`
    ///    link again, which leaves the file as the winner made it.
    /// 4. The winner unlinks `last.log`. Only the winner of `ino` ever
    ///    unlinks `last.log`, and while `last.log` exists nobody creates
    ///    another, so it still names `ino` then. An appender that opened
    ///    `last.log` before that appends to `<n>.log`, and is told so by the
    ///    file's inode number in its answer; the next append creates a
    ///    fresh `last.log`.
    ///
    /// A server killed between 2 and 4 leaves `last.log` with two names;
    /// rotation then pauses (step 1) and a warning says how to finish it by
    /// hand (`rm last.log` once `ls -i` shows it is the same file as the
    /// highest `<n>.log`). Finishing it automatically could race a live
    /// rotation into unlinking a new `last.log`, so it is left to a person.
    pub fn rotate(&self, dir: BorrowedFd<'_>, ino: u64) -> Result<Option<String>, Error> {
        for _ in 0..16 {
            let st = match fresh_stat_at(dir, "last.log") {
                Ok(st) => st,
                Err(Errno::ENOENT) => return Ok(None),
                Err(errno) => return Err(Error::Sys { op: "stat", errno }),
            };
            if st.ino != ino || st.size < self.rotate_size {
                return Ok(None);
            }
            if st.nlink != 1 {
                return Ok(None);
            }
            let next = rotated_numbers(dir)?.into_iter().max().map_or(0, |n| n + 1);
            let mine = format!("{next}.log");
            match linkat(dir, "last.log", dir, mine.as_str(), AtFlags::empty()) {
                Ok(()) => {}
                Err(Errno::EEXIST) => continue,
                Err(Errno::ENOENT) => return Ok(None),
                Err(errno) => return Err(Error::Sys { op: "link", errno }),
            }
            let names = names_of(dir, ino)?;
            let lowest = names.iter().filter_map(|n| log_number(n)).min();
            let linked_ino = fresh_stat_at(dir, &mine).map(|s| s.ino).ok();
            if linked_ino != Some(ino)
                || !names.iter().any(|n| n == "last.log")
                || lowest != Some(next)
            {
                // Lost: take back our extra name (ours alone: we created it).
                unlinkat(dir, mine.as_str(), UnlinkatFlags::NoRemoveDir).map_err(sys("unlink"))?;
                return Ok(None);
            }
            unlinkat(dir, "last.log", UnlinkatFlags::NoRemoveDir).map_err(sys("unlink"))?;
            fsync(dir).map_err(sys("fsync"))?;
            return Ok(Some(mine));
        }
        Ok(None)
    }
}

/// `n` for a rotated log's name `<n>.log` (decimal, no leading zero).
fn log_number(name: &str) -> Option<u64> {
    let n = name.strip_suffix(".log")?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) || (n.len() > 1 && n.starts_with('0'))
    {
        return None;
    }
    n.parse().ok()
}

fn rotated_numbers(dir: BorrowedFd<'_>) -> Result<Vec<u64>, Error> {
    Ok(entries(dir)?
        .iter()
        .filter_map(|(n, _)| log_number(n))
        .collect())
}

/// The names of inode `ino` in `dir`, rotated logs in order first.
fn names_of(dir: BorrowedFd<'_>, ino: u64) -> Result<Vec<String>, Error> {
    let mut names: Vec<String> = entries(dir)?
        .into_iter()
        .filter(|(_, i)| *i == ino)
        .map(|(n, _)| n)
        .collect();
    names.sort_by_key(|n| log_number(n).unwrap_or(u64::MAX));
    Ok(names)
}

/// This server's turn on one log (see [`Tree::append`]).
enum Turn<'a> {
    Shared(RwLockReadGuard<'a, ()>),
    Alone(RwLockWriteGuard<'a, ()>),
}

impl<'a> Turn<'a> {
    fn take(lock: &'a RwLock<()>, shared: bool) -> Turn<'a> {
        // It guards no data: a panic while it was held leaves it usable.
        if shared {
            Turn::Shared(lock.read().unwrap_or_else(PoisonError::into_inner))
        } else {
            Turn::Alone(lock.write().unwrap_or_else(PoisonError::into_inner))
        }
    }

    /// Runs `f` holding the log alone (after the appends in flight through
    /// this server landed), then takes the turn back as it was.
    fn alone<T>(self, lock: &'a RwLock<()>, f: impl FnOnce() -> T) -> (Turn<'a>, T) {
        match self {
            Turn::Alone(g) => {
                let t = f();
                (Turn::Alone(g), t)
            }
            Turn::Shared(g) => {
                drop(g);
                let t = {
                    let _alone = lock.write().unwrap_or_else(PoisonError::into_inner);
                    f()
                };
                (Turn::take(lock, true), t)
            }
        }
    }
}

/// Appends `data` (at most `protocol::APPEND_IOCTL_DATA` bytes) through a
/// tshs mount's append call: durable when it returns, with the offset it
/// landed at if the mount knows it. `ENOTTY` elsewhere.
fn append_call(fd: BorrowedFd<'_>, data: &[u8]) -> Result<Option<u64>, Errno> {
    let mut arg = protocol::AppendArg::new(data);
    // SAFETY: the argument is the `AppendArg` the command's size names,
    // alive and exclusively borrowed for the call.
    let r = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            protocol::APPEND_IOCTL as libc::Ioctl,
            &mut *arg as *mut protocol::AppendArg,
        )
    };
    Errno::result(r)?;
    Ok(arg.landed())
}

/// Where the last append through `fd` landed, as the mount tells
/// (`protocol::LANDED_IOCTL`); `None` if it does not know.
fn landed(fd: BorrowedFd<'_>) -> Result<Option<u64>, Errno> {
    let mut at = 0u64;
    // SAFETY: the argument is the `u64` the command's size names, alive
    // and exclusively borrowed for the call.
    let r = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            protocol::LANDED_IOCTL as libc::Ioctl,
            &mut at as *mut u64,
        )
    };
    match Errno::result(r) {
        Ok(_) => Ok(Some(at)),
        Err(Errno::ENODATA) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The offset of `data` in `[from, to)` of the file, where it must occur
/// exactly once.
fn find_once(fd: &OwnedFd, from: u64, to: u64, data: &[u8]) -> Result<u64, Error> {
    let span = read_span(fd, from, to)?;
    let mut hits = span
        .windows(data.len().max(1))
        .enumerate()
        .filter(|(_, w)| *w == data)
        .map(|(i, _)| from + i as u64);
    match (hits.next(), hits.next()) {
        (Some(off), None) => Ok(off),
        (None, _) => Err(Error::OffsetUnknown(format!(
            "the body is not in bytes {from}..{to}"
        ))),
        (Some(_), Some(_)) => Err(Error::OffsetUnknown(format!(
            "the body occurs more than once in bytes {from}..{to}"
        ))),
    }
}

fn read_span(fd: &OwnedFd, from: u64, to: u64) -> Result<Vec<u8>, Error> {
    let f = File::from(fd.try_clone().map_err(|e| Error::Sys {
        op: "dup",
        errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    })?);
    read_chunk(&f, from, (to - from) as usize).map_err(|e| Error::Sys {
        op: "read",
        errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_names() {
        assert_eq!(log_number("0.log"), Some(0));
        assert_eq!(log_number("17.log"), Some(17));
        for bad in [
            "last.log",
            "01.log",
            ".log",
            "1.log.tmp",
            "-1.log",
            "1a.log",
        ] {
            assert_eq!(log_number(bad), None, "{bad}");
        }
    }
}
