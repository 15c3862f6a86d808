//! `ls -l` and rsync without per-entry queries (issue 14, part 4): a
//! directory page is one query carrying what `stat` and the xattr lookups
//! of `ls -l` need, missing names are cached for the entry TTL, and a
//! burst of requests about one file is answered from one read — each
//! without losing what this mount or another one changed.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Mount, TestCluster, sh};
use mysql::prelude::Queryable;

/// The mount's Storage Node round trips and FUSE requests of one kind so far.
fn counters(port: u16, op: &str) -> (f64, f64) {
    let text = common::metrics(port);
    let sum = |prefix: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    (
        sum("tshs_db_seconds_count{"),
        sum(&format!("tshs_fs_ops_total{{op=\"{op}\"}}")),
    )
}

fn getfattr(p: &Path) -> String {
    sh(&format!(
        "getfattr -d -m - --absolute-names '{}'",
        p.display()
    ))
}

/// Waits until `f` holds, at most `limit`; returns how long it took.
fn within(limit: Duration, what: &str, f: impl Fn() -> bool) -> Duration {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    t.elapsed()
}

#[test]
fn ls_l_costs_one_query_per_directory() {
    let c = TestCluster::with_nodes();
    let port = common::unused_port();
    let mut m = Mount::new(&c, &[&format!("metrics={port}")]);
    let s = m.space(3);
    for d in 0..4 {
        std::fs::create_dir(s.join(format!("d{d}"))).unwrap();
        for f in 0..60 {
            std::fs::write(s.join(format!("d{d}/f{f}")), b"x").unwrap();
        }
    }
    // One file with an xattr and one with an access ACL, shown as on disk.
    sh(&format!(
        "setfattr -n user.k -v v '{}'",
        s.join("d0/f1").display()
    ));
    sh(&format!(
        "setfacl -m u:1234:r '{}'",
        s.join("d0/f2").display()
    ));
    let expected = sh(&format!(
        "cd '{}' && ls -lR --time-style=+ | sort",
        s.display()
    ));
    m.unmount();

    let m = Mount::new(&c, &[&format!("metrics={port}")]);
    let s = m.space(3);
    let (q0, _) = counters(port, "getxattr");
    let listed = sh(&format!(
        "cd '{}' && ls -lR --time-style=+ | sort",
        s.display()
    ));
    let (q1, getxattrs) = counters(port, "getxattr");
    assert_eq!(listed, expected);
    assert!(listed.contains("-rw-r--r--+ 1"), "the ACL's '+': {listed}");
    // ls asks for the ACL of each of the 240 files and 4 directories (and
    // their default ACLs), and for an SELinux label once: told the mount
    // carries none, it stops asking.
    assert!(
        (248.0..=252.0).contains(&getxattrs),
        "{getxattrs} getxattr requests"
    );
    // A page and its end per directory, with `..` in the page's query; the
    // xattrs of the two files that have some; the space's own lookup.
    let queries = q1 - q0;
    assert!(queries <= 16.0, "{queries} queries for 245 entries");

    // Without xattrs, getfattr and getfacl say so; with them, they show
    // them; the answers come from the listing.
    assert_eq!(getfattr(&s.join("d1/f0")), "");
    assert!(getfattr(&s.join("d0/f1")).contains("user.k=\"v\""));
    let acl = sh(&format!("getfacl -c '{}'", s.join("d1/f0").display()));
    assert_eq!(acl, "user::rw-\ngroup::r--\nother::r--\n\n");
    let acl = sh(&format!("getfacl -c '{}'", s.join("d0/f2").display()));
    assert!(acl.contains("user:1234:r--"), "{acl}");
}

