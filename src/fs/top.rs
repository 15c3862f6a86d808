//! The root and the volume directories: they exist only in the Admin Node
//! (its volumes, and the spaces of each), read from the cached view. A
//! volume's entries are its spaces, named by their decimal ID; `mkdir` and
//! `rmdir` there create and delete spaces.

use super::admin_view::admin_failed;
use super::namespace::Listing;
use super::{Attr, Caller, Error, Fs, FsResult, Node, attr, meta};
use crate::cluster::VolumeStatus;

impl Fs {
    /// The root directory: one link per volume, as old as the oldest.
    pub(super) fn root_attr(&self, ino: u64) -> FsResult<Attr> {
        let v = self.view()?;
        let n = v.volumes.len() as u32;
        let t = v.volumes.iter().map(|v| v.created).min().unwrap_or(0);
        Ok(Attr::synthetic_dir(ino, 2 + n, t * 1_000_000_000))
    }

    /// Volume `v`'s directory: one link per space.
    pub(super) fn volume_attr(&self, ino: u64, v: u32) -> FsResult<Attr> {
        let view = self.view()?;
        let Some(vol) = view.volumes.iter().find(|x| x.id == v) else {
            return Err(Error::ENOENT);
        };
        let t = vol.created * 1_000_000_000;
        let n = view.spaces.values().filter(|s| s.volume_id == v).count() as u32;
        Ok(Attr::synthetic_dir(ino, 2 + n, t))
    }

    /// The volume called `name`, read afresh if this view does not know it.
    pub(super) fn lookup_volume(&self, name: &[u8]) -> FsResult<Attr> {
        let mut v = self.view()?;
        if !v.volumes.iter().any(|x| x.name.as_bytes() == name) {
            drop(v);
            v = self.reload_view()?;
        }
        let vol = v
            .volumes
            .iter()
            .find(|x| x.name.as_bytes() == name)
            .ok_or(Error::ENOENT)?;
        let ino = Node::Volume(vol.id).ino();
        drop(v);
        self.getattr(ino)
    }

    /// The space called `name` (its ID) in volume `vol`: its root directory.
    pub(super) fn lookup_space(&self, vol: u32, name: &[u8]) -> FsResult<Attr> {
        let id = std::str::from_utf8(name)
            .ok()
            .and_then(crate::cluster::parse_space_id)
            .ok_or(Error::ENOENT)?;
        let (s, _) = self.space(id)?;
        if s.volume_id != vol {
            return Err(Error::ENOENT);
        }
        self.getattr(Node::Space(id, 1).ino())
    }

    /// The root's entries after `offset`: `.`, `..`, then the volumes.
    pub(super) fn list_root(&self, ino: u64, offset: u64) -> FsResult<Listing> {
        let mut out = self.dots(ino, offset, ino);
        let vols = self.view()?.volumes.clone();
        for (i, v) in vols.iter().enumerate() {
            let o = i as u64 + 3;
            if o > offset {
                out.push((
                    o,
                    v.name.clone().into_bytes(),
                    Attr::synthetic_dir(Node::Volume(v.id).ino(), 2, v.created * 1_000_000_000),
                ));
            }
        }
        Ok(out)
    }

    /// Volume `vol`'s entries after `offset`: `.`, `..`, then at most
    /// `limit` spaces.
    pub(super) fn list_volume(
        &self,
        ino: u64,
        vol: u32,
        offset: u64,
        limit: usize,
    ) -> FsResult<Listing> {
        let mut out = self.dots(ino, offset, attr::ROOT_INO);
        let mut ids: Vec<u32> = self
            .view()?
            .spaces
            .values()
            .filter(|s| s.volume_id == vol)
            .map(|s| s.id)
            .collect();
        ids.sort_unstable();
        // Offsets are the space IDs + 2: stable while spaces come and go.
        for id in ids
            .into_iter()
            .filter(|id| u64::from(*id) + 2 > offset)
            .take(limit)
        {
            match self.getattr(Node::Space(id, 1).ino()) {
                Ok(a) => out.push((u64::from(id) + 2, id.to_string().into_bytes(), a)),
                Err(e) => {
                    log::warn!("space {id} listed but not readable: errno {}", e.errno())
                }
            }
        }
        Ok(out)
    }

    /// `mkdir` in volume `vol`: creates the space whose ID is `name`.
    pub(super) fn create_space(
        &self,
        vol: u32,
        name: &[u8],
        mode: u32,
        caller: Caller,
    ) -> FsResult<Attr> {
        meta::check_name(name)?;
        let text = String::from_utf8_lossy(name);
        if mode & libc::S_IFMT != libc::S_IFDIR {
            log::warn!(
                "refused to create file {text:?} directly in volume {vol}: only space directories live there"
            );
            return Err(Error::EPERM);
        }
        let Some(id) = crate::cluster::parse_space_id(&text) else {
            log::warn!(
                "refused mkdir {text:?} in volume {vol}: a space directory's name is its decimal space ID"
            );
            return Err(Error::EINVAL);
        };
        let view = self.view()?;
        let status = view
            .volumes
            .iter()
            .find(|v| v.id == vol)
            .map(|v| v.status)
            .ok_or(Error::ENOENT)?;
        drop(view);
        if status == VolumeStatus::Standby {
            return Err(Error::EROFS);
        }
        match self.cluster.space(id) {
            Ok(Some(_)) => return Err(Error::EEXIST),
            Ok(None) => {}
            Err(e) => return Err(admin_failed(e)),
        }
        self.cluster
            .create_space(vol, id, caller.uid, caller.gid, mode & 0o7777)
            .map_err(|e| {
                if e.is::<crate::cluster::SpaceExists>() {
                    Error::EEXIST
                } else {
                    super::error::failed(format!("creating space {id} in volume {vol}: {e:#}"))
                }
            })?;
        self.drop_admin_view();
        log::info!("space {id} created in volume {vol}");
        self.getattr(Node::Space(id, 1).ino())
    }

    /// `rmdir` of `name` in volume `vol` (whose inode is `parent`): deletes
    /// the space if its root directory is empty.
    pub(super) fn delete_space(&self, parent: u64, vol: u32, name: &[u8]) -> FsResult<()> {
        let a = self.lookup(parent, name)?;
        let Node::Space(space, _) = Node::from_ino(a.ino) else {
            return Err(Error::ENOENT);
        };
        self.shard_rw_after_import(space)?;
        self.commit_creates(space);
        if !meta::is_empty_dir(&self.shard_after_import(space)?, space, 1)? {
            return Err(Error::ENOTEMPTY);
        }
        self.cluster.delete_space(space).map_err(admin_failed)?;
        self.drop_admin_view();
        log::info!("space {space} in volume {vol} deleted (DELETE job recorded)");
        Ok(())
    }
}
