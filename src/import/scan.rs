//! The scanner of `import-volumes`: which volumes and spaces a
//! `/spacedata` tree holds, refusing what the mount could not show.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};

use super::sorted_dir;
use crate::cluster::{DiskVolume, check_volume_name, parse_space_id};

/// Reads the layout of a `/spacedata` tree: `<volume>/<space id>/…` (a
/// volume or space directory may be a symlink to where it lives). Anything
/// else at those two levels is refused (the mount could not show it),
/// except `lost+found`.
pub fn scan_root(root: &Path) -> Result<Vec<DiskVolume>> {
    let meta =
        std::fs::metadata(root).with_context(|| format!("cannot import {}", root.display()))?;
    if !meta.is_dir() {
        bail!("cannot import {}: not a directory", root.display());
    }
    if root.as_os_str().as_bytes().contains(&b';') {
        bail!(
            "cannot import {}: the path may not contain ';'",
            root.display()
        );
    }
    let fs = nix::sys::statfs::statfs(root)
        .with_context(|| format!("cannot import {}", root.display()))?;
    if fs.filesystem_type().0 as i64 == FUSE_SUPER_MAGIC {
        bail!(
            "cannot import {}: it is on a FUSE file system (a tshs mount cannot import itself)",
            root.display()
        );
    }
    let is_dir = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_dir());
    let mut volumes = Vec::new();
    for (name, path) in sorted_dir(root)? {
        if name == "lost+found" {
            continue;
        }
        let text = name
            .to_str()
            .ok_or_else(|| anyhow!("cannot import {}: not a UTF-8 name", path.display()))?;
        check_volume_name(text).with_context(|| format!("cannot import {}", path.display()))?;
        if !is_dir(&path) {
            bail!(
                "cannot import {}: only volume directories may be at the top",
                path.display()
            );
        }
        let mut spaces = Vec::new();
        for (sname, spath) in sorted_dir(&path)? {
            if sname == "lost+found" {
                continue;
            }
            let id = sname.to_str().and_then(parse_space_id).ok_or_else(|| {
                anyhow!(
                    "cannot import {}: not a space directory (a space's name is its decimal ID)",
                    spath.display()
                )
            })?;
            if !is_dir(&spath) {
                bail!(
                    "cannot import {}: a space must be a directory",
                    spath.display()
                );
            }
            spaces.push((id, spath));
        }
        volumes.push(DiskVolume {
            name: text.to_string(),
            spaces,
        });
    }
    let mut seen = HashMap::new();
    for v in &volumes {
        for (id, path) in &v.spaces {
            if let Some(other) = seen.insert(*id, path) {
                bail!(
                    "cannot import: space {id} is both {} and {}",
                    other.display(),
                    path.display()
                );
            }
        }
    }
    Ok(volumes)
}

/// `statfs`'s type of a FUSE file system.
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_root_finds_volumes_and_refuses_what_the_mount_cannot_show() {
        let dir = std::env::temp_dir().join(format!("tshs-scan-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("vol01/3")).unwrap();
        std::fs::create_dir_all(dir.join("vol01/12")).unwrap();
        std::fs::create_dir_all(dir.join("lost+found")).unwrap();
        std::fs::create_dir_all(dir.join("vol01/lost+found")).unwrap();
        let v = scan_root(&dir).unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].name, "vol01");
        assert_eq!(
            v[0].spaces.iter().map(|s| s.0).collect::<Vec<_>>(),
            vec![12, 3]
        );
        std::fs::create_dir_all(dir.join("vol02/3")).unwrap();
        let e = format!("{:#}", scan_root(&dir).unwrap_err());
        assert!(e.contains("space 3 is both"), "{e}");
        std::fs::remove_dir_all(dir.join("vol02")).unwrap();
        std::fs::write(dir.join("vol01/notes"), b"x").unwrap();
        let e = format!("{:#}", scan_root(&dir).unwrap_err());
        assert!(e.contains("not a space directory"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
        let e = format!("{:#}", scan_root(&dir).unwrap_err());
        assert!(e.contains("cannot import"), "{e}");
    }
}
