//! The filesystem core: POSIX semantics for the tree
//! `/<volume>/<space>/…` on top of the Admin Node and the Storage Nodes.
//!
//! The root and the volumes exist only in the Admin Node; everything inside
//! a space lives on the Storage Node that owns it ([`meta`] for names and
//! attributes, [`data`] for contents). This layer knows nothing of FUSE: it
//! takes plain arguments and returns plain values or an [`Error`], so tests
//! can drive it directly. Durability: every namespace change is committed
//! before the call returns; file data at flush/fsync/close.

pub mod acl;
pub mod attr;
pub mod cache;
pub mod caller;
pub mod data;
pub mod error;
pub mod meta;
pub mod own_xattrs;
pub mod reaper;
pub mod statfs;
pub mod xattr_cache;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

pub use attr::{Attr, Node};
pub use error::{Error, FsResult};

use crate::cluster::{Cluster, Route, Router, SpaceRow, SpaceStatus, VolumeRow, VolumeStatus};
use cache::DataCache;
use data::OpenInode;
use meta::{NewInode, SetAttr};

pub use crate::clock::now_ns;

/// Tunables of a mount.
#[derive(Clone, Debug)]
pub struct FsConfig {
    /// Bytes of file data kept in memory (the LRU).
    pub cache_bytes: usize,
    /// How long the Admin Node's lists of volumes and spaces are reused.
    pub admin_ttl: Duration,
    /// Deleted inodes older than this are purged by the reaper.
    pub reap_grace: Duration,
    /// Besides root, members of this group (primary gid) may use a
    /// deactivated space.
    pub admin_gid: Option<u32>,
    /// How long xattrs read from the database are reused (the attribute TTL).
    pub xattr_ttl: Duration,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            cache_bytes: 256 << 20,
            admin_ttl: Duration::from_secs(1),
            reap_grace: Duration::from_secs(60),
            admin_gid: None,
            xattr_ttl: Duration::from_secs(1),
        }
    }
}

pub use caller::Caller;

/// What `write` hands back to the kernel adapter.
pub struct Written {
    pub len: u32,
    /// The write cleared set-user-ID or set-group-ID: the kernel's cached
    /// attributes are stale.
    pub mode_changed: bool,
}

/// What `open` hands back to the kernel adapter.
#[derive(Clone, Copy, Debug)]
pub struct Opened {
    pub fh: u64,
    /// The file is unchanged since this mount last cached it.
    pub keep_cache: bool,
    /// Direct I/O: each write(2) reaches us whole, not split at page
    /// boundaries, so one append is one transaction and never interleaves.
    pub direct: bool,
    /// The file changed within [`CHANGING_NS`]: it may be growing (a log).
    pub changing: bool,
}

/// A file changed this recently may be appended to while it is read (here
/// or through another mount): see `fuse::fopen_flags`.
pub const CHANGING_NS: i64 = 60_000_000_000;

/// An open file handle.
struct Handle {
    node: Arc<OpenInode>,
    append: bool,
}

/// Cached view of the Admin Node's volumes and spaces.
#[derive(Default)]
struct AdminView {
    loaded: Option<Instant>,
    volumes: Vec<VolumeRow>,
    /// Spaces by id (not deleted).
    spaces: HashMap<u32, SpaceRow>,
}

pub struct Fs {
    cluster: Cluster,
    /// Where each space's rows are, across moves.
    router: Arc<Router>,
    cfg: FsConfig,
    /// This mount's access point id: the holder of files unlinked while open.
    holder: AtomicU64,
    view: RwLock<AdminView>,
    open: Mutex<HashMap<(u32, u64), Arc<OpenInode>>>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    pub cache: Arc<DataCache>,
    xattrs: xattr_cache::XattrCache,
    /// The last statfs count and when it was taken.
    usage: Mutex<Option<(Instant, (u64, u64))>>,
    /// Hands files whose buffers passed the threshold to the flush workers.
    flusher: crossbeam_channel::Sender<Arc<OpenInode>>,
    /// Hands read-ahead work to the prefetch workers.
    prefetcher: crossbeam_channel::Sender<data::Prefetch>,
    /// Attribute changes not yet committed (see [`Fs::setattr`]).
    changes: Mutex<HashMap<(u32, u64), meta::AttrChange>>,
    /// Held while deferred changes are committed (ordering).
    change_commit: Mutex<()>,
    /// How many open files have an uncommitted create (see [`data::PendingCreate`]).
    pending: Arc<AtomicUsize>,
    /// Inode numbers reserved for deferred creates, per space: [next, end).
    reserved_ids: Mutex<HashMap<u32, (u64, u64)>>,
    /// Per space, held while its tree is imported from disk on first use.
    importing: Mutex<HashMap<u32, Arc<Mutex<()>>>>,
}

/// How often `open(O_CREAT)` tries again when the name it found taken is
/// gone by the time it looks (renamed away by a log rotation).
const CREATE_TRIES: u32 = 8;

/// How long a statfs answer is reused.
const STATFS_TTL: Duration = Duration::from_secs(5);

/// The part of the configured cache size kept for write buffers.
const WRITE_BUFFER_BUDGET: usize = 48 << 20;

/// Inode numbers a mount reserves at once for deferred creates.
const ID_BLOCK: u64 = 64;

/// Background flush workers: they write buffers while writers go on.
const FLUSH_WORKERS: usize = 4;

/// Prefetch workers: each runs one extent query at a time, so a sequential
/// reader has this many queries in flight.
const PREFETCH_WORKERS: usize = 4;

/// Starts `n` threads named `name-<i>` that run `work` on each job sent to
/// the returned channel, with the shared data cache.
fn spawn_workers<T: Send + 'static>(
    name: &str,
    n: usize,
    cache: &Arc<DataCache>,
    work: fn(T, &DataCache),
) -> crossbeam_channel::Sender<T> {
    let (tx, rx) = crossbeam_channel::unbounded::<T>();
    for i in 0..n {
        let (rx, cache) = (rx.clone(), cache.clone());
        std::thread::Builder::new()
            .name(format!("{name}-{i}"))
            .spawn(move || {
                for job in rx {
                    work(job, &cache);
                }
            })
            .expect("spawn worker thread");
    }
    tx
}