#[test]
fn an_xattr_set_on_a_file_known_to_have_none_reads_back_at_once() {
    let c = TestCluster::with_nodes();
    let m = c.mount();
    let other = Mount::new(&c, &["ttl=0"]);
    let s = m.space(3);
    std::fs::write(s.join("f"), b"x").unwrap();
    std::fs::create_dir(s.join("d")).unwrap();
    // The listing tells this mount neither has xattrs.
    sh(&format!("ls -l '{}' >/dev/null", s.display()));
    assert_eq!(getfattr(&s.join("f")), "");
    sh(&format!(
        "setfattr -n user.a -v 1 '{}'",
        s.join("f").display()
    ));
    assert!(getfattr(&s.join("f")).contains("user.a=\"1\""));
    sh(&format!(
        "setfacl -m u:1234:rwx '{}'",
        s.join("f").display()
    ));
    let acl = sh(&format!("getfacl -c '{}'", s.join("f").display()));
    assert!(acl.contains("user:1234:rwx"), "{acl}");
    sh(&format!("setfattr -x user.a '{}'", s.join("f").display()));
    assert!(!getfattr(&s.join("f")).contains("user.a"));
    // A default ACL set here is inherited at once by what is created here.
    sh(&format!(
        "setfacl -d -m u:1234:rx '{}'",
        s.join("d").display()
    ));
    std::fs::write(s.join("d/g"), b"x").unwrap();
    let acl = sh(&format!("getfacl -c '{}'", s.join("d/g").display()));
    assert!(acl.contains("user:1234:r-x"), "{acl}");

    // Another mount's xattr on a file this mount knows to have none is
    // seen within the TTL (1 s).
    std::fs::write(s.join("h"), b"x").unwrap();
    sh(&format!("ls -l '{}' >/dev/null", s.display()));
    assert_eq!(getfattr(&s.join("h")), "");
    let h2 = other.path().join("vol01/3/h");
    sh(&format!("setfattr -n user.b -v 2 '{}'", h2.display()));
    within(Duration::from_secs(3), "another mount's xattr", || {
        getfattr(&s.join("h")).contains("user.b=\"2\"")
    });
}

#[test]
fn a_missing_name_is_cached_for_the_entry_ttl_only() {
    let c = TestCluster::with_nodes();
    let port = common::unused_port();
    let m = Mount::new(&c, &[&format!("metrics={port}")]);
    let other = Mount::new(&c, &["ttl=0"]);
    let s = m.space(3);
    let o = other.space(3);

    // Repeated looks at a missing name cost one request within the TTL.
    let (_, l0) = counters(port, "lookup");
    for _ in 0..20 {
        assert!(!s.join("nope").exists());
    }
    let (_, l1) = counters(port, "lookup");
    assert!(l1 - l0 <= 3.0, "{} lookups", l1 - l0);

    // This mount's own creates replace the negative entry at once: a file,
    // a directory, a symlink, a hard link and a rename's target.
    for n in ["f", "d", "l", "h", "r"] {
        assert!(!s.join(n).exists());
    }
    std::fs::write(s.join("f"), b"1").unwrap();
    std::fs::create_dir(s.join("d")).unwrap();
    std::os::unix::fs::symlink("f", s.join("l")).unwrap();
    std::fs::hard_link(s.join("f"), s.join("h")).unwrap();
    std::fs::write(s.join("tmp"), b"2").unwrap();
    std::fs::rename(s.join("tmp"), s.join("r")).unwrap();
    for n in ["f", "d", "l", "h", "r"] {
        assert!(s.join(n).symlink_metadata().is_ok(), "{n}");
    }
    assert_eq!(std::fs::read(s.join("r")).unwrap(), b"2");
    assert!(!s.join("tmp").exists());
    // And its removals are seen at once; the name can be made again.
    std::fs::remove_file(s.join("f")).unwrap();
    assert!(!s.join("f").exists());
    std::fs::write(s.join("f"), b"3").unwrap();
    assert_eq!(std::fs::read(s.join("f")).unwrap(), b"3");

    // Another mount's create is seen within the TTL (1 s).
    assert!(!s.join("new").exists());
    std::fs::write(o.join("new"), b"4").unwrap();
    let took = within(Duration::from_secs(3), "another mount's create", || {
        s.join("new").exists()
    });
    assert!(took <= Duration::from_millis(1500), "{took:?}");
    assert_eq!(std::fs::read(s.join("new")).unwrap(), b"4");
    // O_EXCL asks again: a name another mount took meanwhile is EEXIST.
    assert!(!s.join("race").exists());
    std::fs::write(o.join("race"), b"5").unwrap();
    let r = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(s.join("race"));
    assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::AlreadyExists);
}

