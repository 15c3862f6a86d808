//! Regression tests, one per bug found in review, named after the bug.

mod common;

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use common::{Mount, TestCluster, sh};

/// A close (flush holding the file's lock) and an unlink (holding the
/// inode's row) in the same mount used to wait for each other for minutes.
#[test]
fn close_and_unlink_of_one_file_at_once_do_not_deadlock() {
    let c = TestCluster::with_nodes();
    let m = c.mount();
    let s = m.space(30);
    for round in 0..20 {
        let p = s.join(format!("f{round}"));
        let mut h = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&p)
            .unwrap();
        h.write_all(&vec![7u8; 300_000]).unwrap();
        let t = Instant::now();
        let unlinker = std::thread::spawn(move || fs::remove_file(&p).unwrap());
        drop(h);
        unlinker.join().unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "round {round} took {:?}",
            t.elapsed()
        );
    }
}

/// Mount B rewrote a file with the same size and restored its mtime (cp -p,
/// tar): mount A kept serving the old bytes from its cache.
#[test]
fn a_rewrite_that_restores_mtime_is_seen_by_the_other_mount() {
    let c = TestCluster::with_nodes();
    let a = Mount::new(&c, &["ttl=0"]);
    let b = Mount::new(&c, &["ttl=0"]);
    let pa = a.space(31).join("f");
    fs::write(&pa, b"aaaa").unwrap();
    sh(&format!("touch -m -d @1000000000 {}", pa.display()));
    assert_eq!(fs::read(&pa).unwrap(), b"aaaa");
    let pb = b.path().join("vol01/31/f");
    fs::write(&pb, b"bbbb").unwrap();
    sh(&format!("touch -m -d @1000000000 {}", pb.display()));
    // B's chmod/utimes commit within a second (or at fsync); then A reads anew.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(fs::read(&pa).unwrap(), b"bbbb");
}

/// `touch -m -d 2001-01-01 f; echo b >> f` left the 2001 mtime in place.
#[test]
fn a_write_after_a_deferred_utimes_sets_mtime_anew() {
    let c = TestCluster::with_nodes();
    let m = c.mount();
    let p = m.space(32).join("m");
    fs::write(&p, b"a").unwrap();
    sh(&format!("touch -m -d @978307200 {}", p.display()));
    assert_eq!(fs::metadata(&p).unwrap().mtime(), 978_307_200);
    let mut h = OpenOptions::new().append(true).open(&p).unwrap();
    h.write_all(b"b").unwrap();
    drop(h);
    std::thread::sleep(Duration::from_millis(1500));
    drop(m);
    let m2 = c.mount();
    let mtime = fs::metadata(m2.path().join("vol01/32/m")).unwrap().mtime();
    assert!(mtime > 1_700_000_000, "mtime stayed at {mtime}");
}

/// Mount A kept `log` open and had read it; mount B appended; A's next
/// open read zeros where B's bytes are.
#[test]
fn appends_of_another_mount_are_read_after_a_new_open_while_a_handle_stays_open() {
    let c = TestCluster::with_nodes();
    let a = Mount::new(&c, &["ttl=0"]);
    let b = Mount::new(&c, &["ttl=0"]);
    let pa = a.space(33).join("log");
    fs::write(&pa, b"first\n").unwrap();
    let mut keep = OpenOptions::new()
        .read(true)
        .append(true)
        .open(&pa)
        .unwrap();
    let mut seen = String::new();
    keep.read_to_string(&mut seen).unwrap();
    let chunk = vec![b'x'; 300_000];
    let mut hb = OpenOptions::new()
        .append(true)
        .open(b.path().join("vol01/33/log"))
        .unwrap();
    hb.write_all(&chunk).unwrap();
    drop(hb);
    keep.write_all(b"last\n").unwrap();
    let back = fs::read(&pa).unwrap();
    assert_eq!(back.len(), 6 + 300_000 + 5);
    assert!(
        back[6..300_006].iter().all(|b| *b == b'x'),
        "another mount's append read back wrong"
    );
    assert_eq!(&back[300_006..], b"last\n");
}

/// tar writes a file, sets its mtime, then its ACL, then closes it: the
/// deferred utimes committed (by the ACL, or by the committer within a
/// second) before the buffered data, whose flush then stamped "now".
#[test]
fn a_utimes_before_close_survives_the_flush_of_earlier_writes() {
    use std::os::fd::AsRawFd;
    let c = TestCluster::with_nodes();
    let m = c.mount();
    let p = m.space(34).join("t");
    fs::write(&p, b"old").unwrap();
    let mut h = OpenOptions::new().write(true).open(&p).unwrap();
    h.write_all(b"written, not yet flushed").unwrap();
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: 978_307_200,
            tv_nsec: 0,
        },
    ];
    assert_eq!(unsafe { libc::futimens(h.as_raw_fd(), times.as_ptr()) }, 0);
    // The committer runs meanwhile; so does an xattr, which commits first.
    std::thread::sleep(Duration::from_millis(1500));
    sh(&format!("setfattr -n user.k -v v {}", p.display()));
    drop(h);
    assert_eq!(fs::metadata(&p).unwrap().mtime(), 978_307_200);
    std::thread::sleep(Duration::from_millis(1500));
    drop(m);
    let m2 = c.mount();
    let q = m2.path().join("vol01/34/t");
    assert_eq!(fs::metadata(&q).unwrap().mtime(), 978_307_200);
    assert_eq!(fs::read(&q).unwrap(), b"written, not yet flushed");
}
