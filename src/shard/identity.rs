//! A Storage Node database's identity (migration 11): one row naming the
//! node id and a random token the Admin Node also records, so options
//! pointing at another server (`update-storage-node`) are checked to reach
//! a database holding *that* node. `switch_mark` is written on the old
//! server while the node's spaces are fenced: a server showing it has every
//! write made before the fence (a Galera member of the same cluster at once,
//! a replica once it caught up).
//!
//! Also the fence of all of a node's spaces for such a switch (the
//! `space_fence` rows a move uses, see the schema).

use mysql::prelude::Queryable;

use super::Shard;
use crate::db::{Db, DbError, TxError, table_names};

/// The node a database says it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub node: u32,
    pub token: String,
    pub mark: Option<String>,
}

/// A fresh random token (32 hex digits).
pub fn new_token() -> String {
    let mut b = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .expect("system randomness");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The identity `db` holds; `None` for a database without one (no tshs
/// node, or one whose schema predates migration 11).
pub fn read_identity(db: &Db) -> Result<Option<Identity>, DbError> {
    let mut c = db.conn()?;
    if !table_names(&mut c)
        .map_err(|e| db.err(e))?
        .iter()
        .any(|t| t == "node_identity")
    {
        return Ok(None);
    }
    let row: Option<(u32, String, Option<String>)> = c
        .query_first("SELECT node_id, token, switch_mark FROM node_identity WHERE id = 1")
        .map_err(|e| db.err(e))?;
    Ok(row.map(|(node, token, mark)| Identity { node, token, mark }))
}

/// The `SHOW STATUS` value of `wsrep_cluster_state_uuid` of the member in
/// use (empty for a server that is no Galera member).
pub fn cluster_uuid(db: &Db) -> Result<String, DbError> {
    let v: Option<(String, String)> =
        db.read(|c| c.query_first("SHOW STATUS LIKE 'wsrep_cluster_state_uuid'"))?;
    Ok(v.map(|(_, u)| u).unwrap_or_default())
}

impl Shard {
    /// Writes the identity unless the database has one; returns the one it
    /// holds then (another process may have written it first).
    pub fn write_identity(&self, token: &str) -> Result<Identity, DbError> {
        self.db
            .tx(|tx| {
                tx.exec_drop(
                    "INSERT IGNORE INTO node_identity (id, node_id, token) VALUES (1, ?, ?)",
                    (self.id, token),
                )
            })
            .map_err(TxError::into_db)?;
        read_identity(&self.db)?.ok_or_else(|| DbError::Other {
            server: self.db.member().server(),
            detail: "the node identity row vanished".into(),
        })
    }

    /// Records `mark` as the node's latest switch mark.
    pub fn set_switch_mark(&self, mark: &str) -> Result<(), DbError> {
        self.db
            .tx(|tx| {
                tx.exec_drop(
                    "UPDATE node_identity SET switch_mark = ? WHERE id = 1",
                    (mark,),
                )
            })
            .map_err(TxError::into_db)
    }

    /// Fences every open space of the node for `secs` seconds (waiting for
    /// the writes in flight: the fence triggers' share locks); returns the
    /// spaces fenced. Spaces already fenced or sealed by a move stay as
    /// they are.
    pub fn fence_all(&self, secs: u32) -> Result<Vec<u32>, DbError> {
        self.db
            .tx(|tx| {
                let ids: Vec<u32> = tx.query(
                    "SELECT space_id FROM space_fence
                     WHERE fenced_until IS NULL OR fenced_until <= UTC_TIMESTAMP(3) FOR UPDATE",
                )?;
                tx.exec_drop(
                    "UPDATE space_fence SET fenced_until = UTC_TIMESTAMP(3) + INTERVAL ? SECOND
                     WHERE fenced_until IS NULL OR fenced_until <= UTC_TIMESTAMP(3)",
                    (secs,),
                )?;
                Ok(ids)
            })
            .map_err(TxError::into_db)
    }

    /// Which of `spaces` are fenced or sealed here.
    pub fn fenced_among(&self, spaces: &[u32]) -> Result<Vec<u32>, DbError> {
        let mut out = Vec::new();
        for chunk in spaces.chunks(1000) {
            let list = super::id_list(chunk);
            let ids: Vec<u32> = self.db.read(|c| {
                c.query(format!(
                    "SELECT space_id FROM space_fence
                     WHERE space_id IN ({list}) AND fenced_until > UTC_TIMESTAMP(3)"
                ))
            })?;
            out.extend(ids);
        }
        Ok(out)
    }

    /// Seals the fences of `spaces` for good, as a move does its old
    /// node's: a writer that still uses this server is refused.
    pub fn seal_fences(&self, spaces: &[u32]) -> Result<(), DbError> {
        self.set_fences(spaces, Some(super::copy::SEALED))
    }

    /// Lifts the fences of `spaces`.
    pub fn lift_fences(&self, spaces: &[u32]) -> Result<(), DbError> {
        self.set_fences(spaces, None)
    }

    fn set_fences(&self, spaces: &[u32], until: Option<&str>) -> Result<(), DbError> {
        for chunk in spaces.chunks(1000) {
            let list = super::id_list(chunk);
            self.db
                .tx(|tx| {
                    tx.exec_drop(
                        format!(
                            "UPDATE space_fence SET fenced_until = ? WHERE space_id IN ({list})"
                        ),
                        (until,),
                    )
                })
                .map_err(TxError::into_db)?;
        }
        Ok(())
    }
}
