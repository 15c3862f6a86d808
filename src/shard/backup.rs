//! A space's rows as a backup keeps them: copy-to-s3 reads them in one
//! snapshot, restore-from-s3 writes them back into a new empty node.

use std::collections::HashMap;

use anyhow::{Result, anyhow};
use mysql::prelude::Queryable;

use super::Shard;
use super::inode::LIVE;
use crate::db::{Body, Failed};

/// A space's counters and its live rows.
#[derive(Clone, Debug, Default)]
pub struct SpaceRows {
    pub next_ino: u64,
    pub next_seq: u64,
    pub inodes: Vec<InodeRow>,
    pub dentries: Vec<DentryRow>,
    /// (ino, name, value)
    pub xattrs: Vec<(u64, Vec<u8>, Vec<u8>)>,
}

#[derive(Clone, Debug, Default)]
pub struct InodeRow {
    pub ino: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub stored: u64,
    pub rdev: u32,
    /// atime, mtime, ctime, btime (ns)
    pub times: [i64; 4],
    pub target: Option<Vec<u8>>,
    pub s3_host: Option<u32>,
    pub s3_key: Option<Vec<u8>>,
}

#[derive(Clone, Debug)]
pub struct DentryRow {
    pub parent: u64,
    pub seq: u64,
    pub ino: u64,
    pub name: Vec<u8>,
}

/// Reads `(offset, length)` of a backup copy; the error says why not.
pub type ReadBackup = Box<dyn Fn(u64, u64) -> Result<Vec<u8>, String>>;

impl Shard {
    /// The newest ctime of the space's live inodes (every change of data,
    /// attributes or names moves one); None for an empty or unknown space.
    pub fn newest_ctime(&self, space: u32) -> Result<Option<i64>> {
        let newest: Option<Option<i64>> = self.db.read(|c| {
            c.exec_first(
                "SELECT MAX(ctime) FROM inodes WHERE space_id = ? AND state = ?",
                (space, LIVE),
            )
        })?;
        Ok(newest.flatten())
    }

    /// One consistent snapshot of a space's live rows; None when the space
    /// is not (or no longer) on this node.
    pub fn space_rows(&self, space: u32) -> Result<Option<SpaceRows>> {
        let snapshot = self
            .tx(|tx| {
                let counters: Option<(u64, u64)> = tx.exec_first(
                    "SELECT next_ino, next_seq FROM spaces WHERE space_id = ?",
                    (space,),
                )?;
                let inodes: Vec<mysql::Row> = tx.exec(
                    "SELECT ino, mode, uid, gid, nlink, size, stored, rdev, atime, mtime, ctime, btime, target, s3_host, s3_key
                     FROM inodes WHERE space_id = ? AND state = ? ORDER BY ino",
                    (space, LIVE),
                )?;
                let dentries: Vec<(u64, u64, u64, Vec<u8>)> = tx.exec(
                    "SELECT parent, seq, ino, name FROM dentries WHERE space_id = ? ORDER BY parent, seq",
                    (space,),
                )?;
                let xattrs: Vec<(u64, Vec<u8>, Vec<u8>)> = tx.exec(
                    "SELECT ino, name, value FROM xattrs WHERE space_id = ? ORDER BY ino, name",
                    (space,),
                )?;
                Ok((counters, inodes, dentries, xattrs))
            })
            .map_err(|e| anyhow!("storage node {}: {e}", self.id))?;
        let (Some((next_ino, next_seq)), inodes, dentries, xattrs) = snapshot else {
            return Ok(None);
        };
        let inodes = inodes
            .into_iter()
            .map(|r| {
                let g = |i: usize| -> u64 { r.get(i).unwrap_or(0) };
                let t = |i: usize| -> i64 { r.get(i).unwrap_or(0) };
                InodeRow {
                    ino: g(0),
                    mode: g(1) as u32,
                    uid: g(2) as u32,
                    gid: g(3) as u32,
                    nlink: g(4) as u32,
                    size: g(5),
                    stored: g(6),
                    rdev: g(7) as u32,
                    times: [t(8), t(9), t(10), t(11)],
                    target: r.get::<Option<Vec<u8>>, _>(12).flatten(),
                    s3_host: r.get::<Option<u32>, _>(13).flatten(),
                    s3_key: r.get::<Option<Vec<u8>>, _>(14).flatten(),
                }
            })
            .collect();
        let dentries = dentries
            .into_iter()
            .map(|(parent, seq, ino, name)| DentryRow {
                parent,
                seq,
                ino,
                name,
            })
            .collect();
        Ok(Some(SpaceRows {
            next_ino,
            next_seq,
            inodes,
            dentries,
            xattrs,
        }))
    }

    /// Writes a space back from `rows` in one transaction, its fence row
    /// first. An inode in `backups` (ino → S3 host and key) gets its data
    /// copied into the database from that object, opened with
    /// `open_backup`; its `stored` is then what was copied.
    pub fn restore_space(
        &self,
        space: u32,
        rows: &SpaceRows,
        backups: &HashMap<u64, (u32, String)>,
        open_backup: &dyn Fn(u32, &str) -> Result<ReadBackup, String>,
    ) -> Result<()> {
        self.db().tx_body(|tx| {
            tx.exec_drop("INSERT INTO space_fence (space_id) VALUES (?)", (space,))?;
            tx.exec_drop(
                "INSERT INTO spaces (space_id, next_ino, next_seq) VALUES (?, ?, ?)",
                (space, rows.next_ino, rows.next_seq),
            )?;
            for i in &rows.inodes {
                let stored = match backups.get(&i.ino) {
                    Some((host, key)) => {
                        let read = open_backup(*host, key).map_err(Body::Abort)?;
                        super::extents::copy_in(tx, space, i.ino, i.size, |off, n| {
                            read(off, n).map_err(Body::Abort)
                        })?
                    }
                    None => i.stored,
                };
                tx.exec_drop(
                    "INSERT INTO inodes (space_id, ino, mode, uid, gid, nlink, size, stored, rdev,
                                         atime, mtime, ctime, btime, target, s3_host, s3_key)
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    mysql::Params::Positional(vec![
                        space.into(),
                        i.ino.into(),
                        i.mode.into(),
                        i.uid.into(),
                        i.gid.into(),
                        i.nlink.into(),
                        i.size.into(),
                        stored.into(),
                        i.rdev.into(),
                        i.times[0].into(),
                        i.times[1].into(),
                        i.times[2].into(),
                        i.times[3].into(),
                        i.target.clone().into(),
                        i.s3_host.into(),
                        i.s3_key.clone().into(),
                    ]),
                )?;
            }
            for d in &rows.dentries {
                tx.exec_drop(
                    "INSERT INTO dentries (space_id, parent, name, ino, seq) VALUES (?, ?, ?, ?, ?)",
                    (space, d.parent, &d.name, d.ino, d.seq),
                )?;
            }
            for (ino, name, value) in &rows.xattrs {
                tx.exec_drop(
                    "INSERT INTO xattrs (space_id, ino, name, value) VALUES (?, ?, ?, ?)",
                    (space, ino, name, value),
                )?;
            }
            Ok(())
        })
        .map_err(|e| match e {
            Failed::Abort(e) => anyhow!("storage node {}: {e}", self.id),
            Failed::Tx(e) => anyhow!("storage node {}: {e}", self.id),
        })
    }
}
