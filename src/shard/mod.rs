//! The Storage Node store: one database per shard holding every row of the
//! spaces it owns — per-space counters, inodes, directory entries, file data
//! extents and xattrs. All keys start with `space_id`, so a space's rows can
//! be copied, purged or moved as a unit, and every operation inside one space
//! is a single-database transaction.
//!
//! File data lives in rows keyed by `(space, inode, offset)`, each holding
//! the bytes `[off, off + len)` inside one slot of [`EXTENT_SIZE`] bytes: one
//! extent from the slot's start, or pieces that appends added (see
//! [`extents`]). Bytes below the file size that no row holds read as zeros
//! (holes). `inodes.stored` is the sum of the rows' lengths, so `st_blocks`
//! is honest for sparse files.

mod access;
pub mod attrs;
mod backup;
mod copy;
mod error;
pub mod extents;
pub mod fsck;
mod identity;
mod import;
pub mod inode;
mod listing;
pub mod namespace;
pub mod open_writers;
mod s3;
mod schema;
pub mod snapshot;
pub mod xattrs;

pub use access::{Access, Stores};
pub use backup::{DentryRow, InodeRow, ReadBackup, SpaceRows};
pub use copy::{RoundStats, SpaceCopy, open_space, purge_moved};
pub use error::{ShardError, ShardResult};
pub use identity::{Identity, cluster_uuid, new_token, read_identity};
pub use import::{
    IMPORT_PATH_MAX, ImportedInode, OnDisk, TreeError, TreeWriter, count_on_disk, files_on_disk,
};
pub use inode::InodeState;
use inode::{DELETED, LIVE, ORPHAN};
pub use listing::{DataPlace, ListedDentry, ListedInode};
pub use s3::{Candidate, Orphan, garbage_objects_of};

use anyhow::{Context, Result, bail};
use mysql::prelude::Queryable;
use mysql::{PooledConn, Transaction};

use crate::config::ConnOptions;
use crate::db::{Db, DbError, TxError, migrate, table_names};

pub use schema::{APPLIED_OPS, FENCE_MESSAGE, Fenced, MIGRATIONS, is_fenced};
pub use snapshot::HeldBySnapshot;

/// Largest extent, in bytes. Small enough to stay far below
/// `max_allowed_packet` (16 MiB by default), large enough that a 512 MiB
/// file is 2,048 rows. See BENCHMARKS.md.
pub const EXTENT_SIZE: u64 = 256 * 1024;

/// Longest name of a directory entry, in bytes (`dentries.name`).
pub const NAME_MAX: usize = 255;

/// A Storage Node.
#[derive(Clone)]
pub struct Shard {
    id: u32,
    db: Db,
}

/// What a node holds, from its rows (for `list-storage-nodes`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub spaces: u64,
    /// Regular files whose data is in the database.
    pub in_db: u64,
    /// Regular files whose data is in the object store.
    pub on_s3: u64,
    /// Files in the database that stopped changing: closed, not `last.log`,
    /// unmodified for [`SETTLE_SECS`] — the candidates for move-to-s3.
    pub read_only: u64,
    /// Bytes of file data held in the database.
    pub bytes: u64,
}

/// Reads the ids of the live access points (see [`Shard::purge_deleted`]).
pub type LiveHolders<'a> = &'a dyn Fn() -> Result<Vec<u64>>;

/// A file unmodified this long counts as settled (R/O).
pub const SETTLE_SECS: i64 = 60;

/// Opens the database for a new Storage Node: it must exist, be reachable,
/// be empty, and let the user create tables. Creates the shard tables; on
/// failure drops whatever it created, so nothing is left half-made.
pub fn create_tables(opts: &ConnOptions) -> Result<Db> {
    crate::db::check_members(opts)?;
    let db = Db::connect(opts, 2)?;
    let (user, missing) = missing_rights(&db)?;
    if !missing.is_empty() {
        bail!(
            "the user {user} lacks {} on database '{}' on {} (a storage node's user needs: GRANT {} ON `{}`.* TO …)",
            missing.join(", "),
            opts.database()?,
            opts.server(),
            NODE_RIGHTS.join(", "),
            opts.database()?
        );
    }
    let existing = table_names(&mut db.conn()?).map_err(|e| db.err(e))?;
    if !existing.is_empty() {
        bail!(
            "database '{}' on {} is not empty ({} table(s), e.g. {}): a storage node needs an empty database",
            opts.database()?,
            opts.server(),
            existing.len(),
            existing[0]
        );
    }
    if let Err(e) = migrate(&db, MIGRATIONS) {
        let _ = drop_tables(&db);
        return Err(e.into());
    }
    Ok(db)
}

