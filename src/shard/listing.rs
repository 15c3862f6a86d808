//! A space's inodes and names as list-files shows them (deleted inodes
//! included until purged).

use anyhow::Result;
use mysql::prelude::Queryable;

use super::Shard;
use super::inode::InodeState;

/// Where a file's data is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataPlace {
    Database,
    ObjectStore,
    /// On the imported on-disk tree, not brought in yet.
    Disk,
}

/// One inode of a space, for a listing.
#[derive(Clone, Debug)]
pub struct ListedInode {
    pub ino: u64,
    pub mode: u32,
    pub size: u64,
    /// Its last link went (it waits for remove-deleted).
    pub deleted: bool,
    pub mtime: i64,
    pub data: DataPlace,
}

/// One directory entry of a space.
#[derive(Clone, Debug)]
pub struct ListedDentry {
    pub parent: u64,
    pub name: Vec<u8>,
    pub ino: u64,
}

impl Shard {
    /// Every inode of a space.
    pub fn list_inodes(&self, space: u32) -> Result<Vec<ListedInode>> {
        let rows: Vec<(u64, u32, u64, u8, i64, u8)> = self.db.read(|c| {
            c.exec(
                "SELECT ino, mode, size, state, mtime, IF(s3_key IS NOT NULL, 1, IF(import_path IS NOT NULL, 2, 0))
                 FROM inodes WHERE space_id = ?",
                (space,),
            )
        })?;
        Ok(rows
            .into_iter()
            .map(|(ino, mode, size, state, mtime, place)| ListedInode {
                ino,
                mode,
                size,
                deleted: InodeState::from_db(state) != InodeState::Live,
                mtime,
                data: match place {
                    1 => DataPlace::ObjectStore,
                    2 => DataPlace::Disk,
                    _ => DataPlace::Database,
                },
            })
            .collect())
    }

    /// Every directory entry of a space, by parent and name.
    pub fn list_dentries(&self, space: u32) -> Result<Vec<ListedDentry>> {
        let rows: Vec<(u64, Vec<u8>, u64)> = self.db.read(|c| {
            c.exec(
                "SELECT parent, name, ino FROM dentries WHERE space_id = ? ORDER BY parent, name",
                (space,),
            )
        })?;
        Ok(rows
            .into_iter()
            .map(|(parent, name, ino)| ListedDentry { parent, name, ino })
            .collect())
    }
}
