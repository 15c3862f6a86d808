//! The restore commands of the reference (`deactivate_space(3);;` …): a
//! space or every space of a volume is deactivated while the administrator
//! copies a backup into it through the mount, then reactivated. Each step
//! prints the reference's log lines.

use anyhow::{Result, anyhow, bail};

use crate::cluster::{Cluster, SpaceStatus, VolumeRow};

/// `restore_help`.
pub const HELP: &str = "\
Before restoring a Volume or Space, you must run the deactivate function.
This ensures that the Spaces are not accessable during restore. Then
restore the Volume or Space, by copying your backup to the appropriate
location. Once this is done, reactivate the Volume or Space.

list_volumes;;                 Print a list of Volumes
list_spaces;;                  Print a list of Spaces.
deactivate_volume(vol_id);;    Deactivates all Spaces on a Volume.
deactivate_space(space_id);;   Deactivates a Space.
reactivate_volume(vol_id);;    Reactivates all Spaces on a Volume.
reactivate_space(space_id);;   Reactivates a Space.

On the command line: tshs list-volumes, tshs list-spaces,
tshs deactivate-volume <vol_id>, tshs deactivate-space <space_id>,
tshs reactivate-volume <vol_id>, tshs reactivate-space <space_id>.
Deleted Spaces are not affected by the Volume commands; reactivate_space
also brings back a deleted Space that was not yet purged.
";

/// A log line in the reference's format (`160809 16:00:33 [Notice] …`).
fn notice(out: &mut String, msg: &str) {
    out.push_str(&format!("{} [Notice] {msg}\n", local_time()));
}

fn local_time() -> String {
    let now = unsafe { libc::time(std::ptr::null_mut()) };
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    unsafe { libc::localtime_r(&now, &mut tm) };
    format!(
        "{:02}{:02}{:02} {:02}:{:02}:{:02}",
        tm.tm_year % 100,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

pub fn deactivate_space(cluster: &Cluster, id: u32) -> Result<String> {
    let mut out = String::new();
    cluster.deactivate_space(id)?;
    notice(&mut out, &format!("Deactivate space [{id}]"));
    notice(&mut out, &format!("Space: {id}, deactivated"));
    Ok(out)
}

/// Reactivates a space; `root` is where the tree is mounted (for the log line).
pub fn reactivate_space(cluster: &Cluster, id: u32, root: &str) -> Result<String> {
    let mut out = String::new();
    reactivate_one(cluster, id, root, &mut out)?;
    Ok(out)
}

fn reactivate_one(cluster: &Cluster, id: u32, root: &str, out: &mut String) -> Result<()> {
    let row = cluster.reactivate_space(id)?;
    let volume = cluster
        .volumes()?
        .into_iter()
        .find(|v| v.id == row.volume_id)
        .ok_or_else(|| {
            anyhow!(
                "space {id} names volume {}, which does not exist",
                row.volume_id
            )
        })?;
    let (log_no, offset) = cluster.shard(row.node_id)?.log_position(id)?;
    notice(out, &format!("Reactivate Space [{id}]"));
    notice(out, &format!("{root}/{}/{id}", volume.name));
    notice(
        out,
        &format!(
            "Space: {id}, reactivation successful [Restore ID: {}, Log No: {log_no}, Log Offset: {offset}]",
            row.restore_id
        ),
    );
    Ok(())
}

/// A volume and the ids of its spaces in `status` (deleted spaces never).
fn volume_spaces(
    cluster: &Cluster,
    vol: u32,
    status: SpaceStatus,
) -> Result<(VolumeRow, Vec<u32>)> {
    let volume = cluster
        .volumes()?
        .into_iter()
        .find(|v| v.id == vol)
        .ok_or_else(|| anyhow!("there is no volume {vol} (see tshs list-volumes)"))?;
    let spaces = cluster
        .spaces_in_volume(vol)?
        .into_iter()
        .filter(|s| s.status == status)
        .map(|s| s.id)
        .collect();
    Ok((volume, spaces))
}

pub fn deactivate_volume(cluster: &Cluster, vol: u32) -> Result<String> {
    let (volume, spaces) = volume_spaces(cluster, vol, SpaceStatus::Active)?;
    if spaces.is_empty() {
        bail!("volume {} has no active space to deactivate", volume.name);
    }
    let mut out = String::new();
    notice(&mut out, &format!("Deactivate Volume [{vol}]"));
    notice(
        &mut out,
        &format!(
            "Volume {}: Spaces to deactivate: {}",
            volume.name,
            spaces.len()
        ),
    );
    for id in spaces {
        cluster.deactivate_space(id)?;
        notice(&mut out, &format!("Space: {id}, deactivated"));
    }
    Ok(out)
}

pub fn reactivate_volume(cluster: &Cluster, vol: u32, root: &str) -> Result<String> {
    let (volume, spaces) = volume_spaces(cluster, vol, SpaceStatus::Deactivated)?;
    if spaces.is_empty() {
        bail!(
            "volume {} has no deactivated space to reactivate",
            volume.name
        );
    }
    let mut out = String::new();
    notice(&mut out, &format!("Reactivate Volume [{vol}]"));
    for id in spaces {
        reactivate_one(cluster, id, root, &mut out)?;
    }
    Ok(out)
}
