//! Volumes and spaces in the Admin Node.
//!
//! A space is created on the Storage Node that owns `hash32(space id)` and
//! its row records that node (`node_id`), so reads keep finding it while a
//! split moves it. Removing a space marks it `deleted` and records a `DELETE`
//! job; `remove-deleted` purges its rows later.

use std::os::unix::ffi::OsStringExt;

use anyhow::{Result, anyhow, bail};
use mysql::prelude::Queryable;

use super::Cluster;
use crate::placement;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VolumeStatus {
    Operational,
    /// Read-only through the mount, so a final backup pass sees no change.
    Standby,
}

impl VolumeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeStatus::Operational => "Operational",
            VolumeStatus::Standby => "Standby",
        }
    }
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "operational" => Ok(VolumeStatus::Operational),
            "standby" => Ok(VolumeStatus::Standby),
            _ => bail!("unknown volume status '{s}' (Operational or Standby)"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpaceStatus {
    Active,
    /// Being restored: only the administrator may use it.
    Deactivated,
    Deleted,
}

impl SpaceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SpaceStatus::Active => "active",
            SpaceStatus::Deactivated => "deactivated",
            SpaceStatus::Deleted => "deleted",
        }
    }
    /// The number `list_spaces` shows, as in the reference (0 = active).
    pub fn code(self) -> u8 {
        match self {
            SpaceStatus::Active => 0,
            SpaceStatus::Deactivated => 1,
            SpaceStatus::Deleted => 2,
        }
    }
    fn parse(s: &str) -> Result<Self> {
        match s {
            "active" => Ok(SpaceStatus::Active),
            "deactivated" => Ok(SpaceStatus::Deactivated),
            "deleted" => Ok(SpaceStatus::Deleted),
            _ => bail!("unknown space status '{s}' in the Admin Node"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct VolumeRow {
    pub id: u32,
    pub name: String,
    pub status: VolumeStatus,
    /// Creation time, seconds since the epoch (the directory's times).
    pub created: i64,
}

#[derive(Clone, Debug)]
pub struct SpaceRow {
    pub id: u32,
    pub volume_id: u32,
    pub node_id: u32,
    pub status: SpaceStatus,
    pub restore_id: u32,
    /// The on-disk directory the space's tree is still to be imported from
    /// (see [`crate::import`]).
    pub import_from: Option<std::path::PathBuf>,
    /// Part of an unfinished import (some of its data may still be on disk).
    pub importing: bool,
}

/// A space as `list_spaces` shows it.
#[derive(Clone, Debug)]
pub struct SpaceListing {
    pub volume: String,
    pub id: u32,
    pub title: String,
    pub resource_id: String,
    pub status: SpaceStatus,
}

/// Checks a volume name: one path component a shell user can type.
pub fn check_volume_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 255 {
        bail!("volume name must be 1 to 255 bytes long");
    }
    if name == "." || name == ".." || name.contains(['/', '\0']) {
        bail!("volume name '{name}' is not a valid directory name");
    }
    if name.chars().all(|c| c.is_ascii_digit()) {
        bail!("volume name '{name}' is numeric: numeric names are space IDs");
    }
    if name == ".snapshots" {
        bail!("volume name '.snapshots' is the mount's directory of snapshots");
    }
    Ok(())
}

/// Parses a space directory name: its decimal ID, 1..2^32-1, no leading zero.
pub fn parse_space_id(name: &str) -> Option<u32> {
    if name.is_empty() || name.starts_with('0') || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok()
}

impl Cluster {
    pub fn volumes(&self) -> Result<Vec<VolumeRow>> {
        let rows: Vec<(u32, String, String, i64)> = self
            .admin
            .conn()?
            .query("SELECT id, name, status, CAST(UNIX_TIMESTAMP(created_at) AS SIGNED) FROM volumes ORDER BY id")
            .map_err(|e| self.admin.err(e))?;
        rows.into_iter()
            .map(|(id, name, status, created)| {
                Ok(VolumeRow {
                    id,
                    name,
                    status: VolumeStatus::parse(&status)?,
                    created,
                })
            })
            .collect()
    }

    pub fn volume_by_name(&self, name: &str) -> Result<Option<VolumeRow>> {
        Ok(self.volumes()?.into_iter().find(|v| v.name == name))
    }

    pub fn create_volume(&self, name: &str) -> Result<u32> {
        self.require_admin_node()?;
        check_volume_name(name)?;
        let mut conn = self.admin.conn()?;
        match conn.exec_drop("INSERT INTO volumes (name) VALUES (?)", (name,)) {
            Ok(()) => Ok(conn.last_insert_id() as u32),
            Err(mysql::Error::MySqlError(e)) if e.code == crate::db::code::DUP_ENTRY => {
                bail!("volume '{name}' already exists")
            }
            Err(e) => Err(self.admin.err(e).into()),
        }
    }

    pub fn set_volume_status(&self, id: u32, status: VolumeStatus) -> Result<()> {
        let mut conn = self.admin.conn()?;
        conn.exec_drop(
            "UPDATE volumes SET status = ? WHERE id = ?",
            (status.as_str(), id),
        )
        .map_err(|e| self.admin.err(e))?;
        let changed = conn.affected_rows() > 0;
        drop(conn);
        if !changed && !self.volumes()?.iter().any(|v| v.id == id) {
            bail!("there is no volume {id}");
        }
        Ok(())
    }

    /// Every space, with its volume's name, for `list_spaces`.
    pub fn space_listing(&self) -> Result<Vec<SpaceListing>> {
        type Row = (String, u32, Option<String>, Option<String>, String);
        let rows: Vec<Row> = self
            .admin
            .conn()?
            .query(
                "SELECT v.name, s.id, s.title, s.resource_id, s.status FROM spaces s
                 JOIN volumes v ON v.id = s.volume_id ORDER BY v.name, s.id",
            )
            .map_err(|e| self.admin.err(e))?;
        rows.into_iter()
            .map(|(volume, id, title, resource_id, status)| {
                Ok(SpaceListing {
                    volume,
                    id,
                    title: title.unwrap_or_default(),
                    resource_id: resource_id.unwrap_or_default(),
                    status: SpaceStatus::parse(&status)?,
                })
            })
            .collect()
    }

    /// Deactivates a space for a restore: only the administrator may use it.
    pub fn deactivate_space(&self, id: u32) -> Result<()> {
        self.change_space_status(id, |status| match status {
            SpaceStatus::Active => Ok(SpaceStatus::Deactivated),
            SpaceStatus::Deactivated => bail!("space {id} is already deactivated"),
            SpaceStatus::Deleted => {
                bail!("space {id} is deleted (reactivate_space({id}) brings it back)")
            }
        })?;
        Ok(())
    }

    /// Reactivates a deactivated (or deleted, not yet purged) space; its
    /// restore id goes up by one. Returns the space as it is now.
    pub fn reactivate_space(&self, id: u32) -> Result<SpaceRow> {
        self.change_space_status(id, |status| match status {
            SpaceStatus::Active => bail!("space {id} is not deactivated"),
            _ => Ok(SpaceStatus::Active),
        })?;
        self.space(id)?
            .ok_or_else(|| anyhow!("there is no space {id}"))
    }

    /// Changes a space's status under a row lock. Reactivating a deleted
    /// space also drops its DELETE job (refused while it is being purged).
    fn change_space_status(
        &self,
        id: u32,
        next: impl Fn(SpaceStatus) -> Result<SpaceStatus>,
    ) -> Result<()> {
        let mut conn = self.admin.conn()?;
        let mut tx = conn
            .start_transaction(Default::default())
            .map_err(|e| self.admin.err(e))?;
        let status: Option<String> = tx
            .exec_first("SELECT status FROM spaces WHERE id = ? FOR UPDATE", (id,))
            .map_err(|e| self.admin.err(e))?;
        let status = SpaceStatus::parse(
            &status.ok_or_else(|| anyhow!("there is no space {id} (see tshs list-spaces)"))?,
        )?;
        let to = next(status)?;
        if status == SpaceStatus::Deleted {
            let purging: Option<u32> = tx
                .exec_first(
                    "SELECT space_id FROM space_moves WHERE space_id = ? AND state = 'purging'",
                    (id,),
                )
                .map_err(|e| self.admin.err(e))?;
            if purging.is_some() {
                bail!("space {id} is being purged by remove-deleted");
            }
            tx.exec_drop(
                "DELETE FROM jobs WHERE job = 'DELETE' AND parameters = ?",
                (format!("space={id}"),),
            )
            .map_err(|e| self.admin.err(e))?;
        }
        let restore = u32::from(to == SpaceStatus::Active);
        tx.exec_drop(
            "UPDATE spaces SET status = ?, restore_id = restore_id + ? WHERE id = ?",
            (to.as_str(), restore, id),
        )
        .map_err(|e| self.admin.err(e))?;
        tx.commit().map_err(|e| self.admin.err(e))?;
        Ok(())
    }

    /// Every space that is not deleted in a volume.
    pub fn spaces_in_volume(&self, volume_id: u32) -> Result<Vec<SpaceRow>> {
        self.query_spaces(
            "WHERE volume_id = ? AND status <> 'deleted' ORDER BY id",
            volume_id,
        )
    }

    /// Every space that is not deleted.
    pub fn live_spaces(&self) -> Result<Vec<SpaceRow>> {
        self.query_spaces("WHERE status <> 'deleted' AND ? ORDER BY id", 1)
    }

    pub fn space(&self, id: u32) -> Result<Option<SpaceRow>> {
        Ok(self.query_spaces("WHERE id = ?", id)?.pop())
    }

    fn query_spaces(&self, filter: &str, arg: u32) -> Result<Vec<SpaceRow>> {
        type Row = (u32, u32, u32, String, u32, Option<Vec<u8>>, bool);
        let rows: Vec<Row> = self
            .admin
            .conn()?
            .exec(
                format!(
                    "SELECT id, volume_id, node_id, status, restore_id, import_from, import_job IS NOT NULL
                     FROM spaces {filter}"
                ),
                (arg,),
            )
            .map_err(|e| self.admin.err(e))?;
        rows.into_iter()
            .map(
                |(id, volume_id, node_id, status, restore_id, import_from, importing)| {
                    Ok(SpaceRow {
                        id,
                        volume_id,
                        node_id,
                        status: SpaceStatus::parse(&status)?,
                        restore_id,
                        import_from: import_from.map(|p| std::ffi::OsString::from_vec(p).into()),
                        importing,
                    })
                },
            )
            .collect()
    }

    /// Creates space `id` in a volume on the node that owns it (a
    /// [`SpaceExists`] error if it exists). Both the
    /// Admin Node row and the space's root on the Storage Node exist, or
    /// neither does.
    pub fn create_space(
        &self,
        volume_id: u32,
        id: u32,
        uid: u32,
        gid: u32,
        mode: u32,
    ) -> Result<SpaceRow> {
        if let Some(s) = self.space(id)? {
            return Err(SpaceExists {
                id,
                deleted: s.status == SpaceStatus::Deleted,
            }
            .into());
        }
        let node_id = placement::owner(&self.ranges()?, id).ok_or_else(|| {
            anyhow!("no storage node owns space {id}: create a storage node first")
        })?;
        let shard = self.shard(node_id)?;
        let mut conn = self.admin.conn()?;
        let mut tx = conn
            .start_transaction(Default::default())
            .map_err(|e| self.admin.err(e))?;
        tx.exec_drop(
            "INSERT INTO spaces (id, volume_id, node_id) VALUES (?, ?, ?)",
            (id, volume_id, node_id),
        )
        .map_err(|e| match e {
            mysql::Error::MySqlError(m) if m.code == crate::db::code::DUP_ENTRY => {
                anyhow::Error::from(SpaceExists { id, deleted: false })
            }
            e => self.admin.err(e).into(),
        })?;
        shard.create_space(id, uid, gid, mode)?;
        if let Err(e) = tx.commit() {
            let _ = shard.purge_space(id);
            return Err(self.admin.err(e).into());
        }
        Ok(SpaceRow {
            id,
            volume_id,
            node_id,
            status: SpaceStatus::Active,
            restore_id: 0,
            import_from: None,
            importing: false,
        })
    }

    /// Marks a space deleted and records the `DELETE` job that purges it.
    pub fn delete_space(&self, id: u32) -> Result<()> {
        let mut conn = self.admin.conn()?;
        let mut tx = conn
            .start_transaction(Default::default())
            .map_err(|e| self.admin.err(e))?;
        tx.exec_drop(
            "UPDATE spaces SET status = 'deleted' WHERE id = ? AND status <> 'deleted'",
            (id,),
        )
        .map_err(|e| self.admin.err(e))?;
        if tx.affected_rows() == 0 {
            bail!("there is no space {id}");
        }
        self.add_job(&mut tx, "DELETE", &format!("space={id}"))?;
        tx.commit().map_err(|e| self.admin.err(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn space_names() {
        assert_eq!(parse_space_id("3"), Some(3));
        assert_eq!(parse_space_id("4294967295"), Some(u32::MAX));
        for bad in ["0", "03", "4294967296", "", "x1", "1 ", "-1"] {
            assert_eq!(parse_space_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn volume_names() {
        assert!(check_volume_name("vol01").is_ok());
        for bad in ["", ".", "..", "a/b", "123"] {
            assert!(check_volume_name(bad).is_err(), "{bad}");
        }
        assert!(check_volume_name(&"v".repeat(256)).is_err());
    }
}

/// The refusal of [`Cluster::create_space`] for a space ID in use.
#[derive(Debug, thiserror::Error)]
#[error("space {id} already exists{}", if *deleted { " (deleted, not yet purged)" } else { "" })]
pub struct SpaceExists {
    pub id: u32,
    pub deleted: bool,
}
