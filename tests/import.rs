//! Importing an on-disk /spacedata tree while it is in use: import-volumes,
//! perform-import (stopped by --time-limit and resumed), the mount serving
//! files from disk until they are in, writes going to the cluster.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Mount, StopFlag, TestCluster, sh};
use mysql::prelude::Queryable;

/// Builds an old-style tree: `vol01` with `spaces`, `vol02` with two more.
/// Returns the space directories.
fn build_tree(root: &Path, spaces: &[u32], files_per_space: usize) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let extra = [900_001u32, 900_002];
    for (vol, ids) in [("vol01", spaces), ("vol02", &extra[..])] {
        for &id in ids {
            let d = root.join(vol).join(id.to_string());
            fill_space(&d, id, files_per_space);
            dirs.push(d);
        }
    }
    dirs
}

fn fill_space(d: &Path, id: u32, files: usize) {
    std::fs::create_dir_all(d.join("protolog")).unwrap();
    std::fs::create_dir_all(d.join("data/a/b")).unwrap();
    std::fs::create_dir_all(d.join("empty")).unwrap();
    for n in 0..3 {
        std::fs::write(
            d.join(format!("protolog/{n}.log")),
            format!("space {id} log {n}\n").repeat(400),
        )
        .unwrap();
    }
    std::fs::write(
        d.join("protolog/last.log"),
        format!("space {id} last\n").repeat(50),
    )
    .unwrap();
    for i in 0..files {
        // Sizes from empty to a few extents; contents differ per file.
        let len = match i % 7 {
            0 => 0,
            1 => 1,
            2 => 4095,
            3 => 70_000,
            4 => 300_000,
            _ => 2_000 + i * 13,
        };
        let body: Vec<u8> = (0..len)
            .map(|k| (k as u32 ^ id ^ (i as u32 * 31)) as u8)
            .collect();
        let sub = if i % 3 == 0 { "data/a/b" } else { "data" };
        std::fs::write(d.join(format!("{sub}/f{i}")), body).unwrap();
    }
    std::fs::set_permissions(d.join("data/f1"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::hard_link(d.join("data/f2"), d.join("data/a/f2.link")).unwrap();
    std::fs::hard_link(d.join("data/f2"), d.join("f2.link2")).unwrap();
    std::os::unix::fs::symlink("a/b/f3", d.join("data/f3.sym")).unwrap();
    std::os::unix::fs::symlink("/nowhere/at/all", d.join("dangling")).unwrap();
    sh(&format!(
        "setfattr -n user.origin -v space{id} {}",
        d.join("data/f4").display()
    ));
    // An old mtime, as rsync would have to keep it.
    sh(&format!(
        "touch -d '2020-01-02 03:04:05' {}",
        d.join("data/f5").display()
    ));
}

/// What a tree holds, comparable: per path its kind, permissions, size,
/// content, symlink target, mtime (files), link group and user xattrs.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    kind: u32,
    perm: u32,
    size: u64,
    content: Option<Vec<u8>>,
    target: Option<PathBuf>,
    mtime: Option<i64>,
    /// The first path (in order) with the same inode, for hard links.
    link_group: Option<String>,
    xattrs: String,
}

fn snapshot(root: &Path) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    let mut first_of: BTreeMap<u64, String> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    let mut paths = Vec::new();
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap() {
            let e = e.unwrap().path();
            if std::fs::symlink_metadata(&e).unwrap().is_dir() {
                stack.push(e.clone());
            }
            paths.push(e);
        }
    }
    paths.sort();
    for p in paths {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        let kind = m.mode() & libc::S_IFMT;
        let is_file = m.is_file();
        let link_group = (is_file && m.nlink() > 1)
            .then(|| first_of.entry(m.ino()).or_insert(rel.clone()).clone());
        let xattrs = if m.file_type().is_symlink() {
            String::new()
        } else {
            let o = std::process::Command::new("getfattr")
                .args(["-d", "--absolute-names", "-m", "^user\\."])
                .arg(&p)
                .output()
                .unwrap();
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.starts_with("user."))
                .collect::<Vec<_>>()
                .join(",")
        };
        out.insert(
            rel,
            Entry {
                kind,
                perm: m.mode() & 0o7777,
                size: if m.is_dir() { 0 } else { m.len() },
                content: is_file.then(|| std::fs::read(&p).unwrap()),
                target: m
                    .file_type()
                    .is_symlink()
                    .then(|| std::fs::read_link(&p).unwrap()),
                mtime: is_file.then(|| m.mtime()),
                link_group,
                xattrs,
            },
        );
    }
    out
}

