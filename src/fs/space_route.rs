//! The Storage Node route of a space for an operation inside it. A space
//! created to import a directory still lives on disk until first used: the
//! route waits for its whole tree to be imported (see [`crate::import`]).

use std::path::Path;
use std::time::Instant;

use super::error::failed;
use super::{Error, Fs, FsResult};
use crate::cluster::{Route, VolumeStatus};

impl Fs {
    /// The route to the Storage Node that holds `space`. The first use of a
    /// space still on disk imports its whole tree first ([`Fs::import_tree`]).
    pub(super) fn shard_after_import(&self, space: u32) -> FsResult<Route> {
        let (s, _) = self.space(space)?;
        if let Some(dir) = s.import_from {
            self.import_tree(space, &dir)?;
        }
        Ok(self.router.route(space))
    }

    /// Like [`Fs::shard_after_import`], and refuses changes to a space in a
    /// Standby volume (before importing anything).
    pub(super) fn shard_rw_after_import(&self, space: u32) -> FsResult<Route> {
        let (_, vol) = self.space(space)?;
        if vol.status == VolumeStatus::Standby {
            return Err(Error::EROFS);
        }
        self.shard_after_import(space)
    }

    /// Brings a space's tree in from the disk it is imported from, the first
    /// time something inside the space is used (see [`crate::import`]); its
    /// files' data follows later. A thread that waited for another's import
    /// of the same space finds it done.
    fn import_tree(&self, space: u32, dir: &Path) -> FsResult<()> {
        let lock = self
            .importing
            .lock()
            .unwrap()
            .entry(space)
            .or_default()
            .clone();
        let _one = lock.lock().unwrap();
        let started = Instant::now();
        match crate::import::bring_tree_in(&self.cluster, space, dir) {
            Ok(Some(t)) => log::info!(
                "space {space}: imported {} inodes and {} names from {} in {:.1?} ({} bytes of data to follow)",
                t.inodes,
                t.entries,
                dir.display(),
                started.elapsed(),
                t.bytes
            ),
            Ok(None) => {}
            Err(e) => return Err(failed(format!("space {space}: {e:#}"))),
        }
        drop(self.reload_view()?);
        Ok(())
    }
}
