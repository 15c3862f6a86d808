//! The rows of an imported tree (see [`crate::import`]): the space's row
//! and counters, its inodes, names and xattrs, written in one transaction
//! while the caller walks the tree on disk.

use anyhow::{Result, anyhow};
use mysql::Transaction;
use mysql::prelude::Queryable;

use super::Shard;
use super::access::Access;
use super::inode::DELETED;
use crate::db::{Body, DbError, Failed};

/// Longest on-disk path an inode can name (`inodes.import_path`).
pub const IMPORT_PATH_MAX: usize = 4096;

/// Rows per multi-row INSERT.
const ROWS: usize = 200;

/// An inode of an imported tree.
pub struct ImportedInode {
    pub ino: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub rdev: u32,
    /// atime, mtime, ctime in ns.
    pub times: [i64; 3],
    pub target: Option<Vec<u8>>,
    /// The file on disk its data is read from (regular files with data).
    pub data: Option<Vec<u8>>,
}

/// Why writing an imported tree stopped: a statement failed, or reading
/// the tree did (that error is returned as it is).
pub struct TreeError(Body<anyhow::Error>);

impl From<anyhow::Error> for TreeError {
    fn from(e: anyhow::Error) -> Self {
        TreeError(Body::Abort(e))
    }
}

fn sql(e: mysql::Error) -> TreeError {
    TreeError(Body::Sql(e))
}

/// Writes the rows of one space's tree, a batch of inodes and names at once.
pub struct TreeWriter<'t, 'c> {
    tx: &'t mut Transaction<'c>,
    space: u32,
    inodes: Vec<ImportedInode>,
    /// (parent, name, inode, sequence)
    dentries: Vec<(u64, Vec<u8>, u64, u64)>,
}

impl Shard {
    /// Creates space `space` and lets `fill` write its tree, in one
    /// transaction (retried as a whole, `fill` included). Returns `None` if
    /// the space exists already (another process imported it).
    pub fn import_tree<T>(
        &self,
        space: u32,
        mut fill: impl FnMut(&mut TreeWriter<'_, '_>) -> Result<T, TreeError>,
    ) -> Result<Option<T>> {
        let r = self.db().tx_body(|tx| {
            // The fence row before the space's: the fence trigger on `spaces`
            // reads it with a share lock, and a locking read of a missing row
            // locks the gap beside it, so imports of neighbouring spaces would
            // deadlock each other (as would a locking read of the missing space
            // row). A second importer of the same space waits at the space row
            // for the first, then finds it there.
            tx.exec_drop(
                "INSERT IGNORE INTO space_fence (space_id) VALUES (?)",
                (space,),
            )?;
            tx.exec_drop(
                "INSERT IGNORE INTO spaces (space_id, next_ino, next_seq) VALUES (?, 2, 2)",
                (space,),
            )?;
            if tx.affected_rows() == 0 {
                return Ok(None);
            }
            let mut w = TreeWriter {
                tx,
                space,
                inodes: Vec::new(),
                dentries: Vec::new(),
            };
            fill(&mut w).map(Some).map_err(|e| e.0)
        });
        r.map_err(|e| match e {
            Failed::Abort(e) => e,
            Failed::Tx(e) => anyhow!("storage node {}: importing space {space}: {e}", self.id()),
        })
    }
}

impl TreeWriter<'_, '_> {
    /// Name `name` in directory `parent` for inode `ino`, `seq` its place
    /// in readdir.
    pub fn entry(&mut self, parent: u64, name: &[u8], ino: u64, seq: u64) -> Result<(), TreeError> {
        self.dentries.push((parent, name.to_vec(), ino, seq));
        if self.dentries.len() >= ROWS {
            self.flush()?;
        }
        Ok(())
    }

    pub fn inode(&mut self, row: ImportedInode) -> Result<(), TreeError> {
        self.inodes.push(row);
        if self.inodes.len() >= ROWS {
            self.flush()?;
        }
        Ok(())
    }

    pub fn xattr(&mut self, ino: u64, name: &[u8], value: &[u8]) -> Result<(), TreeError> {
        self.tx
            .exec_drop(
                "INSERT INTO xattrs (space_id, ino, name, value) VALUES (?, ?, ?, ?)",
                (self.space, ino, name, value),
            )
            .map_err(sql)
    }

