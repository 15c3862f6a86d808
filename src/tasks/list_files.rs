//! list-files: the regular files of a space with their size and state, as
//! the Storage Node holds them (deleted files included until purged).

use std::collections::HashMap;

use anyhow::{Result, anyhow, bail};
use mysql::prelude::Queryable;

use super::{FileRow, FileState};
use crate::cluster::Cluster;
use crate::fs::attr::Node;
use crate::fs::now_ns;
use crate::shard::SETTLE_SECS;

const ROOT: u64 = 1;

pub fn run(cluster: &Cluster, space: u32, path: Option<&str>) -> Result<Vec<FileRow>> {
    let row = cluster
        .space(space)?
        .ok_or_else(|| anyhow!("there is no space {space} (see tshs list-spaces)"))?;
    let shard = cluster.shard(row.node_id)?;
    let db = shard.db();
    type Inode = (u64, u32, u64, u8, i64, u8);
    let inodes: Vec<Inode> = db.read(|c| {
        c.exec(
            "SELECT ino, mode, size, state, mtime, IF(s3_key IS NOT NULL, 1, IF(import_path IS NOT NULL, 2, 0))
             FROM inodes WHERE space_id = ?",
            (space,),
        )
    })?;
    let dentries: Vec<(u64, Vec<u8>, u64)> = db.read(|c| {
        c.exec(
            "SELECT parent, name, ino FROM dentries WHERE space_id = ? ORDER BY parent, name",
            (space,),
        )
    })?;
    let mut children: HashMap<u64, Vec<(Vec<u8>, u64)>> = HashMap::new();
    for (parent, name, ino) in dentries {
        children.entry(parent).or_default().push((name, ino));
    }
    let modes: HashMap<u64, u32> = inodes.iter().map(|i| (i.0, i.1)).collect();
    let is_dir = |ino: u64| {
        modes
            .get(&ino)
            .is_some_and(|m| m & libc::S_IFMT == libc::S_IFDIR)
    };

    // Where to start: the space root or the named path inside it.
    let mut start = (ROOT, String::new());
    for part in path.unwrap_or("").split('/').filter(|p| !p.is_empty()) {
        if !is_dir(start.0) {
            bail!("'{}' in space {space} is not a directory", start.1);
        }
        let next = children
            .get(&start.0)
            .and_then(|c| c.iter().find(|(n, _)| n == part.as_bytes()))
            .map(|(_, i)| *i)
            .ok_or_else(|| {
                anyhow!(
                    "no such file or directory in space {space}: {}",
                    path.unwrap_or("")
                )
            })?;
        start = (next, join(&start.1, part.as_bytes()));
    }

    // Every name under the start (a hard-linked file shows under each name).
    let mut named: Vec<(String, u64)> = Vec::new();
    let mut stack = vec![start.clone()];
    while let Some((dir, prefix)) = stack.pop() {
        if !is_dir(dir) {
            named.push((prefix, dir));
            continue;
        }
        for (name, ino) in children.get(&dir).into_iter().flatten() {
            stack.push((*ino, join(&prefix, name)));
        }
    }
    let whole_space = start.0 == ROOT;
    let settled_before = now_ns() - SETTLE_SECS * 1_000_000_000;
    let by_ino: HashMap<u64, &Inode> = inodes.iter().map(|i| (i.0, i)).collect();
    let state_of = |i: &Inode, name: &str| {
        if i.3 > 0 {
            FileState::Deleted
        } else if i.5 == 1 {
            FileState::OnS3
        } else if i.5 == 2 {
            FileState::OnDisk
        } else if i.4 < settled_before && !name.ends_with("last.log") {
            FileState::ReadOnly
        } else {
            FileState::InDb
        }
    };
    let mut out: Vec<FileRow> = named
        .into_iter()
        .filter_map(|(path, ino)| {
            let i = by_ino.get(&ino)?;
            (i.1 & libc::S_IFMT == libc::S_IFREG).then(|| FileRow {
                ino: Node::Space(space, ino).ino(),
                size: i.2,
                state: state_of(i, &path),
                path,
            })
        })
        .collect();
    if whole_space {
        // Deleted files have no name left.
        out.extend(
            inodes
                .iter()
                .filter(|i| i.3 > 0 && i.1 & libc::S_IFMT == libc::S_IFREG)
                .map(|i| FileRow {
                    ino: Node::Space(space, i.0).ino(),
                    size: i.2,
                    state: FileState::Deleted,
                    path: format!("(inode {})", Node::Space(space, i.0).ino()),
                }),
        );
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn join(prefix: &str, name: &[u8]) -> String {
    let name = String::from_utf8_lossy(name);
    if prefix.is_empty() {
        name.into_owned()
    } else {
        format!("{prefix}/{name}")
    }
}
