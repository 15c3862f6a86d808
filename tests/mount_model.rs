//! Model-based test on proptest: random sequences of file operations run in
//! a fresh directory of a space of a real mount and of a local directory (the
//! reference model); results (success or errno) and the whole tree (types,
//! sizes, modes, link counts, contents, symlink targets) are compared after
//! every step.
//!
//! A failing sequence shrinks to a minimal one, which is saved in
//! `tests/mount_model.proptest-regressions` and replayed first on every run.
//! `TSHS_MODEL_CASES` sets the number of sequences (default 16, up to
//! `MAX_OPS` operations each); `PROPTEST_RNG_SEED` fixes proptest's seed.

mod common;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};

use common::TestCluster;

/// Operations per sequence at most; with 16 sequences, about as many steps
/// as the seeded test this replaced (4 × 250).
const MAX_OPS: usize = 128;

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
    /// open(O_CREAT|O_TRUNC) and one write, as `fs::write` does.
    Overwrite {
        path: String,
        len: usize,
        byte: u8,
    },
    /// open(O_CREAT|O_EXCL).
    CreateExcl(String),
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

/// A small pool of names, so that operations collide often; shrinks to `a`.
fn path() -> impl Strategy<Value = String> {
    const DIRS: &[&str] = &["", "d1/", "d2/", "d1/e/"];
    const NAMES: &[&str] = &["a", "b", "c", "d1", "d2", "e", "last.log"];
    (select(DIRS), select(NAMES)).prop_map(|(d, n)| format!("{d}{n}"))
}

/// Offsets near the edges of the first and second 256 KiB extents.
fn offset() -> impl Strategy<Value = u64> {
    const BASES: &[u64] = &[0, 1, 4095, 262_143, 262_144, 700_000];
    (select(BASES), 0..100u64).prop_map(|(b, d)| b + d)
}

fn length() -> impl Strategy<Value = usize> {
    select(&[1usize, 100, 5000, 300_000][..])
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (path(), offset(), length(), any::<u8>()).prop_map(|(path, off, len, byte)| Op::Write {
            path,
            off,
            len,
            byte
        }),
        (path(), 1..=3000usize, any::<u8>()).prop_map(|(path, len, byte)| Op::Append {
            path,
            len,
            byte
        }),
        (path(), length(), any::<u8>()).prop_map(|(path, len, byte)| Op::Overwrite {
            path,
            len,
            byte
        }),
        path().prop_map(Op::CreateExcl),
        (path(), select(&[0u64, 10, 262_144, 500_000][..]))
            .prop_map(|(path, size)| Op::Truncate { path, size }),
        path().prop_map(Op::Mkdir),
        path().prop_map(Op::Rmdir),
        path().prop_map(Op::Unlink),
        (path(), path()).prop_map(|(a, b)| Op::Rename(a, b)),
        (path(), path()).prop_map(|(a, b)| Op::Link(a, b)),
        (path(), path()).prop_map(|(a, b)| Op::Symlink(a, b)),
        (path(), select(&[0o600u32, 0o644, 0o755, 0o4711][..]))
            .prop_map(|(path, mode)| Op::Chmod(path, mode)),
        (
            path(),
            select(&[0i32, 1, 3, 0x10, 0x11][..]),
            offset(),
            select(&[1u64, 101, 5001, 300_001][..]),
            0..100u64
        )
            .prop_map(|(path, mode, off, len, d)| Op::Fallocate {
                path,
                mode,
                off,
                len: len + d
            }),
        (path(), 0..600_000u64, 1..=300_000usize).prop_map(|(path, off, len)| Op::Read {
            path,
            off,
            len
        }),
    ]
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
        Op::Overwrite { path, len, byte } => fs::write(p(path), vec![*byte; *len])
            .map(|_| vec![])
            .map_err(e),
        Op::CreateExcl(path) => OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(p(path))
            .map(|_| vec![])
            .map_err(e),
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

/// Runs `ops` under both roots, comparing each result and then the trees.
fn run_case(model: &Path, mounted: &Path, ops: &[Op]) -> Result<(), TestCaseError> {
    for (step, op) in ops.iter().enumerate() {
        let want = apply(model, op);
        let got = apply(mounted, op);
        prop_assert_eq!(got, want, "step {}: {:?} differs", step, op);
        prop_assert_eq!(
            snapshot(mounted),
            snapshot(model),
            "step {}: trees differ after {:?}",
            step,
            op
        );
    }
    Ok(())
}

#[test]
fn random_operations_match_a_local_directory() {
    let c = TestCluster::with_nodes();
    let m = c.mount();
    let space = m.space(50);
    let local = tempfile::tempdir().unwrap();
    let cases = std::env::var("TSHS_MODEL_CASES").map_or(16, |s| {
        s.parse()
            .expect("TSHS_MODEL_CASES is a number of sequences")
    });
    let config = Config {
        cases,
        // proptest's default (4 × cases) stops far from a minimal sequence;
        // the time bounds a failing CI run.
        max_shrink_iters: 10_000,
        max_shrink_time: 300_000,
        source_file: Some(file!()),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..Config::default()
    };
    // Every run, shrinking's included, starts in directories of its own.
    let runs = Cell::new(0u32);
    let (steps, largest) = (Cell::new(0usize), Cell::new(0usize));
    let result = TestRunner::new(config).run(&vec(op(), 1..=MAX_OPS), |ops| {
        let n = runs.get();
        runs.set(n + 1);
        let (model, mounted) = (local.path().join(n.to_string()), space.join(n.to_string()));
        fs::create_dir(&model).unwrap();
        fs::create_dir(&mounted).unwrap();
        run_case(&model, &mounted, &ops)?;
        steps.set(steps.get() + ops.len());
        largest.set(largest.get().max(snapshot(&model).len()));
        fs::remove_dir_all(&model).unwrap();
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(
        largest.get() >= 3,
        "the sequences built too little to compare: at most {} entries",
        largest.get()
    );
    println!(
        "{} sequences, {} steps match; the largest final tree has {} entries",
        runs.get(),
        steps.get(),
        largest.get()
    );
}
