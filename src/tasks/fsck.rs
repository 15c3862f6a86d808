//! fsck: checks the Storage Nodes' rows against each other and against the
//! object store; with `repair`, fixes what can be fixed.
//!
//! The walk goes space by space (each on the node the Admin Node places it
//! on), its inodes and then its names in batches in key order, so memory
//! stays bounded on a node with millions of inodes; then each bucket page
//! by page. What it finds:
//! - data loss: a file whose object is missing or has another size than
//!   the file (its inode is read again first: a file brought back meanwhile
//!   is no loss). Not repairable.
//! - a live inode that no entry names (not the space's root): marked
//!   deleted, so remove-deleted purges it after the grace period. Nothing
//!   can reach it, and a tree of TeamDrive's would not know a lost+found.
//! - extents beyond a file's size (they would show as data if the file
//!   grew): cut.
//! - an entry naming an inode that is missing or deleted: removed.
//! - an orphaned object: no row of any node names it, older than the grace
//!   period. Only keys move-to-s3 writes (`<space>/<inode>/<32 hex>`) of a
//!   space the Admin Node knows are looked at: manifests and `last.log`
//!   backups (named by manifests, not rows; remove-deleted deletes the
//!   replaced ones), probes, and other prefixes or clusters sharing the
//!   bucket are never touched. A key is named by its inode's `s3_key` or
//!   by an `s3_uploads` record (an upload in flight, garbage not yet
//!   deleted) on any node: the check needs every node, and an object is
//!   looked up again just before it is deleted.
//!
//! A space copy-shards is moving is not checked (its rows change hands),
//! nor what a node or store that cannot be read holds: those are reported
//! as unchecked, and no object counts as orphaned while a node is unread.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Result, anyhow, bail};

use super::{Progress, ProgressFn, TaskOptions, remove_deleted};
use crate::clock::now_ns;
use crate::cluster::{Cluster, SpaceRow, SpaceStatus};
use crate::object_store::{ErrorKind, Listed, S3Store};
use crate::shard::fsck::{self as rows, InodeFacts, Repair};
use crate::shard::{InodeState, Shard};

/// Inodes or names read per query.
const BATCH: usize = 1000;

/// What fsck can find.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    DataLoss,
    NamelessInode,
    ExtentPastSize,
    DanglingEntry,
    OrphanObject,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::DataLoss,
        Kind::NamelessInode,
        Kind::ExtentPastSize,
        Kind::DanglingEntry,
        Kind::OrphanObject,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::DataLoss => "data-loss",
            Kind::NamelessInode => "nameless-inode",
            Kind::ExtentPastSize => "extent-past-size",
            Kind::DanglingEntry => "dangling-entry",
            Kind::OrphanObject => "orphan-object",
        }
    }

    /// What `repair` does about it; none: it cannot be repaired.
    pub fn repair(self) -> Option<&'static str> {
        match self {
            Kind::DataLoss => None,
            Kind::NamelessInode => Some("marked deleted"),
            Kind::ExtentPastSize => Some("cut"),
            Kind::DanglingEntry => Some("removed"),
            Kind::OrphanObject => Some("deleted"),
        }
    }
}

/// What became of a problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Reported only (no `repair`, or it cannot be repaired).
    Reported,
    Repaired,
    /// The repair did not happen, for this reason.
    NotRepaired(String),
}

/// One problem found.
#[derive(Clone, Debug)]
pub struct Problem {
    pub kind: Kind,
    /// Where: `space 3, /docs/a.pdf (inode 5)`, `S3 host 1, 3/5/…`.
    pub place: String,
    pub detail: String,
    pub action: Action,
}

/// What to check.
#[derive(Clone, Copy, Debug, Default)]
pub struct Scope {
    /// Fix what can be fixed.
    pub repair: bool,
    /// Only this space: its rows on its node, its objects in the buckets.
    pub space: Option<u32>,
}

/// What a run checked and found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub found: HashMap<Kind, u64>,
    pub repaired: HashMap<Kind, u64>,
    pub nodes: u64,
    pub spaces: u64,
    pub inodes: u64,
    pub names: u64,
    pub buckets: u64,
    pub objects: u64,
    /// What could not be checked, and why.
    pub unchecked: Vec<String>,
}

