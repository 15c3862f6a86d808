//! The log hot path: appends of many threads and two mounts gathered into
//! group commits, each landing once and whole; the pieces appends leave in
//! the database, read, cut, punched and sought through as one file, and
//! joined once a slot fills up or the file goes idle.

mod common;

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::time::{Duration, Instant};

use common::{Mount, TestCluster, pattern, root_conn};
use mysql::prelude::Queryable;

/// Slot size of the Storage Node (`shard::EXTENT_SIZE`).
const E: u64 = 256 * 1024;

/// (offset, length) of a file's rows, in order.
fn rows(db: &str, ino: u64) -> Vec<(u64, u64)> {
    root_conn(1)
        .exec(
            format!(
                "SELECT off, len FROM {db}.extents WHERE space_id = ? AND ino = ? ORDER BY off"
            ),
            ((ino >> 32) as u32, ino & 0xffff_ffff),
        )
        .unwrap()
}

/// The test hook's gate (`TSHS_TEST_APPEND_HOLD`): while it is held, every
/// group commit of a mount made with it waits. Held when made.
struct Gate(tempfile::NamedTempFile);

impl Gate {
    fn new() -> Gate {
        Gate(tempfile::NamedTempFile::new().unwrap())
    }

    fn mount(&self, c: &TestCluster, opts: &[&str]) -> Mount {
        let path = self.0.path().to_str().unwrap();
        Mount::with_env(c, opts, &[("TSHS_TEST_APPEND_HOLD", path)])
    }

    fn hold(&self) {
        std::fs::write(self.0.path(), b"").unwrap();
    }

    /// Batches that land are taken as ones whose answer was lost.
    fn lose_answers(&self) {
        std::fs::write(self.0.path(), b"lose").unwrap();
    }

    /// A truncate of an open file that lands is taken as one whose answer
    /// was lost.
    fn lose_rewrites(&self) {
        std::fs::write(self.0.path(), b"lose rewrite").unwrap();
    }

    /// Holds batches after their commit, before the mount records it.
    fn hold_landed(&self) {
        std::fs::write(self.0.path(), b"landed").unwrap();
    }

    fn release(&self) {
        std::fs::remove_file(self.0.path()).unwrap();
    }
}

/// Two mounts of `c` with `opts`, the first made with a gate, left open.
fn gated_pair(c: &TestCluster, opts: &[&str]) -> (Gate, Mount, Mount) {
    let gate = Gate::new();
    let m1 = gate.mount(c, opts);
    let m2 = Mount::new(c, opts);
    gate.release();
    (gate, m1, m2)
}

/// A log, a gate, two mounts and a descriptor: what the gated tests share.
type GatedLog = (Gate, Mount, Mount, std::path::PathBuf, std::fs::File);

/// Two mounts of `c` (`ttl=0`), the first made with a gate; through it,
/// `last.log` of space 3 with "first\n" landed, the gate open.
fn landed_log(c: &TestCluster) -> GatedLog {
    let (gate, m1, m2) = gated_pair(c, &["ttl=0"]);
    let log = m1.space(3).join("last.log");
    let mut f = OpenOptions::new()
        .append(true)
        .create(true)
        .open(&log)
        .unwrap();
    f.write_all(b"first\n").unwrap();
    (gate, m1, m2, log, f)
}

/// [`landed_log`], then "held\n" queued, the gate held.
fn held_log(c: &TestCluster) -> GatedLog {
    let (gate, m1, m2, log, mut f) = landed_log(c);
    gate.hold();
    f.write_all(b"held\n").unwrap();
    (gate, m1, m2, log, f)
}

