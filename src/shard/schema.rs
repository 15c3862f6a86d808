//! The Storage Node schema, as numbered migrations. Append; never edit an
//! applied migration.
//!
//! Times are nanoseconds since the epoch (signed: times before 1970 are
//! legal). `inodes.state`: 0 live, 1 unlinked but still open on the access
//! point `holder`, 2 deleted (rows wait for remove-deleted / the reaper).
//!
//! `space_fence` fences a space during a move (migration 2): while
//! `fenced_until` lies in the future, every write to the space's rows fails
//! inside the database with error 1644 and [`FENCE_MESSAGE`], whatever
//! process sends it — the triggers check it, so no writer can slip past a
//! stale placement. Sessions that set `@tshs_copier` (copy-shards itself)
//! are let through. `copy_token` on the receiving node names the copy-shards
//! run that may still write there.
//!
//! Migration 3 (object store): `inodes.s3_host`/`s3_key` name the object
//! holding a regular file's data once move-to-s3 moved it; such a file has
//! no extents (`stored` keeps the bytes the file occupies, for `st_blocks`).
//! `s3_uploads` records every object that no inode names (yet): an upload
//! in flight (`uploading`, `touched_at` renewed while it runs, `upload_id`
//! of a multipart upload), or an object to delete (`garbage`: replaced,
//! brought back into the database, or its inode purged). remove-deleted
//! deletes the objects of garbage rows older than the grace period and of
//! uploads whose process stopped renewing them. Not keyed by space: the
//! rows stay with the node that made them, also when a space moves.
//!
//! Migration 4 (import): `inodes.import_path` is the on-disk file a regular
//! file's data is still read from after import-volumes brought its space's
//! tree in; perform-import (or the first change) copies the data into
//! extents and clears it. The file on disk is never changed or deleted.
//! Migration 5: `inodes.import_mtime` is that file's mtime (ns) when its
//! tree was imported; with the size it tells a file rewritten on disk since
//! (as rsync's quick check does). NULL for rows imported before it.
//!
//! Migration 6: `open_writers` holds the leases of files that mounts keep
//! open for writing (see `open_writers.rs`); move-to-s3 leaves those files
//! alone. No fence triggers: the rows are not copied when a space moves
//! (mounts renew them on the new node), and not backed up.
//!
//! Migration 8: `applied_ops` records, per process (`writer`, random) and
//! thread (`lane`), the last operation applied (`seq`), in the operation's
//! own transaction, so an append or create whose COMMIT got no answer is
//! not applied twice when run again (see `db::once`). One row per lane;
//! remove-deleted drops the rows of lanes idle for a day. Not copied when a
//! space moves: an operation whose outcome is unknown at the very moment
//! of a move's cut-over, run again on the new node, is not found there.
//!
//! Migration 10 (snapshots, see `snapshot.rs`): rows are versioned. Every
//! row of `inodes`, `dentries`, `xattrs` and `extents` carries `born`, the
//! space's snapshot epoch (`space_fence.snap_epoch`) when it was written.
//! Taking a snapshot bumps the epoch: its *moment* is the new value, and it
//! sees the rows with `born < moment`. A row changed or deleted while a
//! snapshot still needs it (`born < snap_keep`, the newest live snapshot's
//! moment) is first kept in the table's `_v` twin with `died`, the epoch of
//! the change: a snapshot sees the kept rows with `born < moment <= died`.
//! The triggers do it, under the same share lock of the fence row that the
//! fence check takes, so a snapshot's bump waits for the writers in flight
//! and later writers see the new epoch: each transaction falls wholly
//! before or after a moment. Without a live snapshot `snap_keep` is 0 and a
//! write pays one column more. `snapshot_moments` holds the live snapshots'
//! moments per space (their names live in the Admin Node). copy-shards
//! copies all of it, so a snapshot moves with its space. A later migration
//! that adds a column to one of the four tables adds it to its `_v` twin
//! and to the column list of the table's update and delete triggers.
//!
//! Migration 11: `node_identity`, one row naming the node this database
//! holds and a random token the Admin Node records too (`identity.rs`).
//! Written by create-storage-node, split-storage-node and restore-from-s3,
//! and on first use by the Admin Node for a node made before it.
//!
//! Migration 12: `inodes.chg` counts an inode's changes other than appends.
//! The update trigger moves it on every update, except one that marks
//! itself as only adding bytes at the end or joining pieces (it sets the
//! top bit, [`APPENDS_ONLY`], which the trigger clears): a mount that saw
//! the same counter before and after another mount's appends keeps the
//! file's cached bytes below the end it knew. A row starts at the time of
//! its insert in microseconds (so an inode made again under the same
//! number, in a space restored or made again, never repeats a counter),
//! and a row from before the migration gets that at its first update. `tshs_append_with_chg` is
//! `tshs_append` answering the counter too (the old one stays for old
//! binaries: its updates move the counter, which only costs their readers
//! a re-read).
//!
//! Migration 13: `tshs_append_files` is a group commit's appends in one
//! call: one statement and one answer per batch instead of one per file
//! (a call and its result set cost the server more than the rows it
//! writes). The older procedures stay for older binaries.
//!
//! Migration 14: `tshs_create_file` is a new file's first commit (its
//! row with its size and times, its entry, its directory's times) in one
//! call, sent with the file's data rows and the COMMIT as one request
//! (`extents::commit`): one round trip instead of eight.
//! `tshs_rename_file` is the common rename (a file to a free name), sent
//! with the deferred attribute changes it carries and the COMMIT
//! (`namespace::rename`): one round trip instead of seven. Both refuse
//! anything else, which then runs as before.
//!
//! Migration 15: `tshs_unlink_file` is the removal of a file's name (the
//! entry, the file's links or its deletion, the directory's times) in one
//! call, sent with the COMMIT (`namespace::unlink`): one round trip
//! instead of six. It refuses a directory and the last name of a file the
//! mount holds open (an orphan until its close), which then run as before.

