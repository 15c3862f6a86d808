//! POSIX behaviour of a real mount over the real Storage Nodes: contents byte
//! for byte, errno values, link counts, stable inode numbers, xattrs, and
//! what survives a remount.

mod common;

use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::{TestCluster, sh};

fn errno_of<T>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn renameat2(a: &Path, b: &Path, flags: u32) -> i32 {
    let (a, b) = (cpath(a), cpath(b));
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    if r == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap()
    }
}

#[test]
fn files_directories_links_and_errnos() {
    let c = TestCluster::with_nodes();
    let m = c.mount();
    let s = m.space(3);

    // Contents at any offset, holes read as zeros.
    let f = s.join("data");
    let mut h = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&f)
        .unwrap();
    h.write_all(b"hello").unwrap();
    h.seek(SeekFrom::Start(1_000_000)).unwrap();
    h.write_all(b"tail").unwrap();
    h.seek(SeekFrom::Start(2)).unwrap();
    h.write_all(b"LL").unwrap();
    drop(h);
    let data = fs::read(&f).unwrap();
    assert_eq!(data.len(), 1_000_004);
    assert_eq!(&data[..5], b"heLLo");
    assert!(data[5..1_000_000].iter().all(|b| *b == 0));
    assert_eq!(&data[1_000_000..], b"tail");
    let md = fs::metadata(&f).unwrap();
    assert!(
        md.blocks() * 512 < 600_000,
        "sparse file counts its holes: {} blocks",
        md.blocks()
    );

    // Truncate smaller and larger.
    let h = OpenOptions::new().write(true).open(&f).unwrap();
    h.set_len(3).unwrap();
    h.set_len(10).unwrap();
    drop(h);
    assert_eq!(fs::read(&f).unwrap(), b"heL\0\0\0\0\0\0\0");

    // Modes, owners, times.
    fs::set_permissions(&f, fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(fs::metadata(&f).unwrap().mode() & 0o7777, 0o640);
    std::os::unix::fs::chown(&f, Some(1234), Some(5678)).unwrap();
    let md = fs::metadata(&f).unwrap();
    assert_eq!((md.uid(), md.gid()), (1234, 5678));
    sh(&format!(
        "touch -m -d '2001-02-03 04:05:06.123456789 UTC' {}",
        f.display()
    ));
    let md = fs::metadata(&f).unwrap();
    assert_eq!((md.mtime(), md.mtime_nsec()), (981173106, 123456789));

    // Directories and errnos.
    fs::create_dir(s.join("d")).unwrap();
    assert_eq!(errno_of(fs::create_dir(s.join("d"))), libc::EEXIST);
    fs::write(s.join("d/x"), b"x").unwrap();
    assert_eq!(errno_of(fs::remove_dir(s.join("d"))), libc::ENOTEMPTY);
    assert_eq!(errno_of(fs::remove_file(s.join("d"))), libc::EISDIR);
    assert_eq!(errno_of(fs::remove_dir(s.join("data"))), libc::ENOTDIR);
    assert_eq!(errno_of(fs::read(s.join("nope"))), libc::ENOENT);
    let long = "n".repeat(256);
    assert_eq!(errno_of(fs::write(s.join(&long), b"")), libc::ENAMETOOLONG);
    fs::write(s.join("n".repeat(255)), b"ok").unwrap();
    assert_eq!(fs::metadata(s.join("d")).unwrap().nlink(), 2);
    fs::create_dir(s.join("d/sub")).unwrap();
    assert_eq!(fs::metadata(s.join("d")).unwrap().nlink(), 3);

    // Hard links share the inode; symlinks read back.
    let ino = fs::metadata(&f).unwrap().ino();
    assert_eq!(ino >> 32, 3, "inode numbers carry the space id");
    fs::hard_link(&f, s.join("d/link")).unwrap();
    assert_eq!(fs::metadata(s.join("d/link")).unwrap().ino(), ino);
    assert_eq!(fs::metadata(&f).unwrap().nlink(), 2);
    std::os::unix::fs::symlink("../data", s.join("d/sym")).unwrap();
    assert_eq!(
        fs::read_link(s.join("d/sym")).unwrap(),
        Path::new("../data")
    );
    assert_eq!(fs::read(s.join("d/sym")).unwrap(), fs::read(&f).unwrap());
    assert_eq!(
        errno_of(fs::hard_link(s.join("d"), s.join("dl"))),
        libc::EPERM
    );

    // FIFOs.
    let fifo = cpath(&s.join("fifo"));
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    assert!(
        fs::symlink_metadata(s.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );

    // Renames: replace, NOREPLACE, EXCHANGE, directory over empty directory, EXDEV.
    fs::write(s.join("a"), b"A").unwrap();
    fs::write(s.join("b"), b"B").unwrap();
    assert_eq!(
        renameat2(&s.join("a"), &s.join("b"), libc::RENAME_NOREPLACE),
        libc::EEXIST
    );
    assert_eq!(
        renameat2(&s.join("a"), &s.join("b"), libc::RENAME_EXCHANGE),
        0
    );
    assert_eq!(fs::read(s.join("a")).unwrap(), b"B");
    assert_eq!(fs::read(s.join("b")).unwrap(), b"A");
    let a_ino = fs::metadata(s.join("a")).unwrap().ino();
    fs::rename(s.join("a"), s.join("b")).unwrap();
    assert_eq!(fs::read(s.join("b")).unwrap(), b"B");
    assert_eq!(fs::metadata(s.join("b")).unwrap().ino(), a_ino);
    assert_eq!(errno_of(fs::metadata(s.join("a"))), libc::ENOENT);
    fs::create_dir(s.join("e1")).unwrap();
    fs::create_dir(s.join("e2")).unwrap();
    fs::rename(s.join("e1"), s.join("e2")).unwrap();
    assert_eq!(
        errno_of(fs::rename(s.join("e2"), s.join("d"))),
        libc::ENOTEMPTY
    );
    assert_eq!(
        errno_of(fs::rename(s.join("d"), s.join("d/sub/in"))),
        libc::EINVAL
    );
    assert_eq!(errno_of(fs::rename(s.join("b"), s.join("d"))), libc::EISDIR);
    let other = m.space(4);
    assert_eq!(
        errno_of(fs::rename(s.join("b"), other.join("b"))),
        libc::EXDEV
    );

    // Xattrs.
    sh(&format!("setfattr -n user.color -v blue {}", f.display()));
    assert_eq!(
        sh(&format!(
            "getfattr --only-values -n user.color {}",
            f.display()
        )),
        "blue"
    );
    assert!(sh(&format!("getfattr -d {}", f.display())).contains("user.color=\"blue\""));
    sh(&format!("setfattr -x user.color {}", f.display()));
    let o = std::process::Command::new("getfattr")
        .args(["-n", "user.color"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("No such attribute"));

    // statfs answers.
    let st = nix::sys::statvfs::statvfs(&s).unwrap();
    assert_eq!(st.name_max(), 255);

    // Everything above survives a remount.
    let listing = sh(&format!(
        "cd {} && ls -lanR --time-style=+%s.%N .",
        s.display()
    ));
    drop(m);
    let m2 = c.mount();
    let s2 = m2.space(3);
    let again = sh(&format!(
        "cd {} && ls -lanR --time-style=+%s.%N .",
        s2.display()
    ));
    assert_eq!(listing, again);
    assert_eq!(fs::metadata(s2.join("data")).unwrap().ino(), ino);
}

#[test]
fn the_tree_above_spaces_is_administered() {
    let c = TestCluster::with_nodes();
    let m = c.mount();
    let vol = m.path().join("vol01");
    assert_eq!(
        errno_of(fs::create_dir(vol.join("notanumber"))),
        libc::EINVAL
    );
    assert_eq!(errno_of(fs::create_dir(vol.join("0"))), libc::EINVAL);
    assert_eq!(errno_of(fs::write(vol.join("file"), b"")), libc::EPERM);
    assert_eq!(
        errno_of(fs::create_dir(m.path().join("newvol"))),
        libc::EPERM
    );
    fs::create_dir(vol.join("17")).unwrap();
    assert_eq!(errno_of(fs::create_dir(vol.join("17"))), libc::EEXIST);
    fs::write(vol.join("17/x"), b"x").unwrap();
    assert_eq!(errno_of(fs::remove_dir(vol.join("17"))), libc::ENOTEMPTY);
    fs::remove_file(vol.join("17/x")).unwrap();
    fs::remove_dir(vol.join("17")).unwrap();
    assert_eq!(errno_of(fs::metadata(vol.join("17"))), libc::ENOENT);
    // A removed space's number stays taken until it is purged.
    assert_eq!(errno_of(fs::create_dir(vol.join("17"))), libc::EEXIST);
    let names: Vec<String> = fs::read_dir(m.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["vol01"]);
}

#[test]
fn unlinked_open_files_stay_usable_until_closed() {
    let c = TestCluster::with_nodes();
    let m = c.mount();
    let s = m.space(5);
    let p = s.join("tmp");
    let mut h = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    h.write_all(b"before").unwrap();
    fs::remove_file(&p).unwrap();
    assert_eq!(errno_of(fs::metadata(&p)), libc::ENOENT);
    h.write_all(b" after").unwrap();
    h.sync_all().unwrap();
    h.seek(SeekFrom::Start(0)).unwrap();
    let mut back = String::new();
    h.read_to_string(&mut back).unwrap();
    assert_eq!(back, "before after");
    assert_eq!(h.metadata().unwrap().nlink(), 0);
    drop(h);
    // After the last close the inode is deleted (rows wait for the reaper).
    let shard = c
        .cluster()
        .shard(c.cluster().space(5).unwrap().unwrap().node_id)
        .unwrap();
    use mysql::prelude::Queryable;
    // The kernel sends RELEASE after close(2) has returned: wait for it.
    let t = std::time::Instant::now();
    loop {
        let states: Vec<u8> = shard
            .db()
            .conn()
            .unwrap()
            .query("SELECT state FROM inodes WHERE space_id = 5 AND ino > 1")
            .unwrap();
        if states == [2] || t.elapsed() > std::time::Duration::from_secs(60) {
            assert_eq!(states, [2]);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn directories_with_many_entries_list_completely_while_changing() {
    let c = TestCluster::with_nodes();
    let m = c.mount();
    let d = m.space(6).join("big");
    fs::create_dir(&d).unwrap();
    let n: usize = 3000;
    for i in 0..n {
        fs::write(d.join(format!("f{i:05}")), b"").unwrap();
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut it = fs::read_dir(&d).unwrap();
    // Remove entries while iterating: every entry not removed is seen exactly once.
    let mut removed = 0;
    for i in 0..n {
        if i % 7 == 0 {
            fs::remove_file(d.join(format!("f{:05}", n - 1 - i))).unwrap();
            removed += 1;
        }
        match it.next() {
            Some(e) => assert!(seen.insert(e.unwrap().file_name()), "duplicate entry"),
            None => break,
        }
    }
    for e in it {
        assert!(seen.insert(e.unwrap().file_name()), "duplicate entry");
    }
    let now: std::collections::BTreeSet<_> = fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        now.is_subset(&seen),
        "an entry that was never removed went missing"
    );
    assert_eq!(now.len(), n - removed);
}

#[test]
fn rsync_and_tar_round_trip_exactly() {
    let c = TestCluster::with_nodes();
    let m = c.mount();
    let src = tempfile::tempdir().unwrap();
    let s = src.path();
    sh(&format!(
        "cd {} && mkdir -p a/b 'odd name' && printf 'hello' > a/f && ln a/f a/b/hard && ln -s ../f a/b/sym \
         && head -c 300000 /dev/urandom > big && truncate -s 5000000 sparse && printf x >> sparse \
         && printf 'ü' > 'odd name/ümlaut €' && setfattr -n user.k -v v a/f && chmod 0751 a && touch -d 2000-01-01 big \
         && mkfifo a/fifo",
        s.display()
    ));
    let dst = m.space(8);
    sh(&format!(
        "rsync -aHAX --sparse {}/ {}/",
        s.display(),
        dst.display()
    ));
    let diff = sh(&format!(
        "rsync -aHAX --checksum --dry-run --itemize-changes {}/ {}/",
        s.display(),
        dst.display()
    ));
    assert_eq!(diff, "", "rsync sees differences after copying in");
    let back = tempfile::tempdir().unwrap();
    sh(&format!(
        "rsync -aHAX {}/ {}/",
        dst.display(),
        back.path().display()
    ));
    let diff = sh(&format!(
        "rsync -aHAX --checksum --dry-run --itemize-changes {}/ {}/",
        s.display(),
        back.path().display()
    ));
    assert_eq!(diff, "");
    // tar out of the mount and into it again.
    let tarball = back.path().join("t.tar");
    sh(&format!(
        "cd {} && tar --xattrs -cf {} .",
        dst.display(),
        tarball.display()
    ));
    let dst2 = m.space(9);
    sh(&format!(
        "cd {} && tar --xattrs -xpf {}",
        dst2.display(),
        tarball.display()
    ));
    let diff = sh(&format!(
        "rsync -aHX --checksum --dry-run --itemize-changes {}/ {}/",
        s.display(),
        dst2.display()
    ));
    assert_eq!(diff, "");
}

#[test]
fn appends_from_two_mounts_never_overwrite_or_interleave() {
    let c = TestCluster::with_nodes();
    let m1 = c.mount();
    let m2 = c.mount();
    let log1 = m1.space(10).join("last.log");
    fs::write(&log1, b"").unwrap();
    let log2 = m2.path().join("vol01/10/last.log");
    let writers: Vec<_> = [
        (log1.clone(), b'a'),
        (log2.clone(), b'b'),
        (log1.clone(), b'c'),
        (log2.clone(), b'd'),
    ]
    .into_iter()
    .map(|(p, tag)| {
        std::thread::spawn(move || {
            let mut h = OpenOptions::new().append(true).open(&p).unwrap();
            for i in 0..200 {
                let rec = format!(
                    "{}{:04}{}\n",
                    tag as char,
                    i,
                    (tag as char).to_string().repeat(40)
                );
                h.write_all(rec.as_bytes()).unwrap();
            }
        })
    })
    .collect();
    for w in writers {
        w.join().unwrap();
    }
    // Close-to-open: a new open on either mount sees every record.
    for p in [&log1, &log2] {
        let text = fs::read_to_string(p).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 800);
        for l in &lines {
            let tag = &l[..1];
            assert_eq!(l.len(), 45, "interleaved record: {l:?}");
            assert_eq!(&l[5..], tag.repeat(40), "interleaved record: {l:?}");
        }
        for tag in ["a", "b", "c", "d"] {
            let mut nums: Vec<&str> = lines
                .iter()
                .filter(|l| l.starts_with(tag))
                .map(|l| &l[1..5])
                .collect();
            assert_eq!(nums.len(), 200);
            nums.dedup();
            assert_eq!(nums.len(), 200);
        }
    }
}

#[test]
fn close_to_open_between_mounts_and_log_rotation() {
    let c = TestCluster::with_nodes();
    // Names are cached for the entry TTL (1 s by default); with ttl=0 a
    // rename on one mount is seen by the next open on the other at once.
    let m1 = common::Mount::new(&c, &["ttl=0"]);
    let m2 = common::Mount::new(&c, &["ttl=0"]);
    let d1 = m1.space(11).join("protolog");
    fs::create_dir(&d1).unwrap();
    let d2 = m2.path().join("vol01/11/protolog");
    let mut expect = Vec::new();
    for n in 0..20 {
        #[allow(clippy::suspicious_open_options)]
        // O_CREAT|O_APPEND without O_TRUNC, as a log writer does
        let mut h = OpenOptions::new()
            .create(true)
            .append(true)
            .open(d1.join("last.log"))
            .unwrap();
        let rec = format!("record {n}\n").repeat(100);
        h.write_all(rec.as_bytes()).unwrap();
        drop(h);
        expect.push(rec);
        // The other mount sees the closed file at its next open, and rotates it.
        assert_eq!(
            fs::read_to_string(d2.join("last.log")).unwrap(),
            expect.last().unwrap().as_str()
        );
        fs::rename(d2.join("last.log"), d2.join(format!("{n}.log"))).unwrap();
    }
    for (n, rec) in expect.iter().enumerate() {
        assert_eq!(
            &fs::read_to_string(d1.join(format!("{n}.log"))).unwrap(),
            rec
        );
    }
    // O_TRUNC through the other mount is seen too.
    let mut h = OpenOptions::new()
        .write(true)
        .truncate(true)
        .custom_flags(0)
        .open(d2.join("0.log"))
        .unwrap();
    h.write_all(b"short").unwrap();
    drop(h);
    assert_eq!(fs::read(d1.join("0.log")).unwrap(), b"short");
}

#[test]
fn bad_input_gets_the_right_errno() {
    let c = TestCluster::with_nodes();
    let m = c.mount();
    let s = m.space(12);
    // Writes past the largest file size.
    let h = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(s.join("f"))
        .unwrap();
    let r = nix::sys::uio::pwrite(&h, b"x", (1i64 << 44) + 1);
    assert_eq!(r.err(), Some(nix::errno::Errno::EFBIG));
    // Xattr flags.
    let p = cpath(&s.join("f"));
    let name = CString::new("user.a").unwrap();
    let set = |flags| unsafe {
        libc::setxattr(p.as_ptr(), name.as_ptr(), b"v".as_ptr().cast(), 1, flags)
    };
    assert_eq!(set(libc::XATTR_REPLACE), -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ENODATA)
    );
    assert_eq!(set(libc::XATTR_CREATE), 0);
    assert_eq!(set(libc::XATTR_CREATE), -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EEXIST)
    );
    // Operations on a removed space.
    let gone = m.space(13);
    let keep = gone.clone();
    fs::remove_dir(&gone).unwrap();
    assert_eq!(errno_of(fs::write(keep.join("x"), b"")), libc::ENOENT);
}

#[test]
fn large_files_stream_through_background_flushes() {
    let c = TestCluster::with_nodes();
    let m = c.mount();
    let p = m.space(14).join("big");
    let mut expect = Vec::with_capacity(40 << 20);
    let mut x: u32 = 1;
    let mut h = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    for _ in 0..40 {
        let chunk: Vec<u8> = (0..1 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        h.write_all(&chunk).unwrap();
        expect.extend_from_slice(&chunk);
    }
    // Rewrite across extent and flush boundaries while earlier data may still be in flight.
    for off in [5u64 << 20, (8 << 20) - 7, (16 << 20) + 3] {
        h.seek(SeekFrom::Start(off)).unwrap();
        h.write_all(&[0xab; 100_000]).unwrap();
        expect[off as usize..off as usize + 100_000].fill(0xab);
    }
    h.seek(SeekFrom::Start(0)).unwrap();
    let mut back = Vec::new();
    h.read_to_end(&mut back).unwrap();
    assert!(back == expect, "read through the writing handle differs");
    h.sync_all().unwrap();
    drop(h);
    let m2 = c.mount();
    let back = fs::read(m2.path().join("vol01/14/big")).unwrap();
    assert_eq!(back.len(), expect.len());
    assert!(back == expect, "read through another mount differs");
    let md = fs::metadata(m2.path().join("vol01/14/big")).unwrap();
    assert_eq!(md.blocks(), (40u64 << 20) / 512);
}

#[test]
fn deferred_attribute_changes_reach_other_mounts() {
    let c = TestCluster::with_nodes();
    let m1 = common::Mount::new(&c, &["ttl=0"]);
    let m2 = common::Mount::new(&c, &["ttl=0"]);
    let a = m1.space(15).join("a");
    fs::write(&a, b"x").unwrap();
    let b = m2.path().join("vol01/15/a");
    // chmod is visible at once here, and in the other mount within the
    // background commit interval (1 s) ...
    fs::set_permissions(&a, fs::Permissions::from_mode(0o604)).unwrap();
    assert_eq!(fs::metadata(&a).unwrap().mode() & 0o7777, 0o604);
    let t = std::time::Instant::now();
    while fs::metadata(&b).unwrap().mode() & 0o7777 != 0o604 {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(60),
            "chmod never reached the other mount"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // ... and at once when a namespace operation follows (rsync's chmod + rename).
    fs::set_permissions(&a, fs::Permissions::from_mode(0o640)).unwrap();
    sh(&format!("touch -m -d @1000000000 {}", a.display()));
    fs::rename(&a, m1.path().join("vol01/15/b")).unwrap();
    let md = fs::metadata(m2.path().join("vol01/15/b")).unwrap();
    assert_eq!((md.mode() & 0o7777, md.mtime()), (0o640, 1_000_000_000));
}

#[test]
fn a_directory_of_100000_entries_lists_completely_in_batches() {
    let c = TestCluster::with_nodes();
    let m = c.mount();
    let dir = m.space(16).join("many");
    fs::create_dir(&dir).unwrap();
    let dir_ino = fs::metadata(&dir).unwrap().ino() & 0xffff_ffff;
    // Creating 100,000 files through FUSE takes minutes; insert the rows the
    // mount would have written, then list them through the mount.
    let node = c.cluster().space(16).unwrap().unwrap().node_id;
    let shard = c.cluster().shard(node).unwrap();
    use mysql::prelude::Queryable;
    let mut conn = shard.db().conn().unwrap();
    let n: u64 = 100_000;
    let base: u64 = 1_000_000;
    for chunk in (0..n).collect::<Vec<_>>().chunks(5000) {
        let inodes: Vec<String> = chunk
            .iter()
            .map(|i| format!("(16, {}, 33188, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0)", base + i))
            .collect();
        conn.query_drop(format!(
            "INSERT INTO inodes (space_id, ino, mode, uid, gid, nlink, size, stored, rdev, atime, mtime, ctime, btime) VALUES {}",
            inodes.join(",")
        ))
        .unwrap();
        let entries: Vec<String> = chunk
            .iter()
            .map(|i| format!("(16, {dir_ino}, 'e{i:06}', {}, {})", base + i, base + i))
            .collect();
        conn.query_drop(format!(
            "INSERT INTO dentries (space_id, parent, name, ino, seq) VALUES {}",
            entries.join(",")
        ))
        .unwrap();
    }
    let t = std::time::Instant::now();
    let names: std::collections::BTreeSet<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len() as u64, n);
    assert!(names.contains("e000000") && names.contains("e099999"));
    println!("listed {n} entries in {:?}", t.elapsed());
    assert_eq!(
        sh(&format!("ls -f {} | wc -l", dir.display())).trim(),
        (n + 2).to_string()
    );
}

#[test]
fn log_rotation_under_concurrent_appenders_loses_nothing() {
    let c = TestCluster::with_nodes();
    let m1 = common::Mount::new(&c, &["ttl=0"]);
    let m2 = common::Mount::new(&c, &["ttl=0"]);
    let d1 = m1.space(17).join("protolog");
    fs::create_dir(&d1).unwrap();
    let d2 = m2.path().join("vol01/17/protolog");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let appenders: Vec<_> = (0..4)
        .map(|w| {
            let dir = if w % 2 == 0 { d1.clone() } else { d2.clone() };
            std::thread::spawn(move || {
                for i in 0..150 {
                    // As the space server: open, append one record, close.
                    let mut h = OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(dir.join("last.log"))
                        .unwrap();
                    h.write_all(format!("w{w} r{i:04} {}\n", "x".repeat(30)).as_bytes())
                        .unwrap();
                }
            })
        })
        .collect();
    let rotator = {
        let (dir, stop) = (d1.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(20));
                if fs::rename(dir.join("last.log"), dir.join(format!("{n}.log"))).is_ok() {
                    n += 1;
                }
            }
            n
        })
    };
    for a in appenders {
        a.join().unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rotations = rotator.join().unwrap();
    assert!(rotations > 3, "only {rotations} rotations happened");
    let mut records = Vec::new();
    for e in fs::read_dir(&d2).unwrap() {
        let text = fs::read_to_string(e.unwrap().path()).unwrap();
        for l in text.lines() {
            assert_eq!(l.len(), 39, "torn record {l:?}");
            records.push(l.to_string());
        }
    }
    records.sort();
    let before = records.len();
    records.dedup();
    assert_eq!(before, records.len(), "a record landed twice");
    assert_eq!(
        records.len(),
        600,
        "records were lost across {rotations} rotations"
    );
}

/// In one mount, O_APPEND writers, a writer overwriting the file's first
/// bytes in place, and readers all use one log at once (an append's
/// transaction runs without the file's state lock, so reads overlap it; the
/// kernel lets one write of a file in at a time): no appended record is
/// lost or doubled, the header ends as last written, and a reader never sees
/// the log shrink or change below a record it saw complete.
#[test]
fn appends_overwrites_and_reads_of_one_file_in_one_mount() {
    const HEADER: usize = 16;
    let c = TestCluster::with_nodes();
    let m = common::Mount::new(&c, &[]);
    let log = m.space(18).join("last.log");
    fs::write(&log, format!("{:<15}\n", "header 0")).unwrap();
    let stop = common::StopFlag::new();
    let appenders: Vec<_> = (0..4)
        .map(|w| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..250 {
                    let mut h = OpenOptions::new().append(true).open(&log).unwrap();
                    h.write_all(format!("w{w} r{i:04} {}\n", "y".repeat(i % 40)).as_bytes())
                        .unwrap();
                }
            })
        })
        .collect();
    let overwriter = {
        let (log, stop) = (log.clone(), stop.0.clone());
        std::thread::spawn(move || {
            let h = OpenOptions::new().write(true).open(&log).unwrap();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                n += 1;
                let text = format!("{:<15}\n", format!("header {n}"));
                std::os::unix::fs::FileExt::write_all_at(&h, text.as_bytes(), 0).unwrap();
            }
            n
        })
    };
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (log, stop) = (log.clone(), stop.0.clone());
            std::thread::spawn(move || {
                let mut seen: Vec<u8> = Vec::new();
                let mut reads = 0;
                while !stop.load(std::sync::atomic::Ordering::Acquire) {
                    let now = fs::read(&log).unwrap();
                    // Up to the last complete record seen before, below the header.
                    let done = seen.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
                    assert!(
                        now.len() >= done,
                        "the log shrank from {done} to {}",
                        now.len()
                    );
                    assert_eq!(
                        now[HEADER.min(done)..done],
                        seen[HEADER.min(done)..done],
                        "records changed under a reader"
                    );
                    seen = now;
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    for a in appenders {
        a.join().unwrap();
    }
    stop.raise();
    let headers = overwriter.join().unwrap();
    let reads: usize = readers.into_iter().map(|r| r.join().unwrap()).sum();
    eprintln!("{headers} overwrites, {reads} reads");
    assert!(
        headers > 10 && reads > 10,
        "{headers} overwrites, {reads} reads"
    );
    let text = String::from_utf8(fs::read(&log).unwrap()).unwrap();
    assert_eq!(
        text.lines().next().unwrap().trim_end(),
        format!("header {headers}"),
        "the last overwrite"
    );
    let mut records: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(records.len(), 1000, "appended records");
    records.sort_unstable();
    records.dedup();
    assert_eq!(records.len(), 1000, "a record landed twice");
    // The same through a second mount (from the database).
    let m2 = common::Mount::new(&c, &[]);
    assert_eq!(
        fs::read_to_string(m2.path().join("vol01/18/last.log")).unwrap(),
        text
    );
}

/// A record of writer `w`: its header, then `len` bytes of one letter.
fn log_record(w: u32, i: u32) -> Vec<u8> {
    let len = 7_000 + ((w * 7919 + i * 104_729) % 90_000) as usize;
    let mut r = format!("<{w}.{i}.{len}>").into_bytes();
    r.extend(std::iter::repeat_n(b'a' + ((w * 31 + i) % 26) as u8, len));
    r.push(b'\n');
    r
}

/// Checks that `log` is whole records, the last possibly cut short; returns
/// how many are whole, or where it went wrong.
fn whole_records(log: &[u8]) -> Result<usize, String> {
    let (mut at, mut n) = (0, 0);
    while at < log.len() {
        let rest = &log[at..];
        let Some(close) = rest.iter().position(|&b| b == b'>') else {
            return Ok(n);
        };
        let head = std::str::from_utf8(&rest[1.min(close)..close]).unwrap_or("");
        let f: Vec<u32> = head.split('.').filter_map(|x| x.parse().ok()).collect();
        if rest[0] != b'<' || f.len() != 3 {
            return Err(format!(
                "no record at {at} of {}: {:?}",
                log.len(),
                &rest[..8.min(rest.len())]
            ));
        }
        let want = log_record(f[0], f[1]);
        let have = &rest[..want.len().min(rest.len())];
        if have != &want[..have.len()] {
            let bad = have.iter().zip(&want).position(|(a, b)| a != b).unwrap();
            return Err(format!(
                "record {head} at {at} wrong at +{bad}: {:?}",
                have[bad]
            ));
        }
        if have.len() < want.len() {
            return Ok(n);
        }
        at += want.len();
        n += 1;
    }
    Ok(n)
}

/// A log appended to through two mounts (records of 7–97 KB) while readers
/// on one of them read it again and again up to the size a stat gives, by
/// new opens and through a handle kept open: every byte of that size is
/// there, no reader ever sees a byte that is not the log's (the kernel's
/// cached page at an old end must not read as zeros once the log grew),
/// and never less than it saw before.
#[test]
fn readers_of_a_growing_log_see_only_its_bytes() {
    let c = TestCluster::with_nodes();
    // Attributes not cached: the kernel learns the size at every stat.
    let m1 = common::Mount::new(&c, &["ttl=0"]);
    let m2 = common::Mount::new(&c, &["ttl=0"]);
    let l1 = m1.space(19).join("last.log");
    fs::write(&l1, b"").unwrap();
    let l2 = m2.path().join("vol01/19/last.log");
    // Each writer appends at least `per` records, and goes on until the
    // readers have read the log often enough (appends that return before
    // their commit write fast).
    let per = 60;
    let stop = common::StopFlag::new();
    let read_count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writers: Vec<_> = (0..4u32)
        .map(|w| {
            let log = if w % 2 == 0 { l1.clone() } else { l2.clone() };
            let read_count = read_count.clone();
            std::thread::spawn(move || {
                let mut h = OpenOptions::new().append(true).open(&log).unwrap();
                let mut i = 0;
                while i < per || (read_count.load(Ordering::Acquire) < 40 && i < 20 * per) {
                    h.write_all(&log_record(w, i)).unwrap();
                    i += 1;
                }
                i as usize
            })
        })
        .collect();
    let readers: Vec<_> = (0..4)
        .map(|k| {
            let (log, stop, read_count) = (l1.clone(), stop.0.clone(), read_count.clone());
            std::thread::spawn(move || {
                let mut held = fs::File::open(&log).unwrap();
                let (mut seen, mut reads) = (0, 0);
                while !stop.load(Ordering::Acquire) {
                    // Up to the size a stat gives (the log grows faster
                    // than a reader chasing its end): every byte of it
                    // must be there.
                    let (size, now) = if k % 2 == 0 {
                        let mut f = fs::File::open(&log).unwrap();
                        let size = f.metadata().unwrap().len();
                        let mut b = Vec::new();
                        (&mut f).take(size).read_to_end(&mut b).unwrap();
                        (size, b)
                    } else {
                        let size = held.metadata().unwrap().len();
                        let mut b = Vec::new();
                        held.seek(SeekFrom::Start(0)).unwrap();
                        (&mut held).take(size).read_to_end(&mut b).unwrap();
                        (size, b)
                    };
                    assert_eq!(now.len() as u64, size, "reader {k}: a short read");
                    if let Err(e) = whole_records(&now) {
                        panic!("reader {k}, read {reads}: {e}");
                    }
                    assert!(
                        now.len() >= seen,
                        "the log shrank from {seen} to {}",
                        now.len()
                    );
                    seen = now.len();
                    reads += 1;
                    read_count.fetch_add(1, Ordering::AcqRel);
                }
                reads
            })
        })
        .collect();
    let written: usize = writers.into_iter().map(|w| w.join().unwrap()).sum();
    stop.raise();
    let reads: usize = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(reads > 20, "{reads} reads");
    let log = fs::read(&l1).unwrap();
    assert_eq!(whole_records(&log), Ok(written));
    assert!(log == fs::read(&l2).unwrap(), "the mounts differ");
}

/// A handle kept open on one mount reads every byte of the size a stat
/// gives, when another mount's appends made the log that long: the read
/// path learns the end the kernel was told, not only its own appends'.
#[test]
fn a_held_reader_reads_up_to_the_size_a_stat_gave() {
    let c = TestCluster::with_nodes();
    let m1 = common::Mount::new(&c, &["ttl=0"]);
    let m2 = common::Mount::new(&c, &["ttl=0"]);
    let l1 = m1.space(19).join("last.log");
    fs::write(&l1, vec![b'a'; 5000]).unwrap();
    let mut held = fs::File::open(&l1).unwrap();
    let mut b = Vec::new();
    held.read_to_end(&mut b).unwrap();
    assert_eq!(b.len(), 5000);
    let mut other = OpenOptions::new()
        .append(true)
        .open(m2.path().join("vol01/19/last.log"))
        .unwrap();
    other.write_all(&[b'b'; 3000]).unwrap();
    other.sync_all().unwrap();
    // By a stat of the handle, and by a lookup of the name.
    assert_eq!(held.metadata().unwrap().len(), 8000);
    let mut now = Vec::new();
    held.seek(SeekFrom::Start(0)).unwrap();
    (&mut held).take(8000).read_to_end(&mut now).unwrap();
    assert_eq!(now.len(), 8000, "a short read");
    assert!(now[..5000].iter().all(|&x| x == b'a') && now[5000..].iter().all(|&x| x == b'b'));
    other.write_all(&[b'c'; 2000]).unwrap();
    other.sync_all().unwrap();
    assert_eq!(fs::metadata(&l1).unwrap().len(), 10_000);
    let mut now = Vec::new();
    held.seek(SeekFrom::Start(7000)).unwrap();
    held.read_to_end(&mut now).unwrap();
    assert_eq!(now.len(), 3000, "a short read after a lookup");
    assert!(now[..1000].iter().all(|&x| x == b'b') && now[1000..].iter().all(|&x| x == b'c'));
}

/// A file written a moment ago (opened for direct I/O, see
/// `readers_of_a_growing_log_see_only_its_bytes`) can still be mapped.
#[test]
fn a_file_changed_a_moment_ago_can_be_mapped() {
    let c = TestCluster::with_nodes();
    let m = c.mount();
    let p = m.space(20).join("fresh");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    fs::write(&p, &data).unwrap();
    let f = fs::File::open(&p).unwrap();
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            data.len(),
            libc::PROT_READ,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&f),
            0,
        )
    };
    assert_ne!(map, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
    let mapped = unsafe { std::slice::from_raw_parts(map as *const u8, data.len()) };
    assert!(mapped == &data[..]);
    unsafe { libc::munmap(map, data.len()) };
}