/// A stat on the appending mount while one of its appends is committed
/// but not yet recorded there, and another mount appended after it, gives
/// the database's end; a read after that append is recorded still returns
/// every byte up to it (it must not stop at the end of the mount's own
/// appends). `readers_of_a_growing_log_see_only_its_bytes` met this as a
/// rare short read.
#[test]
fn a_stat_while_an_append_is_recorded_reads_up_to_its_size() {
    let (c, _db) = TestCluster::with_one_node();
    let (gate, _m1, m2, log, mut f) = landed_log(&c);
    let other = m2.space(3).join("last.log");
    let mut want = String::from("first\n");
    // A reader opened before (its open did not see the database's end:
    // the read path must answer up to what the stat told), then one
    // opened in the window (its open took the end the stat gives).
    let early = std::fs::File::open(&log).unwrap();
    for round in ["early", "late"] {
        gate.hold_landed();
        let ours = format!("ours {round}\n");
        f.write_all(ours.as_bytes()).unwrap();
        want += &ours;
        let t = Instant::now();
        while std::fs::metadata(&other).unwrap().len() != want.len() as u64 {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "ours never committed"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let theirs = format!("theirs {round}\n");
        let mut h = OpenOptions::new().append(true).open(&other).unwrap();
        h.write_all(theirs.as_bytes()).unwrap();
        h.sync_all().unwrap();
        want += &theirs;
        let mut reader = match round {
            "early" => early.try_clone().unwrap(),
            _ => std::fs::File::open(&log).unwrap(),
        };
        let size = reader.metadata().unwrap().len();
        assert_eq!(size, want.len() as u64, "{round}: the size a stat gave");
        gate.release();
        f.sync_all().unwrap();
        let mut b = Vec::new();
        (&mut reader).take(size).read_to_end(&mut b).unwrap();
        assert_eq!(String::from_utf8_lossy(&b), want, "{round}: read");
    }
}

/// An append whose answer was lost landed, where the mount does not know:
/// a write after it, into the slot past the end the mount knew, keeps the
/// appended bytes around it, and the file keeps its whole length.
#[test]
fn a_write_after_an_append_whose_answer_was_lost_keeps_its_bytes() {
    let (c, _db) = TestCluster::with_one_node();
    let (gate, m1, m2) = gated_pair(&c, &[]);
    let path = m1.space(3).join("data");
    let mut want = pattern(4, 262_000);
    std::fs::write(&path, &want).unwrap();
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    // Opened before the loss, so no open learns the end meanwhile.
    let w = OpenOptions::new().write(true).open(&path).unwrap();
    let r = std::fs::File::open(&path).unwrap();
    f.write_all(b"x").unwrap();
    gate.lose_answers();
    let record = pattern(5, 300);
    f.write_all(&record).unwrap();
    f.sync_all().unwrap();
    gate.release();
    want.push(b'x');
    want.extend_from_slice(&record);
    // A read past the end the mount knew reads the landed bytes.
    let mut tail = vec![0; 301];
    let n = r.read_at(&mut tail, 262_000).unwrap();
    assert!(
        tail[..n] == want[262_000..],
        "a read past the end the mount knew: {n} bytes of 301"
    );
    // Past the end the mount knew (262,001), in the next slot (262,144).
    w.write_all_at(b"0123456789", 262_250).unwrap();
    want[262_250..262_260].copy_from_slice(b"0123456789");
    drop(w);
    drop(f);
    for (what, p) in [
        ("here", path.clone()),
        ("elsewhere", m2.space(3).join("data")),
    ] {
        let got = std::fs::read(&p).unwrap();
        let first_bad = got.iter().zip(&want).position(|(a, b)| a != b);
        assert!(
            got.len() == want.len() && first_bad.is_none(),
            "{what}: {} bytes (want {}), first difference at {first_bad:?}",
            got.len(),
            want.len()
        );
    }
}

/// A truncate whose answer was lost landed: the mount takes the
/// database's end again, so neither a read, nor the next write, nor an
/// append and then a write give the cut bytes back (as zeros), here or
/// elsewhere.
#[test]
fn a_truncate_whose_answer_was_lost_is_not_undone() {
    let (c, _db) = TestCluster::with_one_node();
    let (gate, m1, m2) = gated_pair(&c, &[]);
    let path = m1.space(3).join("data");
    let old = pattern(6, 300_000);
    std::fs::write(&path, &old).unwrap();
    for round in ["write", "read", "append"] {
        std::fs::write(&path, &old).unwrap();
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        // Opened before the cut: its appends go to the mount's own end.
        let mut a = OpenOptions::new().append(true).open(&path).unwrap();
        let mut b = vec![0; 10];
        f.read_exact_at(&mut b, 0).unwrap();
        gate.lose_rewrites();
        let err = f.set_len(1_000).unwrap_err();
        gate.release();
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{round}: {err}");
        let mut want = old[..1_000].to_vec();
        if round == "read" {
            // Below the end the mount knew, past the database's.
            let mut b = vec![0; 4_096];
            let n = f.read_at(&mut b, 200_000).unwrap();
            assert_eq!(n, 0, "{round}: a read past the cut");
        } else {
            if round == "append" {
                // Lands at the database's end; then a write in place.
                a.write_all(b"appended").unwrap();
                a.sync_all().unwrap();
                want.extend_from_slice(b"appended");
            }
            f.write_all_at(b"0123456789", 0).unwrap();
            f.sync_all().unwrap();
            want[..10].copy_from_slice(b"0123456789");
        }
        drop((f, a));
        for (what, p) in [
            ("here", path.clone()),
            ("elsewhere", m2.space(3).join("data")),
        ] {
            let got = std::fs::read(&p).unwrap();
            assert!(
                got == want,
                "{round}, {what}: {} bytes (want {})",
                got.len(),
                want.len()
            );
        }
    }
}

fn ino(path: &std::path::Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).unwrap())
}

