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
//!   only after [`Router::topology_changed`]: it starts a new generation (new
//!   operations look placement up afresh and are never held up) and waits
//!   until the operations of older generations have finished;
//! - a process that could not heartbeat for [`STALE_AFTER`] may have missed a
//!   move (it no longer counts as live): it stops trusting its cache.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use mysql::prelude::Queryable;
use mysql::{PooledConn, Transaction};

use super::Cluster;
use super::access_points::Liveness;
use crate::db::{Body, DbError, Failed, OpId, TxError};
use crate::shard::{APPLIED_OPS, Access, Shard, is_fenced};

/// How long a write waits for a move's cut-over before it fails. A cut-over
/// takes well under a second; this covers a copy-shards process that died
/// mid-cut-over until another one (or its restart) takes the move over.
const MOVE_WAIT: Duration = Duration::from_secs(120);
/// Without a successful heartbeat for this long, cached placement is not used
/// (copy-shards stops waiting for a process silent for 30 s).
pub const STALE_AFTER: Duration = Duration::from_secs(20);

/// The placement cache of one process.
pub struct Router {
    cluster: Cluster,
    /// Space → node, each entry tagged with the generation it was read in.
    nodes: RwLock<HashMap<u32, (u32, u64)>>,
    generation: AtomicU64,
    /// Operations running, by the generation they started in.
    running: Mutex<BTreeMap<u64, usize>>,
    drained: Condvar,
    liveness: Mutex<Option<Liveness>>,
}

impl Router {
    pub fn new(cluster: Cluster) -> Arc<Router> {
        Arc::new(Router {
            cluster,
            nodes: RwLock::default(),
            generation: AtomicU64::new(1),
            running: Mutex::default(),
            drained: Condvar::new(),
            liveness: Mutex::default(),
        })
    }

    pub fn route(self: &Arc<Self>, space: u32) -> Route {
        Route {
            router: self.clone(),
            space,
        }
    }

    /// From now on, cached placement is trusted only while this process's
    /// heartbeats succeed.
    pub fn set_liveness(&self, l: Liveness) {
        *self.liveness.lock().unwrap() = Some(l);
    }

    /// Forgets all placement and returns once no read or transaction planned
    /// with the old placement is still running; new ones go on meanwhile.
    /// Call before acknowledging a new topology epoch.
    pub fn topology_changed(&self) {
        let new = {
            // Under the cache's lock, so no lookup sees the new generation
            // with an old entry (entries are also checked against it).
            let mut nodes = self.nodes.write().unwrap();
            nodes.clear();
            self.generation.fetch_add(1, Ordering::AcqRel) + 1
        };
        let mut running = self.running.lock().unwrap();
        while running.range(..new).next().is_some() {
            running = self.drained.wait(running).unwrap();
        }
    }

    fn enter(&self) -> Running<'_> {
        let mut running = self.running.lock().unwrap();
        let g = self.generation.load(Ordering::Acquire);
        *running.entry(g).or_default() += 1;
        Running { router: self, g }
    }

    fn fresh(&self) -> bool {
        self.liveness
            .lock()
            .unwrap()
            .as_ref()
            .is_none_or(|l| l.fresh(STALE_AFTER))
    }

    /// The space's node (cached, else asked of the Admin Node), and whether
    /// the node must confirm in each operation that it still holds the
    /// space: when this process cannot heartbeat (the Admin Node
    /// unreachable), moves no longer wait for it, so what it knows may be
    /// stale. Its reads check the fence row in their own snapshot
    /// ([`Shard::read_if_held`]), its transactions share-lock it first
    /// (`tshs_check_fence`: a move's seal waits for them, a sealed space
    /// refuses them). So I/O goes on without the Admin Node, and a stale
    /// view never uses a space that moved away.
    fn node_of(&self, space: u32) -> Result<(u32, bool), DbError> {
        let cached = self
            .nodes
            .read()
            .unwrap()
            .get(&space)
            .filter(|(_, g)| *g == self.generation.load(Ordering::Acquire))
            .map(|(n, _)| *n);
        let node = match cached {
            Some(n) => n,
            None => self.lookup(space)?,
        };
        Ok((node, !self.fresh()))
    }

    /// Asks the Admin Node where the space lives now. The answer is cached
    /// only if no topology change began meanwhile (it may predate it).
    fn lookup(&self, space: u32) -> Result<u32, DbError> {
        let g = self.generation.load(Ordering::Acquire);
        let admin = self.cluster.admin();
        let node: Option<u32> =
            admin.read(|c| c.exec_first("SELECT node_id FROM spaces WHERE id = ?", (space,)))?;
        let node = node.ok_or_else(|| DbError::Other {
            server: admin.opts().server(),
            detail: format!("space {space} is not in the Admin Node"),
        })?;
        let mut nodes = self.nodes.write().unwrap();
        if self.generation.load(Ordering::Acquire) == g {
            nodes.insert(space, (node, g));
        }
        Ok(node)
    }

    fn shard(&self, node: u32) -> Result<Shard, DbError> {
        self.cluster.shard(node).map_err(|e| DbError::Other {
            server: format!("storage node {node}"),
            detail: format!("{e:#}"),
        })
    }
}

