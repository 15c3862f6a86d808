//! Scale-out: split-storage-node onto the other MariaDB server and
//! copy-shards while two mounts append and create files in 20 spaces.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Mount, TestCluster, root_conn, server};
use mysql::prelude::Queryable;

const SPACES: std::ops::Range<u32> = 101..121;

/// A file a writer created: its path under the mount and its contents.
type Created = (PathBuf, Vec<u8>);

fn rows_on(server_no: u8, db: &str, space: u32) -> u64 {
    root_conn(server_no)
        .query_first(format!(
            "SELECT (SELECT COUNT(*) FROM {db}.inodes WHERE space_id = {space})
                  + (SELECT COUNT(*) FROM {db}.extents WHERE space_id = {space})"
        ))
        .unwrap()
        .unwrap()
}

fn copy_shards(c: &TestCluster, extra: &[&str]) -> Child {
    let mut args = vec![
        "--mysql-cfg-file".to_string(),
        c.mycnf.to_str().unwrap().to_string(),
    ];
    args.push("copy-shards".into());
    args.extend(extra.iter().map(|s| s.to_string()));
    Command::new(env!("CARGO_BIN_EXE_tshs"))
        .args(&args)
        .env("TSHS_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn phase_of(c: &TestCluster, node: u32) -> String {
    let cl = c.cluster();
    cl.node(node).unwrap().phase.as_str().to_string()
}

/// Every regular file under `dir` with its inode number and contents.
fn snapshot(dir: &Path) -> HashMap<PathBuf, (u64, Vec<u8>)> {
    let mut out = HashMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            let rel = e.path().strip_prefix(dir).unwrap().to_path_buf();
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                out.insert(rel, (m.ino(), std::fs::read(e.path()).unwrap()));
            } else {
                let t = std::fs::read_link(e.path()).unwrap();
                out.insert(rel, (m.ino(), t.into_os_string().into_encoded_bytes()));
            }
        }
    }
    out
}

