//! POSIX semantics a shared host relies on, through a real mount and beside
//! the same calls on a local directory: set-user-ID and set-group-ID cleared
//! by writes and truncates of other users, POSIX ACLs enforced and kept in
//! step with the mode, rsync -aHAX and tar --acls round trips, fallocate and
//! SEEK_DATA/SEEK_HOLE, the mount's type and directories' link counts.

mod common;

use std::fs::{self, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Mount, TestCluster, sh};

const NOBODY: u32 = 65534;

/// Runs `cmd` under bash as `uid` (gid the same, no other groups);
/// returns whether it succeeded.
fn as_user(uid: u32, cmd: &str) -> bool {
    Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            "bash",
            "-c",
            cmd,
        ])
        .status()
        .unwrap()
        .success()
}

/// A local directory others may enter, to compare with.
fn local_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
    d
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().mode() & 0o7777
}

/// What a user does to a file of mode `mode` that root owns.
struct SetIdCase {
    name: &'static str,
    uid: u32,
    cmd: &'static str,
    /// The file's mtime is two hours old: a plain write then takes the
    /// kernel's page-cache path, a fresh file the direct-I/O one.
    old: bool,
}

const SET_ID_CASES: &[SetIdCase] = &[
    SetIdCase {
        name: "append",
        uid: NOBODY,
        cmd: "echo x >> F",
        old: true,
    },
    SetIdCase {
        name: "write-fresh",
        uid: NOBODY,
        cmd: "printf y | dd of=F conv=notrunc status=none",
        old: false,
    },
    SetIdCase {
        name: "write-old",
        uid: NOBODY,
        cmd: "printf y | dd of=F conv=notrunc status=none",
        old: true,
    },
    SetIdCase {
        name: "otrunc",
        uid: NOBODY,
        cmd: ": > F",
        old: false,
    },
    SetIdCase {
        name: "otrunc-write",
        uid: NOBODY,
        cmd: "echo z > F",
        old: true,
    },
    SetIdCase {
        name: "truncate",
        uid: NOBODY,
        cmd: "truncate -s 1 F",
        old: false,
    },
    SetIdCase {
        name: "root-append",
        uid: 0,
        cmd: "echo x >> F",
        old: false,
    },
    SetIdCase {
        name: "root-write",
        uid: 0,
        cmd: "printf y | dd of=F conv=notrunc status=none",
        old: false,
    },
    SetIdCase {
        name: "root-chown",
        uid: 0,
        cmd: "chown 65534 F",
        old: false,
    },
];

const SET_ID_MODES: &[u32] = &[0o4777, 0o2777, 0o6777, 0o2767, 0o6767];

fn set_id_file(dir: &Path, case: &SetIdCase, m: u32) -> PathBuf {
    dir.join(format!("{}-{m:o}", case.name))
}

