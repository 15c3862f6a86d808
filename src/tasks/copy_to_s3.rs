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
use mysql::prelude::Queryable;

use super::manifest::{self, Data, Dentry, Inode, Manifest};
use super::move_to_s3::read_range;
use super::{Outcome, Progress, ProgressFn, TaskOptions};
use crate::cluster::Cluster;
use crate::fs::now_ns;
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
    let newest: Option<Option<i64>> = shard.db().read(|c| {
        c.exec_first(
            "SELECT MAX(ctime) FROM inodes WHERE space_id = ? AND state = 0",
            (space,),
        )
    })?;
    if let (Some(p), Some(Some(newest))) = (&prev, newest)
        && p.changed == newest
    {
        return Ok(None);
    }
    // One consistent snapshot of the space's rows.
    type IRow = (
        u64,
        u32,
        u32,
        u32,
        u32,
        u64,
        u64,
        u32,
        (i64, i64, i64, i64),
        Option<Vec<u8>>,
        Option<u32>,
        Option<Vec<u8>>,
    );
    let snapshot = shard
        .tx(|tx| {
            let counters: Option<(u64, u64)> = tx.exec_first(
                "SELECT next_ino, next_seq FROM spaces WHERE space_id = ?",
                (space,),
            )?;
            let inodes: Vec<mysql::Row> = tx.exec(
                "SELECT ino, mode, uid, gid, nlink, size, stored, rdev, atime, mtime, ctime, btime, target, s3_host, s3_key
                 FROM inodes WHERE space_id = ? AND state = 0 ORDER BY ino",
                (space,),
            )?;
            let dentries: Vec<(u64, u64, u64, Vec<u8>)> = tx.exec(
                "SELECT parent, seq, ino, name FROM dentries WHERE space_id = ? ORDER BY parent, seq",
                (space,),
            )?;
            let xattrs: Vec<(u64, Vec<u8>, Vec<u8>)> = tx.exec(
                "SELECT ino, name, value FROM xattrs WHERE space_id = ? ORDER BY ino, name",
                (space,),
            )?;
            Ok((counters, inodes, dentries, xattrs))
        })
        .map_err(|e| anyhow::anyhow!("storage node {}: {e}", shard.id()))?;
    let (Some((next_ino, next_seq)), rows, dentries, xattrs) = snapshot else {
        return Ok(None); // the space is not (or no longer) here
    };
    let inodes: Vec<IRow> = rows
        .into_iter()
        .map(|r| {
            let g = |i: usize| -> u64 { r.get(i).unwrap_or(0) };
            let t = |i: usize| -> i64 { r.get(i).unwrap_or(0) };
            (
                g(0),
                g(1) as u32,
                g(2) as u32,
                g(3) as u32,
                g(4) as u32,
                g(5),
                g(6),
                g(7) as u32,
                (t(8), t(9), t(10), t(11)),
                r.get::<Option<Vec<u8>>, _>(12).flatten(),
                r.get::<Option<u32>, _>(13).flatten(),
                r.get::<Option<Vec<u8>>, _>(14).flatten(),
            )
        })
        .collect();
    let changed = inodes.iter().map(|i| i.8.2).max().unwrap_or(0);
    let logs: Vec<u64> = dentries
        .iter()
        .filter(|d| d.3 == b"last.log")
        .map(|d| d.2)
        .collect();
    let prev_data: HashMap<u64, (&Inode, &Data)> = prev
        .iter()
        .flat_map(|m| m.inodes.iter().map(|i| (i.ino, (i, &i.data))))
        .collect();

    let mut uploaded = 0u64;
    let mut records = Vec::new();
    let mut new_backups = HashMap::new();
    let is_reg = |mode: u32| mode & libc::S_IFMT == libc::S_IFREG;
    for i in &inodes {
        if !logs.contains(&i.0) || !is_reg(i.1) || i.11.is_some() {
            continue;
        }
        // Unchanged since its last backup?
        if let Some((p, Data::Backup { .. })) = prev_data.get(&i.0)
            && p.size == i.5
            && p.times[1] == i.8.1
        {
            continue;
        }
        let key = format!("tshs-backup/{space}/{}/{}", i.0, unique());
        let record = shard.begin_upload(host.id, &key, space, i.0)?;
        records.push(record);
        let (ino, size) = (i.0, i.5);
        store.put(
            &key,
            size,
            &Upload {
                read: &|off, len| read_range(shard, space, ino, off, len),
                started: &|id| shard.touch_upload(record, Some(id)),
                progress: &|_| Ok(()),
            },
        )?;
        uploaded += size;
        new_backups.insert(i.0, key);
    }
    if new_backups.is_empty() && prev.as_ref().is_some_and(|p| p.changed == changed) {
        return Ok(None);
    }

    let mut m = Manifest {
        space,
        next_ino,
        next_seq,
        changed,
        written: now_ns(),
        ..Default::default()
    };
    let mut kept: Vec<String> = Vec::new();
    for i in &inodes {
        let data = if let (Some(h), Some(k)) = (i.10, &i.11) {
            Data::Object {
                host: h,
                key: String::from_utf8_lossy(k).into_owned(),
            }
        } else if let Some(k) = new_backups.get(&i.0) {
            Data::Backup {
                host: host.id,
                key: k.clone(),
            }
        } else if let (true, Some((p, Data::Backup { host, key }))) =
            (logs.contains(&i.0), prev_data.get(&i.0))
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
            ino: i.0,
            mode: i.1,
            uid: i.2,
            gid: i.3,
            nlink: i.4,
            size: i.5,
            stored: i.6,
            rdev: i.7,
            times: [i.8.0, i.8.1, i.8.2, i.8.3],
            target: i.9.clone(),
            data,
        });
    }
    m.dentries = dentries
        .into_iter()
        .map(|(parent, seq, ino, name)| Dentry {
            parent,
            seq,
            ino,
            name,
        })
        .collect();
    m.xattrs = xattrs;
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
        let now = now_ns();
        shard
            .tx(|tx| {
                for (h, k, ino) in &old {
                    tx.exec_drop(
                        "INSERT INTO s3_uploads (s3_host, s3_key, space_id, ino, state, touched_at)
                         VALUES (?, ?, ?, ?, 'garbage', ?)",
                        (h, k, space, ino, now),
                    )?;
                }
                Ok(())
            })
            .map_err(|e| anyhow::anyhow!("storage node {}: {e}", shard.id()))?;
    }
    Ok(Some(uploaded))
}
