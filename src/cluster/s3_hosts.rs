//! S3 hosts in the Admin Node (`s3_hosts`, migration 3): the object stores
//! move-to-s3 uploads to. Exactly one host is current once any exists: the
//! newest added, or the one `set-current-s3-host` named. Hosts are never
//! deleted: objects moved to a host stay readable through it.
//!
//! The secret key is stored as given (the Admin Node is the cluster's
//! credential store, like the Storage Nodes' passwords) and leaves this
//! module only inside [`S3Host`], whose `Debug` masks it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result, anyhow, bail};
use mysql::prelude::Queryable;

use super::Cluster;
use crate::object_store::{Brand, S3Host, S3Options, S3Store};

type Row = (u32, String, String, String, String, String, String, u8);
const COLUMNS: &str = "id, brand, server, bucket, access_key, secret_key, options, is_current";

fn from_row(r: Row) -> Result<S3Host> {
    let (id, brand, server, bucket, access_key, secret_key, options, cur) = r;
    Ok(S3Host {
        id,
        brand: Brand::parse(&brand)?,
        server,
        bucket,
        access_key,
        secret_key,
        options: S3Options::parse(&options)
            .with_context(|| format!("options of S3 host {id} in the Admin Node"))?,
        is_current: cur != 0,
    })
}

/// The error of a query on an Admin Node that predates `s3_hosts`.
fn upgrade_hint(e: crate::db::DbError) -> anyhow::Error {
    let text = e.to_string();
    if text.contains("(1146)") {
        anyhow!("the Admin Node has no S3 hosts yet: run tshs create-admin-node to upgrade it")
    } else {
        e.into()
    }
}

impl Cluster {
    /// Every S3 host, by id.
    pub fn s3_hosts(&self) -> Result<Vec<S3Host>> {
        let rows: Vec<Row> = self
            .admin
            .read(|c| c.query(format!("SELECT {COLUMNS} FROM s3_hosts ORDER BY id")))
            .map_err(upgrade_hint)?;
        rows.into_iter().map(from_row).collect()
    }

    pub fn s3_host(&self, id: u32) -> Result<S3Host> {
        let row: Option<Row> = self
            .admin
            .read(|c| {
                c.exec_first(
                    format!("SELECT {COLUMNS} FROM s3_hosts WHERE id = ?"),
                    (id,),
                )
            })
            .map_err(upgrade_hint)?;
        from_row(row.ok_or_else(|| anyhow!("there is no S3 host {id} (see tshs list-s3-hosts)"))?)
    }

    /// The host move-to-s3 uploads to, if any.
    pub fn current_s3_host(&self) -> Result<Option<S3Host>> {
        Ok(self.s3_hosts()?.into_iter().find(|h| h.is_current))
    }

    /// `add-s3-host`: checks the input, pings the store (a real request
    /// with the given keys), then adds the host as the current one.
    pub fn add_s3_host(
        &self,
        brand: &str,
        server: &str,
        bucket: &str,
        access_key: &str,
        secret_key: &str,
        options: &str,
    ) -> Result<S3Host> {
        self.s3_hosts()?; // the table exists
        let mut host = S3Host {
            id: 0,
            brand: Brand::parse(brand)?,
            server: server.to_string(),
            bucket: bucket.to_string(),
            access_key: access_key.to_string(),
            secret_key: secret_key.to_string(),
            options: S3Options::parse(options)?,
            is_current: true,
        };
        host.check()?;
        S3Store::new(&host)
            .ping()
            .map_err(|e| anyhow!("{e}; the host was not added"))?;
        let id = self
            .admin
            .tx(|tx| {
                tx.query_drop("UPDATE s3_hosts SET is_current = 0")?;
                tx.exec_drop(
                    "INSERT INTO s3_hosts (brand, server, bucket, access_key, secret_key, options, is_current)
                     VALUES (?, ?, ?, ?, ?, ?, 1)",
                    (
                        host.brand.as_str(),
                        &host.server,
                        &host.bucket,
                        &host.access_key,
                        &host.secret_key,
                        host.options.to_text(),
                    ),
                )?;
                Ok(tx.last_insert_id().unwrap_or(0) as u32)
            })
            .map_err(|e| anyhow!("admin node: {e}"))?;
        host.id = id;
        log::info!("{} added as the current S3 host", host.describe());
        Ok(host)
    }