pub const TABLES: &[&str] = &[
    "schema_migrations",
    "spaces",
    "inodes",
    "dentries",
    "extents",
    "xattrs",
    "space_fence",
    "s3_uploads",
    "open_writers",
    "applied_ops",
    "inodes_v",
    "dentries_v",
    "xattrs_v",
    "extents_v",
    "snapshot_moments",
    "node_identity",
];

/// How a Storage Node records its applied operations (migration 8).
pub const APPLIED_OPS: crate::db::OpLog = crate::db::OpLog {
    check: "SELECT seq FROM applied_ops WHERE writer = ? AND lane = ? FOR UPDATE",
    record: "INSERT INTO applied_ops (writer, lane, seq, at) VALUES (?, ?, ?, ?)
             ON DUPLICATE KEY UPDATE seq = VALUES(seq), at = VALUES(at)",
};

/// Lanes idle this long belong to processes gone (their retries long over).
pub const APPLIED_OPS_KEEP_NS: i64 = 24 * 3600 * 1_000_000_000;

/// The stored procedures migrations 2, 7, 10, 12, 13, 14 and 15 create (dropped with the tables).
pub const ROUTINES: &[&str] = &[
    "tshs_check_fence",
    "tshs_append",
    "tshs_guard",
    "tshs_append_with_chg",
    "tshs_append_files",
    "tshs_create_file",
    "tshs_rename_file",
    "tshs_unlink_file",
];

/// Set in `inodes.chg` by an update that only appends or joins pieces: the
/// trigger then keeps the change counter (see migration 12).
pub const APPENDS_ONLY: &str = "9223372036854775808";

/// The message of the error a write to a fenced space gets.
pub const FENCE_MESSAGE: &str = "tshs: the space is being moved to another storage node";

/// The error number of that error: the schema's only `SIGNAL`, so the
/// number alone says the write met a move's fence.
const FENCE_ERRNO: u16 = 1644;

/// True for a transaction refused by a move's fence (see `space_fence`).
pub fn is_fenced(e: &crate::db::TxError) -> bool {
    matches!(e, crate::db::TxError::Sql(code, _, _) if *code == FENCE_ERRNO)
}

/// A space's rows could not be changed: it is being moved.
#[derive(Debug, thiserror::Error)]
#[error("{FENCE_MESSAGE}")]
pub struct Fenced;

