//! `tshs fsck` against the local MariaDB servers and S3 store: a clean
//! cluster, then every kind of problem planted in the rows and the bucket
//! (a moved file's object deleted or cut short, orphaned objects, an extent
//! past a file's size, a name whose inode is gone, an inode without a
//! name), reported with exit 1, repaired with `--repair` without touching
//! anything else, `--space` limiting the walk, bad input, and a store or a
//! node that cannot be reached (exit 2).

mod common;

use std::path::Path;

use common::{Mount, TestCluster, env, pattern, root_conn, s3_keys};
use mysql::prelude::Queryable;
use tshs::object_store::{Brand, S3Host, S3Options, S3Store};

/// A client of the test bucket, to plant and look at objects.
fn store(bucket: &str) -> S3Store {
    S3Store::new(&S3Host {
        id: 0,
        brand: Brand::Generic,
        server: env("TSHS_S3_ENDPOINT"),
        bucket: bucket.into(),
        access_key: s3_keys().0.into(),
        secret_key: s3_keys().1.into(),
        options: S3Options::default(),
        is_current: false,
    })
}

fn keys(bucket: &str) -> Vec<String> {
    let mut k: Vec<String> = store(bucket)
        .list("")
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    k.sort();
    k
}

/// `tshs fsck …`: (exit code, stdout, stderr).
fn fsck(c: &TestCluster, args: &[&str]) -> (i32, String, String) {
    let o = c.tshs(&[&["fsck"], args].concat());
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8(o.stdout).unwrap(),
        String::from_utf8(o.stderr).unwrap(),
    )
}

const KINDS: [&str; 5] = [
    "data-loss",
    "nameless-inode",
    "extent-past-size",
    "dangling-entry",
    "orphan-object",
];

/// The problem lines of fsck's output, sorted.
fn problems(out: &str) -> Vec<String> {
    let mut p: Vec<String> = out
        .lines()
        .filter(|l| KINDS.iter().any(|k| l.starts_with(&format!("{k}: "))))
        .map(String::from)
        .collect();
    p.sort();
    p
}

/// The one problem line that contains every one of `parts`.
fn the_line<'a>(lines: &'a [String], parts: &[&str]) -> &'a str {
    let hits: Vec<&String> = lines
        .iter()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "one line with {parts:?} expected: {lines:#?}"
    );
    hits[0]
}

/// A Storage Node's database: (server, name).
fn node_db(c: &TestCluster, node: u32) -> (u8, String) {
    c.dbs.lock().unwrap()[node as usize].clone()
}

fn node_of(c: &TestCluster, space: u32) -> u32 {
    c.cluster().space(space).unwrap().unwrap().node_id
}

/// Runs SQL on the database of a space's node (`{db}` is its name).
fn sql(c: &TestCluster, space: u32, q: &str) {
    let (n, db) = node_db(c, node_of(c, space));
    root_conn(n).query_drop(q.replace("{db}", &db)).unwrap();
}

fn sql_u64(c: &TestCluster, space: u32, q: &str) -> u64 {
    let (n, db) = node_db(c, node_of(c, space));
    root_conn(n)
        .query_first::<u64, _>(q.replace("{db}", &db))
        .unwrap()
        .unwrap_or_else(|| panic!("no row: {q}"))
}

/// The inode of `name` in a space (names are unique in these tests).
fn ino(c: &TestCluster, space: u32, name: &str) -> u64 {
    sql_u64(
        c,
        space,
        &format!("SELECT ino FROM {{db}}.dentries WHERE space_id = {space} AND name = '{name}'"),
    )
}

fn object_key(c: &TestCluster, space: u32, name: &str) -> String {
    let i = ino(c, space, name);
    let (n, db) = node_db(c, node_of(c, space));
    let k: Vec<u8> = root_conn(n)
        .query_first(format!(
            "SELECT s3_key FROM {db}.inodes WHERE space_id = {space} AND ino = {i}"
        ))
        .unwrap()
        .unwrap();
    String::from_utf8(k).unwrap()
}

fn check_file(path: &Path, want: &[u8]) {
    let got = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        got == want,
        "{}: {} bytes read, {} expected",
        path.display(),
        got.len(),
        want.len()
    );
}