/// Placement held in use (see [`Route::pin`]).
pub struct Pinned<'a> {
    _running: Running<'a>,
}

/// An operation in flight, counted against its generation until dropped.
struct Running<'a> {
    router: &'a Router,
    g: u64,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut running = self.router.running.lock().unwrap();
        if let Some(n) = running.get_mut(&self.g) {
            *n -= 1;
            if *n == 0 {
                running.remove(&self.g);
                self.router.drained.notify_all();
            }
        }
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
        self.router
            .nodes
            .read()
            .unwrap()
            .get(&self.space)
            .map_or(0, |e| e.0)
    }

    /// Runs a read on the space's node.
    pub fn read<T>(
        &self,
        mut f: impl FnMut(&mut PooledConn) -> Result<T, mysql::Error>,
    ) -> Result<T, DbError> {
        let _running = self.router.enter();
        let (mut node, confirm) = self.router.node_of(self.space)?;
        let start = Instant::now();
        let r = if confirm {
            self.confirmed_read(&mut node, &mut f)
        } else {
            self.router.shard(node)?.db().read(&mut f)
        };
        crate::metrics::global().db(node, start, r.is_ok());
        r
    }

    /// A read on placement that the node must confirm (see
    /// [`Router::node_of`]): where the space is sealed, the Admin Node is
    /// asked again, for as long as a write waits for a move's cut-over.
    fn confirmed_read<T>(
        &self,
        node: &mut u32,
        f: &mut impl FnMut(&mut PooledConn) -> Result<T, mysql::Error>,
    ) -> Result<T, DbError> {
        let start = Instant::now();
        let mut pause = Duration::from_millis(10);
        loop {
            if let Some(v) = self
                .router
                .shard(*node)?
                .read_if_held(self.space, &mut *f)?
            {
                return Ok(v);
            }
            if start.elapsed() > MOVE_WAIT {
                return Err(DbError::Other {
                    server: format!("storage node {node}"),
                    detail: format!("space {} is being moved", self.space),
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(200));
            *node = self.router.lookup(self.space)?;
        }
    }

    /// The node the space is on now, as this process knows it, if that is
    /// known to be current (see [`Router::node_of`]): group commit gathers
    /// operations by it. Right only under a [`Route::pin`] taken before it
    /// was asked: without one, a move may end (its old rows dropped) before
    /// the node is used.
    pub fn node_now(&self) -> Result<Option<u32>, DbError> {
        let (node, confirm) = self.router.node_of(self.space)?;
        Ok((!confirm).then_some(node))
    }

    /// Keeps this process's placement in use until dropped: a topology
    /// change, and with it the acknowledgement that lets a move drop a
    /// space's old rows, waits for it. Nodes asked with
    /// [`Route::node_now`] under a pin stay right while it is held.
    pub fn pin(&self) -> Pinned<'_> {
        Pinned {
            _running: self.router.enter(),
        }
    }

    /// Runs one transaction on node `node` for the operations of several
    /// spaces this process placed there (a group commit). Refused by a
    /// move's fence like any write (see [`is_fenced`]): it is not retried
    /// here, the caller runs its operations again one by one through their
    /// own routes, which wait for the cut-over.
    pub fn tx_on_node<T, E>(
        &self,
        node: u32,
        f: impl FnMut(&mut Transaction<'_>) -> Result<T, Body<E>>,
    ) -> Result<T, Failed<E>> {
        let _running = self.router.enter();
        let shard = self
            .router
            .shard(node)
            .map_err(|e| Failed::Tx(TxError::Db(e)))?;
        let t = Instant::now();
        let r = shard.db().tx_body(f);
        crate::metrics::global().db(node, t, !matches!(r, Err(Failed::Tx(_))));
        r
    }

    /// Runs `f` on a connection to node `node`, for a request that opens
    /// and commits its own transaction in one round trip (a group commit's
    /// fast path). `f` reports a failure of the connection through its
    /// second argument, which returns the message: the node's pool then
    /// moves on (a fresh connection, another Galera member) as after any
    /// lost connection. `None` if no connection could be had (nothing was
    /// sent).
    pub fn one_trip_on_node<T>(
        &self,
        node: u32,
        f: impl FnOnce(&mut PooledConn, &dyn Fn(mysql::Error) -> String) -> T,
    ) -> Option<T> {
        let _running = self.router.enter();
        let shard = self.router.shard(node).ok()?;
        let mut conn = shard.db().conn().ok()?;
        let lost = |e: mysql::Error| shard.db().err(e).to_string();
        let t = Instant::now();
        let r = f(&mut conn, &lost);
        crate::metrics::global().db(node, t, true);
        Some(r)
    }

    /// Whether operation `op`, whose commit on node `node` got no answer,
    /// was applied (see [`crate::db::Db::was_applied`]): asked of whichever
    /// member the node's pool reaches now.
    pub fn was_applied(&self, node: u32, op: &OpId) -> Result<bool, TxError> {
        let shard = self.router.shard(node).map_err(TxError::Db)?;
        shard.db().was_applied(&APPLIED_OPS, op)
    }

    /// Runs a transaction on the space's node; a transaction refused because
    /// the space is being moved runs again on its new node once the move's
    /// cut-over is done.
    pub fn tx<T>(
        &self,
        mut f: impl FnMut(&mut Transaction<'_>) -> Result<T, mysql::Error>,
    ) -> Result<T, TxError> {
        self.tx_body(|tx| f(tx).map_err(Body::Sql))
            .map_err(Failed::into_tx)
    }

    /// Like [`Route::tx`], for a body that may abort with its own error.
    pub fn tx_body<T, E>(
        &self,
        mut f: impl FnMut(&mut Transaction<'_>) -> Result<T, Body<E>>,
    ) -> Result<T, Failed<E>> {
        let start = Instant::now();
        let mut pause = Duration::from_millis(10);
        loop {
            let r = {
                let _running = self.router.enter();
                let (node, confirm) = self
                    .router
                    .node_of(self.space)
                    .map_err(|e| Failed::Tx(TxError::Db(e)))?;
                let shard = self
                    .router
                    .shard(node)
                    .map_err(|e| Failed::Tx(TxError::Db(e)))?;
                let t = Instant::now();
                let r = shard.db().tx_body(|tx| {
                    if confirm {
                        tx.exec_drop("CALL tshs_check_fence(?)", (self.space,))
                            .map_err(Body::Sql)?;
                    }
                    f(tx)
                });
                crate::metrics::global().db(node, t, !matches!(r, Err(Failed::Tx(_))));
                r
            };
            match r {
                Err(Failed::Tx(ref e)) if is_fenced(e) => {
                    if start.elapsed() > MOVE_WAIT {
                        return r;
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(200));
                    self.router
                        .lookup(self.space)
                        .map_err(|e| Failed::Tx(TxError::Db(e)))?;
                }
                other => return other,
            }
        }
    }
}

impl Access for Route {
    fn node(&self) -> u32 {
        self.id()
    }

    fn read<T>(
        &self,
        f: impl FnMut(&mut PooledConn) -> Result<T, mysql::Error>,
    ) -> Result<T, DbError> {
        Route::read(self, f)
    }

    fn tx_body<T, E>(
        &self,
        f: impl FnMut(&mut Transaction<'_>) -> Result<T, Body<E>>,
    ) -> Result<T, Failed<E>> {
        Route::tx_body(self, f)
    }

    /// On the space's node now, under a pin (see [`Route::pin`]); a move's
    /// fence refuses the request, and the caller's transaction then waits
    /// for the cut-over.
    fn one_trip<T>(
        &self,
        f: impl FnOnce(&mut PooledConn, &dyn Fn(mysql::Error) -> String, u32) -> T,
    ) -> Option<T> {
        let _running = self.router.enter();
        let (node, confirm) = self.router.node_of(self.space).ok()?;
        if confirm {
            return None;
        }
        self.one_trip_on_node(node, |c, lost| f(c, lost, node))
    }

    fn landed(&self, node: u32, op: &OpId) -> Result<bool, TxError> {
        self.was_applied(node, op)
    }
}
