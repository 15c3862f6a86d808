//! A file's data on its Storage Node: rows keyed by `(space, inode,
//! offset)` (holes are missing rows), or, for a file elsewhere, the object
//! that holds it or its file on an imported disk tree. Each change is one
//! transaction; a change of a file held elsewhere first brings its data back
//! into rows ([`recall`]).
//!
//! The file is cut into slots of [`EXTENT_SIZE`] bytes. A row never crosses
//! a slot's end, and a slot holds either one extent from its start or, after
//! appends, several pieces: an append inserts a row holding just its bytes
//! (an update of the slot's row would rewrite all of it, and the database
//! writes every byte of a rewritten blob to its redo log again). Reads lay a
//! slot's rows out in key order ([`assemble`]); [`merge`] later joins a slot's
//! contiguous pieces into one row, off the writers' path.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use mysql::Transaction;
use mysql::prelude::Queryable;

use super::EXTENT_SIZE;
use super::access::{Access, Stores};
use super::error::{ShardError, ShardResult};
use super::inode::{Attr, DELETED};
use super::namespace::insert_new;
use super::schema::APPENDS_ONLY;
use crate::clock::now_ns;
use crate::db::Body;

const E: u64 = EXTENT_SIZE;

/// Where the bytes of a span of a file are.
pub enum Span {
    /// Its extents in the span, by offset (holes missing), sorted.
    Extents(Vec<(u64, Vec<u8>)>),
    /// An object of S3 host `host` holds the whole file of `size` bytes.
    Object { host: u32, key: String, size: u64 },
    /// The file is still on the imported disk tree.
    Disk {
        path: Vec<u8>,
        size: u64,
        mtime: Option<i64>,
    },
}

/// Where `[first, last)` of a file is, in one query: its extents, or the
/// object or disk file that holds it (a move between two reads is seen at
/// once).
pub fn span(s: &impl Access, space: u32, ino: u64, first: u64, last: u64) -> ShardResult<Span> {
    type Row = (Option<u64>, Vec<u8>, Option<u32>, Option<u64>, Option<i64>);
    let rows: Vec<Row> = s.query("read", |c| {
        c.exec(
            "SELECT off, data, NULL, NULL, NULL FROM extents WHERE space_id = ? AND ino = ? AND off >= ? AND off < ?
             UNION ALL
             SELECT NULL, COALESCE(s3_key, import_path), s3_host, size, import_mtime FROM inodes
             WHERE space_id = ? AND ino = ? AND (s3_key IS NOT NULL OR import_path IS NOT NULL)",
            (space, ino, first, last, space, ino),
        )
    })?;
    if let Some((_, path, _, Some(size), mtime)) =
        rows.iter().find(|r| r.0.is_none() && r.2.is_none())
    {
        return Ok(Span::Disk {
            path: path.clone(),
            size: *size,
            mtime: *mtime,
        });
    }
    if let Some((_, key, Some(host), Some(size), _)) = rows.iter().find(|r| r.0.is_none()) {
        return Ok(Span::Object {
            host: *host,
            key: String::from_utf8_lossy(key).into_owned(),
            size: *size,
        });
    }
    let mut pieces: Vec<(u64, Vec<u8>)> = rows
        .into_iter()
        .filter_map(|(o, d, ..)| o.map(|o| (o, d)))
        .collect();
    pieces.sort_unstable_by_key(|(o, _)| *o);
    data_read(pieces.iter().map(|(_, d)| d.len()).sum());
    Ok(Span::Extents(assemble(pieces)))
}

/// What a mount has of a slot: its first bytes up to `have` (an offset in
/// the file), cached when the file was at change counter `chg`. A file
/// still at `chg` and at least `have` long only grew since: the mount lacks
/// only the rows that end past `have`.
pub struct Lacking {
    pub space: u32,
    pub ino: u64,
    pub have: u64,
    pub chg: u64,
}

impl Lacking {
    /// The condition on a slot's rows `e`, joined to their inode `i`, that
    /// keeps those the mount lacks: if the file only grew, the rows from the
    /// last one that begins before `have` on (a range of the key, not a
    /// scan of the slot) that end past it; else all of them. Its parameters
    /// are [`Lacking::params`].
    pub const ROWS: &'static str = "e.off >= IF(i.chg <=> ? AND i.size >= ?,
          COALESCE((SELECT MAX(x.off) FROM extents x
                    WHERE x.space_id = ? AND x.ino = ? AND x.off < ?), 0), 0)
        AND (NOT (i.chg <=> ? AND i.size >= ?) OR e.off + e.len > ?)";

    pub fn params(&self) -> [mysql::Value; 8] {
        let (chg, have) = (self.chg, self.have);
        [
            chg,
            have,
            self.space.into(),
            self.ino,
            have,
            chg,
            have,
            have,
        ]
        .map(Into::into)
    }

    /// Whether the file, now at `chg` and `size` bytes long, only grew: the
    /// same test as [`Lacking::ROWS`]'.
    pub fn only_grew(&self, chg: u64, size: u64) -> bool {
        chg == self.chg && size >= self.have
    }
}