impl Report {
    pub fn problems(&self) -> u64 {
        self.found.values().sum()
    }
}

/// Receives each problem as it is found.
pub type FoundFn<'a> = &'a dyn Fn(&Problem);

pub fn run(
    cluster: &Cluster,
    opts: &TaskOptions,
    scope: Scope,
    stop: &AtomicBool,
    progress: ProgressFn,
    found: FoundFn,
) -> Result<Report> {
    let spaces = match scope.space {
        Some(id) => {
            let row = cluster
                .space(id)?
                .ok_or_else(|| anyhow!("there is no space {id} (see tshs list-spaces)"))?;
            if row.status == SpaceStatus::Deleted {
                bail!("space {id} is deleted (remove-deleted purges it)");
            }
            vec![row]
        }
        None => cluster.live_spaces()?,
    };
    let hosts = cluster.s3_hosts().unwrap_or_default();
    let mut w = Walk {
        cluster,
        opts,
        scope,
        stop,
        progress,
        found,
        report: Report::default(),
        stores: HashMap::new(),
        done: 0,
        total: (spaces.len() + hosts.len()) as u64,
        bytes: 0,
    };
    let all_read = w.check_nodes(&spaces)?;
    w.check_buckets(all_read)?;
    if opts.should_stop(stop) {
        w.report
            .unchecked
            .push("stopped before the end (what was not reached is unchecked)".into());
    }
    Ok(w.report)
}

struct Walk<'a> {
    cluster: &'a Cluster,
    opts: &'a TaskOptions,
    scope: Scope,
    stop: &'a AtomicBool,
    progress: ProgressFn<'a>,
    found: FoundFn<'a>,
    report: Report,
    /// Clients by S3 host; a host that failed keeps its error (its objects
    /// are not asked again in this run).
    stores: HashMap<u32, Result<Arc<S3Store>, String>>,
    done: u64,
    total: u64,
    bytes: u64,
}

