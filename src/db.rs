//! Database access shared by the Admin Node and the Storage Nodes: a bounded
//! connection pool per database, errors classified into what an administrator
//! can act on, and transparent retry of deadlocks and lost connections.
//!
//! A database may live on several members of one MariaDB Galera cluster
//! (`host=db1,db2,db3`). A [`Db`] then writes through one member at a time
//! (sticky: fences, triggers' share locks and ends of files stay on one
//! member, and certification conflicts stay rare), and moves to the next
//! member, in the order the options name them, when its member is lost or
//! not synced (`wsrep_ready`, `wsrep_local_state` 4). Every read waits for
//! the cluster's writes (`wsrep_sync_wait`), so a process that moved reads
//! what it wrote through the member it left, and processes on different
//! members read each other's commits. A certification failure
//! (another member's conflicting write) is error 1213, retried like a
//! deadlock. A COMMIT answered by a lost connection has an unknown outcome:
//! [`once`] makes such a transaction safe to run again.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use mysql::prelude::Queryable;
use mysql::{Pool, PoolConstraints, PoolOpts, PooledConn, Transaction, TxOpts};

use crate::config::ConnOptions;

/// A database failure, classified. `node` names the database for log lines.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot reach MySQL server {server}: {detail}")]
    Unreachable { server: String, detail: String },
    #[error("access denied to {server} for the configured user (check user and password)")]
    AccessDenied { server: String },
    #[error("database '{db}' does not exist on {server} (the administrator creates it first)")]
    NoDatabase { server: String, db: String },
    #[error("the configured user lacks a right on '{db}' on {server}: {detail}")]
    MissingRight {
        server: String,
        db: String,
        detail: String,
    },
    #[error("database error on {server}: {detail}")]
    Other { server: String, detail: String },
}

impl DbError {
    /// True for failures that a retry on a fresh connection may fix.
    pub fn is_transient(&self) -> bool {
        matches!(self, DbError::Unreachable { .. })
    }
}

/// MySQL error codes tshs reacts to.
pub mod code {
    pub const DB_ACCESS_DENIED: u16 = 1044;
    pub const ACCESS_DENIED: u16 = 1045;
    pub const BAD_DB: u16 = 1049;
    pub const TABLE_ACCESS_DENIED: u16 = 1142;
    pub const LOCK_WAIT_TIMEOUT: u16 = 1205;
    pub const DEADLOCK: u16 = 1213;
    pub const DUP_ENTRY: u16 = 1062;
    /// Galera: "WSREP has not yet prepared node for application use" (the
    /// member is not synced or not in the primary component).
    pub const WSREP_NOT_READY: u16 = 1047;
}

/// One database (Admin Node or a Storage Node shard) behind a bounded pool.
///
/// When the server goes away every pooled connection is dead; the first
/// failure marks the pool broken and the next checkout builds a new one, so
/// the caller recovers by itself once the server is back.
#[derive(Clone)]
pub struct Db {
    pool: Arc<RwLock<Pool>>,
    broken: Arc<AtomicBool>,
    opts: ConnOptions,
    /// The servers `opts` names (one unless a Galera cluster's members).
    members: Arc<Vec<ConnOptions>>,
    /// The member in use, an index into `members`.
    current: Arc<AtomicUsize>,
    /// Held while a new pool is built, so one thread picks the member.
    switching: Arc<Mutex<()>>,
    max_conns: usize,
    /// Statements every new connection runs first.
    init: Vec<String>,
}

/// How long a caller waits for a free pooled connection before giving up.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(30);
/// Pauses before the retries of a transaction that hit a deadlock or could
/// not reach its server: about 1.6 s in all, so a server restart or a
/// failover does not reach the caller, while a dead server still fails fast.
const BACKOFF_MS: &[u64] = &[20, 50, 100, 200, 400, 800];
const RETRIES: usize = BACKOFF_MS.len() + 1;

impl Db {
    /// Connects (one connection at once, so a bad address fails here) with at
    /// most `max_conns` connections.
    pub fn connect(opts: &ConnOptions, max_conns: usize) -> Result<Db, DbError> {
        Db::connect_with_init(opts, max_conns, Vec::new())
    }