#[test]
fn concurrent_appends_from_two_mounts_land_once_and_whole() {
    let (c, _db) = TestCluster::with_one_node();
    let m1 = c.mount();
    let m2 = Mount::new(&c, &[]);
    let logs: Vec<_> = (0..4).map(|i| format!("log{i}")).collect();
    for l in &logs {
        std::fs::write(m1.space(3).join(l), b"").unwrap();
    }
    // 16 threads on each mount, 4 per log; records of 1 B to 40 KiB, some
    // crossing slot ends.
    let threads: Vec<_> = (0..32u64)
        .map(|t| {
            let dir = if t % 2 == 0 { m1.space(3) } else { m2.space(3) };
            let path = dir.join(&logs[(t % 4) as usize]);
            std::thread::spawn(move || {
                let mut f = OpenOptions::new().append(true).open(&path).unwrap();
                let mut sent = Vec::new();
                for seq in 0..60u64 {
                    let len = [1, 100, 700, 4096, 40_000][((t + seq) % 5) as usize];
                    let mut rec = format!("<{t}:{seq}:").into_bytes();
                    rec.extend(std::iter::repeat_n(b'a' + (seq % 26) as u8, len));
                    rec.push(b'>');
                    assert_eq!(f.write(&rec).unwrap(), rec.len(), "one write(2), whole");
                    f.sync_all().unwrap();
                    sent.push(rec);
                }
                sent
            })
        })
        .collect();
    let sent: Vec<Vec<Vec<u8>>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for (i, l) in logs.iter().enumerate() {
        // Read through the other mount: what one mount committed, the other sees.
        let data = std::fs::read(m2.space(3).join(l)).unwrap();
        let mut want: Vec<&Vec<u8>> = (0..32)
            .filter(|t| t % 4 == i)
            .flat_map(|t| sent[t].iter())
            .collect();
        let total: usize = want.iter().map(|r| r.len()).sum();
        assert_eq!(data.len(), total, "{l}: every record once, nothing else");
        // Split the log into records and match them one to one.
        let mut got: Vec<&[u8]> = Vec::new();
        let mut at = 0;
        while at < data.len() {
            assert_eq!(data[at], b'<', "{l}: a record starts at {at}");
            let end = at + data[at..].iter().position(|&b| b == b'>').unwrap() + 1;
            got.push(&data[at..end]);
            at = end;
        }
        got.sort();
        want.sort();
        assert!(
            got.iter().zip(&want).all(|(g, w)| g == &w.as_slice()) && got.len() == want.len(),
            "{l}: the records are the ones written, each whole"
        );
    }
}

/// A log read to its end, then grown: through this mount, through another
/// (learned from a stat), and while no one here has it open. Every read
/// after that is the log's bytes: never zeros where the kernel's page cache
/// would hold its old last page zero-filled past the old end (why files
/// that changed lately are read past it, see `fuse::fopen_flags`).
#[test]
fn a_page_read_at_a_logs_end_never_reads_as_zeros_once_it_grows() {
    let (c, _db) = TestCluster::with_one_node();
    // ttl=0: each stat asks, so the other mount's growth is learned at once.
    let m1 = Mount::new(&c, &["ttl=0"]);
    let m2 = Mount::new(&c, &[]);
    let (p1, p2) = (m1.space(3).join("grow.log"), m2.space(3).join("grow.log"));
    let want = pattern(41, 11_000);
    std::fs::write(&p1, &want[..5000]).unwrap();
    let append = |path: &std::path::Path, bytes: &[u8]| {
        let mut f = OpenOptions::new().append(true).open(path).unwrap();
        assert_eq!(f.write(bytes).unwrap(), bytes.len());
        f.sync_all().unwrap();
    };
    let check = |f: &std::fs::File, at: usize, len: usize, end: usize, when: &str| {
        let mut buf = vec![0xEEu8; len];
        let n = f.read_at(&mut buf, at as u64).unwrap();
        assert_eq!(n, end.min(at + len) - at, "{when}: bytes read at {at}");
        assert!(
            buf[..n] == want[at..at + n],
            "{when}: the log's bytes at {at}"
        );
    };
    let r = std::fs::File::open(&p1).unwrap();
    check(&r, 0, 8192, 5000, "first read, short at the end");
    append(&p1, &want[5000..8000]);
    check(&r, 4096, 8192, 8000, "after an append here");
    append(&p2, &want[8000..10_000]);
    assert_eq!(
        r.metadata().unwrap().len(),
        10_000,
        "the other mount's append"
    );
    check(
        &r,
        4096,
        8192,
        10_000,
        "after an append through another mount",
    );
    drop(r);
    append(&p2, &want[10_000..]);
    let r = std::fs::File::open(&p1).unwrap();
    check(&r, 0, 16_384, 11_000, "opened again after it grew");
    let mut all = Vec::new();
    (&r).read_to_end(&mut all).unwrap();
    assert!(all == want, "the whole log, read through");
}