impl Walk<'_> {
    fn stopped(&self) -> bool {
        self.opts.should_stop(self.stop)
    }

    fn tick(&mut self, item: String) {
        (self.progress)(&Progress {
            task: "fsck",
            done: self.done,
            total: self.total,
            bytes: self.bytes,
            item,
        });
    }

    /// Something not checked: the run's error names it in the end.
    fn unchecked(&mut self, what: String) {
        self.report.unchecked.push(what);
    }

    fn report(&mut self, kind: Kind, place: String, detail: String, action: Action) {
        *self.report.found.entry(kind).or_default() += 1;
        if action == Action::Repaired {
            *self.report.repaired.entry(kind).or_default() += 1;
        }
        (self.found)(&Problem {
            kind,
            place,
            detail,
            action,
        });
    }

    fn store(&mut self, host: u32) -> Result<Arc<S3Store>, String> {
        if !self.stores.contains_key(&host) {
            let s = self
                .cluster
                .object_store(host)
                .map_err(|e| format!("S3 host {host}: {e:#}"));
            if let Err(e) = &s {
                self.unchecked(e.clone());
            }
            self.stores.insert(host, s);
        }
        self.stores[&host].clone()
    }

    /// A store that failed: the rest of its objects stay unchecked.
    fn store_failed(&mut self, host: u32, e: String) {
        if self.stores.get(&host).is_some_and(|s| s.is_ok()) {
            self.unchecked(format!("{e} (its objects are not checked)"));
            self.stores.insert(host, Err(e));
        }
    }

    /// Walks every space's rows on its node; true if every node could be read.
    fn check_nodes(&mut self, spaces: &[SpaceRow]) -> Result<bool> {
        let mut all_read = true;
        for n in self.cluster.nodes()? {
            let mine: Vec<&SpaceRow> = spaces.iter().filter(|s| s.node_id == n.id).collect();
            if self.scope.space.is_some() && mine.is_empty() {
                continue;
            }
            let shard = match self
                .cluster
                .shard(n.id)
                .and_then(|s| s.ping().map(|()| s).map_err(Into::into))
            {
                Ok(s) => s,
                Err(e) => {
                    self.unchecked(format!("storage node {}: {e:#}", n.id));
                    all_read = false;
                    self.done += mine.len() as u64;
                    continue;
                }
            };
            self.report.nodes += 1;
            for s in mine {
                if self.stopped() {
                    return Ok(all_read);
                }
                if self.cluster.space_moving(s.id)? {
                    self.unchecked(format!(
                        "space {}: copy-shards is moving it to another node",
                        s.id
                    ));
                } else if let Err(e) = self.check_space(&shard, s.id) {
                    self.unchecked(format!("space {} on storage node {}: {e:#}", s.id, n.id));
                    all_read = false;
                } else {
                    self.report.spaces += 1;
                }
                self.done += 1;
                self.tick(format!("space {}", s.id));
            }
        }
        Ok(all_read)
    }

    fn check_space(&mut self, shard: &Shard, space: u32) -> Result<()> {
        let mut after = 0;
        loop {
            let batch = rows::inodes(shard, space, after, BATCH)?;
            let Some(last) = batch.last() else { break };
            after = last.ino;
            self.report.inodes += batch.len() as u64;
            for i in &batch {
                self.check_inode(shard, space, i)?;
            }
            self.check_objects(shard, space, &batch)?;
            self.tick(format!(
                "space {space}; {} inodes checked",
                self.report.inodes
            ));
            if self.stopped() {
                return Ok(());
            }
        }
        let mut after: (u64, Vec<u8>) = (0, Vec::new());
        loop {
            let batch = rows::entries(shard, space, (after.0, &after.1), BATCH)?;
            let Some(last) = batch.last() else { break };
            after = (last.parent, last.name.clone());
            self.report.names += batch.len() as u64;
            for e in batch {
                let missing = match e.target {
                    None => "does not exist",
                    Some(InodeState::Deleted) => "is deleted",
                    Some(_) => continue,
                };
                let dir = rows::path_of(shard, space, e.parent)?
                    .unwrap_or_else(|| format!("(directory {})", e.parent));
                let place = format!(
                    "space {space}, {}/{}",
                    dir.trim_end_matches('/'),
                    String::from_utf8_lossy(&e.name)
                );
                let action = if self.scope.repair {
                    match outcome(rows::remove_dangling_entry(
                        shard, space, e.parent, &e.name, e.ino,
                    )) {
                        Some(a) => a,
                        None => continue,
                    }
                } else {
                    Action::Reported
                };
                let detail = format!("names inode {}, which {missing}", e.ino);
                self.report(Kind::DanglingEntry, place, detail, action);
            }
            if self.stopped() {
                return Ok(());
            }
        }
        Ok(())
    }

    /// `space 3, /docs/a.pdf (inode 5)`, or `space 3, inode 5` without a name.
    fn place(&self, shard: &Shard, space: u32, ino: u64) -> Result<String> {
        Ok(match rows::path_of(shard, space, ino)? {
            Some(p) => format!("space {space}, {p} (inode {ino})"),
            None => format!("space {space}, inode {ino}"),
        })
    }

    fn check_inode(&mut self, shard: &Shard, space: u32, i: &InodeFacts) -> Result<()> {
        let repair = self.scope.repair;
        if i.state == InodeState::Live && !i.named && i.ino != 1 {
            let action = if repair {
                outcome(rows::mark_nameless_deleted(shard, space, i.ino))
            } else {
                Some(Action::Reported)
            };
            if let Some(action) = action {
                let what = match i.mode & libc::S_IFMT {
                    libc::S_IFDIR => "directory",
                    libc::S_IFREG => "regular file",
                    libc::S_IFLNK => "symbolic link",
                    _ => "special file",
                };
                let detail = format!("a live {what} of {} bytes that no directory names", i.size);
                self.report(
                    Kind::NamelessInode,
                    format!("space {space}, inode {}", i.ino),
                    detail,
                    action,
                );
            }
        }
        if let Some(end) = i.data_end
            && end > i.size
            && i.object.is_none()
        {
            let action = if repair {
                outcome(rows::cut_extents(shard, space, i.ino))
            } else {
                Some(Action::Reported)
            };
            if let Some(action) = action {
                let place = self.place(shard, space, i.ino)?;
                let detail = format!(
                    "its extents hold data up to byte {end} of a file of {} bytes",
                    i.size
                );
                self.report(Kind::ExtentPastSize, place, detail, action);
            }
        }
        Ok(())
    }

    /// Asks the stores about the objects of a batch of inodes, several at
    /// once (`--max-threads`).
    fn check_objects(&mut self, shard: &Shard, space: u32, batch: &[InodeFacts]) -> Result<()> {
        let mut asks: Vec<(&InodeFacts, u32, &str, Arc<S3Store>)> = Vec::new();
        for i in batch {
            if let Some((host, key)) = &i.object
                && let Ok(store) = self.store(*host)
            {
                asks.push((i, *host, key, store));
            }
        }
        if asks.is_empty() {
            return Ok(());
        }
        let threads = self.opts.max_threads.clamp(1, 64);
        let per = asks.len().div_ceil(threads);
        let answers: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = asks
                .chunks(per)
                .map(|chunk| {
                    s.spawn(move || {
                        chunk
                            .iter()
                            .map(|(_, _, key, store)| store.head(key))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("a HEAD thread panicked"))
                .collect()
        });
        for ((i, host, key, _), answer) in asks.iter().zip(answers) {
            let found = match answer {
                Ok(found) => found.map(|(size, _)| size),
                Err(e) if e.kind == ErrorKind::NotFound => None,
                Err(e) => {
                    self.store_failed(*host, e.to_string());
                    continue;
                }
            };
            self.bytes += i.size;
            if found == Some(i.size) {
                continue;
            }
            // Brought back into the database (or changed) since it was read?
            if rows::file_object(shard, space, i.ino)? != Some((*host, key.to_string(), i.size)) {
                continue;
            }
            let detail = match found {
                None => format!("its object {key} on S3 host {host} is missing"),
                Some(n) => format!(
                    "its object {key} on S3 host {host} holds {n} bytes, the file {}",
                    i.size
                ),
            };
            let place = self.place(shard, space, i.ino)?;
            self.report(Kind::DataLoss, place, detail, Action::Reported);
        }
        Ok(())
    }

    /// Looks for orphaned objects in every bucket (each bucket once, if
    /// several hosts name it).
    fn check_buckets(&mut self, all_read: bool) -> Result<()> {
        let hosts = self.cluster.s3_hosts().unwrap_or_default();
        if hosts.is_empty() || self.stopped() {
            return Ok(());
        }
        if !all_read {
            self.unchecked(
                "orphaned objects: not looked for, since a storage node could not be read (its rows may name them)"
                    .into(),
            );
            return Ok(());
        }
        let mut shards = Vec::new();
        for n in self.cluster.nodes()? {
            match self.cluster.shard(n.id) {
                Ok(s) => shards.push(s),
                Err(e) => {
                    self.unchecked(format!(
                        "orphaned objects: not looked for, storage node {}: {e:#}",
                        n.id
                    ));
                    return Ok(());
                }
            }
        }
        let mut seen: Vec<(String, String)> = Vec::new();
        for h in hosts {
            let bucket = (h.endpoint(), h.bucket.clone());
            if self.stopped() {
                return Ok(());
            }
            if !seen.contains(&bucket) {
                seen.push(bucket);
                if let Ok(store) = self.store(h.id)
                    && let Err(e) = self.check_bucket(&shards, h.id, &store)
                {
                    self.unchecked(format!("orphaned objects on S3 host {}: {e:#}", h.id));
                }
            }
            self.done += 1;
            self.tick(format!("S3 host {}", h.id));
        }
        Ok(())
    }

    fn check_bucket(&mut self, shards: &[Shard], host: u32, store: &S3Store) -> Result<()> {
        let grace = self.opts.grace.unwrap_or(remove_deleted::GRACE);
        let before = now_ns() - grace.as_nanos() as i64;
        let prefix = self
            .scope
            .space
            .map(|s| format!("{s}/"))
            .unwrap_or_default();
        let mut known: HashMap<u32, bool> = HashMap::new();
        let mut token = None;
        self.report.buckets += 1;
        loop {
            let page = store.list_page(&prefix, token)?;
            self.report.objects += page.objects.len() as u64;
            let mut candidates: Vec<(u32, u64, String)> = Vec::new();
            let mut listed: HashMap<String, &Listed> = HashMap::new();
            for o in &page.objects {
                self.bytes += o.size;
                let Some((space, ino)) = moved_file_key(&o.key) else {
                    continue;
                };
                // Young, or of unknown age: perhaps still being handed over.
                if o.modified_ns >= before || o.modified_ns == 0 {
                    continue;
                }
                if !known.contains_key(&space) {
                    // A page's keys share few spaces (they are in key order).
                    if known.len() > 10_000 {
                        known.clear();
                    }
                    known.insert(space, self.cluster.space(space)?.is_some());
                }
                if known[&space] {
                    candidates.push((space, ino, o.key.clone()));
                    listed.insert(o.key.clone(), o);
                }
            }
            let mut named = std::collections::HashSet::new();
            for s in shards {
                named.extend(rows::named_objects(s, &candidates)?);
            }
            for (space, ino, key) in candidates {
                if named.contains(&key) {
                    continue;
                }
                let o = listed[&key];
                let action = if self.scope.repair {
                    match self.delete_orphan(shards, store, (space, ino, key.clone())) {
                        Ok(true) => Action::Repaired,
                        Ok(false) => continue, // named meanwhile
                        Err(e) => Action::NotRepaired(format!("{e:#}")),
                    }
                } else {
                    Action::Reported
                };
                let age = (now_ns() - o.modified_ns) / 1_000_000_000;
                let detail = format!(
                    "{} bytes, written {age} s ago, named by no row of any storage node",
                    o.size
                );
                self.report(
                    Kind::OrphanObject,
                    format!("S3 host {host}, {key}"),
                    detail,
                    action,
                );
            }
            self.tick(format!("S3 host {host}: {} objects", self.report.objects));
            match page.next {
                Some(t) if !self.stopped() => token = Some(t),
                _ => return Ok(()),
            }
        }
    }

    /// Deletes an orphaned object unless a row names it now; false if one does.
    fn delete_orphan(
        &self,
        shards: &[Shard],
        store: &S3Store,
        object: (u32, u64, String),
    ) -> Result<bool> {
        let key = object.2.clone();
        let one = [object];
        for s in shards {
            if !rows::named_objects(s, &one)?.is_empty() {
                return Ok(false);
            }
        }
        store.delete(&key)?;
        Ok(true)
    }
}