fn assert_same(want: &BTreeMap<String, Entry>, got: &BTreeMap<String, Entry>, what: &str) {
    let wk: Vec<_> = want.keys().collect();
    let gk: Vec<_> = got.keys().collect();
    assert_eq!(wk, gk, "{what}: different paths");
    for (k, w) in want {
        let g = &got[k];
        assert!(
            w == g,
            "{what}: {k} differs:\n want {:?}\n got  {:?}",
            brief(w),
            brief(g)
        );
    }
}

fn brief(e: &Entry) -> String {
    format!(
        "kind {:o} perm {:o} size {} target {:?} mtime {:?} group {:?} xattrs {:?} content {}",
        e.kind,
        e.perm,
        e.size,
        e.target,
        e.mtime,
        e.link_group,
        e.xattrs,
        e.content.as_ref().map_or(0, |c| c.len())
    )
}

/// The spaces of import job 1 not imported yet.
fn importing(c: &TestCluster) -> Vec<u32> {
    let spaces = c.cluster().importing_spaces(1).unwrap();
    spaces.iter().map(|s| s.id).collect()
}

fn job_state(c: &TestCluster) -> String {
    c.ok(&["list-jobs"])
}

#[test]
fn a_tree_in_use_is_imported_and_equals_the_original_plus_appends() {
    let c = TestCluster::with_nodes();
    let old = c.dir.path().join("old");
    let spaces: Vec<u32> = (101..=108).collect();
    let dirs = build_tree(&old, &spaces, 320);
    let expected = c.dir.path().join("expected");
    sh(&format!("cp -a {} {}", old.display(), expected.display()));
    let pristine = snapshot(&old);
    let files = pristine.values().filter(|e| e.content.is_some()).count();
    assert!(files > 3000, "{files} files");

    let m = Mount::new(&c, &[]);
    let out = c.ok(&["import-volumes", old.to_str().unwrap()]);
    assert!(
        out.contains("Import job 1 created: 10 space(s) in 2 volume(s)"),
        "{out}"
    );
    assert!(out.contains("Volume 'vol02' created"), "{out}");
    let jobs = job_state(&c);
    assert!(
        jobs.contains(&format!(
            "IMPORT path={}",
            std::fs::canonicalize(&old).unwrap().display()
        )),
        "{jobs}"
    );
    let listing = c.ok(&["list-spaces"]);
    assert!(
        listing.contains("vol02") && listing.contains("900002"),
        "{listing}"
    );

    // Before perform-import: the mount serves the tree (from disk).
    let before = snapshot(&m.path().join("vol01").join("101"));
    assert_same(
        &snapshot(&old.join("vol01/101")),
        &before,
        "space 101 through the mount before perform-import",
    );
    let files_101 = c.ok(&["list-files", "101"]);
    assert!(files_101.contains("OnDisk"), "{files_101}");

    // A writer appends to every vol01 space's last.log (and the expected
    // copy) and creates files, while readers read the other files.
    let stop = StopFlag::new();
    let appended = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, appended) = (stop.0.clone(), appended.clone());
        let (mnt, expected) = (m.path().to_path_buf(), expected.clone());
        let spaces = spaces.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                for &s in &spaces {
                    let rec = format!("record {n} for space {s}\n");
                    for root in [&mnt, &expected] {
                        let mut f = std::fs::OpenOptions::new()
                            .append(true)
                            .open(root.join(format!("vol01/{s}/protolog/last.log")))
                            .unwrap();
                        f.write_all(rec.as_bytes()).unwrap();
                    }
                    if n.is_multiple_of(10) {
                        let name = format!("vol01/{s}/data/new-{n}");
                        std::fs::write(mnt.join(&name), rec.as_bytes()).unwrap();
                        std::fs::write(expected.join(&name), rec.as_bytes()).unwrap();
                        // The same mtime on both sides.
                        let t = std::fs::metadata(mnt.join(&name))
                            .unwrap()
                            .modified()
                            .unwrap();
                        std::fs::File::options()
                            .write(true)
                            .open(expected.join(&name))
                            .unwrap()
                            .set_modified(t)
                            .unwrap();
                    }
                }
                n += 1;
                appended.store(n, Ordering::Release);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let bad_reads = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    let reader = {
        let (stop, bad, reads) = (stop.0.clone(), bad_reads.clone(), reads.clone());
        let mnt = m.path().to_path_buf();
        let want: Vec<(String, Vec<u8>)> = pristine
            .iter()
            .filter(|(k, e)| e.content.is_some() && !k.ends_with("last.log"))
            .map(|(k, e)| (k.clone(), e.content.clone().unwrap()))
            .collect();
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Acquire) {
                let (k, w) = &want[(i * 7919) % want.len()];
                i += 1;
                match std::fs::read(mnt.join(k)) {
                    Ok(g) if &g == w => {}
                    other => {
                        if bad.fetch_add(1, Ordering::Relaxed) < 10 {
                            eprintln!("read of {k}: {:?}", other.map(|g| g.len()));
                        }
                    }
                }
                reads.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    // perform-import with a time limit, run again until it is done.
    let started = Instant::now();
    let mut runs = 0;
    loop {
        runs += 1;
        let out = c.ok(&["--time-limit", "1", "perform-import"]);
        eprintln!("perform-import run {runs}: {}", out.trim());
        if runs == 1 {
            assert!(
                out.contains("remaining"),
                "a 1 s run cannot import it all: {out}"
            );
        }
        if out.contains("the job is IMPORTED") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "import too slow: {out}"
        );
    }
    let import_time = started.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    stop.raise();
    writer.join().unwrap();
    reader.join().unwrap();
    // The appends landed on both sides at slightly different times.
    for &s in &spaces {
        let log = format!("vol01/{s}/protolog/last.log");
        let t = std::fs::metadata(m.path().join(&log))
            .unwrap()
            .modified()
            .unwrap();
        std::fs::File::options()
            .write(true)
            .open(expected.join(&log))
            .unwrap()
            .set_modified(t)
            .unwrap();
    }
    eprintln!(
        "imported in {import_time:.1?} over {runs} runs; {} rounds of appends, {} reads",
        appended.load(Ordering::Acquire),
        reads.load(Ordering::Relaxed)
    );
    assert!(runs >= 2, "--time-limit did not stop the first run");
    assert!(appended.load(Ordering::Acquire) > 10);
    assert!(reads.load(Ordering::Relaxed) > 100);
    assert_eq!(
        bad_reads.load(Ordering::Relaxed),
        0,
        "reads differed during the import"
    );
    let jobs = job_state(&c);
    assert!(jobs.contains("IMPORTED path="), "{jobs}");
    assert_eq!(
        c.ok(&["perform-import"]).trim(),
        "perform-import: nothing to do"
    );

    // The disk tree was only read.
    assert_same(&pristine, &snapshot(&old), "the original tree");
    // Nothing is read from disk any more: move the old tree away and look
    // through a fresh mount.
    let gone = c.dir.path().join("old-gone");
    std::fs::rename(&old, &gone).unwrap();
    drop(m);
    let m = Mount::new(&c, &[]);
    for d in &dirs {
        let rel = d.strip_prefix(&old).unwrap();
        assert_same(
            &snapshot(&expected.join(rel)),
            &snapshot(&m.path().join(rel)),
            &format!("{} after the import", rel.display()),
        );
        let id = rel.file_name().unwrap().to_str().unwrap();
        let files = c.ok(&["list-files", id]);
        assert!(!files.contains("OnDisk"), "{files}");
    }
}

