//! Model-based test: random sequences of file operations run on a space of a
//! real mount and on a local directory (the reference model); results
//! (success or errno) and the whole tree (types, sizes, modes, link counts,
//! contents, symlink targets) are compared after every step.
//!
//! Reproducible: the seed is printed; rerun one with `TSHS_MODEL_SEED=<n>`.

mod common;

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::TestCluster;

/// xorshift64*: small, deterministic, good enough to pick operations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn path(&mut self) -> String {
        const DIRS: &[&str] = &["", "d1/", "d2/", "d1/e/"];
        const NAMES: &[&str] = &["a", "b", "c", "d1", "d2", "e", "last.log"];
        format!(
            "{}{}",
            DIRS[self.below(4) as usize],
            NAMES[self.below(7) as usize]
        )
    }
}

#[derive(Debug, Clone)]
enum Op {
    Write {
        path: String,
        off: u64,
        len: usize,
        byte: u8,
    },
    Append {
        path: String,
        len: usize,
        byte: u8,
    },
    Truncate {
        path: String,
        size: u64,
    },
    Mkdir(String),
    Rmdir(String),
    Unlink(String),
    Rename(String, String),
    Link(String, String),
    Symlink(String, String),
    Chmod(String, u32),
    Read {
        path: String,
        off: u64,
        len: usize,
    },
    /// fallocate(2): mode 0, KEEP_SIZE, PUNCH_HOLE|KEEP_SIZE, ZERO_RANGE
    /// (with or without KEEP_SIZE).
    Fallocate {
        path: String,
        mode: i32,
        off: u64,
        len: u64,
    },
}

fn random_op(r: &mut Rng) -> Op {
    match r.below(12) {
        0 => Op::Write {
            path: r.path(),
            off: [0, 1, 4095, 262_143, 262_144, 700_000][r.below(6) as usize] + r.below(100),
            len: [1, 100, 5000, 300_000][r.below(4) as usize],
            byte: r.below(256) as u8,
        },
        1 => Op::Append {
            path: r.path(),
            len: 1 + r.below(3000) as usize,
            byte: r.below(256) as u8,
        },
        2 => Op::Truncate {
            path: r.path(),
            size: [0, 10, 262_144, 500_000][r.below(4) as usize],
        },
        3 => Op::Mkdir(r.path()),
        4 => Op::Rmdir(r.path()),
        5 => Op::Unlink(r.path()),
        6 => Op::Rename(r.path(), r.path()),
        7 => Op::Link(r.path(), r.path()),
        8 => Op::Symlink(r.path(), r.path()),
        9 => Op::Chmod(r.path(), [0o600, 0o644, 0o755, 0o4711][r.below(4) as usize]),
        10 => Op::Fallocate {
            path: r.path(),
            mode: [0, 1, 3, 0x10, 0x11][r.below(5) as usize],
            off: [0, 1, 4095, 262_143, 262_144, 700_000][r.below(6) as usize] + r.below(100),
            len: 1 + [0, 100, 5000, 300_000][r.below(4) as usize] + r.below(100),
        },
        _ => Op::Read {
            path: r.path(),
            off: r.below(600_000),
            len: 1 + r.below(300_000) as usize,
        },
    }
}

