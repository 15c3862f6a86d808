//! The Storage Node schema, as numbered migrations. Append; never edit an
//! applied migration.
//!
//! Times are nanoseconds since the epoch (signed: times before 1970 are
//! legal). `inodes.state`: 0 live, 1 unlinked but still open on the access
//! point `holder`, 2 deleted (rows wait for remove-deleted / the reaper).

pub const TABLES: &[&str] = &[
    "schema_migrations",
    "spaces",
    "inodes",
    "dentries",
    "extents",
    "xattrs",
];

pub const MIGRATIONS: &[(u32, &[&str])] = &[(
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
)];