#[test]
fn first_use_brings_the_tree_in_and_a_write_brings_a_file_in() {
    let c = TestCluster::with_nodes();
    let old = c.dir.path().join("old");
    fill_space(&old.join("vol01/77"), 77, 20);
    fill_space(&old.join("vol01/78"), 78, 5);
    c.ok(&["import-volumes", old.to_str().unwrap()]);
    let m = Mount::new(&c, &[]);
    // `ls -l` of the volume (stat, ACL and SELinux xattrs of each space)
    // shows the spaces without importing them.
    sh(&format!(
        "setfattr -n user.team -v red {}",
        old.join("vol01/78").display()
    ));
    let listed = sh(&format!("ls -l {}", m.path().join("vol01").display()));
    assert_eq!(listed.lines().count(), 3, "{listed}");
    let xattr = sh(&format!(
        "getfattr --only-values -n user.team {}",
        m.path().join("vol01/78").display()
    ));
    assert_eq!(xattr, "red");
    let pending = |id: u32| {
        c.cluster()
            .space(id)
            .unwrap()
            .unwrap()
            .import_from
            .is_some()
    };
    assert!(pending(77) && pending(78), "ls -l imported a tree");
    let sp = m.path().join("vol01/77");
    let ino_before = std::fs::metadata(sp.join("data/f2")).unwrap().ino();
    assert_eq!(
        std::fs::metadata(sp.join("f2.link2")).unwrap().ino(),
        ino_before,
        "hard links share an inode"
    );
    assert_eq!(std::fs::metadata(sp.join("data/f2")).unwrap().nlink(), 3);
    // Overwrite part of a file still on disk: it comes in first.
    let want = {
        let mut w = std::fs::read(old.join("vol01/77/data/f4")).unwrap();
        w[10..15].copy_from_slice(b"HELLO");
        w
    };
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(sp.join("data/f4"))
            .unwrap();
        f.write_all_at(b"HELLO", 10).unwrap();
    }
    assert_eq!(std::fs::read(sp.join("data/f4")).unwrap(), want);
    let files = c.ok(&["list-files", "77", "data"]);
    let state = |name: &str| {
        files
            .lines()
            .find(|l| l.ends_with(&format!(" data/{name}")))
            .unwrap_or_else(|| panic!("{name} not in {files}"))
            .to_string()
    };
    assert!(state("f4").contains("InDB"), "{files}");
    assert!(state("f5").contains("OnDisk"), "{files}");
    // Truncating a file on disk to zero needs none of its data.
    std::fs::OpenOptions::new()
        .write(true)
        .open(sp.join("data/f5"))
        .unwrap()
        .set_len(0)
        .unwrap();
    assert_eq!(std::fs::read(sp.join("data/f5")).unwrap(), b"");
    // The disk copy is untouched; the inode number stays after perform-import.
    assert_ne!(
        std::fs::metadata(old.join("vol01/77/data/f5"))
            .unwrap()
            .len(),
        0
    );
    assert!(!pending(77) && pending(78));
    // A file changed on disk behind the import's back is refused, not
    // served with wrong bytes: grown, or rewritten to the same size.
    let f8 = old.join("vol01/77/data/f8");
    let (f8_bytes, f8_mtime) = (
        std::fs::read(&f8).unwrap(),
        std::fs::metadata(&f8).unwrap().modified().unwrap(),
    );
    let f16 = old.join("vol01/77/data/f16");
    let (f16_bytes, f16_mtime) = (
        std::fs::read(&f16).unwrap(),
        std::fs::metadata(&f16).unwrap().modified().unwrap(),
    );
    std::fs::write(&f16, vec![b'X'; f16_bytes.len()]).unwrap();
    let e = std::fs::read(sp.join("data/f16")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    let f16_back = std::fs::File::options().write(true).open(&f16).unwrap();
    f16_back.write_all_at(&f16_bytes, 0).unwrap();
    f16_back.set_modified(f16_mtime).unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&f8)
        .unwrap()
        .write_all(b"more")
        .unwrap();
    let e = std::fs::read(sp.join("data/f8")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    let e = c.fails(&["perform-import"]);
    assert!(e.contains("1 space(s) could not be imported"), "{e}");
    assert!(e.contains("data/f8: changed on disk"), "{e}");
    // Only that file waits; the rest of its space came in.
    let files = c.ok(&["list-files", "77"]);
    let on_disk: Vec<&str> = files.lines().filter(|l| l.contains("OnDisk")).collect();
    assert!(
        on_disk.len() == 1 && on_disk[0].ends_with(" data/f8"),
        "{files}"
    );
    // Put back as it was (bytes and mtime), it comes in.
    let f8_back = std::fs::File::options().write(true).open(&f8).unwrap();
    f8_back.set_len(f8_bytes.len() as u64).unwrap();
    f8_back.set_modified(f8_mtime).unwrap();
    c.ok(&["perform-import"]);
    assert_eq!(std::fs::read(sp.join("data/f8")).unwrap(), f8_bytes);
    assert_eq!(std::fs::read(sp.join("data/f16")).unwrap(), f16_bytes);
    assert_eq!(
        std::fs::metadata(sp.join("data/f2")).unwrap().ino(),
        ino_before
    );
    assert!(job_state(&c).contains("IMPORTED"));
}