#[test]
fn set_id_bits_are_cleared_as_on_a_local_disk() {
    let c = TestCluster::with_nodes();
    let m = Mount::new(&c, &["allow_other"]);
    let space = m.space(40);
    fs::set_permissions(&space, fs::Permissions::from_mode(0o755)).unwrap();
    let local = local_dir();
    let dirs = [local.path().to_path_buf(), space.clone()];
    for dir in &dirs {
        for case in SET_ID_CASES {
            for &md in SET_ID_MODES {
                let f = set_id_file(dir, case, md);
                fs::write(&f, b"seed\n").unwrap();
                fs::set_permissions(&f, fs::Permissions::from_mode(md)).unwrap();
                if case.old {
                    sh(&format!("touch -m -d '2 hours ago' {}", f.display()));
                }
            }
        }
    }
    // The mount's chmod and utimes are deferred: committed within a second.
    std::thread::sleep(Duration::from_millis(1500));
    for case in SET_ID_CASES {
        for &md in SET_ID_MODES {
            let mut got = Vec::new();
            for dir in &dirs {
                let f = set_id_file(dir, case, md);
                let cmd = case.cmd.replace('F', &format!("'{}'", f.display()));
                assert!(as_user(case.uid, &cmd), "{} on {}", case.name, f.display());
                // At once, as the writer's next stat sees it.
                got.push(mode(&f));
            }
            assert_eq!(
                got[1], got[0],
                "{} of a {md:o} file: mount {:o}, local disk {:o}",
                case.name, got[1], got[0]
            );
        }
    }
    // The local disk's answers, spelled out for the cases the issue named.
    let on = |name: &str, md: u32| mode(&space.join(format!("{name}-{md:o}")));
    assert_eq!(on("append", 0o6777), 0o777);
    assert_eq!(on("write-fresh", 0o4777), 0o777);
    assert_eq!(on("otrunc", 0o6777), 0o777);
    assert_eq!(
        on("append", 0o2767),
        0o767,
        "nobody is not in the file's group"
    );
    assert_eq!(on("root-append", 0o2767), 0o2767);
    assert_eq!(on("root-append", 0o6777), 0o6777, "CAP_FSETID keeps them");
    // Committed (a chown's mode change, deferred, within a second): another
    // mount (nothing cached) sees the same modes.
    std::thread::sleep(Duration::from_millis(1500));
    let other = Mount::new(&c, &[]);
    for case in SET_ID_CASES {
        for &md in SET_ID_MODES {
            let name = set_id_file(Path::new(""), case, md);
            assert_eq!(
                mode(&other.path().join("vol01/40").join(&name)),
                mode(&local.path().join(&name)),
                "{} seen by another mount",
                name.display()
            );
        }
    }
}

/// Runs the same shell steps in both directories; returns each one's output.
fn both(dirs: &[&Path], script: &str) -> Vec<String> {
    dirs.iter()
        .map(|d| sh(&format!("cd '{}' && {script}", d.display())))
        .collect()
}

#[test]
fn acls_are_enforced_and_kept_in_step_with_the_mode() {
    let c = TestCluster::with_nodes();
    let m = Mount::new(&c, &["allow_other"]);
    let space = m.space(41);
    fs::set_permissions(&space, fs::Permissions::from_mode(0o755)).unwrap();
    let local = local_dir();
    let dirs = [local.path(), space.as_path()];

    let out = both(
        &dirs,
        "echo secret > f && chmod 600 f && setfacl -m u:nobody:r f && stat -c %A f && getfacl -c f",
    );
    assert_eq!(out[1], out[0]);
    assert!(
        out[1].starts_with("-rw-r-----\n"),
        "the mask shows as group: {}",
        out[1]
    );
    for d in &dirs {
        let f = d.join("f");
        assert!(
            as_user(NOBODY, &format!("cat '{}' >/dev/null", f.display())),
            "allowed by the ACL"
        );
        // Denied by a named entry although "other" may read (the mask, r--,
        // is not empty: Linux skips the ACL when the group class has no bits).
        sh(&format!(
            "setfacl -m u:nobody:- '{0}' && chmod 644 '{0}'",
            f.display()
        ));
        assert!(
            !as_user(NOBODY, &format!("cat '{}' 2>/dev/null", f.display())),
            "denied by the ACL on {}",
            d.display()
        );
    }
    // chmod rewrote the mask; setfacl -b leaves the mode alone.
    let out = both(
        &dirs,
        "getfacl -c f && chmod 640 f && getfacl -c f && setfacl -b f && stat -c %A f && getfacl -c f",
    );
    assert_eq!(out[1], out[0]);
    assert!(out[1].contains("mask::r--"), "{}", out[1]);

    // Default ACLs: inherited by files and directories, instead of the umask.
    let out = both(
        &dirs,
        "mkdir d && setfacl -d -m u:nobody:rwx,g::rx,o::- d && umask 022 && touch d/f && mkdir d/sub && mkdir d/sub/deeper \
         && echo x > d/sub/deeper/g && stat -c '%A %n' d/f d/sub d/sub/deeper/g && getfacl -c d/f d/sub d/sub/deeper/g",
    );
    assert_eq!(out[1], out[0]);
    assert!(out[1].contains("default:user:nobody:rwx"), "{}", out[1]);
    // Another mount reads the same ACLs and mode (committed).
    let other = Mount::new(&c, &[]);
    let seen = sh(&format!(
        "cd '{}' && getfacl -c d/f d/sub d/sub/deeper/g",
        other.path().join("vol01/41").display()
    ));
    assert!(out[0].ends_with(&seen), "another mount: {seen}");
    // A chmod through that mount shows in the ACL's mask everywhere: the
    // mode is the truth for it, whatever either mount has cached.
    let f = other.path().join("vol01/41/d/f");
    sh(&format!("chmod 600 '{}'", f.display()));
    let acl = sh(&format!("getfacl -c '{}'", f.display()));
    assert!(acl.contains("mask::---"), "{acl}");
    // The first mount sees it once its cached attributes expire (ttl=1).
    std::thread::sleep(Duration::from_millis(1500));
    let acl = sh(&format!("getfacl -c '{}'", space.join("d/f").display()));
    assert!(acl.contains("mask::---"), "{acl}");

    // A malformed ACL (no "other" entry) is refused with EINVAL, as locally.
    for d in &dirs {
        let r = Command::new("setfattr")
            .args([
                "-n",
                "system.posix_acl_access",
                "-v",
                "0x02000000010006000000000004000400ffffffff",
            ])
            .arg(d.join("f"))
            .output()
            .unwrap();
        assert!(!r.status.success());
        assert!(
            String::from_utf8_lossy(&r.stderr).contains("Invalid argument"),
            "{}: {:?}",
            d.display(),
            r
        );
    }
}

