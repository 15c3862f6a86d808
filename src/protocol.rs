//! The `user.tshs.*` extended attributes: what a mount answers
//! ([`crate::fs::own_xattrs`]) and the space server asks, written once.
//!
//! - [`APPEND_OFFSET`]: the offset, in decimal, at which the calling
//!   thread's last `O_APPEND` write to this file landed, while the file is
//!   open in this mount. With it an appender learns its offset even when
//!   another mount appends at the same moment (the space server asks right
//!   after its write, on the same thread). Threads are told apart by the
//!   caller's thread id that FUSE passes with each request.
//! - [`S3_URL`]: for a regular file whose data is in the object store, a
//!   presigned GET URL of its object, valid for the S3 host's
//!   `RedirectTimeout` seconds (the space server's `--s3-redirect`).
//! - [`DEACTIVATED_SPACES`], of a volume directory: the IDs of its spaces
//!   deactivated for a restore, in decimal, separated by spaces. The mount
//!   refuses those spaces with `EACCES` to all but root and its
//!   `admin_gid`; this tells a refused process (the space server) why. Root
//!   and that group, refused nothing, are told nothing (`ENODATA`).
//!
//! All answer `ENODATA` when there is nothing to tell (no append by this
//! thread; a file in the database; `RedirectTimeout=0`; no space
//! deactivated). `listxattr` does not show them; `setxattr` and
//! `removexattr` refuse them with `EPERM`. The URL is a credential for one
//! object: it is never logged.

use std::ffi::CStr;

pub const APPEND_OFFSET: &CStr = c"user.tshs.append_offset";
pub const S3_URL: &CStr = c"user.tshs.s3_url";
pub const DEACTIVATED_SPACES: &CStr = c"user.tshs.deactivated_spaces";

/// The value of [`APPEND_OFFSET`].
pub fn encode_offset(offset: u64) -> Vec<u8> {
    offset.to_string().into_bytes()
}

/// An [`APPEND_OFFSET`] value, or `None` if it is not one.
pub fn decode_offset(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// The value of [`DEACTIVATED_SPACES`], the IDs in the order given.
pub fn encode_space_ids(ids: &[u32]) -> Vec<u8> {
    let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
    ids.join(" ").into_bytes()
}

/// The space IDs of a [`DEACTIVATED_SPACES`] value; what is not one is
/// skipped.
pub fn decode_space_ids(value: &[u8]) -> Vec<u32> {
    let Ok(value) = std::str::from_utf8(value) else {
        return Vec::new();
    };
    value.split(' ').filter_map(|id| id.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
        assert_eq!(encode_offset(4096), b"4096");
        assert_eq!(decode_offset(&encode_offset(u64::MAX)), Some(u64::MAX));
        assert_eq!(decode_offset(b"-1"), None);
        assert_eq!(decode_offset(b"\xff"), None);
        assert_eq!(encode_space_ids(&[3, 17]), b"3 17");
        assert_eq!(decode_space_ids(&encode_space_ids(&[3, 17])), [3, 17]);
        assert_eq!(decode_space_ids(b"3 x 17"), [3, 17]);
        assert_eq!(decode_space_ids(b"\xff"), Vec::<u32>::new());
    }
}
