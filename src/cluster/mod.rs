//! The Admin Node: the cluster's own database (default `tshs_admin`).
//!
//! It holds the Storage Nodes (id, phase, key range, connection options), the
//! topology epoch, the access points, jobs, S3 hosts, volumes and spaces. Every other
//! database is reached through it. Its schema is a list of numbered
//! migrations applied by `create-admin-node`; running that again changes
//! nothing.

mod access_points;
mod imports;
mod jobs;
mod moves;
mod nodes;
mod route;
mod s3_hosts;
mod settings;
mod snapshots;
mod update_node;
mod volumes;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use mysql::prelude::Queryable;

pub use access_points::{AccessPoint, AccessPointRow, Liveness};
pub use imports::{DiskVolume, ImportJob, ImportLeases, ImportingSpace, Registered};
pub use jobs::{DeleteJob, JobRow, PurgeClaim};
pub use moves::{MOVE_LEASE_SECS, SpaceMove};
pub use nodes::{NodeRow, NodeTotals, Phase};
pub use route::{Route, Router};
pub use settings::{SETTINGS, STORE_SPACE_NAMES};
pub use snapshots::{MAX_TTL_SECS, SnapSpace, SnapshotRow};
pub use update_node::NodeUpdate;
pub use volumes::{
    SpaceExists, SpaceListing, SpaceRow, SpaceStatus, VolumeRow, VolumeStatus, check_volume_name,
    parse_space_id,
};

use crate::config::ConnOptions;
use crate::db::{Db, DbError, migrate, table_names};
use crate::object_store::S3Store;
use crate::shard::Shard;