#[test]
fn noacl_stores_acls_in_step_with_the_mode_but_checks_only_the_mode() {
    let c = TestCluster::with_nodes();
    let m = Mount::new(&c, &["allow_other", "noacl"]);
    let space = m.space(42);
    fs::set_permissions(&space, fs::Permissions::from_mode(0o755)).unwrap();
    let f = space.join("f");
    sh(&format!(
        "echo x > '{0}' && chmod 644 '{0}' && setfacl -m u:nobody:- '{0}'",
        f.display()
    ));
    assert_eq!(mode(&f), 0o644);
    assert!(sh(&format!("getfacl -c '{}'", f.display())).contains("user:nobody:---"));
    assert!(
        as_user(NOBODY, &format!("cat '{}' >/dev/null", f.display())),
        "noacl: only the mode counts"
    );
    // Refused (by the kernel's VFS since Linux 6.2, which parses ACLs before
    // any filesystem sees them; `fs::acl`'s own validation is unit-tested).
    let r = Command::new("setfattr")
        .args([
            "-n",
            "system.posix_acl_access",
            "-v",
            "0x0200000001000600ffffffff",
        ])
        .arg(&f)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("Invalid argument"),
        "{r:?}"
    );
}

#[test]
fn rsync_and_tar_carry_acls_and_xattrs_both_ways() {
    let c = TestCluster::with_nodes();
    let m = Mount::new(&c, &["allow_other"]);
    let space = m.space(43);
    let local = local_dir();
    let src = local.path().join("src");
    sh(&format!(
        "mkdir -p {0}/d/e && cd {0} && echo a > f && chmod 640 f && setfacl -m u:nobody:r,g:nogroup:rw f \
         && setfacl -d -m u:nobody:rx d && echo b > d/g && mkdir d/h && setfattr -n user.k -v v f \
         && ln f hl && ln -s f sl && echo c > plain && setfacl -m o::- plain",
        src.display()
    ));
    let same = |a: &Path, b: &Path| {
        let diff = sh(&format!(
            "rsync -n -c -i -aHAX {}/ {}/",
            a.display(),
            b.display()
        ));
        assert_eq!(diff, "", "{} and {} differ", a.display(), b.display());
        assert_eq!(
            sh(&format!("cd {} && getfacl -R -c . | sort", a.display())),
            sh(&format!("cd {} && getfacl -R -c . | sort", b.display()))
        );
    };
    let into = space.join("rsync");
    sh(&format!(
        "rsync -aHAX {}/ {}/",
        src.display(),
        into.display()
    ));
    same(&src, &into);
    let back = local.path().join("back");
    sh(&format!(
        "rsync -aHAX {}/ {}/",
        into.display(),
        back.display()
    ));
    same(&src, &back);
    let tarred = space.join("tar");
    fs::create_dir(&tarred).unwrap();
    sh(&format!(
        "tar --acls --xattrs --xattrs-include='*' -C {} -cf - . | tar --acls --xattrs --xattrs-include='*' -C {} -xf -",
        src.display(),
        tarred.display()
    ));
    same(&src, &tarred);
}

