//! A new file's first commit, the common rename and a file's removal are
//! one request each (issue 14, part 2): rsync's close and rename and rm's
//! unlink no longer send a statement per row. The mount counts which way each went
//! (`tshs_one_requests_total`); what another mount then sees shows the
//! result is the one the statements gave. What the procedures refuse runs
//! as before.

mod common;

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use common::{Mount, TestCluster, sh};

/// A counter of the mount's metrics (`series{labels}`), 0 if not there yet.
fn counter(port: u16, series: &str) -> u64 {
    let line = format!("{series} ");
    common::metrics(port)
        .lines()
        .find_map(|l| l.strip_prefix(&line)?.parse().ok())
        .unwrap_or(0)
}

/// How many commits of kind `op` went `way` (`one` or `statements`).
fn went(port: u16, op: &str, way: &str) -> u64 {
    counter(
        port,
        &format!("tshs_one_requests_total{{op=\"{op}\",way=\"{way}\"}}"),
    )
}

/// (one request, statements) of kind `op` during `f`.
fn ways(port: u16, op: &str, f: impl FnOnce()) -> (u64, u64) {
    let before = (went(port, op, "one"), went(port, op, "statements"));
    f();
    (
        went(port, op, "one") - before.0,
        went(port, op, "statements") - before.1,
    )
}

/// A file's modification time to the nanosecond.
fn mtime(p: &Path) -> (i64, i64) {
    let m = std::fs::metadata(p).unwrap();
    (m.mtime(), m.mtime_nsec())
}

/// One test: a file another thread's child inherits is closed by that
/// child (close-on-exec), and a close commits, so tests that hold new files
/// open must not run beside tests that start processes.
#[test]
fn one_request_commits_and_what_they_leave_to_statements() {
    // `port` is the first mount's metrics; the second mount checks what
    // the first one's changes left in the database.
    let c = TestCluster::with_nodes();
    let port = common::unused_port();
    let m = Mount::new(&c, &[&format!("metrics={port}")]);
    let other = Mount::new(&c, &[]);
    let (s, s2) = (m.space(3), other.space(3));
    new_files_and_renames_go_as_one_request(port, &s, &s2);
    what_the_procedures_refuse_runs_as_before(port, &s, &s2);
    what_a_commit_knows_is_not_asked_again(port, &s, &s2);
    removals_go_as_one_request(&c, port, &s, &s2);
    missing_names_of_known_directories_cost_nothing(port, &s, &s2);
    opens_fetch_only_data_not_cached(port, &s, &s2);
}

fn new_files_and_renames_go_as_one_request(port: u16, s: &Path, s2: &Path) {
    std::fs::create_dir(s.join("d")).unwrap();
    std::fs::create_dir(s.join("e")).unwrap();
    // Two slots' worth: the file's row, its entry and two data rows.
    let data = common::pattern(7, 300_000);
    let tmp = s.join("d/.f.tmp");
    let mut f = std::fs::File::create_new(&tmp).unwrap();
    f.write_all(&data).unwrap();
    assert_eq!(
        ways(port, "create", || drop(f)),
        (1, 0),
        "a new file's close"
    );
    assert_eq!(std::fs::read(s2.join("d/.f.tmp")).unwrap(), data);

    // rsync's way: mode and times (deferred), then the rename carrying
    // them (unless the mount's tick committed them just before).
    let dir_before = mtime(&s2.join("d"));
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o640)).unwrap();
    sh(&format!("touch -m -d @1600000000 '{}'", tmp.display()));
    let rename = || std::fs::rename(&tmp, s.join("d/f")).unwrap();
    assert_eq!(
        ways(port, "rename", rename),
        (1, 0),
        "a rename to a free name"
    );
    std::thread::sleep(Duration::from_millis(1100)); // the other mount's TTL
    let got = std::fs::metadata(s2.join("d/f")).unwrap();
    assert_eq!(std::fs::read(s2.join("d/f")).unwrap(), data);
    assert_eq!(
        (got.mode() & 0o7777, got.mtime(), got.len(), got.nlink()),
        (0o640, 1_600_000_000, 300_000, 1)
    );
    assert!(std::fs::symlink_metadata(s2.join("d/.f.tmp")).is_err());
    assert_ne!(mtime(&s2.join("d")), dir_before);

    // Into another directory: both directories' times move.
    let (d0, e0) = (mtime(&s2.join("d")), mtime(&s2.join("e")));
    let across = || std::fs::rename(s.join("d/f"), s.join("e/g")).unwrap();
    assert_eq!(
        ways(port, "rename", across),
        (1, 0),
        "a rename into another directory"
    );
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(std::fs::read(s2.join("e/g")).unwrap(), data);
    assert!(std::fs::symlink_metadata(s2.join("d/f")).is_err());
    assert_ne!(mtime(&s2.join("d")), d0);
    assert_ne!(mtime(&s2.join("e")), e0);

    // Onto a name that exists: refused by the procedure (nothing done),
    // then the statements replace the name.
    std::fs::write(s.join("e/h"), b"h").unwrap();
    let onto = || std::fs::rename(s.join("e/g"), s.join("e/h")).unwrap();
    assert_eq!(ways(port, "rename", onto), (0, 1), "a rename onto a name");
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(std::fs::read(s2.join("e/h")).unwrap(), data);
    assert!(std::fs::symlink_metadata(s2.join("e/g")).is_err());
}

