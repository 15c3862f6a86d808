//! Filesystem errors: the errno the kernel gets, and the cause when it is a
//! failure (a database, the object store) rather than the caller's request.
//! A failure is logged once, where it becomes an errno, naming its node.

use std::sync::Arc;

use crate::db::DbError;
use crate::shard::ShardError;

/// An errno for the caller and, for a failure, its cause.
#[derive(Debug, Clone)]
pub struct Error {
    errno: i32,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

pub type FsResult<T> = Result<T, Error>;

/// Two errors are the same answer to the caller when their errnos are.
impl PartialEq for Error {
    fn eq(&self, other: &Error) -> bool {
        self.errno == other.errno
    }
}

impl Eq for Error {}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.source {
            Some(s) => write!(f, "errno {}: {s}", self.errno),
            None => write!(f, "errno {}", self.errno),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|s| s as _)
    }
}

macro_rules! errnos {
    ($($name:ident),*) => {
        impl Error {
            $(pub const $name: Error = Error { errno: libc::$name, source: None };)*
        }
    };
}

errnos!(
    ENOENT,
    EEXIST,
    EIO,
    EINVAL,
    EPERM,
    EACCES,
    ENOTDIR,
    EISDIR,
    ENOTEMPTY,
    EXDEV,
    ENAMETOOLONG,
    ENODATA,
    ERANGE,
    EFBIG,
    EBADF,
    EROFS,
    EMLINK,
    E2BIG,
    EOPNOTSUPP,
    ENXIO,
    ESTALE
);

impl Error {
    pub fn errno(&self) -> i32 {
        self.errno
    }

    /// `EIO` for a failure, logged here with its cause.
    pub fn failed(cause: impl std::error::Error + Send + Sync + 'static) -> Error {
        log::error!("{cause}");
        Error {
            errno: libc::EIO,
            source: Some(Arc::new(cause)),
        }
    }
}

/// Every refusal of the Storage Node has its errno; failures are `EIO`.
impl From<ShardError> for Error {
    fn from(e: ShardError) -> Error {
        let errno = match e {
            ShardError::NotFound => libc::ENOENT,
            ShardError::Exists => libc::EEXIST,
            ShardError::NotDir => libc::ENOTDIR,
            ShardError::IsDir => libc::EISDIR,
            ShardError::NotEmpty => libc::ENOTEMPTY,
            ShardError::TooManyLinks => libc::EMLINK,
            ShardError::Invalid => libc::EINVAL,
            ShardError::NotPermitted => libc::EPERM,
            ShardError::NoAttribute => libc::ENODATA,
            ShardError::TooBig => libc::EFBIG,
            ShardError::Db { .. } | ShardError::Tx { .. } | ShardError::Store { .. } => {
                return Error::failed(e);
            }
        };
        Error {
            errno,
            source: None,
        }
    }
}

impl From<DbError> for Error {
    fn from(e: DbError) -> Error {
        Error::failed(e)
    }
}

/// A failure described by a message (the Admin Node's, an object store's).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Failure(pub String);

/// Logs a failure described by `message` and returns `EIO`.
pub fn failed(message: impl Into<String>) -> Error {
    Error::failed(Failure(message.into()))
}

/// Logs an object store failure (the error names the host) and returns `EIO`.
pub fn store_failed(space: u32, ino: u64, e: impl std::fmt::Display) -> Error {
    failed(format!("space {space} inode {ino}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn refusals_map_to_their_errno_and_failures_keep_their_cause() {
        for (e, errno) in [
            (ShardError::NotFound, libc::ENOENT),
            (ShardError::Exists, libc::EEXIST),
            (ShardError::NotDir, libc::ENOTDIR),
            (ShardError::IsDir, libc::EISDIR),
            (ShardError::NotEmpty, libc::ENOTEMPTY),
            (ShardError::TooManyLinks, libc::EMLINK),
            (ShardError::Invalid, libc::EINVAL),
            (ShardError::NotPermitted, libc::EPERM),
            (ShardError::NoAttribute, libc::ENODATA),
            (ShardError::TooBig, libc::EFBIG),
        ] {
            let e = Error::from(e);
            assert_eq!(e.errno(), errno);
            assert!(e.source().is_none());
        }
        let e = Error::from(ShardError::store(3, 7, "object gone"));
        assert_eq!(e, Error::EIO);
        let cause = e.source().expect("the cause is kept").to_string();
        assert_eq!(cause, "space 3 inode 7: object gone");
    }
}