/// A log read whole, then cut by another mount (the smaller size learned
/// here) and written back longer: a handle open since reads, past the cut,
/// the bytes written there or the old ones (close-to-open), never zeros,
/// and a new open reads the new ones. Then a file read to its end is
/// written again from its start (`echo > file`), which must be answered.
#[test]
fn pages_cut_by_a_smaller_size_never_read_as_zeros_and_a_rewrite_goes_through() {
    let (c, _db) = TestCluster::with_one_node();
    let m1 = Mount::new(&c, &["ttl=0"]);
    let m2 = Mount::new(&c, &[]);
    let (p1, p2) = (m1.space(3).join("cut.log"), m2.space(3).join("cut.log"));
    let old = pattern(43, 10_000);
    let new = pattern(44, 9000);
    std::fs::write(&p1, &old).unwrap();
    let r = std::fs::File::open(&p1).unwrap();
    let mut buf = vec![0u8; 16_384];
    assert_eq!(r.read_at(&mut buf, 0).unwrap(), 10_000);
    assert!(buf[..10_000] == old[..], "read whole, cached");
    // Another mount cuts it to 5,000 and writes it back up to 9,000.
    let w = OpenOptions::new().write(true).open(&p2).unwrap();
    w.set_len(5000).unwrap();
    drop(w);
    assert_eq!(r.metadata().unwrap().len(), 5000, "the cut, learned here");
    let w = OpenOptions::new().write(true).open(&p2).unwrap();
    w.write_all_at(&new[5000..], 5000).unwrap();
    w.sync_all().unwrap();
    drop(w);
    assert_eq!(
        r.metadata().unwrap().len(),
        9000,
        "the growth, learned here"
    );
    let n = r.read_at(&mut buf, 4096).unwrap();
    assert!(n >= 9000 - 4096, "{n} bytes read at 4096");
    // Open since before the cut, the handle may read the old bytes, up to
    // the old end (close-to-open), and the new ones: never zeros that are
    // neither.
    assert!(buf[..904] == old[4096..5000], "below the cut");
    for (i, &b) in buf[904..n].iter().enumerate() {
        let at = 5000 + i;
        let was = |v: &[u8]| v.get(at) == Some(&b);
        assert!(
            was(&old) || was(&new),
            "byte {at}: {b}, neither old nor new"
        );
    }
    drop(r);
    let mut want = old[..5000].to_vec();
    want.extend_from_slice(&new[5000..]);
    assert!(
        std::fs::read(&p1).unwrap() == want,
        "opened again: the new bytes"
    );

    // A small file read to its end, then written longer from the start.
    let small = m1.space(3).join("small.txt");
    std::fs::write(&small, b"short").unwrap();
    assert_eq!(std::fs::read(&small).unwrap(), b"short");
    let (tx, rx) = std::sync::mpsc::channel();
    let path = small.clone();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::write(&path, vec![b'x'; 200]).map_err(|e| e.to_string()));
    });
    let wrote = rx.recv_timeout(Duration::from_secs(30));
    assert_eq!(wrote, Ok(Ok(())), "the write is answered");
    assert_eq!(std::fs::read(&small).unwrap(), vec![b'x'; 200]);
}

#[test]
fn pieces_read_cut_punch_and_seek_like_one_file_then_join() {
    let (c, db) = TestCluster::with_one_node();
    let m = c.mount();
    let path = m.space(3).join("last.log");
    let mut model: Vec<u8> = Vec::new();
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    // 300 appends of 1,000 B: slot 0 fills up in pieces, slot 1 starts.
    for i in 0..300u64 {
        let rec = pattern(i, 1000);
        f.write_all(&rec).unwrap();
        f.sync_all().unwrap();
        model.extend_from_slice(&rec);
    }
    let i = ino(&path);
    let before = rows(&db, i);
    assert!(
        before.len() > 2,
        "appends left pieces: {} rows",
        before.len()
    );
    assert!(
        before.iter().all(|(o, l)| o / E == (o + l - 1) / E),
        "no row crosses a slot's end: {before:?}"
    );
    // Read back through a fresh mount (no cache): the pieces as one file.
    let m2 = Mount::new(&c, &[]);
    let p2 = m2.space(3).join("last.log");
    assert_eq!(std::fs::read(&p2).unwrap(), model);
    let g = std::fs::File::open(&p2).unwrap();
    let mut buf = vec![0u8; 5000];
    g.read_exact_at(&mut buf, E - 2500).unwrap();
    assert_eq!(buf, model[(E - 2500) as usize..(E + 2500) as usize]);
    drop(g);

    // The slot that filled up is joined at once; the last one once idle.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = rows(&db, i);
        if r == vec![(0, E), (E, 300_000 - E)] {
            break;
        }
        assert!(Instant::now() < deadline, "pieces not joined: {r:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(std::fs::read(&p2).unwrap(), model, "joining kept the bytes");

    // More pieces, then cut inside one, punch across several, seek.
    for i in 0..20u64 {
        let rec = pattern(1000 + i, 333);
        f.write_all(&rec).unwrap();
        f.sync_all().unwrap();
        model.extend_from_slice(&rec);
    }
    drop(f);
    let cut = model.len() as u64 - 1234;
    let w = OpenOptions::new().write(true).open(&path).unwrap();
    w.set_len(cut).unwrap();
    model.truncate(cut as usize);
    let (from, len) = (E + 10_000, 20_000u64);
    let r = unsafe {
        libc::fallocate(
            w.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            from as i64,
            len as i64,
        )
    };
    assert_eq!(r, 0, "punch hole: {}", std::io::Error::last_os_error());
    model[from as usize..(from + len) as usize].fill(0);
    // A hole between pieces: grow the file, then append after the hole.
    let grown = cut + 100_000;
    w.set_len(grown).unwrap();
    model.resize(grown as usize, 0);
    drop(w);
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    let rec = pattern(3000, 1000);
    f.write_all(&rec).unwrap();
    f.sync_all().unwrap();
    model.extend_from_slice(&rec);
    drop(f);
    let m3 = Mount::new(&c, &[]);
    let p3 = m3.space(3).join("last.log");
    assert_eq!(
        std::fs::read(&p3).unwrap(),
        model,
        "after cut, punch and hole"
    );
    let g = std::fs::File::open(&p3).unwrap();
    let seek = |off: u64, whence: i32| unsafe { libc::lseek(g.as_raw_fd(), off as i64, whence) };
    // Punched bytes inside a row stay data (zeros); the gap is a hole.
    assert_eq!(seek(E + 5, libc::SEEK_HOLE), cut as i64);
    assert_eq!(seek(cut, libc::SEEK_DATA), grown as i64);
    assert_eq!(seek(grown, libc::SEEK_HOLE), model.len() as i64);
    assert_eq!(seek(5, libc::SEEK_DATA), 5);

    // A small file appended to in pieces is read whole at its first open.
    let small = m.space(3).join("small.log");
    let mut s = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&small)
        .unwrap();
    for i in 0..10u64 {
        s.write_all(&pattern(2000 + i, 77)).unwrap();
        s.sync_all().unwrap();
    }
    drop(s);
    let want: Vec<u8> = (0..10u64).flat_map(|i| pattern(2000 + i, 77)).collect();
    let m4 = Mount::new(&c, &[]);
    assert_eq!(std::fs::read(m4.space(3).join("small.log")).unwrap(), want);
}

