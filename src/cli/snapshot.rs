//! `tshs snapshot create|list|delete`: point-in-time, read-only views of
//! spaces and volumes, read through every mount under
//! `/<mount>/.snapshots/<name>/<volume>/<space>/`.

use anyhow::{Result, bail};
use clap::Subcommand;

use super::table::{Line, render};
use crate::cluster::{Cluster, SnapshotRow, SpaceStatus};

/// A snapshot's life when `--ttl` is not given.
pub const DEFAULT_TTL: &str = "6h";

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Take a snapshot of a space (its decimal ID) or of a volume (its
    /// name: every space in it).
    Create {
        /// A space ID, or a volume name
        target: String,
        /// The snapshot's name (default: <space ID>-<UTC time> or vol<volume ID>-<UTC time>)
        #[arg(long)]
        name: Option<String>,
        /// How long it lives: seconds, or a number with s, m, h or d
        #[arg(long, default_value = DEFAULT_TTL, value_parser = parse_ttl)]
        ttl: u64,
    },
    /// List the snapshots.
    List,
    /// Delete a snapshot (the rows it alone kept are freed).
    Delete { name: String },
}

/// `90`, `90s`, `15m`, `6h`, `2d` as seconds.
pub fn parse_ttl(s: &str) -> Result<u64, String> {
    let (num, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, "s"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => 0,
    };
    num.parse::<u64>()
        .ok()
        .filter(|_| scale > 0)
        .and_then(|n| n.checked_mul(scale))
        .filter(|n| (1..=crate::cluster::MAX_TTL_SECS).contains(n))
        .ok_or_else(|| {
            format!(
                "expected a duration from 1s to {}d, like 3600, 90m, 6h or 2d",
                crate::cluster::MAX_TTL_SECS / 86400
            )
        })
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of Unix seconds.
pub fn utc(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Days to civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

pub fn run(cluster: &Cluster, cmd: &SnapshotCommand) -> Result<String> {
    match cmd {
        SnapshotCommand::Create { target, name, ttl } => create(cluster, target, name, *ttl),
        SnapshotCommand::List => list(cluster),
        SnapshotCommand::Delete { name } => {
            let s = find(cluster, name)?;
            let freed = cluster.drop_snapshot(s.id)?;
            Ok(format!(
                "Snapshot {name} deleted ({freed} kept rows freed)\n"
            ))
        }
    }
}

fn find(cluster: &Cluster, name: &str) -> Result<SnapshotRow> {
    match cluster.snapshots()?.into_iter().find(|s| s.name == name) {
        Some(s) => Ok(s),
        None => bail!("no snapshot named {name:?} (see tshs snapshot list)"),
    }
}

fn create(cluster: &Cluster, target: &str, name: &Option<String>, ttl: u64) -> Result<String> {
    let spaces: Vec<(u32, u32)> = match crate::cluster::parse_space_id(target) {
        Some(id) => match cluster.space(id)? {
            Some(s) if s.status == SpaceStatus::Deleted => bail!("space {id} is deleted"),
            Some(s) => vec![(s.id, s.volume_id)],
            None => bail!("space {id} does not exist"),
        },
        None => {
            let Some(v) = cluster.volumes()?.into_iter().find(|v| v.name == target) else {
                bail!("no space with ID {target:?} and no volume named {target:?}");
            };
            let spaces = cluster.spaces_in_volume(v.id)?;
            if spaces.is_empty() {
                bail!("volume {target} has no spaces to snapshot");
            }
            spaces.into_iter().map(|s| (s.id, s.volume_id)).collect()
        }
    };
    let name = match name {
        Some(n) => n.clone(),
        None => {
            // IDs, not the volume's name: not every name a volume may have
            // would make a snapshot's.
            let what = match (crate::cluster::parse_space_id(target), spaces.first()) {
                (None, Some((_, vol))) => format!("vol{vol}"),
                _ => target.to_string(),
            };
            let now = crate::clock::now_ns() / 1_000_000_000;
            format!(
                "{what}-{}",
                utc(now).replace([' ', ':'], "").replace('-', "")
            )
        }
    };
    let s = cluster.create_snapshot(&name, &spaces, ttl)?;
    let taken: Vec<i64> = s.spaces.iter().filter_map(|p| p.taken_ms).collect();
    let spread = taken.iter().max().unwrap_or(&0) - taken.iter().min().unwrap_or(&0);
    Ok(format!(
        "Snapshot {} of {} space(s) created, expires {} UTC; spaces taken within {spread} ms of each other\nRead it under <mount>/.snapshots/{}/\n",
        s.name,
        s.spaces.len(),
        utc(s.expires),
        s.name
    ))
}

fn list(cluster: &Cluster) -> Result<String> {
    let rows: Vec<Line> = cluster
        .snapshots()?
        .into_iter()
        .map(|s| {
            let mut spaces: Vec<String> = s.spaces.iter().map(|p| p.space.to_string()).collect();
            if spaces.len() > 8 {
                let n = spaces.len();
                spaces.truncate(8);
                spaces.push(format!("… ({n})"));
            }
            Line::Row(vec![
                s.name,
                s.state,
                utc(s.created),
                utc(s.expires),
                spaces.join(","),
            ])
        })
        .collect();
    let (kept, bytes) = cluster.kept_for_snapshots()?;
    Ok(format!(
        "{}Kept for snapshots: {kept} rows, {} MiB of file data\n",
        render(
            &["Name", "State", "Created (UTC)", "Expires (UTC)", "Spaces"],
            &rows,
        ),
        bytes.div_ceil(1 << 20)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("90"), Ok(90));
        assert_eq!(parse_ttl("90s"), Ok(90));
        assert_eq!(parse_ttl("15m"), Ok(900));
        assert_eq!(parse_ttl("6h"), Ok(21600));
        assert_eq!(parse_ttl("2d"), Ok(172_800));
        for bad in [
            "",
            "0",
            "h",
            "6x",
            "-5",
            "1.5h",
            "31d",
            "99999999999999999999",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(utc(1_796_428_800 + 3661), "2026-12-05 01:01:01");
    }
}