impl Fs {
    pub fn new(cluster: Cluster, cfg: FsConfig) -> Fs {
        // `cache_bytes` bounds all file data in memory: write buffers (at
        // most twice the flush threshold per file being written) and the
        // allocator's slack take their share from it, the LRU gets the rest.
        let cache = Arc::new(DataCache::new(
            cfg.cache_bytes
                .saturating_sub(WRITE_BUFFER_BUDGET)
                .max(1 << 20),
        ));
        Fs {
            router: Router::new(cluster.clone()),
            cluster,
            flusher: spawn_workers(
                "tshs-flush",
                FLUSH_WORKERS,
                &cache,
                |node: Arc<OpenInode>, c| node.flush_inflight(c),
            ),
            prefetcher: spawn_workers(
                "tshs-prefetch",
                PREFETCH_WORKERS,
                &cache,
                |p: data::Prefetch, c| p.node.prefetch(c, p.first, p.last, p.version),
            ),
            pending: Arc::default(),
            changes: Mutex::default(),
            change_commit: Mutex::default(),
            reserved_ids: Mutex::default(),
            importing: Mutex::default(),
            xattrs: xattr_cache::XattrCache::new(100_000, cfg.xattr_ttl),
            usage: Mutex::default(),
            cache,
            cfg,
            holder: AtomicU64::new(0),
            view: RwLock::default(),
            open: Mutex::default(),
            handles: Mutex::default(),
            next_fh: AtomicU64::new(1),
        }
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// This mount's access point: the holder of its open unlinked files,
    /// and the heartbeat its cached placement depends on.
    pub fn set_access_point(&self, ap: &crate::cluster::AccessPoint) {
        self.holder.store(ap.id(), Ordering::Release);
        self.router.set_liveness(ap.liveness());
    }

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

    fn view(&self) -> FsResult<std::sync::RwLockReadGuard<'_, AdminView>> {
        {
            let v = self.view.read().unwrap();
            if v.loaded.is_some_and(|t| t.elapsed() < self.cfg.admin_ttl) {
                return Ok(v);
            }
        }
        self.reload_view()
    }

    /// Reads volumes and spaces afresh (one query each).
    fn reload_view(&self) -> FsResult<std::sync::RwLockReadGuard<'_, AdminView>> {
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

    fn space(&self, space: u32) -> FsResult<(SpaceRow, VolumeRow)> {
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

    /// The Storage Node of a space that may be used by `caller`.
    fn shard(&self, space: u32) -> FsResult<Route> {
        let (s, _) = self.space(space)?;
        if let Some(dir) = s.import_from {
            self.import_tree(space, &dir)?;
        }
        Ok(self.router.route(space))
    }

    /// Brings a space's tree in from the disk it is imported from, the first
    /// time something inside the space is used (see [`crate::import`]); its
    /// files' data follows later. A thread that waited for another's import
    /// of the same space finds it done.
    fn import_tree(&self, space: u32, dir: &std::path::Path) -> FsResult<()> {
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
            Err(e) => {
                log::error!("space {space}: {e:#}");
                return Err(Error::EIO);
            }
        }
        drop(self.reload_view()?);
        Ok(())
    }

    /// Root and the `admin_gid` group may use spaces deactivated for a
    /// restore (to copy the backup in); nobody else.
    fn sees_deactivated(&self, uid: u32, gid: u32) -> bool {
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

    /// Like [`Fs::shard`], and refuses changes to a space in a Standby volume.
    fn shard_rw(&self, space: u32) -> FsResult<Route> {
        let (_, vol) = self.space(space)?;
        if vol.status == VolumeStatus::Standby {
            return Err(Error::EROFS);
        }
        self.shard(space)
    }

    fn is_open(&self, space: u32) -> impl Fn(u64) -> Option<u64> + '_ {
        move |ino| {
            let open = self.open.lock().unwrap();
            let oi = open.get(&(space, ino & 0xffff_ffff))?;
            oi.unlinked.store(true, Ordering::Release);
            Some(self.holder.load(Ordering::Acquire))
        }
    }

    // ---- attributes ----

    pub fn getattr(&self, ino: u64) -> FsResult<Attr> {
        match Node::from_ino(ino) {
            Node::Root => {
                let v = self.view()?;
                let n = v.volumes.len() as u32;
                let t = v.volumes.iter().map(|v| v.created).min().unwrap_or(0);
                Ok(Attr::synthetic_dir(ino, 2 + n, t * 1_000_000_000))
            }
            Node::Volume(v) => {
                let view = self.view()?;
                let Some(vol) = view.volumes.iter().find(|x| x.id == v) else {
                    return Err(Error::ENOENT);
                };
                let t = vol.created * 1_000_000_000;
                let n = view.spaces.values().filter(|s| s.volume_id == v).count() as u32;
                Ok(Attr::synthetic_dir(ino, 2 + n, t))
            }
            Node::Space(space, i) => {
                let change = self.changes.lock().unwrap().get(&(space, i)).copied();
                let open = self.open.lock().unwrap().get(&(space, i)).cloned();
                if let Some(mut a) = open.as_ref().and_then(|o| o.pending_attr()) {
                    if let Some(c) = change {
                        c.apply(&mut a);
                    }
                    return Ok(a);
                }
                if i == 1
                    && let Some(dir) = self.space(space)?.0.import_from
                {
                    // Not imported yet: `ls -l` of a volume must not import
                    // every space in it.
                    return crate::import::dir_attr(ino, &dir).map_err(|e| {
                        log::error!("space {space}: {e:#}");
                        Error::EIO
                    });
                }
                let mut a = meta::getattr(&self.shard(space)?, space, i)?;
                if let Some(c) = change {
                    c.apply(&mut a);
                }
                if let Some(o) = &open {
                    o.set_owner_mode(a.gid, a.mode);
                    if let Some(size) = o.local_size() {
                        a.size = size;
                    }
                }
                Ok(a)
            }
        }
    }