#[test]
fn split_and_copy_shards_under_load() {
    let (c, _db1) = TestCluster::with_one_node();
    let m1 = Mount::new(&c, &[]);
    let m2 = Mount::new(&c, &[]);
    // 20 spaces with logs, data, a hard link and a symlink each.
    for s in SPACES {
        let d = m1.space(s);
        std::fs::create_dir(d.join("protolog")).unwrap();
        std::fs::write(d.join("protolog/last.log"), format!("space {s} start\n")).unwrap();
        std::fs::write(d.join("protolog/0.log"), vec![s as u8; 300_000]).unwrap();
        let data: Vec<u8> = (0..700_000u32).map(|i| (i * 7 + s) as u8).collect();
        std::fs::write(d.join("data.bin"), &data).unwrap();
        std::fs::hard_link(d.join("data.bin"), d.join("data.link")).unwrap();
        std::os::unix::fs::symlink("data.bin", d.join("sym")).unwrap();
    }
    let before: HashMap<u32, _> = SPACES
        .map(|s| (s, snapshot(&m1.path().join(format!("vol01/{s}")))))
        .collect();

    // Writers on both mounts: appends to last.log, new files; a reader.
    let stop = Arc::new(AtomicBool::new(false));
    let appended: Arc<Mutex<HashMap<u32, Vec<String>>>> = Arc::default();
    let created: Arc<Mutex<Vec<Created>>> = Arc::default();
    let read_errors = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for (w, root) in [
        m1.path().to_path_buf(),
        m2.path().to_path_buf(),
        m1.path().to_path_buf(),
        m2.path().to_path_buf(),
    ]
    .into_iter()
    .enumerate()
    {
        let (stop, appended, created) = (stop.clone(), appended.clone(), created.clone());
        threads.push(std::thread::spawn(move || {
            let mut i = 0u32;
            while !stop.load(Ordering::Acquire) {
                let s = SPACES.start + (i * 7 + w as u32) % 20;
                let line = format!("writer {w} record {i}\n");
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(root.join(format!("vol01/{s}/protolog/last.log")))
                    .unwrap();
                f.write_all(line.as_bytes()).unwrap();
                drop(f);
                appended.lock().unwrap().entry(s).or_default().push(line);
                if i.is_multiple_of(5) {
                    let rel = PathBuf::from(format!("vol01/{s}/new-{w}-{i}"));
                    let body = format!("file {w} {i}")
                        .repeat(100 + i as usize % 300)
                        .into_bytes();
                    std::fs::write(root.join(&rel), &body).unwrap();
                    created.lock().unwrap().push((rel, body));
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
        }));
    }
    {
        let (stop, errors, root) = (stop.clone(), read_errors.clone(), m2.path().to_path_buf());
        threads.push(std::thread::spawn(move || {
            let mut i = 0u32;
            while !stop.load(Ordering::Acquire) {
                let s = SPACES.start + i % 20;
                match std::fs::read(root.join(format!("vol01/{s}/data.bin"))) {
                    Ok(d) if d.len() == 700_000 && d[1] == (7 + s) as u8 => {}
                    other => {
                        eprintln!("read of space {s} failed: {:?}", other.map(|d| d.len()));
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                i += 1;
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(500));

    // Split onto the other server, then copy with three processes at once,
    // each with a short time limit, restarted until the node is active; the
    // first one is killed mid-way.
    let db2 = c.new_db(2, "st");
    let out = c.ok(&[
        "split-storage-node",
        "1",
        &format!("{};database={db2}", server(2)),
    ]);
    assert!(out.contains("MIRROR_SHARD"), "{out}");
    let progress = c.ok(&["list-storage-nodes"]);
    assert!(
        progress.contains(" spaces moved from node 1"),
        "list-storage-nodes shows the copy's progress: {progress}"
    );
    let mut victim = copy_shards(&c, &[]);
    let t = Instant::now();
    let claimed = || -> u64 {
        root_conn(1)
            .query_first(format!("SELECT COUNT(*) FROM {}.space_moves", c.admin_db))
            .unwrap()
            .unwrap()
    };
    while claimed() == 0 && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    victim.kill().unwrap();
    victim.wait().unwrap();
    assert_eq!(
        claimed(),
        1,
        "the killed copy-shards should leave its move claimed"
    );
    let t = Instant::now();
    let mut rounds = 0;
    while phase_of(&c, 2) != "ACTIVE_SHARD" {
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "copy-shards did not finish"
        );
        let kids: Vec<Child> = (0..3)
            .map(|_| copy_shards(&c, &["--time-limit", "3"]))
            .collect();
        for k in kids {
            let o = k.wait_with_output().unwrap();
            assert!(
                o.status.success(),
                "copy-shards failed: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        rounds += 1;
    }
    eprintln!(
        "copy-shards finished after {rounds} rounds in {:?}",
        t.elapsed()
    );
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Release);
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(
        read_errors.load(Ordering::Relaxed),
        0,
        "reads failed during the move"
    );

    // Placement: every space of the upper half is on node 2, its rows gone from node 1.
    let cl = c.cluster();
    let n2 = cl.node(2).unwrap();
    let mut moved = 0;
    for s in SPACES {
        let row = cl.space(s).unwrap().unwrap();
        let upper = n2.range.contains(tshs::placement::hash32(s));
        assert_eq!(row.node_id, if upper { 2 } else { 1 }, "space {s}");
        if upper {
            moved += 1;
            assert_eq!(rows_on(1, &_db1, s), 0, "space {s} left rows on node 1");
        }
    }
    assert!(
        moved >= 3,
        "too few spaces moved ({moved}) for a meaningful test"
    );

    // Contents, through a fresh mount (nothing cached): the old files with
    // their inode numbers, every appended record once, every created file.
    let m3 = Mount::new(&c, &[]);
    let appended = appended.lock().unwrap();
    for s in SPACES {
        let now = snapshot(&m3.path().join(format!("vol01/{s}")));
        for (path, (ino, data)) in &before[&s] {
            let (ino2, data2) = &now[path];
            assert_eq!(ino, ino2, "space {s} {path:?}: inode number changed");
            if !path.ends_with("last.log") {
                assert!(data == data2, "space {s} {path:?}: contents differ");
            }
        }
        let log = String::from_utf8(now[Path::new("protolog/last.log")].1.clone()).unwrap();
        let lines: Vec<&str> = log.lines().skip(1).collect();
        let want = appended.get(&s).map(Vec::len).unwrap_or(0);
        assert_eq!(
            lines.len(),
            want,
            "space {s}: last.log has {} records, {want} were appended",
            lines.len()
        );
        for rec in appended.get(&s).into_iter().flatten() {
            assert_eq!(
                lines.iter().filter(|l| **l == rec.trim_end()).count(),
                1,
                "space {s}: record {rec:?} not exactly once"
            );
        }
    }
    for (rel, body) in created.lock().unwrap().iter() {
        let got = std::fs::read(m3.path().join(rel)).unwrap();
        if got != *body {
            let at = got.iter().zip(body.iter()).position(|(a, b)| a != b);
            let via_m1 = std::fs::read(m1.path().join(rel)).map(|d| d == *body);
            panic!(
                "{rel:?} differs after the move: {} bytes, expected {}, first difference at {at:?}; m1 reads it right: {via_m1:?}; got {:?}",
                got.len(),
                body.len(),
                String::from_utf8_lossy(&got[..got.len().min(60)])
            );
        }
    }
    let list = c.ok(&["list-storage-nodes"]);
    assert!(!list.contains("MIRROR_SHARD"), "{list}");
}

/// Appends that wait in their mount's group commit queue while their
/// spaces move away (a test hook holds every batch until the move, old
/// rows dropped, is done) land on the new node, each once.
#[test]
fn appends_queued_while_their_spaces_move_land_on_the_new_node() {
    let (c, db1) = TestCluster::with_one_node();
    let hold = tempfile::NamedTempFile::new().unwrap();
    let m = Mount::with_env(
        &c,
        &[],
        &[("TSHS_TEST_APPEND_HOLD", hold.path().to_str().unwrap())],
    );
    let spaces = 1..=8u32;
    for s in spaces.clone() {
        std::fs::write(m.space(s).join("last.log"), format!("space {s}\n")).unwrap();
    }
    // Each append's node is asked as it queues, before the split.
    let appenders: Vec<_> = spaces
        .clone()
        .map(|s| {
            let log = m.space(s).join("last.log");
            std::thread::spawn(move || {
                // O_SYNC: the write itself waits for its batch, which the
                // test's gate holds while the spaces move (a plain write
                // would return once queued, before the move).
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .custom_flags(libc::O_SYNC)
                    .open(&log)
                    .unwrap();
                f.write_all(format!("appended to {s}\n").as_bytes())
                    .map_err(|e| format!("space {s}: {e}"))
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    c.split_node_1("st");
    c.ok(&["copy-shards"]);
    let moved = c.spaces_on(spaces.clone(), 2);
    assert!(!moved.is_empty(), "no space moved");
    for s in &moved {
        assert_eq!(rows_on(1, &db1, *s), 0, "space {s} left rows on node 1");
    }
    assert!(
        appenders.iter().all(|a| !a.is_finished()),
        "an append ran while held"
    );
    drop(hold);
    for a in appenders {
        a.join().unwrap().unwrap();
    }
    for s in spaces {
        assert_eq!(
            std::fs::read_to_string(m.space(s).join("last.log")).unwrap(),
            format!("space {s}\nappended to {s}\n"),
            "space {s} (moved: {})",
            moved.contains(&s)
        );
    }
}

/// Appends queued behind their writes (the writes returned) while their
/// spaces move away, their batch held until the move is done: they land
/// on the new node, each once, and the fsync after them succeeds.
#[test]
fn appends_queued_behind_their_writes_while_their_spaces_move_land_once() {
    let (c, db1) = TestCluster::with_one_node();
    let hold = tempfile::NamedTempFile::new().unwrap();
    let hold_path = hold.path().to_owned();
    let m = Mount::with_env(
        &c,
        &[],
        &[("TSHS_TEST_APPEND_HOLD", hold_path.to_str().unwrap())],
    );
    std::fs::remove_file(&hold_path).unwrap();
    let spaces = 1..=8u32;
    let mut logs: Vec<std::fs::File> = spaces
        .clone()
        .map(|s| {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(m.space(s).join("last.log"))
                .unwrap();
            // The first append through an open file waits for its commit.
            f.write_all(format!("space {s}\n").as_bytes()).unwrap();
            f
        })
        .collect();
    std::fs::write(&hold_path, b"").unwrap();
    for (f, s) in logs.iter_mut().zip(spaces.clone()) {
        f.write_all(format!("queued to {s}\n").as_bytes()).unwrap();
    }
    c.split_node_1("st");
    c.ok(&["copy-shards"]);
    let moved = c.spaces_on(spaces.clone(), 2);
    assert!(!moved.is_empty(), "no space moved");
    for s in &moved {
        assert_eq!(rows_on(1, &db1, *s), 0, "space {s} left rows on node 1");
    }
    std::fs::remove_file(&hold_path).unwrap();
    for (f, s) in logs.iter().zip(spaces.clone()) {
        f.sync_all().unwrap_or_else(|e| panic!("space {s}: {e}"));
    }
    drop(logs);
    let other = Mount::new(&c, &[]);
    for s in spaces {
        assert_eq!(
            std::fs::read_to_string(other.space(s).join("last.log")).unwrap(),
            format!("space {s}\nqueued to {s}\n"),
            "space {s} (moved: {})",
            moved.contains(&s)
        );
    }
}

/// A process that cannot heartbeat confirms its cached placement in the
/// read's own snapshot: rows a move drops after the check stay visible to
/// that read, and a sealed space is not read at all.
#[test]
fn a_read_confirmed_by_the_node_sees_one_moment() {
    let (c, db1) = TestCluster::with_one_node();
    let m = Mount::new(&c, &[]);
    for name in ["a", "b", "c"] {
        std::fs::write(m.space(7).join(name), name).unwrap();
    }
    let shard = c.cluster().shard(1).unwrap();
    let count = "SELECT COUNT(*) FROM dentries WHERE space_id = 7";
    let before: u64 = root_conn(1)
        .query_first(format!(
            "SELECT COUNT(*) FROM {db1}.dentries WHERE space_id = 7"
        ))
        .unwrap()
        .unwrap();
    assert!(before >= 3);
    let mut dropped = false;
    let seen: Option<u64> = shard
        .read_if_held(7, |conn| {
            if !dropped {
                // A move's last steps, committed while the read runs.
                let mut root = root_conn(1);
                root.query_drop(format!("DELETE FROM {db1}.dentries WHERE space_id = 7"))?;
                root.query_drop(format!(
                    "UPDATE {db1}.space_fence SET fenced_until = '9999-12-31' WHERE space_id = 7"
                ))?;
                dropped = true;
            }
            Ok(conn.query_first::<u64, _>(count)?.unwrap_or(0))
        })
        .unwrap();
    assert_eq!(
        seen,
        Some(before),
        "the read saw rows dropped after its check"
    );
    assert_eq!(
        shard
            .read_if_held(7, |conn| conn.query_first::<u64, _>(count))
            .unwrap(),
        None,
        "a sealed space was read"
    );
}

#[test]
fn split_refuses_bad_input_and_leaves_nothing_behind() {
    let (c, db1) = TestCluster::with_one_node();
    let tables = |n: u8, db: &str| -> u64 {
        root_conn(n)
            .query_first(format!(
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = '{db}'"
            ))
            .unwrap()
            .unwrap()
    };
    let listing = c.ok(&["list-storage-nodes"]);
    let db2 = c.new_db(2, "st");
    let target = format!("{};database={db2}", server(2));
    let e = c.fails(&["split-storage-node", "9", &target]);
    assert!(e.contains("there is no storage node 9"), "{e}");
    let e = c.fails(&[
        "split-storage-node",
        "1",
        &format!("{};database={db1}", server(1)),
    ]);
    assert!(e.contains("is already storage node 1"), "{e}");
    let e = c.fails(&[
        "split-storage-node",
        "1",
        &format!("host=127.0.0.1;port=1;user=x;password=y;database={db2}"),
    ]);
    assert!(e.contains("cannot reach"), "{e}");
    assert!(!e.contains("password=y"), "a password was printed: {e}");
    root_conn(2)
        .query_drop(format!("CREATE TABLE {db2}.mine (x INT)"))
        .unwrap();
    let e = c.fails(&["split-storage-node", "1", &target]);
    assert!(e.contains("is not empty"), "{e}");
    root_conn(2)
        .query_drop(format!("DROP TABLE {db2}.mine"))
        .unwrap();
    let e = c.fails(&["split-storage-node", "1", "host=127.0.0.1;bogus=1"]);
    assert!(e.contains("bogus"), "{e}");
    assert_eq!(
        c.ok(&["list-storage-nodes"]),
        listing,
        "a failed split changed the nodes"
    );
    assert_eq!(tables(2, &db2), 0, "a failed split left tables behind");

    // A node being split cannot be split again, nor can the new node.
    c.ok(&["split-storage-node", "1", &target]);
    let db3 = c.new_db(2, "st");
    let target3 = format!("{};database={db3}", server(2));
    let e = c.fails(&["split-storage-node", "2", &target3]);
    assert!(e.contains("MIRROR_SHARD"), "{e}");
    let e = c.fails(&["split-storage-node", "1", &target3]);
    assert!(e.contains("still being split"), "{e}");
    assert_eq!(tables(2, &db3), 0);
    // With no space to move, one copy-shards run finishes the split.
    let out = c.ok(&["copy-shards"]);
    assert!(out.contains("Storage node 2 is ACTIVE_SHARD"), "{out}");
    assert_eq!(phase_of(&c, 2), "ACTIVE_SHARD");
    c.ok(&["split-storage-node", "2", &target3]);
    let list = c.ok(&["list-storage-nodes"]);
    assert!(list.contains("3221225472 (1073741824)"), "{list}");
}

/// A mount stopped (SIGSTOP) past the access points' expiry while its
/// spaces move: the move waits for it only that long, and once it runs
/// again it finds every file, moved or not, and acknowledges the new
/// epoch (its access point was kept: a stalled mount keeps its
/// unlinked-but-open files).
#[test]
fn a_mount_stalled_while_spaces_move_finds_them_on_their_new_node() {
    let (c, _) = TestCluster::with_one_node();
    let m = Mount::new(&c, &[]);
    let spaces = 1..=12u32;
    for s in spaces.clone() {
        std::fs::write(m.space(s).join("f"), format!("space {s}")).unwrap();
    }
    let signal =
        |sig| nix::sys::signal::kill(nix::unistd::Pid::from_raw(m.pid() as i32), sig).unwrap();
    signal(nix::sys::signal::Signal::SIGSTOP);
    let t = Instant::now();
    c.split_node_1("st");
    let out = c.ok(&["copy-shards"]);
    signal(nix::sys::signal::Signal::SIGCONT);
    assert!(
        t.elapsed() >= Duration::from_secs(20),
        "the move did not wait for the stopped mount: {out}"
    );
    let moved = c.spaces_on(spaces.clone(), 2);
    assert!(!moved.is_empty(), "{out}");
    for s in spaces {
        assert_eq!(
            std::fs::read_to_string(m.space(s).join("f")).unwrap(),
            format!("space {s}"),
            "space {s} (moved: {})",
            moved.contains(&s)
        );
    }
    let t = Instant::now();
    let cluster = c.cluster();
    let unacked = || cluster.unacknowledged(cluster.epoch().unwrap()).unwrap();
    while unacked() > 0 && t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(unacked(), 0, "{}", c.ok(&["list-access-points"]));
}
