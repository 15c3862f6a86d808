//! remove-deleted and list-files against a real mount.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{Mount, TestCluster, root_conn};
use mysql::prelude::Queryable;

fn node_rows(c: &TestCluster, space: u32) -> u64 {
    let db = c.dbs.lock().unwrap()[1].1.clone();
    root_conn(1)
        .query_first(format!(
            "SELECT (SELECT COUNT(*) FROM {db}.inodes WHERE space_id = {space})
                  + (SELECT COUNT(*) FROM {db}.dentries WHERE space_id = {space})
                  + (SELECT COUNT(*) FROM {db}.extents WHERE space_id = {space})"
        ))
        .unwrap()
        .unwrap()
}

fn purged_inodes(c: &TestCluster) -> u64 {
    let db = c.dbs.lock().unwrap()[1].1.clone();
    root_conn(1)
        .query_first(format!("SELECT COUNT(*) FROM {db}.inodes WHERE state > 0"))
        .unwrap()
        .unwrap()
}

/// Waits until `n` inodes are unlinked but open (state 1): the kernel sends
/// RELEASE after close() returns, and the mount then marks the file deleted.
fn wait_unlinked_open(c: &TestCluster, n: u64) {
    let db = c.dbs.lock().unwrap()[1].1.clone();
    let t = std::time::Instant::now();
    loop {
        let open: u64 = root_conn(1)
            .query_first(format!("SELECT COUNT(*) FROM {db}.inodes WHERE state = 1"))
            .unwrap()
            .unwrap();
        if open == n {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{open} inodes unlinked but open, expected {n}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn remove_deleted_purges_spaces_and_inodes_but_not_open_files() {
    let c = TestCluster::with_one_node().0;
    let m = Mount::new(&c, &[]);
    // A deleted space: emptied, then rmdir -> DELETE job.
    let gone = m.space(7);
    std::fs::write(gone.join("f"), vec![1u8; 300_000]).unwrap();
    std::fs::remove_file(gone.join("f")).unwrap();
    std::fs::remove_dir(&gone).unwrap();
    assert!(c.ok(&["list-jobs"]).contains("DELETE"));
    // Deleted files in a live space: one closed, one still open.
    let live = m.space(8);
    std::fs::write(live.join("closed"), vec![2u8; 100_000]).unwrap();
    let mut open = std::fs::File::create(live.join("open")).unwrap();
    open.write_all(&[3u8; 100_000]).unwrap();
    open.sync_all().unwrap();
    std::fs::remove_file(live.join("closed")).unwrap();
    std::fs::remove_file(live.join("open")).unwrap();
    wait_unlinked_open(&c, 1);
    let before_space = node_rows(&c, 7);
    assert!(before_space > 0, "the deleted space should still have rows");

    // Within the grace period nothing goes.
    let out = c.ok(&["remove-deleted", "--dry-run"]);
    assert!(!out.contains("would remove space 7"), "{out}");
    // With no grace: the dry run lists, and changes nothing.
    let out = c.ok(&["remove-deleted", "--dry-run", "--grace", "0"]);
    assert!(out.contains("would remove space 7"), "{out}");
    assert!(
        out.contains("would remove 2 deleted inode(s) on storage node 1"),
        "{out}"
    );
    assert_eq!(node_rows(&c, 7), before_space);
    assert!(c.ok(&["list-jobs"]).contains("space=7"));
    // The summary counts each kind apart.
    assert!(
        out.contains("remove-deleted: 1 space, 2 inodes, 0 objects (dry run: nothing changed)"),
        "{out}"
    );

    let out = c.ok(&["remove-deleted", "--grace", "0"]);
    assert!(out.contains("removed space 7"), "{out}");
    assert_eq!(node_rows(&c, 7), 0);
    assert!(!c.ok(&["list-jobs"]).contains("space=7"));
    assert!(c.cluster().space(7).unwrap().is_none());
    // The open one survives: its data is still readable through the handle.
    assert_eq!(
        purged_inodes(&c),
        1,
        "only the open file's inode may remain"
    );
    drop(open);
    wait_unlinked_open(&c, 0);
    c.ok(&["remove-deleted", "--grace", "0"]);
    assert_eq!(purged_inodes(&c), 0);
    // The space id can be used again.
    std::fs::create_dir(m.path().join("vol01/7")).unwrap();
}

#[test]
fn list_files_shows_sizes_states_and_paths() {
    let c = TestCluster::with_one_node().0;
    let m = Mount::new(&c, &[]);
    let s = m.space(9);
    std::fs::create_dir_all(s.join("protolog")).unwrap();
    std::fs::write(s.join("protolog/last.log"), b"hello\n").unwrap();
    std::fs::write(s.join("protolog/0.log"), vec![0u8; 1000]).unwrap();
    std::fs::write(s.join("data"), vec![0u8; 70_000]).unwrap();
    std::fs::write(s.join("doomed"), b"x").unwrap();
    std::fs::remove_file(s.join("doomed")).unwrap();
    wait_unlinked_open(&c, 0);
    let out = c.ok(&["list-files", "9"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("Inode"), "{out}");
    let row = |path: &str| {
        lines
            .iter()
            .find(|l| l.ends_with(path))
            .unwrap_or_else(|| panic!("{path} missing: {out}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(row("data")[1..3], ["70000", "InDB"]);
    assert_eq!(row("protolog/last.log")[1..3], ["6", "InDB"]);
    assert_eq!(row("protolog/0.log")[1..3], ["1000", "InDB"]);
    assert!(
        out.contains("deleted"),
        "the unlinked file shows as deleted: {out}"
    );
    // Inode numbers are the mount's.
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(s.join("data")).unwrap().ino();
    assert_eq!(row("data")[0], ino.to_string());
    // A sub-tree, a file, and bad input.
    let out = c.ok(&["list-files", "9", "protolog"]);
    assert_eq!(out.lines().count(), 4, "{out}"); // header, rule, 2 files
    let out = c.ok(&["list-files", "9", "/data"]);
    assert_eq!(out.lines().count(), 3, "{out}");
    let e = c.fails(&["list-files", "9", "nope"]);
    assert!(
        e.contains("no such file or directory in space 9: nope"),
        "{e}"
    );
    let e = c.fails(&["list-files", "4711"]);
    assert!(e.contains("there is no space 4711"), "{e}");
    let e = c.fails(&["list-files", "x"]);
    assert!(!e.is_empty());
}