/// The extent at `slot` whose first bytes the mount has (`known`, cached
/// when the file was at change counter `chg`), in one query: if the file
/// only grew since, only the rows it lacks are read ([`Lacking`]) and laid
/// over them; else the whole extent. `None` if the file's data is not in
/// the database (in the object store or on disk).
pub fn extent_past(
    s: &impl Access,
    space: u32,
    ino: u64,
    slot: u64,
    (known, chg): (&[u8], u64),
) -> ShardResult<Option<Vec<u8>>> {
    type Row = (u64, u64, Option<u64>, Option<Vec<u8>>);
    let lacking = Lacking {
        space,
        ino,
        have: slot + known.len() as u64,
        chg,
    };
    let rows: Vec<Row> = s.query("read", |c| {
        let mut params: Vec<mysql::Value> = vec![slot.into(), (slot + E).into()];
        params.extend(lacking.params());
        params.extend([space.into(), ino.into()]);
        c.exec(
            format!(
                "SELECT i.chg, i.size, e.off, e.data FROM inodes i LEFT JOIN extents e
                   ON e.space_id = i.space_id AND e.ino = i.ino AND e.off >= ? AND e.off < ?
                   AND {}
                 WHERE i.space_id = ? AND i.ino = ? AND i.s3_key IS NULL AND i.import_path IS NULL
                 ORDER BY e.off",
                Lacking::ROWS
            ),
            mysql::Params::Positional(params),
        )
    })?;
    let Some(&(now, size, ..)) = rows.first() else {
        return Ok(None);
    };
    let pieces: Vec<(u64, Vec<u8>)> = rows
        .into_iter()
        .filter_map(|(_, _, o, d)| Some((o?, d?)))
        .collect();
    data_read(pieces.iter().map(|(_, d)| d.len()).sum());
    if lacking.only_grew(now, size) {
        return Ok(Some(overlay(slot, known, pieces)));
    }
    Ok(Some(assemble(pieces).pop().map_or(Vec::new(), |e| e.1)))
}

/// Counts `bytes` of file data read from the Storage Node.
pub fn data_read(bytes: usize) {
    crate::metrics::global().db_data_read.inc_by(bytes as u64);
}

/// The extents of a run of rows sorted by offset: the rows of each slot
/// laid out from the slot's start, gaps between them zero-filled.
pub fn assemble(rows: impl IntoIterator<Item = (u64, Vec<u8>)>) -> Vec<(u64, Vec<u8>)> {
    let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
    for (off, data) in rows {
        let slot = off - off % E;
        let at = (off - slot) as usize;
        match out.last_mut() {
            Some((s, buf)) if *s == slot => {
                buf.resize(at, 0); // rows never overlap: never shrinks
                buf.extend_from_slice(&data);
            }
            _ if at == 0 => out.push((slot, data)),
            _ => {
                let mut buf = vec![0u8; at];
                buf.extend_from_slice(&data);
                out.push((slot, buf));
            }
        }
    }
    out
}

/// The bytes of the slot at `slot` from its first ones (`prefix`) and its
/// rows sorted by offset that end past them (the file only grew): each row
/// laid at its offset over what is before it, gaps zero-filled.
pub fn overlay(
    slot: u64,
    prefix: &[u8],
    rows: impl IntoIterator<Item = (u64, Vec<u8>)>,
) -> Vec<u8> {
    let mut buf = prefix.to_vec();
    for (off, data) in rows {
        buf.resize((off - slot) as usize, 0); // cuts what a row (joined pieces) holds anew
        buf.extend_from_slice(&data);
    }
    buf
}

/// The S3 host and key of the object holding a live file's data, if it is
/// in the object store.
pub fn object_of(s: &impl Access, space: u32, ino: u64) -> ShardResult<Option<(u32, String)>> {
    let row: Option<(u32, Vec<u8>)> = s.query("read", |c| {
        c.exec_first(
            "SELECT s3_host, s3_key FROM inodes
             WHERE space_id = ? AND ino = ? AND state < ? AND s3_key IS NOT NULL",
            (space, ino, DELETED),
        )
    })?;
    Ok(row.map(|(host, key)| (host, String::from_utf8_lossy(&key).into_owned())))
}

/// One extent a mount buffered: its whole content from the extent's start,
/// the length it had when the mount loaded it, and the lowest byte changed.
pub struct Buffered<'a> {
    pub off: u64,
    pub data: &'a [u8],
    pub base_len: usize,
    pub dirty_from: usize,
}

/// A create not in the database yet: written by its file's first commit.
pub struct NewName<'a> {
    pub parent: u64,
    pub name: &'a [u8],
    pub attr: &'a Attr,
}