/// A mount keeps what it cached of a log below the end it knew when
/// another mount only appended, and drops it when the other mount changed
/// the file otherwise, even if the file then grew past that end (a
/// truncate and a rewrite, then appends): its own appends and its opens
/// read the file as it is, byte for byte.
#[test]
fn cached_bytes_of_a_log_survive_appends_elsewhere_but_not_rewrites() {
    let c = TestCluster::with_nodes();
    let m1 = common::Mount::new(&c, &[]);
    let m2 = common::Mount::new(&c, &[]);
    let l1 = m1.space(23).join("last.log");
    let l2 = m2.path().join("vol01/23/last.log");
    let old = common::pattern(1, 600_000);
    fs::write(&l1, &old).unwrap();
    let mut a1 = OpenOptions::new().append(true).open(&l1).unwrap();
    let mut r1 = fs::File::open(&l1).unwrap();
    let read_all = |f: &mut fs::File| {
        let mut b = Vec::new();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_to_end(&mut b).unwrap();
        b
    };
    assert!(read_all(&mut r1) == old);

    // Only appends through the other mount, then one through this one.
    let mut want = old.clone();
    let more = common::pattern(2, 300_000);
    OpenOptions::new()
        .append(true)
        .open(&l2)
        .unwrap()
        .write_all(&more)
        .unwrap();
    want.extend_from_slice(&more);
    a1.write_all(b"one\n").unwrap();
    want.extend_from_slice(b"one\n");
    assert!(read_all(&mut r1) == want, "after appends elsewhere");
    assert!(
        fs::read(&l1).unwrap() == want,
        "a new open after appends elsewhere"
    );

    // A write in place elsewhere (same size), then an append here at the
    // end this mount knew.
    let mut w = OpenOptions::new().write(true).open(&l2).unwrap();
    w.seek(SeekFrom::Start(1000)).unwrap();
    w.write_all(&[0xAB; 100]).unwrap();
    drop(w);
    want[1000..1100].fill(0xAB);
    a1.write_all(b"four\n").unwrap();
    want.extend_from_slice(b"four\n");
    assert!(
        fs::read(&l1).unwrap() == want,
        "a new open after a write in place elsewhere"
    );

    // A rewrite elsewhere that ends longer than this mount knew the file.
    let new = common::pattern(3, want.len() + 100_000);
    fs::write(&l2, &new).unwrap();
    OpenOptions::new()
        .append(true)
        .open(&l2)
        .unwrap()
        .write_all(b"two\n")
        .unwrap();
    a1.write_all(b"three\n").unwrap();
    let mut want = new;
    want.extend_from_slice(b"two\nthree\n");
    let got = read_all(&mut r1);
    assert_eq!(got.len(), want.len());
    assert!(
        got == want,
        "after a rewrite elsewhere: first difference at {:?}",
        got.iter().zip(&want).position(|(a, b)| a != b)
    );
    assert!(
        fs::read(&l1).unwrap() == want,
        "a new open after a rewrite elsewhere"
    );

    // The same through opens only: a rewrite elsewhere to a longer file.
    let newer = common::pattern(4, want.len() + 50_000);
    fs::write(&l2, &newer).unwrap();
    assert!(
        fs::read(&l1).unwrap() == newer,
        "an open after another rewrite"
    );
}
