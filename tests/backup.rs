//! scripts/backup and scripts/restore-backup: the databases of a running
//! cluster dumped, changed, restored: the tree is as it was at the backup.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Mount, TestCluster, sh};

fn script(name: &str, args: &[&str]) -> std::process::Output {
    Command::new(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("scripts")
            .join(name),
    )
    .args(args)
    .output()
    .unwrap()
}

#[test]
fn backup_and_restore_of_the_databases() {
    let c = TestCluster::with_nodes();
    let cfg = c.mycnf.to_str().unwrap().to_string();
    let mut m = Mount::new(&c, &[]);
    for id in [3u32, 4, 5] {
        let s = m.space(id);
        std::fs::create_dir(s.join("protolog")).unwrap();
        std::fs::write(s.join("protolog/last.log"), format!("log of {id}\n")).unwrap();
        std::fs::write(s.join("data"), vec![id as u8; 300_000]).unwrap();
        std::os::unix::fs::symlink("data", s.join("link")).unwrap();
    }
    let before = sh(&format!(
        "cd {} && find . -type f -exec md5sum {{}} + | sort",
        m.path().display()
    ));

    let dir = tempfile::tempdir().unwrap();
    let o = script(
        "backup",
        &[
            "--mysql-cfg-file",
            &cfg,
            "--dir",
            dir.path().to_str().unwrap(),
        ],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        !out.contains("tshs-test-pw"),
        "a password was printed: {out}"
    );
    let backup = std::fs::read_dir(dir.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert!(
        backup
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("tshs-20")
    );
    let manifest = std::fs::read_to_string(backup.join("MANIFEST")).unwrap();
    assert_eq!(manifest.lines().count(), 3, "{manifest}");
    for f in ["admin.sql.gz", "node-1.sql.gz", "node-2.sql.gz"] {
        sh(&format!("gzip -t {}", backup.join(f).display()));
    }

    // Changes after the backup: gone after the restore.
    std::fs::remove_file(m.space(3).join("data")).unwrap();
    std::fs::write(m.space(4).join("new"), b"after the backup").unwrap();
    std::fs::create_dir(m.path().join("vol01/6")).unwrap();
    c.ok(&["set-setting", "StoreSpaceNames", "True"]);

    // Refused while the mount lives: one line, nothing restored.
    let o = script(
        "restore-backup",
        &["--mysql-cfg-file", &cfg, backup.to_str().unwrap()],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("access points are alive"), "{err}");
    assert!(err.contains("--force"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(m.path().join("vol01/6").exists(), "nothing restored");
    m.unmount();

    let o = script(
        "restore-backup",
        &["--mysql-cfg-file", &cfg, backup.to_str().unwrap()],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        out.contains("rolled back to the backup's")
            && out.contains("were S3 hosts: none; settings: StoreSpaceNames=True"),
        "{out}"
    );
    // The mount that was alive at the backup does not come back.
    assert!(!c.ok(&["list-access-points"]).contains("tshs mount"));
    let m = Mount::new(&c, &[]);
    let after = sh(&format!(
        "cd {} && find . -type f -exec md5sum {{}} + | sort",
        m.path().display()
    ));
    assert_eq!(before, after);
    assert!(!m.path().join("vol01/6").exists());
    assert_eq!(
        std::fs::read_link(m.path().join("vol01/5/link")).unwrap(),
        Path::new("data")
    );

    // Bad input: one line, non-zero, nothing touched.
    for args in [
        vec!["--mysql-cfg-file", cfg.as_str(), "/nonexistent"],
        vec![
            "--mysql-cfg-file",
            "/nonexistent.cnf",
            backup.to_str().unwrap(),
        ],
        vec!["--bogus"],
    ] {
        let o = script("restore-backup", &args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    }
    let o = script("backup", &["--mysql-cfg-file", "/nonexistent.cnf"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot read MySQL options file"));
}

/// `scripts/backup --tree`: the tree copied from snapshots of the volumes
/// while a writer goes on (no Standby), each space whole at one moment,
/// the snapshots deleted after; bad input refused.
#[test]
fn backup_of_the_tree_from_snapshots() {
    let c = TestCluster::with_nodes();
    let cfg = c.mycnf.to_str().unwrap().to_string();
    let m = Mount::new(&c, &[]);
    for id in [6u32, 7] {
        let s = m.space(id);
        std::fs::create_dir(s.join("protolog")).unwrap();
        std::fs::write(s.join("data"), vec![id as u8; 200_000]).unwrap();
        std::fs::hard_link(s.join("data"), s.join("data.link")).unwrap();
    }
    let log = m.space(6).join("protolog/last.log");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, log) = (stop.clone(), log.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap();
                f.write_all(format!("record {n:08}\n").as_bytes()).unwrap();
                n += 1;
            }
            n
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    let dir = tempfile::tempdir().unwrap();
    let tree = m.path().to_str().unwrap().to_string();
    let o = Command::new(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("scripts")
            .join("backup"),
    )
    .args([
        "--mysql-cfg-file",
        &cfg,
        "--dir",
        dir.path().to_str().unwrap(),
        "--tree",
        &tree,
    ])
    .env("TSHS", env!("CARGO_BIN_EXE_tshs"))
    .output()
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.join().unwrap();
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let backup = std::fs::read_dir(dir.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let copy = backup.join("tree/vol01");
    for id in [6u32, 7] {
        let d = copy.join(id.to_string());
        assert_eq!(
            std::fs::read(d.join("data")).unwrap(),
            vec![id as u8; 200_000]
        );
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::metadata(d.join("data")).unwrap().ino(),
            std::fs::metadata(d.join("data.link")).unwrap().ino(),
            "hard links kept"
        );
    }
    // The log: whole records 0..k, a prefix of what the writer wrote.
    let text = std::fs::read_to_string(copy.join("6/protolog/last.log")).unwrap();
    for (i, l) in text.lines().enumerate() {
        assert_eq!(l, format!("record {i:08}"));
    }
    assert!(text.ends_with('\n') && (text.lines().count() as u32) <= written);
    assert!(
        std::fs::read_to_string(backup.join("MANIFEST"))
            .unwrap()
            .contains("tree/vol01 snapshot backup-")
    );
    assert!(
        !c.ok(&["snapshot", "list"]).contains("backup-"),
        "the snapshot was deleted"
    );
    for args in [
        vec!["--mysql-cfg-file", cfg.as_str(), "--volume", "vol01"],
        vec!["--mysql-cfg-file", cfg.as_str(), "--tree", "/tmp"],
    ] {
        let o = script("backup", &args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    }
}
