//! `tshs check`, the Nagios/Icinga plugin, against real clusters: OK with
//! its line and perfdata, WARNING from a threshold and from a stale access
//! point, CRITICAL from an unreachable Storage Node and from a missing or
//! hung mount, UNKNOWN from bad options.

mod common;

use std::time::{Duration, Instant};

use common::{Mount, TestCluster, root_conn, server};
use mysql::prelude::Queryable;

/// Runs `tshs check …`: (exit code, the one line it printed).
fn check(c: &TestCluster, args: &[&str]) -> (i32, String) {
    let mut all = vec!["check"];
    all.extend_from_slice(args);
    let o = c.tshs(&all);
    let out = String::from_utf8(o.stdout).unwrap();
    assert_eq!(out.lines().count(), 1, "one line expected: {out:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).trim().is_empty(),
        "nothing on stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let password = tshs::config::ConnOptions::parse(&server(1))
        .unwrap()
        .password
        .unwrap();
    assert!(!out.contains(&password), "the password was printed");
    (o.status.code().unwrap(), out.trim_end().to_string())
}

/// Response-time thresholds no loaded machine reaches, for checks that
/// assert a state or its message: with the default 500 ms a slow answer on
/// a busy CI machine turns OK into WARNING, or puts "slow" first.
const CALM: [&str; 4] = ["--warning", "60000", "--critical", "60000"];

/// `args` with the calm thresholds, and a timeout as generous unless given.
fn calm<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = CALM.to_vec();
    if !args.contains(&"--timeout") {
        all.extend(["--timeout", "60"]);
    }
    all.extend_from_slice(args);
    all
}

/// `name=value;…` of the perfdata.
fn perf<'a>(line: &'a str, name: &str) -> &'a str {
    let (_, perf) = line.split_once(" | ").expect("perfdata");
    perf.split(' ')
        .find_map(|p| p.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} in {line}"))
}

#[test]
fn ok_on_a_healthy_cluster() {
    let c = TestCluster::with_nodes();
    let (code, line) = check(&c, &calm(&[]));
    assert_eq!(code, 0, "{line}");
    assert!(line.starts_with("TSHS OK - admin "), "{line}");
    assert!(line.contains("2 of 2 storage nodes ok"), "{line}");
    assert!(line.contains("copy-shards backlog 0 spaces"), "{line}");
    assert!(line.contains("0 stale access points"), "{line}");
    for name in ["admin_ms", "node1_ms", "node2_ms"] {
        let v: Vec<&str> = perf(&line, name).split(';').collect();
        assert!(v[0].parse::<f64>().unwrap() >= 0.0, "{line}");
        assert_eq!(&v[1..], ["60000", "60000", "0"], "{line}");
    }
    assert_eq!(perf(&line, "backlog_copy_shards"), "0;;;0");
    assert_eq!(perf(&line, "stale_access_points"), "0;0;;0");

    // Without options the perfdata carries the default thresholds (the
    // state then depends on the machine's load: not asserted).
    let (_, line) = check(&c, &[]);
    assert!(perf(&line, "admin_ms").ends_with(";500;2000;0"), "{line}");
    let (_, perfdata) = line.split_once(" | ").unwrap();
    for p in perfdata.split(' ').filter(|p| p.contains("_ms=")) {
        assert!(p.ends_with(";500;2000;0"), "{p} in {line}");
    }
}

#[test]
fn warning_from_a_threshold_or_a_stale_access_point() {
    let c = TestCluster::with_nodes();
    // A generous critical threshold: only the warning one may be crossed.
    let (code, line) = check(
        &c,
        &["--warning", "0", "--critical", "60000", "--timeout", "60"],
    );
    assert_eq!(code, 1, "{line}");
    assert!(line.starts_with("TSHS WARNING - admin slow ("), "{line}");
    assert!(line.contains("storage node 2 slow ("), "{line}");

    root_conn(1)
        .query_drop(format!(
            "INSERT INTO {}.access_points (ack_epoch, access_time, description)
             VALUES (1, NOW() - INTERVAL 60 SECOND, 'tshs mount (died)')",
            c.admin_db
        ))
        .unwrap();
    let (code, line) = check(&c, &calm(&[]));
    assert_eq!(code, 1, "{line}");
    assert!(
        line.starts_with("TSHS WARNING - 1 stale access points"),
        "{line}"
    );
    assert_eq!(perf(&line, "stale_access_points"), "1;0;;0");
}