    pub fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<Attr> {
        if name.len() > meta::NAME_MAX {
            return Err(Error::ENAMETOOLONG);
        }
        match Node::from_ino(parent) {
            Node::Root => {
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
            Node::Volume(vol) => {
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
            Node::Space(space, dir) => {
                self.commit_creates(space);
                meta::lookup(&self.shard(space)?, space, dir, name).map(|a| self.with_changes(a))
            }
        }
    }

    /// Changes attributes. A change of mode, owner or times only is deferred:
    /// kept in this mount (its getattr shows it at once) and committed with
    /// the next namespace operation in the space (inside a rename's own
    /// transaction), an fsync, or within a second — so rsync's `chown; chmod;
    /// utimes; rename` of a copied file is one transaction instead of four.
    /// A size change commits at once.
    ///
    /// A size change by a caller without `CAP_FSETID` clears set-user-ID
    /// and set-group-ID as a local disk does (the kernel's FUSE rule keeps
    /// set-group-ID of a group that may not execute, Linux's own clears it
    /// for callers outside the group; with atomic `O_TRUNC` it sends nothing).
    pub fn setattr(&self, ino: u64, s: &SetAttr, caller: Caller) -> FsResult<Attr> {
        let Node::Space(space, i) = Node::from_ino(ino) else {
            return Err(Error::EPERM);
        };
        let shard = self.shard_rw(space)?;
        if s.size.is_none() {
            let mut a = self.getattr(ino)?;
            let change = meta::AttrChange {
                mode: s.mode,
                uid: s.uid,
                gid: s.gid,
                atime: s.atime,
                mtime: s.mtime,
                ctime: s.ctime.unwrap_or_else(now_ns),
            };
            let mut changes = self.changes.lock().unwrap();
            let merged = match changes.get(&(space, i)) {
                Some(earlier) => earlier.then(change),
                None => change,
            };
            changes.insert((space, i), merged);
            drop(changes);
            change.apply(&mut a);
            self.note_owner_mode(space, i, &a);
            return Ok(a);
        }
        self.commit_pending(space);
        let open = self.open.lock().unwrap().get(&(space, i)).cloned();
        // Decided on the row the transaction locks, not on a cached mode.
        let setid = |gid, mode| caller.setid_cleared(gid, mode);
        let a = match (open, s.size) {
            // An open file: flush, truncate and reset its buffers under its
            // lock, so no write or flush slips in between.
            (Some(o), Some(_)) => {
                o.rewrite(&self.cache, || meta::setattr(&shard, space, i, s, &setid))
            }
            _ => {
                self.cache.invalidate(space, i);
                meta::setattr(&shard, space, i, s, &setid)
            }
        }?;
        self.note_owner_mode(space, i, &a);
        Ok(a)
    }

    /// Keeps an open file's group and mode (see [`OpenInode::owner_mode`])
    /// as this mount set them.
    fn note_owner_mode(&self, space: u32, i: u64, a: &Attr) {
        if let Some(o) = self.open.lock().unwrap().get(&(space, i)) {
            o.set_owner_mode(a.gid, a.mode);
        }
    }

    // ---- namespace ----

    /// Creates a node of any kind. In a volume only `mkdir` of a space ID is allowed.
    /// `umask` applies unless the parent has a default ACL (see [`acl`]).
    #[allow(clippy::too_many_arguments)]
    pub fn mknod(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        rdev: u32,
        target: Option<&[u8]>,
        caller: Caller,
    ) -> FsResult<Attr> {
        match Node::from_ino(parent) {
            Node::Root => {
                log::warn!(
                    "refused to create {:?} in the root: volumes are made with tshs create-volume",
                    String::from_utf8_lossy(name)
                );
                Err(Error::EPERM)
            }
            Node::Volume(vol) => self.create_space(vol, name, mode & !umask, caller),
            Node::Space(space, dir) => {
                self.commit_pending(space);
                if let Some(t) = target
                    && t.len() > meta::PATH_MAX
                {
                    return Err(Error::ENAMETOOLONG);
                }
                let (mode, xattrs) = self.new_mode(parent, mode, umask)?;
                let new = NewInode {
                    mode,
                    uid: caller.uid,
                    gid: caller.gid,
                    rdev,
                    target,
                    xattrs: &xattrs,
                };
                let a = meta::create(&self.shard_rw(space)?, space, dir, name, &new)?;
                if xattrs.is_empty() {
                    // Known to have none: a create inside it asks (default ACL).
                    self.xattrs.put_empty(a.ino);
                }
                Ok(a)
            }
        }
    }

    /// The mode and ACL xattrs of a new inode in `parent` (see [`acl::inherit`]).
    fn new_mode(&self, parent: u64, mode: u32, umask: u32) -> FsResult<(u32, acl::BornXattrs)> {
        if mode & libc::S_IFMT == libc::S_IFLNK {
            return Ok((mode, Vec::new()));
        }
        let x = self.xattrs_of(parent)?;
        let default = x
            .as_ref()
            .and_then(|x| x.iter().find(|(n, _)| n == acl::DEFAULT));
        Ok(acl::inherit(
            default.map(|(_, v)| v.as_slice()),
            mode,
            umask,
        ))
    }

    fn create_space(&self, vol: u32, name: &[u8], mode: u32, caller: Caller) -> FsResult<Attr> {
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
                log::error!("creating space {id} in volume {vol}: {e:#}");
                if e.to_string().contains("already exists") {
                    Error::EEXIST
                } else {
                    Error::EIO
                }
            })?;
        self.drop_admin_view();
        log::info!("space {id} created in volume {vol}");
        self.getattr(Node::Space(id, 1).ino())
    }

    pub fn unlink(&self, parent: u64, name: &[u8], rmdir: bool) -> FsResult<()> {
        match Node::from_ino(parent) {
            Node::Root => Err(Error::EPERM),
            Node::Volume(vol) => {
                if !rmdir {
                    return Err(Error::EPERM);
                }
                let a = self.lookup(parent, name)?;
                let Node::Space(space, _) = Node::from_ino(a.ino) else {
                    return Err(Error::ENOENT);
                };
                self.shard_rw(space)?;
                self.commit_creates(space);
                if !meta::is_empty_dir(&self.shard(space)?, space, 1)? {
                    return Err(Error::ENOTEMPTY);
                }
                self.cluster.delete_space(space).map_err(admin_failed)?;
                self.drop_admin_view();
                log::info!("space {space} in volume {vol} deleted (DELETE job recorded)");
                Ok(())
            }
            Node::Space(space, dir) => {
                let shard = self.shard_rw(space)?;
                self.commit_pending(space);
                meta::unlink(&shard, space, dir, name, rmdir, &self.is_open(space)).map(|_| ())
            }
        }
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        match (Node::from_ino(parent), Node::from_ino(newparent)) {
            (Node::Space(s1, p1), Node::Space(s2, p2)) => {
                if s1 != s2 {
                    return Err(Error::EXDEV);
                }
                let shard = self.shard_rw(s1)?;
                self.commit_creates(s1);
                self.flush_changed_files(Some(s1));
                // Deferred attribute changes ride in the rename's transaction
                // (rsync: chmod, chown, utimes, then rename the temporary file).
                let order = self.change_commit.lock().unwrap();
                let changes: Vec<(u64, meta::AttrChange)> = self
                    .snapshot_changes(Some(s1))
                    .into_iter()
                    .map(|((_, i), c)| (i, c))
                    .collect();
                let _order = if changes.is_empty() {
                    drop(order);
                    None
                } else {
                    Some(order)
                };
                let r = meta::rename(
                    &shard,
                    s1,
                    p1,
                    name,
                    p2,
                    newname,
                    flags,
                    &changes,
                    &self.is_open(s1),
                );
                if r.is_ok() {
                    self.forget_changes(s1, &changes);
                }
                r
            }
            (Node::Space(..), _) | (_, Node::Space(..)) => Err(Error::EXDEV),
            _ => Err(Error::EPERM),
        }
    }

