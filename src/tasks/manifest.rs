//! A space's manifest: what copy-to-s3 writes to the object store
//! (`tshs-manifest/<space>`) so restore-from-s3 can rebuild the space from
//! the store alone — its counters, every live inode with its attributes
//! and where its data is, every directory entry and xattr.
//!
//! Text, one record per line, fields separated by single spaces; names,
//! symlink targets and xattrs in hex (they are bytes):
//!
//! ```text
//! tshs-manifest 1
//! space <id> <next_ino> <next_seq> <changed> <written>
//! I <ino> <mode> <uid> <gid> <nlink> <size> <stored> <rdev> <atime> <mtime> <ctime> <btime> <target|-> <data>
//! D <parent> <seq> <ino> <name>
//! X <ino> <name> <value>
//! ```
//!
//! `<data>` of a regular file: `O:<host>:<key>` (moved to the store),
//! `B:<host>:<key>` (a backup copy of a `last.log`, as large as `<size>`),
//! or `-` (its data is only in the database: not restorable). `changed`
//! is the newest ctime of the space when the manifest was made.

use anyhow::{Result, anyhow, bail};

/// Where a regular file's data is in the object store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Data {
    None,
    Object { host: u32, key: String },
    Backup { host: u32, key: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    pub ino: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub stored: u64,
    pub rdev: u32,
    /// atime, mtime, ctime, btime (ns)
    pub times: [i64; 4],
    pub target: Option<Vec<u8>>,
    pub data: Data,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dentry {
    pub parent: u64,
    pub seq: u64,
    pub ino: u64,
    pub name: Vec<u8>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    pub space: u32,
    pub next_ino: u64,
    pub next_seq: u64,
    /// Newest ctime in the space when the manifest was made.
    pub changed: i64,
    /// When it was written (ns): the newest of several wins.
    pub written: i64,
    pub inodes: Vec<Inode>,
    pub dentries: Vec<Dentry>,
    pub xattrs: Vec<(u64, Vec<u8>, Vec<u8>)>,
}

/// The object key of a space's manifest.
pub fn key(space: u32) -> String {
    format!("tshs-manifest/{space}")
}

/// Hex, with `=` for nothing (a manifest's fields are never empty).
fn hex(b: &[u8]) -> String {
    if b.is_empty() {
        return "=".into();
    }
    hex::encode(b)
}

fn unhex(s: &str) -> Result<Vec<u8>> {
    if s == "=" {
        return Ok(Vec::new());
    }
    hex::decode(s).map_err(|e| anyhow!("bad hex: {e}"))
}

/// The path of `ino` inside its space (`/protolog/0.log`), from the
/// manifest's [`Manifest::names`]; `?` where the chain of names breaks.
pub fn path_of(names: &std::collections::HashMap<u64, &Dentry>, ino: u64) -> String {
    let mut parts = Vec::new();
    let mut at = ino;
    while at != 1 && parts.len() < 4096 {
        match names.get(&at) {
            Some(d) => {
                parts.push(String::from_utf8_lossy(&d.name).into_owned());
                at = d.parent;
            }
            None => {
                parts.push("?".into());
                break;
            }
        }
    }
    parts.reverse();
    format!("/{}", parts.join("/"))
}

impl Manifest {
    /// Each inode's (first) name, for [`path_of`].
    pub fn names(&self) -> std::collections::HashMap<u64, &Dentry> {
        self.dentries.iter().map(|d| (d.ino, d)).collect()
    }

    pub fn to_text(&self) -> String {
        let mut s = String::from("tshs-manifest 1\n");
        s += &format!(
            "space {} {} {} {} {}\n",
            self.space, self.next_ino, self.next_seq, self.changed, self.written
        );
        for i in &self.inodes {
            let data = match &i.data {
                Data::None => "-".to_string(),
                Data::Object { host, key } => format!("O:{host}:{key}"),
                Data::Backup { host, key } => format!("B:{host}:{key}"),
            };
            s += &format!(
                "I {} {} {} {} {} {} {} {} {} {} {} {} {} {data}\n",
                i.ino,
                i.mode,
                i.uid,
                i.gid,
                i.nlink,
                i.size,
                i.stored,
                i.rdev,
                i.times[0],
                i.times[1],
                i.times[2],
                i.times[3],
                i.target.as_deref().map_or("-".into(), hex),
            );
        }
        for d in &self.dentries {
            s += &format!("D {} {} {} {}\n", d.parent, d.seq, d.ino, hex(&d.name));
        }
        for (ino, n, v) in &self.xattrs {
            s += &format!("X {ino} {} {}\n", hex(n), hex(v));
        }
        s
    }

    pub fn parse(text: &str) -> Result<Manifest> {
        let mut lines = text.lines();
        if lines.next() != Some("tshs-manifest 1") {
            bail!("not a tshs manifest (version 1)");
        }
        let mut m = Manifest::default();
        for (n, line) in lines.enumerate() {
            let f: Vec<&str> = line.split(' ').collect();
            let bad = || anyhow!("manifest line {}: malformed: {line}", n + 2);
            let num =
                |i: usize| -> Result<i64> { f.get(i).and_then(|x| x.parse().ok()).ok_or_else(bad) };
            let unum =
                |i: usize| -> Result<u64> { f.get(i).and_then(|x| x.parse().ok()).ok_or_else(bad) };
            match f[0] {
                "space" if f.len() == 6 => {
                    m.space = unum(1)? as u32;
                    m.next_ino = unum(2)?;
                    m.next_seq = unum(3)?;
                    m.changed = num(4)?;
                    m.written = num(5)?;
                }
                "I" if f.len() == 15 => {
                    let data = match f[14] {
                        "-" => Data::None,
                        d => {
                            let mut p = d.splitn(3, ':');
                            let (kind, host, key) = (p.next(), p.next(), p.next());
                            let host: u32 = host.and_then(|h| h.parse().ok()).ok_or_else(bad)?;
                            let key = key.ok_or_else(bad)?.to_string();
                            match kind {
                                Some("O") => Data::Object { host, key },
                                Some("B") => Data::Backup { host, key },
                                _ => return Err(bad()),
                            }
                        }
                    };
                    m.inodes.push(Inode {
                        ino: unum(1)?,
                        mode: unum(2)? as u32,
                        uid: unum(3)? as u32,
                        gid: unum(4)? as u32,
                        nlink: unum(5)? as u32,
                        size: unum(6)?,
                        stored: unum(7)?,
                        rdev: unum(8)? as u32,
                        times: [num(9)?, num(10)?, num(11)?, num(12)?],
                        target: match f[13] {
                            "-" => None,
                            t => Some(unhex(t)?),
                        },
                        data,
                    });
                }
                "D" if f.len() == 5 => m.dentries.push(Dentry {
                    parent: unum(1)?,
                    seq: unum(2)?,
                    ino: unum(3)?,
                    name: unhex(f[4])?,
                }),
                "X" if f.len() == 4 => m.xattrs.push((unum(1)?, unhex(f[2])?, unhex(f[3])?)),
                _ => return Err(bad()),
            }
        }
        if m.space == 0 {
            bail!("manifest has no space line");
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_of_walks_up_the_names() {
        let d = |parent, ino, name: &str| Dentry {
            parent,
            seq: ino,
            ino,
            name: name.as_bytes().to_vec(),
        };
        let m = Manifest {
            dentries: vec![d(1, 2, "protolog"), d(2, 7, "0.log"), d(9, 8, "lost")],
            ..Default::default()
        };
        let names = m.names();
        assert_eq!(path_of(&names, 7), "/protolog/0.log");
        assert_eq!(path_of(&names, 8), "/?/lost");
        assert_eq!(path_of(&names, 1), "/");
    }

    #[test]
    fn round_trip() {
        let m = Manifest {
            space: 3,
            next_ino: 10,
            next_seq: 11,
            changed: -5,
            written: 99,
            inodes: vec![
                Inode {
                    ino: 1,
                    mode: 0o40755,
                    uid: 0,
                    gid: 0,
                    nlink: 3,
                    size: 0,
                    stored: 0,
                    rdev: 0,
                    times: [1, 2, 3, 4],
                    target: None,
                    data: Data::None,
                },
                Inode {
                    ino: 2,
                    mode: 0o120777,
                    uid: 1,
                    gid: 2,
                    nlink: 1,
                    size: 3,
                    stored: 0,
                    rdev: 0,
                    times: [1, 2, 3, 4],
                    target: Some(b"a b".to_vec()),
                    data: Data::Object {
                        host: 2,
                        key: "3/2/ab:c".into(),
                    },
                },
            ],
            dentries: vec![Dentry {
                parent: 1,
                seq: 2,
                ino: 2,
                name: "na me\n".into(),
            }],
            xattrs: vec![(2, b"user.x".to_vec(), Vec::new())],
        };
        assert_eq!(Manifest::parse(&m.to_text()).unwrap(), m);
        assert!(Manifest::parse("nope").is_err());
        assert!(Manifest::parse("tshs-manifest 1\nI 1 2\n").is_err());
    }
}