/// Writes a pending create, buffered extents and the new size in one
/// transaction (a flush of a mount's buffers). A buffer that only added to
/// the end of its slot is written as a piece; returns the slots that now
/// hold several rows (see [`merge`]).
pub fn commit(
    s: &impl Access,
    stores: &dyn Stores,
    (space, ino): (u32, u64),
    bufs: &[Buffered<'_>],
    size: u64,
    now: i64,
    pending: Option<NewName<'_>>,
) -> ShardResult<Vec<u64>> {
    if let Some(p) = &pending
        && create_in_one_trip(s, (space, ino), bufs, size, now, p)
    {
        return Ok(Vec::new());
    }
    s.run("flush", |tx| {
        let mut fresh = false;
        if let Some(p) = &pending {
            // The parent must still exist (another mount may have
            // removed it), and a commit whose outcome was unknown may
            // already have created the file.
            let row: Option<(u32, Option<u64>)> = tx.exec_first(
                "SELECT p.nlink, (SELECT d.ino FROM dentries d
                                  WHERE d.space_id = p.space_id AND d.parent = p.ino AND d.name = ?)
                 FROM inodes p WHERE p.space_id = ? AND p.ino = ? AND p.state < ? FOR UPDATE",
                (p.name, space, p.parent, DELETED),
            )?;
            match row {
                None | Some((0, _)) => return Err(ShardError::NotFound.into()),
                Some((_, Some(existing))) if existing == ino => {}
                Some((_, Some(_))) => return Err(ShardError::Exists.into()),
                Some((_, None)) => {
                    insert_new(tx, space, p.parent, p.name, p.attr, None)?;
                    fresh = true;
                }
            }
        }
        let (Some(lo), Some(hi)) = (bufs.first().map(|b| b.off), bufs.last().map(|b| b.off)) else {
            return Ok(Vec::new());
        };
        if !fresh {
            // Moved to the object store since the mount loaded its buffers:
            // back into the database first (same bytes: a move needs the
            // file unchanged).
            recall(tx, stores, space, ino, true)?;
        }
        // Per slot: where its rows end, the bytes they hold, how many.
        let mut old: BTreeMap<u64, (u64, u64, usize)> = BTreeMap::new();
        if !fresh {
            let rows: Vec<(u64, u64)> = tx.exec(
                "SELECT off, len FROM extents WHERE space_id = ? AND ino = ? AND off >= ? AND off < ? FOR UPDATE",
                (space, ino, lo, hi + E),
            )?;
            for (off, len) in rows {
                let slot = old.entry(off - off % E).or_default();
                slot.0 = slot.0.max(off % E + len);
                slot.1 += len;
                slot.2 += 1;
            }
        }
        let mut delta: i64 = 0;
        let mut rows: Vec<(u64, &[u8])> = Vec::new();
        let mut pieced = Vec::new();
        for b in bufs {
            let (end, bytes, count) = old.get(&b.off).copied().unwrap_or_default();
            if b.dirty_from >= b.base_len && end == b.base_len as u64 {
                // Only added to the end of what the slot holds: a piece.
                if b.data.len() > b.base_len {
                    rows.push((b.off + b.base_len as u64, &b.data[b.base_len..]));
                    delta += (b.data.len() - b.base_len) as i64;
                    if count > 0 {
                        pieced.push(b.off);
                    }
                }
                continue;
            }
            if count > 0 {
                tx.exec_drop(
                    "DELETE FROM extents WHERE space_id = ? AND ino = ? AND off >= ? AND off < ?",
                    (space, ino, b.off, b.off + E),
                )?;
            }
            rows.push((b.off, b.data));
            delta += b.data.len() as i64 - bytes as i64;
        }
        for (off, data) in &rows {
            tx.exec_drop(
                "INSERT INTO extents (space_id, ino, off, len, data) VALUES (?, ?, ?, ?, ?)",
                (space, ino, off, data.len(), data),
            )?;
        }
        tx.exec_drop(
            "UPDATE inodes SET size = GREATEST(size, ?), stored = CAST(stored AS SIGNED) + ?, mtime = ?, ctime = ?
             WHERE space_id = ? AND ino = ?",
            (size, delta, now, now, space, ino),
        )?;
        Ok(pieced.clone())
    })
}

/// The row a new file's first commit leaves, both ways ([`commit`]'s
/// statements or one request): its size, the bytes of its `buffers`, and
/// with data the commit's time as mtime and ctime.
pub fn first_commit_attr(a: &Attr, buffers: usize, bytes: u64, size: u64, now: i64) -> Attr {
    let (mtime, ctime) = if buffers == 0 {
        (a.mtime, a.ctime)
    } else {
        (now, now)
    };
    Attr {
        size: size.max(a.size),
        stored: bytes,
        mtime,
        ctime,
        ..*a
    }
}

/// Bytes of data a new file's first commit sends in one request at most
/// (as hex: about twice that, below an old server's 4 MiB packet limit).
const CREATE_TRIP_BYTES: usize = 1 << 20;

