//! What `statfs` reports. Capacity is the databases' disks, which the
//! mount cannot see: a large total, with the used part honest to usage.

/// Block size, and fragment size, reported.
const BSIZE: u64 = 4096;
/// Bytes reported as the total.
const CAPACITY: u64 = 1 << 50;
/// Inodes reported as the total.
const TOTAL_FILES: u64 = 1 << 40;
/// Longest name.
const NAMELEN: u32 = 255;

/// The fields of `statfs(2)`, sizes in blocks of `bsize`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

impl StatFs {
    /// With `files` inodes used and `bytes` stored.
    pub fn new(files: u64, bytes: u64) -> StatFs {
        let blocks = CAPACITY / BSIZE;
        let free = blocks.saturating_sub(bytes.div_ceil(BSIZE));
        StatFs {
            blocks,
            bfree: free,
            bavail: free,
            files: TOTAL_FILES,
            ffree: TOTAL_FILES.saturating_sub(files),
            bsize: BSIZE as u32,
            namelen: NAMELEN,
            frsize: BSIZE as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_taken_from_the_total() {
        let s = StatFs::new(10, 4097);
        assert_eq!(s.blocks, (1 << 50) / 4096);
        assert_eq!(s.bfree, s.blocks - 2);
        assert_eq!(s.bavail, s.bfree);
        assert_eq!((s.files, s.ffree), (1 << 40, (1 << 40) - 10));
        assert_eq!((s.bsize, s.namelen, s.frsize), (4096, 255, 4096));
    }
}
