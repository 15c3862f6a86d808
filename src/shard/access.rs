//! How a Storage Node operation reaches its database: a [`Shard`] directly
//! (tasks that work on one node), or a space's route across moves
//! (`cluster::Route`, which also retries a write refused by a move's fence on
//! the space's new node). Every operation of this module's siblings takes an
//! [`Access`], so statements are issued, retried and routed in one place.

use mysql::{PooledConn, Transaction};

use super::Shard;
use super::error::ShardError;
use crate::db::{Body, DbError, Failed, Once, OnceBody, OpId, TxError};

pub trait Access {
    /// The node's id, for messages.
    fn node(&self) -> u32;

    /// Runs an idempotent read.
    fn read<T>(
        &self,
        f: impl FnMut(&mut PooledConn) -> Result<T, mysql::Error>,
    ) -> Result<T, DbError>;

    /// Runs a transaction whose body may abort with its own error.
    fn tx_body<T, E>(
        &self,
        f: impl FnMut(&mut Transaction<'_>) -> Result<T, Body<E>>,
    ) -> Result<T, Failed<E>>;

    /// Runs `f` on a connection to the node, for a request that opens and
    /// commits its own transaction in one round trip; `f` gets the node's
    /// id and reports a lost connection through its second argument
    /// (which returns the message). `None`: no connection, or a placement
    /// to be confirmed first, which only a transaction does: nothing was
    /// sent.
    fn one_trip<T>(
        &self,
        f: impl FnOnce(&mut PooledConn, &dyn Fn(mysql::Error) -> String, u32) -> T,
    ) -> Option<T>;

    /// Whether operation `op`, sent by [`Access::one_trip`] to node `node`
    /// and left without an answer, landed (it recorded itself in that
    /// node's `applied_ops`, which a move does not copy: the node it went
    /// to is asked, not the space's node now).
    fn landed(&self, node: u32, op: &OpId) -> Result<bool, TxError>;

    /// Runs a transaction of Storage Node statements: a body's
    /// [`ShardError`] rolls it back and is returned as it is.
    fn run<T>(
        &self,
        what: &'static str,
        f: impl FnMut(&mut Transaction<'_>) -> Result<T, Body<ShardError>>,
    ) -> Result<T, ShardError> {
        self.tx_body(f).map_err(|e| match e {
            Failed::Abort(e) => e,
            Failed::Tx(e) => ShardError::Tx {
                node: self.node(),
                what,
                source: Box::new(e),
            },
        })
    }

    /// Like [`Access::run`] for a non-idempotent transaction (an append, a
    /// create): applied at most once even when a COMMIT's answer is lost
    /// and it runs again (see [`crate::db::once`]). [`Once::AlreadyDone`]:
    /// an earlier run had applied it.
    fn run_once<T>(
        &self,
        what: &'static str,
        f: impl FnMut(&mut Transaction<'_>) -> Result<T, Body<ShardError>>,
    ) -> Result<Once<T>, ShardError> {
        crate::db::once(
            &super::schema::APPLIED_OPS,
            |body: &mut OnceBody<'_, T, ShardError>| self.tx_body(body),
            f,
        )
        .map_err(|e| match e {
            Failed::Abort(e) => e,
            Failed::Tx(e) => ShardError::Tx {
                node: self.node(),
                what,
                source: Box::new(e),
            },
        })
    }

    /// Runs a read of Storage Node rows.
    fn query<T>(
        &self,
        what: &'static str,
        f: impl FnMut(&mut PooledConn) -> Result<T, mysql::Error>,
    ) -> Result<T, ShardError> {
        self.read(f).map_err(|e| ShardError::Db {
            node: self.node(),
            what,
            source: Box::new(e),
        })
    }
}

impl Access for Shard {
    fn node(&self) -> u32 {
        self.id()
    }

    fn read<T>(
        &self,
        f: impl FnMut(&mut PooledConn) -> Result<T, mysql::Error>,
    ) -> Result<T, DbError> {
        self.db().read(f)
    }

    fn tx_body<T, E>(
        &self,
        f: impl FnMut(&mut Transaction<'_>) -> Result<T, Body<E>>,
    ) -> Result<T, Failed<E>> {
        self.db().tx_body(f)
    }

    fn one_trip<T>(
        &self,
        f: impl FnOnce(&mut PooledConn, &dyn Fn(mysql::Error) -> String, u32) -> T,
    ) -> Option<T> {
        let mut conn = self.db().conn().ok()?;
        let lost = |e: mysql::Error| self.db().err(e).to_string();
        Some(f(&mut conn, &lost, self.id()))
    }

    fn landed(&self, _node: u32, op: &OpId) -> Result<bool, TxError> {
        self.db().was_applied(&super::APPLIED_OPS, op)
    }
}

/// The object stores a node's files may be held in, by S3 host id.
pub trait Stores {
    fn object_store(
        &self,
        host: u32,
    ) -> anyhow::Result<std::sync::Arc<crate::object_store::S3Store>>;
}