/// The Admin Node schema. Append new migrations; never edit an applied one.
const MIGRATIONS: &[(u32, &[&str])] = &[
    (
        1,
        &[
            "CREATE TABLE IF NOT EXISTS storage_nodes (
            id INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
            phase VARCHAR(16) NOT NULL,
            boundary BIGINT UNSIGNED NOT NULL,
            size BIGINT UNSIGNED NOT NULL,
            conn_options TEXT NOT NULL,
            created_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP
        ) ENGINE=InnoDB",
            "CREATE TABLE IF NOT EXISTS topology (
            id TINYINT UNSIGNED NOT NULL PRIMARY KEY,
            epoch BIGINT UNSIGNED NOT NULL
        ) ENGINE=InnoDB",
            "INSERT IGNORE INTO topology (id, epoch) VALUES (1, 1)",
            "CREATE TABLE IF NOT EXISTS access_points (
            id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
            ack_epoch BIGINT UNSIGNED NOT NULL,
            access_time DATETIME NOT NULL,
            description VARCHAR(255) NOT NULL
        ) ENGINE=InnoDB",
            "CREATE TABLE IF NOT EXISTS jobs (
            id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
            job VARCHAR(16) NOT NULL,
            parameters TEXT NOT NULL,
            created_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP
        ) ENGINE=InnoDB",
            "CREATE TABLE IF NOT EXISTS volumes (
            id INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
            name VARCHAR(255) NOT NULL,
            status VARCHAR(16) NOT NULL DEFAULT 'Operational',
            created_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
            UNIQUE KEY (name)
        ) ENGINE=InnoDB",
            "CREATE TABLE IF NOT EXISTS spaces (
            id INT UNSIGNED NOT NULL PRIMARY KEY,
            volume_id INT UNSIGNED NOT NULL,
            node_id INT UNSIGNED NOT NULL,
            status VARCHAR(16) NOT NULL DEFAULT 'active',
            restore_id INT UNSIGNED NOT NULL DEFAULT 0,
            title VARCHAR(255) NULL,
            resource_id VARCHAR(64) NULL,
            created_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
            KEY (volume_id),
            KEY (node_id)
        ) ENGINE=InnoDB",
        ],
    ),
    (
        2,
        &[
            // Tokens of copy-shards claims: every claim takes the next one,
            // so a later claim always outranks an earlier one.
            "ALTER TABLE topology ADD COLUMN IF NOT EXISTS move_token BIGINT UNSIGNED NOT NULL DEFAULT 0",
            // The node a MIRROR_SHARD node receives its spaces from.
            "ALTER TABLE storage_nodes ADD COLUMN IF NOT EXISTS source_id INT UNSIGNED NULL",
            // Spaces being moved by copy-shards: who holds the move (a lease
            // renewed while it works, taken over once it lapses) and how far
            // it got ('copying', then 'switched' once the space's row names
            // the new node and only the old rows remain to be dropped).
            "CREATE TABLE IF NOT EXISTS space_moves (
                space_id INT UNSIGNED NOT NULL PRIMARY KEY,
                from_node INT UNSIGNED NOT NULL,
                to_node INT UNSIGNED NOT NULL,
                state VARCHAR(16) NOT NULL,
                token BIGINT UNSIGNED NOT NULL,
                owner VARCHAR(255) NOT NULL,
                lease_until DATETIME NOT NULL,
                bytes BIGINT UNSIGNED NOT NULL DEFAULT 0,
                started_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP
            ) ENGINE=InnoDB",
        ],
    ),
    (
        3,
        &[
            // Object stores (add-s3-host). `is_current`: where move-to-s3
            // uploads; exactly one row has it once any host exists.
            "CREATE TABLE IF NOT EXISTS s3_hosts (
                id INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
                brand VARCHAR(16) NOT NULL,
                server VARCHAR(255) NOT NULL,
                bucket VARCHAR(255) NOT NULL,
                access_key VARCHAR(255) NOT NULL,
                secret_key VARCHAR(255) NOT NULL,
                options TEXT NOT NULL,
                is_current TINYINT UNSIGNED NOT NULL DEFAULT 0,
                created_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP
            ) ENGINE=InnoDB",
        ],
    ),
    (
        4,
        &[
            // Import of an on-disk tree (import-volumes): the directory a
            // space is imported from, set until its tree (names, attributes;
            // not yet the data) is in its Storage Node.
            // `import_job` stays set until the space's data is imported too.
            "ALTER TABLE spaces ADD COLUMN IF NOT EXISTS import_from VARBINARY(4096) NULL,
                                ADD COLUMN IF NOT EXISTS import_job BIGINT UNSIGNED NULL,
                                ADD KEY IF NOT EXISTS importing (import_job)",
            // Cluster settings (set-setting); a missing row has its default.
            "CREATE TABLE IF NOT EXISTS settings (
                name VARCHAR(64) NOT NULL PRIMARY KEY,
                value VARCHAR(255) NOT NULL
            ) ENGINE=InnoDB",
        ],
    ),
    (
        5,
        &[
            // The space a perform-import process works on: a lease renewed
            // while it works (rows, not GET_LOCK: a Galera cluster does not
            // make named locks cluster-wide). See imports.rs.
            "CREATE TABLE IF NOT EXISTS import_leases (
                space_id INT UNSIGNED NOT NULL PRIMARY KEY,
                owner VARCHAR(255) NOT NULL,
                lease_until DATETIME NOT NULL
            ) ENGINE=InnoDB",
        ],
    ),
    (
        6,
        &[
            // Snapshots (see snapshots.rs): a name, a life, and each space's
            // moment on its Storage Node (NULL until taken).
            "CREATE TABLE IF NOT EXISTS snapshots (
                id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
                name VARCHAR(64) NOT NULL,
                state VARCHAR(16) NOT NULL,
                created_at DATETIME NOT NULL,
                expires_at DATETIME NOT NULL,
                UNIQUE KEY (name)
            ) ENGINE=InnoDB",
            "CREATE TABLE IF NOT EXISTS snapshot_spaces (
                snapshot_id BIGINT UNSIGNED NOT NULL,
                space_id INT UNSIGNED NOT NULL,
                volume_id INT UNSIGNED NOT NULL,
                moment BIGINT UNSIGNED NULL,
                taken_at DATETIME(3) NULL,
                PRIMARY KEY (snapshot_id, space_id)
            ) ENGINE=InnoDB",
        ],
    ),
    (
        7,
        &[
            // The token of the node's identity row (see update_node.rs).
            "ALTER TABLE storage_nodes ADD COLUMN IF NOT EXISTS identity CHAR(32) NULL",
        ],
    ),
];

/// The tables migration 1 creates; their presence means the node exists.
const ADMIN_TABLES: &[&str] = &[
    "storage_nodes",
    "topology",
    "access_points",
    "jobs",
    "volumes",
    "spaces",
    "space_moves",
];