    /// Like [`Db::connect`]; every connection first runs `init`.
    pub fn connect_with_init(
        opts: &ConnOptions,
        max_conns: usize,
        init: Vec<String>,
    ) -> Result<Db, DbError> {
        let members = opts.members();
        let mut last = None;
        // The first member that answers and is synced.
        for i in 0..members.len() {
            match open_member(&members, i, max_conns, &init) {
                Ok(pool) => {
                    return Ok(Db {
                        pool: Arc::new(RwLock::new(pool)),
                        broken: Arc::default(),
                        opts: opts.clone(),
                        members: Arc::new(members),
                        current: Arc::new(AtomicUsize::new(i)),
                        switching: Arc::default(),
                        max_conns,
                        init,
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one member"))
    }

    pub fn opts(&self) -> &ConnOptions {
        &self.opts
    }

    /// The server in use (one of the members `opts` names).
    pub fn member(&self) -> &ConnOptions {
        &self.members[self.current.load(Ordering::Acquire)]
    }

    /// Maps a driver error to a [`DbError`] naming the server in use; a
    /// lost server marks the pool for rebuilding (on the next member of a
    /// Galera cluster if this one is gone).
    pub fn err(&self, e: mysql::Error) -> DbError {
        let e = classify(self.member(), e);
        if e.is_transient() {
            self.broken.store(true, Ordering::Release);
        }
        e
    }

    pub fn conn(&self) -> Result<PooledConn, DbError> {
        if self.broken.load(Ordering::Acquire) {
            self.reconnect()?;
        }
        let pool = self.pool.read().unwrap().clone();
        pool.try_get_conn(CHECKOUT_TIMEOUT).map_err(|e| self.err(e))
    }

    /// A new pool on the member in use if it still answers and is synced,
    /// else on the next one that does.
    fn reconnect(&self) -> Result<(), DbError> {
        let _one = self.switching.lock().unwrap();
        if !self.broken.load(Ordering::Acquire) {
            return Ok(()); // another thread did it
        }
        let n = self.members.len();
        let from = self.current.load(Ordering::Acquire);
        let mut last = None;
        for k in 0..n {
            let i = (from + k) % n;
            match open_member(&self.members, i, self.max_conns, &self.init) {
                Ok(pool) => {
                    if k > 0 {
                        log::warn!(
                            "database {}: moved from {} to {} ({})",
                            self.opts.database.as_deref().unwrap_or(""),
                            self.members[from].server(),
                            self.members[i].server(),
                            last.as_ref()
                                .map_or(String::new(), |e: &DbError| e.to_string())
                        );
                    }
                    *self.pool.write().unwrap() = pool;
                    self.current.store(i, Ordering::Release);
                    self.broken.store(false, Ordering::Release);
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one member"))
    }

    /// Replaces the pool by a new one (one connection) on the member in use:
    /// the old pool's connections close as they are given back. Each
    /// connection keeps packet buffers as large as the largest packets it
    /// carried (4 MiB and more), so without this the connections a burst
    /// opened would hold their memory for the life of the process. A
    /// failure leaves the pool as it was.
    pub fn recycle(&self) -> Result<(), DbError> {
        let _one = self.switching.lock().unwrap();
        if self.broken.load(Ordering::Acquire) {
            return Ok(()); // the next checkout builds a new one anyway
        }
        let i = self.current.load(Ordering::Acquire);
        let pool = open_member(&self.members, i, self.max_conns, &self.init)?;
        *self.pool.write().unwrap() = pool;
        Ok(())
    }

    /// Runs `f` in a transaction and commits; retries the whole transaction
    /// on deadlock, lock-wait timeout or a lost connection — but never after
    /// the commit was sent, whose outcome is then unknown (an append must not
    /// land twice).
    pub fn tx<T>(
        &self,
        mut f: impl FnMut(&mut Transaction<'_>) -> Result<T, mysql::Error>,
    ) -> Result<T, TxError> {
        self.tx_body(|tx| f(tx).map_err(Body::Sql))
            .map_err(Failed::into_tx)
    }

    /// Like [`Db::tx`], for a body that may also fail with its own verdict
    /// `E` (rolled back, not retried, handed back as [`Failed::Abort`]).
    pub fn tx_body<T, E>(
        &self,
        mut f: impl FnMut(&mut Transaction<'_>) -> Result<T, Body<E>>,
    ) -> Result<T, Failed<E>> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let r = (|| -> Result<T, Failed<E>> {
                let mut conn = self.conn().map_err(|e| Failed::Tx(TxError::Db(e)))?;
                let mut tx = conn
                    .start_transaction(TxOpts::default())
                    .map_err(|e| Failed::Tx(TxError::Db(self.err(e))))?;
                let v = f(&mut tx).map_err(|e| match e {
                    Body::Sql(e) => Failed::Tx(self.tx_err(e)),
                    Body::Abort(e) => Failed::Abort(e),
                })?;
                tx.commit().map_err(|e| match &e {
                    // Galera's certification refused it: nothing committed.
                    mysql::Error::MySqlError(m) if m.code == code::DEADLOCK => {
                        Failed::Tx(TxError::Retry(self.err(e)))
                    }
                    _ => Failed::Tx(TxError::Commit(self.err(e))),
                })?;
                Ok(v)
            })();
            match r {
                Err(Failed::Tx(TxError::Retry(_) | TxError::Db(DbError::Unreachable { .. })))
                    if attempt < RETRIES =>
                {
                    std::thread::sleep(Duration::from_millis(BACKOFF_MS[attempt - 1]));
                    continue;
                }
                Err(Failed::Tx(TxError::Retry(e))) => return Err(Failed::Tx(TxError::Db(e))),
                other => return other,
            }
        }
    }

    /// Runs a read (idempotent) on a pooled connection, retried like a
    /// transaction when the server cannot be reached.
    pub fn read<T>(
        &self,
        mut f: impl FnMut(&mut PooledConn) -> Result<T, mysql::Error>,
    ) -> Result<T, DbError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let r = self
                .conn()
                .and_then(|mut c| f(&mut c).map_err(|e| self.err(e)));
            match r {
                Err(DbError::Unreachable { .. }) if attempt < RETRIES => {
                    std::thread::sleep(Duration::from_millis(BACKOFF_MS[attempt - 1]));
                }
                other => return other,
            }
        }
    }

    fn tx_err(&self, e: mysql::Error) -> TxError {
        match &e {
            mysql::Error::MySqlError(m)
                if m.code == code::DEADLOCK || m.code == code::LOCK_WAIT_TIMEOUT =>
            {
                TxError::Retry(self.err(e))
            }
            mysql::Error::MySqlError(m) => TxError::Sql(m.code, m.message.clone(), self.err(e)),
            _ => TxError::Db(self.err(e)),
        }
    }

    /// Runs one statement outside a transaction.
    pub fn exec_drop(&self, sql: &str) -> Result<(), DbError> {
        self.conn()?.query_drop(sql).map_err(|e| self.err(e))
    }
}

/// A pool on member `i`. When the database has several members, the member
/// must first answer and be synced with its Galera cluster, and every
/// connection's reads wait for the cluster's writes (`wsrep_sync_wait`): a
/// process that moved reads what it wrote through the member it left, and
/// processes on different members (some moved, some not yet) read each
/// other's commits — the close-to-open consistency of one server.
fn open_member(
    members: &[ConnOptions],
    i: usize,
    max_conns: usize,
    init: &[String],
) -> Result<Pool, DbError> {
    let m = &members[i];
    if members.len() == 1 {
        return new_pool(m, max_conns, init);
    }
    let mut probe = mysql::Conn::new(m.to_mysql()).map_err(|e| classify(m, e))?;
    let status: Vec<(String, String)> = probe
        .query("SHOW STATUS WHERE Variable_name IN ('wsrep_ready', 'wsrep_local_state')")
        .map_err(|e| classify(m, e))?;
    let get = |name: &str| {
        status
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let galera = get("wsrep_local_state").is_some();
    if galera && (get("wsrep_ready") != Some("ON") || get("wsrep_local_state") != Some("4")) {
        return Err(DbError::Unreachable {
            server: m.server(),
            detail: format!(
                "not synced with its Galera cluster (wsrep_ready {}, wsrep_local_state {})",
                get("wsrep_ready").unwrap_or("?"),
                get("wsrep_local_state").unwrap_or("?")
            ),
        });
    }
    let mut init = init.to_vec();
    if galera {
        init.push("SET SESSION wsrep_sync_wait = 1".into());
    }
    new_pool(m, max_conns, &init)
}

/// Checks that the servers `opts` names (when it names several) are the
/// synced members of one Galera cluster: what a new node's options must
/// be. The error says which member is not, and why.
pub fn check_members(opts: &ConnOptions) -> Result<(), DbError> {
    let members = opts.members();
    if members.len() == 1 {
        return Ok(());
    }
    let mut first: Option<(String, String)> = None;
    for m in &members {
        // The server's state, before its database is looked at.
        let mut c =
            mysql::Conn::new(m.with_database(None).to_mysql()).map_err(|e| classify(m, e))?;
        let status: Vec<(String, String)> = c
            .query(
                "SHOW STATUS WHERE Variable_name IN
                 ('wsrep_ready', 'wsrep_local_state', 'wsrep_cluster_state_uuid')",
            )
            .map_err(|e| classify(m, e))?;
        let get = |name: &str| {
            status
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let other = |detail: String| DbError::Other {
            server: m.server(),
            detail,
        };
        let Some(uuid) = get("wsrep_cluster_state_uuid").filter(|u| !u.is_empty()) else {
            return Err(other(
                "not a member of a Galera cluster (several hosts must name one Galera cluster's members)".into(),
            ));
        };
        if get("wsrep_ready").as_deref() != Some("ON")
            || get("wsrep_local_state").as_deref() != Some("4")
        {
            return Err(other(format!(
                "this member is not synced with its Galera cluster (wsrep_local_state {})",
                get("wsrep_local_state").unwrap_or_default()
            )));
        }
        match &first {
            None => first = Some((m.server(), uuid)),
            Some((s, u)) if *u != uuid => {
                return Err(other(format!(
                    "this member and {s} belong to different Galera clusters"
                )));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// What one Galera member says of itself (`SHOW STATUS`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wsrep {
    /// `wsrep_local_state_comment`: Synced, Donor/Desynced, Joining, …
    pub comment: String,
    /// `wsrep_local_state` (4 is Synced).
    pub local_state: String,
    /// `wsrep_cluster_status`: Primary, non-Primary or Disconnected.
    pub cluster_status: String,
    /// `wsrep_ready`: the member accepts queries.
    pub ready: bool,
}

impl Wsrep {
    /// In its cluster's primary component (it may still be joining).
    pub fn primary(&self) -> bool {
        self.cluster_status == "Primary"
    }

    /// Usable: synced and ready in the primary component.
    pub fn synced(&self) -> bool {
        self.primary() && self.ready && self.local_state == "4"
    }

    /// `Synced (Primary, ready)`, `Joining (Primary, not ready)`, …
    pub fn describe(&self) -> String {
        format!(
            "{} ({}, {})",
            if self.comment.is_empty() {
                "?"
            } else {
                &self.comment
            },
            self.cluster_status,
            if self.ready { "ready" } else { "not ready" }
        )
    }
}

/// One member `opts` names and its state, or why it could not be asked.
#[derive(Clone, Debug)]
pub struct MemberState {
    pub server: String,
    pub state: Result<Wsrep, String>,
}

impl MemberState {
    pub fn synced(&self) -> bool {
        self.state.as_ref().is_ok_and(Wsrep::synced)
    }

    pub fn primary(&self) -> bool {
        self.state.as_ref().is_ok_and(Wsrep::primary)
    }

    /// Why the member is not usable; `None` if it is.
    pub fn problem(&self) -> Option<String> {
        match &self.state {
            Err(e) => Some(format!("unreachable: {e}")),
            Ok(w) if !w.primary() => Some(format!(
                "not in the primary component ({})",
                w.cluster_status
            )),
            Ok(w) if !w.synced() => Some(format!("not synced ({})", w.describe())),
            Ok(_) => None,
        }
    }
}

/// Each member `opts` names (none if it names one server) and its Galera
/// state: what `list-storage-nodes` shows and `tshs check` judges. Asks
/// the members in parallel, connecting with at most 2 s each.
pub fn member_states(opts: &ConnOptions) -> Vec<MemberState> {
    let members = opts.members();
    if members.len() == 1 {
        return Vec::new();
    }
    let probes: Vec<_> = members
        .into_iter()
        .map(|m| std::thread::spawn(move || (m.server(), member_state(&m))))
        .collect();
    probes
        .into_iter()
        .map(|p| {
            let (server, state) = p.join().expect("a member probe does not panic");
            MemberState { server, state }
        })
        .collect()
}

fn member_state(m: &ConnOptions) -> Result<Wsrep, String> {
    let mut probe = m.with_database(None);
    probe.connect_timeout = Some(m.connect_timeout.unwrap_or(2).min(2));
    probe.read_timeout = Some(5);
    let mut c = mysql::Conn::new(probe.to_mysql()).map_err(|e| classify(m, e).to_string())?;
    let status: Vec<(String, String)> = c
        .query(
            "SHOW STATUS WHERE Variable_name IN ('wsrep_ready', 'wsrep_local_state',
             'wsrep_local_state_comment', 'wsrep_cluster_status')",
        )
        .map_err(|e| classify(m, e).to_string())?;
    let get = |n: &str| {
        status
            .iter()
            .find(|(k, _)| k == n)
            .map_or(String::new(), |(_, v)| v.clone())
    };
    if get("wsrep_local_state").is_empty() {
        return Err("not a Galera member (no wsrep status)".into());
    }
    Ok(Wsrep {
        comment: get("wsrep_local_state_comment"),
        local_state: get("wsrep_local_state"),
        cluster_status: get("wsrep_cluster_status"),
        ready: get("wsrep_ready") == "ON",
    })
}

/// A pool holding at most `max_conns` connections; connects one at once, so a
/// bad address fails here.
fn new_pool(opts: &ConnOptions, max_conns: usize, init: &[String]) -> Result<Pool, DbError> {
    let pool_opts = PoolOpts::new()
        .with_constraints(PoolConstraints::new(1, max_conns.max(1)).expect("1 <= max"))
        // A reset or a ping per checkout costs a round trip on every
        // filesystem call; broken connections are retried instead.
        .with_reset_connection(false)
        .with_check_health(false);
    let mut builder = mysql::OptsBuilder::from_opts(opts.to_mysql()).pool_opts(pool_opts);
    if !init.is_empty() {
        // Keep the connection's own init statements (SET NAMES …) first.
        let mut all = opts.to_mysql().get_init().to_vec();
        all.extend(init.iter().cloned());
        builder = builder.init(all);
    }
    let my: mysql::Opts = builder.into();
    Pool::new(my).map_err(|e| classify(opts, e))
}

/// A transaction's failure: a classified database error, or an SQL error the
/// caller may want to look at (e.g. a duplicate key).
#[derive(Debug, thiserror::Error)]
pub enum TxError {
    #[error(transparent)]
    Db(DbError),
    #[error("{2}")]
    Sql(u16, String, DbError),
    #[error("{0} (gave up after {RETRIES} attempts)")]
    Retry(DbError),
    #[error("{0} (during commit: the outcome is unknown)")]
    Commit(DbError),
}

impl TxError {
    pub fn into_db(self) -> DbError {
        match self {
            TxError::Db(e) | TxError::Retry(e) | TxError::Sql(_, _, e) | TxError::Commit(e) => e,
        }
    }
}

/// A transaction body's failure: an SQL error (which may make the whole
/// transaction run again) or the body's own verdict.
#[derive(Debug)]
pub enum Body<E> {
    Sql(mysql::Error),
    Abort(E),
}

impl<E> From<mysql::Error> for Body<E> {
    fn from(e: mysql::Error) -> Self {
        Body::Sql(e)
    }
}

/// A failed transaction whose body may abort: the database failed, or the
/// body decided so (nothing was committed).
#[derive(Debug)]
pub enum Failed<E> {
    Tx(TxError),
    Abort(E),
}

impl Failed<std::convert::Infallible> {
    pub fn into_tx(self) -> TxError {
        match self {
            Failed::Tx(e) => e,
            Failed::Abort(never) => match never {},
        }
    }
}

/// The statements by which a database records the operations it applied
/// (see [`once`]): `check` reads the lane's last sequence number `FOR
/// UPDATE` (params: writer, lane), `record` stores it (writer, lane, seq,
/// time in ns).
pub struct OpLog {
    pub check: &'static str,
    pub record: &'static str,
}

/// What a transaction run by [`once`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Once<T> {
    /// Applied now; the body's value.
    Done(T),
    /// An earlier attempt whose COMMIT got no answer had applied it: the
    /// body did not run again (its value is not known here).
    AlreadyDone,
}

/// An operation's identity: this process, the thread's lane, the lane's
/// sequence number. A lane is one thread's, so its operations never
/// overlap and one row per lane tells which of them were applied.
#[derive(Clone, Copy, Debug)]
pub struct OpId {
    writer: [u8; 8],
    lane: u32,
    seq: u64,
}

impl OpId {
    /// The next operation of the calling thread. Its transactions must run
    /// on this thread (a lane's operations never overlap).
    pub fn next() -> OpId {
        static WRITER: std::sync::OnceLock<[u8; 8]> = std::sync::OnceLock::new();
        static LANES: AtomicU32 = AtomicU32::new(0);
        thread_local! {
            static LANE: (u32, std::cell::Cell<u64>) =
                (LANES.fetch_add(1, Ordering::Relaxed), std::cell::Cell::new(0));
        }
        let writer = *WRITER.get_or_init(|| {
            let mut w = [0u8; 8];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut w)
                .expect("system randomness");
            w
        });
        LANE.with(|(lane, seq)| {
            seq.set(seq.get() + 1);
            OpId {
                writer,
                lane: *lane,
                seq: seq.get(),
            }
        })
    }
}

impl OpId {
    /// `log.record`'s parameters for this operation, recorded now: for a
    /// transaction that records itself in its own statements (e.g. a
    /// one-round-trip batch; record it first, so its row lock is taken
    /// before anything else is written).
    pub fn record_params(&self) -> (Vec<u8>, u32, u64, i64) {
        (
            self.writer.to_vec(),
            self.lane,
            self.seq,
            crate::clock::now_ns(),
        )
    }
}

impl Db {
    /// True if operation `op` was applied here: what to ask, on whatever
    /// member the Db now uses, before running again a transaction that
    /// recorded `op` and whose COMMIT got no answer. Waits for a commit of
    /// it still in flight (the lane row's lock) and, on Galera, for the
    /// cluster's writes.
    pub fn was_applied(&self, log: &OpLog, op: &OpId) -> Result<bool, TxError> {
        let last: Option<u64> =
            self.tx(|tx| tx.exec_first(log.check, (&op.writer[..], op.lane)))?;
        Ok(last.is_some_and(|s| s >= op.seq))
    }
}

/// The body [`once`] hands its transaction runner.
pub type OnceBody<'a, T, E> = dyn FnMut(&mut Transaction<'_>) -> Result<Once<T>, Body<E>> + 'a;

/// How often a transaction whose COMMIT got no answer is run again by
/// [`Db::tx_once`] (each run also retries as [`Db::tx_body`] does).
const UNKNOWN_OUTCOME_RUNS: usize = 3;

/// Runs a non-idempotent transaction (an append, a create) at most once,
/// also when a COMMIT's answer is lost (a member killed, a failover): the
/// transaction first locks and checks the thread's lane row in `log`'s
/// table and records the operation there, so a run again after an unknown
/// outcome finds it applied — on the same member, or on another whose copy
/// of the row is not applied yet (then Galera's certification refuses the
/// run with 1213 and it is retried). `run` is a transaction runner, e.g.
/// `|body| db.tx_body(body)` or a route's.
pub fn once<T, E, R, F>(log: &OpLog, mut run: R, mut f: F) -> Result<Once<T>, Failed<E>>
where
    R: FnMut(&mut OnceBody<'_, T, E>) -> Result<Once<T>, Failed<E>>,
    F: FnMut(&mut Transaction<'_>) -> Result<T, Body<E>>,
{
    let op = OpId::next();
    let mut body = |tx: &mut Transaction<'_>| -> Result<Once<T>, Body<E>> {
        let last: Option<u64> = tx.exec_first(log.check, (&op.writer[..], op.lane))?;
        if last.is_some_and(|s| s >= op.seq) {
            return Ok(Once::AlreadyDone);
        }
        let v = f(tx)?;
        tx.exec_drop(
            log.record,
            (&op.writer[..], op.lane, op.seq, crate::clock::now_ns()),
        )?;
        Ok(Once::Done(v))
    };
    let mut runs = 0;
    loop {
        runs += 1;
        match run(&mut body) {
            Err(Failed::Tx(TxError::Commit(e))) if runs < UNKNOWN_OUTCOME_RUNS => {
                log::warn!("{e}: checking whether it was applied before running it again");
            }
            other => return other,
        }
    }
}

impl Db {
    /// [`once`] on this database.
    pub fn tx_once<T, E>(
        &self,
        log: &OpLog,
        f: impl FnMut(&mut Transaction<'_>) -> Result<T, Body<E>>,
    ) -> Result<Once<T>, Failed<E>> {
        once(log, |body: &mut OnceBody<'_, T, E>| self.tx_body(body), f)
    }
}

/// Classifies a driver error for one server.
pub fn classify(opts: &ConnOptions, e: mysql::Error) -> DbError {
    let server = opts.server();
    let db = opts.database.clone().unwrap_or_default();
    match e {
        mysql::Error::MySqlError(m) => match m.code {
            code::ACCESS_DENIED => DbError::AccessDenied { server },
            // Another member may be synced: as if the server were gone.
            code::WSREP_NOT_READY => DbError::Unreachable {
                server,
                detail: m.message,
            },
            code::BAD_DB => DbError::NoDatabase { server, db },
            code::DB_ACCESS_DENIED if !db.is_empty() => DbError::AccessDenied { server },
            code::TABLE_ACCESS_DENIED => DbError::MissingRight {
                server,
                db,
                detail: m.message,
            },
            _ => DbError::Other {
                server,
                detail: format!("{} ({})", m.message, m.code),
            },
        },
        mysql::Error::IoError(io) => DbError::Unreachable {
            server,
            detail: io.to_string(),
        },
        mysql::Error::DriverError(d) => DbError::Unreachable {
            server,
            detail: d.to_string(),
        },
        mysql::Error::CodecError(c) => DbError::Unreachable {
            server,
            detail: c.to_string(),
        },
        other => DbError::Other {
            server,
            detail: other.to_string(),
        },
    }
}

/// Runs `sql`, statements separated by `;`, as one request. The first
/// that fails is the error (the server runs none after it): dropping a
/// multi-statement result unread would skip the errors of all but the
/// first statement.
pub fn run_statements(conn: &mut impl Queryable, sql: &str) -> Result<(), mysql::Error> {
    let mut result = conn.query_iter(sql)?;
    while let Some(set) = result.iter() {
        for row in set {
            row?;
        }
    }
    Ok(())
}

/// Names of the tables in the connection's current database.
pub fn table_names(conn: &mut impl Queryable) -> Result<Vec<String>, mysql::Error> {
    conn.query("SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()")
}

/// Applies numbered migrations once each, recording them in `schema_migrations`.
/// Never edit an applied migration: add a new one.
pub fn migrate(db: &Db, migrations: &[(u32, &[&str])]) -> Result<Vec<u32>, DbError> {
    let mut conn = db.conn()?;
    conn.query_drop(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INT UNSIGNED NOT NULL PRIMARY KEY,
            applied_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP
        ) ENGINE=InnoDB",
    )
    .map_err(|e| db.err(e))?;
    let done: Vec<u32> = conn
        .query("SELECT version FROM schema_migrations")
        .map_err(|e| db.err(e))?;
    let mut applied = Vec::new();
    for (version, stmts) in migrations {
        if done.contains(version) {
            continue;
        }
        for s in *stmts {
            conn.query_drop(*s).map_err(|e| db.err(e))?;
        }
        conn.exec_drop(
            "INSERT INTO schema_migrations (version) VALUES (?)",
            (version,),
        )
        .map_err(|e| db.err(e))?;
        applied.push(*version);
    }
    Ok(applied)
}
