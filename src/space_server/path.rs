//! Request paths → paths below the served root.
//!
//! A request path is split at `/`, each segment percent-decoded on its own.
//! A segment that decodes to something holding `/` or NUL (`%2F`, `%00`),
//! and the dot segments `.` and `..`, are refused rather than normalised, so
//! no spelling of a path can name anything but the one file it reads as.
//! Symlinks are the file layer's business: it opens with `RESOLVE_BENEATH`.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

/// A path below the root, as validated segments: `[volume, space, …]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelPath {
    parts: Vec<OsString>,
}

/// Why a request path was refused (always a 403: it tried to leave its place).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused(pub &'static str);

impl RelPath {
    /// Parses the path of a request URI (without its query).
    pub fn parse(raw: &str) -> Result<RelPath, Refused> {
        if !raw.starts_with('/') {
            return Err(Refused("the path must start with /"));
        }
        let mut parts = Vec::new();
        for seg in raw.split('/').filter(|s| !s.is_empty()) {
            let bytes: Vec<u8> = percent_encoding::percent_decode_str(seg).collect();
            if bytes.contains(&b'/') {
                return Err(Refused("encoded slashes are not allowed in paths"));
            }
            if bytes.contains(&0) {
                return Err(Refused("NUL is not allowed in paths"));
            }
            if bytes == b"." || bytes == b".." {
                return Err(Refused("dot segments are not allowed in paths"));
            }
            parts.push(OsString::from_vec(bytes));
        }
        Ok(RelPath { parts })
    }

    /// Segments: 0 is the root, 1 a volume, 2 a space, more a path in a space.
    pub fn depth(&self) -> usize {
        self.parts.len()
    }

    /// The volume's path and the space's name, for a path in a space.
    pub fn volume_and_space(&self) -> Option<(RelPath, &OsStr)> {
        let [volume, space, ..] = &self.parts[..] else {
            return None;
        };
        Some((
            RelPath {
                parts: vec![volume.clone()],
            },
            space.as_os_str(),
        ))
    }

    /// The path relative to the root (`.` for the root itself).
    pub fn to_path(&self) -> PathBuf {
        if self.parts.is_empty() {
            return PathBuf::from(".");
        }
        self.parts.iter().collect()
    }

    /// The parent directory's relative path and the last segment.
    pub fn split_last(&self) -> Option<(RelPath, &OsStr)> {
        let (last, rest) = self.parts.split_last()?;
        Some((
            RelPath {
                parts: rest.to_vec(),
            },
            last.as_os_str(),
        ))
    }

    /// True for `<volume>/<space>/protolog/last.log`, the only POST target.
    pub fn is_last_log(&self) -> bool {
        self.parts.len() == 4
            && self.parts[2].as_bytes() == b"protolog"
            && self.parts[3].as_bytes() == b"last.log"
    }

    /// For log lines and listings: `/vol01/3/a b` (lossy for non-UTF-8 names).
    pub fn display(&self) -> String {
        let mut s = String::new();
        for p in &self.parts {
            s.push('/');
            s.push_str(&p.to_string_lossy());
        }
        if s.is_empty() {
            s.push('/');
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths() {
        let p = RelPath::parse("/vol01/3/protolog/last.log").unwrap();
        assert_eq!(p.depth(), 4);
        assert!(p.is_last_log());
        assert_eq!(p.to_path(), PathBuf::from("vol01/3/protolog/last.log"));
        assert_eq!(RelPath::parse("/").unwrap().to_path(), PathBuf::from("."));
        assert_eq!(RelPath::parse("//vol01//3/").unwrap().depth(), 2);
        let p = RelPath::parse("/vol01/3/a%20b").unwrap();
        assert_eq!(p.split_last().unwrap().1, OsStr::new("a b"));
        assert_eq!(p.display(), "/vol01/3/a b");
    }

    #[test]
    fn refused() {
        for bad in [
            "/vol01/3/../4/x",
            "/vol01/3/%2e%2e/4",
            "/vol01/3/./x",
            "/vol01/3/a%2Fb",
            "/vol01/3/a%2fb",
            "/vol01/3/..%2F..%2Fetc",
            "/vol01/3/a%00b",
            "vol01/3",
        ] {
            assert!(RelPath::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
