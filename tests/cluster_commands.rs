//! The cluster commands against the real local MariaDB servers: schemas,
//! idempotency, table output, and every bad input leaving nothing behind.

mod common;

use common::{TestCluster, root_conn, server, unique};
use mysql::prelude::Queryable;
use tshs::shard::NODE_RIGHTS;

fn tables(n: u8, db: &str) -> Vec<String> {
    root_conn(n)
        .query(format!(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = '{db}' ORDER BY table_name"
        ))
        .unwrap()
}

fn node_count(c: &TestCluster) -> usize {
    c.cluster().nodes().unwrap().len()
}

#[test]
fn create_admin_node_is_idempotent() {
    let c = TestCluster::empty();
    let before = tables(1, &c.admin_db);
    assert_eq!(
        before,
        [
            "access_points",
            "import_leases",
            "jobs",
            "s3_hosts",
            "schema_migrations",
            "settings",
            "snapshots",
            "snapshot_spaces",
            "spaces",
            "space_moves",
            "storage_nodes",
            "topology",
            "volumes"
        ]
    );
    assert_eq!(c.ok(&["create-admin-node"]), "Admin Node is up to date\n");
    assert_eq!(tables(1, &c.admin_db), before);
}

#[test]
fn storage_nodes_spread_the_key_space_and_list_as_in_the_reference() {
    let c = TestCluster::empty();
    let db1 = c.new_db(1, "st");
    let db2 = c.new_db(2, "st");
    c.ok(&[
        "create-storage-node",
        &format!("{};database={db1}", server(1)),
    ]);
    let out = c.ok(&["list-storage-nodes"]);
    assert!(out.contains("ACTIVE_SHARD 0 (4294967296)"), "{out}");
    c.ok(&[
        "create-storage-node",
        &format!("{};database={db2}", server(2)),
    ]);
    assert_eq!(
        tables(2, &db2),
        [
            "applied_ops",
            "dentries",
            "dentries_v",
            "extents",
            "extents_v",
            "inodes",
            "inodes_v",
            "node_identity",
            "open_writers",
            "s3_uploads",
            "schema_migrations",
            "snapshot_moments",
            "spaces",
            "space_fence",
            "xattrs",
            "xattrs_v"
        ]
    );
    let out = c.ok(&["list-storage-nodes"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "ID Phase        Boundary (size)         Connection options (totals)"
    );
    assert_eq!(
        lines[1],
        "-- ------------ ----------------------- ---------------------------"
    );
    assert!(lines[2].starts_with("1  ACTIVE_SHARD 0 (2147483648)          host=127.0.0.1;port=3307;user=tshs;password=****;database="));
    assert_eq!(lines[3], "(InDB=0 OnS3=0 R/O=0 Bytes=0)");
    assert!(
        lines[4].starts_with("2  ACTIVE_SHARD 2147483648 (2147483648) host=127.0.0.1;port=3308;")
    );
    assert!(!out.contains("tshs-test-pw"), "password printed: {out}");

    // Deleting a node while empty gives its range back.
    c.ok(&["delete-storage-node", "2"]);
    assert!(tables(2, &db2).is_empty());
    let out = c.ok(&["list-storage-nodes"]);
    assert!(out.contains("1  ACTIVE_SHARD 0 (4294967296)"), "{out}");
    c.fails(&["delete-storage-node", "2"]);
}

#[test]
fn totals_count_real_rows() {
    let c = TestCluster::with_nodes();
    let m = c.mount();
    for s in [3u32, 4, 5, 6] {
        let p = m.space(s);
        std::fs::write(p.join("a"), vec![7u8; 1000]).unwrap();
        std::fs::write(p.join("last.log"), b"log").unwrap();
    }
    let out = c.ok(&["list-storage-nodes"]);
    let mut files = 0;
    let mut bytes = 0;
    for l in out.lines().filter(|l| l.starts_with("(InDB=")) {
        let nums: Vec<u64> = l
            .trim_matches(|c| c == '(' || c == ')')
            .split(' ')
            .map(|kv| kv.split('=').nth(1).unwrap().parse().unwrap())
            .collect();
        files += nums[0];
        bytes += nums[3];
    }
    assert_eq!((files, bytes), (8, 4 * 1003), "{out}");
}

#[test]
fn bad_connection_options_are_refused_with_one_line() {
    let c = TestCluster::empty();
    let cases: &[(&str, &str)] = &[
        (
            "host=127.0.0.1;port=1;user=x;database=d",
            "cannot reach MySQL server 127.0.0.1:1",
        ),
        (
            "hots=127.0.0.1;database=d",
            "unknown connection option 'hots'",
        ),
        ("host=127.0.0.1;port=70000;database=d", "not a port number"),
        (
            "host=127.0.0.1;database",
            "malformed connection option 'database'",
        ),
        ("", "empty connection options"),
        ("host=127.0.0.1;port=3307;user=tshs", "name no database"),
    ];
    for (opts, msg) in cases {
        let err = c.fails(&["create-storage-node", opts]);
        assert!(err.contains(msg), "{opts}: {err}");
    }
    let wrong_pw = server(1).replace("password=tshs-test-pw", "password=wrong");
    let err = c.fails(&["create-storage-node", &format!("{wrong_pw};database=x")]);
    assert!(err.contains("access denied"), "{err}");
    assert!(!err.contains("wrong"), "password printed: {err}");
    let err = c.fails(&[
        "create-storage-node",
        &format!("{};database={}", server(1), unique("missing")),
    ]);
    assert!(err.contains("does not exist"), "{err}");
    assert_eq!(node_count(&c), 0);
}

#[test]
fn a_database_that_is_not_empty_is_refused_and_left_alone() {
    let c = TestCluster::empty();
    let db = c.new_db(2, "full");
    root_conn(2)
        .query_drop(format!("CREATE TABLE {db}.mine (x INT)"))
        .unwrap();
    let err = c.fails(&[
        "create-storage-node",
        &format!("{};database={db}", server(2)),
    ]);
    assert!(err.contains("is not empty"), "{err}");
    assert_eq!(tables(2, &db), ["mine"]);
    assert_eq!(node_count(&c), 0);
}

#[test]
fn a_user_missing_any_right_is_refused_by_name_and_nothing_is_made() {
    let c = TestCluster::empty();
    let db = c.new_db(1, "rights");
    let user = unique("u");
    let mut root = root_conn(1);
    root.query_drop(format!(
        "CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY 'pw'"
    ))
    .unwrap();
    let port = if server(1).contains("3307") {
        3307
    } else {
        3306
    };
    let node = format!("host=127.0.0.1;port={port};user={user};password=pw;database={db}");
    let grant = |rights: &[&str]| {
        let mut root = root_conn(1);
        root.query_drop(format!(
            "REVOKE ALL PRIVILEGES, GRANT OPTION FROM '{user}'@'127.0.0.1'"
        ))
        .unwrap();
        root.query_drop(format!(
            "GRANT {} ON {db}.* TO '{user}'@'127.0.0.1'",
            rights.join(", ")
        ))
        .unwrap();
    };
    for missing in NODE_RIGHTS {
        let rights: Vec<&str> = NODE_RIGHTS
            .iter()
            .copied()
            .filter(|r| r != missing)
            .collect();
        grant(&rights);
        let err = c.fails(&["create-storage-node", &node]);
        assert!(
            err.contains(&format!("lacks {missing} on database")),
            "{missing}: {err}"
        );
        assert!(
            err.contains("GRANT SELECT, INSERT"),
            "the line to copy: {err}"
        );
        assert!(tables(1, &db).is_empty(), "{missing}: tables left behind");
        assert_eq!(node_count(&c), 0);
    }
    // With every right (a pattern grant works too), the next attempt succeeds.
    root.query_drop(format!(
        "REVOKE ALL PRIVILEGES, GRANT OPTION FROM '{user}'@'127.0.0.1'"
    ))
    .unwrap();
    let pattern = db.replace('_', "\\_");
    root.query_drop(format!(
        "GRANT {} ON `{pattern}`.* TO '{user}'@'127.0.0.1'",
        NODE_RIGHTS.join(", ")
    ))
    .unwrap();
    c.ok(&["create-storage-node", &node]);
    assert_eq!(node_count(&c), 1);
    c.ok(&["delete-storage-node", "1"]);
    assert!(
        tables(1, &db).is_empty(),
        "delete-storage-node drops its tables"
    );
    root.query_drop(format!("DROP USER '{user}'@'127.0.0.1'"))
        .unwrap();
}

#[test]
fn a_node_whose_database_is_gone_is_deleted_with_force() {
    let c = TestCluster::empty();
    let db = c.new_db(2, "gone");
    c.ok(&[
        "create-storage-node",
        &format!("{};database={db}", server(2)),
    ]);
    root_conn(2)
        .query_drop(format!("DROP DATABASE {db}"))
        .unwrap();
    let err = c.fails(&["delete-storage-node", "1"]);
    assert!(err.contains("delete-storage-node 1 --force"), "{err}");
    assert_eq!(node_count(&c), 1);
    assert!(
        c.ok(&["delete-storage-node", "1", "--force"])
            .contains("deleted")
    );
    assert_eq!(node_count(&c), 0);
    // The database made anew takes a node again.
    root_conn(2)
        .query_drop(format!("CREATE DATABASE {db}"))
        .unwrap();
    c.ok(&[
        "create-storage-node",
        &format!("{};database={db}", server(2)),
    ]);
    assert_eq!(node_count(&c), 1);
}

#[test]
fn storage_nodes_cannot_be_added_or_removed_once_the_cluster_holds_data() {
    let c = TestCluster::with_nodes();
    let vol = c.cluster().volume_by_name("vol01").unwrap().unwrap();
    c.cluster().create_space(vol.id, 3, 0, 0, 0o755).unwrap();
    let db = c.new_db(1, "late");
    let err = c.fails(&[
        "create-storage-node",
        &format!("{};database={db}", server(1)),
    ]);
    assert!(
        err.contains("only allowed while the cluster is empty"),
        "{err}"
    );
    assert!(tables(1, &db).is_empty());
    let err = c.fails(&["delete-storage-node", "1"]);
    assert!(
        err.contains("only allowed while the cluster is empty"),
        "{err}"
    );
    assert_eq!(node_count(&c), 2);
    let err = c.fails(&[
        "create-storage-node",
        &format!("{};database={db}", server(1)),
    ]);
    assert!(err.contains("empty"), "{err}");
}

#[test]
fn commands_before_create_admin_node_and_bad_option_files() {
    let c = TestCluster::empty();
    let fresh = c.new_db(1, "notadmin");
    let cfg = std::fs::read_to_string(&c.mycnf)
        .unwrap()
        .replace(&c.admin_db, &fresh);
    let path = c.dir.path().join("other.cnf");
    std::fs::write(&path, cfg).unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tshs"))
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let o = run(&[
        "--mysql-cfg-file",
        path.to_str().unwrap(),
        "list-storage-nodes",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("not a tshs Admin Node (run tshs create-admin-node)")
    );

    std::fs::write(&path, "[client]\nuser=x\n").unwrap();
    let o = run(&["--mysql-cfg-file", path.to_str().unwrap(), "list-jobs"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("has no [tshs] group"));
    let o = run(&["--mysql-cfg-file", "/nonexistent/my.cnf", "list-jobs"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("cannot read MySQL options file /nonexistent/my.cnf")
    );

    // Unknown commands and options are usage errors (exit 2).
    assert_eq!(run(&["no-such-command"]).status.code(), Some(2));
    assert_eq!(run(&["list-jobs", "--bogus"]).status.code(), Some(2));
    let o = run(&["--config", "/nonexistent/tshs.conf", "list-jobs"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/tshs.conf"));
}

#[test]
fn tshs_conf_supplies_long_options() {
    let c = TestCluster::with_nodes();
    let conf = c.dir.path().join("tshs.conf");
    std::fs::write(
        &conf,
        format!("# admin node\nmysql-cfg-file={}\n", c.mycnf.display()),
    )
    .unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_tshs"))
        .args(["--config", conf.to_str().unwrap(), "list-volumes"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("| 1  | vol01 | Operational |"));
}

#[test]
fn volumes_refuse_bad_and_duplicate_names() {
    let c = TestCluster::with_nodes();
    assert!(
        c.fails(&["create-volume", "vol01"])
            .contains("already exists")
    );
    assert!(c.fails(&["create-volume", "123"]).contains("numeric"));
    assert!(
        c.fails(&["create-volume", "a/b"])
            .contains("not a valid directory name")
    );
    let out = c.ok(&["list-volumes"]);
    assert_eq!(
        out,
        "| Volumes                  |\n| ID | Name  | Status      |\n| 1  | vol01 | Operational |\n"
    );
}

#[test]
fn access_points_jobs_and_the_shell() {
    let c = TestCluster::with_nodes();
    let mut m = c.mount();
    let out = c.ok(&["list-access-points"]);
    assert!(
        out.starts_with(
            "ID Ack State Access time         Description\n-- --- ----- ------------------- -----------\n"
        ),
        "{out}"
    );
    let line = out
        .lines()
        .find(|l| l.ends_with(&format!("tshs mount;;pid={}", m.pid())))
        .expect(&out);
    assert_eq!(
        line.split_whitespace().nth(1),
        Some("1"),
        "acknowledged: {line}"
    );
    assert_eq!(line.split_whitespace().nth(2), Some("live"), "{line}");
    // A process silent for over 30 s shows as stale.
    root_conn(1)
        .query_drop(format!(
            "INSERT INTO {}.access_points (ack_epoch, access_time, description)
             VALUES (0, NOW() - INTERVAL 45 SECOND, 'tshs silent;;pid=1')",
            c.admin_db
        ))
        .unwrap();
    let out = c.ok(&["list-access-points"]);
    let stale = out.lines().find(|l| l.ends_with(";;pid=1")).expect(&out);
    assert_eq!(stale.split_whitespace().nth(2), Some("stale"), "{stale}");

    // rmdir of an empty space marks it deleted and records a DELETE job.
    let s = m.space(42);
    std::fs::remove_dir(&s).unwrap();
    let jobs = c.ok(&["list-jobs"]);
    assert!(
        jobs.lines().nth(2).unwrap().ends_with("DELETE space=42"),
        "{jobs}"
    );

    m.unmount();
    let out = c.ok(&["list-access-points"]);
    assert!(!out.contains("tshs mount"), "{out}");

    // The shell: every command, help, quit; the reference's `;;` ending works.
    let o = shell(&c, b"list-jobs;;\nlist-access-points\nbogus\nquit\n");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success());
    assert!(out.contains("DELETE space=42"), "{out}");
    assert!(out.contains("tshs shell;;pid="), "{out}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("unrecognized subcommand 'bogus'"), "{err}");
}

/// Runs the interactive shell with `input` on its standard input.
fn shell(c: &TestCluster, input: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tshs"))
        .arg("--mysql-cfg-file")
        .arg(&c.mycnf)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn shell_errors_carry_the_tshs_prefix() {
    let c = TestCluster::with_nodes();
    let o = shell(&c, b"delete-storage-node 99\nlist-jobs 'x\nquit\n");
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines.iter().all(|l| l.starts_with("tshs: error: ")),
        "{err}"
    );
}