#[test]
fn bad_imports_change_nothing() {
    let c = TestCluster::with_nodes();
    let m = c.mount();
    m.space(5);
    let dir = c.dir.path();
    let volumes_before = c.ok(&["list-volumes"]);

    let e = c.fails(&["import-volumes", dir.join("missing").to_str().unwrap()]);
    assert!(
        e.contains("cannot import") && e.contains("No such file"),
        "{e}"
    );
    std::fs::write(dir.join("plain"), b"x").unwrap();
    let e = c.fails(&["import-volumes", dir.join("plain").to_str().unwrap()]);
    assert!(e.contains("not a directory"), "{e}");

    // A stray file where spaces belong.
    let t = dir.join("t1");
    std::fs::create_dir_all(t.join("volX/12")).unwrap();
    std::fs::write(t.join("volX/readme"), b"x").unwrap();
    let e = c.fails(&["import-volumes", t.to_str().unwrap()]);
    assert!(e.contains("volX/readme: not a space directory"), "{e}");

    // A space the cluster already has: nothing of the tree is registered.
    let t = dir.join("t2");
    std::fs::create_dir_all(t.join("volY/6")).unwrap();
    std::fs::create_dir_all(t.join("vol01/5")).unwrap();
    let e = c.fails(&["import-volumes", t.to_str().unwrap()]);
    assert!(e.contains("space 5 already exists"), "{e}");

    // An unknown S3 host; a tree without spaces.
    let t = dir.join("t3");
    std::fs::create_dir_all(t.join("volZ/7")).unwrap();
    let e = c.fails(&["import-volumes", t.to_str().unwrap(), "--s3-host-id", "9"]);
    assert!(e.contains("9"), "{e}");
    std::fs::create_dir_all(dir.join("t4/volW")).unwrap();
    let e = c.fails(&["import-volumes", dir.join("t4").to_str().unwrap()]);
    assert!(e.contains("holds no spaces"), "{e}");

    assert_eq!(c.ok(&["list-volumes"]), volumes_before);
    assert_eq!(c.ok(&["list-jobs"]).lines().count(), 2, "no job was made");
    assert_eq!(
        c.ok(&["perform-import"]).trim(),
        "perform-import: nothing to do"
    );

    // One import at a time.
    c.ok(&["import-volumes", t.to_str().unwrap()]);
    let t5 = dir.join("t5");
    std::fs::create_dir_all(t5.join("volV/8")).unwrap();
    let e = c.fails(&["import-volumes", t5.to_str().unwrap()]);
    assert!(e.contains("is not finished yet"), "{e}");
    assert!(!m.path().join("volV").exists());
}

