//! Routing a space's reads and transactions to the Storage Node that holds
//! it, across moves (copy-shards).
//!
//! A process keeps the node of each space it uses. Moves stay correct without
//! trusting that cache:
//! - a write sent to the old node after its space was fenced fails inside the
//!   database (see the shard schema's `space_fence`); the route then waits for
//!   the Admin Node to name the new node and runs the transaction again there;
//! - the old node's rows are dropped only after every live access point
//!   acknowledged the topology epoch of the move, and a process acknowledges
//!   only after [`Router::topology_changed`], which forgets the cache and waits
//!   for the reads and transactions still using the old placement.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use mysql::prelude::Queryable;
use mysql::{PooledConn, Transaction};

use super::Cluster;
use crate::db::{DbError, TxError};
use crate::shard::{FENCE_MESSAGE, Shard};

/// How long a write waits for a move's cut-over before it fails. A cut-over
/// takes well under a second; this covers a copy-shards process that died
/// mid-cut-over until another one (or its restart) takes the move over.
const MOVE_WAIT: Duration = Duration::from_secs(120);

/// The placement cache of one process.
pub struct Router {
    cluster: Cluster,
    nodes: RwLock<HashMap<u32, u32>>,
    /// Held shared by every read and transaction attempt, exclusively by a
    /// topology change: taking it exclusively waits for them all.
    gate: RwLock<()>,
}

impl Router {
    pub fn new(cluster: Cluster) -> Arc<Router> {
        Arc::new(Router {
            cluster,
            nodes: RwLock::default(),
            gate: RwLock::default(),
        })
    }

    pub fn route(self: &Arc<Self>, space: u32) -> Route {
        Route {
            router: self.clone(),
            space,
        }
    }

    /// Forgets all placement and returns once no read or transaction planned
    /// with the old placement is still running. Call before acknowledging a
    /// new topology epoch.
    pub fn topology_changed(&self) {
        self.nodes.write().unwrap().clear();
        // A node may have a new database (restore-from-s3): reconnect.
        self.cluster.forget_changed_shards();
        drop(self.gate.write().unwrap());
    }

    fn node_of(&self, space: u32) -> Result<u32, DbError> {
        if let Some(n) = self.nodes.read().unwrap().get(&space) {
            return Ok(*n);
        }
        self.lookup(space)
    }

    /// Asks the Admin Node where the space lives now.
    fn lookup(&self, space: u32) -> Result<u32, DbError> {
        let admin = self.cluster.admin();
        let node: Option<u32> =
            admin.read(|c| c.exec_first("SELECT node_id FROM spaces WHERE id = ?", (space,)))?;
        let node = node.ok_or_else(|| DbError::Other {
            server: admin.opts().server(),
            detail: format!("space {space} is not in the Admin Node"),
        })?;
        self.nodes.write().unwrap().insert(space, node);
        Ok(node)
    }

    fn shard(&self, node: u32) -> Result<Shard, DbError> {
        self.cluster.shard(node).map_err(|e| DbError::Other {
            server: format!("storage node {node}"),
            detail: format!("{e:#}"),
        })
    }
}

/// The way to one space's rows.
#[derive(Clone)]
pub struct Route {
    router: Arc<Router>,
    space: u32,
}

impl Route {
    /// The cluster (for the object stores a space's files may live in).
    pub fn cluster(&self) -> &Cluster {
        &self.router.cluster
    }

    /// The node the space is on, as far as this process knows (for messages).
    pub fn id(&self) -> u32 {
        self.router.node_of(self.space).unwrap_or(0)
    }

    /// Runs a read on the space's node.
    pub fn read<T>(
        &self,
        f: impl FnMut(&mut PooledConn) -> Result<T, mysql::Error>,
    ) -> Result<T, DbError> {
        let _gate = self.router.gate.read().unwrap();
        let node = self.router.node_of(self.space)?;
        let start = Instant::now();
        let r = self.router.shard(node)?.db().read(f);
        crate::metrics::global().db(node, start, r.is_ok());
        r
    }

    /// Runs a transaction on the space's node; a transaction refused because
    /// the space is being moved runs again on its new node once the move's
    /// cut-over is done.
    pub fn tx<T>(
        &self,
        mut f: impl FnMut(&mut Transaction<'_>) -> Result<T, mysql::Error>,
    ) -> Result<T, TxError> {
        let start = Instant::now();
        let mut pause = Duration::from_millis(10);
        loop {
            let r = {
                let _gate = self.router.gate.read().unwrap();
                let node = self.router.node_of(self.space).map_err(TxError::Db)?;
                let shard = self.router.shard(node).map_err(TxError::Db)?;
                let start = Instant::now();
                let r = shard.tx(&mut f);
                crate::metrics::global().db(node, start, r.is_ok());
                r
            };
            match r {
                Err(TxError::Sql(_, ref msg, _)) if is_fenced(msg) => {
                    if start.elapsed() > MOVE_WAIT {
                        return r;
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(200));
                    self.router.lookup(self.space).map_err(TxError::Db)?;
                }
                other => return other,
            }
        }
    }
}

/// True for the error of a write to a fenced space.
pub fn is_fenced(message: &str) -> bool {
    message.contains(FENCE_MESSAGE)
}