/// The errno of a call that must fail.
#[track_caller]
fn errno(r: std::io::Result<()>) -> i32 {
    match r {
        Ok(()) => panic!("succeeded"),
        Err(e) => e.raw_os_error().unwrap(),
    }
}

fn what_the_procedures_refuse_runs_as_before(port: u16, s: &Path, s2: &Path) {
    // The directory removed by another mount before the file's commit.
    std::fs::create_dir(s.join("gone")).unwrap();
    let mut f = std::fs::File::create_new(s.join("gone/x")).unwrap();
    f.write_all(b"hello").unwrap();
    std::fs::remove_dir(s2.join("gone")).unwrap();
    let fd = std::os::fd::IntoRawFd::into_raw_fd(f);
    let mut closed = 0;
    // SAFETY: the descriptor was just taken from the file, closed once.
    let close = || closed = unsafe { libc::close(fd) };
    // Refused, then by the statements; the release may try once more.
    let (one, statements) = ways(port, "create", close);
    assert!(
        one == 0 && statements >= 1,
        "{one} one request, {statements} statements"
    );
    assert_eq!(closed, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ENOENT)
    );
    std::thread::sleep(Duration::from_millis(1100));
    assert!(std::fs::symlink_metadata(s.join("gone")).is_err());
    // The name taken by another mount first: theirs stays.
    std::fs::create_dir(s.join("t")).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let mut f = std::fs::File::create_new(s.join("t/y")).unwrap();
    f.write_all(b"mine").unwrap();
    std::fs::write(s2.join("t/y"), b"theirs").unwrap();
    let mut synced = Ok(());
    assert_eq!(ways(port, "create", || synced = f.sync_all()), (0, 1));
    assert_eq!(errno(synced), libc::EEXIST);
    drop(f);
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(std::fs::read(s.join("t/y")).unwrap(), b"theirs");
    // Renames the procedure refuses and the statements do: onto a name
    // that exists, of a directory, and of a name another mount removed
    // (which this mount still knows: the rename reaches it).
    std::fs::write(s.join("t/a"), b"a").unwrap();
    std::fs::write(s.join("t/b"), b"b").unwrap();
    let onto = || std::fs::rename(s.join("t/a"), s.join("t/b")).unwrap();
    assert_eq!(ways(port, "rename", onto), (0, 1), "onto a name");
    std::fs::create_dir(s.join("t/sub")).unwrap();
    let dir = || std::fs::rename(s.join("t/sub"), s.join("sub2")).unwrap();
    assert_eq!(ways(port, "rename", dir), (0, 1), "a directory");
    std::fs::write(s.join("t/c"), b"c").unwrap();
    std::fs::remove_file(s2.join("t/c")).unwrap();
    let mut renamed = Ok(());
    let gone = || renamed = std::fs::rename(s.join("t/c"), s.join("t/z"));
    assert_eq!(ways(port, "rename", gone), (0, 1), "a removed name");
    assert_eq!(errno(renamed), libc::ENOENT);
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(names_in(&s2.join("t")), ["b", "y"]);
    assert_eq!(std::fs::read(s2.join("t/b")).unwrap(), b"a");
    assert!(std::fs::metadata(s2.join("sub2")).unwrap().is_dir());
    assert_eq!(std::fs::metadata(s2.join("t")).unwrap().nlink(), 2);
    assert_eq!(std::fs::metadata(s2.join("sub2")).unwrap().nlink(), 2);
}

