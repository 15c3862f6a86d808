//! Restoring spaces and volumes from an rsync backup through the mount, the
//! restore commands (also in the reference's shell syntax), Standby.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{Mount, TestCluster, sh};

/// Runs `cmd` as user nobody; returns (success, stderr).
fn as_nobody(cmd: &str) -> (bool, String) {
    let o = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "bash",
            "-c",
            cmd,
        ])
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

/// A space as TeamDrive leaves it: rotated logs, a last.log of `log_len`
/// bytes, uploaded files, a hard link and a symlink.
fn fill_space(dir: &Path, seed: u8, rotated: usize, log_len: usize) {
    std::fs::create_dir_all(dir.join("protolog")).unwrap();
    std::fs::create_dir_all(dir.join("data/sub")).unwrap();
    for n in 0..rotated {
        std::fs::write(
            dir.join(format!("protolog/{n}.log")),
            vec![seed + n as u8; 5000],
        )
        .unwrap();
    }
    let mut log = std::fs::File::create(dir.join("protolog/last.log")).unwrap();
    log.write_all(&vec![b'L'; log_len]).unwrap();
    for i in 0..5u8 {
        let body: Vec<u8> = (0..20_000u32).map(|k| (k as u8) ^ seed ^ i).collect();
        std::fs::write(dir.join(format!("data/sub/f{i}")), body).unwrap();
    }
    std::fs::hard_link(dir.join("data/sub/f0"), dir.join("data/f0.link")).unwrap();
    std::os::unix::fs::symlink("sub/f1", dir.join("data/f1.sym")).unwrap();
}

fn damage(dir: &Path) {
    std::fs::remove_file(dir.join("data/sub/f3")).unwrap();
    let _ = std::fs::remove_file(dir.join("protolog/0.log"));
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("protolog/last.log"))
        .unwrap()
        .set_len(10)
        .unwrap();
    std::fs::write(dir.join("data/junk"), b"not in the backup").unwrap();
}

fn same_tree(a: &Path, b: &Path) {
    sh(&format!(
        "diff -r --no-dereference {} {}",
        a.display(),
        b.display()
    ));
    let list = |p: &Path| {
        sh(&format!(
            "cd {} && (find . -type d -printf '%p %y %m %n\\n'; find . ! -type d -printf '%p %y %s %m %l %n\\n') | sort",
            p.display()
        ))
    };
    assert_eq!(list(a), list(b), "trees differ in metadata");
}

#[test]
fn restore_a_space_from_an_rsync_backup() {
    let c = TestCluster::with_nodes();
    let m = Mount::new(&c, &["allow_other"]);
    let space = m.space(3);
    fill_space(&space, 1, 3, 1419);
    let other = m.space(4);
    fill_space(&other, 9, 1, 100);
    sh(&format!(
        "chmod -R a+rX {} {}",
        space.display(),
        other.display()
    ));
    let backup = tempfile::tempdir().unwrap();
    sh(&format!(
        "rsync -aH {}/ {}/3/",
        space.display(),
        backup.path().display()
    ));
    let last = space.join("protolog/last.log");
    assert!(as_nobody(&format!("cat {} >/dev/null", last.display())).0);

    damage(&space);
    let out = c.ok(&["deactivate-space", "3"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].ends_with("[Notice] Deactivate space [3]"), "{out}");
    assert!(
        lines[1].ends_with("[Notice] Space: 3, deactivated"),
        "{out}"
    );
    assert!(
        lines[0].as_bytes()[6] == b' ' && lines[0].as_bytes()[9] == b':',
        "{out}"
    );
    std::thread::sleep(std::time::Duration::from_millis(2100)); // admin view + kernel TTL
    // The space server (not root) is refused; another space is not.
    let (ok, err) = as_nobody(&format!("cat {}", last.display()));
    assert!(!ok && err.contains("Permission denied"), "{err}");
    let (ok, err) = as_nobody(&format!("ls {}", space.display()));
    assert!(!ok && err.contains("Permission denied"), "{err}");
    assert!(
        as_nobody(&format!(
            "cat {}/protolog/last.log >/dev/null",
            other.display()
        ))
        .0
    );
    // Root copies the backup in.
    sh(&format!(
        "rsync -aH --delete {}/3/ {}/",
        backup.path().display(),
        space.display()
    ));
    let out = c.ok(&["reactivate-space", "3"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].ends_with("[Notice] Reactivate Space [3]"), "{out}");
    assert!(lines[1].ends_with("[Notice] /spacedata/vol01/3"), "{out}");
    assert!(
        lines[2].ends_with(
            "[Notice] Space: 3, reactivation successful [Restore ID: 1, Log No: 3, Log Offset: 1419]"
        ),
        "{out}"
    );
    same_tree(&backup.path().join("3"), &space);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    assert!(as_nobody(&format!("cat {} >/dev/null", last.display())).0);
    // A second restore has the next restore id.
    c.ok(&["deactivate-space", "3"]);
    let out = c.ok(&["reactivate-space", "3", "--root", "/srv/td"]);
    assert!(out.contains("/srv/td/vol01/3"), "{out}");
    assert!(
        out.contains("[Restore ID: 2, Log No: 3, Log Offset: 1419]"),
        "{out}"
    );
}

