//! Filesystem errors: an errno for the kernel, and a log line when the cause
//! is a failing database (naming the node) rather than the caller's input.

use crate::db::{DbError, TxError};

/// An errno for the caller. Database failures become `EIO` after being logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

pub type FsResult<T> = Result<T, Errno>;

impl Errno {
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    pub const EEXIST: Errno = Errno(libc::EEXIST);
    pub const EIO: Errno = Errno(libc::EIO);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const EPERM: Errno = Errno(libc::EPERM);
    pub const EACCES: Errno = Errno(libc::EACCES);
    pub const ENOTDIR: Errno = Errno(libc::ENOTDIR);
    pub const EISDIR: Errno = Errno(libc::EISDIR);
    pub const ENOTEMPTY: Errno = Errno(libc::ENOTEMPTY);
    pub const EXDEV: Errno = Errno(libc::EXDEV);
    pub const ENAMETOOLONG: Errno = Errno(libc::ENAMETOOLONG);
    pub const ENODATA: Errno = Errno(libc::ENODATA);
    pub const ERANGE: Errno = Errno(libc::ERANGE);
    pub const EFBIG: Errno = Errno(libc::EFBIG);
    pub const EBADF: Errno = Errno(libc::EBADF);
    pub const EROFS: Errno = Errno(libc::EROFS);
    pub const ENOSYS: Errno = Errno(libc::ENOSYS);
    pub const EMLINK: Errno = Errno(libc::EMLINK);
    pub const E2BIG: Errno = Errno(libc::E2BIG);
    pub const EOPNOTSUPP: Errno = Errno(libc::EOPNOTSUPP);
    pub const ENXIO: Errno = Errno(libc::ENXIO);
}

/// Logs a database failure with the node it came from and returns `EIO`.
pub fn db_failed(node: u32, what: &str, e: impl std::fmt::Display) -> Errno {
    log::error!("storage node {node}: {what}: {e}");
    Errno::EIO
}

/// Logs an object store failure (the error names the host) and returns `EIO`.
pub fn store_failed(space: u32, ino: u64, e: impl std::fmt::Display) -> Errno {
    log::error!("space {space} inode {ino}: {e}");
    Errno::EIO
}

impl From<DbError> for Errno {
    fn from(e: DbError) -> Errno {
        log::error!("{e}");
        Errno::EIO
    }
}

/// Turns a transaction's failure into an errno: an errno the transaction body
/// decided (see [`Abort`]) passes through (its cause, if any, is logged),
/// anything else is logged as `EIO`.
pub fn tx_errno(node: u32, what: &str, e: TxError, abort: &Abort) -> Errno {
    if let Some(errno) = abort.take() {
        if let Some(cause) = abort.take_cause() {
            log::error!("{cause}");
        }
        return errno;
    }
    db_failed(node, what, e)
}

/// Carries an errno out of a transaction body, which can only return
/// `mysql::Error`: set it, return [`Abort::error`], and the transaction rolls back.
#[derive(Default)]
pub struct Abort {
    errno: std::cell::Cell<Option<Errno>>,
    cause: std::cell::RefCell<Option<String>>,
}

impl Abort {
    pub fn fail(&self, errno: Errno) -> mysql::Error {
        self.errno.set(Some(errno));
        crate::db::body_failed(format!("aborted with errno {}", errno.0))
    }

    /// Fails with `EIO` because a file's data could not be had from where
    /// it is (the object store, an imported tree); the cause is kept for
    /// [`tx_errno`] to log or for the caller to report.
    pub fn store_failed(&self, space: u32, ino: u64, e: impl std::fmt::Display) -> mysql::Error {
        *self.cause.borrow_mut() = Some(format!("space {space} inode {ino}: {e}"));
        self.fail(Errno::EIO)
    }

    pub fn take(&self) -> Option<Errno> {
        self.errno.take()
    }

    pub fn take_cause(&self) -> Option<String> {
        self.cause.borrow_mut().take()
    }
}
