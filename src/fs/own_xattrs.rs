//! Extended attributes the mount answers itself (named and described in
//! [`crate::protocol`]); they are never stored. `user.tshs.append_offset`
//! comes from [`super::data::AppendOffsets`]; `user.tshs.s3_url` costs one
//! query and a local signature, no request to the store.

use std::time::Duration;

use super::error::{Error, FsResult, store_failed};
use crate::cluster::Route;
use crate::shard::extents;

/// True for a name only the mount may answer.
pub fn is_own(name: &[u8]) -> bool {
    use crate::protocol::{APPEND_OFFSET, DEACTIVATED_SPACES, S3_URL};
    [APPEND_OFFSET, S3_URL, DEACTIVATED_SPACES]
        .iter()
        .any(|own| own.to_bytes() == name)
}

/// A presigned GET URL for the object holding the data of `(space, ino)`,
/// or `ENODATA` (the data is in the database, or its S3 host has
/// `RedirectTimeout=0`).
pub fn s3_url(shard: &Route, space: u32, ino: u64) -> FsResult<Vec<u8>> {
    let (host, key) = extents::object_of(shard, space, ino)?.ok_or(Error::ENODATA)?;
    let store = shard
        .cluster()
        .object_store(host)
        .map_err(|e| store_failed(space, ino, format!("S3 host {host}: {e:#}")))?;
    let valid = store.host().options.redirect_timeout;
    if valid == 0 {
        return Err(Error::ENODATA);
    }
    let url = store
        .presign_get(&key, Duration::from_secs(valid))
        .map_err(|e| store_failed(space, ino, e))?;
    log::debug!("space {space} inode {ino}: presigned a read of S3 host {host} for {valid} s");
    Ok(url.into_bytes())
}
