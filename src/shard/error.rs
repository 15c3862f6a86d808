//! What a Storage Node operation can fail with: a fact of the rows that
//! refuses the request (the caller maps it to an errno), or a failure of the
//! database or of the place a file's data is held, with its cause.

use crate::db::{DbError, TxError};

pub type ShardResult<T> = Result<T, ShardError>;

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("no such file or directory")]
    NotFound,
    #[error("the name exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("the directory is not empty")]
    NotEmpty,
    #[error("too many links")]
    TooManyLinks,
    /// A request the namespace cannot take (a directory moved into itself,
    /// the target of something that is not a symlink).
    #[error("invalid request")]
    Invalid,
    /// Hard links to directories.
    #[error("not permitted")]
    NotPermitted,
    #[error("no such attribute")]
    NoAttribute,
    #[error("the file would grow past the largest size")]
    TooBig,
    #[error("storage node {node}: {what}: {source}")]
    Db {
        node: u32,
        what: &'static str,
        source: Box<DbError>,
    },
    #[error("storage node {node}: {what}: {source}")]
    Tx {
        node: u32,
        what: &'static str,
        source: Box<TxError>,
    },
    /// A file's data could not be had from where it is (the object store,
    /// an imported disk tree).
    #[error("space {space} inode {ino}: {detail}")]
    Store {
        space: u32,
        ino: u64,
        detail: String,
    },
}

impl ShardError {
    pub fn store(space: u32, ino: u64, e: impl std::fmt::Display) -> ShardError {
        ShardError::Store {
            space,
            ino,
            detail: e.to_string(),
        }
    }
}

impl From<ShardError> for crate::db::Body<ShardError> {
    fn from(e: ShardError) -> Self {
        crate::db::Body::Abort(e)
    }
}
