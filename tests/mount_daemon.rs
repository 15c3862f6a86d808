//! The mount daemon's life cycle: daemonised mount and clean unmount on
//! SIGTERM, the mount(8) helper, bad mount options, a mountpoint left behind
//! by a crashed mount, and reclaiming files a crashed mount held open.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Mount, TestCluster};
use mysql::prelude::Queryable;

fn mounted(p: &std::path::Path) -> bool {
    let p = p.to_str().unwrap();
    fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(p))
}

fn wait_until(what: &str, f: impl Fn() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The pid of the daemon serving `mnt` (from its access point description).
fn daemon_pid(c: &TestCluster) -> i32 {
    let out = c.ok(&["list-access-points"]);
    let line = out
        .lines()
        .find(|l| l.contains("tshs mount;;pid="))
        .expect(&out);
    line.rsplit("pid=").next().unwrap().parse().unwrap()
}

#[test]
fn daemonised_mount_and_sigterm() {
    let c = TestCluster::with_nodes();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("mount.log");
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    // Returns only once the tree is mounted.
    c.ok(&[
        "mount",
        mnt.to_str().unwrap(),
        "-o",
        &format!("log_file={}", log.display()),
    ]);
    assert!(mounted(&mnt));
    fs::create_dir(mnt.join("vol01/3")).unwrap();
    fs::write(mnt.join("vol01/3/f"), b"data").unwrap();
    let pid = daemon_pid(&c);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    wait_until("unmount after SIGTERM", || !mounted(&mnt));
    wait_until("access point to go", || {
        !c.ok(&["list-access-points"]).contains("tshs mount")
    });

    // The mount(8) helper: `mount.tshs <my.cnf> <mountpoint> -o <options>`.
    let st = Command::new(env!("CARGO_BIN_EXE_mount-tshs"))
        .arg(&c.mycnf)
        .arg(&mnt)
        .args(["-o", &format!("rw,nofail,ttl=1,log_file={}", log.display())])
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(fs::read(mnt.join("vol01/3/f")).unwrap(), b"data");
    // A second mount on top of a live one is refused, by both ways in.
    let m = mnt.to_str().unwrap();
    let err = c.fails(&["mount", m, "-o", "allow_other"]);
    assert!(err.contains("is already a tshs mount"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_mount-tshs"))
        .arg(&c.mycnf)
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is already a tshs mount"));
    let mounts = fs::read_to_string("/proc/mounts").unwrap();
    assert_eq!(
        mounts
            .lines()
            .filter(|l| l.split(' ').nth(1) == Some(m))
            .count(),
        1
    );
    Command::new("fusermount3")
        .arg("-u")
        .arg(&mnt)
        .status()
        .unwrap();
    wait_until("helper mount to go", || !mounted(&mnt));
}

#[test]
fn bad_mount_options_and_mountpoints_fail_cleanly() {
    let c = TestCluster::with_nodes();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().to_str().unwrap();
    for (opt, msg) in [
        ("bogus", "unknown mount option 'bogus'"),
        ("ttl=abc", "is not a number of seconds"),
        ("cache_size=7Q", "is not a size"),
        ("threads=0", "not a number from 1 to 256"),
    ] {
        let err = c.fails(&["mount", p, "-f", "-o", opt]);
        assert!(err.contains(msg), "{opt}: {err}");
    }
    let err = c.fails(&["mount", "/nonexistent/mnt", "-f"]);
    assert!(err.contains("/nonexistent/mnt"), "{err}");
    let file = dir.path().join("file");
    fs::write(&file, b"").unwrap();
    assert!(
        c.fails(&["mount", file.to_str().unwrap()])
            .contains("is not a directory")
    );
    assert!(!mounted(dir.path()));
}

#[test]
fn a_crashed_mount_is_cleaned_up_and_its_open_files_reclaimed() {
    let c = TestCluster::with_nodes();
    let mut m = Mount::new(&c, &[]);
    let space = m.space(21);
    fs::write(space.join("keep"), b"kept").unwrap();
    // A file unlinked while open lives on with its holder...
    let mut h = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(space.join("tmp"))
        .unwrap();
    h.write_all(&[1; 100_000]).unwrap();
    h.sync_all().unwrap();
    fs::remove_file(space.join("tmp")).unwrap();
    let pid = m.pid() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    drop(h);
    let path = m.path().to_path_buf();
    wait_until("the daemon to die", || {
        fs::metadata(&path).err().and_then(|e| e.raw_os_error()) == Some(libc::ENOTCONN)
    });

    // ...a new `tshs mount` on the same point cleans the dead one up.
    c.ok(&["mount", path.to_str().unwrap(), "-o", "log_file=/dev/null"]);
    assert_eq!(fs::read(path.join("vol01/21/keep")).unwrap(), b"kept");
    let node = c.cluster().space(21).unwrap().unwrap().node_id;
    let shard = c.cluster().shard(node).unwrap();
    let orphans = || -> u64 {
        shard
            .db()
            .conn()
            .unwrap()
            .query_first("SELECT COUNT(*) FROM inodes WHERE space_id = 21 AND state = 1")
            .unwrap()
            .unwrap()
    };
    assert_eq!(orphans(), 1);
    let silent = |secs: u64| {
        c.cluster()
            .admin()
            .conn()
            .unwrap()
            .exec_drop(
                "UPDATE access_points SET access_time = NOW() - INTERVAL ? SECOND WHERE description LIKE ?",
                (secs, format!("%pid={pid}")),
            )
            .unwrap();
    };
    let fs_core = tshs::fs::Fs::new(c.cluster(), tshs::fs::FsConfig::default());
    // Silent for a minute (stale: moves no longer wait for it), a mount
    // may only be stalled: its unlinked-but-open files stay.
    silent(60);
    tshs::fs::reaper::round(&fs_core);
    assert_eq!(orphans(), 1, "a stalled mount's open file was purged");
    // Silent for an hour it is gone; the reaper then reclaims its rows.
    silent(3600);
    // (The new mount's own reaper may get there first.)
    tshs::fs::reaper::round(&fs_core);
    assert_eq!(orphans(), 0);
    let extents: u64 = shard
        .db()
        .conn()
        .unwrap()
        .query_first("SELECT COUNT(*) FROM extents e WHERE space_id = 21 AND NOT EXISTS (SELECT 1 FROM inodes i WHERE i.space_id = 21 AND i.ino = e.ino)")
        .unwrap()
        .unwrap();
    assert_eq!(extents, 0);
    Command::new("fusermount3")
        .arg("-u")
        .arg(&path)
        .status()
        .unwrap();
    m.unmount();
}