/// A new regular file's first commit as one request (migration 14): its
/// row with its size and times as [`commit`]'s statements leave them, its
/// entry, its directory's times, its data rows, COMMIT. False if not
/// taken, refused (nothing applied; [`commit`]'s statements then tell a
/// removed directory or a taken name apart) or left without an answer
/// (perhaps applied: the statements then find the file there and write
/// the same bytes again).
fn create_in_one_trip(
    s: &impl Access,
    (space, ino): (u32, u64),
    bufs: &[Buffered<'_>],
    size: u64,
    now: i64,
    p: &NewName<'_>,
) -> bool {
    let bytes: usize = bufs.iter().map(|b| b.data.len()).sum();
    let fresh = bufs.iter().all(|b| b.base_len == 0 && b.dirty_from == 0);
    if !p.attr.is_reg() || !fresh || bytes > CREATE_TRIP_BYTES {
        return false;
    }
    let a = first_commit_attr(p.attr, bufs.len(), bytes as u64, size, now);
    let mut sql = format!(
        "START TRANSACTION; CALL tshs_create_file({space}, {}, X'",
        p.parent
    );
    push_hex(&mut sql, p.name);
    let _ = write!(
        sql,
        "', {ino}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, 0)",
        a.mode,
        a.uid,
        a.gid,
        a.nlink,
        a.size,
        a.stored,
        a.rdev,
        a.atime,
        a.mtime,
        a.ctime,
        a.btime,
        p.attr.ctime,
    );
    for (n, b) in bufs.iter().filter(|b| !b.data.is_empty()).enumerate() {
        sql.push_str(if n == 0 {
            "; INSERT INTO extents (space_id, ino, off, len, data) VALUES "
        } else {
            ", "
        });
        let _ = write!(sql, "({space}, {ino}, {}, {}, X'", b.off, b.data.len());
        push_hex(&mut sql, b.data);
        sql.push_str("')");
    }
    sql.push_str("; COMMIT");
    let sent = s.one_trip(|c, lost, node| {
        if lacks(node, "create") {
            return None;
        }
        Some(match crate::db::run_statements(c, &sql) {
            Ok(()) => true,
            Err(mysql::Error::MySqlError(e)) => {
                refused(node, "create", &e);
                roll_back(c, lost);
                false
            }
            Err(e) => {
                log::debug!(
                    "space {space} inode {ino}: a create's commit got no answer: {}",
                    lost(e)
                );
                false
            }
        })
    });
    let Some(Some(done)) = sent else {
        return false;
    };
    crate::metrics::global().one_request("create", done);
    done
}

/// The statement recording `op` in `applied_ops`, for a request that
/// commits itself (see [`crate::db::Db::was_applied`]).
pub(super) fn record_op(op: &crate::db::OpId) -> String {
    let (writer, lane, seq, at) = op.record_params();
    let mut sql = String::from("INSERT INTO applied_ops (writer, lane, seq, at) VALUES (X'");
    push_hex(&mut sql, &writer);
    let _ = write!(
        sql,
        "', {lane}, {seq}, {at}) ON DUPLICATE KEY UPDATE seq = VALUES(seq), at = VALUES(at)"
    );
    sql
}

/// Ends what a refused one-request commit left open. A connection that
/// cannot roll back is reported lost (so that its pool moves on) and reset
/// when it goes back to the pool (which ends its transaction, or drops it).
pub(super) fn roll_back(c: &mut mysql::PooledConn, lost: &dyn Fn(mysql::Error) -> String) {
    if let Err(e) = c.query_drop("ROLLBACK") {
        log::debug!("a rollback failed: {}", lost(e));
        c.reset_connection(true);
    }
}

/// (node, kind) of one-request commits whose procedure a node lacks (a
/// node not upgraded to migration 14 or 15): those go by their statements
/// without asking again, until the process restarts.
static LACKING: std::sync::Mutex<Vec<(u32, &str)>> = std::sync::Mutex::new(Vec::new());

pub(super) fn lacks(node: u32, what: &'static str) -> bool {
    LACKING.lock().unwrap().contains(&(node, what))
}

/// Notes why node `node` refused a one-request commit of kind `what`.
pub(super) fn refused(node: u32, what: &'static str, e: &mysql::error::MySqlError) {
    const NO_SUCH_PROCEDURE: u16 = 1305;
    let mut lacking = LACKING.lock().unwrap();
    if e.code == NO_SUCH_PROCEDURE && !lacking.contains(&(node, what)) {
        lacking.push((node, what));
    }
    drop(lacking);
    warn_unexpected_refusal(what, e);
}

/// One `O_APPEND` write of a group commit (see [`append_batch`]).
pub struct AppendReq<'a> {
    pub space: u32,
    pub ino: u64,
    pub data: &'a [u8],
}

/// A file of a batch of appends as its transaction goes: its end of file,
/// the bytes added, and its change counter (appends leave it as it is).
#[derive(Clone, Copy)]
struct FileEnd {
    eof: u64,
    added: u64,
    chg: u64,
}

/// Where an append landed, and its file's change counter (`inodes.chg`,
/// which appends leave as it is).
pub type Landed = (u64, u64);

/// Appends `data` at the database's end of file in one transaction
/// (`O_APPEND`); the file may not grow past `max_size`. Returns where the
/// data landed.
pub fn append(
    s: &impl Access,
    stores: &dyn Stores,
    (space, ino): (u32, u64),
    data: &[u8],
    now: i64,
    max_size: u64,
) -> ShardResult<Landed> {
    let req = [AppendReq { space, ino, data }];
    let mut r = s.run("append", |tx| append_batch(tx, stores, &req, now, max_size))?;
    r.pop().expect("one result per append")
}

