//! copy-to-s3: keeps in the object store what restore-from-s3 needs to
//! rebuild a lost Storage Node's spaces: a manifest per space (see
//! [`super::manifest`]) and a backup copy of every `last.log` (the files
//! that never move to the store, being appended to all the time).
//!
//! A space is visited when something in it changed since its manifest was
//! written (the newest ctime of its inodes is newer than the manifest's),
//! or when a `last.log` differs from its backup. A `last.log` is copied
//! when its size or mtime differ from its last backup, under a fresh key
//! `tshs-backup/<space>/<inode>/<unique>` (recorded as an upload first,
//! so an interrupted run leaves nothing behind for long); the manifest is
//! written after its backups, and the backups it no longer names are
//! recorded as garbage (remove-deleted deletes them after the grace
//! period). Manifests and backups go to the current S3 host; a manifest
//! names the host of every object.
//!
//! What a restore gets back: the tree, attributes and xattrs as of the
//! last run, files moved to the store, and each `last.log` as of its last
//! backup. Files whose data was only in the database (below MinSize, not
//! settled yet) are not in the store. Run copy-to-s3 less often than
//! move-to-s3 (the reference's default: every four hours).

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result};

use super::manifest::{self, Data, Dentry, Inode, Manifest};
use super::{Outcome, Progress, ProgressFn, TaskOptions};
use crate::clock::now_ns;
use crate::cluster::Cluster;
use crate::object_store::{S3Host, S3Store, Upload, unique};
use crate::shard::Shard;

pub fn run(
    cluster: &Cluster,
    opts: &TaskOptions,
    stop: &AtomicBool,
    progress: ProgressFn,
) -> Result<Outcome> {
    let mut out = Outcome::default();
    let Some(host) = cluster.current_s3_host()? else {
        return Ok(out);
    };
    let store = cluster.object_store(host.id)?;
    let spaces = cluster.live_spaces()?;
    // A space whose import is unfinished is backed up once it is all in
    // (files still on disk have no extents to back up).
    let importing = spaces.iter().filter(|s| s.importing).count();
    if importing > 0 {
        out.lines.push(format!(
            "copy-to-s3: {importing} space(s) of an unfinished import are backed up once perform-import is done"
        ));
    }
    for n in cluster.nodes()? {
        if opts.storage_node.is_some_and(|s| s != n.id) {
            continue;
        }
        let shard = cluster.shard(n.id)?;
        for s in spaces.iter().filter(|s| s.node_id == n.id && !s.importing) {
            if opts.should_stop(stop) {
                out.remaining += 1;
                continue;
            }
            let bytes = back_up_space(&shard, &store, &host, s.id)
                .with_context(|| format!("space {} on storage node {}", s.id, n.id))?;
            if let Some(b) = bytes {
                out.done += 1;
                out.bytes += b;
                progress(&Progress {
                    task: "copy-to-s3",
                    done: out.done,
                    total: spaces.len() as u64,
                    bytes: out.bytes,
                    item: format!("space {}", s.id),
                });
            }
        }
    }
    if out.done > 0 {
        out.lines
            .push(format!("copy-to-s3: backed up to {}", host.describe()));
    }
    Ok(out)
}

/// The manifest last written for `space`, from the current host.
fn previous(store: &S3Store, space: u32) -> Result<Option<Manifest>> {
    let Some(text) = store.get(&manifest::key(space))? else {
        return Ok(None);
    };
    match Manifest::parse(&String::from_utf8_lossy(&text)) {
        Ok(m) => Ok(Some(m)),
        Err(e) => {
            log::warn!(
                "copy-to-s3: space {space}: the stored manifest is unreadable ({e:#}); writing a new one"
            );
            Ok(None)
        }
    }
}