#[test]
fn restore_a_volume_skips_deleted_spaces() {
    let c = TestCluster::with_nodes();
    c.ok(&["create-volume", "vol02"]);
    let m = Mount::new(&c, &[]);
    let vol = m.path().join("vol02");
    for (id, seed, rotated, len) in [(62, 1u8, 0, 549), (63, 2, 2, 913), (64, 3, 5, 4252)] {
        std::fs::create_dir(vol.join(id.to_string())).unwrap();
        fill_space(&vol.join(id.to_string()), seed, rotated, len);
    }
    std::fs::create_dir(vol.join("65")).unwrap();
    std::fs::remove_dir(vol.join("65")).unwrap(); // deleted: DELETE job
    let backup = tempfile::tempdir().unwrap();
    sh(&format!(
        "rsync -aH {}/ {}/",
        vol.display(),
        backup.path().display()
    ));
    for id in [62, 63, 64] {
        damage(&vol.join(id.to_string()));
    }

    let out = c.ok(&["deactivate-volume", "2"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert!(
        lines[0].ends_with("[Notice] Deactivate Volume [2]"),
        "{out}"
    );
    assert!(
        lines[1].ends_with("[Notice] Volume vol02: Spaces to deactivate: 3"),
        "{out}"
    );
    assert!(
        lines[4].ends_with("[Notice] Space: 64, deactivated"),
        "{out}"
    );
    let spaces = c.ok(&["list-spaces"]);
    assert!(spaces.starts_with("| Spaces"), "{spaces}");
    assert!(
        spaces.contains("| Volume | ID | Title | ResID | Status |"),
        "{spaces}"
    );
    assert!(
        spaces.contains("| vol02  | 62 |       |       | 1      |"),
        "{spaces}"
    );
    assert!(
        spaces.contains("| vol02  | 65 |       |       | 2      |"),
        "{spaces}"
    );
    // Deactivating again, or reactivating what is active, is refused.
    let e = c.fails(&["deactivate-volume", "2"]);
    assert!(
        e.contains("volume vol02 has no active space to deactivate"),
        "{e}"
    );
    let e = c.fails(&["deactivate-space", "63"]);
    assert!(e.contains("space 63 is already deactivated"), "{e}");
    let e = c.fails(&["reactivate-volume", "1"]);
    assert!(e.contains("volume vol01 has no deactivated space"), "{e}");

    sh(&format!(
        "rsync -aH --delete {}/ {}/",
        backup.path().display(),
        vol.display()
    ));
    let out = c.ok(&["reactivate-volume", "2"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 10, "{out}");
    assert!(
        lines[0].ends_with("[Notice] Reactivate Volume [2]"),
        "{out}"
    );
    for (id, no, off) in [(62, 0, 549), (63, 2, 913), (64, 5, 4252)] {
        assert!(
            out.contains(&format!(
                "[Notice] Space: {id}, reactivation successful [Restore ID: 1, Log No: {no}, Log Offset: {off}]"
            )),
            "{out}"
        );
    }
    same_tree(backup.path(), &vol);
    // The deleted space stayed deleted; reactivate_space brings it back.
    assert!(
        c.ok(&["list-spaces"])
            .contains("| vol02  | 65 |       |       | 2      |")
    );
    assert!(c.ok(&["list-jobs"]).contains("space=65"));
    let out = c.ok(&["reactivate-space", "65"]);
    assert!(
        out.contains(
            "Space: 65, reactivation successful [Restore ID: 1, Log No: 0, Log Offset: 0]"
        ),
        "{out}"
    );
    assert!(!c.ok(&["list-jobs"]).contains("space=65"));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert!(vol.join("65").is_dir());
}

#[test]
fn restore_commands_in_the_shell_and_bad_input() {
    let c = TestCluster::with_nodes();
    let m = Mount::new(&c, &[]);
    m.space(3);
    let out = c.ok(&["list-volumes"]);
    assert_eq!(
        out,
        "| Volumes                  |\n| ID | Name  | Status      |\n| 1  | vol01 | Operational |\n"
    );
    // The reference's syntax in the shell.
    let mut shell = Command::new(env!("CARGO_BIN_EXE_tshs"))
        .arg("--mysql-cfg-file")
        .arg(&c.mycnf)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    shell
        .stdin
        .take()
        .unwrap()
        .write_all(
            b"restore_help;;\ndeactivate_space(3);;\nlist_spaces;;\nreactivate_space(3);;\nquit\n",
        )
        .unwrap();
    let o = shell.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("deactivate_space(space_id);;"), "{out}");
    assert!(out.contains("Space: 3, deactivated"), "{out}");
    assert!(
        out.contains("| vol01  | 3  |       |       | 1      |"),
        "{out}"
    );
    assert!(
        out.contains("Space: 3, reactivation successful [Restore ID: 1"),
        "{out}"
    );
    assert!(
        c.ok(&["restore-help"])
            .contains("reactivate_volume(vol_id);;")
    );

    for (args, msg) in [
        (&["deactivate-space", "99"][..], "there is no space 99"),
        (&["reactivate-space", "99"][..], "there is no space 99"),
        (&["reactivate-space", "3"][..], "space 3 is not deactivated"),
        (&["deactivate-volume", "7"][..], "there is no volume 7"),
        (&["reactivate-volume", "7"][..], "there is no volume 7"),
        (
            &["set-volume-status", "1", "Sleeping"][..],
            "unknown volume status 'Sleeping'",
        ),
        (
            &["set-volume-status", "7", "Standby"][..],
            "there is no volume 7",
        ),
    ] {
        let e = c.fails(args);
        assert!(e.contains(msg), "{args:?}: {e}");
    }
    assert!(
        c.ok(&["list-spaces"])
            .contains("| vol01  | 3  |       |       | 0      |")
    );
}

#[test]
fn standby_volume_is_read_only_through_the_mount() {
    let c = TestCluster::with_nodes();
    let m = Mount::new(&c, &[]);
    let s = m.space(5);
    std::fs::write(s.join("f"), b"before").unwrap();
    assert_eq!(
        c.ok(&["set-volume-status", "1", "Standby"]),
        "Volume 1: Standby\n"
    );
    assert!(c.ok(&["list-volumes"]).contains("| 1  | vol01 | Standby |"));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let e = std::fs::write(s.join("g"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    let e = std::fs::OpenOptions::new()
        .append(true)
        .open(s.join("f"))
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    assert_eq!(std::fs::read(s.join("f")).unwrap(), b"before");
    c.ok(&["set-volume-status", "1", "Operational"]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    std::fs::write(s.join("g"), b"after").unwrap();
    assert_eq!(std::fs::read(s.join("g")).unwrap(), b"after");
}

#[test]
fn space_titles_are_kept_only_while_store_space_names_is_on() {
    let c = TestCluster::with_nodes();
    let m = c.mount();
    m.space(3);
    m.space(4);
    let e = c.fails(&["set-space-info", "3", "--title", "Project X"]);
    assert!(e.contains("titles are not stored"), "{e}");
    assert!(
        c.ok(&["list-settings"])
            .contains("StoreSpaceNames False False")
    );

    assert_eq!(
        c.ok(&["set-setting", "storespacenames", "true"]),
        "StoreSpaceNames = True\n"
    );
    c.ok(&[
        "set-space-info",
        "3",
        "--title",
        "Project X",
        "--resource-id",
        "r-77",
    ]);
    c.ok(&["set-space-info", "4", "--resource-id", "r-78"]);
    let spaces = c.ok(&["list-spaces"]);
    assert!(
        spaces.contains("| vol01  | 3  | Project X | r-77  | 0      |"),
        "{spaces}"
    );
    assert!(
        spaces.contains("| vol01  | 4  |           | r-78  | 0      |"),
        "{spaces}"
    );

    // Off again: titles are forgotten, resource IDs stay.
    c.ok(&["set-setting", "StoreSpaceNames", "False"]);
    let spaces = c.ok(&["list-spaces"]);
    assert!(!spaces.contains("Project X"), "{spaces}");
    assert!(spaces.contains("r-77"), "{spaces}");

    for (args, want) in [
        (
            &["set-space-info", "99", "--resource-id", "x"][..],
            "there is no space 99",
        ),
        (&["set-space-info", "3"][..], "nothing to set"),
        (&["set-setting", "Nope", "1"][..], "unknown setting 'Nope'"),
        (
            &["set-setting", "StoreSpaceNames", "maybe"][..],
            "True or False",
        ),
    ] {
        let e = c.fails(args);
        assert!(e.contains(want), "{args:?}: {e}");
    }
    assert!(c.ok(&["list-settings"]).contains("StoreSpaceNames False"));
}