/// How many FUSE requests of kind `op` the mount answered so far.
fn went_to(port: u16, op: &str) -> u64 {
    counter(port, &format!("tshs_fs_ops_total{{op=\"{op}\"}}"))
}

/// The names in a directory, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// The mount's Storage Node round trips so far.
fn round_trips(port: u16) -> u64 {
    common::metrics(port)
        .lines()
        .filter(|l| l.starts_with("tshs_db_seconds_count{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Everything `stat` shows that the database keeps.
fn stat(p: &Path) -> [i64; 11] {
    let m = std::fs::symlink_metadata(p).unwrap();
    [
        i64::from(m.mode()),
        i64::from(m.uid()),
        i64::from(m.gid()),
        m.nlink() as i64,
        m.size() as i64,
        m.blocks() as i64,
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
        m.atime(),
    ]
}

/// A new file's commit and a rename know what they left (the file's row,
/// the directories' times): the mount answers the stats that follow
/// without asking, with what another mount reads from the database; and
/// the kernel's lookup that found a name free serves the create after it.
fn what_a_commit_knows_is_not_asked_again(port: u16, s: &Path, s2: &Path) {
    let q = s.join("q");
    std::fs::create_dir(&q).unwrap();
    // Past the kernel's TTL for what mkdir answered: the mount reads it.
    // (Also after the creates the part before saw fail: a create that never
    // landed does not keep the mount from answering from what it kept.)
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::metadata(&q).unwrap();
    let tmp = q.join(".n.tmp");
    std::fs::write(&tmp, common::pattern(3, 5000)).unwrap();
    let asked = round_trips(port);
    let (file, dir) = (stat(&tmp), stat(&q));
    assert_eq!(round_trips(port), asked, "stats after a new file's close");
    assert_eq!(file, stat(&s2.join("q/.n.tmp")), "the new file");
    assert_eq!(dir, stat(&s2.join("q")), "its directory");
    std::fs::rename(&tmp, q.join("n")).unwrap();
    let asked = round_trips(port);
    let renamed = stat(&q);
    assert_eq!(round_trips(port), asked, "a stat after a rename");
    std::thread::sleep(Duration::from_millis(1100)); // the other mount's TTL
    assert_eq!(
        renamed,
        stat(&s2.join("q")),
        "the directory after the rename"
    );
    assert_ne!(dir, renamed);

    // rsync of a tree: per file the create's check of its temporary name,
    // the two commits and the open rsync makes for its fchmod: 4 round
    // trips (12 before the mount kept what its commits know, 6 before it
    // knew the names of a directory it made).
    let src = tempfile::tempdir().unwrap();
    let n = 30;
    for i in 0..n {
        std::fs::write(src.path().join(format!("f{i}")), common::pattern(i, 4096)).unwrap();
    }
    let before = round_trips(port);
    sh(&format!(
        "rsync -a '{}/' '{}/r/'",
        src.path().display(),
        s.display()
    ));
    let trips = round_trips(port) - before;
    assert!(trips <= 4 * n + 10, "{trips} round trips for {n} files");
    std::thread::sleep(Duration::from_millis(2200)); // rsync's directory times commit
    for i in 0..n {
        let name = format!("r/f{i}");
        assert_eq!(
            std::fs::read(s2.join(&name)).unwrap(),
            common::pattern(i, 4096)
        );
        assert_eq!(stat(&s.join(&name)), stat(&s2.join(&name)), "{name}");
    }
    assert_eq!(stat(&s.join("r")), stat(&s2.join("r")));

    // Opening a file for writing changes no attributes (the space server
    // opens its log for every append): what is kept stays.
    let (f0, f1) = (s.join("r/f0"), s.join("r/f1"));
    fresh_stat(&f0);
    let asked = round_trips(port);
    fresh_stat(&f0);
    assert_eq!(round_trips(port), asked, "a fresh stat of a file kept");
    drop(std::fs::OpenOptions::new().append(true).open(&f1).unwrap());
    let asked = round_trips(port);
    assert_eq!(fresh_stat(&f0), stat(&s2.join("r/f0")));
    assert_eq!(
        round_trips(port),
        asked,
        "a fresh stat after an open for writing"
    );

    // rm: the directory after a file's removal (`rm -rf` asks each time).
    std::thread::sleep(Duration::from_millis(1100)); // read afresh below
    fresh_stat(&s.join("r"));
    std::fs::remove_file(s.join("r/f2")).unwrap();
    let asked = round_trips(port);
    let removed = stat(&s.join("r"));
    assert_eq!(round_trips(port), asked, "a stat after a removal");
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        removed,
        stat(&s2.join("r")),
        "the directory after a removal"
    );
    assert!(std::fs::symlink_metadata(s2.join("r/f2")).is_err());
}

/// [`stat`], after a `statx` that asks the filesystem whatever the kernel
/// cached (`AT_STATX_FORCE_SYNC`, as the space server does).
fn fresh_stat(p: &Path) -> [i64; 11] {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut x: libc::statx = unsafe { std::mem::zeroed() };
    let r = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW | libc::AT_STATX_FORCE_SYNC,
            libc::STATX_BASIC_STATS,
            &mut x,
        )
    };
    assert_eq!(r, 0, "statx {}", p.display());
    stat(p)
}