#[test]
fn readdir_ends_without_losing_entries_and_dots_have_the_right_numbers() {
    let c = TestCluster::with_nodes();
    let m = c.mount();
    let s = m.space(3);
    std::fs::create_dir_all(s.join("a/b")).unwrap();
    std::fs::create_dir(s.join("empty")).unwrap();
    for i in 0..700 {
        std::fs::write(s.join(format!("a/f{i}")), b"").unwrap();
    }
    let names = |p: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&s.join("a")).len(), 701);
    // Read to the end, then more: a new listing shows it.
    std::fs::write(s.join("a/late"), b"").unwrap();
    assert!(names(&s.join("a")).contains(&"late".to_string()));
    assert!(names(&s.join("empty")).is_empty());

    // `.` and `..` carry the numbers stat gives, in a space's root (whose
    // parent is the volume), a directory, a subdirectory and an empty one.
    for d in [s.clone(), s.join("a"), s.join("a/b"), s.join("empty")] {
        let ls = sh(&format!("ls -ai1 '{}' | head -n 2", d.display()));
        let ino = |name: &str| -> u64 {
            ls.lines()
                .find(|l| l.split_whitespace().nth(1) == Some(name))
                .and_then(|l| l.split_whitespace().next()?.parse().ok())
                .unwrap_or_else(|| panic!("{name} in {ls}"))
        };
        assert_eq!(ino("."), d.metadata().unwrap().ino(), "{}", d.display());
        assert_eq!(
            ino(".."),
            d.join("..").metadata().unwrap().ino(),
            "{}",
            d.display()
        );
    }
    // A directory removed while open lists nothing more (the kernel may
    // refuse with ENOENT before asking).
    let gone = s.join("gone");
    std::fs::create_dir(&gone).unwrap();
    let out = sh(&format!(
        "python3 -c \"import os, errno
fd = os.open('{0}', os.O_RDONLY); os.rmdir('{0}')
try: print(len(os.listdir(fd)))
except OSError as e: print(errno.errorcode[e.errno])\"",
        gone.display()
    ));
    assert!(["0", "ENOENT"].contains(&out.trim()), "{out}");
}

#[test]
fn cached_attributes_follow_this_mounts_changes_and_anothers_within_the_ttl() {
    let c = TestCluster::with_nodes();
    let m = c.mount();
    let other = Mount::new(&c, &["ttl=0"]);
    let s = m.space(3);
    let f = s.join("f");
    std::fs::write(&f, b"abc").unwrap();
    // Each change through this mount shows at the next stat.
    let md = || std::fs::symlink_metadata(&f).unwrap();
    assert_eq!(md().len(), 3);
    sh(&format!("echo more >> '{}'", f.display()));
    assert_eq!(md().len(), 8);
    sh(&format!("truncate -s 2 '{}'", f.display()));
    assert_eq!(md().len(), 2);
    sh(&format!(
        "chmod 640 '{}' && touch -d @1000000000 '{}'",
        f.display(),
        f.display()
    ));
    assert_eq!(md().mode() & 0o7777, 0o640);
    assert_eq!(md().mtime(), 1_000_000_000);
    std::fs::hard_link(&f, s.join("g")).unwrap();
    assert_eq!(md().nlink(), 2);
    std::fs::remove_file(s.join("g")).unwrap();
    assert_eq!(md().nlink(), 1);
    let dir_mtime = std::fs::metadata(&s).unwrap().mtime_nsec();
    std::fs::write(s.join("new"), b"").unwrap();
    assert_ne!(std::fs::metadata(&s).unwrap().mtime_nsec(), dir_mtime);

    // Another mount's chmod and write are seen within the TTL (1 s; its
    // chmod is committed within a second).
    let f2 = other.path().join("vol01/3/f");
    assert_eq!(md().len(), 2);
    sh(&format!(
        "chmod 600 '{}' && echo 12345 >> '{}'",
        f2.display(),
        f2.display()
    ));
    let took = within(Duration::from_secs(4), "another mount's changes", || {
        let a = md();
        a.mode() & 0o7777 == 0o600 && a.len() == 8
    });
    assert!(took <= Duration::from_millis(2500), "{took:?}");
}

