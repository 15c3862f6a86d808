//! list-files: the regular files of a space with their size and state, as
//! the Storage Node holds them (deleted files included until purged).

use std::collections::HashMap;

use anyhow::{Result, anyhow, bail};

use super::{FileRow, FileState};
use crate::clock::now_ns;
use crate::cluster::Cluster;
use crate::fs::attr::Node;
use crate::shard::{DataPlace, ListedInode, SETTLE_SECS};

const ROOT: u64 = 1;

pub fn run(cluster: &Cluster, space: u32, path: Option<&str>) -> Result<Vec<FileRow>> {
    let row = cluster
        .space(space)?
        .ok_or_else(|| anyhow!("there is no space {space} (see tshs list-spaces)"))?;
    let shard = cluster.shard(row.node_id)?;
    let inodes = shard.list_inodes(space)?;
    let dentries = shard.list_dentries(space)?;
    let mut children: HashMap<u64, Vec<(Vec<u8>, u64)>> = HashMap::new();
    for d in dentries {
        children.entry(d.parent).or_default().push((d.name, d.ino));
    }
    let modes: HashMap<u64, u32> = inodes.iter().map(|i| (i.ino, i.mode)).collect();
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
    let by_ino: HashMap<u64, &ListedInode> = inodes.iter().map(|i| (i.ino, i)).collect();
    let state_of = |i: &ListedInode, name: &str| {
        if i.deleted {
            FileState::Deleted
        } else if i.data == DataPlace::ObjectStore {
            FileState::OnS3
        } else if i.data == DataPlace::Disk {
            FileState::OnDisk
        } else if i.mtime < settled_before && !name.ends_with("last.log") {
            FileState::ReadOnly
        } else {
            FileState::InDb
        }
    };
    let mut out: Vec<FileRow> = named
        .into_iter()
        .filter_map(|(path, ino)| {
            let i = by_ino.get(&ino)?;
            (i.mode & libc::S_IFMT == libc::S_IFREG).then(|| FileRow {
                ino: Node::Space(space, ino).ino(),
                size: i.size,
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
                .filter(|i| i.deleted && i.mode & libc::S_IFMT == libc::S_IFREG)
                .map(|i| FileRow {
                    ino: Node::Space(space, i.ino).ino(),
                    size: i.size,
                    state: FileState::Deleted,
                    path: format!("(inode {})", Node::Space(space, i.ino).ino()),
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
