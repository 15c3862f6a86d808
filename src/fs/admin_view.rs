//! The Admin Node as the filesystem sees it: a cached view of its volumes
//! and spaces (reused for `admin_ttl`), and who may use a space deactivated
//! for a restore.

use std::collections::HashMap;
use std::sync::RwLockReadGuard;
use std::time::Instant;

use super::{Error, Fs, FsResult, Node};
use crate::cluster::{SpaceRow, SpaceStatus, VolumeRow};

/// Cached view of the Admin Node's volumes and spaces.
#[derive(Default)]
pub(super) struct AdminView {
    loaded: Option<Instant>,
    pub(super) volumes: Vec<VolumeRow>,
    /// Spaces by id (not deleted).
    pub(super) spaces: HashMap<u32, SpaceRow>,
}

impl Fs {
    /// Forgets cached volumes and spaces (after a change by this mount).
    pub fn drop_admin_view(&self) {
        self.view.write().unwrap().loaded = None;
    }

    /// A new topology epoch: forgets all placement and waits until nothing
    /// still uses the old one, so the epoch can be acknowledged.
    pub fn topology_changed(&self) {
        self.drop_admin_view();
        self.router.topology_changed();
    }

    /// The cached view, read afresh once older than `admin_ttl`. While the
    /// Admin Node cannot be reached, the last view serves (tried again a
    /// TTL later): spaces' placement is confirmed by their Storage Nodes
    /// (see `cluster::Router`), and changes of volumes and spaces need the
    /// Admin Node anyway.
    pub(super) fn view(&self) -> FsResult<RwLockReadGuard<'_, AdminView>> {
        {
            let v = self.view.read().unwrap();
            if v.loaded.is_some_and(|t| t.elapsed() < self.cfg.admin_ttl) {
                return Ok(v);
            }
        }
        match self.reload_view() {
            Err(e) if self.view.read().unwrap().loaded.is_some() => {
                log::warn!("{e}: serving the last known volumes and spaces");
                self.view.write().unwrap().loaded = Some(Instant::now());
                Ok(self.view.read().unwrap())
            }
            r => r,
        }
    }

    /// Reads volumes and spaces afresh (one query each).
    pub(super) fn reload_view(&self) -> FsResult<RwLockReadGuard<'_, AdminView>> {
        let volumes = self.cluster.volumes().map_err(admin_failed)?;
        let spaces = self
            .cluster
            .live_spaces()
            .map_err(admin_failed)?
            .into_iter()
            .map(|s| (s.id, s))
            .collect();
        *self.view.write().unwrap() = AdminView {
            loaded: Some(Instant::now()),
            volumes,
            spaces,
        };
        Ok(self.view.read().unwrap())
    }

    /// A space and its volume, read afresh if this view does not know it.
    pub(super) fn space(&self, space: u32) -> FsResult<(SpaceRow, VolumeRow)> {
        let mut v = self.view()?;
        if !v.spaces.contains_key(&space) {
            // Another process may have created it within the TTL.
            drop(v);
            v = self.reload_view()?;
        }
        let s = v.spaces.get(&space).cloned().ok_or(Error::ENOENT)?;
        let vol = v
            .volumes
            .iter()
            .find(|x| x.id == s.volume_id)
            .cloned()
            .ok_or(Error::ENOENT)?;
        Ok((s, vol))
    }

    /// Root and the `admin_gid` group may use spaces deactivated for a
    /// restore (to copy the backup in); nobody else.
    pub(super) fn sees_deactivated(&self, uid: u32, gid: u32) -> bool {
        uid == 0 || self.cfg.admin_gid == Some(gid)
    }

    /// Refuses a deactivated space (being restored) to everyone but root
    /// and the configured admin group.
    pub fn check_caller(&self, ino: u64, uid: u32, gid: u32) -> FsResult<()> {
        let Node::Space(space, _) = Node::from_ino(ino) else {
            return Ok(());
        };
        if self.sees_deactivated(uid, gid) {
            return Ok(());
        }
        match self.space(space) {
            Ok((s, _)) if s.status == SpaceStatus::Deactivated => {
                log::debug!("space {space} is deactivated for a restore: refused to uid {uid}");
                Err(Error::EACCES)
            }
            _ => Ok(()),
        }
    }
}

/// An Admin Node failure: logged, and `EIO` to the caller.
pub(super) fn admin_failed(e: anyhow::Error) -> Error {
    super::error::failed(format!("admin node: {e:#}"))
}