const KEEP_SIZE: i32 = libc::FALLOC_FL_KEEP_SIZE;
const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
const ZERO: i32 = libc::FALLOC_FL_ZERO_RANGE;

fn fallocate(f: &fs::File, mode: i32, off: u64, len: u64) -> Result<(), i32> {
    match unsafe { libc::fallocate(f.as_raw_fd(), mode, off as i64, len as i64) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error().raw_os_error().unwrap()),
    }
}

fn seek(f: &fs::File, off: u64, whence: i32) -> Result<u64, i32> {
    match unsafe { libc::lseek(f.as_raw_fd(), off as i64, whence) } {
        -1 => Err(std::io::Error::last_os_error().raw_os_error().unwrap()),
        o => Ok(o as u64),
    }
}

#[test]
fn fallocate_and_seek_data_hole_as_on_a_local_disk() {
    let c = TestCluster::with_nodes();
    let m = c.mount();
    let space = m.space(44);
    let local = local_dir();
    const K: u64 = 1024;
    let pattern: Vec<u8> = (0..1024 * K).map(|i| (i % 251) as u8 + 1).collect();
    let mut results = Vec::new();
    for dir in [local.path(), space.as_path()] {
        let p = dir.join("f");
        fs::write(&p, &pattern).unwrap();
        let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        let mut r = vec![
            fallocate(&f, PUNCH, 300 * K, 500 * K),
            fallocate(&f, KEEP_SIZE, 0, 4096 * K),
            fallocate(&f, ZERO | KEEP_SIZE, 1000 * K, 100 * K),
            fallocate(&f, 0, 0, 1500 * K),
            fallocate(&f, ZERO, 1600 * K, 10),
            fallocate(&f, PUNCH, 2000 * K, 10),
        ];
        r.push(fallocate(&f, libc::FALLOC_FL_PUNCH_HOLE, 0, 10));
        let size = f.metadata().unwrap().len();
        results.push((r, size, fs::read(&p).unwrap()));
        // Past the end: ENXIO for both.
        assert_eq!(seek(&f, size, libc::SEEK_DATA), Err(libc::ENXIO));
        assert_eq!(seek(&f, size + 5, libc::SEEK_HOLE), Err(libc::ENXIO));
    }
    assert_eq!(results[1].0, results[0].0, "results of the calls");
    assert_eq!(results[1].1, results[0].1, "sizes");
    assert_eq!(results[1].1, 1600 * K + 10);
    assert!(results[1].2 == results[0].2, "contents differ");

    // The extent map: data up to the hole punched at 300 KiB; the next data
    // no later than where the file's data goes on (800 KiB); a hole at the
    // end; blocks counted from what is stored.
    let p = space.join("f");
    let f = fs::File::open(&p).unwrap();
    assert_eq!(seek(&f, 0, libc::SEEK_DATA), Ok(0));
    assert_eq!(seek(&f, 0, libc::SEEK_HOLE), Ok(300 * K));
    let next = seek(&f, 300 * K, libc::SEEK_DATA).unwrap();
    assert!((300 * K..=800 * K).contains(&next), "{next}");
    let hole = seek(&f, 800 * K, libc::SEEK_HOLE).unwrap();
    assert!((1000 * K..=1600 * K + 10).contains(&hole), "{hole}");
    let blocks = f.metadata().unwrap().blocks() * 512;
    assert!(
        (500 * K..=800 * K).contains(&blocks),
        "st_blocks counts the ~500 KiB left of data, not the holes: {blocks}"
    );
    // Walking data and holes reads back the file exactly.
    let data = fs::read(&p).unwrap();
    let mut rebuilt = vec![0u8; data.len()];
    let mut at = 0;
    while let Ok(d) = seek(&f, at, libc::SEEK_DATA) {
        let h = seek(&f, d, libc::SEEK_HOLE).unwrap();
        rebuilt[d as usize..h as usize].copy_from_slice(&data[d as usize..h as usize]);
        at = h;
    }
    assert!(
        rebuilt == data,
        "a byte outside the reported data is not zero"
    );
    // Modes we do not offer.
    let w = OpenOptions::new().write(true).open(&p).unwrap();
    for mode in [libc::FALLOC_FL_COLLAPSE_RANGE, libc::FALLOC_FL_INSERT_RANGE] {
        assert_eq!(fallocate(&w, mode, 0, 4096), Err(libc::EOPNOTSUPP));
    }
}