#[test]
fn an_import_with_an_s3_host_uploads_what_it_takes_straight_from_disk() {
    let c = TestCluster::with_nodes();
    add_s3_host(&c, "MinSize=500");
    let old = c.dir.path().join("old");
    fill_space(&old.join("vol01/55"), 55, 30);
    let want = snapshot(&old.join("vol01/55"));
    c.ok(&["import-volumes", old.to_str().unwrap(), "--s3-host-id", "1"]);
    assert!(c.ok(&["list-jobs"]).contains(";s3-host-id=1"));
    let out = c.ok(&["perform-import"]);
    assert!(out.contains("the job is IMPORTED"), "{out}");

    let files = c.ok(&["list-files", "55"]);
    let state = |path: &str| -> String {
        let l = files
            .lines()
            .find(|l| l.ends_with(&format!(" {path}")))
            .unwrap_or_else(|| panic!("{path} not in {files}"));
        l.split_whitespace().nth(2).unwrap().to_string()
    };
    assert_eq!(state("protolog/0.log"), "OnS3", "{files}");
    assert_eq!(state("data/f4"), "OnS3", "{files}");
    assert_eq!(state("data/f2"), "OnS3", "{files}");
    // Below MinSize, and every last.log, go into the database (R/O: not
    // changed for a minute, which its on-disk mtime may already be).
    assert!(
        ["InDB", "R/O"].contains(&state("data/f1").as_str()),
        "{files}"
    );
    assert_eq!(state("protolog/last.log"), "InDB", "{files}");

    std::fs::rename(&old, c.dir.path().join("old-gone")).unwrap();
    let m = c.mount();
    assert_same(
        &want,
        &snapshot(&m.path().join("vol01/55")),
        "space 55 from S3",
    );
}