#[test]
fn an_append_past_the_largest_size_fails_alone() {
    let (c, _db) = TestCluster::with_one_node();
    let m = c.mount();
    let big = m.space(3).join("big.log");
    let small = m.space(3).join("small.log");
    std::fs::write(&small, b"").unwrap();
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&big)
        .unwrap();
    f.set_len((1 << 44) - 1).unwrap();
    drop(f);
    // Appends to both files from several threads at once: the ones past
    // the largest size fail with EFBIG, the others land.
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (big, small) = (big.clone(), small.clone());
            std::thread::spawn(move || {
                let mut b = OpenOptions::new().append(true).open(&big).unwrap();
                let mut s = OpenOptions::new().append(true).open(&small).unwrap();
                for _ in 0..20 {
                    let e = b.write(b"xy").unwrap_err();
                    assert_eq!(e.raw_os_error(), Some(libc::EFBIG));
                    s.write_all(&[b'a' + t as u8; 10]).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(std::fs::metadata(&big).unwrap().len(), (1 << 44) - 1);
    let data = std::fs::read(&small).unwrap();
    assert_eq!(data.len(), 8 * 20 * 10);
    for t in 0..8u8 {
        assert_eq!(data.iter().filter(|&&b| b == b'a' + t).count(), 200);
    }
    // The last byte that fits still lands.
    let mut b = OpenOptions::new().append(true).open(&big).unwrap();
    assert_eq!(b.write(b"z").unwrap(), 1);
    assert_eq!(std::fs::metadata(&big).unwrap().len(), 1 << 44);
}

/// A group commit's one request (`extents::append_in_one_trip`: one call
/// of `tshs_append_files`) on its own: each file's appends land at its
/// end in arrival order, cut where slots end, and the answer says where and
/// with which change counter; a file the call cannot take (gone) refuses
/// the whole request, leaving nothing.
#[test]
fn one_request_lands_each_file_at_its_end() {
    use tshs::shard::extents::{AppendReq, OneTrip, append_in_one_trip};
    let (c, db) = TestCluster::with_one_node();
    let m = c.mount();
    let a = m.space(3).join("a.log");
    let b = m.space(3).join("b.log");
    std::fs::write(&a, vec![b'a'; (E - 3) as usize]).unwrap();
    std::fs::write(&b, b"bb").unwrap();
    let (ia, ib) = (ino(&a) & 0xffff_ffff, ino(&b) & 0xffff_ffff);
    drop(m);
    let opts =
        tshs::config::ConnOptions::parse(&format!("{};database={db}", common::server(1))).unwrap();
    let pool = mysql::Pool::new(opts.to_mysql()).unwrap();
    let mut conn = pool.get_conn().unwrap();
    let chg = |conn: &mut mysql::PooledConn, i: u64| -> u64 {
        conn.exec_first(
            "SELECT chg FROM inodes WHERE space_id = 3 AND ino = ?",
            (i,),
        )
        .unwrap()
        .unwrap()
    };
    let (ca, cb) = (chg(&mut conn, ia), chg(&mut conn, ib));
    let lost = |e: mysql::Error| e.to_string();
    let req = |ino, data| AppendReq {
        space: 3,
        ino,
        data,
    };
    let reqs = [req(ia, &b"0123"[..]), req(ib, b"WXYZ"), req(ia, b"456789")];
    let op = tshs::db::OpId::next();
    match append_in_one_trip(&mut conn, &lost, &op, &reqs, 1, 1 << 40) {
        OneTrip::Landed(l) => assert_eq!(l, vec![(E - 3, ca), (2, cb), (E + 1, ca)]),
        OneTrip::Refused => panic!("refused"),
        OneTrip::Unknown(why) => panic!("unknown: {why}"),
    }
    // Appends keep the change counter.
    assert_eq!((chg(&mut conn, ia), chg(&mut conn, ib)), (ca, cb));
    let ra = rows(&db, (3 << 32) | ia);
    // A file's appends of one request are one run: the piece that
    // crossed the slot's end was cut there.
    assert_eq!(&ra[ra.len() - 2..], &[(E - 3, 3), (E, 7)]);

    let reqs = [req(ia, &b"!"[..]), req(999_999, b"?")];
    let op = tshs::db::OpId::next();
    assert!(matches!(
        append_in_one_trip(&mut conn, &lost, &op, &reqs, 1, 1 << 40),
        OneTrip::Refused
    ));
    drop(conn);
    let m2 = Mount::new(&c, &[]);
    let mut want = vec![b'a'; (E - 3) as usize];
    want.extend_from_slice(b"0123456789");
    let got = std::fs::read(m2.space(3).join("a.log")).unwrap();
    let first_diff = got.iter().zip(&want).position(|(x, y)| x != y);
    assert!(
        got == want,
        "{} bytes, first difference at {first_diff:?}",
        got.len()
    );
    assert_eq!(std::fs::read(m2.space(3).join("b.log")).unwrap(), b"bbWXYZ");
}

/// An append returns once queued behind its write: this mount sees it at
/// once (stat, read through another descriptor), other mounts once an
/// fsync or close returned, which wait for its commit; on a descriptor
/// opened `O_SYNC` the write itself waits; a close waits a second at
/// most. A test hook holds every batch until a gate file goes.
#[test]
fn appends_queued_behind_their_writes_are_durable_at_fsync() {
    let (c, _db) = TestCluster::with_one_node();
    let gate = Gate::new();
    let m1 = gate.mount(&c, &["ttl=0"]);
    let m2 = Mount::new(&c, &["ttl=0"]);
    let log = m1.space(3).join("last.log");
    let other = m2.space(3).join("last.log");
    std::fs::write(&log, b"").unwrap();

    let mut f = OpenOptions::new().append(true).open(&log).unwrap();
    // The first append through an open file waits for its commit; the
    // ones after it are queued.
    gate.release();
    f.write_all(b"first\n").unwrap();
    gate.hold();
    f.write_all(b"second\n").unwrap();
    // Seen here at once, by size and by content; not yet elsewhere.
    assert_eq!(std::fs::metadata(&log).unwrap().len(), 13);
    let reader = std::thread::spawn({
        let log = log.clone();
        move || std::fs::read(&log).unwrap()
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(std::fs::read(&other).unwrap(), b"first\n");
    // The fsync waits for the commit (and so does the read of its bytes).
    let fsync = std::thread::spawn(move || {
        f.sync_all().unwrap();
        f
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(!fsync.is_finished(), "fsync returned before the commit");
    assert!(!reader.is_finished(), "a read of the bytes did not wait");
    gate.release();
    let mut f = fsync.join().unwrap();
    assert_eq!(reader.join().unwrap(), b"first\nsecond\n");
    assert_eq!(std::fs::read(&other).unwrap(), b"first\nsecond\n");

    // O_SYNC: the write returns after its commit.
    gate.hold();
    let sync = std::thread::spawn({
        let log = log.clone();
        move || {
            let mut s = OpenOptions::new()
                .append(true)
                .custom_flags(libc::O_SYNC)
                .open(&log)
                .unwrap();
            s.write_all(b"third\n").unwrap();
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !sync.is_finished(),
        "an O_SYNC append returned before its commit"
    );
    gate.release();
    sync.join().unwrap();
    assert_eq!(std::fs::read(&other).unwrap(), b"first\nsecond\nthird\n");

    // Close waits too: what is appended and closed is seen elsewhere.
    for i in 0..100 {
        f.write_all(format!("{i}\n").as_bytes()).unwrap();
    }
    drop(f);
    let want: String = std::iter::once("first\nsecond\nthird\n".to_string())
        .chain((0..100).map(|i| format!("{i}\n")))
        .collect();
    assert_eq!(std::fs::read_to_string(&other).unwrap(), want);

    // A close held longer (a fence, an outage) returns after a second;
    // the append lands once the commit can go.
    let mut f = OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(b"pre\n").unwrap();
    // Not necessarily the first append through the open file: the last
    // handle's RELEASE comes in the background, and may come after this
    // open, so "pre" may be queued. The fsync lands it either way.
    f.sync_all().unwrap();
    let want = want + "pre\n";
    gate.hold();
    f.write_all(b"held\n").unwrap();
    let t = std::time::Instant::now();
    let close = std::thread::spawn(move || drop(f));
    std::thread::sleep(Duration::from_millis(300));
    assert!(!close.is_finished(), "the close did not wait");
    close.join().unwrap();
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "the close waited {waited:?}"
    );
    assert_eq!(std::fs::read_to_string(&other).unwrap(), want);
    gate.release();
    let want = want + "held\n";
    let t = std::time::Instant::now();
    while std::fs::read_to_string(&other).unwrap() != want {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the held append did not land"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An append queued behind its write that fails (here: another mount made
/// the file as large as a file may be, which this mount did not know)
/// fails the fsync after it, not the write, and the fsync of every other
/// handle open then, once each; the file is as before, and the next
/// append lands.
#[test]
fn a_queued_append_that_fails_fails_the_fsync_of_each_handle() {
    let (c, _db) = TestCluster::with_one_node();
    let m1 = Mount::new(&c, &["ttl=0"]);
    let m2 = Mount::new(&c, &["ttl=0"]);
    let log = m1.space(3).join("big.log");
    std::fs::write(&log, b"").unwrap();
    let mut f = OpenOptions::new().append(true).open(&log).unwrap();
    // Open before the failure: it reports it too, once (as Linux reports
    // a writeback error to each open file description).
    let g = OpenOptions::new().append(true).open(&log).unwrap();
    // The first append through an open file waits for its commit.
    f.write_all(b"a").unwrap();
    OpenOptions::new()
        .write(true)
        .open(m2.space(3).join("big.log"))
        .unwrap()
        .set_len((1 << 44) - 1)
        .unwrap();
    assert_eq!(f.write(b"xy").unwrap(), 2, "the write is only queued");
    let e = f.sync_all().unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EFBIG), "{e}");
    f.sync_all().unwrap();
    let e = g.sync_all().unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EFBIG), "{e}");
    g.sync_all().unwrap();
    // Opened after it: nothing to report.
    let h = OpenOptions::new().append(true).open(&log).unwrap();
    h.sync_all().unwrap();
    drop((g, h));
    assert_eq!(std::fs::metadata(&log).unwrap().len(), (1 << 44) - 1);
    assert_eq!(f.write(b"z").unwrap(), 1);
    drop(f);
    assert_eq!(
        std::fs::metadata(m2.space(3).join("big.log"))
            .unwrap()
            .len(),
        1 << 44
    );
}

/// A truncating open after appends queued behind their writes empties the
/// file: the appends land first, then the truncate.
#[test]
fn a_truncating_open_lands_queued_appends_first() {
    let (c, _db) = TestCluster::with_one_node();
    let m = c.mount();
    let log = m.space(3).join("last.log");
    std::fs::write(&log, b"").unwrap();
    let mut f = OpenOptions::new().append(true).open(&log).unwrap();
    for _ in 0..50 {
        f.write_all(b"x").unwrap();
        drop(
            OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&log)
                .unwrap(),
        );
        assert_eq!(
            std::fs::read(&log).unwrap(),
            b"",
            "appended bytes outlived a truncate"
        );
    }
    f.sync_all().unwrap();
    assert_eq!(std::fs::read(&log).unwrap(), b"");
}

/// Appends queued behind their writes are bounded: 1 MiB per file, 32 MiB
/// per mount; past that a write waits for its commit (here held by the
/// test hook), and nothing of it shows. Once the commits go, every byte
/// lands once, in order.
#[test]
fn queued_appends_are_bounded_per_file_and_per_mount() {
    const CHUNK: usize = 64 << 10;
    let (c, _db) = TestCluster::with_one_node();
    let gate = Gate::new();
    let m1 = gate.mount(&c, &["ttl=0"]);
    let m2 = Mount::new(&c, &["ttl=0"]);
    gate.release();
    // 33 logs, each with a first append landed (that one waits for its
    // commit), then the gate: every later append is held.
    let logs: Vec<_> = (0..33)
        .map(|i| m1.space(3).join(format!("{i}.log")))
        .collect();
    let mut files: Vec<_> = logs
        .iter()
        .map(|p| {
            let mut f = OpenOptions::new()
                .append(true)
                .create(true)
                .open(p)
                .unwrap();
            f.write_all(b"<").unwrap();
            f
        })
        .collect();
    gate.hold();
    let chunk = |log: usize, n: usize| pattern((log * 100 + n) as u64, CHUNK);

    // One file: 16 chunks (1 MiB) are queued, the 17th waits.
    let mut first = files.remove(0);
    let writer = std::thread::spawn(move || {
        for n in 0..17 {
            first.write_all(&chunk(0, n)).unwrap();
        }
        first
    });
    let size = |p: &std::path::Path| std::fs::metadata(p).unwrap().len();
    let t = Instant::now();
    while size(&logs[0]) < 1 + (1 << 20) {
        assert!(t.elapsed() < Duration::from_secs(10), "1 MiB not queued");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(!writer.is_finished(), "more than 1 MiB queued for one file");
    assert_eq!(size(&logs[0]), 1 + (1 << 20));

    // 31 more files with 1 MiB each: 32 MiB queued in the mount, so an
    // append to the last file waits too.
    for (i, f) in files.iter_mut().enumerate().take(31) {
        for n in 0..16 {
            f.write_all(&chunk(i + 1, n)).unwrap();
        }
    }
    let mut last = files.pop().unwrap();
    let blocked = std::thread::spawn(move || {
        last.write_all(b">").unwrap();
        last
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(!blocked.is_finished(), "more than 32 MiB queued in a mount");
    assert_eq!(size(&logs[32]), 1);

    gate.release();
    drop((writer.join().unwrap(), blocked.join().unwrap(), files));
    for (i, p) in logs.iter().enumerate() {
        let got = std::fs::read(m2.space(3).join(p.file_name().unwrap())).unwrap();
        let want: Vec<u8> = match i {
            0 => (0..17).flat_map(|n| chunk(0, n)).collect(),
            32 => b">".to_vec(),
            _ => (0..16).flat_map(|n| chunk(i, n)).collect(),
        };
        let want = [b"<".as_slice(), &want].concat();
        assert!(
            got == want,
            "log {i}: {} bytes, {} wanted",
            got.len(),
            want.len()
        );
    }
}

/// An unmount lands the appends a close left queued (a close waits a
/// second at most): the daemon stays until they land.
#[test]
fn an_unmount_lands_appends_a_close_left_queued() {
    let (c, _db) = TestCluster::with_one_node();
    let (gate, m1, m2, _log, mut f) = landed_log(&c);
    gate.hold();
    for i in 0..3 {
        f.write_all(format!("{i}\n").as_bytes()).unwrap();
    }
    drop(f);
    let pid = m1.pid();
    let unmount = std::thread::spawn(move || {
        let mut m1 = m1;
        m1.unmount();
    });
    // Longer than the background RELEASE's own wait (a second).
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists() && !unmount.is_finished(),
        "the daemon left with appends queued"
    );
    gate.release();
    unmount.join().unwrap();
    assert_eq!(
        std::fs::read(m2.space(3).join("last.log")).unwrap(),
        b"first\n0\n1\n2\n"
    );
}

/// Appends a close left queued (its wait ran out) are still this mount's:
/// a stat here counts them and a new open's read waits for them, while
/// other mounts see them once they landed.
#[test]
fn an_open_after_a_close_that_left_appends_queued_sees_them() {
    let (c, _db) = TestCluster::with_one_node();
    let (gate, m1, m2, log, f) = held_log(&c);
    let other = m2.space(3).join("last.log");
    drop(f); // returns after a second, the append still queued
    // The kernel's RELEASE, which follows in the background, waits a
    // second too: after it the mount has the file open no more.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(std::fs::metadata(&log).unwrap().len(), 11);
    let reader = std::thread::spawn({
        let log = log.clone();
        move || std::fs::read(&log).unwrap()
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !reader.is_finished(),
        "a read of the queued bytes did not wait"
    );
    assert_eq!(std::fs::read(&other).unwrap(), b"first\n");
    // A change of its times waits for the appends queued before it (whose
    // commit sets mtime); a namespace change of the space does not.
    let touch = std::thread::spawn({
        let log = log.clone();
        move || common::sh(&format!("touch -m -d @1000000000 '{}'", log.display()))
    });
    let t = Instant::now();
    let dir = m1.space(3);
    std::fs::write(dir.join("a"), b"a").unwrap();
    std::fs::rename(dir.join("a"), dir.join("b")).unwrap();
    let renamed = t.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let touched = touch.is_finished();
    gate.release();
    touch.join().unwrap();
    assert!(
        !touched,
        "a touch did not wait for the appends queued before it"
    );
    assert!(
        renamed < Duration::from_secs(2),
        "a rename waited {renamed:?}"
    );
    assert_eq!(reader.join().unwrap(), b"first\nheld\n");
    assert_eq!(std::fs::read(&other).unwrap(), b"first\nheld\n");
    let t = Instant::now();
    loop {
        let m = std::fs::metadata(&other).unwrap();
        if std::os::unix::fs::MetadataExt::mtime(&m) == 1_000_000_000 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "the touch was lost");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A close waits only for the appends its own process wrote, and reports
/// only their failure: a child that inherited a log's descriptor and
/// closes it (at its exit) neither waits for its parent's appends held by
/// a commit nor takes their failure, which the parent's fsync reports; the
/// parent's close waits (a second at most).
#[test]
fn a_child_closing_an_inherited_descriptor_leaves_the_parents_appends_alone() {
    let (c, _db) = TestCluster::with_one_node();
    let (gate, _m1, m2, log, f) = held_log(&c);
    // The descriptor inherited as the child's fd 3 (dup2 in the child, so
    // the parent's copy keeps O_CLOEXEC and other tests' children do not
    // inherit it), closed at its exit.
    let child = |f: &std::fs::File| {
        use std::os::unix::process::CommandExt;
        let fd = f.as_raw_fd();
        let mut cmd = std::process::Command::new("true");
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
        let t = Instant::now();
        assert!(cmd.status().unwrap().success());
        t.elapsed()
    };
    // A close that waited would take a second each time; the quickest of
    // three children (a loaded machine may take half a second to start
    // one) shows it did not.
    let waited = (0..3).map(|_| child(&f)).min().unwrap();
    assert!(
        waited < Duration::from_millis(700),
        "the child's close waited {waited:?}"
    );
    let t = Instant::now();
    drop(f);
    let parent = t.elapsed();
    assert!(
        parent >= Duration::from_millis(900),
        "the parent's close waited only {parent:?}"
    );
    gate.release();
    let t = Instant::now();
    while std::fs::read(m2.space(3).join("last.log")).unwrap() != b"first\nheld\n" {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the append did not land"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // A queued append that fails (another mount made the file as large as
    // a file may be): a child's close does not take its failure.
    let mut f = OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(b"a").unwrap();
    OpenOptions::new()
        .write(true)
        .open(m2.space(3).join("last.log"))
        .unwrap()
        .set_len((1 << 44) - 1)
        .unwrap();
    f.write_all(b"xy").unwrap();
    // Its failure is known here once this thread's offset is asked for.
    let mut buf = [0u8; 64];
    let name = c"user.tshs.append_offset";
    unsafe { libc::fgetxattr(f.as_raw_fd(), name.as_ptr(), buf.as_mut_ptr().cast(), 64) };
    child(&f);
    let e = f.sync_all().unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EFBIG), "{e}");
}
