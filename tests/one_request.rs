//! A new file's first commit and the common rename are one request each
//! (issue 14, part 2): rsync's close and rename no longer send a statement
//! per row. The statement way sends them as prepared statements, the one
//! request as text: the server's count of prepared statements run tells
//! the two apart. This binary holds one test, so that count is its mounts'
//! (test binaries run one after another), give or take a statement of
//! their background work.

mod common;

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use common::{Mount, TestCluster, sh};
use mysql::prelude::Queryable;

/// Prepared statements server 1 ran during `f`.
fn prepared(f: impl FnOnce()) -> u64 {
    let count = || -> u64 {
        let row: Option<(String, u64)> = common::root_conn(1)
            .query_first("SHOW GLOBAL STATUS LIKE 'Com_stmt_execute'")
            .unwrap();
        row.unwrap().1
    };
    let before = count();
    f();
    count() - before
}

/// Fewer than the statement way sends: a new file's first commit sends 6
/// (a check, its row, its entry, its directory, a data row, its size), a
/// rename 4 (a locking read, the entry, its time, the directory).
const FEWER: u64 = 4;

#[test]
fn a_new_files_commit_and_its_rename_are_one_request_each() {
    let (c, _) = TestCluster::with_one_node();
    let m = Mount::new(&c, &[]);
    let other = Mount::new(&c, &[]);
    let (s, s2) = (m.space(3), other.space(3));
    std::fs::create_dir(s.join("d")).unwrap();
    std::fs::create_dir(s.join("e")).unwrap();
    // Two slots' worth: the file's row, its entry and two data rows.
    let data = common::pattern(7, 300_000);
    let tmp = s.join("d/.f.tmp");
    let mut f = std::fs::File::create_new(&tmp).unwrap();
    f.write_all(&data).unwrap();
    let n = prepared(|| drop(f));
    assert!(n < FEWER, "a new file's close: {n} prepared statements");
    assert_eq!(std::fs::read(s2.join("d/.f.tmp")).unwrap(), data);

    // rsync's way: mode and times (deferred), then the rename carrying them.
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o640)).unwrap();
    sh(&format!("touch -m -d @1600000000 '{}'", tmp.display()));
    let dir_before = std::fs::metadata(s.join("d")).unwrap().mtime_nsec();
    // The names asked first: their lookups are not the rename's.
    let warm = |names: &[&str]| {
        for n in names {
            let _ = std::fs::symlink_metadata(s.join(n));
        }
    };
    warm(&["d", "d/.f.tmp", "d/f"]);
    let rename = || std::fs::rename(&tmp, s.join("d/f")).unwrap();
    let n = prepared(rename);
    assert!(
        n < FEWER,
        "a rename to a free name: {n} prepared statements"
    );
    std::thread::sleep(Duration::from_millis(1100)); // the other mount's TTL
    let got = std::fs::metadata(s2.join("d/f")).unwrap();
    assert_eq!(std::fs::read(s2.join("d/f")).unwrap(), data);
    assert_eq!(
        (got.mode() & 0o7777, got.mtime(), got.len(), got.nlink()),
        (0o640, 1_600_000_000, 300_000, 1)
    );
    assert!(std::fs::symlink_metadata(s2.join("d/.f.tmp")).is_err());
    assert_ne!(
        std::fs::metadata(s2.join("d")).unwrap().mtime_nsec(),
        dir_before
    );

    // Into another directory: both directories' times move.
    let times = |p: &str| std::fs::metadata(s2.join(p)).unwrap().mtime_nsec();
    let (d0, e0) = (times("d"), times("e"));
    warm(&["d", "e", "d/f", "e/g"]);
    let across = || std::fs::rename(s.join("d/f"), s.join("e/g")).unwrap();
    let n = prepared(across);
    assert!(
        n < FEWER,
        "a rename into another directory: {n} prepared statements"
    );
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(std::fs::read(s2.join("e/g")).unwrap(), data);
    assert!(std::fs::symlink_metadata(s2.join("d/f")).is_err());
    assert_ne!(times("d"), d0);
    assert_ne!(times("e"), e0);

    // Onto a name that exists: refused by the procedure (nothing done),
    // then the statements replace the name.
    std::fs::write(s.join("e/h"), b"h").unwrap();
    warm(&["e", "e/g", "e/h"]);
    let onto = || std::fs::rename(s.join("e/g"), s.join("e/h")).unwrap();
    let n = prepared(onto);
    assert!(n >= FEWER, "a rename onto a name: {n} prepared statements");
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(std::fs::read(s2.join("e/h")).unwrap(), data);
    assert!(std::fs::symlink_metadata(s2.join("e/g")).is_err());
}