    /// `set-current-s3-host <id>`.
    pub fn set_current_s3_host(&self, id: u32) -> Result<()> {
        self.s3_host(id)?;
        self.admin
            .tx(|tx| tx.exec_drop("UPDATE s3_hosts SET is_current = (id = ?)", (id,)))
            .map_err(|e| anyhow!("admin node: {e}"))?;
        Ok(())
    }

    /// `update-s3-host <id> <options>`: the named options change, the
    /// others keep their values. Affects uploads from now on; objects
    /// already stored are read as before. Bumps the topology epoch, so
    /// running mounts take the new options (RedirectTimeout) within a
    /// moment instead of at their next start.
    pub fn update_s3_host(&self, id: u32, options: &str) -> Result<S3Host> {
        let mut host = self.s3_host(id)?;
        if options.trim().is_empty() {
            bail!("update-s3-host: no options given (e.g. \"MinSize=1M;MaxUploadThreads=4\")");
        }
        host.options.update(options)?;
        self.admin
            .tx(|tx| {
                tx.exec_drop(
                    "UPDATE s3_hosts SET options = ? WHERE id = ?",
                    (host.options.to_text(), id),
                )?;
                tx.query_drop("UPDATE topology SET epoch = epoch + 1 WHERE id = 1")
            })
            .map_err(|e| anyhow!("admin node: {e}"))?;
        self.stores.lock().unwrap().remove(&id);
        Ok(host)
    }

    /// Points Storage Node `id` at another database (restore-from-s3) and
    /// bumps the topology epoch, so every access point reconnects.
    pub fn replace_node_connection(
        &self,
        id: u32,
        conn: &crate::config::ConnOptions,
    ) -> Result<()> {
        self.admin
            .tx(|tx| {
                tx.exec_drop(
                    "UPDATE storage_nodes SET conn_options = ? WHERE id = ?",
                    (conn.to_stored(), id),
                )?;
                tx.query_drop("UPDATE topology SET epoch = epoch + 1 WHERE id = 1")
            })
            .map_err(|e| anyhow!("admin node: {e}"))?;
        self.shards.lock().unwrap().remove(&id);
        // The new database is the node: it holds the recorded identity.
        self.identify(id);
        Ok(())
    }

    /// Forgets the connection pools of nodes whose connection options
    /// changed in the Admin Node (after a restore-from-s3 elsewhere), and
    /// the clients of S3 hosts whose row changed (update-s3-host); the
    /// others stay. A failing Admin Node changes nothing.
    pub(super) fn forget_changed_clients(&self) {
        if let Ok(nodes) = self.nodes() {
            self.shards.lock().unwrap().retain(|id, shard| {
                nodes
                    .iter()
                    .any(|n| n.id == *id && n.conn == *shard.db().opts())
            });
        }
        if let Ok(hosts) = self.s3_hosts() {
            let mut stores = self.stores.lock().unwrap();
            stores.retain(|_, store| hosts.contains(store.host()));
            self.stores_checked.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The client of S3 host `id`, made on first use.
    pub fn object_store(&self, id: u32) -> Result<Arc<S3Store>> {
        if let Some(s) = self.stores.lock().unwrap().get(&id) {
            return Ok(s.clone());
        }
        let checked = self.stores_checked.load(Ordering::Acquire);
        let store = Arc::new(S3Store::new(&self.s3_host(id)?));
        let mut stores = self.stores.lock().unwrap();
        // Checked meanwhile: the row read may be older than that check.
        if self.stores_checked.load(Ordering::Acquire) == checked {
            stores.insert(id, store.clone());
        }
        Ok(store)
    }
}

impl crate::shard::Stores for Cluster {
    fn object_store(&self, host: u32) -> Result<Arc<S3Store>> {
        Cluster::object_store(self, host)
    }
}