/// Backs up one space if it changed; returns the bytes uploaded, or None
/// when there was nothing to do.
fn back_up_space(shard: &Shard, store: &S3Store, host: &S3Host, space: u32) -> Result<Option<u64>> {
    let prev = previous(store, space)?;
    // Nothing changed (every change of data, attributes or names moves a
    // ctime): no need to read the space.
    if let (Some(p), Some(newest)) = (&prev, shard.newest_ctime(space)?)
        && p.changed == newest
    {
        return Ok(None);
    }
    let Some(rows) = shard.space_rows(space)? else {
        return Ok(None); // the space is not (or no longer) here
    };
    let changed = rows.inodes.iter().map(|i| i.times[2]).max().unwrap_or(0);
    let logs: Vec<u64> = rows
        .dentries
        .iter()
        .filter(|d| d.name == b"last.log")
        .map(|d| d.ino)
        .collect();
    let prev_data: HashMap<u64, (&Inode, &Data)> = prev
        .iter()
        .flat_map(|m| m.inodes.iter().map(|i| (i.ino, (i, &i.data))))
        .collect();

    let mut uploaded = 0u64;
    let mut records = Vec::new();
    let mut new_backups = HashMap::new();
    let is_reg = |mode: u32| mode & libc::S_IFMT == libc::S_IFREG;
    for i in &rows.inodes {
        if !logs.contains(&i.ino) || !is_reg(i.mode) || i.s3_key.is_some() {
            continue;
        }
        // Unchanged since its last backup?
        if let Some((p, Data::Backup { .. })) = prev_data.get(&i.ino)
            && p.size == i.size
            && p.times[1] == i.times[1]
        {
            continue;
        }
        let key = format!("tshs-backup/{space}/{}/{}", i.ino, unique());
        let record = shard.begin_upload(host.id, &key, space, i.ino)?;
        records.push(record);
        let (ino, size) = (i.ino, i.size);
        store.put(
            &key,
            size,
            &Upload {
                read: &|off, len| shard.read_for_upload(space, ino, off, len),
                started: &|id| shard.touch_upload(record, Some(id)),
                progress: &|_| Ok(()),
            },
        )?;
        uploaded += size;
        new_backups.insert(i.ino, key);
    }
    if new_backups.is_empty() && prev.as_ref().is_some_and(|p| p.changed == changed) {
        return Ok(None);
    }

    let mut m = Manifest {
        space,
        next_ino: rows.next_ino,
        next_seq: rows.next_seq,
        changed,
        written: now_ns(),
        ..Default::default()
    };
    let mut kept: Vec<String> = Vec::new();
    for i in &rows.inodes {
        let data = if let (Some(h), Some(k)) = (i.s3_host, &i.s3_key) {
            Data::Object {
                host: h,
                key: String::from_utf8_lossy(k).into_owned(),
            }
        } else if let Some(k) = new_backups.get(&i.ino) {
            Data::Backup {
                host: host.id,
                key: k.clone(),
            }
        } else if let (true, Some((p, Data::Backup { host, key }))) =
            (logs.contains(&i.ino), prev_data.get(&i.ino))
        {
            // An unchanged last.log keeps its backup (and the size and
            // mtime it was taken at).
            kept.push(key.clone());
            m.inodes.push(Inode {
                data: Data::Backup {
                    host: *host,
                    key: key.clone(),
                },
                ..(*p).clone()
            });
            continue;
        } else {
            Data::None
        };
        m.inodes.push(Inode {
            ino: i.ino,
            mode: i.mode,
            uid: i.uid,
            gid: i.gid,
            nlink: i.nlink,
            size: i.size,
            stored: i.stored,
            rdev: i.rdev,
            times: i.times,
            target: i.target.clone(),
            data,
        });
    }
    m.dentries = rows
        .dentries
        .into_iter()
        .map(|d| Dentry {
            parent: d.parent,
            seq: d.seq,
            ino: d.ino,
            name: d.name,
        })
        .collect();
    m.xattrs = rows.xattrs;
    let text = m.to_text().into_bytes();
    uploaded += text.len() as u64;
    store.put_bytes_whole(&manifest::key(space), text)?;
    // The backups are named by the manifest now: no longer uploads.
    for r in records {
        shard.forget_orphan(r)?;
    }
    // Backups the new manifest no longer names are garbage.
    let old: Vec<(u32, String, u64)> = prev
        .iter()
        .flat_map(|p| p.inodes.iter())
        .filter_map(|i| match &i.data {
            Data::Backup { host, key } if !kept.contains(key) => Some((*host, key.clone(), i.ino)),
            _ => None,
        })
        .collect();
    if !old.is_empty() {
        shard.record_garbage(space, &old)?;
    }
    Ok(Some(uploaded))
}