#[test]
fn one_broken_space_does_not_hold_up_the_others() {
    let c = TestCluster::with_nodes();
    let old = c.dir.path().join("old");
    for id in [31, 32, 33] {
        fill_space(&old.join(format!("vol01/{id}")), id, 10);
    }
    c.ok(&["import-volumes", old.to_str().unwrap()]);
    std::fs::rename(old.join("vol01/32"), c.dir.path().join("32-away")).unwrap();
    let e = c.fails(&["perform-import"]);
    assert!(
        e.contains("1 space(s) could not be imported") && e.contains("space 32"),
        "{e}"
    );
    assert_eq!(importing(&c), [32]);
    assert!(c.ok(&["list-jobs"]).contains(" IMPORT "));
    std::fs::rename(c.dir.path().join("32-away"), old.join("vol01/32")).unwrap();
    assert!(c.ok(&["perform-import"]).contains("the job is IMPORTED"));
}

/// Processes running perform-import at once do not work on the same space:
/// one leased by another process (its row in the Admin Node, renewed while
/// it works) is left to it, and taken once the lease lapses.
#[test]
fn a_space_another_perform_import_works_on_is_left_to_it() {
    let c = TestCluster::with_nodes();
    let old = c.dir.path().join("old");
    for id in [41, 42] {
        fill_space(&old.join(format!("vol01/{id}")), id, 10);
    }
    c.ok(&["import-volumes", old.to_str().unwrap()]);
    let mut other = common::root_conn(1);
    other.query_drop(format!("USE {}", c.admin_db)).unwrap();
    other
        .query_drop(
            "INSERT INTO import_leases (space_id, owner, lease_until)
             VALUES (42, 'perform-import elsewhere', UTC_TIMESTAMP() + INTERVAL 30 SECOND)",
        )
        .unwrap();
    let out = c.ok(&["perform-import"]);
    assert!(
        out.contains("space 42: another perform-import is at it; left to it"),
        "{out}"
    );
    assert!(out.contains("1 left"), "{out}");
    assert_eq!(importing(&c), [42]);
    // Its process gone (the lease no longer renewed), the space is free again.
    other
        .query_drop("UPDATE import_leases SET lease_until = UTC_TIMESTAMP() - INTERVAL 1 SECOND")
        .unwrap();
    assert!(c.ok(&["perform-import"]).contains("the job is IMPORTED"));
    let left: Option<u32> = other
        .query_first("SELECT COUNT(*) FROM import_leases")
        .unwrap();
    assert_eq!(left, Some(0), "perform-import gives its leases back");
}

