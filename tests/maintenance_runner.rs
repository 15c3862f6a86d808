//! The maintenance runner against the real local MariaDB servers: bad input,
//! do-tasks, repeat, retries, and the daemon's --start/--stop.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{TestCluster, root_conn, server};
use mysql::prelude::Queryable;

/// `tshs` against the cluster with the log level the test needs.
fn tshs(c: &TestCluster, log: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tshs"));
    cmd.arg("--mysql-cfg-file")
        .arg(&c.mycnf)
        .args(args)
        .env("TSHS_LOG", log)
        .stdin(Stdio::null());
    cmd
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn sigterm(pid: u32) {
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
}

/// What a child wrote to a pipe so far, collected line by line while it
/// runs; the thread ends at the child's exit.
fn collect(pipe: impl std::io::Read + Send + 'static) -> (Arc<Mutex<String>>, JoinHandle<()>) {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let mut t = sink.lock().unwrap();
            t.push_str(&line);
            t.push('\n');
        }
    });
    (text, reader)
}

/// Waits (up to 60 s) until `done` holds; false if it never did.
fn wait_for(mut done: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while !done() {
        if t.elapsed() > Duration::from_secs(60) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// Alive and not a zombie waiting for its parent.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next())
            != Some("Z")
    })
}

#[test]
fn bad_input_fails_with_one_clear_line() {
    let c = TestCluster::with_nodes();
    let fails = |args: &[&str], want: &str| {
        let err = c.fails(args);
        assert!(err.contains(want), "{args:?}: {err}");
    };
    fails(&["do-tasks", "copy-shard"], "unknown task 'copy-shard'");
    fails(&["do-tasks"], "name at least one task");
    fails(
        &["repeat", "0", "list-volumes"],
        "'0' is not a number of seconds",
    );
    fails(
        &["repeat", "soon", "list-volumes"],
        "'soon' is not a number",
    );
    fails(&["repeat", "-5", "list-volumes"], "'-5' is not a number");
    fails(&["repeat", "5"], "no command to repeat");
    fails(
        &["repeat", "5", "list-volume"],
        "unrecognized subcommand 'list-volume'",
    );
    fails(&["repeat", "5", "list-files"], "<SPACE_ID>");
    fails(
        &[
            "repeat",
            "5",
            "list-jobs",
            "repeat",
            "9",
            "do-tasks",
            "bogus",
        ],
        "unknown task 'bogus'",
    );
    fails(&["repeat", "5", "list-jobs", "and"], "missing");
    fails(
        &["--storage-node", "99", "do-tasks", "all"],
        "no storage node 99",
    );
    fails(
        &["--start", "list-volumes"],
        "--start runs a repeat command",
    );
    let pid_file = c.dir.path().join("none.pid");
    fails(
        &["--stop", "--pid-file", pid_file.to_str().unwrap()],
        "not running",
    );
    let nowhere = "/nonexistent/dir/tshs";
    fails(
        &["--log-file", nowhere, "--start", "repeat", "1", "list-jobs"],
        "cannot open the log file /nonexistent/dir/tshs",
    );
    let log = c.dir.path().join("tshs.log");
    fails(
        &[
            "--log-file",
            log.to_str().unwrap(),
            "--pid-file",
            nowhere,
            "--start",
        ],
        "cannot open the pid file /nonexistent/dir/tshs",
    );
    let conf = c.dir.path().join("tshs.conf");
    std::fs::write(&conf, "max-threads=2\nstart\n").unwrap();
    let o = c.tshs(&["--config", conf.to_str().unwrap(), "list-jobs"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(text(&o.stderr).contains("start and stop belong on the command line"));
    fails(&["list-files", "999"], "there is no space 999");
    let db = c.new_db(2, "split");
    fails(
        &[
            "split-storage-node",
            "99",
            &format!("{};database={db}", server(2)),
        ],
        "there is no storage node 99",
    );
    fails(
        &["split-storage-node", "1", "bogus=1"],
        "unknown connection option",
    );

    // Bad option values too.
    fails(
        &["--retry", "banana", "do-tasks", "all"],
        "'banana' for '--retry",
    );
    fails(&["--retry", "-1", "do-tasks", "all"], "'-1' for '--retry");
    fails(
        &["--time-limit", "-5", "copy-shards"],
        "'-5' for '--time-limit",
    );
    fails(
        &["--pause-on-error", "2m", "copy-shards"],
        "'2m' for '--pause-on-error",
    );
    fails(&["remove-deleted", "--grace", "-1"], "'-1' for '--grace");
    fails(&["list-files", "x"], "'x' for '<SPACE_ID>'");
}

#[test]
fn tasks_with_nothing_to_do_say_so_in_the_reference_order() {
    let c = TestCluster::with_nodes();
    let out = c.ok(&["do-tasks", "copy-to-s3", "perform-import", "move-to-s3"]);
    // move-to-s3 and copy-to-s3 without an S3 host have nothing to do.
    assert_eq!(
        out,
        "perform-import: nothing to do\n\
         move-to-s3: nothing to do\n\
         copy-to-s3: nothing to do\n"
    );

    // The shell runs them too, and refuses repeat.
    let mut child = tshs(&c, "warn", &[])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"do-tasks perform-import\nrepeat 1 list-volumes\ndo-tasks nope\nquit\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    assert!(text(&o.stdout).contains("perform-import: nothing to do"));
    let err = text(&o.stderr);
    assert!(err.contains("repeat cannot run inside the shell"), "{err}");
    assert!(err.contains("unknown task 'nope'"), "{err}");
}

#[test]
fn repeat_runs_each_entry_on_its_own_schedule_until_the_time_limit() {
    let c = TestCluster::with_nodes();
    let t = Instant::now();
    let out = c.ok(&[
        "--time-limit",
        "3",
        "repeat",
        "1",
        "list-volumes",
        "and",
        "list-jobs",
        "repeat",
        "2",
        "tshs",
        "list-volumes",
    ]);
    let took = t.elapsed();
    // Not before the time limit; and it ends by itself (a loaded machine
    // may be slow to start and to finish the last step).
    assert!(
        took >= Duration::from_millis(2900) && took < Duration::from_secs(30),
        "{took:?}"
    );
    // Entry 1 runs at 0, 1, 2 s and entry 2 at 0, 2 s: a loaded machine may
    // miss rounds, but none comes sooner than its interval, so never more
    // than 3 and 2. Each round of entry 1 lists the volumes, then the jobs
    // (the time limit may fall between the two).
    let jobs = out.matches("ID Job Parameters").count();
    let volumes = out.matches("| vol01 | Operational |").count();
    assert!((1..=3).contains(&jobs), "{out}");
    // Entry 1 listed the volumes `jobs` or one more times (at most 3),
    // entry 2 once or twice.
    assert!(volumes > jobs && volumes <= (jobs + 1).min(3) + 2, "{out}");
}

#[test]
fn repeat_stops_cleanly_on_sigterm_and_keeps_going_after_errors() {
    let c = TestCluster::with_nodes();
    let mut child = tshs(
        &c,
        "warn",
        &["repeat", "1", "list-volumes", "and", "list-files", "999"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let (out, out_reader) = collect(child.stdout.take().unwrap());
    let (err, err_reader) = collect(child.stderr.take().unwrap());
    // Two rounds (at 0 and 1 s; later on a loaded machine): each listed
    // the volumes, and each list-files failed without stopping the next.
    let count = |text: &Mutex<String>, what: &str| text.lock().unwrap().matches(what).count();
    let two_rounds = wait_for(|| {
        count(&out, "| vol01 | Operational |") >= 2 && count(&err, "ERROR list-files 999: ") >= 2
    });
    let registered = c
        .ok(&["list-access-points"])
        .contains(&format!("tshs repeat;;pid={}", child.id()));
    sigterm(child.id());
    let t = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running 30 s after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    out_reader.join().unwrap();
    err_reader.join().unwrap();
    let (out, err) = (out.lock().unwrap(), err.lock().unwrap());
    assert!(two_rounds, "no two rounds in 60 s:\n{out}{err}");
    assert!(registered, "not an access point while running");
    assert!(status.success(), "{err}");
    assert!(!c.ok(&["list-access-points"]).contains("tshs repeat"));
}

#[test]
fn a_failed_task_is_retried_then_fails_with_one_line() {
    let c = TestCluster::with_nodes();
    // Storage node 2 cannot be reached any more.
    root_conn(1)
        .query_drop(format!(
            "UPDATE {}.storage_nodes SET conn_options = 'host=127.0.0.1;port=1;user=nobody;database=gone' WHERE id = 2",
            c.admin_db
        ))
        .unwrap();
    let t = Instant::now();
    let o = tshs(
        &c,
        "warn",
        &["--retry", "2", "--pause-on-error", "1", "remove-deleted"],
    )
    .output()
    .unwrap();
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(t.elapsed() >= Duration::from_secs(2));
    let retries: Vec<&str> = err
        .lines()
        .filter(|l| l.contains(" WARN remove-deleted: "))
        .collect();
    assert_eq!(retries.len(), 2, "{err}");
    assert!(retries[0].ends_with("; retry 1 in 1 s"), "{err}");
    assert!(retries[1].ends_with("; retry 2 in 1 s"), "{err}");
    let last = err.trim_end().lines().last().unwrap();
    assert!(last.starts_with("tshs: error: remove-deleted: "), "{err}");
}

/// Stops a daemon a failed test left running (by the PID it wrote).
struct DaemonGuard(PathBuf);

impl Drop for DaemonGuard {
    fn drop(&mut self) {
        if let Some(pid) = read_pid(&self.0) {
            sigterm(pid);
        }
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[test]
fn the_daemon_starts_logs_its_rounds_and_stops() {
    let c = TestCluster::with_nodes();
    let pid_file = c.dir.path().join("tshs.pid");
    let log_file = c.dir.path().join("tshs.log");
    let files = [
        "--pid-file",
        pid_file.to_str().unwrap(),
        "--log-file",
        log_file.to_str().unwrap(),
    ];
    fn join<'a>(a: &[&'a str], b: &[&'a str]) -> Vec<&'a str> {
        [a, b].concat()
    }
    let with = |more: &[&'static str]| join(&files, more);
    let _guard = DaemonGuard(pid_file.clone());

    let o = tshs(
        &c,
        "info",
        &with(&["--start", "repeat", "1", "list-volumes"]),
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let pid = read_pid(&pid_file).expect("the pid file names the daemon");
    assert!(alive(pid));
    assert!(
        c.ok(&["list-access-points"])
            .contains(&format!("tshs repeat;;pid={pid}"))
    );

    let err = c.fails(&with(&["--start", "repeat", "1", "list-volumes"]));
    assert!(
        err.contains(&format!("tshs is already running (pid {pid}, pid file")),
        "{err}"
    );

    // Two rounds logged (at 0 and 1 s; later on a loaded machine).
    let rounds = || {
        std::fs::read_to_string(&log_file)
            .unwrap_or_default()
            .matches("INFO | 1  | vol01 | Operational |")
            .count()
    };
    let two_rounds = wait_for(|| rounds() >= 2);
    let out = c.ok(&with(&["--stop"]));
    assert_eq!(out, format!("tshs (pid {pid}) stopped\n"));
    assert!(!pid_file.exists());
    assert!(!alive(pid));
    assert!(!c.ok(&["list-access-points"]).contains("tshs repeat"));

    let log = std::fs::read_to_string(&log_file).unwrap();
    assert!(two_rounds, "no two rounds in 60 s: {log}");
    assert!(log.contains(&format!(
        "INFO tshs daemon started (pid {pid}): repeat 1 list-volumes"
    )));
    assert!(log.contains("INFO SIGTERM: stopping after the current step"));
    assert!(
        log.trim_end().ends_with("INFO tshs daemon stopped"),
        "{log}"
    );

    // Stopped: stopping again says so, and a stale pid file does not block a start.
    assert!(c.fails(&with(&["--stop"])).contains("not running"));
    std::fs::write(&pid_file, "1\n").unwrap();
    assert!(
        c.fails(&with(&["--stop"]))
            .contains("removed the stale pid file")
    );
    std::fs::write(&pid_file, "1\n").unwrap();
    c.ok(&with(&["--start", "repeat", "60", "list-jobs"]));
    let pid2 = read_pid(&pid_file).unwrap();
    assert_ne!(pid2, 1);
    c.ok(&with(&["--stop"]));
    assert!(!alive(pid2));
}

/// The commands of the core's tasks, through the runner.
#[test]
fn split_then_copy_shards_and_list_files() {
    let c = TestCluster::with_nodes();
    let out = c.ok(&["do-tasks", "all"]);
    for task in ["copy-shards", "remove-deleted", "copy-to-s3"] {
        assert!(
            out.contains(&format!("\n{task}: ")) || out.starts_with(task),
            "{out}"
        );
    }

    let m = c.mount();
    let space = m.space(3);
    std::fs::create_dir(space.join("protolog")).unwrap();
    std::fs::write(space.join("protolog/last.log"), b"hello").unwrap();
    let out = c.ok(&["list-files", "3"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["Inode", "Size", "State", "Path"]
    );
    assert!(lines[2].ends_with(" 5    InDB  protolog/last.log"), "{out}");

    let db = c.new_db(2, "split");
    let out = c.ok(&[
        "split-storage-node",
        "1",
        &format!("{};database={db}", server(2)),
    ]);
    assert!(out.starts_with("Storage node 3 created (MIRROR_SHARD; run tshs copy-shards)\n"));
    assert!(out.contains("MIRROR_SHARD"));
    c.ok(&["copy-shards"]);
    assert!(!c.ok(&["list-storage-nodes"]).contains("MIRROR_SHARD"));
    assert_eq!(
        std::fs::read(space.join("protolog/last.log")).unwrap(),
        b"hello"
    );
}