    pub fn link(&self, ino: u64, newparent: u64, newname: &[u8]) -> FsResult<Attr> {
        match (Node::from_ino(ino), Node::from_ino(newparent)) {
            (Node::Space(s1, i), Node::Space(s2, p)) => {
                if s1 != s2 {
                    return Err(Error::EXDEV);
                }
                self.commit_pending(s1);
                meta::link(&self.shard_rw(s1)?, s1, i, p, newname)
            }
            (Node::Space(..), _) => Err(Error::EXDEV),
            _ => Err(Error::EPERM),
        }
    }

    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        match Node::from_ino(ino) {
            Node::Space(s, i) => meta::readlink(&self.shard(s)?, s, i),
            _ => Err(Error::EINVAL),
        }
    }

    /// Directory entries after `offset` (0 = from the start), each with the
    /// offset of the entry after it. `.` and `..` come first.
    pub fn readdir(
        &self,
        ino: u64,
        offset: u64,
        limit: usize,
    ) -> FsResult<Vec<(u64, Vec<u8>, Attr)>> {
        let mut out = Vec::new();
        let dot = |o: u64, parent: u64| -> FsResult<Vec<(u64, Vec<u8>, Attr)>> {
            let mut v = Vec::new();
            if o < 1 {
                v.push((1, b".".to_vec(), self.getattr(ino)?));
            }
            if o < 2 {
                v.push((
                    2,
                    b"..".to_vec(),
                    self.getattr(parent).or_else(|_| self.getattr(ino))?,
                ));
            }
            Ok(v)
        };
        match Node::from_ino(ino) {
            Node::Root => {
                out.extend(dot(offset, ino)?);
                let vols = self.view()?.volumes.clone();
                for (i, v) in vols.iter().enumerate() {
                    let o = i as u64 + 3;
                    if o > offset {
                        out.push((
                            o,
                            v.name.clone().into_bytes(),
                            Attr::synthetic_dir(
                                Node::Volume(v.id).ino(),
                                2,
                                v.created * 1_000_000_000,
                            ),
                        ));
                    }
                }
            }
            Node::Volume(vol) => {
                out.extend(dot(offset, attr::ROOT_INO)?);
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
            }
            Node::Space(space, dir) => {
                let shard = self.shard(space)?;
                self.commit_creates(space);
                if offset < 2 {
                    let parent = if dir == 1 {
                        self.space(space)
                            .map(|(s, _)| Node::Volume(s.volume_id).ino())?
                    } else {
                        meta::parent_of(&shard, space, dir)?
                            .map_or(ino, |p| Node::Space(space, p).ino())
                    };
                    out.extend(dot(offset, parent)?);
                }
                let after = offset.saturating_sub(2);
                for e in meta::readdir(&shard, space, dir, after, limit)? {
                    if !e.has_xattrs {
                        self.xattrs.put_empty(e.attr.ino);
                    }
                    out.push((e.seq + 2, e.name, self.with_changes(e.attr)));
                }
            }
        }
        Ok(out)
    }

    // ---- files ----

    /// Opens a file; returns the handle and whether the kernel may keep its
    /// cached pages (the file did not change since we last saw it).
    /// `O_APPEND` handles must bypass the kernel's page cache (see
    /// [`Opened::direct`]).
    pub fn open(&self, ino: u64, flags: i32, caller: Caller) -> FsResult<Opened> {
        let Node::Space(space, i) = Node::from_ino(ino) else {
            return Err(Error::EISDIR);
        };
        let writing = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        let shard = if writing {
            self.shard_rw(space)?
        } else {
            self.shard(space)?
        };
        self.commit_creates(space);
        // The attributes (close-to-open: has the file changed?), and for a
        // small file read-only its data too, in one round trip.
        let asked = data::ticket();
        let (a, head) = meta::getattr_with_head(&shard, space, i, !writing)?;
        if a.is_dir() {
            return Err(Error::EISDIR);
        }
        let mut keep = false;
        let node = {
            let mut open = self.open.lock().unwrap();
            let node = open
                .entry((space, i))
                .or_insert_with(|| {
                    let (generation, valid) =
                        self.cache
                            .generation_for(space, i, (a.mtime, a.ctime, a.size));
                    keep = valid;
                    if let Some(data) = head {
                        self.cache.put(space, i, generation, 0, Arc::new(data));
                    }
                    Arc::new(OpenInode::new(
                        space,
                        i,
                        shard.clone(),
                        (a.gid, a.mode),
                        a.size,
                        generation,
                        None,
                        self.pending.clone(),
                    ))
                })
                .clone();
            *node.opens.lock().unwrap() += 1;
            node
        };
        // With this mount's deferred chmod (see `OpenInode::owner_mode`).
        let now = self.with_changes(a);
        node.set_owner_mode(now.gid, now.mode);
        // Also when this open made the node: another may have found it since.
        let refreshed = node.refresh(&self.cache, (a.mtime, a.ctime, a.size), asked, || {
            let a = meta::getattr(&shard, space, i)?;
            Ok((a.mtime, a.ctime, a.size))
        });
        if let Err(e) = refreshed {
            self.release_node(&node);
            return Err(e);
        }
        // Truncate by the size this mount sees: it may have buffered data.
        // Also an empty file with set-user-ID or set-group-ID: a truncate
        // may clear them (with atomic O_TRUNC the kernel leaves it to us).
        let setid = now.mode & (libc::S_ISUID | libc::S_ISGID) != 0;
        if flags & libc::O_TRUNC != 0 && (a.size > 0 || node.state().size > 0 || setid) {
            if let Err(e) = self.setattr(
                ino,
                &SetAttr {
                    size: Some(0),
                    ..Default::default()
                },
                caller,
            ) {
                self.release_node(&node);
                return Err(e);
            }
            keep = false;
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().unwrap().insert(
            fh,
            Handle {
                node,
                append: flags & libc::O_APPEND != 0,
            },
        );
        Ok(Opened {
            fh,
            keep_cache: keep,
            direct: flags & libc::O_APPEND != 0,
            changing: now_ns() - a.mtime < CHANGING_NS,
        })
    }

    /// Creates and opens a regular file. Inside a space the create is
    /// deferred: the rows are written with the file's first flush, in one
    /// transaction with its data.
    pub fn create(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        flags: i32,
        caller: Caller,
    ) -> FsResult<(Attr, Opened)> {
        let mode = libc::S_IFREG | (mode & 0o7777);
        let Node::Space(space, dir) = Node::from_ino(parent) else {
            let a = self.mknod(parent, name, mode, umask, 0, None, caller)?;
            let opened = self.open(a.ino, flags & !libc::O_TRUNC, caller)?;
            return Ok((a, opened));
        };
        let shard = self.shard_rw(space)?;
        // One pending create per space at a time keeps names unambiguous.
        self.commit_pending(space);
        let (mode, xattrs) = self.new_mode(parent, mode, umask)?;
        if flags & libc::O_APPEND != 0 || !xattrs.is_empty() {
            // Logs: several mounts may create `last.log` at the same moment
            // (after a rotation). Create now, in one transaction, or open the
            // file another process created first — never fail later. A file
            // that inherits ACLs is created now too, with them.
            let new = NewInode {
                mode,
                uid: caller.uid,
                gid: caller.gid,
                rdev: 0,
                target: None,
                xattrs: &xattrs,
            };
            let create = || meta::create(&shard, space, dir, name, &new);
            return match self.create_or_open(parent, name, flags, caller, create)? {
                Ok(a) => Ok((a, self.open(a.ino, flags & !libc::O_TRUNC, caller)?)),
                Err(opened) => Ok(opened),
            };
        }
        let check = || meta::check_create(&shard, space, dir, name);
        let p = match self.create_or_open(parent, name, flags, caller, check)? {
            Ok(p) => p,
            Err(opened) => return Ok(opened),
        };
        let ino = self.next_id(&shard, space)?;
        let new = NewInode {
            mode,
            uid: caller.uid,
            gid: caller.gid,
            rdev: 0,
            target: None,
            xattrs: &[],
        };
        let a = meta::new_attr(&p, space, ino, &new, now_ns())?;
        let generation = self.cache.invalidate(space, ino);
        self.xattrs.put_empty(a.ino);
        let pending = data::PendingCreate {
            parent: dir,
            name: name.to_vec(),
            attr: a,
        };
        let node = Arc::new(OpenInode::new(
            space,
            ino,
            shard,
            (a.gid, a.mode),
            0,
            generation,
            Some(pending),
            self.pending.clone(),
        ));
        *node.opens.lock().unwrap() += 1;
        self.open.lock().unwrap().insert((space, ino), node.clone());
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let append = flags & libc::O_APPEND != 0;
        self.handles
            .lock()
            .unwrap()
            .insert(fh, Handle { node, append });
        Ok((
            a,
            Opened {
                fh,
                keep_cache: false,
                direct: append,
                // Its writer's own handle: its cached pages are its writes.
                changing: false,
            },
        ))
    }

    /// Runs `create` (of `name` in `parent`). When the name is taken and the
    /// open is not `O_EXCL`, opens the file that has it instead (`Err`), as
    /// a local filesystem does; should the name go again before that open
    /// (a rotation renamed it away), creates once more, as the VFS does.
    fn create_or_open<T>(
        &self,
        parent: u64,
        name: &[u8],
        flags: i32,
        caller: Caller,
        mut create: impl FnMut() -> FsResult<T>,
    ) -> FsResult<Result<T, (Attr, Opened)>> {
        let mut tries = 0;
        loop {
            match create() {
                Err(e) if e == Error::EEXIST && flags & libc::O_EXCL == 0 => {}
                r => return r.map(Ok),
            }
            match self.open_existing(parent, name, flags, caller) {
                Err(e) if e == Error::ENOENT && tries < CREATE_TRIES => tries += 1,
                r => return r.map(Err),
            }
        }
    }

    /// `open(O_CREAT)` of a name another process created: that file.
    fn open_existing(
        &self,
        parent: u64,
        name: &[u8],
        flags: i32,
        caller: Caller,
    ) -> FsResult<(Attr, Opened)> {
        let a = self.lookup(parent, name)?;
        if a.is_dir() {
            return Err(Error::EISDIR);
        }
        let opened = self.open(a.ino, flags, caller)?;
        Ok((a, opened))
    }

    /// A fresh inode number for a deferred create, from the mount's reserved block.
    fn next_id(&self, shard: &Route, space: u32) -> FsResult<u64> {
        loop {
            {
                let mut ids = self.reserved_ids.lock().unwrap();
                let (next, end) = ids.entry(space).or_insert((0, 0));
                if *next < *end {
                    *next += 1;
                    return Ok(*next - 1);
                }
            }
            // Reserve outside the lock: a slow node must not stall other spaces.
            let first = meta::reserve_ids(shard, space, ID_BLOCK)?;
            let mut ids = self.reserved_ids.lock().unwrap();
            let (next, end) = ids.entry(space).or_insert((0, 0));
            if *next >= *end {
                (*next, *end) = (first, first + ID_BLOCK);
            }
        }
    }

    /// Commits every deferred create of `space` in this mount, so a namespace
    /// operation sees them in the database. A failure stays with the file
    /// (its close reports it).
    pub fn commit_pending(&self, space: u32) {
        self.commit_creates(space);
        self.commit_changes(Some(space));
    }

    fn commit_creates(&self, space: u32) {
        if self.pending.load(Ordering::Acquire) == 0 {
            return;
        }
        let nodes: Vec<Arc<OpenInode>> = self
            .open
            .lock()
            .unwrap()
            .values()
            .filter(|n| n.space == space && n.is_pending())
            .cloned()
            .collect();
        for n in nodes {
            if let Err(e) = n.flush(&self.cache) {
                log::warn!(
                    "space {space}: committing a new file failed: errno {}",
                    e.errno()
                );
            }
        }
    }

    /// Attributes as this mount sees them: with its uncommitted changes.
    fn with_changes(&self, mut a: Attr) -> Attr {
        if let Node::Space(s, i) = Node::from_ino(a.ino) {
            if let Some(c) = self.changes.lock().unwrap().get(&(s, i)) {
                c.apply(&mut a);
            }
            // And with the size of data this mount has buffered.
            let open = self.open.lock().unwrap().get(&(s, i)).cloned();
            if let Some(size) = open.and_then(|o| o.local_size()) {
                a.size = size;
            }
        }
        a
    }

    /// Commits deferred attribute changes, of one space or of all; one
    /// transaction per space. A failure is logged and the changes kept for
    /// the next attempt.
    pub fn commit_changes(&self, space: Option<u32>) {
        self.flush_changed_files(space);
        // One committer at a time, so an older snapshot never lands after a
        // newer one.
        let _order = self.change_commit.lock().unwrap();
        let mut by_space: HashMap<u32, Vec<(u64, meta::AttrChange)>> = HashMap::new();
        for ((s, i), c) in self.snapshot_changes(space) {
            by_space.entry(s).or_default().push((i, c));
        }
        for (s, list) in by_space {
            let r = self
                .shard(s)
                .and_then(|shard| meta::apply_changes(&shard, s, &list));
            match r {
                Ok(()) => self.forget_changes(s, &list),
                Err(e) => log::warn!(
                    "space {s}: committing attribute changes failed: errno {}",
                    e.errno()
                ),
            }
        }
    }

    /// The deferred changes (of one space or all) that may be committed now:
    /// not those of a file whose create is still pending. They stay in the
    /// map — and visible to getattr — until their commit succeeded.
    fn snapshot_changes(&self, space: Option<u32>) -> Vec<((u32, u64), meta::AttrChange)> {
        let changes = self.changes.lock().unwrap();
        if changes.is_empty() {
            return Vec::new();
        }
        let open = self.open.lock().unwrap();
        changes
            .iter()
            .filter(|((s, _), _)| space.is_none_or(|x| x == *s))
            .filter(|(k, _)| !open.get(k).is_some_and(|n| n.is_pending()))
            .map(|(k, c)| (*k, *c))
            .collect()
    }

    /// Drops committed changes, unless a newer change replaced them meanwhile.
    fn forget_changes(&self, space: u32, committed: &[(u64, meta::AttrChange)]) {
        let mut changes = self.changes.lock().unwrap();
        for (i, c) in committed {
            if changes.get(&(space, *i)) == Some(c) {
                changes.remove(&(space, *i));
            }
        }
    }

    fn handle(&self, fh: u64) -> FsResult<(Arc<OpenInode>, bool)> {
        let h = self.handles.lock().unwrap();
        let h = h.get(&fh).ok_or(Error::EBADF)?;
        Ok((h.node.clone(), h.append))
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let (node, _) = self.handle(fh)?;
        node.read(&self.cache, &self.prefetcher, offset, size)
    }

    /// Writes for `caller`, whose thread's `O_APPEND` offsets are
    /// remembered (see [`own_xattrs`]). A caller without `CAP_FSETID`
    /// clears set-user-ID and set-group-ID, as on a local disk, on every
    /// path: the kernel leaves it to us for direct I/O, and its own rule
    /// for cached writes keeps set-group-ID that Linux clears.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8], caller: Caller) -> FsResult<Written> {
        let (node, append) = self.handle(fh)?;
        let mode_changed = self.clear_setid(&node, caller)?;
        let tid = caller.pid;
        // A write after a deferred utimes sets mtime anew, as it would on disk.
        if let Some(c) = self
            .changes
            .lock()
            .unwrap()
            .get_mut(&(node.space, node.ino))
        {
            c.mtime = None;
        }
        if let Ok((_, vol)) = self.space(node.space)
            && vol.status == VolumeStatus::Standby
        {
            return Err(Error::EROFS);
        }
        if append {
            node.append(&self.cache, data, tid)?;
        } else if node.write(&self.cache, offset, data)? {
            // The workers live as long as the Fs: sending cannot fail.
            let _ = self.flusher.send(node);
        }
        Ok(Written {
            len: data.len() as u32,
            mode_changed,
        })
    }

    /// A write (or fallocate) by `caller` clears set-user-ID and
    /// set-group-ID as on a local disk; returns whether it did. Rare: only
    /// when this mount saw bits the caller would clear does it ask the
    /// database, which decides on the row it locks (so a chmod meanwhile
    /// is not undone).
    /// Committed before the data, after what this mount buffered.
    fn clear_setid(&self, node: &OpenInode, caller: Caller) -> FsResult<bool> {
        // What this mount saw first: no query for a file without the bits
        // or a caller that keeps them (root writing a set-user-ID binary).
        let (gid, mode) = node.owner_mode();
        if caller.setid_cleared(gid, mode).is_none() {
            return Ok(false);
        }
        self.commit_changes(Some(node.space));
        let cleared = meta::clear_setid(&node.shard, node.space, node.ino, &|gid, mode| {
            caller.setid_cleared(gid, mode)
        })?;
        match cleared {
            Some(a) => {
                node.set_owner_mode(a.gid, a.mode);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// fallocate(2): mode 0 and `KEEP_SIZE` (nothing to reserve: the file
    /// grows unless `KEEP_SIZE`), `PUNCH_HOLE | KEEP_SIZE`, `ZERO_RANGE`
    /// (with or without `KEEP_SIZE`); any other mode is `EOPNOTSUPP`.
    pub fn fallocate(
        &self,
        fh: u64,
        offset: u64,
        length: u64,
        mode: i32,
        caller: Caller,
    ) -> FsResult<Written> {
        const KEEP_SIZE: i32 = libc::FALLOC_FL_KEEP_SIZE;
        const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        const ZERO: i32 = libc::FALLOC_FL_ZERO_RANGE;
        let (zero, extend) = match mode {
            0 => (false, true),
            KEEP_SIZE => (false, false),
            PUNCH => (true, false),
            ZERO => (true, true),
            m if m == ZERO | KEEP_SIZE => (true, false),
            _ => return Err(Error::EOPNOTSUPP),
        };
        if length == 0 {
            return Err(Error::EINVAL);
        }
        if offset
            .checked_add(length)
            .is_none_or(|e| e > data::MAX_FILE_SIZE)
        {
            return Err(Error::EFBIG);
        }
        let (node, _) = self.handle(fh)?;
        let (space, i) = (node.space, node.ino);
        let shard = self.shard_rw(space)?;
        self.commit_pending(space);
        let mode_changed = self.clear_setid(&node, caller)?;
        node.rewrite(&self.cache, || {
            meta::fallocate(&shard, space, i, (offset, length), zero, extend)
        })?;
        Ok(Written {
            len: 0,
            mode_changed,
        })
    }

    /// lseek(2) with `SEEK_DATA` or `SEEK_HOLE`, from the extent map (what
    /// this mount buffered is committed first, so it counts).
    pub fn seek_data(&self, fh: u64, offset: u64, data: bool) -> FsResult<u64> {
        let (node, _) = self.handle(fh)?;
        node.flush(&self.cache)?;
        let size = node.state().size;
        crate::shard::extents::seek(&node.shard, node.space, node.ino, size, offset, data)?
            .ok_or(Error::ENXIO)
    }

    /// Makes buffered writes durable and visible (close, fsync).
    pub fn flush(&self, fh: u64) -> FsResult<()> {
        let (node, _) = self.handle(fh)?;
        node.flush(&self.cache)
    }

    /// `fsync`: the file's data, and the attribute changes of its space, are
    /// committed when it returns.
    pub fn fsync(&self, fh: u64) -> FsResult<()> {
        let (node, _) = self.handle(fh)?;
        node.flush(&self.cache)?;
        self.commit_changes(Some(node.space));
        Ok(())
    }

    /// Flushes the buffered data of files (of one space or all) whose
    /// attributes have deferred changes, before those commit: the data's
    /// commit sets mtime, and a utimes that came after the write (tar:
    /// write, utimes, chmod, setxattr, then close) must land after it, as
    /// on a local disk. Rare: a file still being written whose times or
    /// mode changed. A failed flush is reported at close or fsync.
    fn flush_changed_files(&self, space: Option<u32>) {
        let keys: Vec<(u32, u64)> = self
            .changes
            .lock()
            .unwrap()
            .keys()
            .filter(|(s, _)| space.is_none_or(|x| x == *s))
            .copied()
            .collect();
        if keys.is_empty() {
            return;
        }
        let nodes: Vec<Arc<OpenInode>> = {
            let open = self.open.lock().unwrap();
            keys.iter().filter_map(|k| open.get(k).cloned()).collect()
        };
        for n in nodes {
            if n.local_size().is_some() {
                let _ = n.flush(&self.cache);
            }
        }
    }

    pub fn release(&self, fh: u64) -> FsResult<()> {
        let h = self
            .handles
            .lock()
            .unwrap()
            .remove(&fh)
            .ok_or(Error::EBADF)?;
        let r = h.node.flush(&self.cache);
        self.release_node(&h.node);
        r
    }

    fn release_node(&self, node: &Arc<OpenInode>) {
        // The map lock is taken first, as in `open`, so a concurrent open
        // either finds the node still counted or not in the map at all.
        {
            let mut map = self.open.lock().unwrap();
            let mut opens = node.opens.lock().unwrap();
            *opens -= 1;
            if *opens > 0 {
                return;
            }
            map.remove(&(node.space, node.ino));
        }
        if node.unlinked.load(Ordering::Acquire)
            && let Err(e) = meta::release_orphan(&node.shard, node.space, node.ino)
        {
            log::warn!(
                "space {}: releasing unlinked inode {}: errno {}",
                node.space,
                node.ino,
                e.errno()
            );
        }
    }

    // ---- xattrs ----

    /// The (space, inode) of an inode inside a space; `None` for the root
    /// and the volumes, which have no xattrs of their own.
    fn space_node(&self, ino: u64) -> Option<(u32, u64)> {
        match Node::from_ino(ino) {
            Node::Space(s, i) => Some((s, i)),
            _ => None,
        }
    }

    /// `fsync` of a directory: its entries are durable once deferred creates
    /// are committed (every other namespace change commits before it returns).
    pub fn fsyncdir(&self, ino: u64) -> FsResult<()> {
        if let Node::Space(space, _) = Node::from_ino(ino) {
            self.commit_pending(space);
        }
        Ok(())
    }

    pub fn setxattr(
        &self,
        ino: u64,
        name: &[u8],
        value: &[u8],
        flags: i32,
        caller: Caller,
    ) -> FsResult<()> {
        let (s, i) = self.space_node(ino).ok_or(Error::EPERM)?;
        if own_xattrs::is_own(name) {
            return Err(Error::EPERM);
        }
        self.commit_pending(s);
        let r = if name == acl::ACCESS || name == acl::DEFAULT {
            self.set_acl(ino, name, value, caller)
        } else {
            meta::setxattr(&self.shard_rw(s)?, s, i, name, value, flags)
        };
        self.xattrs.forget(ino);
        r
    }

    /// Sets an ACL, validated, with the mode kept in step (see [`acl`]):
    /// an access ACL sets the permission bits and is kept only if it says
    /// more than they do; an empty one removes the ACL.
    fn set_acl(&self, ino: u64, name: &[u8], value: &[u8], caller: Caller) -> FsResult<()> {
        let (s, i) = self.space_node(ino).ok_or(Error::EPERM)?;
        let parsed = acl::Acl::parse(value)?;
        let a = self.getattr(ino)?;
        let shard = self.shard_rw(s)?;
        let stored = parsed.to_bytes();
        let r = if name == acl::DEFAULT {
            if !a.is_dir() {
                return Err(Error::EACCES);
            }
            let keep = !parsed.is_empty();
            meta::set_acl(&shard, s, i, name, keep.then_some(&stored[..]), None, false)
        } else {
            let keep = !parsed.is_empty() && !parsed.is_mode_only();
            let bits = (!parsed.is_empty()).then(|| parsed.mode_bits());
            // As chmod would: a caller outside the file's group loses its
            // set-group-ID bit.
            let kill_sgid =
                bits.is_some() && a.mode & libc::S_ISGID != 0 && caller.loses_sgid(a.gid);
            let r = meta::set_acl(
                &shard,
                s,
                i,
                name,
                keep.then_some(&stored[..]),
                bits,
                kill_sgid,
            );
            if r.is_ok()
                && let Some(bits) = bits
            {
                let mut mode = (a.mode & !0o777) | bits;
                if kill_sgid {
                    mode &= !libc::S_ISGID;
                }
                self.note_owner_mode(s, i, &Attr { mode, ..a });
            }
            r
        };
        match r {
            // Removing an ACL that is not there.
            Err(e) if e == Error::ENODATA && parsed.is_empty() => Ok(()),
            r => r,
        }
    }

    /// The inode's xattrs, from the cache or one query; `None` where there
    /// are none to have (the root, the volumes).
    fn xattrs_of(&self, ino: u64) -> FsResult<Option<xattr_cache::Xattrs>> {
        if let Some(x) = self.xattrs.get(ino) {
            return Ok(Some(x));
        }
        let Some((s, i)) = self.space_node(ino) else {
            return Ok(None);
        };
        if i == 1
            && let Some(dir) = self.space(s)?.0.import_from
        {
            // Not imported yet (see `getattr`): `ls -l` asks for ACLs.
            return crate::import::disk_xattrs(&dir)
                .map(|x| Some(Arc::new(x)))
                .map_err(|e| error::failed(format!("space {s}: {e:#}")));
        }
        let x = Arc::new(meta::xattrs(&self.shard(s)?, s, i)?);
        self.xattrs.put(ino, x.clone());
        Ok(Some(x))
    }

    /// An xattr; the mount's own ([`own_xattrs`]) as seen by thread `tid`.
    pub fn getxattr(&self, ino: u64, name: &[u8], tid: u32, caller: Caller) -> FsResult<Vec<u8>> {
        if own_xattrs::is_own(name) {
            return self.own_xattr(ino, name, tid, caller);
        }
        let x = self.xattrs_of(ino)?.ok_or(Error::ENODATA)?;
        let v = x
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .ok_or(Error::ENODATA)?;
        // The mode is the truth for an access ACL's owner, mask (or group)
        // and other entries: a chmod (from any mount, deferred or not)
        // needs no rewrite of the stored ACL, and the two never disagree.
        if name == acl::ACCESS
            && let Ok(mut a) = acl::Acl::parse(&v)
        {
            a.chmod(self.getattr(ino)?.mode);
            return Ok(a.to_bytes());
        }
        Ok(v)
    }

    pub fn listxattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        let Some(x) = self.xattrs_of(ino)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for (n, _) in x.iter().filter(|(n, _)| !own_xattrs::is_own(n)) {
            out.extend_from_slice(n);
            out.push(0);
        }
        Ok(out)
    }

    /// The mount's own xattrs ([`own_xattrs`]), answered without the xattr table.
    fn own_xattr(&self, ino: u64, name: &[u8], tid: u32, caller: Caller) -> FsResult<Vec<u8>> {
        if name == crate::protocol::DEACTIVATED_SPACES.to_bytes() {
            let Node::Volume(v) = Node::from_ino(ino) else {
                return Err(Error::ENODATA);
            };
            // Only the spaces refused to this caller, from the same view
            // that refuses them (check_caller).
            if self.sees_deactivated(caller.uid, caller.gid) {
                return Err(Error::ENODATA);
            }
            let view = self.view()?;
            let mut ids: Vec<u32> = view
                .spaces
                .values()
                .filter(|s| s.volume_id == v && s.status == SpaceStatus::Deactivated)
                .map(|s| s.id)
                .collect();
            if ids.is_empty() {
                return Err(Error::ENODATA);
            }
            ids.sort_unstable();
            return Ok(crate::protocol::encode_space_ids(&ids));
        }
        let Node::Space(s, i) = Node::from_ino(ino) else {
            return Err(Error::ENODATA);
        };
        let node = self.open.lock().unwrap().get(&(s, i)).cloned();
        if name == crate::protocol::APPEND_OFFSET.to_bytes() {
            let off = node.and_then(|n| n.last_append(tid));
            return off
                .map(crate::protocol::encode_offset)
                .ok_or(Error::ENODATA);
        }
        // Buffered writes here bring the file back into the database at
        // their flush: the object would be stale.
        if node.is_some_and(|n| n.local_size().is_some()) {
            return Err(Error::ENODATA);
        }
        own_xattrs::s3_url(&self.shard(s)?, s, i)
    }

    pub fn removexattr(&self, ino: u64, name: &[u8]) -> FsResult<()> {
        let (s, i) = self.space_node(ino).ok_or(Error::EPERM)?;
        if own_xattrs::is_own(name) {
            return Err(Error::EPERM);
        }
        self.commit_pending(s);
        let r = meta::removexattr(&self.shard_rw(s)?, s, i, name);
        self.xattrs.forget(ino);
        r
    }

    /// Capacity and usage, from the inodes used and bytes stored over all
    /// reachable nodes. Counting is a scan of every node, so the count is
    /// reused for a few seconds.
    pub fn statfs(&self) -> FsResult<statfs::StatFs> {
        if let Some((at, (files, bytes))) = *self.usage.lock().unwrap()
            && at.elapsed() < STATFS_TTL
        {
            return Ok(statfs::StatFs::new(files, bytes));
        }
        let (files, bytes) = self.count_usage()?;
        *self.usage.lock().unwrap() = Some((Instant::now(), (files, bytes)));
        Ok(statfs::StatFs::new(files, bytes))
    }

    fn count_usage(&self) -> FsResult<(u64, u64)> {
        let mut total = (0, 0);
        for n in self.cluster.nodes().map_err(admin_failed)? {
            if let Ok(shard) = self.cluster.shard(n.id)
                && let Ok((files, bytes)) = meta::usage(&shard)
            {
                total.0 += files;
                total.1 += bytes;
            }
        }
        Ok(total)
    }
}

fn admin_failed(e: anyhow::Error) -> Error {
    log::error!("admin node: {e:#}");
    Error::EIO
}