/// An inode's state and link count in its Storage Node (space 3), and
/// whether its time of deletion is set (only when it is deleted).
fn row(c: &TestCluster, ino: u64) -> Option<(u8, u32)> {
    use mysql::prelude::Queryable;
    let node = c.cluster().space(3).unwrap().unwrap().node_id;
    let (n, db) = c.dbs.lock().unwrap()[node as usize].clone();
    let r: Option<(u8, u32, bool)> = common::root_conn(n)
        .query_first(format!(
            "SELECT state, nlink, deleted_at IS NOT NULL FROM {db}.inodes
             WHERE space_id = 3 AND ino = {}",
            ino & 0xffff_ffff
        ))
        .unwrap();
    r.map(|(state, links, deleted_at)| {
        assert_eq!(
            deleted_at,
            state == 2,
            "deleted_at of a row in state {state}"
        );
        (state, links)
    })
}

fn ino(p: &Path) -> u64 {
    std::fs::symlink_metadata(p).unwrap().ino()
}

/// `rm` of a file goes as one request: the name,
/// the file (deleted at its last name, one link less before) and the
/// directory's times. A name another mount removed and the last name of
/// a file open here (it lives on, unlinked, until its close) go by the
/// statements, as before.
fn removals_go_as_one_request(c: &TestCluster, port: u16, s: &Path, s2: &Path) {
    let u = s.join("u");
    std::fs::create_dir(&u).unwrap();
    std::fs::write(u.join("a"), b"a").unwrap();
    std::fs::write(u.join("b"), b"bb").unwrap();
    std::fs::hard_link(u.join("b"), u.join("b2")).unwrap();
    std::fs::create_dir(u.join("sub")).unwrap();
    std::thread::sleep(Duration::from_millis(1100)); // the other mount's TTL
    let dir0 = stat(&s2.join("u"));
    let (ino_a, ino_b) = (ino(&u.join("a")), ino(&u.join("b")));
    assert_eq!((row(c, ino_a), row(c, ino_b)), (Some((0, 1)), Some((0, 2))));

    // One round trip: the kernel knows the name (the stat just before).
    stat(&u.join("a"));
    let asked = round_trips(port);
    let rm = || std::fs::remove_file(u.join("a")).unwrap();
    assert_eq!(ways(port, "unlink", rm), (1, 0), "a file's removal");
    assert_eq!(round_trips(port) - asked, 1, "round trips of a removal");
    // One of two names: the file stays, with one link.
    let rm = || std::fs::remove_file(u.join("b")).unwrap();
    assert_eq!(ways(port, "unlink", rm), (1, 0), "one of two names");
    std::thread::sleep(Duration::from_millis(1100));
    assert!(std::fs::symlink_metadata(s2.join("u/a")).is_err());
    assert!(std::fs::symlink_metadata(s2.join("u/b")).is_err());
    assert_eq!(std::fs::read(s2.join("u/b2")).unwrap(), b"bb");
    assert_eq!(std::fs::metadata(s2.join("u/b2")).unwrap().nlink(), 1);
    assert_eq!(row(c, ino_b), Some((0, 1)));
    assert_eq!(stat(&u.join("b2")), stat(&s2.join("u/b2")), "its ctime");
    let dir1 = stat(&s2.join("u"));
    assert_ne!(dir0, dir1, "the directory's times");
    assert_eq!(dir1, stat(&u), "this mount's view of the directory");
    // The last name: the file is marked deleted, for remove-deleted.
    assert_eq!(row(c, ino_a), Some((2, 0)), "the removed file's row");

    // What the procedure leaves to the statements.
    let mut removed = Ok(());
    let dir = || removed = std::fs::remove_file(u.join("sub"));
    // (The kernel itself refuses a directory it knows.)
    assert_eq!(ways(port, "unlink", dir), (0, 0), "a directory");
    assert_eq!(errno(std::mem::replace(&mut removed, Ok(()))), libc::EISDIR);
    std::fs::write(u.join("c"), b"c").unwrap();
    std::fs::remove_file(s2.join("u/c")).unwrap();
    let gone = || removed = std::fs::remove_file(u.join("c"));
    assert_eq!(
        ways(port, "unlink", gone),
        (0, 1),
        "a name removed elsewhere"
    );
    assert_eq!(errno(removed), libc::ENOENT);
    // A file open here: one of its two names goes as one request, its
    // last one by the statements.
    std::fs::write(u.join("held"), b"held").unwrap();
    std::fs::hard_link(u.join("held"), u.join("held2")).unwrap();
    let held = std::fs::File::open(u.join("held")).unwrap();
    let ino_held = held.metadata().unwrap().ino();
    let rm = || std::fs::remove_file(u.join("held2")).unwrap();
    assert_eq!(
        ways(port, "unlink", rm),
        (1, 0),
        "a name of a file open here"
    );
    assert_eq!(row(c, ino_held), Some((0, 1)));
    let rm = || std::fs::remove_file(u.join("held")).unwrap();
    assert_eq!(ways(port, "unlink", rm), (0, 1), "a file open here");
    let mut back = Vec::new();
    std::io::Read::read_to_end(&mut &held, &mut back).unwrap();
    assert_eq!(back, b"held");
    assert_eq!(row(c, ino_held), Some((1, 0)), "an open file's orphan");
    drop(held);
    // The kernel sends RELEASE after close() returned.
    let t = std::time::Instant::now();
    while row(c, ino_held) != Some((2, 0)) {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{:?}",
            row(c, ino_held)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(names_in(&s2.join("u")), ["b2", "sub"]);
}

/// Whether `p` is missing, asserted to be so.
#[track_caller]
fn missing(p: &Path) {
    let e = std::fs::symlink_metadata(p).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{}", p.display());
}

/// A directory this mount made is known for the entry TTL: a name not in
/// it is missing without a query (rsync asks for each file's name and its
/// temporary name first). Names this mount adds are there at once, names
/// it removes gone at once; another mount's are seen once the TTL has
/// passed, as the kernel's own cache of a missing name promises. Past the
/// TTL, a missing name reads the directory's names again. A directory
/// another mount made is not kept.
fn missing_names_of_known_directories_cost_nothing(port: u16, s: &Path, s2: &Path) {
    let k = s.join("k");
    std::fs::create_dir(&k).unwrap();
    let asked = round_trips(port);
    for i in 0..20 {
        missing(&k.join(format!("m{i}")));
    }
    assert_eq!(round_trips(port), asked, "missing names of a new directory");
    // What this mount makes is there at once, whatever kind: also once the
    // kernel forgot it (its lookup then reaches the mount).
    std::fs::write(k.join("f"), b"f").unwrap();
    std::fs::hard_link(k.join("f"), k.join("l")).unwrap();
    std::os::unix::fs::symlink("f", k.join("s")).unwrap();
    std::fs::create_dir(k.join("d")).unwrap();
    std::fs::write(k.join("t"), b"t").unwrap();
    std::fs::rename(k.join("t"), k.join("r")).unwrap();
    let looked = went_to(port, "lookup");
    std::fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
    for n in ["f", "l", "s", "d", "r"] {
        std::fs::symlink_metadata(k.join(n)).unwrap();
    }
    assert!(
        went_to(port, "lookup") >= looked + 5,
        "the lookups reached the mount"
    );
    assert_eq!(std::fs::read(k.join("r")).unwrap(), b"t");
    // A removal: gone at once.
    std::fs::remove_file(k.join("l")).unwrap();
    missing(&k.join("l"));
    // Another mount's new name: seen once the TTL has passed.
    std::fs::write(s2.join("k/theirs"), b"theirs").unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(std::fs::read(k.join("theirs")).unwrap(), b"theirs");

    // A directory another mount made is not kept, even listed whole: each
    // missing name is asked, and a name another mount makes is seen at once
    // (the space servers of a volume on two hosts share log directories).
    std::fs::create_dir(s2.join("o")).unwrap();
    std::thread::sleep(Duration::from_millis(1100)); // the TTL of `o` missing
    assert_eq!(std::fs::read_dir(s.join("o")).unwrap().count(), 0);
    let asked = round_trips(port);
    for i in 0..5 {
        missing(&s.join(format!("o/x{i}")));
    }
    assert_eq!(round_trips(port), asked + 5, "a directory made elsewhere");
    std::fs::write(s2.join("o/new"), b"new").unwrap();
    assert_eq!(std::fs::read(s.join("o/new")).unwrap(), b"new");

    // A directory made here (by rsync), past the TTL: a missing name reads
    // its names again (one round trip), and those serve the next.
    let listed = s.join("r");
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::metadata(&listed).unwrap();
    let asked = round_trips(port);
    missing(&listed.join("y"));
    assert_eq!(round_trips(port), asked + 1, "a missing name past the TTL");
    missing(&listed.join("z"));
    assert_eq!(round_trips(port), asked + 1, "the next missing name");
    // A name another mount made meanwhile is among them.
    std::fs::write(s2.join("r/theirs"), b"theirs").unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::metadata(&listed).unwrap();
    let asked = round_trips(port);
    missing(&listed.join("w"));
    assert_eq!(round_trips(port), asked + 1, "the names read again");
    assert_eq!(std::fs::read(listed.join("theirs")).unwrap(), b"theirs");
}

/// Waits until the kernel released every file the mount opened (it sends
/// a release after `close` returns): an open then finds none open here.
fn released(port: u16) {
    let failed = |op: &str| -> u64 {
        let prefix = format!("tshs_fs_errors_total{{op=\"{op}\",");
        common::metrics(port)
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let opened =
        || went_to(port, "open") + went_to(port, "create") - failed("open") - failed("create");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while went_to(port, "release") < opened() {
        assert!(std::time::Instant::now() < deadline, "files still open");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// An open of a small file asks for its attributes and, in the same query,
/// its data, but only data the mount does not have.
fn opens_fetch_only_data_not_cached(port: u16, s: &Path, s2: &Path) {
    use std::io::{Seek, Write};
    use std::os::unix::fs::FileExt;
    let fetched = || counter(port, "tshs_db_data_read_bytes_total");
    std::fs::create_dir(s2.join("heads")).unwrap();
    let theirs = s2.join("heads/f");
    let mut want: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&theirs, &want).unwrap();
    let f = s.join("heads/f");
    // The file read whole through a new open (all earlier ones released),
    // checked; the bytes that cost.
    let open_read = |want: &[u8]| {
        released(port);
        let before = fetched();
        assert!(
            std::fs::read(&f).unwrap() == want,
            "read through a new open"
        );
        fetched() - before
    };
    // The same through a handle kept open, once a stat past the attribute
    // TTL told the mount the file's size.
    let held_read = |held: &std::fs::File, want: &[u8]| {
        std::thread::sleep(Duration::from_millis(1100));
        let before = fetched();
        assert_eq!(fresh_stat(&f)[4], want.len() as i64);
        let mut got = vec![0; want.len() + 10];
        let n = held.read_at(&mut got, 0).unwrap();
        assert!(got[..n] == *want, "read through a held handle");
        fetched() - before
    };
    // Landed before it returns (a close may leave appends queued).
    let append = |data: &[u8]| {
        let mut other = std::fs::OpenOptions::new()
            .append(true)
            .open(&theirs)
            .unwrap();
        other.write_all(data).unwrap();
        other.sync_all().unwrap();
    };

    // Made by the other mount: the first open fetches it whole.
    assert_eq!(open_read(&want), want.len() as u64, "first open");

    // Unchanged: each open asks (one round trip) and fetches nothing.
    let trips = round_trips(port);
    for _ in 0..20 {
        assert_eq!(open_read(&want), 0, "open of an unchanged cached file");
    }
    let trips = round_trips(port) - trips;
    assert!(
        (20..=22).contains(&trips),
        "{trips} round trips for 20 opens"
    );

    // Appended to by the other mount: the next open fetches only what
    // was added (twice over).
    for record in [&b"appended elsewhere"[..], b"and again"] {
        append(record);
        want.extend_from_slice(record);
        assert_eq!(
            open_read(&want),
            record.len() as u64,
            "open after an append"
        );
    }

    // Open here: new opens fetch no data (the open file's is kept).
    let held = std::fs::File::open(&f).unwrap();
    let before = fetched();
    for _ in 0..5 {
        assert_eq!(std::fs::read(&f).unwrap(), want);
    }
    assert_eq!(fetched(), before, "opens of a file open here");
    // Appended to by the other mount while open here: a read through the
    // open handle fetches only the new bytes.
    append(b"read through a held handle");
    want.extend_from_slice(b"read through a held handle");
    // Once a stat told the mount the file grew, a read below the end it
    // knew needs no query (the bytes it had stay); one past it fetches
    // only the new bytes.
    std::thread::sleep(Duration::from_millis(1100)); // past the attribute TTL
    assert_eq!(fresh_stat(&f)[4], want.len() as i64);
    let (trips, before) = (round_trips(port), fetched());
    let mut below = vec![0; 4096];
    held.read_exact_at(&mut below, 1000).unwrap();
    assert!(below == want[1000..5096], "a read below the old end");
    assert_eq!(
        (round_trips(port) - trips, fetched() - before),
        (0, 0),
        "a read below the old end"
    );
    assert_eq!(held_read(&held, &want), 26, "a read after an append");
    // Cut and grown again by the other mount (its counter moved): the
    // read fetches the extent whole, none of the bytes kept of it. Two
    // rows: the first ends inside the bytes kept, the second ends past
    // them (read alone, it would leave the first's range stale).
    std::fs::OpenOptions::new()
        .write(true)
        .open(&theirs)
        .unwrap()
        .set_len(50_000)
        .unwrap();
    let mut other = std::fs::OpenOptions::new()
        .append(true)
        .open(&theirs)
        .unwrap();
    other.write_all(&[b'Z'; 50_000]).unwrap();
    other.sync_all().unwrap();
    other.write_all(&[b'Z'; 10_000]).unwrap();
    other.sync_all().unwrap();
    drop(other);
    want.truncate(50_000);
    want.extend_from_slice(&[b'Z'; 60_000]);
    assert_eq!(held_read(&held, &want), want.len() as u64, "after a cut");
    drop(held);

    // Rewritten in place by the other mount (same size): read anew.
    let mut other = std::fs::OpenOptions::new()
        .write(true)
        .open(&theirs)
        .unwrap();
    other.seek(std::io::SeekFrom::Start(10)).unwrap();
    other.write_all(b"REWRITTEN").unwrap();
    drop(other);
    want[10..19].copy_from_slice(b"REWRITTEN");
    assert_eq!(open_read(&want), want.len() as u64, "open after a rewrite");
}