    /// Writes what is left, then what is known only once every name is
    /// in: the link counts of hard-linked files (inode, links) and the
    /// space's counters (`next`: its next inode number and readdir sequence).
    pub fn finish(&mut self, linked: &[(u64, u32)], next: u64) -> Result<(), TreeError> {
        self.flush()?;
        for &(ino, n) in linked {
            self.tx
                .exec_drop(
                    "UPDATE inodes SET nlink = ? WHERE space_id = ? AND ino = ?",
                    (n, self.space, ino),
                )
                .map_err(sql)?;
        }
        self.tx
            .exec_drop(
                "UPDATE spaces SET next_ino = ?, next_seq = ? WHERE space_id = ?",
                (next, next, self.space),
            )
            .map_err(sql)
    }

    fn flush(&mut self) -> Result<(), TreeError> {
        if !self.inodes.is_empty() {
            let mut sql_text = String::from(
                "INSERT INTO inodes (space_id, ino, mode, uid, gid, nlink, size, stored, rdev, atime, mtime, ctime, btime, target, import_path, import_mtime) VALUES ",
            );
            let mut params: Vec<mysql::Value> = Vec::new();
            for (i, r) in self.inodes.drain(..).enumerate() {
                if i > 0 {
                    sql_text.push_str(", ");
                }
                sql_text.push_str("(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
                // Until the data is in, `stored` counts it where it is.
                let stored = match (&r.data, &r.target) {
                    (Some(_), _) => r.size,
                    (None, Some(t)) => t.len() as u64,
                    _ => 0,
                };
                let disk_mtime = r.data.is_some().then_some(r.times[1]);
                params.extend([
                    self.space.into(),
                    r.ino.into(),
                    r.mode.into(),
                    r.uid.into(),
                    r.gid.into(),
                    r.nlink.into(),
                    r.size.into(),
                    stored.into(),
                    r.rdev.into(),
                    r.times[0].into(),
                    r.times[1].into(),
                    r.times[2].into(),
                    r.times[1].into(),
                    r.target.into(),
                    r.data.into(),
                    disk_mtime.into(),
                ]);
            }
            self.tx.exec_drop(sql_text, params).map_err(sql)?;
        }
        if !self.dentries.is_empty() {
            let mut sql_text =
                String::from("INSERT INTO dentries (space_id, parent, name, ino, seq) VALUES ");
            let mut params: Vec<mysql::Value> = Vec::new();
            for (i, (parent, name, ino, seq)) in self.dentries.drain(..).enumerate() {
                if i > 0 {
                    sql_text.push_str(", ");
                }
                sql_text.push_str("(?, ?, ?, ?, ?)");
                params.extend([
                    self.space.into(),
                    parent.into(),
                    name.into(),
                    ino.into(),
                    seq.into(),
                ]);
            }
            self.tx.exec_drop(sql_text, params).map_err(sql)?;
        }
        Ok(())
    }
}

/// A live file whose data is still on the imported disk tree.
#[derive(Clone, Debug)]
pub struct OnDisk {
    pub ino: u64,
    pub size: u64,
    pub mtime: i64,
    pub ctime: i64,
    pub stored: u64,
    pub path: Vec<u8>,
    /// Named `last.log` (never uploaded to the object store).
    pub is_last_log: bool,
    /// The file's mtime on disk when it was imported.
    pub disk_mtime: Option<i64>,
}

/// Up to `limit` of a space's files still on disk, after inode `after`, in
/// inode order.
pub fn files_on_disk(
    s: &impl Access,
    space: u32,
    after: u64,
    limit: usize,
) -> Result<Vec<OnDisk>, DbError> {
    type Row = (u64, u64, i64, i64, u64, Vec<u8>, bool, Option<i64>);
    let rows: Vec<Row> = s.read(|c| {
        c.exec(
            format!(
                "SELECT i.ino, i.size, i.mtime, i.ctime, i.stored, i.import_path,
                   EXISTS (SELECT 1 FROM dentries d WHERE d.space_id = i.space_id AND d.ino = i.ino AND d.name = 'last.log'),
                   i.import_mtime
                 FROM inodes i WHERE i.space_id = ? AND i.ino > ? AND i.state < {DELETED} AND i.import_path IS NOT NULL
                 ORDER BY i.ino LIMIT {limit}"
            ),
            (space, after),
        )
    })?;
    Ok(rows
        .into_iter()
        .map(
            |(ino, size, mtime, ctime, stored, path, is_last_log, disk_mtime)| OnDisk {
                ino,
                size,
                mtime,
                ctime,
                stored,
                path,
                is_last_log,
                disk_mtime,
            },
        )
        .collect())
}

/// How many live files of a space still name their file on disk.
pub fn count_on_disk(s: &impl Access, space: u32) -> Result<Option<u64>, DbError> {
    s.read(|c| {
        c.exec_first(
            "SELECT COUNT(*) FROM inodes WHERE space_id = ? AND state < ? AND import_path IS NOT NULL",
            (space, DELETED),
        )
    })
}