#[test]
fn a_split_during_the_import_loses_nothing() {
    let c = TestCluster::with_nodes();
    let old = c.dir.path().join("old");
    let spaces: Vec<u32> = (201..=216).collect();
    for &id in &spaces {
        fill_space(&old.join(format!("vol01/{id}")), id, 150);
    }
    let want = snapshot(&old.join("vol01"));
    c.ok(&["import-volumes", old.to_str().unwrap()]);
    // Half the spaces in use before the split (trees in, data on disk), the
    // rest untouched.
    {
        let m = c.mount();
        for id in 201..=208 {
            std::fs::metadata(m.path().join(format!("vol01/{id}/protolog/last.log"))).unwrap();
        }
    }
    // Split node 1: its spaces whose tree is not in yet are renamed, the
    // others copied.
    let db = c.new_db(2, "st");
    c.ok(&[
        "split-storage-node",
        "1",
        &format!("{};database={db}", common::server(2)),
    ]);
    let moved = copy_until_active(&c);
    assert!(
        moved.contains("(not imported yet: nothing to copy)"),
        "{moved}"
    );
    assert!(
        moved
            .lines()
            .any(|l| l.contains("B)") && !l.contains("not imported")),
        "a space with rows moved too: {moved}"
    );
    // Split node 2 while perform-import works on one file at a time.
    let mut importer = std::process::Command::new(env!("CARGO_BIN_EXE_tshs"))
        .arg("--mysql-cfg-file")
        .arg(&c.mycnf)
        .args(["--max-threads", "1", "perform-import"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let db = c.new_db(1, "st");
    c.ok(&[
        "split-storage-node",
        "2",
        &format!("{};database={db}", common::server(1)),
    ]);
    eprintln!("{moved}{}", copy_until_active(&c));
    let _ = importer.wait();
    let started = Instant::now();
    while !c.ok(&["list-jobs"]).contains("IMPORTED") {
        let out = c.ok(&["perform-import"]);
        assert!(started.elapsed() < Duration::from_secs(60), "{out}");
    }
    for &id in &spaces {
        let files = c.ok(&["list-files", &id.to_string()]);
        assert!(!files.contains("OnDisk"), "space {id}: {files}");
    }
    std::fs::rename(&old, c.dir.path().join("old-gone")).unwrap();
    let m = c.mount();
    assert_same(
        &want,
        &snapshot(&m.path().join("vol01")),
        "vol01 after a split",
    );
}

/// Runs copy-shards until no node is MIRROR_SHARD; returns what it said.
fn copy_until_active(c: &TestCluster) -> String {
    let started = Instant::now();
    let mut said = String::new();
    while c.ok(&["list-storage-nodes"]).contains("MIRROR_SHARD") {
        said += &c.ok(&["copy-shards"]);
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "copy-shards: {said}"
        );
    }
    said
}

#[test]
fn a_node_lost_during_the_import_takes_its_trees_from_disk_again() {
    let c = TestCluster::with_nodes();
    add_s3_host(&c, "MinSize=0");
    let old = c.dir.path().join("old");
    for id in 41..=48 {
        fill_space(&old.join(format!("vol01/{id}")), id, 12);
    }
    let want = snapshot(&old.join("vol01"));
    c.ok(&["import-volumes", old.to_str().unwrap()]);
    {
        let m = c.mount();
        for id in 41..=44 {
            std::fs::metadata(m.path().join(format!("vol01/{id}/protolog"))).unwrap();
        }
    }
    let out = c.ok(&["copy-to-s3"]);
    assert!(
        out.contains(
            "8 space(s) of an unfinished import are backed up once perform-import is done"
        ),
        "{out}"
    );

    // The node of space 41 is lost, and rebuilt from the object store.
    let node = c.cluster().space(41).unwrap().unwrap().node_id;
    let (n, db) = c.dbs.lock().unwrap()[node as usize].clone();
    common::lose_database(n, &db);
    let new = c.new_db(n, "restored");
    let out = c.ok(&[
        "restore-from-s3",
        &node.to_string(),
        &format!("{};database={new}", common::server(n)),
    ]);
    assert!(
        out.contains("of the unfinished import: their tree comes in again"),
        "{out}"
    );
    assert!(!out.contains("restored empty"), "{out}");

    assert!(c.ok(&["perform-import"]).contains("the job is IMPORTED"));
    std::fs::rename(&old, c.dir.path().join("old-gone")).unwrap();
    let m = c.mount();
    assert_same(
        &want,
        &snapshot(&m.path().join("vol01")),
        "vol01 after the restore",
    );
}

/// An S3 host (id 1) on a new bucket of the local S3 server.
fn add_s3_host(c: &TestCluster, options: &str) {
    let (ak, sk) = common::s3_keys();
    c.ok(&[
        "add-s3-host",
        "GENERIC",
        &common::env("TSHS_S3_ENDPOINT"),
        &c.new_bucket("import"),
        ak,
        sk,
        options,
    ]);
}

/// Many spaces' trees imported at once, by mounts' first uses and
/// perform-import at the same time: each tree comes in once, and no import
/// fails on the others' locks (a space's first row must not lock the gap
/// next to it, or neighbouring spaces deadlock each other).
#[test]
fn trees_imported_at_once_do_not_hold_each_other_up() {
    let c = TestCluster::with_nodes();
    let old = c.dir.path().join("old");
    let spaces: Vec<u32> = (301..=324).collect();
    build_tree(&old, &spaces, 40);
    c.ok(&["import-volumes", old.to_str().unwrap()]);
    let cluster = c.cluster();
    let barrier = std::sync::Barrier::new(spaces.len() * 2);
    let imported = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for &s in &spaces {
            for _ in 0..2 {
                let (cluster, barrier, imported, old) = (&cluster, &barrier, &imported, &old);
                scope.spawn(move || {
                    barrier.wait();
                    let dir = old.join(format!("vol01/{s}"));
                    match tshs::import::bring_tree_in(cluster, s, &dir) {
                        Ok(Some(_)) => {
                            imported.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(None) => {}
                        Err(e) => panic!("space {s}: {e:#}"),
                    }
                });
            }
        }
    });
    assert_eq!(imported.load(Ordering::Relaxed), spaces.len() as u64);
    let m = Mount::new(&c, &[]);
    for &s in &spaces {
        let rel = format!("vol01/{s}");
        assert_same(
            &snapshot(&old.join(&rel)),
            &snapshot(&m.path().join(&rel)),
            &rel,
        );
    }
}