#[test]
fn critical_with_an_unreachable_storage_node() {
    let c = TestCluster::with_nodes();
    let mut admin = root_conn(1);
    let stored: String = admin
        .query_first(format!(
            "SELECT conn_options FROM {}.storage_nodes WHERE id = 2",
            c.admin_db
        ))
        .unwrap()
        .unwrap();
    let mut o = tshs::config::ConnOptions::parse(&stored).unwrap();
    o.port = Some(1);
    admin
        .exec_drop(
            format!(
                "UPDATE {}.storage_nodes SET conn_options = ? WHERE id = 2",
                c.admin_db
            ),
            (o.to_stored(),),
        )
        .unwrap();
    let (code, line) = check(&c, &calm(&[]));
    assert_eq!(code, 2, "{line}");
    assert!(
        line.starts_with("TSHS CRITICAL - storage node 2: cannot reach MySQL server"),
        "{line}"
    );
    assert!(line.contains("1 of 2 storage nodes ok"), "{line}");
    assert!(perf(&line, "node2_ms").starts_with("U;"), "{line}");
    assert!(!perf(&line, "node1_ms").starts_with('U'), "{line}");
}

#[test]
fn unknown_on_bad_options_and_config() {
    let c = TestCluster::with_nodes();
    for args in [
        &["--warning", "x"][..],
        &["--critical", "-1"],
        &["--warning", "10", "--critical", "5"],
        &["--bogus"],
        &["--timeout", "0"],
        &["extra"],
    ] {
        let (code, line) = check(&c, args);
        assert_eq!(code, 3, "{args:?}: {line}");
        assert!(line.starts_with("TSHS UNKNOWN - "), "{line}");
    }
    let (code, line) = check(&c, &["--mysql-cfg-file", "/nonexistent/my.cnf"]);
    assert_eq!(code, 3, "{line}");
    assert!(line.contains("/nonexistent/my.cnf"), "{line}");
    let o = c.tshs(&["check", "--help"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stdout).contains("--mountpoint"));
}

#[test]
fn mountpoint_ok_missing_and_hung() {
    let c = TestCluster::with_nodes();
    let m = Mount::new(&c, &[]);
    let mp = m.path().to_str().unwrap().to_string();
    let (code, line) = check(&c, &calm(&["--mountpoint", &mp]));
    assert_eq!(code, 0, "{line}");
    assert!(line.contains(&format!("mount {mp} ")), "{line}");
    assert!(!perf(&line, "mount_ms").starts_with('U'), "{line}");

    let plain = tempfile::tempdir().unwrap();
    let (code, line) = check(&c, &calm(&["--mountpoint", plain.path().to_str().unwrap()]));
    assert_eq!(code, 2, "{line}");
    assert!(line.contains("not mounted"), "{line}");
    assert!(perf(&line, "mount_ms").starts_with("U;"), "{line}");

    // A mount daemon that stops answering (SIGSTOP) is CRITICAL in time.
    let pid = nix::unistd::Pid::from_raw(m.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let t = Instant::now();
    let r = std::panic::catch_unwind(|| check(&c, &calm(&["--mountpoint", &mp, "--timeout", "2"])));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    let (code, line) = r.unwrap();
    assert_eq!(code, 2, "{line}");
    // The mount's own answer (on a loaded machine the databases' may be
    // late too).
    assert!(
        line.contains(&format!("mount {mp}: no answer within 2 s")),
        "{line}"
    );
    // Each probe waits 2 s at most: far below this even on a loaded machine,
    // while a plugin waiting on the hung mount never returns.
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
}

#[test]
fn the_s3_host_and_the_move_to_s3_backlog() {
    let c = TestCluster::with_nodes();
    let (_, line) = check(&c, &calm(&[]));
    assert!(line.contains("no S3 host"), "{line}");
    let endpoint = common::env("TSHS_S3_ENDPOINT");
    let bucket = c.new_bucket("check");
    let (ak, sk) = common::s3_keys();
    c.ok(&[
        "add-s3-host",
        "GENERIC",
        &endpoint,
        &bucket,
        ak,
        sk,
        "MinSize=1",
    ]);
    let (code, line) = check(&c, &calm(&[]));
    assert_eq!(code, 0, "{line}");
    assert!(line.contains("S3 host 1 "), "{line}");
    assert!(line.contains("move-to-s3 backlog 0 files"), "{line}");
    assert_eq!(perf(&line, "backlog_move_to_s3"), "0;;;0");
    assert!(!line.contains(sk), "the secret key was printed");
    // The store stops answering: CRITICAL, within the timeout.
    root_conn(1)
        .query_drop(format!(
            "UPDATE {}.s3_hosts SET server = 'http://127.0.0.1:1'",
            c.admin_db
        ))
        .unwrap();
    let t = Instant::now();
    let (code, line) = check(&c, &calm(&["--timeout", "3"]));
    assert_eq!(code, 2, "{line}");
    assert!(line.contains("S3 host 1"), "{line}");
    assert!(perf(&line, "s3_ms").starts_with("U;"), "{line}");
    // Three probes of 3 s at most, one after the other.
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
}
