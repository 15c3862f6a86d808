//! Snapshots (`tshs snapshot`, `/.snapshots` in the mount) against a real
//! MariaDB, object store and mount: a snapshot taken while writers append,
//! rotate and replace files is one moment of the space (checked against
//! the writers' log of acknowledged operations, through an rsync of the
//! snapshot); everything in a snapshot refuses changes with EROFS; files in
//! the object store, deleted files and rewritten ones stay readable in it
//! after move-to-s3 and remove-deleted; a snapshot moves with its space
//! (split + copy-shards); expiry; bad input.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Mount, TestCluster, root_conn, s3_keys, sh};
use mysql::prelude::Queryable;

/// Rows of a Storage Node table (`table WHERE …`) in database `db` of server 1.
fn rows(db: &str, from_where: &str) -> u64 {
    root_conn(1)
        .query_first::<u64, _>(format!("SELECT COUNT(*) FROM {db}.{from_where}"))
        .unwrap()
        .unwrap()
}

fn errno_of(r: std::io::Result<impl Sized>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

/// Every file under `dir`: relative path → contents (symlinks: "-> target").
fn tree(dir: &Path) -> HashMap<PathBuf, Vec<u8>> {
    let mut out = HashMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(dir).unwrap().to_path_buf();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(p);
            } else if t.is_symlink() {
                let target = std::fs::read_link(&p).unwrap();
                out.insert(rel, format!("-> {}", target.display()).into_bytes());
            } else {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// A `tshs-space-server` over `root` on a free loopback port (killed on drop).
struct SpaceServer {
    child: std::process::Child,
    addr: String,
    _dir: tempfile::TempDir,
}

const TOKEN: &str = "snapshot-test-token-0123456789";

impl SpaceServer {
    fn start(root: &Path) -> SpaceServer {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tshs-space-server"))
            .arg("--root")
            .arg(root)
            .args(["--listen", "127.0.0.1:0", "--token-file"])
            .arg(dir.path().join("token"))
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        std::io::BufReader::new(child.stderr.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let addr = first
            .split("http://")
            .nth(1)
            .and_then(|s| s.split('/').next())
            .unwrap_or_else(|| panic!("no address in {first:?}"))
            .to_string();
        SpaceServer {
            child,
            addr,
            _dir: dir,
        }
    }

    /// PUT `body` at `path`: the HTTP status.
    fn put(&self, path: &str, body: &[u8]) -> u16 {
        use std::io::Read;
        let mut c = std::net::TcpStream::connect(&self.addr).unwrap();
        write!(
            c,
            "PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .unwrap();
        c.write_all(body).unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).unwrap();
        answer
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for SpaceServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One writer's acknowledged records: seq → (started, acknowledged).
type Acks = Vec<(Instant, Instant)>;

const RECORD: usize = 40;

fn record(w: usize, seq: usize) -> Vec<u8> {
    let mut r = format!("writer {w} record {seq:010} ").into_bytes();
    r.resize(RECORD - 1, b'.');
    r.push(b'\n');
    r
}

/// Records of writer `w` in one log's bytes, which must be whole records.
fn records_in(w: usize, data: &[u8], what: &str) -> Vec<usize> {
    assert_eq!(data.len() % RECORD, 0, "{what}: a partial record");
    data.chunks(RECORD)
        .map(|r| {
            let text = String::from_utf8_lossy(r);
            let f: Vec<&str> = text.split_whitespace().collect();
            assert_eq!(f[1], w.to_string(), "{what}: {text}");
            let seq: usize = f[3].parse().unwrap();
            assert_eq!(r, record(w, seq).as_slice(), "{what}: a torn record");
            seq
        })
        .collect()
}

/// 4 writers append fsync'd records to their `last.log` and rotate it every
/// 25 records; the space server replaces `state` (atomic PUTs) meanwhile.
/// A snapshot taken meanwhile and copied out with rsync holds, for each
/// writer, exactly the records 0..k in order across its rotated logs and
/// `last.log`, with every record acknowledged before the snapshot began
/// and none begun after it ended; `state` is one whole version of the same
/// window. No writer saw an error.
#[test]
fn a_snapshot_under_writers_is_one_moment() {
    let (c, _db) = TestCluster::with_one_node();
    let m = c.mount();
    let space = m.space(101);
    let stop = Arc::new(AtomicBool::new(false));
    let acks: Arc<Mutex<Vec<Acks>>> = Arc::new(Mutex::new(vec![Vec::new(); 4]));
    let versions: Arc<Mutex<Vec<(Instant, Instant)>>> = Arc::default();
    let slowest = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for w in 0..4 {
        let dir = space.join(format!("w{w}"));
        std::fs::create_dir(&dir).unwrap();
        let (stop, acks, slowest) = (stop.clone(), acks.clone(), slowest.clone());
        threads.push(std::thread::spawn(move || {
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join("last.log"))
                    .unwrap();
                f.write_all(&record(w, seq)).unwrap();
                f.sync_all().unwrap();
                drop(f);
                let t1 = Instant::now();
                slowest.fetch_max((t1 - t0).as_micros() as u64, Ordering::Relaxed);
                acks.lock().unwrap()[w].push((t0, t1));
                seq += 1;
                if seq % 25 == 0 {
                    std::fs::rename(dir.join("last.log"), dir.join(format!("{seq:06}.log")))
                        .unwrap();
                }
            }
        }));
    }
    let server = Arc::new(SpaceServer::start(m.path()));
    {
        let (stop, versions, server) = (stop.clone(), versions.clone(), server.clone());
        threads.push(std::thread::spawn(move || {
            let mut v = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let body = format!("version {v:08}\n").repeat(1000 + v % 7);
                let status = server.put("/vol01/101/state", body.as_bytes());
                assert!(status == 200 || status == 201, "PUT answered {status}");
                versions.lock().unwrap().push((t0, Instant::now()));
                v += 1;
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let began = Instant::now();
    let out = c.ok(&["snapshot", "create", "101", "--name", "under-load"]);
    let ended = Instant::now();
    assert!(
        out.starts_with("Snapshot under-load of 1 space(s) created"),
        "{out}"
    );
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("a writer failed");
    }

    let copy = tempfile::tempdir().unwrap();
    let snap = m.path().join(".snapshots/under-load/vol01/101");
    sh(&format!(
        "rsync -aHAX {}/ {}/",
        snap.display(),
        copy.path().display()
    ));
    let acks = acks.lock().unwrap();
    for (w, acked) in acks.iter().enumerate() {
        let dir = copy.path().join(format!("w{w}"));
        let mut logs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n != "last.log")
            .collect();
        logs.sort();
        logs.push("last.log".into());
        let mut seqs = Vec::new();
        for l in &logs {
            let data = std::fs::read(dir.join(l)).unwrap_or_default();
            seqs.extend(records_in(w, &data, &format!("w{w}/{l}")));
        }
        let k = seqs.len();
        assert_eq!(
            seqs,
            (0..k).collect::<Vec<_>>(),
            "writer {w}: not 0..{k} in order"
        );
        let done_before = acked.iter().filter(|(_, a)| *a < began).count();
        let begun_after = acked
            .iter()
            .position(|(s, _)| *s > ended)
            .unwrap_or(acked.len());
        assert!(
            done_before <= k && k <= begun_after,
            "writer {w}: {k} records in the snapshot; {done_before} were acknowledged before it began, record {begun_after} began after it ended"
        );
    }
    let state = std::fs::read_to_string(copy.path().join("state")).unwrap();
    let first = state.lines().next().unwrap().to_string();
    assert!(state.lines().all(|l| l == first), "state is torn");
    let v: usize = first.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_eq!(state.lines().count(), 1000 + v % 7, "state {v} is cut");
    let versions = versions.lock().unwrap();
    assert!(
        versions.len() > 5,
        "the space server replaced state {} times",
        versions.len()
    );
    let done_before = versions.iter().filter(|(_, a)| *a < began).count();
    let begun_after = versions
        .iter()
        .position(|(s, _)| *s > ended)
        .unwrap_or(versions.len());
    assert!(
        done_before <= v + 1 && v < begun_after.max(1),
        "state {v}: {done_before} versions were done before the snapshot, {begun_after} began after"
    );
    let slowest_ms = slowest.load(Ordering::Relaxed) / 1000;
    eprintln!(
        "snapshot took {} ms; slowest append + fsync {slowest_ms} ms; {} records",
        (ended - began).as_millis(),
        acks.iter().map(Vec::len).sum::<usize>()
    );
    assert!(slowest_ms < 2000, "a writer stalled {slowest_ms} ms");
    // The live space went on past the snapshot.
    assert!(tree(&space).len() > tree(copy.path()).len());
}

/// Every change in a snapshot: EROFS. Reads give the snapshot's bytes,
/// xattrs, links and modes while the live files change.
#[test]
fn a_snapshot_is_read_only_and_keeps_its_moment() {
    let (c, db) = TestCluster::with_one_node();
    let m = c.mount();
    let s = m.space(102);
    std::fs::create_dir(s.join("d")).unwrap();
    std::fs::write(s.join("d/a"), b"before").unwrap();
    std::fs::hard_link(s.join("d/a"), s.join("d/a2")).unwrap();
    std::os::unix::fs::symlink("a", s.join("d/sym")).unwrap();
    std::fs::set_permissions(s.join("d/a"), std::fs::Permissions::from_mode(0o640)).unwrap();
    sh(&format!(
        "setfattr -n user.k -v one {}",
        s.join("d/a").display()
    ));
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(s.join("big"), &big).unwrap();
    c.ok(&["snapshot", "create", "102", "--name", "ro"]);
    let kept_before = rows(&db, "extents_v");
    // Change everything after the moment.
    std::fs::write(s.join("d/a"), b"after, and longer").unwrap();
    std::fs::remove_file(s.join("d/a2")).unwrap();
    std::fs::write(s.join("d/new"), b"new").unwrap();
    std::fs::set_permissions(s.join("d/a"), std::fs::Permissions::from_mode(0o600)).unwrap();
    sh(&format!(
        "setfattr -n user.k -v two {}",
        s.join("d/a").display()
    ));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(s.join("big"))
        .unwrap();
    std::os::unix::fs::FileExt::write_at(&f, b"XYZ", 300_000).unwrap();
    f.set_len(500_000).unwrap();
    drop(f);
    assert!(
        rows(&db, "extents_v") > kept_before,
        "the overwritten extents were kept"
    );

    let snap = m.path().join(".snapshots/ro/vol01/102");
    assert_eq!(std::fs::read(snap.join("d/a")).unwrap(), b"before");
    assert_eq!(std::fs::read(snap.join("d/a2")).unwrap(), b"before");
    assert!(!snap.join("d/new").exists());
    assert_eq!(
        std::fs::read_link(snap.join("d/sym")).unwrap(),
        Path::new("a")
    );
    let md = std::fs::metadata(snap.join("d/a")).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o640);
    assert_eq!(md.nlink(), 2);
    assert_eq!(
        md.ino(),
        std::fs::metadata(snap.join("d/a2")).unwrap().ino(),
        "hard links share an inode"
    );
    assert_ne!(md.ino(), std::fs::metadata(s.join("d/a")).unwrap().ino());
    assert!(
        sh(&format!(
            "getfattr -n user.k --only-values {}",
            snap.join("d/a").display()
        )) == "one"
    );
    assert_eq!(std::fs::read(snap.join("big")).unwrap(), big);
    assert_eq!(std::fs::read(s.join("big")).unwrap().len(), 500_000);
    // `/.snapshots` is found by name, not listed.
    let root: Vec<_> = std::fs::read_dir(m.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(!root.iter().any(|n| n == ".snapshots"), "{root:?}");
    let names: Vec<_> = std::fs::read_dir(m.path().join(".snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["ro"]);

    let erofs = libc::EROFS;
    let a = snap.join("d/a");
    assert_eq!(
        errno_of(std::fs::OpenOptions::new().write(true).open(&a)),
        erofs
    );
    assert_eq!(
        errno_of(std::fs::OpenOptions::new().append(true).open(&a)),
        erofs
    );
    assert_eq!(errno_of(std::fs::write(snap.join("d/x"), b"x")), erofs);
    assert_eq!(errno_of(std::fs::create_dir(snap.join("d/x"))), erofs);
    assert_eq!(errno_of(std::fs::remove_file(&a)), erofs);
    assert_eq!(errno_of(std::fs::remove_dir(snap.join("d"))), erofs);
    assert_eq!(errno_of(std::fs::rename(&a, snap.join("d/b"))), erofs);
    assert_eq!(errno_of(std::fs::hard_link(&a, snap.join("d/b"))), erofs);
    assert_eq!(
        errno_of(std::os::unix::fs::symlink("a", snap.join("d/b"))),
        erofs
    );
    assert_eq!(
        errno_of(std::fs::set_permissions(
            &a,
            std::fs::Permissions::from_mode(0o777)
        )),
        erofs
    );
    let code = std::process::Command::new("setfattr")
        .args(["-n", "user.k", "-v", "x"])
        .arg(&a)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&code.stderr).contains("Read-only file system"));
    assert_eq!(
        errno_of(std::fs::create_dir(m.path().join(".snapshots/x"))),
        erofs
    );
    // Renaming a live file into a snapshot.
    assert_eq!(
        errno_of(std::fs::rename(s.join("d/new"), snap.join("d/new"))),
        erofs
    );
    // Unchanged: the snapshot still reads as before.
    assert_eq!(std::fs::read(snap.join("d/a")).unwrap(), b"before");
}

/// Files held in the object store, deleted and rewritten after the
/// snapshot stay readable in it after move-to-s3 and remove-deleted; the
/// files wait for move-to-s3 while it lives, and everything it kept goes
/// when it is deleted.
#[test]
fn object_store_files_and_deleted_files_outlive_maintenance() {
    let (c, db) = TestCluster::with_one_node();
    let (ak, sk) = s3_keys();
    let ep = common::env("TSHS_S3_ENDPOINT");
    let b = c.new_bucket("snap");
    c.ok(&["add-s3-host", "GENERIC", &ep, &b, ak, sk, "MinSize=1K"]);
    let m = c.mount();
    let s = m.space(103);
    let old: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
    std::fs::write(s.join("in-s3"), &old).unwrap();
    std::fs::write(s.join("to-delete"), vec![7u8; 5000]).unwrap();
    std::fs::write(s.join("stays-in-db"), vec![9u8; 5000]).unwrap();
    let out = c.ok(&["move-to-s3", "--settle", "0"]);
    assert!(out.contains("3 files"), "{out}");
    std::fs::write(s.join("stays-in-db"), vec![8u8; 6000]).unwrap();
    c.ok(&["snapshot", "create", "103", "--name", "s3", "--ttl", "1h"]);
    // After the moment: the object's file rewritten (the object becomes
    // garbage), one deleted, one changed.
    std::fs::write(s.join("in-s3"), b"new").unwrap();
    std::fs::remove_file(s.join("to-delete")).unwrap();
    let out = c.ok(&["move-to-s3", "--settle", "0"]);
    assert_eq!(
        out, "move-to-s3: nothing to do\n",
        "files of a snapshotted space wait"
    );
    std::thread::sleep(Duration::from_millis(1100));
    c.ok(&["remove-deleted", "--grace", "0"]);
    let snap = m.path().join(".snapshots/s3/vol01/103");
    assert_eq!(std::fs::read(snap.join("in-s3")).unwrap(), old);
    assert_eq!(
        std::fs::read(snap.join("to-delete")).unwrap(),
        vec![7u8; 5000]
    );
    assert_eq!(
        std::fs::read(snap.join("stays-in-db")).unwrap(),
        vec![8u8; 6000]
    );
    assert!(!s.join("to-delete").exists());
    // fsck counts the object the snapshot still names as named, not orphaned.
    let out = c.ok(&["fsck", "--grace", "0"]);
    assert!(!out.contains("orphan"), "{out}");
    // A second mount reads the same snapshot.
    let m2 = Mount::new(&c, &[]);
    let snap2 = m2.path().join(".snapshots/s3/vol01/103");
    assert_eq!(std::fs::read(snap2.join("in-s3")).unwrap(), old);

    let out = c.ok(&["snapshot", "delete", "s3"]);
    assert!(out.starts_with("Snapshot s3 deleted"), "{out}");
    for t in [
        "inodes_v",
        "dentries_v",
        "xattrs_v",
        "extents_v",
        "snapshot_moments",
    ] {
        assert_eq!(rows(&db, t), 0, "{t} kept rows of a deleted snapshot");
    }
    // Gone for every mount once their views (1 s) and entries (TTL) lapse.
    std::thread::sleep(Duration::from_millis(1200));
    assert!(!m2.path().join(".snapshots/s3").exists());
    c.ok(&["remove-deleted", "--grace", "0"]);
    assert_eq!(
        rows(&db, "inodes WHERE state > 0"),
        0,
        "the deleted file was purged"
    );
    let out = c.ok(&["move-to-s3", "--settle", "0"]);
    assert!(
        out.contains("move-to-s3: 1 files") || out.contains("move-to-s3: 2 files"),
        "{out}"
    );
}

/// A snapshot of a volume moves with its spaces: split, copy-shards, then
/// the snapshot reads as before from the new node, and new snapshots are
/// taken there.
#[test]
fn a_snapshot_moves_with_its_space() {
    let (c, _db) = TestCluster::with_one_node();
    let (ak, sk) = s3_keys();
    let b = c.new_bucket("snapmove");
    c.ok(&[
        "add-s3-host",
        "GENERIC",
        &common::env("TSHS_S3_ENDPOINT"),
        &b,
        ak,
        sk,
        "MinSize=1K",
    ]);
    let m = c.mount();
    let spaces: Vec<u32> = (201..209).collect();
    let object = |sp: u32| vec![sp as u8; 5000];
    for sp in &spaces {
        let d = m.space(*sp);
        std::fs::write(d.join("f"), format!("space {sp} before")).unwrap();
        std::fs::write(d.join("in-s3"), object(*sp)).unwrap();
    }
    let out = c.ok(&["move-to-s3", "--settle", "0"]);
    assert!(out.contains("move-to-s3: 8 files"), "{out}");
    let out = c.ok(&["snapshot", "create", "vol01", "--name", "vol"]);
    assert!(out.contains("of 8 space(s)"), "{out}");
    for sp in &spaces {
        std::fs::write(m.space(*sp).join("f"), format!("space {sp} after")).unwrap();
        // Its object becomes garbage, recorded on node 1 whatever moves.
        std::fs::write(m.space(*sp).join("in-s3"), b"rewritten").unwrap();
    }
    c.split_node_1("st2");
    c.ok(&["copy-shards"]);
    assert!(
        !c.spaces_on(spaces.iter().copied(), 2).is_empty(),
        "no space moved"
    );
    std::thread::sleep(Duration::from_millis(1100));
    c.ok(&["remove-deleted", "--grace", "0"]);
    let snap = m.path().join(".snapshots/vol/vol01");
    for sp in &spaces {
        assert_eq!(
            std::fs::read(snap.join(sp.to_string()).join("in-s3")).unwrap(),
            object(*sp),
            "space {sp}: the object its snapshot names was deleted"
        );
    }
    for sp in &spaces {
        assert_eq!(
            std::fs::read_to_string(snap.join(sp.to_string()).join("f")).unwrap(),
            format!("space {sp} before")
        );
        assert_eq!(
            std::fs::read_to_string(m.space(*sp).join("f")).unwrap(),
            format!("space {sp} after")
        );
    }
    c.ok(&["snapshot", "create", "vol01", "--name", "vol2"]);
    for sp in &spaces {
        std::fs::write(m.space(*sp).join("f"), format!("space {sp} third")).unwrap();
    }
    let snap2 = m.path().join(".snapshots/vol2/vol01");
    for sp in &spaces {
        assert_eq!(
            std::fs::read_to_string(snap2.join(sp.to_string()).join("f")).unwrap(),
            format!("space {sp} after")
        );
        assert_eq!(
            std::fs::read_to_string(snap.join(sp.to_string()).join("f")).unwrap(),
            format!("space {sp} before")
        );
    }
    c.ok(&["snapshot", "delete", "vol"]);
    c.ok(&["snapshot", "delete", "vol2"]);
}

/// `--ttl`: remove-deleted removes a snapshot past its life; bad input is
/// refused with one line and nothing made.
#[test]
fn expiry_and_bad_input() {
    let (c, db) = TestCluster::with_one_node();
    let m = c.mount();
    std::fs::write(m.space(104).join("f"), b"x").unwrap();
    // Long enough for the checks before expiry on a loaded machine.
    let ttl = Duration::from_secs(6);
    let made = std::time::Instant::now();
    c.ok(&["snapshot", "create", "104", "--name", "short", "--ttl", "6"]);
    std::fs::write(m.space(104).join("f"), b"y").unwrap();
    assert!(rows(&db, "inodes_v") > 0);
    let list = c.ok(&["snapshot", "list"]);
    assert!(list.contains("short") && list.contains("ready"), "{list}");
    let dry = c.ok(&["remove-deleted", "--dry-run"]);
    assert!(!dry.contains("snapshot short"), "not expired yet: {dry}");
    std::thread::sleep((ttl + Duration::from_millis(1100)).saturating_sub(made.elapsed()));
    let dry = c.ok(&["remove-deleted", "--dry-run"]);
    assert!(
        dry.contains("would remove snapshot short (expired)"),
        "{dry}"
    );
    assert!(c.ok(&["snapshot", "list"]).contains("short"));
    let out = c.ok(&["remove-deleted"]);
    assert!(out.contains("removed snapshot short (expired"), "{out}");
    assert!(!c.ok(&["snapshot", "list"]).contains("short"));
    assert_eq!(rows(&db, "inodes_v"), 0);
    assert_eq!(rows(&db, "snapshot_moments"), 0);

    // A snapshot deleted while a file of it is open: its reads fail
    // (ESTALE) rather than show half-freed rows.
    c.ok(&["snapshot", "create", "104", "--name", "gone"]);
    let f = std::fs::File::open(m.path().join(".snapshots/gone/vol01/104/f")).unwrap();
    c.ok(&["snapshot", "delete", "gone"]);
    let mut buf = [0u8; 1];
    assert_eq!(
        errno_of(std::os::unix::fs::FileExt::read_at(&f, &mut buf, 0)),
        libc::ESTALE
    );
    drop(f);

    c.ok(&["snapshot", "create", "104", "--name", "keep"]);
    let before = c.ok(&["snapshot", "list"]);
    for (args, msg) in [
        (
            vec!["snapshot", "create", "999"],
            "space 999 does not exist",
        ),
        (
            vec!["snapshot", "create", "nosuchvol"],
            "no volume named \"nosuchvol\"",
        ),
        (
            vec!["snapshot", "create", "104", "--name", "keep"],
            "a snapshot named \"keep\" exists already",
        ),
        (
            vec!["snapshot", "create", "104", "--name", "a/b"],
            "a snapshot name may hold",
        ),
        (
            vec!["snapshot", "create", "104", "--name", ".x"],
            "cannot start with '.'",
        ),
        (
            vec!["snapshot", "delete", "nope"],
            "no snapshot named \"nope\"",
        ),
    ] {
        let e = c.fails(&args);
        assert!(e.contains(msg), "{args:?}: {e}");
    }
    for ttl in ["0", "1x", "31d", "1.5h"] {
        let e = c.fails(&["snapshot", "create", "104", "--ttl", ttl]);
        assert!(e.contains("expected a duration"), "--ttl {ttl}: {e}");
    }
    assert_eq!(c.ok(&["snapshot", "list"]), before, "nothing made");
    assert_eq!(rows(&db, "snapshot_moments"), 1);
    c.ok(&["snapshot", "delete", "keep"]);
    assert_eq!(rows(&db, "snapshot_moments"), 0);
}
