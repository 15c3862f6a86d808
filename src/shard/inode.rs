//! An inode's row as the core sees it, the mapping between FUSE inode
//! numbers and (space, per-space inode), and the life states of an inode.
//!
//! Inode numbers are stable for a file's life, across splits and restores:
//! `(space id << 32) | per-space inode`. The root is 1 and volume `v` is
//! `1 + v`, both below 2^31; from 2^31 to 2^32 (where no space lives: space
//! IDs start at 1) are the nodes of the snapshots' tree, which the mount
//! numbers as it hands them out.

use mysql::Row;

pub const ROOT_INO: u64 = 1;

/// `/.snapshots`; the nodes below it follow (see `fs::snapshots`).
pub const SNAPSHOTS_INO: u64 = 1 << 31;

/// What a FUSE inode number names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Node {
    Root,
    Volume(u32),
    /// (space id, inode number within the space; 1 is the space's root)
    Space(u32, u64),
    /// A node of the snapshots' tree: 0 is `/.snapshots`.
    Snapshot(u32),
}

impl Node {
    pub fn from_ino(ino: u64) -> Node {
        match ino {
            ROOT_INO => Node::Root,
            i if i < SNAPSHOTS_INO => Node::Volume((i - 1) as u32),
            i if i < 1 << 32 => Node::Snapshot((i - SNAPSHOTS_INO) as u32),
            i => Node::Space((i >> 32) as u32, i & 0xffff_ffff),
        }
    }

    pub fn ino(self) -> u64 {
        match self {
            Node::Root => ROOT_INO,
            Node::Volume(v) => 1 + u64::from(v),
            Node::Space(s, i) => (u64::from(s) << 32) | i,
            Node::Snapshot(n) => SNAPSHOTS_INO + u64::from(n),
        }
    }
}

/// Attributes of one inode. Times are nanoseconds since the epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Bytes actually stored (holes excluded): st_blocks = ceil(stored / 512).
    pub stored: u64,
    pub rdev: u32,
    pub atime: i64,
    pub mtime: i64,
    pub ctime: i64,
    pub btime: i64,
}

impl Attr {
    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }
    pub fn is_reg(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFREG
    }
    pub fn blocks(&self) -> u64 {
        self.stored.div_ceil(512)
    }

    /// A directory that exists only in the Admin Node (root, volume).
    pub fn synthetic_dir(ino: u64, nlink: u32, time: i64) -> Attr {
        Attr {
            ino,
            mode: libc::S_IFDIR | 0o755,
            nlink,
            uid: 0,
            gid: 0,
            size: 4096,
            stored: 4096,
            rdev: 0,
            atime: time,
            mtime: time,
            ctime: time,
            btime: time,
        }
    }
}

/// Where an inode is in its life (`inodes.state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum InodeState {
    /// Has a name, or is open somewhere with one.
    Live = 0,
    /// Lost its last name while open in a mount (`holder`): purged once that
    /// mount closes it or is gone.
    Orphan = 1,
    /// Gone: its rows wait for remove-deleted.
    Deleted = 2,
}

/// The states as the `state` column stores them, for statements.
pub const LIVE: u8 = InodeState::Live as u8;
pub const ORPHAN: u8 = InodeState::Orphan as u8;
pub const DELETED: u8 = InodeState::Deleted as u8;

impl InodeState {
    pub fn from_db(v: u8) -> InodeState {
        match v {
            0 => InodeState::Live,
            1 => InodeState::Orphan,
            _ => InodeState::Deleted,
        }
    }
}

/// The columns [`from_row`] reads, in order; prefix with a table alias as needed.
pub const COLUMNS: &str =
    "ino, mode, uid, gid, nlink, size, stored, rdev, atime, mtime, ctime, btime";

/// Same as [`COLUMNS`] with the alias `i.`.
pub const I_COLUMNS: &str = "i.ino, i.mode, i.uid, i.gid, i.nlink, i.size, i.stored, i.rdev, i.atime, i.mtime, i.ctime, i.btime";

/// Reads an [`Attr`] from the first 12 columns of a row (see [`COLUMNS`]).
pub fn from_row(space: u32, row: &Row) -> Attr {
    let g = |i: usize| -> u64 { row.get(i).unwrap_or(0) };
    let t = |i: usize| -> i64 { row.get(i).unwrap_or(0) };
    Attr {
        ino: Node::Space(space, g(0)).ino(),
        mode: g(1) as u32,
        uid: g(2) as u32,
        gid: g(3) as u32,
        nlink: g(4) as u32,
        size: g(5),
        stored: g(6),
        rdev: g(7) as u32,
        atime: t(8),
        mtime: t(9),
        ctime: t(10),
        btime: t(11),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_numbers_round_trip() {
        for n in [
            Node::Root,
            Node::Volume(1),
            Node::Volume(77),
            Node::Snapshot(0),
            Node::Snapshot((1 << 31) - 1),
            Node::Space(3, 1),
            Node::Space(u32::MAX, 0xffff_ffff),
        ] {
            assert_eq!(Node::from_ino(n.ino()), n);
        }
        assert_eq!(Node::Space(3, 1).ino(), (3 << 32) | 1);
    }
}