pub const MIGRATIONS: &[(u32, &[&str])] = &[
    (
        1,
        &[
            "CREATE TABLE IF NOT EXISTS spaces (
            space_id INT UNSIGNED NOT NULL PRIMARY KEY,
            next_ino BIGINT UNSIGNED NOT NULL,
            next_seq BIGINT UNSIGNED NOT NULL
        ) ENGINE=InnoDB",
            "CREATE TABLE IF NOT EXISTS inodes (
            space_id INT UNSIGNED NOT NULL,
            ino BIGINT UNSIGNED NOT NULL,
            mode INT UNSIGNED NOT NULL,
            uid INT UNSIGNED NOT NULL,
            gid INT UNSIGNED NOT NULL,
            nlink INT UNSIGNED NOT NULL,
            size BIGINT UNSIGNED NOT NULL,
            stored BIGINT UNSIGNED NOT NULL,
            rdev INT UNSIGNED NOT NULL,
            atime BIGINT NOT NULL,
            mtime BIGINT NOT NULL,
            ctime BIGINT NOT NULL,
            btime BIGINT NOT NULL,
            target VARBINARY(4096) NULL,
            state TINYINT UNSIGNED NOT NULL DEFAULT 0,
            holder BIGINT UNSIGNED NULL,
            deleted_at BIGINT NULL,
            PRIMARY KEY (space_id, ino),
            KEY (state)
        ) ENGINE=InnoDB",
            "CREATE TABLE IF NOT EXISTS dentries (
            space_id INT UNSIGNED NOT NULL,
            parent BIGINT UNSIGNED NOT NULL,
            name VARBINARY(255) NOT NULL,
            ino BIGINT UNSIGNED NOT NULL,
            seq BIGINT UNSIGNED NOT NULL,
            PRIMARY KEY (space_id, parent, name),
            UNIQUE KEY readdir (space_id, parent, seq),
            KEY by_ino (space_id, ino)
        ) ENGINE=InnoDB",
            "CREATE TABLE IF NOT EXISTS extents (
            space_id INT UNSIGNED NOT NULL,
            ino BIGINT UNSIGNED NOT NULL,
            off BIGINT UNSIGNED NOT NULL,
            len INT UNSIGNED NOT NULL,
            data MEDIUMBLOB NOT NULL,
            PRIMARY KEY (space_id, ino, off)
        ) ENGINE=InnoDB",
            "CREATE TABLE IF NOT EXISTS xattrs (
            space_id INT UNSIGNED NOT NULL,
            ino BIGINT UNSIGNED NOT NULL,
            name VARBINARY(255) NOT NULL,
            value MEDIUMBLOB NOT NULL,
            PRIMARY KEY (space_id, ino, name)
        ) ENGINE=InnoDB",
        ],
    ),
    (
        2,
        &[
            "CREATE TABLE IF NOT EXISTS space_fence (
                space_id INT UNSIGNED NOT NULL PRIMARY KEY,
                fenced_until DATETIME(3) NULL,
                copy_token BIGINT UNSIGNED NULL
            ) ENGINE=InnoDB",
            "INSERT IGNORE INTO space_fence (space_id) SELECT space_id FROM spaces",
            // The share lock makes a writer and the fence exclude each other:
            // fencing waits for writers in flight, later writers see it.
            // `spaces` gets no update trigger: a trigger hides the
            // LAST_INSERT_ID(…) the counters are read with (see reserve_ids).
            "CREATE OR REPLACE PROCEDURE tshs_check_fence(IN s INT UNSIGNED)
             BEGIN
               DECLARE f DATETIME(3) DEFAULT NULL;
               DECLARE CONTINUE HANDLER FOR NOT FOUND SET f = NULL;
               IF @tshs_copier IS NULL THEN
                 SELECT fenced_until INTO f FROM space_fence WHERE space_id = s LOCK IN SHARE MODE;
                 IF f > UTC_TIMESTAMP(3) THEN
                   SIGNAL SQLSTATE '45000'
                     SET MESSAGE_TEXT = 'tshs: the space is being moved to another storage node',
                         MYSQL_ERRNO = 1644;
                 END IF;
               END IF;
             END",
            "CREATE OR REPLACE TRIGGER spaces_fence_i BEFORE INSERT ON spaces FOR EACH ROW CALL tshs_check_fence(NEW.space_id)",
            "CREATE OR REPLACE TRIGGER spaces_fence_d BEFORE DELETE ON spaces FOR EACH ROW CALL tshs_check_fence(OLD.space_id)",
            "CREATE OR REPLACE TRIGGER inodes_fence_i BEFORE INSERT ON inodes FOR EACH ROW CALL tshs_check_fence(NEW.space_id)",
            "CREATE OR REPLACE TRIGGER inodes_fence_u BEFORE UPDATE ON inodes FOR EACH ROW CALL tshs_check_fence(NEW.space_id)",
            "CREATE OR REPLACE TRIGGER inodes_fence_d BEFORE DELETE ON inodes FOR EACH ROW CALL tshs_check_fence(OLD.space_id)",
            "CREATE OR REPLACE TRIGGER dentries_fence_i BEFORE INSERT ON dentries FOR EACH ROW CALL tshs_check_fence(NEW.space_id)",
            "CREATE OR REPLACE TRIGGER dentries_fence_u BEFORE UPDATE ON dentries FOR EACH ROW CALL tshs_check_fence(NEW.space_id)",
            "CREATE OR REPLACE TRIGGER dentries_fence_d BEFORE DELETE ON dentries FOR EACH ROW CALL tshs_check_fence(OLD.space_id)",
            "CREATE OR REPLACE TRIGGER extents_fence_i BEFORE INSERT ON extents FOR EACH ROW CALL tshs_check_fence(NEW.space_id)",
            "CREATE OR REPLACE TRIGGER extents_fence_u BEFORE UPDATE ON extents FOR EACH ROW CALL tshs_check_fence(NEW.space_id)",
            "CREATE OR REPLACE TRIGGER extents_fence_d BEFORE DELETE ON extents FOR EACH ROW CALL tshs_check_fence(OLD.space_id)",
            "CREATE OR REPLACE TRIGGER xattrs_fence_i BEFORE INSERT ON xattrs FOR EACH ROW CALL tshs_check_fence(NEW.space_id)",
            "CREATE OR REPLACE TRIGGER xattrs_fence_u BEFORE UPDATE ON xattrs FOR EACH ROW CALL tshs_check_fence(NEW.space_id)",
            "CREATE OR REPLACE TRIGGER xattrs_fence_d BEFORE DELETE ON xattrs FOR EACH ROW CALL tshs_check_fence(OLD.space_id)",
        ],
    ),
    (
        3,
        &[
            "ALTER TABLE inodes ADD COLUMN IF NOT EXISTS s3_host INT UNSIGNED NULL,
                               ADD COLUMN IF NOT EXISTS s3_key VARBINARY(512) NULL",
            "CREATE TABLE IF NOT EXISTS s3_uploads (
                id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
                s3_host INT UNSIGNED NOT NULL,
                s3_key VARBINARY(512) NOT NULL,
                space_id INT UNSIGNED NOT NULL,
                ino BIGINT UNSIGNED NOT NULL,
                state VARCHAR(16) NOT NULL,
                upload_id VARBINARY(1024) NULL,
                touched_at BIGINT NOT NULL,
                KEY (state, touched_at)
            ) ENGINE=InnoDB",
        ],
    ),
    (
        4,
        &["ALTER TABLE inodes ADD COLUMN IF NOT EXISTS import_path VARBINARY(4096) NULL"],
    ),
    (
        5,
        &["ALTER TABLE inodes ADD COLUMN IF NOT EXISTS import_mtime BIGINT NULL"],
    ),
    (
        6,
        &["CREATE TABLE IF NOT EXISTS open_writers (
            space_id INT UNSIGNED NOT NULL,
            ino BIGINT UNSIGNED NOT NULL,
            holder BIGINT UNSIGNED NOT NULL,
            renewed DATETIME(3) NOT NULL,
            PRIMARY KEY (space_id, ino, holder)
        ) ENGINE=InnoDB"],
    ),
    (
        7,
        // One file's appends of a group commit, laid at its end of file in
        // pieces that do not cross a slot's end (262144 = EXTENT_SIZE), so a
        // batch is one round trip (see `extents::append_in_one_trip`).
        // Answers where the data landed. A file that is gone, held
        // elsewhere (object store, imported disk: it must be brought back
        // first) or would grow past `most` refuses the whole batch before
        // its COMMIT (the caller then runs it statement by statement, where
        // each append gets its own answer): a batch that committed wrote
        // every append in it, which a lost answer relies on.
        &[
            "CREATE OR REPLACE PROCEDURE tshs_append(IN s INT UNSIGNED, IN i BIGINT UNSIGNED,
                IN d LONGBLOB, IN t BIGINT, IN most BIGINT UNSIGNED)
           BEGIN
             DECLARE eof BIGINT UNSIGNED DEFAULT NULL;
             DECLARE away BOOL DEFAULT TRUE;
             DECLARE n BIGINT UNSIGNED DEFAULT LENGTH(d);
             DECLARE pos BIGINT UNSIGNED DEFAULT 1;
             DECLARE k BIGINT UNSIGNED;
             DECLARE CONTINUE HANDLER FOR NOT FOUND SET eof = NULL;
             SELECT size, s3_key IS NOT NULL OR import_path IS NOT NULL INTO eof, away
               FROM inodes WHERE space_id = s AND ino = i FOR UPDATE;
             IF eof IS NULL OR away OR eof + n > most THEN
               SIGNAL SQLSTATE '45000'
                 SET MESSAGE_TEXT = 'tshs: an append for the statement path', MYSQL_ERRNO = 1643;
             ELSE
               WHILE pos <= n DO
                 SET k = LEAST(n - pos + 1, 262144 - (eof + pos - 1) % 262144);
                 INSERT INTO extents (space_id, ino, off, len, data)
                   VALUES (s, i, eof + pos - 1, k, SUBSTRING(d, pos, k));
                 SET pos = pos + k;
               END WHILE;
               UPDATE inodes SET size = eof + n, stored = stored + n, mtime = t, ctime = t
                 WHERE space_id = s AND ino = i;
               SELECT eof;
             END IF;
           END",
        ],
    ),
    (
        8,
        &["CREATE TABLE IF NOT EXISTS applied_ops (
            writer BINARY(8) NOT NULL,
            lane INT UNSIGNED NOT NULL,
            seq BIGINT UNSIGNED NOT NULL,
            at BIGINT NOT NULL,
            PRIMARY KEY (writer, lane),
            KEY (at)
        ) ENGINE=InnoDB"],
    ),
    (
        9,
        // Moved by every joining of a file's pieces (`extents::merge`), which
        // changes its extents but not its size or times: copy-shards
        // compares a file's extents again only when its inode row changed.
        &["ALTER TABLE inodes ADD COLUMN IF NOT EXISTS joined BIGINT UNSIGNED NOT NULL DEFAULT 0"],
    ),
    (
        10,
        // Snapshots: versioned rows (see the module's header).
        &[
            "ALTER TABLE inodes ADD COLUMN IF NOT EXISTS born BIGINT UNSIGNED NOT NULL DEFAULT 0",
            "ALTER TABLE dentries ADD COLUMN IF NOT EXISTS born BIGINT UNSIGNED NOT NULL DEFAULT 0",
            "ALTER TABLE xattrs ADD COLUMN IF NOT EXISTS born BIGINT UNSIGNED NOT NULL DEFAULT 0",
            "ALTER TABLE extents ADD COLUMN IF NOT EXISTS born BIGINT UNSIGNED NOT NULL DEFAULT 0",
            "ALTER TABLE space_fence ADD COLUMN IF NOT EXISTS snap_epoch BIGINT UNSIGNED NOT NULL DEFAULT 0,
                                ADD COLUMN IF NOT EXISTS snap_keep BIGINT UNSIGNED NOT NULL DEFAULT 0",
            "CREATE TABLE IF NOT EXISTS inodes_v LIKE inodes",
            "ALTER TABLE inodes_v ADD COLUMN IF NOT EXISTS died BIGINT UNSIGNED NOT NULL, DROP KEY IF EXISTS state,
                 DROP PRIMARY KEY, ADD PRIMARY KEY (space_id, ino, died), ADD KEY IF NOT EXISTS object (s3_host, s3_key)",
            "CREATE TABLE IF NOT EXISTS dentries_v LIKE dentries",
            "ALTER TABLE dentries_v ADD COLUMN IF NOT EXISTS died BIGINT UNSIGNED NOT NULL, DROP KEY IF EXISTS readdir,
                 DROP PRIMARY KEY, ADD PRIMARY KEY (space_id, parent, name, died)",
            "CREATE TABLE IF NOT EXISTS xattrs_v LIKE xattrs",
            "ALTER TABLE xattrs_v ADD COLUMN IF NOT EXISTS died BIGINT UNSIGNED NOT NULL,
                 DROP PRIMARY KEY, ADD PRIMARY KEY (space_id, ino, name, died)",
            "CREATE TABLE IF NOT EXISTS extents_v LIKE extents",
            "ALTER TABLE extents_v ADD COLUMN IF NOT EXISTS died BIGINT UNSIGNED NOT NULL,
                 DROP PRIMARY KEY, ADD PRIMARY KEY (space_id, ino, off, died)",
            "CREATE TABLE IF NOT EXISTS snapshot_moments (
                space_id INT UNSIGNED NOT NULL,
                snapshot_id BIGINT UNSIGNED NOT NULL,
                moment BIGINT UNSIGNED NOT NULL,
                PRIMARY KEY (space_id, snapshot_id)
            ) ENGINE=InnoDB",
            // The fence check of migration 2, also answering the space's
            // snapshot epoch and the newest live snapshot's moment (0, 0
            // for copy-shards' sessions, which copy rows as they are).
            "CREATE OR REPLACE PROCEDURE tshs_guard(IN s INT UNSIGNED, OUT e BIGINT UNSIGNED, OUT k BIGINT UNSIGNED)
             BEGIN
               DECLARE f DATETIME(3) DEFAULT NULL;
               DECLARE CONTINUE HANDLER FOR NOT FOUND SET f = NULL;
               SET e = 0, k = 0;
               IF @tshs_copier IS NULL THEN
                 SELECT fenced_until, snap_epoch, snap_keep INTO f, e, k
                   FROM space_fence WHERE space_id = s LOCK IN SHARE MODE;
                 IF f > UTC_TIMESTAMP(3) THEN
                   SIGNAL SQLSTATE '45000'
                     SET MESSAGE_TEXT = 'tshs: the space is being moved to another storage node',
                         MYSQL_ERRNO = 1644;
                 END IF;
               END IF;
             END",
            "CREATE OR REPLACE TRIGGER inodes_fence_i BEFORE INSERT ON inodes FOR EACH ROW
             BEGIN DECLARE e, k BIGINT UNSIGNED; CALL tshs_guard(NEW.space_id, e, k);
               IF @tshs_copier IS NULL THEN SET NEW.born = e; END IF; END",
            "CREATE OR REPLACE TRIGGER inodes_fence_u BEFORE UPDATE ON inodes FOR EACH ROW
             BEGIN DECLARE e, k BIGINT UNSIGNED; CALL tshs_guard(NEW.space_id, e, k);
               IF @tshs_copier IS NULL THEN
                 IF OLD.born < k THEN INSERT INTO inodes_v (space_id, ino, mode, uid, gid, nlink, size, stored, rdev, atime, mtime, ctime, btime, target, state, holder, deleted_at, s3_host, s3_key, import_path, import_mtime, joined, born, died) VALUES (OLD.space_id, OLD.ino, OLD.mode, OLD.uid, OLD.gid, OLD.nlink, OLD.size, OLD.stored, OLD.rdev, OLD.atime, OLD.mtime, OLD.ctime, OLD.btime, OLD.target, OLD.state, OLD.holder, OLD.deleted_at, OLD.s3_host, OLD.s3_key, OLD.import_path, OLD.import_mtime, OLD.joined, OLD.born, e); END IF;
                 SET NEW.born = e;
               END IF; END",
            "CREATE OR REPLACE TRIGGER inodes_fence_d BEFORE DELETE ON inodes FOR EACH ROW
             BEGIN DECLARE e, k BIGINT UNSIGNED; CALL tshs_guard(OLD.space_id, e, k);
               IF @tshs_copier IS NULL THEN IF OLD.born < k THEN INSERT INTO inodes_v (space_id, ino, mode, uid, gid, nlink, size, stored, rdev, atime, mtime, ctime, btime, target, state, holder, deleted_at, s3_host, s3_key, import_path, import_mtime, joined, born, died) VALUES (OLD.space_id, OLD.ino, OLD.mode, OLD.uid, OLD.gid, OLD.nlink, OLD.size, OLD.stored, OLD.rdev, OLD.atime, OLD.mtime, OLD.ctime, OLD.btime, OLD.target, OLD.state, OLD.holder, OLD.deleted_at, OLD.s3_host, OLD.s3_key, OLD.import_path, OLD.import_mtime, OLD.joined, OLD.born, e); END IF; END IF; END",
            "CREATE OR REPLACE TRIGGER dentries_fence_i BEFORE INSERT ON dentries FOR EACH ROW
             BEGIN DECLARE e, k BIGINT UNSIGNED; CALL tshs_guard(NEW.space_id, e, k);
               IF @tshs_copier IS NULL THEN SET NEW.born = e; END IF; END",
            "CREATE OR REPLACE TRIGGER dentries_fence_u BEFORE UPDATE ON dentries FOR EACH ROW
             BEGIN DECLARE e, k BIGINT UNSIGNED; CALL tshs_guard(NEW.space_id, e, k);
               IF @tshs_copier IS NULL THEN
                 IF OLD.born < k THEN INSERT INTO dentries_v (space_id, parent, name, ino, seq, born, died) VALUES (OLD.space_id, OLD.parent, OLD.name, OLD.ino, OLD.seq, OLD.born, e); END IF;
                 SET NEW.born = e;
               END IF; END",
            "CREATE OR REPLACE TRIGGER dentries_fence_d BEFORE DELETE ON dentries FOR EACH ROW
             BEGIN DECLARE e, k BIGINT UNSIGNED; CALL tshs_guard(OLD.space_id, e, k);
               IF @tshs_copier IS NULL THEN IF OLD.born < k THEN INSERT INTO dentries_v (space_id, parent, name, ino, seq, born, died) VALUES (OLD.space_id, OLD.parent, OLD.name, OLD.ino, OLD.seq, OLD.born, e); END IF; END IF; END",
            "CREATE OR REPLACE TRIGGER xattrs_fence_i BEFORE INSERT ON xattrs FOR EACH ROW
             BEGIN DECLARE e, k BIGINT UNSIGNED; CALL tshs_guard(NEW.space_id, e, k);
               IF @tshs_copier IS NULL THEN SET NEW.born = e; END IF; END",
            "CREATE OR REPLACE TRIGGER xattrs_fence_u BEFORE UPDATE ON xattrs FOR EACH ROW
             BEGIN DECLARE e, k BIGINT UNSIGNED; CALL tshs_guard(NEW.space_id, e, k);
               IF @tshs_copier IS NULL THEN
                 IF OLD.born < k THEN INSERT INTO xattrs_v (space_id, ino, name, value, born, died) VALUES (OLD.space_id, OLD.ino, OLD.name, OLD.value, OLD.born, e); END IF;
                 SET NEW.born = e;
               END IF; END",
            "CREATE OR REPLACE TRIGGER xattrs_fence_d BEFORE DELETE ON xattrs FOR EACH ROW
             BEGIN DECLARE e, k BIGINT UNSIGNED; CALL tshs_guard(OLD.space_id, e, k);
               IF @tshs_copier IS NULL THEN IF OLD.born < k THEN INSERT INTO xattrs_v (space_id, ino, name, value, born, died) VALUES (OLD.space_id, OLD.ino, OLD.name, OLD.value, OLD.born, e); END IF; END IF; END",
            "CREATE OR REPLACE TRIGGER extents_fence_i BEFORE INSERT ON extents FOR EACH ROW
             BEGIN DECLARE e, k BIGINT UNSIGNED; CALL tshs_guard(NEW.space_id, e, k);
               IF @tshs_copier IS NULL THEN SET NEW.born = e; END IF; END",
            "CREATE OR REPLACE TRIGGER extents_fence_u BEFORE UPDATE ON extents FOR EACH ROW
             BEGIN DECLARE e, k BIGINT UNSIGNED; CALL tshs_guard(NEW.space_id, e, k);
               IF @tshs_copier IS NULL THEN
                 IF OLD.born < k THEN INSERT INTO extents_v (space_id, ino, off, len, data, born, died) VALUES (OLD.space_id, OLD.ino, OLD.off, OLD.len, OLD.data, OLD.born, e); END IF;
                 SET NEW.born = e;
               END IF; END",
            "CREATE OR REPLACE TRIGGER extents_fence_d BEFORE DELETE ON extents FOR EACH ROW
             BEGIN DECLARE e, k BIGINT UNSIGNED; CALL tshs_guard(OLD.space_id, e, k);
               IF @tshs_copier IS NULL THEN IF OLD.born < k THEN INSERT INTO extents_v (space_id, ino, off, len, data, born, died) VALUES (OLD.space_id, OLD.ino, OLD.off, OLD.len, OLD.data, OLD.born, e); END IF; END IF; END",
        ],
    ),
    (
        11,
        &["CREATE TABLE IF NOT EXISTS node_identity (
            id TINYINT UNSIGNED NOT NULL PRIMARY KEY,
            node_id INT UNSIGNED NOT NULL,
            token CHAR(32) NOT NULL,
            switch_mark CHAR(32) NULL
        ) ENGINE=InnoDB"],
    ),
    (
        12,
        &[
            "ALTER TABLE inodes ADD COLUMN IF NOT EXISTS chg BIGINT UNSIGNED NOT NULL DEFAULT 0",
            "ALTER TABLE inodes_v ADD COLUMN IF NOT EXISTS chg BIGINT UNSIGNED NOT NULL DEFAULT 0",
            "CREATE OR REPLACE TRIGGER inodes_fence_u BEFORE UPDATE ON inodes FOR EACH ROW
             BEGIN DECLARE e, k BIGINT UNSIGNED; CALL tshs_guard(NEW.space_id, e, k);
               IF @tshs_copier IS NULL THEN
                 IF OLD.born < k THEN INSERT INTO inodes_v (space_id, ino, mode, uid, gid, nlink, size, stored, rdev, atime, mtime, ctime, btime, target, state, holder, deleted_at, s3_host, s3_key, import_path, import_mtime, joined, chg, born, died) VALUES (OLD.space_id, OLD.ino, OLD.mode, OLD.uid, OLD.gid, OLD.nlink, OLD.size, OLD.stored, OLD.rdev, OLD.atime, OLD.mtime, OLD.ctime, OLD.btime, OLD.target, OLD.state, OLD.holder, OLD.deleted_at, OLD.s3_host, OLD.s3_key, OLD.import_path, OLD.import_mtime, OLD.joined, OLD.chg, OLD.born, e); END IF;
                 SET NEW.born = e;
                 IF OLD.chg = 0 THEN SET NEW.chg = COALESCE(UNIX_TIMESTAMP() * 1000000 + MICROSECOND(NOW(6)), 1);
                 ELSEIF NEW.chg >= 9223372036854775808 THEN SET NEW.chg = OLD.chg;
                 ELSE SET NEW.chg = OLD.chg + 1; END IF;
               END IF; END",
            "CREATE OR REPLACE TRIGGER inodes_fence_i BEFORE INSERT ON inodes FOR EACH ROW
             BEGIN DECLARE e, k BIGINT UNSIGNED; CALL tshs_guard(NEW.space_id, e, k);
               IF @tshs_copier IS NULL THEN
                 SET NEW.born = e, NEW.chg = COALESCE(UNIX_TIMESTAMP() * 1000000 + MICROSECOND(NOW(6)), 1);
               END IF; END",
            "CREATE OR REPLACE TRIGGER inodes_fence_d BEFORE DELETE ON inodes FOR EACH ROW
             BEGIN DECLARE e, k BIGINT UNSIGNED; CALL tshs_guard(OLD.space_id, e, k);
               IF @tshs_copier IS NULL THEN IF OLD.born < k THEN INSERT INTO inodes_v (space_id, ino, mode, uid, gid, nlink, size, stored, rdev, atime, mtime, ctime, btime, target, state, holder, deleted_at, s3_host, s3_key, import_path, import_mtime, joined, chg, born, died) VALUES (OLD.space_id, OLD.ino, OLD.mode, OLD.uid, OLD.gid, OLD.nlink, OLD.size, OLD.stored, OLD.rdev, OLD.atime, OLD.mtime, OLD.ctime, OLD.btime, OLD.target, OLD.state, OLD.holder, OLD.deleted_at, OLD.s3_host, OLD.s3_key, OLD.import_path, OLD.import_mtime, OLD.joined, OLD.chg, OLD.born, e); END IF; END IF; END",
            "CREATE OR REPLACE PROCEDURE tshs_append_with_chg(IN s INT UNSIGNED, IN i BIGINT UNSIGNED,
                IN d LONGBLOB, IN t BIGINT, IN most BIGINT UNSIGNED)
           BEGIN
             DECLARE eof BIGINT UNSIGNED DEFAULT NULL;
             DECLARE c BIGINT UNSIGNED DEFAULT 0;
             DECLARE away BOOL DEFAULT TRUE;
             DECLARE n BIGINT UNSIGNED DEFAULT LENGTH(d);
             DECLARE pos BIGINT UNSIGNED DEFAULT 1;
             DECLARE k BIGINT UNSIGNED;
             DECLARE CONTINUE HANDLER FOR NOT FOUND SET eof = NULL;
             SELECT size, chg, s3_key IS NOT NULL OR import_path IS NOT NULL INTO eof, c, away
               FROM inodes WHERE space_id = s AND ino = i FOR UPDATE;
             IF eof IS NULL OR away OR eof + n > most THEN
               SIGNAL SQLSTATE '45000'
                 SET MESSAGE_TEXT = 'tshs: an append for the statement path', MYSQL_ERRNO = 1643;
             ELSE
               WHILE pos <= n DO
                 SET k = LEAST(n - pos + 1, 262144 - (eof + pos - 1) % 262144);
                 INSERT INTO extents (space_id, ino, off, len, data)
                   VALUES (s, i, eof + pos - 1, k, SUBSTRING(d, pos, k));
                 SET pos = pos + k;
               END WHILE;
               UPDATE inodes SET size = eof + n, stored = stored + n, mtime = t, ctime = t,
                   chg = chg | 9223372036854775808
                 WHERE space_id = s AND ino = i;
               SELECT eof, c;
             END IF;
           END",
        ],
    ),
    (
        13,
        // `files`: `space,ino,len;` per file, in (space, inode) order, and
        // `d` their data end to end. Each file's appends land at its end as
        // the database has it, cut where slots end; the answer is one row,
        // `eof,chg;` per file (where its data landed, its change counter
        // before). Anything the procedure cannot do (a file gone, held in
        // the object store or imported, growing past `most`) refuses the
        // whole call: the caller runs the batch the statement way. So
        // do lengths that do not add up to the data.
        &["CREATE OR REPLACE PROCEDURE tshs_append_files(IN files LONGTEXT, IN d LONGBLOB,
                IN t BIGINT, IN most BIGINT UNSIGNED)
           BEGIN
             DECLARE s INT UNSIGNED;
             DECLARE i, n, eof, c, pos, k BIGINT UNSIGNED;
             DECLARE away BOOL;
             DECLARE at BIGINT UNSIGNED DEFAULT 1;
             DECLARE cur INT UNSIGNED DEFAULT 1;
             DECLARE semi INT UNSIGNED;
             DECLARE one TEXT;
             DECLARE answer LONGTEXT DEFAULT '';
             DECLARE CONTINUE HANDLER FOR NOT FOUND SET eof = NULL;
             WHILE cur <= LENGTH(files) DO
               SET semi = LOCATE(';', files, cur);
               SET one = SUBSTRING(files, cur, semi - cur), cur = semi + 1;
               SET s = SUBSTRING_INDEX(one, ',', 1),
                   i = SUBSTRING_INDEX(SUBSTRING_INDEX(one, ',', 2), ',', -1),
                   n = SUBSTRING_INDEX(one, ',', -1),
                   eof = NULL, away = TRUE;
               SELECT size, chg, s3_key IS NOT NULL OR import_path IS NOT NULL INTO eof, c, away
                 FROM inodes WHERE space_id = s AND ino = i FOR UPDATE;
               IF eof IS NULL OR away OR eof + n > most THEN
                 SIGNAL SQLSTATE '45000'
                   SET MESSAGE_TEXT = 'tshs: an append for the statement path', MYSQL_ERRNO = 1643;
               END IF;
               SET pos = 0;
               WHILE pos < n DO
                 SET k = LEAST(n - pos, 262144 - (eof + pos) % 262144);
                 INSERT INTO extents (space_id, ino, off, len, data)
                   VALUES (s, i, eof + pos, k, SUBSTRING(d, at + pos, k));
                 SET pos = pos + k;
               END WHILE;
               SET at = at + n;
               UPDATE inodes SET size = eof + n, stored = stored + n, mtime = t, ctime = t,
                   chg = chg | 9223372036854775808
                 WHERE space_id = s AND ino = i;
               SET answer = CONCAT(answer, eof, ',', c, ';');
             END WHILE;
             IF at <> LENGTH(d) + 1 THEN
               SIGNAL SQLSTATE '45000'
                 SET MESSAGE_TEXT = 'tshs: the lengths do not add up to the data', MYSQL_ERRNO = 1643;
             END IF;
             SELECT answer AS landed;
           END"],
    ),
    (
        14,
        // A file this mount created and now commits for the first time:
        // refused (1643, nothing done) unless its directory is still there
        // and the name still free; the caller then takes the statement way,
        // which tells those cases apart (and a commit run again after a
        // lost answer, which finds the file there).
        &["CREATE OR REPLACE PROCEDURE tshs_create_file(IN s INT UNSIGNED,
                IN dir BIGINT UNSIGNED, IN nm VARBINARY(255), IN i BIGINT UNSIGNED,
                IN m INT UNSIGNED, IN u INT UNSIGNED, IN g INT UNSIGNED, IN nl INT UNSIGNED,
                IN sz BIGINT UNSIGNED, IN st BIGINT UNSIGNED, IN r INT UNSIGNED,
                IN at BIGINT, IN mt BIGINT, IN ct BIGINT, IN bt BIGINT,
                IN dir_t BIGINT, IN dir_links INT)
           BEGIN
             DECLARE n INT UNSIGNED DEFAULT NULL;
             DECLARE there BIGINT UNSIGNED DEFAULT NULL;
             DECLARE CONTINUE HANDLER FOR NOT FOUND SET n = NULL;
             SELECT p.nlink, (SELECT d.ino FROM dentries d
                              WHERE d.space_id = s AND d.parent = dir AND d.name = nm)
               INTO n, there
               FROM inodes p WHERE p.space_id = s AND p.ino = dir AND p.state < 2 FOR UPDATE;
             IF n IS NULL OR n = 0 OR there IS NOT NULL THEN
               SIGNAL SQLSTATE '45000'
                 SET MESSAGE_TEXT = 'tshs: a create for the statement path', MYSQL_ERRNO = 1643;
             END IF;
             INSERT INTO inodes (space_id, ino, mode, uid, gid, nlink, size, stored, rdev,
                                 atime, mtime, ctime, btime, target)
               VALUES (s, i, m, u, g, nl, sz, st, r, at, mt, ct, bt, NULL);
             INSERT INTO dentries (space_id, parent, name, ino, seq) VALUES (s, dir, nm, i, i);
             UPDATE inodes SET mtime = dir_t, ctime = dir_t, nlink = CAST(nlink AS SIGNED) + dir_links
               WHERE space_id = s AND ino = dir;
           END",
          // A rename of a file (not a directory) to a free name, with both
          // directories there; anything else is refused (1643, nothing
          // done) for the statement way. Rows are locked in the order the
          // statement way locks them: directories by number, the entry,
          // the target name.
          "CREATE OR REPLACE PROCEDURE tshs_rename_file(IN s INT UNSIGNED,
                IN dir BIGINT UNSIGNED, IN nm VARBINARY(255),
                IN new_dir BIGINT UNSIGNED, IN new_nm VARBINARY(255), IN t BIGINT)
           BEGIN
             DECLARE dirs INT DEFAULT 0;
             DECLARE src, taken BIGINT UNSIGNED DEFAULT NULL;
             DECLARE m INT UNSIGNED DEFAULT NULL;
             DECLARE CONTINUE HANDLER FOR NOT FOUND BEGIN END;
             SELECT COUNT(*) INTO dirs FROM inodes
               WHERE space_id = s AND ino IN (dir, new_dir) AND state < 2 AND mode & 61440 = 16384
               FOR UPDATE;
             SELECT i.ino, i.mode INTO src, m
               FROM dentries d JOIN inodes i ON i.space_id = d.space_id AND i.ino = d.ino
               WHERE d.space_id = s AND d.parent = dir AND d.name = nm AND i.state < 2 FOR UPDATE;
             SELECT d.ino INTO taken FROM dentries d
               WHERE d.space_id = s AND d.parent = new_dir AND d.name = new_nm FOR UPDATE;
             IF dirs <> IF(dir = new_dir, 1, 2) OR src IS NULL OR m & 61440 = 16384
                OR taken IS NOT NULL THEN
               SIGNAL SQLSTATE '45000'
                 SET MESSAGE_TEXT = 'tshs: a rename for the statement path', MYSQL_ERRNO = 1643;
             END IF;
             UPDATE dentries SET parent = new_dir, name = new_nm
               WHERE space_id = s AND parent = dir AND name = nm;
             UPDATE inodes SET ctime = t WHERE space_id = s AND ino = src;
             UPDATE inodes SET mtime = t, ctime = t WHERE space_id = s AND ino IN (dir, new_dir);
           END"],
    ),
    (
        15,
        // The removal of a file's name (not a directory's): refused (1643,
        // nothing done) for anything else, which the statement way tells
        // apart, and for the last name of a file the mount holds open
        // (`held`, its numbers), which the statements keep as the mount's
        // orphan. Rows are locked in the order the statement way locks
        // them: the entry and its inode, then the directory. The last name
        // of a file marks it deleted, for remove-deleted, as the statements
        // do.
        &["CREATE OR REPLACE PROCEDURE tshs_unlink_file(IN s INT UNSIGNED,
                IN dir BIGINT UNSIGNED, IN nm VARBINARY(255), IN held TEXT, IN t BIGINT)
           BEGIN
             DECLARE src BIGINT UNSIGNED DEFAULT NULL;
             DECLARE m, links INT UNSIGNED DEFAULT NULL;
             DECLARE CONTINUE HANDLER FOR NOT FOUND BEGIN END;
             SELECT i.ino, i.mode, i.nlink INTO src, m, links
               FROM dentries d JOIN inodes i ON i.space_id = d.space_id AND i.ino = d.ino
               WHERE d.space_id = s AND d.parent = dir AND d.name = nm AND i.state < 2 FOR UPDATE;
             IF src IS NULL OR m & 61440 = 16384
                OR (links <= 1 AND FIND_IN_SET(src, held) > 0) THEN
               SIGNAL SQLSTATE '45000'
                 SET MESSAGE_TEXT = 'tshs: an unlink for the statement path', MYSQL_ERRNO = 1643;
             END IF;
             DELETE FROM dentries WHERE space_id = s AND parent = dir AND name = nm;
             IF links > 1 THEN
               UPDATE inodes SET nlink = nlink - 1, ctime = t WHERE space_id = s AND ino = src;
             ELSE
               UPDATE inodes SET nlink = 0, ctime = t, state = 2, deleted_at = t
                 WHERE space_id = s AND ino = src;
             END IF;
             UPDATE inodes SET mtime = t, ctime = t WHERE space_id = s AND ino = dir;
           END"],
    ),
];
