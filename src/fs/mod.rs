//! The filesystem core: POSIX semantics for the tree
//! `/<volume>/<space>/…` on top of the Admin Node and the Storage Nodes.
//!
//! The root and the volumes exist only in the Admin Node; everything inside
//! a space lives on the Storage Node that owns it ([`meta`] for names and
//! attributes, [`data`] for contents). This layer knows nothing of FUSE: it
//! takes plain arguments and returns plain values or an [`Error`], so tests
//! can drive it directly.
//!
//! [`Fs`]'s calls are split by what they touch: `namespace` (names and
//! attributes; the root and volume directories in `top`), `handles` (open
//! files), `xattr_ops`, `deferred` (what this mount commits later),
//! `admin_view` (the Admin Node's volumes and spaces, and who may use a
//! deactivated space), `space_route` (a space's Storage Node, and the
//! first-use import of a space still on disk); statfs here.
//!
//! Durability: a namespace change is committed before the call returns,
//! except two kinds this mount defers and shows at once (`deferred`): the
//! create of a regular file inside a space, written with the file's first
//! flush unless another operation in the space needs it first; and a change
//! of mode, owner or times only, committed with the next namespace change in
//! its space, an fsync, or within a second. File data is committed at
//! flush, fsync or close.

pub mod acl;
mod admin_view;
pub mod attr;
pub mod attr_cache;
pub mod cache;
pub mod caller;
pub mod data;
mod deferred;
pub mod dir_names;
pub mod error;
mod handles;
mod memory;
pub mod meta;
mod namespace;
pub mod own_xattrs;
pub mod reaper;
mod snapshots;
mod space_route;
pub mod statfs;
mod top;
pub mod xattr_cache;
mod xattr_ops;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

pub use attr::{Attr, Node};
pub use error::{Error, FsResult};
pub use namespace::Looked;

use crate::cluster::{Cluster, Router};
use admin_view::{AdminView, admin_failed};
use cache::DataCache;
use data::OpenInode;
use deferred::Changes;
use handles::Handles;

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
    /// How long xattrs and attributes read from the database are reused
    /// (the attribute TTL).
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

pub struct Fs {
    cluster: Cluster,
    /// Where each space's rows are, across moves.
    router: Arc<Router>,
    cfg: FsConfig,
    /// This mount's access point id: the holder of files unlinked while open.
    holder: AtomicU64,
    view: RwLock<AdminView>,
    /// Per space, held while its tree is imported from disk on first use.
    importing: Mutex<HashMap<u32, Arc<Mutex<()>>>>,
    /// The files open in this mount: one node per inode, whatever the
    /// number of handles.
    open: Mutex<HashMap<(u32, u64), Arc<OpenInode>>>,
    handles: Handles,
    pub cache: Arc<DataCache>,
    xattrs: xattr_cache::XattrCache,
    /// Attributes read lately (see [`attr_cache`]).
    attrs: Arc<attr_cache::AttrCache>,
    /// Every name of small directories read lately (see [`dir_names`]).
    names: dir_names::DirNames,
    /// The last statfs count and when it was taken.
    usage: Mutex<Option<(Instant, (u64, u64))>>,
    /// Hands files whose buffers passed the threshold to the flush workers.
    flusher: crossbeam_channel::Sender<Arc<OpenInode>>,
    /// Hands read-ahead work to the prefetch workers.
    prefetcher: data::Prefetchers,
    /// Group commit of appends, per Storage Node.
    appends: data::AppendQueues,
    /// Joins the pieces appends leave.
    merger: data::Merger,
    /// Attribute changes not yet committed (see [`Fs::setattr`]).
    changes: Changes,
    /// How many open files have an uncommitted create (see [`data::PendingCreate`]).
    pending: Arc<AtomicUsize>,
    /// Inode numbers reserved for deferred creates, per space: [next, end).
    reserved_ids: Mutex<HashMap<u32, (u64, u64)>>,
    /// The snapshots' tree (see [`snapshots`]).
    snapshots: snapshots::Snapshots,
}

/// See [`Fs::changing`].
struct Changing<'a>(&'a attr_cache::AttrCache);

impl Drop for Changing<'_> {
    fn drop(&mut self) {
        self.0.changed();
    }
}

/// How long a statfs answer is reused.
const STATFS_TTL: Duration = Duration::from_secs(5);

/// The part of the configured cache size kept for write buffers.
const WRITE_BUFFER_BUDGET: usize = 48 << 20;

/// Background flush workers: they write buffers while writers go on.
const FLUSH_WORKERS: usize = 4;

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
            prefetcher: data::Prefetchers {
                db: spawn_workers(
                    "tshs-prefetch",
                    data::DB_PREFETCH_WORKERS,
                    &cache,
                    |p: data::Prefetch, c| p.node.prefetch(c, &p),
                ),
                object: spawn_workers(
                    "tshs-s3-prefetch",
                    data::OBJECT_PREFETCH_WORKERS,
                    &cache,
                    |p: data::Prefetch, c| p.node.prefetch(c, &p),
                ),
            },
            appends: data::AppendQueues::new(cache.clone()),
            merger: data::Merger::start(),
            pending: Arc::default(),
            changes: Changes::default(),
            reserved_ids: Mutex::default(),
            importing: Mutex::default(),
            xattrs: xattr_cache::XattrCache::new(100_000, cfg.xattr_ttl),
            attrs: Arc::new(attr_cache::AttrCache::new(4096, cfg.xattr_ttl)),
            names: dir_names::DirNames::new(cfg.xattr_ttl),
            usage: Mutex::default(),
            cache,
            cfg,
            holder: AtomicU64::new(0),
            view: RwLock::default(),
            open: Mutex::default(),
            handles: Handles::new(),
            snapshots: snapshots::Snapshots::default(),
        }
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Held by an operation that may change attributes (of any inode: a
    /// link changes another's link count): the attributes open files keep
    /// (see [`OpenInode::cached_attr`]) are not used while it runs, nor
    /// after, unless read again.
    fn changing(&self) -> Changing<'_> {
        self.attrs.changed();
        Changing(&self.attrs)
    }

    /// This mount's access point: the holder of its open unlinked files,
    /// and the heartbeat its cached placement depends on.
    pub fn set_access_point(&self, ap: &crate::cluster::AccessPoint) {
        self.holder.store(ap.id(), Ordering::Release);
        self.router.set_liveness(ap.liveness());
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