/// What a repair's outcome means for the problem; none: the rows changed
/// meanwhile (a mount fixed or replaced them), so there is no problem.
fn outcome(r: Result<Repair, impl std::fmt::Display>) -> Option<Action> {
    match r {
        Ok(Repair::Done) => Some(Action::Repaired),
        Ok(Repair::Changed) => None,
        Ok(Repair::Refused(why)) => Some(Action::NotRepaired(why.into())),
        Err(e) => Some(Action::NotRepaired(e.to_string())),
    }
}

/// (space, inode) of a key move-to-s3 writes: `<space>/<inode>/<32 hex>`.
fn moved_file_key(key: &str) -> Option<(u32, u64)> {
    let mut parts = key.split('/');
    let (space, ino, unique) = (parts.next()?, parts.next()?, parts.next()?);
    let number =
        |s: &str| !s.is_empty() && !s.starts_with('0') && s.bytes().all(|b| b.is_ascii_digit());
    let unique_ok = unique.len() == 32
        && unique
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if parts.next().is_some() || !number(space) || !number(ino) || !unique_ok {
        return None;
    }
    Some((space.parse().ok()?, ino.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::moved_file_key;

    #[test]
    fn only_move_to_s3_keys_are_looked_at() {
        let u = crate::object_store::unique();
        assert_eq!(moved_file_key(&format!("3/17/{u}")), Some((3, 17)));
        assert_eq!(
            moved_file_key(&format!("4294967295/9/{u}")),
            Some((u32::MAX, 9))
        );
        for other in [
            format!("tshs-backup/3/17/{u}"),
            "tshs-manifest/3".to_string(),
            format!("tshs-probe/{u}"),
            format!("03/17/{u}"),
            format!("3/17/{u}/x"),
            format!("3/17/{}", &u[..31]),
            format!("3/17/{}", u.to_uppercase()),
            format!("4294967296/17/{u}"),
            "other-app/file.txt".to_string(),
        ] {
            assert_eq!(moved_file_key(&other), None, "{other}");
        }
    }
}
