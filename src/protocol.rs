//! The `user.tshs.*` extended attributes and the `ioctl`s: what a mount
//! answers ([`crate::fs::own_xattrs`], `fuse::ioctl`) and the space server
//! asks, written once.
//!
//! - [`APPEND_OFFSET`]: the offset, in decimal, at which the calling
//!   thread's last `O_APPEND` write to this file landed, while the file is
//!   open in this mount. With it an appender learns its offset even when
//!   another mount appends at the same moment (asked right after the
//!   write, on the same thread). Threads are told apart by the caller's
//!   thread id that FUSE passes with each request.
//!   FUSE gives thread id 0 to every caller in a pid namespace the mount
//!   cannot see into, so such callers share one offset: they use
//!   [`LANDED_IOCTL`].
//! - [`APPEND_IOCTL`] (an `ioctl`, not an attribute): a durable append
//!   that tells where it landed, in one request.
//! - [`LANDED_IOCTL`] (an `ioctl`): where the last synchronous append
//!   through this open file landed (`O_SYNC` or `O_DSYNC` `write`, or
//!   [`APPEND_IOCTL`]), for appends too large for the call.
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

/// `ioctl` [`APPEND_IOCTL`] on a file open `O_APPEND` for writing appends
/// up to this many bytes, durable when the call returns.
pub const APPEND_IOCTL_DATA: usize = 16368;

/// The argument of [`APPEND_IOCTL`]: `len` bytes of `data` in, and on
/// return the offset they landed at in the first 8 bytes of the argument
/// (in the host's byte order, as `len`; `u64::MAX` if the mount does not know:
/// its answer was lost).
/// Unlike `write` + `fsync`, which the kernel runs one at a time per file,
/// such appends to one file from many threads meet in one group commit.
#[repr(C)]
pub struct AppendArg {
    pub len: u32,
    pub reserved: u32,
    pub data: [u8; APPEND_IOCTL_DATA],
}

/// `_IOWR(0xE5, 1, AppendArg)`: read and written by the kernel, 16,376
/// bytes (the most an ioctl argument's size field holds is 16,383).
pub const APPEND_IOCTL: u32 =
    (3 << 30) | ((std::mem::size_of::<AppendArg>() as u32) << 16) | (0xE5 << 8) | 1;

impl AppendArg {
    /// An argument carrying `data` (at most [`APPEND_IOCTL_DATA`] bytes).
    pub fn new(data: &[u8]) -> Box<AppendArg> {
        let mut arg = Box::new(AppendArg {
            len: data.len() as u32,
            reserved: 0,
            data: [0; APPEND_IOCTL_DATA],
        });
        arg.data[..data.len()].copy_from_slice(data);
        arg
    }

    /// After the call: the offset the mount wrote over the first 8 bytes,
    /// if it knew it.
    pub fn landed(&self) -> Option<u64> {
        let mut at = [0u8; 8];
        at[..4].copy_from_slice(&self.len.to_ne_bytes());
        at[4..].copy_from_slice(&self.reserved.to_ne_bytes());
        Some(u64::from_ne_bytes(at)).filter(|&at| at != u64::MAX)
    }
}

/// `_IOR(0xE5, 2, u64)`: on a file open `O_APPEND` for writing, the offset
/// at which the last append through this open file description landed,
/// in the host's byte order, if it waited for its commit (`O_SYNC` or
/// `O_DSYNC`, or [`APPEND_IOCTL`]) and the mount knows; else `ENODATA`.
/// Per open file description, not per thread: exact however many callers
/// share a thread id, as long as no other append goes through the same
/// description meanwhile (a `dup` or a `fork` shares it).
pub const LANDED_IOCTL: u32 = (2 << 30) | (8 << 16) | (0xE5 << 8) | 2;

/// The data of an [`APPEND_IOCTL`] argument as the mount receives it.
pub fn append_ioctl_data(arg: &[u8]) -> Option<&[u8]> {
    let len = u32::from_ne_bytes(arg.get(..4)?.try_into().ok()?) as usize;
    (len <= APPEND_IOCTL_DATA).then(|| arg.get(8..8 + len))?
}

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
    fn append_ioctl_argument() {
        assert_eq!(std::mem::size_of::<AppendArg>(), 16376);
        assert_eq!(APPEND_IOCTL, 0xC000_0000 | (16376 << 16) | 0xE501);
        assert_eq!(LANDED_IOCTL, 0x8008_E502);
        let mut arg = vec![0u8; 16376];
        arg[..4].copy_from_slice(&3u32.to_ne_bytes());
        arg[8..11].copy_from_slice(b"abc");
        assert_eq!(append_ioctl_data(&arg), Some(&b"abc"[..]));
        arg[..4].copy_from_slice(&16369u32.to_ne_bytes());
        assert_eq!(append_ioctl_data(&arg), None);
        assert_eq!(append_ioctl_data(&arg[..2]), None);
    }

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