/// Runs one operation under `root`; returns Ok(read bytes) or the errno.
fn apply(root: &Path, op: &Op) -> Result<Vec<u8>, i32> {
    let p = |s: &str| root.join(s);
    let e = |r: std::io::Error| r.raw_os_error().unwrap_or(-1);
    match op {
        Op::Write {
            path,
            off,
            len,
            byte,
        } => {
            let mut f = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(p(path))
                .map_err(e)?;
            f.seek(SeekFrom::Start(*off)).map_err(e)?;
            f.write_all(&vec![*byte; *len]).map_err(e)?;
            Ok(vec![])
        }
        Op::Append { path, len, byte } => {
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(p(path))
                .map_err(e)?;
            f.write_all(&vec![*byte; *len]).map_err(e)?;
            Ok(vec![])
        }
        Op::Truncate { path, size } => {
            OpenOptions::new()
                .write(true)
                .open(p(path))
                .map_err(e)?
                .set_len(*size)
                .map_err(e)?;
            Ok(vec![])
        }
        Op::Mkdir(path) => fs::create_dir(p(path)).map(|_| vec![]).map_err(e),
        Op::Rmdir(path) => fs::remove_dir(p(path)).map(|_| vec![]).map_err(e),
        Op::Unlink(path) => fs::remove_file(p(path)).map(|_| vec![]).map_err(e),
        Op::Rename(a, b) => fs::rename(p(a), p(b)).map(|_| vec![]).map_err(e),
        Op::Link(a, b) => fs::hard_link(p(a), p(b)).map(|_| vec![]).map_err(e),
        Op::Symlink(a, b) => std::os::unix::fs::symlink(a, p(b))
            .map(|_| vec![])
            .map_err(e),
        Op::Chmod(path, mode) => {
            // Do not follow symlinks into the other tree's namespace.
            if fs::symlink_metadata(p(path))
                .map_err(e)?
                .file_type()
                .is_symlink()
            {
                return Ok(vec![]);
            }
            fs::set_permissions(p(path), fs::Permissions::from_mode(*mode))
                .map(|_| vec![])
                .map_err(e)
        }
        Op::Fallocate {
            path,
            mode,
            off,
            len,
        } => {
            use std::os::fd::AsRawFd;
            let f = OpenOptions::new().write(true).open(p(path)).map_err(e)?;
            let r = unsafe { libc::fallocate(f.as_raw_fd(), *mode, *off as i64, *len as i64) };
            if r != 0 {
                return Err(std::io::Error::last_os_error().raw_os_error().unwrap());
            }
            Ok(vec![])
        }
        Op::Read { path, off, len } => {
            let mut f = fs::File::open(p(path)).map_err(e)?;
            f.seek(SeekFrom::Start(*off)).map_err(e)?;
            let mut buf = vec![0; *len];
            let mut got = 0;
            while got < *len {
                let n = f.read(&mut buf[got..]).map_err(e)?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            buf.truncate(got);
            Ok(buf)
        }
    }
}

/// Everything observable about a tree, keyed by relative path.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let md = fs::symlink_metadata(e.path()).unwrap();
            let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
            let desc = if md.is_dir() {
                stack.push(e.path());
                format!("dir {:o} nlink={}", md.mode(), md.nlink())
            } else if md.file_type().is_symlink() {
                format!("symlink -> {}", fs::read_link(e.path()).unwrap().display())
            } else {
                let data = fs::read(e.path()).unwrap();
                let sum = data
                    .iter()
                    .fold(0u64, |h, b| h.wrapping_mul(131).wrapping_add(u64::from(*b)));
                format!(
                    "file {:o} nlink={} size={} sum={sum:x}",
                    md.mode(),
                    md.nlink(),
                    md.len()
                )
            };
            out.insert(rel, desc);
        }
    }
    out
}

#[test]
fn random_operations_match_a_local_directory() {
    let c = TestCluster::with_nodes();
    let m = c.mount();
    let seeds: Vec<u64> = match std::env::var("TSHS_MODEL_SEED") {
        Ok(s) => vec![s.parse().unwrap()],
        Err(_) => vec![1, 2, 3, 0x5eed],
    };
    for (i, seed) in seeds.into_iter().enumerate() {
        let local = tempfile::tempdir().unwrap();
        let mounted = m.space(50 + i as u32);
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut history = Vec::new();
        for step in 0..250 {
            let op = random_op(&mut rng);
            history.push(op.clone());
            let want = apply(local.path(), &op);
            let got = apply(&mounted, &op);
            assert_eq!(
                got, want,
                "seed {seed} step {step}: {op:?} differs (history: {history:?})"
            );
            assert_eq!(
                snapshot(&mounted),
                snapshot(local.path()),
                "seed {seed} step {step}: trees differ after {op:?}"
            );
        }
        let fin = snapshot(local.path());
        assert!(
            fin.len() >= 3,
            "seed {seed}: the sequence built too little to compare: {fin:?}"
        );
        println!(
            "seed {seed}: 250 steps match; final tree has {} entries",
            fin.len()
        );
    }
}
