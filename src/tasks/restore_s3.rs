//! restore-from-s3: rebuilds a lost Storage Node's spaces in a new empty
//! database from the object store alone (the manifests and backups of
//! copy-to-s3, the objects of move-to-s3), then points the Admin Node at
//! the new database.
//!
//! For every space the Admin Node places on the node, the newest manifest
//! found on any S3 host is loaded in one transaction: counters, inodes,
//! directory entries, xattrs. A moved file points at its object again (it
//! must still exist); a `last.log` is copied back from its backup into the
//! database. Files whose data was only in the lost database are left out,
//! and counted. A space without a manifest gets an empty root directory,
//! except a space of an unfinished import: its tree is imported again from
//! the on-disk tree (copy-to-s3 does not back up such spaces), so it is
//! as imported, without what changed since (that was only in the lost
//! database).

use std::collections::HashMap;

use anyhow::{Context, Result, bail};

use super::manifest::{self, Data, Manifest};
use crate::cluster::Cluster;
use crate::config::ConnOptions;
use crate::object_store::S3Store;
use crate::shard::{self, DentryRow, InodeRow, ReadBackup, Shard, SpaceRows};

/// What a restore did, for the command's output.
#[derive(Debug, Default)]
pub struct Restored {
    pub spaces: u64,
    pub without_manifest: Vec<u32>,
    /// Spaces of an unfinished import whose tree comes from disk again.
    pub reimported: Vec<u32>,
    pub files: u64,
    pub from_objects: u64,
    pub from_backups: u64,
    /// Regular files the manifests list but the store has no data of.
    pub lost: u64,
    /// The first [`LOST_NAMED`] of them, as `space N: /path`.
    pub lost_paths: Vec<String>,
}

/// How many lost files the summary names (the log names every one).
pub const LOST_NAMED: usize = 20;

pub fn run(cluster: &Cluster, node: u32, conn: &ConnOptions) -> Result<Restored> {
    cluster.node(node)?;
    let hosts = cluster.s3_hosts()?;
    if hosts.is_empty() {
        bail!("there is no S3 host to restore from (see tshs list-s3-hosts)");
    }
    let stores: Vec<std::sync::Arc<S3Store>> = hosts
        .iter()
        .map(|h| cluster.object_store(h.id))
        .collect::<Result<_>>()?;
    let placed: Vec<crate::cluster::SpaceRow> = cluster
        .live_spaces()?
        .into_iter()
        .filter(|s| s.node_id == node)
        .collect();
    // A space whose tree is still on disk had no rows: nothing to restore.
    let spaces: Vec<u32> = placed
        .iter()
        .filter(|s| s.import_from.is_none())
        .map(|s| s.id)
        .collect();
    let importing: Vec<u32> = placed
        .iter()
        .filter(|s| s.importing)
        .map(|s| s.id)
        .collect();
    // Read every manifest before touching anything.
    let mut manifests = Vec::new();
    for &space in &spaces {
        let mut best: Option<Manifest> = None;
        for s in &stores {
            if let Some(text) = s.get(&manifest::key(space))? {
                let m = Manifest::parse(&String::from_utf8_lossy(&text)).with_context(|| {
                    format!("the manifest of space {space} on {}", s.host().describe())
                })?;
                if best.as_ref().is_none_or(|b| m.written > b.written) {
                    best = Some(m);
                }
            }
        }
        manifests.push((space, best));
    }
    let db = shard::create_tables(conn)?;
    drop(db);
    let target = Shard::connect(node, conn, 4)?;
    let mut r = Restored::default();
    for (space, m) in manifests {
        match m {
            Some(m) => load(cluster, &target, &m, &mut r)
                .with_context(|| format!("restoring space {space}"))?,
            None if importing.contains(&space) => r.reimported.push(space),
            None => {
                target.create_space(space, 0, 0, 0o755)?;
                r.without_manifest.push(space);
            }
        }
        r.spaces += 1;
    }
    cluster.replace_node_connection(node, conn)?;
    for &space in &r.reimported {
        cluster.import_tree_again(space)?;
    }
    Ok(r)
}

/// Loads one manifest into the new database, in one transaction.
fn load(cluster: &Cluster, target: &Shard, m: &Manifest, r: &mut Restored) -> Result<()> {
    let space = m.space;
    // Which files can get their data back (checked before the transaction).
    let mut skip = std::collections::HashSet::new();
    let names = std::cell::OnceCell::new();
    for i in &m.inodes {
        if i.mode & libc::S_IFMT != libc::S_IFREG {
            continue;
        }
        r.files += 1;
        let ok = match &i.data {
            Data::None => false,
            Data::Object { host, key } | Data::Backup { host, key } => cluster
                .object_store(*host)
                .ok()
                .and_then(|s| s.head(key).ok().flatten())
                .is_some_and(|(size, _)| size == i.size),
        };
        if !ok {
            skip.insert(i.ino);
            r.lost += 1;
            let path = super::manifest::path_of(names.get_or_init(|| m.names()), i.ino);
            log::warn!(
                "restore-from-s3: space {space}: {path} (inode {}) has no copy in the object store; left out",
                i.ino
            );
            if r.lost_paths.len() < LOST_NAMED {
                r.lost_paths.push(format!("space {space}: {path}"));
            }
        }
    }
    let mut rows = SpaceRows {
        next_ino: m.next_ino,
        next_seq: m.next_seq,
        ..Default::default()
    };
    let mut backups = HashMap::new();
    let (mut from_objects, mut from_backups) = (0, 0);
    for i in m.inodes.iter().filter(|i| !skip.contains(&i.ino)) {
        let (s3_host, s3_key, stored) = match &i.data {
            Data::Object { host, key } => {
                from_objects += 1;
                (Some(*host), Some(key.clone().into_bytes()), i.stored)
            }
            Data::Backup { host, key } => {
                from_backups += 1;
                backups.insert(i.ino, (*host, key.clone()));
                (None, None, 0) // what restore_space copies in
            }
            Data::None => (None, None, 0),
        };
        rows.inodes.push(InodeRow {
            ino: i.ino,
            mode: i.mode,
            uid: i.uid,
            gid: i.gid,
            nlink: i.nlink,
            size: i.size,
            stored,
            rdev: i.rdev,
            times: i.times,
            target: i.target.clone(),
            s3_host,
            s3_key,
        });
    }
    rows.dentries = m
        .dentries
        .iter()
        .filter(|d| !skip.contains(&d.ino))
        .map(|d| DentryRow {
            parent: d.parent,
            seq: d.seq,
            ino: d.ino,
            name: d.name.clone(),
        })
        .collect();
    rows.xattrs = m
        .xattrs
        .iter()
        .filter(|x| !skip.contains(&x.0))
        .cloned()
        .collect();
    let open_backup = |host: u32, key: &str| -> Result<ReadBackup, String> {
        let store = cluster
            .object_store(host)
            .map_err(|e| format!("S3 host {host}: {e:#}"))?;
        let key = key.to_string();
        Ok(Box::new(move |off, n| {
            store.get_range(&key, off, n).map_err(|e| e.to_string())
        }))
    };
    target.restore_space(space, &rows, &backups, &open_backup)?;
    r.from_objects += from_objects;
    r.from_backups += from_backups;
    Ok(())
}