/// Appends each of `reqs` at its file's end in the caller's transaction, in
/// order: appends to one file land end to end, each one contiguous. Every
/// append gets its own result (the offset it landed at, or why it was
/// refused: no such file, or past `max_size`); a refused one writes nothing,
/// the others go on. Each append inserts only its own bytes, as pieces that
/// do not cross a slot's end. Files are locked in `(space, inode)` order, one
/// statement per space, and all rows and sizes are written in one more round
/// trip. A failure of the database or of a recall from the object store
/// fails the whole transaction.
pub fn append_batch(
    tx: &mut Transaction<'_>,
    stores: &dyn Stores,
    reqs: &[AppendReq<'_>],
    now: i64,
    max_size: u64,
) -> Result<Vec<ShardResult<Landed>>, Body<ShardError>> {
    let mut files: BTreeMap<(u32, u64), Option<FileEnd>> =
        reqs.iter().map(|r| ((r.space, r.ino), None)).collect();
    let spaces: BTreeSet<u32> = files.keys().map(|k| k.0).collect();
    for space in spaces {
        let inos: Vec<String> = files
            .range((space, 0)..=(space, u64::MAX))
            .map(|(k, _)| k.1.to_string())
            .collect();
        let rows: Vec<(u64, u64, u64, bool)> = tx.query(format!(
            "SELECT ino, size, chg, s3_key IS NOT NULL OR import_path IS NOT NULL FROM inodes
             WHERE space_id = {space} AND ino IN ({}) ORDER BY ino FOR UPDATE",
            inos.join(",")
        ))?;
        for (ino, mut size, mut chg, elsewhere) in rows {
            if elsewhere {
                size = recall(tx, stores, space, ino, true)?.map_or(size, |r| r.0);
                // The recall moved it: unknown here, so what mounts hold is
                // re-read (a counter no mount can have).
                chg = u64::MAX;
            }
            files.insert(
                (space, ino),
                Some(FileEnd {
                    eof: size,
                    added: 0,
                    chg,
                }),
            );
        }
    }
    let mut results = Vec::with_capacity(reqs.len());
    let mut sql = String::new();
    for r in reqs {
        let Some(Some(FileEnd { eof, added, chg })) = files.get_mut(&(r.space, r.ino)) else {
            results.push(Err(ShardError::NotFound));
            continue;
        };
        let end = *eof + r.data.len() as u64;
        if end > max_size {
            results.push(Err(ShardError::TooBig));
            continue;
        }
        let mut at = *eof;
        for piece in slot_pieces(*eof, r.data) {
            row_values(&mut sql, r.space, r.ino, at, piece);
            at += piece.len() as u64;
        }
        results.push(Ok((*eof, *chg)));
        *eof = end;
        *added += r.data.len() as u64;
    }
    if sql.is_empty() {
        return Ok(results);
    }
    let mut sql = format!("INSERT INTO extents (space_id, ino, off, len, data) VALUES {sql}");
    for ((space, ino), f) in &files {
        if let Some(FileEnd {
            eof: size, added, ..
        }) = f.filter(|f| f.added > 0)
        {
            sql.push_str(&format!(
                "; UPDATE inodes SET size = {size}, stored = stored + {added}, mtime = {now}, ctime = {now},
                     chg = chg | {APPENDS_ONLY}
                 WHERE space_id = {space} AND ino = {ino}"
            ));
        }
    }
    // Every statement's answer is read: dropping the result would lose an
    // error after the first one (a deadlock rolls the transaction back).
    let mut answers = tx.query_iter(sql)?;
    while let Some(set) = answers.iter() {
        for row in set {
            row?;
        }
    }
    Ok(results)
}

/// What became of a group commit sent as one request.
pub enum OneTrip {
    /// Committed: every append landed; where, per append.
    Landed(Vec<Landed>),
    /// The server refused a statement before the commit (a move's fence, a
    /// deadlock, an append to a file gone, held elsewhere or growing too
    /// big, no procedure yet on an old node): nothing was applied, the
    /// caller runs the batch the slower way.
    Refused,
    /// The connection failed: the commit may or may not have happened.
    /// Running the appends again could apply them twice.
    Unknown(String),
}

/// Runs a group commit's appends as one request, one round trip: a
/// multi-statement text that opens a transaction, records `op` in
/// `applied_ops` (so that a lost answer can be told from a lost commit, see
/// [`crate::db::Db::was_applied`]), calls `tshs_append_files` (see the
/// schema) once with every file's appends end to end, files in `(space,
/// inode)` order, and commits.
pub fn append_in_one_trip(
    conn: &mut mysql::PooledConn,
    lost: &dyn Fn(mysql::Error) -> String,
    op: &crate::db::OpId,
    reqs: &[AppendReq<'_>],
    now: i64,
    max_size: u64,
) -> OneTrip {
    let mut files: BTreeMap<(u32, u64), Vec<usize>> = BTreeMap::new();
    for (n, r) in reqs.iter().enumerate() {
        files.entry((r.space, r.ino)).or_default().push(n);
    }
    let mut sql = format!("START TRANSACTION; {}", record_op(op));
    sql.push_str("; CALL tshs_append_files('");
    for ((space, ino), which) in &files {
        let n: usize = which.iter().map(|&n| reqs[n].data.len()).sum();
        let _ = write!(sql, "{space},{ino},{n};");
    }
    sql.push_str("', X'");
    for which in files.values() {
        for &n in which {
            push_hex(&mut sql, reqs[n].data);
        }
    }
    let _ = write!(sql, "', {now}, {max_size}); COMMIT");
    let landed = (|| -> Result<Vec<Landed>, mysql::Error> {
        let mut result = conn.query_iter(sql)?;
        let mut landed = Vec::with_capacity(files.len());
        while let Some(set) = result.iter() {
            for row in set {
                let row = row?;
                if let Some(answer) = row.get_opt::<String, _>(0).and_then(Result::ok) {
                    landed.extend(parse_landed(&answer));
                }
            }
        }
        Ok(landed)
    })();
    let landed = match landed {
        Ok(l) if l.len() == files.len() => l,
        Err(mysql::Error::MySqlError(e)) => {
            // The server stopped at a statement before COMMIT (or refused
            // the COMMIT, rolling back): what the request left open goes.
            warn_unexpected_refusal("group commits", &e);
            roll_back(conn, lost);
            return OneTrip::Refused;
        }
        Ok(l) => {
            roll_back(conn, lost);
            return OneTrip::Unknown(format!("{} answers for {} files", l.len(), files.len()));
        }
        Err(e) => return OneTrip::Unknown(lost(e)),
    };
    let mut out = vec![(0, 0); reqs.len()];
    for (which, (mut at, chg)) in files.values().zip(landed) {
        for &n in which {
            out[n] = (at, chg);
            at += reqs[n].data.len() as u64;
        }
    }
    OneTrip::Landed(out)
}

/// Logs why the server refused a one-request commit (`what`: whose):
/// expected refusals (one for the statement path, a move's fence, a
/// deadlock or lock wait) at debug level, anything else (a node without
/// migration 13 or 14, say) once per error code as a warning, since every
/// such commit then takes the slower way.
pub(super) fn warn_unexpected_refusal(what: &str, e: &mysql::error::MySqlError) {
    static WARNED: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    if matches!(e.code, 1643 | 1644 | 1205 | 1213) {
        log::debug!("{what}: refused: {e}");
        return;
    }
    let mut warned = WARNED.lock().unwrap();
    if !warned.contains(&e.code) {
        warned.push(e.code);
        log::warn!("{what} take the slower way: {e}");
    }
}

/// `tshs_append_files`' answer, `eof,chg;` per file; what does not parse
/// is left out (the caller counts the answers).
fn parse_landed(answer: &str) -> impl Iterator<Item = Landed> + '_ {
    answer.split_terminator(';').filter_map(|f| {
        let (eof, chg) = f.split_once(',')?;
        Some((eof.parse().ok()?, chg.parse().ok()?))
    })
}

/// `data` written at `at`, cut where slots end.
pub fn slot_pieces(at: u64, data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let first = ((E - at % E) as usize).min(data.len());
    let (head, rest) = data.split_at(first);
    std::iter::once(head)
        .filter(|h| !h.is_empty())
        .chain(rest.chunks(E as usize))
}

/// Appends `(space, ino, off, len, data)` to a multi-row `VALUES` list, the
/// data as a hex literal (a text statement: its size changes with every
/// batch, and a prepared one would be prepared anew each time).
fn row_values(sql: &mut String, space: u32, ino: u64, off: u64, data: &[u8]) {
    if !sql.is_empty() {
        sql.push(',');
    }
    let _ = write!(sql, "({space},{ino},{off},{},X'", data.len());
    push_hex(sql, data);
    sql.push_str("')");
}

/// `data` in hex digits, for a hex literal.
fn push_hex(sql: &mut String, data: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    sql.reserve(data.len() * 2);
    for b in data {
        sql.push(HEX[usize::from(b >> 4)] as char);
        sql.push(HEX[usize::from(b & 15)] as char);
    }
}

/// Joins each run of contiguous rows of slot `slot` of a file into one row,
/// so reads get the slot in one piece; the bytes do not change, the
/// inode's `joined` count does. Returns whether anything was joined.
pub fn merge(s: &impl Access, space: u32, ino: u64, slot: u64) -> ShardResult<bool> {
    s.run("merge", |tx| {
        // Lengths first: most slots asked about hold one run already.
        let rows: Vec<(u64, u64)> = tx.exec(
            "SELECT off, len FROM extents WHERE space_id = ? AND ino = ? AND off >= ? AND off < ? ORDER BY off FOR UPDATE",
            (space, ino, slot, slot + E),
        )?;
        let mut runs: Vec<(u64, u64, usize)> = Vec::new(); // (from, to, rows)
        for (off, len) in rows {
            match runs.last_mut() {
                Some((_, to, n)) if *to == off => {
                    *to += len;
                    *n += 1;
                }
                _ => runs.push((off, off + len, 1)),
            }
        }
        let mut merged = false;
        for &(from, to, _) in runs.iter().filter(|r| r.2 > 1) {
            let data: Vec<Vec<u8>> = tx.exec(
                "SELECT data FROM extents WHERE space_id = ? AND ino = ? AND off >= ? AND off < ? ORDER BY off",
                (space, ino, from, to),
            )?;
            tx.exec_drop(
                "DELETE FROM extents WHERE space_id = ? AND ino = ? AND off >= ? AND off < ?",
                (space, ino, from, to),
            )?;
            tx.exec_drop(
                "INSERT INTO extents (space_id, ino, off, len, data) VALUES (?, ?, ?, ?, ?)",
                (space, ino, from, to - from, data.concat()),
            )?;
            merged = true;
        }
        if merged {
            // Copy-shards compares a file's rows of data again only if its
            // inode row changed.
            tx.exec_drop(
                format!("UPDATE inodes SET joined = joined + 1, chg = chg | {APPENDS_ONLY} WHERE space_id = ? AND ino = ?"),
                (space, ino),
            )?;
        }
        Ok(merged)
    })
}

/// Bytes of an object fetched per ranged GET while a file comes back.
const RECALL_CHUNK: u64 = 32 * E;

/// Brings files' data into the database from wherever it is (the object
/// store or an imported disk tree), in one transaction: perform-import's
/// step. Returns the bytes brought in (files with nothing elsewhere, or
/// gone, count 0), or why it could not (then none was brought in).
pub fn bring_in(
    s: &impl Access,
    stores: &dyn Stores,
    space: u32,
    inos: &[u64],
) -> ShardResult<u64> {
    s.run("bring in", |tx| {
        let mut bytes = 0;
        for &ino in inos {
            if let Some((size, Some(_))) = recall(tx, stores, space, ino, true)? {
                bytes += size;
            }
        }
        Ok(bytes)
    })
}

/// Locks the inode's row and, if its data is in the object store or still
/// on the imported disk tree, brings it into extents (`need_data`;
/// otherwise the file is being emptied and the data is simply let go), in
/// the caller's transaction. An object is recorded as garbage:
/// remove-deleted deletes it after the grace period (other mounts may still
/// be reading it); an imported file on disk is left as it is. Returns the
/// inode's size and, if its data was elsewhere, its new `stored`; `None` if
/// there is no such inode. A store or disk failure aborts the transaction.
pub fn recall(
    tx: &mut Transaction<'_>,
    stores: &dyn Stores,
    space: u32,
    ino: u64,
    need_data: bool,
) -> Result<Option<(u64, Option<u64>)>, Body<ShardError>> {
    type Row = (
        u64,
        Option<u32>,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
        Option<i64>,
    );
    let row: Option<Row> = tx.exec_first(
        "SELECT size, s3_host, s3_key, import_path, import_mtime FROM inodes WHERE space_id = ? AND ino = ? FOR UPDATE",
        (space, ino),
    )?;
    let Some((size, host, key, import_path, import_mtime)) = row else {
        return Ok(None);
    };
    let stored = if let Some(path) = import_path {
        let file = crate::disk_tier::DiskFile::new(&path, size, import_mtime);
        let stored = if need_data {
            copy_in(tx, space, ino, size, |off, n| {
                crate::disk_tier::read_span(&file, off, off + n)
                    .map_err(|e| Body::Abort(ShardError::store(space, ino, e)))
            })?
        } else {
            0
        };
        tx.exec_drop(
            "UPDATE inodes SET import_path = NULL, import_mtime = NULL, stored = ? WHERE space_id = ? AND ino = ?",
            (stored, space, ino),
        )?;
        stored
    } else if let (Some(host), Some(key)) = (host, key) {
        let stored = if need_data {
            let text = String::from_utf8_lossy(&key).into_owned();
            let store = stores
                .object_store(host)
                .map_err(|e| ShardError::store(space, ino, format!("S3 host {host}: {e:#}")))?;
            copy_in(tx, space, ino, size, |off, n| {
                store
                    .get_range(&text, off, n)
                    .map_err(|e| Body::Abort(ShardError::store(space, ino, e)))
            })?
        } else {
            0
        };
        tx.exec_drop(
            "UPDATE inodes SET s3_host = NULL, s3_key = NULL, stored = ? WHERE space_id = ? AND ino = ?",
            (stored, space, ino),
        )?;
        tx.exec_drop(
            "INSERT INTO s3_uploads (s3_host, s3_key, space_id, ino, state, touched_at) VALUES (?, ?, ?, ?, 'garbage', ?)",
            (host, &key, space, ino, now_ns()),
        )?;
        log::debug!("space {space} inode {ino}: back from S3 host {host} for a change");
        stored
    } else {
        return Ok(Some((size, None)));
    };
    Ok(Some((size, Some(stored))))
}

/// Writes a file's whole data, read in `RECALL_CHUNK` pieces with `read`,
/// as its extents (replacing any; all-zero extents stay holes). Returns the
/// bytes stored.
pub fn copy_in<Er: From<mysql::Error>>(
    tx: &mut Transaction<'_>,
    space: u32,
    ino: u64,
    size: u64,
    read: impl Fn(u64, u64) -> Result<Vec<u8>, Er>,
) -> Result<u64, Er> {
    tx.exec_drop(
        "DELETE FROM extents WHERE space_id = ? AND ino = ?",
        (space, ino),
    )?;
    let mut stored = 0u64;
    let mut off = 0;
    while off < size {
        let n = RECALL_CHUNK.min(size - off);
        let data = read(off, n)?;
        for (i, piece) in data.chunks(E as usize).enumerate() {
            // All-zero extents stay holes.
            if piece.iter().any(|b| *b != 0) {
                tx.exec_drop(
                    "INSERT INTO extents (space_id, ino, off, len, data) VALUES (?, ?, ?, ?, ?)",
                    (space, ino, off + i as u64 * E, piece.len(), piece),
                )?;
                stored += piece.len() as u64;
            }
        }
        off += n;
    }
    Ok(stored)
}

/// Zeroes `[from, to)`: the rows of slots wholly inside go (holes read as
/// zeros); those of the (at most two) slots at its ends become one extent,
/// zeroed in the range. Returns the bytes still stored.
pub fn zero_range(
    tx: &mut Transaction<'_>,
    space: u32,
    ino: u64,
    from: u64,
    to: u64,
) -> Result<u64, mysql::Error> {
    if from < to {
        // Slots wholly inside go in one statement; only the (at most two)
        // slots at the ends are read and edited.
        let (inner_from, inner_to) = (from.div_ceil(E) * E, to - to % E);
        if inner_from < inner_to {
            tx.exec_drop(
                "DELETE FROM extents WHERE space_id = ? AND ino = ? AND off >= ? AND off < ?",
                (space, ino, inner_from, inner_to),
            )?;
        }
        let mut ends = vec![from - from % E];
        if to - to % E != ends[0] && !to.is_multiple_of(E) {
            ends.push(to - to % E);
        }
        for slot in ends {
            // The slot's rows become one extent, zeroed in the range.
            let rows: Vec<(u64, Vec<u8>)> = tx.exec(
                "SELECT off, data FROM extents WHERE space_id = ? AND ino = ? AND off >= ? AND off < ? ORDER BY off FOR UPDATE",
                (space, ino, slot, slot + E),
            )?;
            let Some((_, mut data)) = assemble(rows).pop() else {
                continue;
            };
            let a = from.saturating_sub(slot).min(data.len() as u64) as usize;
            let b = (to - slot).min(data.len() as u64) as usize;
            if a >= b {
                continue;
            }
            data[a..b].fill(0);
            tx.exec_drop(
                "DELETE FROM extents WHERE space_id = ? AND ino = ? AND off >= ? AND off < ?",
                (space, ino, slot, slot + E),
            )?;
            // Trailing zeros need no storage: short extents read as zeros.
            let keep = data.iter().rposition(|&x| x != 0).map_or(0, |p| p + 1);
            if keep > 0 {
                tx.exec_drop(
                    "INSERT INTO extents (space_id, ino, off, len, data) VALUES (?, ?, ?, ?, ?)",
                    (space, ino, slot, keep, &data[..keep]),
                )?;
            }
        }
    }
    stored_bytes(tx, space, ino)
}

/// Where the next data (`SEEK_DATA`) or hole (`SEEK_HOLE`) at or after
/// `offset` begins in a file of `size` bytes, from its extents: a missing
/// extent, or the part of one past its length, is a hole; the end of the
/// file is one too. `None` past the end (`ENXIO`).
pub fn seek(
    s: &impl Access,
    space: u32,
    ino: u64,
    size: u64,
    offset: u64,
    data: bool,
) -> ShardResult<Option<u64>> {
    if offset >= size {
        return Ok(None);
    }
    // A file held elsewhere (object store, imported disk) is data throughout.
    let elsewhere: Option<u8> = s.query("seek", |c| {
        c.exec_first(
            "SELECT 1 FROM inodes WHERE space_id = ? AND ino = ? AND (s3_key IS NOT NULL OR import_path IS NOT NULL)",
            (space, ino),
        )
    })?;
    if elsewhere.is_some() {
        return Ok(Some(if data { offset } else { size }));
    }
    // Rows in order: a gap between them, or after the last, is a hole.
    let mut pos = offset;
    let mut after = offset - offset % E;
    loop {
        let rows: Vec<(u64, u64)> = s.query("seek", |c| {
            c.exec(
                "SELECT off, len FROM extents WHERE space_id = ? AND ino = ? AND off >= ? AND len > 0 ORDER BY off LIMIT 256",
                (space, ino, after),
            )
        })?;
        let Some(&(last, _)) = rows.last() else {
            return Ok(if data { None } else { Some(pos.min(size)) });
        };
        for (off, len) in &rows {
            if off + len <= pos {
                continue;
            }
            if data {
                return Ok((pos.max(*off) < size).then_some(pos.max(*off)));
            }
            if *off > pos {
                return Ok(Some(pos));
            }
            pos = off + len;
            if pos >= size {
                return Ok(Some(size));
            }
        }
        after = last + 1;
    }
}

/// Drops the data at and beyond `size`; returns the bytes still stored.
pub fn truncate(
    tx: &mut Transaction<'_>,
    space: u32,
    ino: u64,
    size: u64,
) -> Result<u64, mysql::Error> {
    tx.exec_drop(
        "DELETE FROM extents WHERE space_id = ? AND ino = ? AND off >= ?",
        (space, ino, size),
    )?;
    // The one row (if any) that crosses the new end.
    tx.exec_drop(
        "UPDATE extents SET data = LEFT(data, ? - off), len = ? - off
         WHERE space_id = ? AND ino = ? AND off >= ? AND off < ? AND off + len > ?",
        (size, size, space, ino, size.saturating_sub(E), size, size),
    )?;
    stored_bytes(tx, space, ino)
}

fn stored_bytes(tx: &mut Transaction<'_>, space: u32, ino: u64) -> Result<u64, mysql::Error> {
    let stored: Option<Option<u64>> = tx.exec_first(
        "SELECT CAST(SUM(len) AS UNSIGNED) FROM extents WHERE space_id = ? AND ino = ?",
        (space, ino),
    )?;
    Ok(stored.flatten().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_lays_rows_past_the_cached_bytes() {
        // Pieces after the cached end, a gap (hole) between them.
        assert_eq!(
            overlay(E, &[1, 2, 3], vec![(E + 3, vec![4]), (E + 6, vec![7, 8])]),
            vec![1, 2, 3, 4, 0, 0, 7, 8]
        );
        // A joined row starting inside the cached bytes replaces them from
        // its offset.
        assert_eq!(
            overlay(0, &[1, 2, 3], vec![(1, vec![2, 3, 4])]),
            vec![1, 2, 3, 4]
        );
        assert_eq!(overlay(0, &[1, 2], vec![]), vec![1, 2]);
    }

    #[test]
    fn assemble_lays_pieces_out_per_slot_with_zeroed_gaps() {
        let rows = vec![
            (0, vec![1, 2]),
            (2, vec![3]),
            (5, vec![4]),
            (E, vec![5]),
            (2 * E + 3, vec![6]),
        ];
        assert_eq!(
            assemble(rows),
            vec![
                (0, vec![1, 2, 3, 0, 0, 4]),
                (E, vec![5]),
                (2 * E, vec![0, 0, 0, 6]),
            ]
        );
        assert!(assemble(Vec::new()).is_empty());
    }

    #[test]
    fn slot_pieces_cut_where_slots_end() {
        let data = vec![7u8; (E + 10) as usize];
        let lens = |at: u64, n: usize| -> Vec<usize> {
            slot_pieces(at, &data[..n]).map(<[u8]>::len).collect()
        };
        assert_eq!(lens(0, 10), vec![10]);
        assert_eq!(lens(E - 4, 10), vec![4, 6]);
        assert_eq!(lens(E, 10), vec![10]);
        assert_eq!(lens(5, (E + 10) as usize), vec![(E - 5) as usize, 15]);
        assert_eq!(lens(E - 1, 0), Vec::<usize>::new());
    }

    #[test]
    fn the_append_procedure_cuts_pieces_at_the_slot_size() {
        let sql = super::super::MIGRATIONS
            .iter()
            .flat_map(|m| m.1.iter())
            .find(|s| s.contains("PROCEDURE tshs_append"))
            .unwrap();
        assert!(sql.contains(&format!("{E} - (eof + pos - 1) % {E}")));
        let sql = super::super::MIGRATIONS
            .iter()
            .flat_map(|m| m.1.iter())
            .find(|s| s.contains("PROCEDURE tshs_append_files"))
            .unwrap();
        assert!(sql.contains(&format!("{E} - (eof + pos) % {E}")));
    }

    #[test]
    fn the_append_answer_parses_per_file() {
        let got: Vec<Landed> = parse_landed("0,5;262144,18446744073709551615;").collect();
        assert_eq!(got, vec![(0, 5), (262144, u64::MAX)]);
        assert_eq!(parse_landed("").count(), 0);
        assert_eq!(parse_landed("7,x;").count(), 0);
    }

    #[test]
    fn row_values_are_hex_literals() {
        let mut sql = String::new();
        row_values(&mut sql, 3, 9, 17, &[0x00, 0xab, 0x7f]);
        row_values(&mut sql, 3, 9, 20, b"");
        assert_eq!(sql, "(3,9,17,3,X'00ab7f'),(3,9,20,0,X'')");
    }
}