/// A connection to the cluster through its Admin Node.
#[derive(Clone)]
pub struct Cluster {
    admin: Db,
    /// Storage Node pools, opened on first use. Bounded per node.
    shards: Arc<Mutex<HashMap<u32, Shard>>>,
    /// Object store clients, by S3 host id, made on first use.
    stores: Arc<Mutex<HashMap<u32, Arc<S3Store>>>>,
    /// Counts the times `stores` was checked against the Admin Node (under
    /// its lock): a client made from a host row read before is not kept.
    stores_checked: Arc<AtomicU64>,
    max_conns: usize,
}

impl Cluster {
    /// Connects to the Admin Node. `max_conns` bounds every pool this handle opens.
    pub fn connect(admin: &ConnOptions, max_conns: usize) -> Result<Cluster> {
        admin.database()?;
        let db = Db::connect(admin, max_conns)?;
        Ok(Cluster {
            admin: db,
            shards: Arc::default(),
            stores: Arc::default(),
            stores_checked: Arc::default(),
            max_conns,
        })
    }

    pub fn admin(&self) -> &Db {
        &self.admin
    }

    /// Does the Admin Node answer (`SELECT 1`)?
    pub fn ping_admin(&self) -> Result<(), DbError> {
        self.admin.read(|c| c.query_drop("SELECT 1"))
    }

    /// Creates the Admin Node tables, or brings them and every Storage
    /// Node's up to date (the upgrade step); returns the Admin Node
    /// migrations it applied (none when it was up to date).
    pub fn create_admin_node(&self) -> Result<Vec<u32>> {
        let applied = migrate(&self.admin, MIGRATIONS)?;
        for n in self.nodes()? {
            let done = self
                .shard(n.id)
                .and_then(|s| Ok(s.upgrade()?))
                .with_context(|| format!("cannot upgrade storage node {}", n.id))?;
            if !done.is_empty() {
                log::info!("storage node {}: applied migrations {done:?}", n.id);
            }
            self.ensure_identity(n.id)?;
        }
        Ok(applied)
    }

    /// Fails with a clear message unless `create-admin-node` has run.
    pub fn require_admin_node(&self) -> Result<()> {
        let tables = table_names(&mut self.admin.conn()?).map_err(|e| self.admin.err(e))?;
        let missing: Vec<_> = ADMIN_TABLES
            .iter()
            .filter(|t| !tables.iter().any(|x| x == *t))
            .collect();
        if !missing.is_empty() {
            bail!(
                "database '{}' on {} is not a tshs Admin Node (run tshs create-admin-node)",
                self.admin.opts().database.as_deref().unwrap_or(""),
                self.admin.opts().server()
            );
        }
        Ok(())
    }

    /// The current topology epoch, bumped by every change of placement.
    pub fn epoch(&self) -> Result<u64> {
        let e: Option<u64> = self
            .admin
            .conn()?
            .query_first("SELECT epoch FROM topology WHERE id = 1")
            .map_err(|e| self.admin.err(e))?;
        Ok(e.unwrap_or(0))
    }

    /// The Storage Node `id`, connected on first use.
    /// Gives back the connections beyond one per pool (see [`Db::recycle`]):
    /// the mount does it now and then, so a burst's connections and their
    /// buffers do not stay. A pool that cannot be renewed is kept (logged).
    pub fn recycle_pools(&self) {
        let shards: Vec<Shard> = self.shards.lock().unwrap().values().cloned().collect();
        let dbs = std::iter::once(("the Admin Node".to_string(), &self.admin)).chain(
            shards
                .iter()
                .map(|s| (format!("storage node {}", s.id()), s.db())),
        );
        for (what, db) in dbs {
            if let Err(e) = db.recycle() {
                log::debug!("{what}: renewing the connection pool: {e}");
            }
        }
    }

    pub fn shard(&self, id: u32) -> Result<Shard> {
        if let Some(s) = self.shards.lock().unwrap().get(&id) {
            return Ok(s.clone());
        }
        let node = self.node(id)?;
        let shard = Shard::connect(id, &node.conn, self.max_conns)?;
        self.shards.lock().unwrap().insert(id, shard.clone());
        Ok(shard)
    }
}