/// The rights a Storage Node's user needs on its database: its rows, its
/// tables (made, altered and, on delete-storage-node or a failed create,
/// dropped), the fence triggers and the procedure they call.
pub const NODE_RIGHTS: &[&str] = &[
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "CREATE",
    "DROP",
    "ALTER",
    "TRIGGER",
    "CREATE ROUTINE",
    "ALTER ROUTINE",
    "EXECUTE",
];

/// Which of [`NODE_RIGHTS`] the connected user lacks on the connected
/// database: global grants, grants on the database or a pattern matching
/// it, for the user and its current role (table-level grants do not count:
/// the tables do not exist yet).
fn missing_rights(db: &Db) -> Result<(String, Vec<&'static str>), DbError> {
    let mut conn = db.conn()?;
    conn.query_drop("SET @tshs_h = SUBSTRING_INDEX(CURRENT_USER(), '@', -1)")
        .map_err(|e| db.err(e))?;
    conn.query_drop(
        "SET @tshs_u = CONCAT('''', LEFT(CURRENT_USER(), CHAR_LENGTH(CURRENT_USER()) - CHAR_LENGTH(@tshs_h) - 1), '''@''', @tshs_h, ''''),
             @tshs_r = CONCAT('''', COALESCE(CURRENT_ROLE(), ''), ''''),
             @tshs_r2 = CONCAT('''', COALESCE(CURRENT_ROLE(), ''), '''@''''')",
    )
    .map_err(|e| db.err(e))?;
    let have: Vec<String> = conn
        .query(
            "SELECT PRIVILEGE_TYPE FROM information_schema.USER_PRIVILEGES WHERE GRANTEE IN (@tshs_u, @tshs_r, @tshs_r2)
             UNION SELECT PRIVILEGE_TYPE FROM information_schema.SCHEMA_PRIVILEGES
               WHERE GRANTEE IN (@tshs_u, @tshs_r, @tshs_r2) AND DATABASE() LIKE TABLE_SCHEMA",
        )
        .map_err(|e| db.err(e))?;
    let user: Option<String> = conn
        .query_first("SELECT CURRENT_USER()")
        .map_err(|e| db.err(e))?;
    let user = user.unwrap_or_default();
    if have.iter().all(|h| h.eq_ignore_ascii_case("USAGE")) {
        // No right visible (rights through a role not active in this
        // session, say): the schema's own errors will tell, and a failed
        // create drops what it made.
        log::warn!("cannot see the rights of {user}; trying anyway");
        return Ok((user, Vec::new()));
    }
    let missing = NODE_RIGHTS
        .iter()
        .copied()
        .filter(|r| !have.iter().any(|h| h.eq_ignore_ascii_case(r)))
        .collect();
    Ok((user, missing))
}

/// IDs written into a statement as `1,2,3` (numbers: nothing to escape),
/// for `IN (…)` or `FIND_IN_SET` lists longer than placeholders are worth.
fn id_list<T: ToString>(ids: &[T]) -> String {
    ids.iter().map(T::to_string).collect::<Vec<_>>().join(",")
}

/// A transaction's failure for a command: a move's fence becomes [`Fenced`]
/// (the caller waits for the move), anything else the database's error.
fn tx_failed(e: TxError) -> anyhow::Error {
    if is_fenced(&e) {
        Fenced.into()
    } else {
        e.into_db().into()
    }
}

/// Drops every tshs table of a shard database.
pub fn drop_tables(db: &Db) -> Result<(), DbError> {
    let mut conn = db.conn()?;
    for t in table_names(&mut conn).map_err(|e| db.err(e))? {
        if schema::TABLES.contains(&t.as_str()) {
            conn.query_drop(format!("DROP TABLE IF EXISTS `{t}`"))
                .map_err(|e| db.err(e))?;
        }
    }
    for r in schema::ROUTINES {
        conn.query_drop(format!("DROP PROCEDURE IF EXISTS `{r}`"))
            .map_err(|e| db.err(e))?;
    }
    Ok(())
}

impl Shard {
    pub fn connect(id: u32, opts: &ConnOptions, max_conns: usize) -> Result<Shard> {
        Ok(Shard {
            id,
            db: Db::connect(opts, max_conns)?,
        })
    }

    /// A connection to the node for copy-shards: its sessions pass the
    /// fence of a space being moved (see the schema's `space_fence`).
    pub fn copier(id: u32, opts: &ConnOptions, max_conns: usize) -> Result<Shard> {
        Ok(Shard {
            id,
            db: Db::connect_with_init(opts, max_conns, vec!["SET @tshs_copier = 1".into()])?,
        })
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    /// Does the node answer (`SELECT 1`)?
    pub fn ping(&self) -> Result<(), DbError> {
        self.db.read(|c| c.query_drop("SELECT 1"))
    }

    /// Brings the node's schema up to date; returns the migrations applied.
    pub fn upgrade(&self) -> Result<Vec<u32>, DbError> {
        migrate(&self.db, MIGRATIONS)
    }

    /// Runs the read `f` if this node holds `space`, in one snapshot with
    /// that check: its fence row is here and not sealed by a move that took
    /// the space away (a move in progress still has every row). A move
    /// that seals the space and drops its rows meanwhile cannot make `f`
    /// find them gone. `None`: the node does not hold the space.
    pub fn read_if_held<T>(
        &self,
        space: u32,
        mut f: impl FnMut(&mut PooledConn) -> Result<T, mysql::Error>,
    ) -> Result<Option<T>, DbError> {
        let held = format!(
            "SELECT fenced_until IS NULL OR fenced_until < '{}' FROM space_fence WHERE space_id = ?",
            copy::SEALED
        );
        self.db.read(|c| {
            // The snapshot begins with the first read (after Galera's sync wait).
            c.query_drop("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")?;
            c.query_drop("START TRANSACTION READ ONLY")?;
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                match c.exec_first::<bool, _, _>(&held, (space,))? {
                    Some(true) => f(c).map(Some),
                    _ => Ok(None),
                }
            }));
            // Also after a panic: the pool does not reset connections.
            let end = c.query_drop("ROLLBACK");
            let v = r.unwrap_or_else(|p| std::panic::resume_unwind(p))?;
            end?;
            Ok(v)
        })
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Runs `f` in a transaction (retried on deadlock / lost connection).
    pub fn tx<T>(
        &self,
        f: impl FnMut(&mut Transaction<'_>) -> Result<T, mysql::Error>,
    ) -> Result<T, TxError> {
        self.db.tx(f)
    }

    /// Creates a space's counters and its root directory.
    pub fn create_space(&self, space: u32, uid: u32, gid: u32, mode: u32) -> Result<()> {
        let now = crate::clock::now_ns();
        self.tx(|tx| {
            // The fence row first: see `Shard::import_tree`.
            tx.exec_drop(
                "INSERT IGNORE INTO space_fence (space_id) VALUES (?)",
                (space,),
            )?;
            tx.exec_drop(
                "INSERT INTO spaces (space_id, next_ino, next_seq) VALUES (?, 2, 1)",
                (space,),
            )?;
            tx.exec_drop(
                "INSERT INTO inodes (space_id, ino, mode, uid, gid, nlink, size, stored, rdev, atime, mtime, ctime, btime)
                 VALUES (?, 1, ?, ?, ?, 2, 0, 0, 0, ?, ?, ?, ?)",
                (space, libc::S_IFDIR | (mode & 0o7777), uid, gid, now, now, now, now),
            )
        })
        .map_err(TxError::into_db)?;
        Ok(())
    }

    /// Deletes every row of a space, a batch per transaction; its objects
    /// in the store are recorded as garbage first (remove-deleted deletes
    /// them; a rerun after a crash records them again, which is harmless).
    pub fn purge_space(&self, space: u32) -> Result<()> {
        // A snapshot taken since the caller looked still shows the space.
        let held: Option<u8> = self.db.read(|c| {
            c.exec_first(
                "SELECT 1 FROM snapshot_moments WHERE space_id = ? LIMIT 1",
                (space,),
            )
        })?;
        if held.is_some() {
            return Err(HeldBySnapshot.into());
        }
        self.tx(|tx| garbage_objects_of(tx, "space_id = ?", (space,).into()))
            .map_err(tx_failed)
            .with_context(|| format!("storage node {}: purging space {space}", self.id))?;
        self.purge_rows(space, &["space_fence"])?;
        Ok(())
    }

    /// Deletes a space's rows from its tables, then from `extra` (a batch
    /// per transaction, so a big space does not make one huge transaction).
    /// Returns the rows deleted.
    pub fn purge_rows(&self, space: u32, extra: &[&str]) -> Result<u64> {
        // No rows kept for snapshots while the space's own go (and then
        // those go too): a purged space leaves its snapshots.
        self.tx(|tx| {
            tx.exec_drop("DELETE FROM snapshot_moments WHERE space_id = ?", (space,))?;
            tx.exec_drop(
                "UPDATE space_fence SET snap_keep = 0 WHERE space_id = ?",
                (space,),
            )
        })
        .map_err(tx_failed)
        .with_context(|| format!("storage node {}: purging space {space}", self.id))?;
        let mut total = 0;
        let tables = [
            ("extents", 64),
            ("xattrs", 1000),
            ("dentries", 5000),
            ("inodes", 5000),
            ("open_writers", 1000),
            ("spaces", 1),
            ("extents_v", 64),
            ("xattrs_v", 1000),
            ("dentries_v", 5000),
            ("inodes_v", 5000),
        ];
        for (t, batch) in tables.into_iter().chain(extra.iter().map(|t| (*t, 1))) {
            loop {
                let n = self
                    .tx(|tx| {
                        tx.exec_drop(
                            format!("DELETE FROM {t} WHERE space_id = ? LIMIT {batch}"),
                            (space,),
                        )?;
                        Ok(tx.affected_rows())
                    })
                    .map_err(tx_failed)
                    .with_context(|| format!("storage node {}: purging space {space}", self.id))?;
                total += n;
                if n < batch {
                    break;
                }
            }
        }
        Ok(total)
    }

    pub fn totals(&self) -> Result<Totals> {
        let mut conn = self.db.conn()?;
        let settled_before = crate::clock::now_ns() - SETTLE_SECS * 1_000_000_000;
        type Row = (u64, Option<u64>, Option<u64>, Option<u64>, Option<u64>);
        let row: Option<Row> = conn
            .exec_first(
                "SELECT (SELECT COUNT(*) FROM spaces),
                        SUM(i.mode & 0o170000 = 0o100000 AND i.s3_key IS NULL),
                        SUM(i.mode & 0o170000 = 0o100000 AND i.s3_key IS NULL AND i.mtime < ? AND NOT EXISTS (
                            SELECT 1 FROM dentries d WHERE d.space_id = i.space_id AND d.ino = i.ino AND d.name = 'last.log')),
                        CAST(SUM(IF(i.s3_key IS NULL, i.stored, 0)) AS UNSIGNED),
                        SUM(i.mode & 0o170000 = 0o100000 AND i.s3_key IS NOT NULL)
                 FROM inodes i WHERE i.state = ?"
                    .replace("0o170000", &libc::S_IFMT.to_string())
                    .replace("0o100000", &libc::S_IFREG.to_string()),
                (settled_before, LIVE),
            )
            .map_err(|e| self.db.err(e))?;
        let (spaces, in_db, ro, bytes, on_s3) = row.unwrap_or_default();
        Ok(Totals {
            spaces,
            in_db: in_db.unwrap_or(0),
            on_s3: on_s3.unwrap_or(0),
            read_only: ro.unwrap_or(0),
            bytes: bytes.unwrap_or(0),
        })
    }
}

impl Shard {
    /// Where a space's log stands: the number the next rotated log will
    /// take (one more than the highest `<n>.log` in `protolog`, 0 if none)
    /// and the size of `protolog/last.log` (0 if there is none).
    pub fn log_position(&self, space: u32) -> Result<(u64, u64)> {
        let entries: Vec<(Vec<u8>, u64)> = self.db.read(|c| {
            c.exec(
                "SELECT d.name, i.size FROM dentries p
                 JOIN dentries d ON d.space_id = p.space_id AND d.parent = p.ino
                 JOIN inodes i ON i.space_id = d.space_id AND i.ino = d.ino
                 WHERE p.space_id = ? AND p.parent = 1 AND p.name = 'protolog'",
                (space,),
            )
        })?;
        let mut next = 0;
        let mut offset = 0;
        for (name, size) in entries {
            if name == b"last.log" {
                offset = size;
            } else if let Some(n) = name
                .strip_suffix(b".log")
                .and_then(|n| std::str::from_utf8(n).ok())
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse::<u64>().ok())
            {
                next = next.max(n + 1);
            }
        }
        Ok((next, offset))
    }

    /// How many inodes [`Shard::purge_deleted`] would purge.
    pub fn count_deleted(&self, before_ns: i64, live_holders: LiveHolders) -> Result<u64> {
        Ok(self.deleted_inodes(before_ns, live_holders)?.len() as u64)
    }

    /// Inodes deleted before `before_ns`, and inodes left unlinked-but-open
    /// by access points that are no longer alive, in spaces no live
    /// snapshot sees (a snapshot may still show them: they wait for its end,
    /// rather than have their extents copied into its kept rows). The live holders are read
    /// after the candidates: a holder must have registered before its inode
    /// became a candidate, so one that registered meanwhile is not missed.
    fn deleted_inodes(&self, before_ns: i64, live_holders: LiveHolders) -> Result<Vec<(u32, u64)>> {
        let candidates: Vec<(u32, u64, u8, Option<u64>)> = self.db.read(|c| {
            c.exec(
                "SELECT space_id, ino, state, holder FROM inodes i
                 WHERE ((state = ? AND deleted_at < ?) OR state = ?)
                   AND NOT EXISTS (SELECT 1 FROM snapshot_moments m WHERE m.space_id = i.space_id)
                 LIMIT 1000",
                (DELETED, before_ns, ORPHAN),
            )
        })?;
        let live = live_holders()?;
        Ok(candidates
            .into_iter()
            .filter(|(_, _, state, holder)| {
                InodeState::from_db(*state) == InodeState::Deleted
                    || !holder.is_some_and(|h| live.contains(&h))
            })
            .map(|(space, ino, _, _)| (space, ino))
            .collect())
    }

    /// Purges what [`Shard::count_deleted`] counts. Returns how many.
    pub fn purge_deleted(&self, before_ns: i64, live_holders: LiveHolders) -> Result<u64> {
        let victims = self.deleted_inodes(before_ns, live_holders)?;
        let mut n = 0;
        for (space, ino) in victims {
            let r = self.tx(|tx| {
                tx.exec_drop(
                    "DELETE FROM extents WHERE space_id = ? AND ino = ?",
                    (space, ino),
                )?;
                tx.exec_drop(
                    "DELETE FROM xattrs WHERE space_id = ? AND ino = ?",
                    (space, ino),
                )?;
                garbage_objects_of(
                    tx,
                    "space_id = ? AND ino = ? AND state > ?",
                    (space, ino, LIVE).into(),
                )?;
                tx.exec_drop(
                    "DELETE FROM inodes WHERE space_id = ? AND ino = ? AND state > ?",
                    (space, ino, LIVE),
                )
            });
            match r {
                // Its space is being moved: the new node purges it later.
                Err(ref e) if is_fenced(e) => continue,
                r => r.map_err(TxError::into_db)?,
            };
            n += 1;
        }
        // Lanes of processes long gone (see schema::APPLIED_OPS).
        self.tx(|tx| {
            tx.exec_drop(
                "DELETE FROM applied_ops WHERE at < ?",
                (crate::clock::now_ns() - schema::APPLIED_OPS_KEEP_NS,),
            )
        })
        .map_err(TxError::into_db)?;
        Ok(n)
    }
}