/// `l{get,set,remove}xattr` of `name` on `p` (a value for set): errno or 0.
fn xattr_errno(op: &str, p: &Path, name: &str) -> i32 {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let path = CString::new(p.as_os_str().as_bytes()).unwrap();
    let name = CString::new(name).unwrap();
    let label = b"system_u:object_r:user_home_t:s0";
    // SAFETY: NUL-terminated strings and a buffer of the size given.
    let r = unsafe {
        match op {
            "get" => libc::lgetxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) as i32,
            "set" => libc::lsetxattr(
                path.as_ptr(),
                name.as_ptr(),
                label.as_ptr().cast(),
                label.len(),
                0,
            ),
            "remove" => libc::lremovexattr(path.as_ptr(), name.as_ptr()),
            _ => unreachable!(),
        }
    };
    if r < 0 {
        std::io::Error::last_os_error().raw_os_error().unwrap()
    } else {
        0
    }
}

#[test]
fn selinux_labels_are_not_carried_and_ls_asks_for_one_once() {
    let (c, db) = TestCluster::with_one_node();
    let port = common::unused_port();
    let m = Mount::new(&c, &[&format!("metrics={port}")]);
    let s = m.space(3);
    std::fs::create_dir(s.join("d")).unwrap();
    for f in 0..20 {
        std::fs::write(s.join(format!("d/f{f}")), b"x").unwrap();
    }
    let f = s.join("d/f0");
    sh(&format!("setfattr -n user.k -v v '{}'", f.display()));
    // Read, written or removed: not supported, and nothing is stored.
    for op in ["get", "set", "remove", "get"] {
        assert_eq!(
            xattr_errno(op, &f, "security.selinux"),
            libc::EOPNOTSUPP,
            "{op}"
        );
    }
    assert_eq!(xattr_errno("get", &f, "security.capability"), libc::ENODATA);
    let mut conn = common::root_conn(1);
    let stored: Vec<Vec<u8>> = conn
        .query(format!("SELECT name FROM {db}.xattrs ORDER BY name"))
        .unwrap();
    assert_eq!(stored, vec![b"user.k".to_vec()]);
    // A label stored before (an imported tree, say) is not shown either.
    conn.query_drop(format!(
        "INSERT INTO {db}.xattrs (space_id, ino, name, value) \
         SELECT space_id, ino, 'security.selinux', 'x' FROM {db}.xattrs"
    ))
    .unwrap();
    let g = s.join("d/f1");
    sh(&format!("setfattr -n user.k -v w '{}'", g.display()));
    assert_eq!(
        getfattr(&g),
        format!("# file: {}\nuser.k=\"w\"\n\n", g.display())
    );
    std::thread::sleep(Duration::from_millis(1100)); // the xattr cache's TTL
    assert_eq!(
        getfattr(&f),
        format!("# file: {}\nuser.k=\"v\"\n\n", f.display())
    );
    assert_eq!(xattr_errno("get", &f, "security.selinux"), libc::EOPNOTSUPP);
    // `ls -l` asks once for a label, then only for ACLs: the access ACL
    // of the space, `d` and the 20 files, the default ACL of the two
    // directories (and a user xattr shows no `+`).
    let (_, g0) = counters(port, "getxattr");
    let listed = sh(&format!("ls -lR '{}'", s.display()));
    let (_, g1) = counters(port, "getxattr");
    assert_eq!(g1 - g0, 25.0, "getxattr requests of ls -lR");
    assert!(!listed.contains('+'), "{listed}");
}