#[test]
fn the_mount_is_fuse_tshs_and_directories_count_their_subdirectories() {
    let c = TestCluster::with_nodes();
    let m = c.mount();
    let mp = m.path().to_str().unwrap().to_string();
    let mounts = fs::read_to_string("/proc/mounts").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(mp.as_str()))
        .unwrap();
    assert_eq!(line.split(' ').nth(2), Some("fuse.tshs"), "{line}");
    assert!(sh(&format!("findmnt -n -t fuse.tshs -o TARGET {mp}")).contains(&mp));

    let nlink = |p: &Path| fs::metadata(p).unwrap().nlink();
    let vol = m.path().join("vol01");
    let before_root = nlink(m.path());
    let a = m.space(45);
    m.space(46);
    assert_eq!(
        nlink(m.path()),
        before_root,
        "volumes, not spaces, count at the root"
    );
    let spaces = fs::read_dir(&vol).unwrap().count() as u64;
    assert_eq!(nlink(&vol), 2 + spaces);
    assert_eq!(nlink(&a), 2);
    fs::create_dir_all(a.join("x/y")).unwrap();
    fs::create_dir(a.join("z")).unwrap();
    fs::write(a.join("file"), b"").unwrap();
    assert_eq!(
        (nlink(&a), nlink(&a.join("x")), nlink(&a.join("x/y"))),
        (4, 3, 2)
    );
    fs::rename(a.join("x/y"), a.join("z/y")).unwrap();
    assert_eq!((nlink(&a.join("x")), nlink(&a.join("z"))), (2, 3));
    fs::remove_dir(a.join("z/y")).unwrap();
    assert_eq!(nlink(&a.join("z")), 2);
    // Another mount agrees (nothing cached there).
    let other = c.mount();
    assert_eq!(nlink(&other.path().join("vol01")), 2 + spaces);
    assert_eq!(nlink(&other.path().join("vol01/45")), 4);
}

/// Review: the clearing wrote back the mode this mount had cached, undoing
/// a chmod another mount made while the file was open here.
#[test]
fn clearing_set_id_bits_keeps_another_mounts_chmod() {
    let c = TestCluster::with_nodes();
    let a = Mount::new(&c, &["allow_other"]);
    let b = Mount::new(&c, &[]);
    let space = a.space(47);
    fs::set_permissions(&space, fs::Permissions::from_mode(0o777)).unwrap();
    let f = space.join("f");
    fs::write(&f, b"x").unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o4777)).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    // nobody opens it through mount A, waits, then appends.
    let writer = {
        let cmd = format!("exec 3>>'{}'; sleep 2; echo more >&3", f.display());
        std::thread::spawn(move || as_user(NOBODY, &cmd))
    };
    std::thread::sleep(Duration::from_millis(700));
    let fb = b.path().join("vol01/47/f");
    fs::set_permissions(&fb, fs::Permissions::from_mode(0o4700)).unwrap();
    let fsync = fs::File::open(&fb).unwrap();
    fsync.sync_all().unwrap();
    assert!(writer.join().unwrap());
    std::thread::sleep(Duration::from_millis(1500));
    // The bit goes; the chmod's narrowing stays.
    assert_eq!(mode(&fb), 0o700);
    assert_eq!(mode(&f), 0o700);
    assert_eq!(fs::read(&f).unwrap(), b"xmore\n");
}
