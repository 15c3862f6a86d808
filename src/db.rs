//! Database access shared by the Admin Node and the Storage Nodes: a bounded
//! connection pool per database, errors classified into what an administrator
//! can act on, and transparent retry of deadlocks and lost connections.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
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
        Ok(Db {
            pool: Arc::new(RwLock::new(new_pool(opts, max_conns, &init)?)),
            broken: Arc::default(),
            opts: opts.clone(),
            max_conns,
            init,
        })
    }

    pub fn opts(&self) -> &ConnOptions {
        &self.opts
    }

    /// Maps a driver error to a [`DbError`] naming this database's server;
    /// a lost server marks the pool for rebuilding.
    pub fn err(&self, e: mysql::Error) -> DbError {
        let e = classify(&self.opts, e);
        if e.is_transient() {
            self.broken.store(true, Ordering::Release);
        }
        e
    }

    pub fn conn(&self) -> Result<PooledConn, DbError> {
        if self.broken.load(Ordering::Acquire) {
            let fresh = new_pool(&self.opts, self.max_conns, &self.init)?;
            *self.pool.write().unwrap() = fresh;
            self.broken.store(false, Ordering::Release);
        }
        let pool = self.pool.read().unwrap().clone();
        pool.try_get_conn(CHECKOUT_TIMEOUT).map_err(|e| self.err(e))
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
                tx.commit()
                    .map_err(|e| Failed::Tx(TxError::Commit(self.err(e))))?;
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

/// Classifies a driver error for one server.
pub fn classify(opts: &ConnOptions, e: mysql::Error) -> DbError {
    let server = opts.server();
    let db = opts.database.clone().unwrap_or_default();
    match e {
        mysql::Error::MySqlError(m) => match m.code {
            code::ACCESS_DENIED => DbError::AccessDenied { server },
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
