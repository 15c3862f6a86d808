//! The on-disk import tier: what is read from an imported tree on disk
//! (see [`crate::import`]) — the data of files not copied in yet,
//! extended attributes, times. The disk tree is only read, never changed.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use anyhow::{Result, anyhow};

/// A file whose data is still on the imported disk tree: its path and what
/// the import recorded of it.
pub struct DiskFile<'a> {
    pub path: &'a Path,
    pub size: u64,
    /// Its mtime in ns (`None`: imported before that was recorded).
    pub mtime: Option<i64>,
}

impl<'a> DiskFile<'a> {
    /// From an inode's `import_path`, `size` and `import_mtime`.
    pub fn new(path: &'a [u8], size: u64, mtime: Option<i64>) -> DiskFile<'a> {
        DiskFile {
            path: path_of(path),
            size,
            mtime,
        }
    }
}

/// Reads `[first, last)` of an imported file, cut at its recorded size. A
/// file that is no longer what was imported (another size or mtime, or no
/// longer a regular file) is an error naming it: its bytes would be wrong.
pub fn read_span(f: &DiskFile, first: u64, last: u64) -> io::Result<Vec<u8>> {
    let (path, size) = (f.path, f.size);
    let end = last.min(size);
    if first >= end {
        return Ok(Vec::new());
    }
    let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    // Not following a symlink, not waiting on a FIFO put in its place.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(named)?;
    let meta = file.metadata().map_err(named)?;
    let (len, mtime) = (meta.len(), times_ns(&meta)[1]);
    if !meta.is_file() || len != size || f.mtime.is_some_and(|m| m != mtime) {
        return Err(io::Error::other(format!(
            "{}: changed on disk since it was imported ({len} bytes, mtime {mtime} ns; {size} bytes, mtime {} ns recorded)",
            path.display(),
            f.mtime.map_or("-".to_string(), |m| m.to_string())
        )));
    }
    let mut buf = vec![0u8; (end - first) as usize];
    file.read_exact_at(&mut buf, first).map_err(named)?;
    Ok(buf)
}

/// The extended attributes of a file (not following a symlink).
pub fn xattrs(path: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    let err = || {
        anyhow!(
            "cannot import {}: {}",
            path.display(),
            io::Error::last_os_error()
        )
    };
    // SAFETY: valid C string; a null buffer asks for the size.
    let n = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOTSUP) {
            return Ok(Vec::new());
        }
        return Err(err());
    }
    let mut names = vec![0u8; n as usize];
    // SAFETY: the buffer is as long as we say.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n < 0 {
        return Err(err());
    }
    names.truncate(n as usize);
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name)?;
        // SAFETY: as above.
        let len = unsafe { libc::lgetxattr(c.as_ptr(), cname.as_ptr(), std::ptr::null_mut(), 0) };
        if len < 0 {
            return Err(err());
        }
        let mut value = vec![0u8; len as usize];
        // SAFETY: as above.
        let len = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if len < 0 {
            return Err(err());
        }
        value.truncate(len as usize);
        out.push((name.to_vec(), value));
    }
    Ok(out)
}

/// atime, mtime and ctime in nanoseconds since the epoch.
pub fn times_ns(m: &std::fs::Metadata) -> [i64; 3] {
    let ns = |s: i64, n: i64| s * 1_000_000_000 + n;
    [
        ns(m.atime(), m.atime_nsec()),
        ns(m.mtime(), m.mtime_nsec()),
        ns(m.ctime(), m.ctime_nsec()),
    ]
}

/// The `import_path` bytes of a file, as a path.
pub fn path_of(bytes: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_span_reads_what_was_imported_and_refuses_a_changed_file() {
        let dir = std::env::temp_dir().join(format!("tshs-import-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("f");
        std::fs::write(&f, b"0123456789").unwrap();
        let mtime = times_ns(&std::fs::metadata(&f).unwrap())[1];
        fn file(path: &Path, size: u64, mtime: Option<i64>) -> DiskFile<'_> {
            DiskFile { path, size, mtime }
        }
        let imported = file(&f, 10, Some(mtime));
        assert_eq!(read_span(&imported, 2, 5).unwrap(), b"234");
        assert_eq!(read_span(&imported, 8, 100).unwrap(), b"89");
        assert!(read_span(&imported, 10, 20).unwrap().is_empty());
        assert_eq!(read_span(&file(&f, 10, None), 0, 2).unwrap(), b"01");
        let e = read_span(&file(&f, 12, Some(mtime)), 0, 4)
            .unwrap_err()
            .to_string();
        assert!(e.contains("changed on disk since it was imported"), "{e}");
        // Rewritten to the same size: the mtime tells.
        std::fs::write(&f, b"abcdefghij").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000))
            .unwrap();
        let e = read_span(&imported, 0, 4).unwrap_err().to_string();
        assert!(e.contains("changed on disk since it was imported"), "{e}");
        std::os::unix::fs::symlink(&f, dir.join("link")).unwrap();
        assert!(read_span(&file(&dir.join("link"), 10, None), 0, 1).is_err());
        assert!(read_span(&file(&dir.join("missing"), 10, None), 0, 1).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
