//! Extended attributes the mount answers itself; they are never stored.
//!
//! - `user.tshs.append_offset`: the offset, in decimal, at which the calling
//!   thread's last `O_APPEND` write to this file landed, while the file is
//!   open in this mount (see [`super::data::AppendOffsets`]). With it an
//!   appender learns its offset even when another mount appends at the same
//!   moment (the space server asks right after its write, on the same
//!   thread). Threads are told apart by the caller's thread id that FUSE
//!   passes with each request.
//! - `user.tshs.s3_url`: for a regular file whose data is in the object
//!   store, a presigned GET URL of its object, valid for the S3 host's
//!   `RedirectTimeout` seconds (the space server's `--s3-redirect`). One
//!   query and a local signature; no request goes to the store.
//!
//! - `user.tshs.deactivated_spaces`, of a volume directory: the IDs of its
//!   spaces deactivated for a restore, in decimal, separated by spaces. The
//!   mount refuses those spaces with `EACCES` to all but root and its
//!   `admin_gid`; this tells a refused process (the space server) why. Root
//!   and that group, refused nothing, are told nothing (`ENODATA`).
//!
//! All answer `ENODATA` when there is nothing to tell (no append by this
//! thread; a file in the database; `RedirectTimeout=0`; no space
//! deactivated). `listxattr` does
//! not show them; `setxattr` and `removexattr` refuse them with `EPERM`.
//! The URL is a credential for one object: it is never logged.

use std::time::Duration;

use mysql::prelude::Queryable;

use super::error::{Error, FsResult, db_failed, store_failed};
use crate::cluster::Route;

pub const APPEND_OFFSET: &[u8] = b"user.tshs.append_offset";
pub const S3_URL: &[u8] = b"user.tshs.s3_url";
pub const DEACTIVATED_SPACES: &[u8] = b"user.tshs.deactivated_spaces";

/// True for a name only the mount may answer.
pub fn is_own(name: &[u8]) -> bool {
    name == APPEND_OFFSET || name == S3_URL || name == DEACTIVATED_SPACES
}

/// A presigned GET URL for the object holding the data of `(space, ino)`,
/// or `ENODATA` (the data is in the database, or its S3 host has
/// `RedirectTimeout=0`).
pub fn s3_url(shard: &Route, space: u32, ino: u64) -> FsResult<Vec<u8>> {
    let row: Option<(u32, Vec<u8>)> = shard
        .read(|c| {
            c.exec_first(
                "SELECT s3_host, s3_key FROM inodes
                 WHERE space_id = ? AND ino = ? AND state < 2 AND s3_key IS NOT NULL",
                (space, ino),
            )
        })
        .map_err(|e| db_failed(shard.id(), "read", e))?;
    let (host, key) = row.ok_or(Error::ENODATA)?;
    let store = shard
        .cluster()
        .object_store(host)
        .map_err(|e| store_failed(space, ino, format!("S3 host {host}: {e:#}")))?;
    let valid = store.host().options.redirect_timeout;
    if valid == 0 {
        return Err(Error::ENODATA);
    }
    let key = String::from_utf8_lossy(&key);
    let url = store
        .presign_get(&key, Duration::from_secs(valid))
        .map_err(|e| store_failed(space, ino, e))?;
    log::debug!("space {space} inode {ino}: presigned a read of S3 host {host} for {valid} s");
    Ok(url.into_bytes())
}