#[test]
fn fsck_finds_each_problem_and_repairs_only_what_it_should() {
    let c = TestCluster::with_nodes();
    let b = c.new_bucket("fsck");
    let mut m = Mount::new(&c, &[]);
    let s3 = m.space(3);
    // Another space, on the other node.
    let other = (4..40)
        .find(|s| {
            m.space(*s);
            node_of(&c, *s) != node_of(&c, 3)
        })
        .unwrap();
    let so = m.space(other);
    std::fs::create_dir(s3.join("docs")).unwrap();
    std::fs::create_dir(s3.join("protolog")).unwrap();
    let files: Vec<(u32, &str, Vec<u8>)> = vec![
        (3, "docs/a.bin", pattern(1, 300_000)),
        (3, "docs/b.bin", pattern(2, 200_000)),
        (3, "c.bin", pattern(3, 150_000)),
        (3, "back.bin", pattern(4, 100_000)),
        (3, "small", pattern(5, 500)),
        (3, "grow.txt", pattern(6, 600)),
        (3, "lost.txt", pattern(7, 300)),
        (3, "gone.txt", pattern(8, 200)),
        (3, "big.db", pattern(9, 1_500_000)),
        (3, "protolog/last.log", pattern(10, 5000)),
        (other, "keep.bin", pattern(11, 200_000)),
        (other, "note.txt", pattern(12, 100)),
    ];
    let path = |space: u32, name: &str, m: &Mount| m.space(space).join(name);
    for (s, name, data) in &files {
        std::fs::write(path(*s, name, &m), data).unwrap();
    }
    let _ = &so;
    c.ok(&[
        "add-s3-host",
        "GENERIC",
        &env("TSHS_S3_ENDPOINT"),
        &b,
        s3_keys().0,
        s3_keys().1,
        "MinSize=1K;MaxSize=1M",
    ]);
    let out = c.ok(&["move-to-s3", "--settle", "0"]);
    assert!(out.contains("move-to-s3: 5 files"), "{out}");
    // back.bin comes back into the database: its object is garbage now,
    // recorded for remove-deleted (not an orphan).
    let back = pattern(13, 90_000);
    std::fs::write(s3.join("back.bin"), &back).unwrap();
    let out = c.ok(&["copy-to-s3"]);
    assert!(out.contains("copy-to-s3: "), "{out}");
    m.unmount();

    // Objects that are not tshs's moved files, or not this cluster's.
    let st = store(&b);
    let u = tshs::object_store::unique();
    let foreign = [
        format!("77777/5/{u}"),
        "3/5/not-a-move-to-s3-key".to_string(),
        format!("other-app/3/5/{u}"),
    ];
    for k in &foreign {
        st.put_bytes_whole(k, b"not ours".to_vec()).unwrap();
    }
    let (n, db) = node_db(&c, node_of(&c, 3));
    let garbage: Vec<u8> = root_conn(n)
        .query_first(format!(
            "SELECT s3_key FROM {db}.s3_uploads WHERE state = 'garbage'"
        ))
        .unwrap()
        .expect("back.bin's old object, recorded for remove-deleted");
    let garbage = String::from_utf8(garbage).unwrap();
    assert!(keys(&b).contains(&garbage));

    // A clean cluster.
    let (code, out, err) = fsck(&c, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("fsck: clean (2 storage nodes, ")
            && out.contains(" 1 bucket, ")
            && out.lines().count() == 1,
        "{out}"
    );
    assert_eq!(err, "");

    // An orphaned object younger than the grace period is not one yet.
    let orphan = format!("3/999/{}", tshs::object_store::unique());
    st.put_bytes_whole(&orphan, pattern(14, 2048)).unwrap();
    let other_orphan = format!("{other}/424242/{}", tshs::object_store::unique());
    st.put_bytes_whole(&other_orphan, b"orphan".to_vec())
        .unwrap();
    let (code, out, _) = fsck(&c, &[]);
    assert_eq!(code, 0, "{out}");

    // Plant the rest.
    let b_key = object_key(&c, 3, "b.bin");
    st.delete(&b_key).unwrap();
    let c_key = object_key(&c, 3, "c.bin");
    st.put_bytes_whole(&c_key, b"ten bytes!".to_vec()).unwrap();
    let grow = ino(&c, 3, "grow.txt");
    sql(
        &c,
        3,
        &format!(
            "UPDATE {{db}}.extents SET data = CONCAT(data, REPEAT('x', 50)), len = len + 50
             WHERE space_id = 3 AND ino = {grow}"
        ),
    );
    let lost = ino(&c, 3, "lost.txt");
    sql(
        &c,
        3,
        "DELETE FROM {db}.dentries WHERE space_id = 3 AND name = 'lost.txt'",
    );
    let gone = ino(&c, 3, "gone.txt");
    sql(
        &c,
        3,
        &format!("DELETE FROM {{db}}.inodes WHERE space_id = 3 AND ino = {gone}"),
    );
    let note = ino(&c, other, "note.txt");
    sql(
        &c,
        other,
        &format!("DELETE FROM {{db}}.dentries WHERE space_id = {other} AND name = 'note.txt'"),
    );
    let before_repair = keys(&b);

    // Bad input: one line, exit 2, nothing touched (checked below: every
    // problem is still there).
    for (args, says) in [
        (vec!["--space", "abc"], "--space 'abc' is not a space ID"),
        (vec!["--space", "0"], "--space '0' is not a space ID"),
        (vec!["--space", "-3"], "--space '-3' is not a space ID"),
        (vec!["--space", "99999"], "there is no space 99999"),
        (vec!["--grace", "soon"], "--grace 'soon'"),
    ] {
        let args = [&["--repair"][..], &args].concat();
        let (code, out, err) = fsck(&c, &args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert_eq!(out, "", "{args:?}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with("tshs: error: fsck: ") && err.contains(says),
            "{args:?}: {err}"
        );
    }
    assert_eq!(keys(&b), before_repair);

    // Every problem reported, nothing changed.
    let (code, out, err) = fsck(&c, &["--grace", "0"]);
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(err, "");
    let found = problems(&out);
    assert_eq!(found.len(), 8, "{out}");
    let l = the_line(&found, &["data-loss: space 3, /docs/b.bin (inode "]);
    assert!(
        l.ends_with(&format!("its object {b_key} on S3 host 1 is missing")),
        "{l}"
    );
    let l = the_line(&found, &["data-loss: space 3, /c.bin (inode "]);
    assert!(
        l.ends_with(&format!(
            "its object {c_key} on S3 host 1 holds 10 bytes, the file 150000"
        )),
        "{l}"
    );
    the_line(
        &found,
        &[&format!(
            "extent-past-size: space 3, /grow.txt (inode {grow}): its extents hold data up to byte 650 of a file of 600 bytes"
        )],
    );
    the_line(
        &found,
        &[&format!(
            "nameless-inode: space 3, inode {lost}: a live regular file of 300 bytes that no directory names"
        )],
    );
    the_line(
        &found,
        &[&format!(
            "nameless-inode: space {other}, inode {note}: a live regular file of 100 bytes"
        )],
    );
    the_line(
        &found,
        &[&format!(
            "dangling-entry: space 3, /gone.txt: names inode {gone}, which does not exist"
        )],
    );
    let l = the_line(
        &found,
        &[&format!("orphan-object: S3 host 1, {orphan}: 2048 bytes")],
    );
    assert!(l.contains("named by no row of any storage node"), "{l}");
    the_line(
        &found,
        &[&format!(
            "orphan-object: S3 host 1, {other_orphan}: 6 bytes"
        )],
    );
    assert!(
        out.contains(
            "Problem          Found\n---------------- -----\ndata-loss        2\nnameless-inode   2\nextent-past-size 1\ndangling-entry   1\norphan-object    2\nfsck: 8 problems ("
        ),
        "{out}"
    );
    assert_eq!(keys(&b), before_repair);

    // --space limits the walk to the space's rows and objects.
    let (code, out, _) = fsck(&c, &["--grace", "0", "--space", &other.to_string()]);
    assert_eq!(code, 1, "{out}");
    let only = problems(&out);
    assert_eq!(only.len(), 2, "{out}");
    assert!(
        only.iter()
            .all(|l| l.contains(&format!("space {other},")) || l.contains(&other_orphan))
    );
    assert!(out.contains("(1 storage node, 1 space, "), "{out}");
    let (code, out, _) = fsck(&c, &["--grace", "0", "--space", "3"]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(problems(&out).len(), 6, "{out}");
    assert!(!out.contains(&other_orphan) && !out.contains(&format!("space {other}")));

    // Repair: everything but the lost data, and nothing else.
    let (code, out, err) = fsck(&c, &["--repair", "--grace", "0"]);
    assert_eq!(code, 1, "{out}{err}");
    let fixed = problems(&out);
    assert_eq!(fixed.len(), 8, "{out}");
    for (what, done) in [
        ("data-loss: space 3, /docs/b.bin", "; cannot be repaired"),
        ("data-loss: space 3, /c.bin", "; cannot be repaired"),
        ("extent-past-size: space 3, /grow.txt", "; cut"),
        (
            &format!("nameless-inode: space 3, inode {lost}:"),
            "; marked deleted",
        ),
        (
            &format!("nameless-inode: space {other}, inode {note}:"),
            "; marked deleted",
        ),
        ("dangling-entry: space 3, /gone.txt", "; removed"),
        (&format!("orphan-object: S3 host 1, {orphan}"), "; deleted"),
        (
            &format!("orphan-object: S3 host 1, {other_orphan}"),
            "; deleted",
        ),
    ] {
        assert!(
            the_line(&fixed, &[what]).ends_with(done),
            "{what}: {fixed:#?}"
        );
    }
    assert!(
        out.contains("data-loss        2     -\n")
            && out.contains("orphan-object    2     2\n")
            && out.contains("fsck: 8 problems, 6 repaired ("),
        "{out}"
    );
    // Only the two orphans left the bucket.
    let mut want: Vec<String> = before_repair
        .iter()
        .filter(|k| **k != orphan && **k != other_orphan)
        .cloned()
        .collect();
    want.sort();
    assert_eq!(keys(&b), want);
    for k in foreign
        .iter()
        .chain([&garbage, &object_key(&c, 3, "a.bin")])
    {
        assert!(want.contains(k), "{k}");
    }
    assert!(want.iter().any(|k| k == "tshs-manifest/3"), "{want:?}");
    assert!(
        want.iter().any(|k| k.starts_with("tshs-backup/3/")),
        "{want:?}"
    );
    // The rows: the extent cut, the name gone, the inodes deleted.
    assert_eq!(
        sql_u64(
            &c,
            3,
            &format!("SELECT len FROM {{db}}.extents WHERE space_id = 3 AND ino = {grow}")
        ),
        600
    );
    assert_eq!(
        sql_u64(
            &c,
            3,
            &format!("SELECT stored FROM {{db}}.inodes WHERE space_id = 3 AND ino = {grow}")
        ),
        600
    );
    assert_eq!(
        sql_u64(
            &c,
            3,
            "SELECT COUNT(*) FROM {db}.dentries WHERE space_id = 3 AND name = 'gone.txt'"
        ),
        0
    );
    for (s, i) in [(3, lost), (other, note)] {
        assert_eq!(
            sql_u64(
                &c,
                s,
                &format!("SELECT state FROM {{db}}.inodes WHERE space_id = {s} AND ino = {i}")
            ),
            2
        );
    }
    // Every other file reads as before, the lost ones fail.
    let m = Mount::new(&c, &[]);
    for (s, name, data) in &files {
        let p = path(*s, name, &m);
        match *name {
            "docs/b.bin" | "c.bin" => assert!(std::fs::read(&p).is_err(), "{name}"),
            "lost.txt" | "gone.txt" | "note.txt" => assert!(!p.exists(), "{name}"),
            "back.bin" => check_file(&p, &back),
            _ => check_file(&p, data),
        }
    }
    drop(m);

    // A second run: only the data loss is left.
    let (code, out, _) = fsck(&c, &["--grace", "0"]);
    assert_eq!(code, 1, "{out}");
    let left = problems(&out);
    assert_eq!(left.len(), 2, "{out}");
    assert!(
        left.iter().all(|l| l.starts_with("data-loss: ")),
        "{left:?}"
    );

    // The store unreachable: exit 2, one line naming the host.
    let admin = c.admin_db.clone();
    let port = common::unused_port();
    root_conn(1)
        .query_drop(format!(
            "UPDATE {admin}.s3_hosts SET server = 'http://127.0.0.1:{port}'"
        ))
        .unwrap();
    let (code, out, err) = fsck(&c, &["--grace", "0"]);
    assert_eq!(code, 2, "{out}{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("tshs: error: fsck: could not check S3 host 1 (")
            && err.contains("cannot reach the store"),
        "{err}"
    );
    assert!(!err.contains(s3_keys().1) && !out.contains(s3_keys().1));

    // A Storage Node unreachable: exit 2, naming it; no object is called
    // an orphan while its rows cannot be read.
    let node = node_of(&c, other);
    let server = common::server(node_db(&c, node).0);
    let real_port = server
        .split(';')
        .find_map(|p| p.strip_prefix("port="))
        .unwrap()
        .to_string();
    root_conn(1)
        .query_drop(format!(
            "UPDATE {admin}.storage_nodes SET conn_options = REPLACE(conn_options, 'port={real_port}', 'port={port}') WHERE id = {node}"
        ))
        .unwrap();
    let (code, out, err) = fsck(&c, &["--grace", "0", "--space", &other.to_string()]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.starts_with(&format!(
            "tshs: error: fsck: could not check storage node {node}: "
        )),
        "{err}"
    );
    assert!(!err.contains("tshs-test-pw"), "{err}");
}

/// A bucket of several listing pages (1,000 keys each): every orphan found
/// and deleted, the moved file's object kept, `--space` listing only its
/// own keys.
#[test]
fn orphans_are_found_across_listing_pages() {
    let c = TestCluster::with_nodes();
    let b = c.new_bucket("fsckpages");
    let mut m = Mount::new(&c, &[]);
    let data = pattern(20, 5000);
    std::fs::write(m.space(3).join("kept.bin"), &data).unwrap();
    m.space(30);
    c.ok(&[
        "add-s3-host",
        "GENERIC",
        &env("TSHS_S3_ENDPOINT"),
        &b,
        s3_keys().0,
        s3_keys().1,
        "MinSize=1K",
    ]);
    let out = c.ok(&["move-to-s3", "--settle", "0"]);
    assert!(out.contains("move-to-s3: 1 files"), "{out}");
    m.unmount();
    let kept = object_key(&c, 3, "kept.bin");
    // 2,100 orphans of space 3 and one of space 30 (whose keys sort among
    // space 3's: `30/…` after `3/…`).
    let orphans: Vec<String> = (0..2100)
        .map(|i| format!("3/{}/{}", 1000 + i, tshs::object_store::unique()))
        .chain([format!("30/7/{}", tshs::object_store::unique())])
        .collect();
    std::thread::scope(|s| {
        for chunk in orphans.chunks(270) {
            let b = &b;
            s.spawn(move || {
                let st = store(b);
                for k in chunk {
                    st.put_bytes_whole(k, b"x".to_vec()).unwrap();
                }
            });
        }
    });
    assert_eq!(keys(&b).len(), 2102);

    let (code, out, err) = fsck(&c, &["--grace", "0", "--space", "3"]);
    assert_eq!(code, 1, "{err}");
    let found = problems(&out);
    assert_eq!(found.len(), 2100, "{err}");
    assert!(
        found
            .iter()
            .all(|l| l.starts_with("orphan-object: S3 host 1, 3/"))
    );
    assert!(!out.contains(&kept) && !out.contains("S3 host 1, 30/"));
    assert!(out.contains(", 1 bucket, 2101 objects checked)"), "{err}");

    let (code, out, err) = fsck(&c, &["--grace", "0", "--repair"]);
    assert_eq!(code, 1, "{err}");
    let fixed = problems(&out);
    assert_eq!(fixed.len(), 2101, "{err}");
    assert!(fixed.iter().all(|l| l.ends_with("; deleted")));
    assert_eq!(keys(&b), vec![kept]);
    let (code, out, err) = fsck(&c, &["--grace", "0"]);
    assert_eq!(code, 0, "{out}{err}");
    let m = Mount::new(&c, &[]);
    check_file(&m.space(3).join("kept.bin"), &data);
}
