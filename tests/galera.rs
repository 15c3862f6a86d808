//! tshs on a 3-member MariaDB Galera cluster (`scripts/services start
//! galera`, which scripts/test runs; without it these tests fail, never
//! skip): the Admin Node and a Storage Node each name all three members.
//! Writers on a real mount append with fsync and create files while the
//! member they use is killed with SIGKILL: every acknowledged record and
//! file must be there exactly once, and writes must resume on another member
//! within a bound, without a remount; the killed member rejoins by IST.

mod common;

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{TestCluster, unique};
use mysql::prelude::Queryable;
use tshs::config::ConnOptions;
use tshs::db::{Body, Db, Failed, Once, TxError};

/// Writes must resume on another member within this long of the kill.
const FAILOVER_BOUND: Duration = Duration::from_secs(10);

fn state() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(".state")
}

fn services(action: &str, which: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/services");
    let st = Command::new(script).args([action, which]).status().unwrap();
    assert!(st.success(), "scripts/services {action} {which} failed");
}

/// The cluster's members' options (no database): `TSHS_GALERA`, else
/// scripts/services' fixed ports with the test user of server 1.
fn galera_options() -> String {
    std::env::var("TSHS_GALERA").unwrap_or_else(|_| {
        let o = ConnOptions::parse(&common::server(1)).unwrap();
        format!(
            "host=127.0.0.1:3321,127.0.0.1:3322,127.0.0.1:3323;user={};password={}",
            o.user.unwrap(),
            o.password.unwrap()
        )
    })
}

fn members() -> ConnOptions {
    ConnOptions::parse(&galera_options()).unwrap()
}

fn member_conn(i: usize) -> mysql::Conn {
    let m = &members().members()[i];
    mysql::Conn::new(m.to_mysql()).unwrap_or_else(|e| {
        panic!(
            "Galera member {} is not reachable (scripts/services start galera): {e}",
            m.server()
        )
    })
}

fn synced(c: &mut mysql::Conn) -> bool {
    let v: Option<(String, String)> = c
        .query_first("SHOW STATUS LIKE 'wsrep_local_state'")
        .unwrap_or(None);
    v.is_some_and(|(_, s)| s == "4")
}

/// The tests kill members: one at a time. Each holds the guard.
static SERIAL: Mutex<()> = Mutex::new(());

/// All three members up and synced (starting any that is not, e.g. after an
/// earlier run failed half-way); holds the tests' guard.
fn all_members_synced() -> std::sync::MutexGuard<'static, ()> {
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = Instant::now();
    services("start", "galera");
    for i in 0..3 {
        while !synced(&mut member_conn(i)) {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "member {i} never synced"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    guard
}

fn pid_of(member: usize) -> i32 {
    let f = state().join(format!("galera{}/mysqld.pid", member + 1));
    std::fs::read_to_string(&f).unwrap().trim().parse().unwrap()
}

/// Databases made on the Galera cluster for one test, dropped after.
struct GaleraDbs(Vec<String>);

impl GaleraDbs {
    /// Created through the first member, and waited for on every member
    /// that answers: another applies it a moment later, and a check made
    /// through it (`update-storage-node`) must find it.
    fn create(&mut self, tag: &str) -> String {
        let db = unique(tag);
        member_conn(0)
            .query_drop(format!("CREATE DATABASE {db}"))
            .unwrap();
        self.0.push(db.clone());
        for i in 0..3 {
            let Ok(mut c) = mysql::Conn::new(members().members()[i].to_mysql()) else {
                continue;
            };
            // Reads wait until this member applied what the cluster did.
            c.query_drop("SET SESSION wsrep_sync_wait = 1").unwrap();
            let found: Option<String> = c
                .exec_first(
                    "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
                    (&db,),
                )
                .unwrap();
            assert_eq!(found.as_deref(), Some(&*db), "member {i} has {db}");
        }
        db
    }
}

impl Drop for GaleraDbs {
    fn drop(&mut self) {
        for db in &self.0 {
            for i in 0..3 {
                if let Ok(mut c) = mysql::Conn::new(members().members()[i].to_mysql())
                    && c.query_drop(format!("DROP DATABASE IF EXISTS {db}"))
                        .is_ok()
                {
                    break;
                }
            }
        }
    }
}

/// An Admin Node and one Storage Node, both on the Galera cluster (all
/// three members named), and volume `vol01`.
fn galera_cluster(dbs: &mut GaleraDbs) -> TestCluster {
    galera_admin(dbs, true)
}

/// An Admin Node on the Galera cluster, a Storage Node on it too or on
/// MariaDB server 2, and volume `vol01`.
fn galera_admin(dbs: &mut GaleraDbs, galera_node: bool) -> TestCluster {
    let t = Instant::now();
    let c = admin_on_galera(dbs);
    if galera_node {
        let st = dbs.create("gst");
        c.ok(&[
            "create-storage-node",
            &format!("{};database={st}", galera_options()),
        ]);
    } else {
        let st = c.new_db(2, "st");
        c.ok(&[
            "create-storage-node",
            &format!("{};database={st}", common::server(2)),
        ]);
    }
    c.ok(&["create-volume", "vol01"]);
    eprintln!("galera: cluster made in {:?}", t.elapsed());
    c
}

/// An Admin Node on the Galera cluster (all three members named), no
/// Storage Node yet.
fn admin_on_galera(dbs: &mut GaleraDbs) -> TestCluster {
    let dir = tempfile::tempdir().unwrap();
    let admin_db = dbs.create("gadmin");
    let m = members();
    let mycnf = dir.path().join("my.cnf");
    std::fs::write(
        &mycnf,
        format!(
            "[tshs]\nhost={}\nuser={}\npassword={}\ndatabase={admin_db}\n",
            m.host.as_deref().unwrap(),
            m.user.as_deref().unwrap(),
            m.password.as_deref().unwrap()
        ),
    )
    .unwrap();
    let c = TestCluster {
        dir,
        mycnf,
        admin_db,
        dbs: Default::default(),
        buckets: Default::default(),
    };
    c.ok(&["create-admin-node"]);
    c
}

/// The members that hold connections to database `db` (the ones in use).
fn members_in_use(db: &str) -> Vec<usize> {
    (0..3)
        .filter(|&i| {
            let Ok(mut c) = mysql::Conn::new(members().members()[i].to_mysql()) else {
                return false;
            };
            // The test user's sessions, not the appliers' (`system user`).
            let n: Option<u64> = c
                .exec_first(
                    "SELECT COUNT(*) FROM information_schema.processlist WHERE db = ? AND user = ?",
                    (db, members().user.unwrap()),
                )
                .unwrap_or(None);
            n.unwrap_or(0) > 0
        })
        .collect()
}

/// What a writer did: records acknowledged (write and fsync returned) and
/// the times of its acknowledgements.
#[derive(Default)]
struct Log {
    acked: Vec<u64>,
    times: Vec<Instant>,
    errors: Vec<String>,
}

/// Records the outcome of operation `i` (`what` names it in errors); after
/// an error, the caller pauses a little.
fn note(log: &Mutex<Log>, what: &str, i: u64, r: std::io::Result<()>) {
    let mut l = log.lock().unwrap();
    match r {
        Ok(()) => {
            l.acked.push(i);
            l.times.push(Instant::now());
        }
        Err(e) => {
            l.errors.push(format!("{what} {i}: {e}"));
            drop(l);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

const RECORD: usize = 26;

fn record(writer: usize, i: u64) -> Vec<u8> {
    let r = format!("w{writer:02} {i:012} ........\n").into_bytes();
    assert_eq!(r.len(), RECORD);
    r
}

/// Appends fixed-size records with fsync until `stop`; one file per writer.
fn appender(path: PathBuf, writer: usize, stop: Arc<AtomicBool>, log: Arc<Mutex<Log>>) {
    let mut f = OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .unwrap();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let r = f.write_all(&record(writer, i)).and_then(|_| f.sync_all());
        note(&log, "record", i, r);
    }
}

/// Creates files until `stop`; a create that reports EEXIST would be one
/// applied twice.
fn creator(dir: PathBuf, stop: Arc<AtomicBool>, log: Arc<Mutex<Log>>) {
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let r = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(dir.join(format!("f{i:06}")))
            .and_then(|f| f.sync_all());
        note(&log, "file", i, r);
    }
}

/// No writer met an error, and each was acknowledged while the Admin Node
/// was away (`acked`: see [`SpaceNineLoad::acked_between`]).
fn went_on_without_the_admin_node(errors: &[String], acked: &[usize]) {
    assert!(
        errors.is_empty(),
        "no error while the Admin Node is down: {errors:?}"
    );
    assert!(
        acked.iter().all(|n| *n > 0),
        "writes and creates went on without the Admin Node: {acked:?}"
    );
}

/// Load on space 9 while the Admin Node is away: 2 appenders with fsync
/// (one per mount) and a creator (through the second mount).
struct SpaceNineLoad {
    stop: Arc<AtomicBool>,
    logs: Vec<Arc<Mutex<Log>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl SpaceNineLoad {
    fn start(mounts: &[common::Mount; 2]) -> SpaceNineLoad {
        mounts[0].space(9);
        std::fs::create_dir(mounts[0].path().join("vol01/9/made")).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let logs: Vec<Arc<Mutex<Log>>> = (0..3).map(|_| Arc::default()).collect();
        let mut threads = Vec::new();
        for (w, mount) in mounts.iter().enumerate() {
            let path = mount.path().join(format!("vol01/9/log{w}"));
            let (stop, log) = (stop.clone(), logs[w].clone());
            threads.push(std::thread::spawn(move || appender(path, w, stop, log)));
        }
        let dir = mounts[1].path().join("vol01/9/made");
        let (stop2, log) = (stop.clone(), logs[2].clone());
        threads.push(std::thread::spawn(move || creator(dir, stop2, log)));
        SpaceNineLoad {
            stop,
            logs,
            threads,
        }
    }

    /// Each one's acknowledgements between `from` and `to`.
    fn acked_between(&self, from: Instant, to: Instant) -> Vec<usize> {
        self.logs
            .iter()
            .map(|l| {
                let l = l.lock().unwrap();
                l.times.iter().filter(|t| **t > from && **t < to).count()
            })
            .collect()
    }

    /// Stops them: the errors they met.
    fn stop(&mut self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
        self.logs
            .iter()
            .flat_map(|l| l.lock().unwrap().errors.clone())
            .collect()
    }

    /// Through `m`: every acknowledged record once, in order, and every
    /// acknowledged file.
    fn check(&self, m: &common::Mount) {
        for (w, log) in self.logs.iter().enumerate().take(2) {
            let data = std::fs::read(m.path().join(format!("vol01/9/log{w}"))).unwrap();
            let got: Vec<u64> = data
                .chunks(RECORD)
                .map(|r| std::str::from_utf8(&r[4..16]).unwrap().parse().unwrap())
                .collect();
            assert_eq!(
                got,
                log.lock().unwrap().acked,
                "writer {w}: every acknowledged record once, in order"
            );
        }
        let names = std::fs::read_dir(m.path().join("vol01/9/made"))
            .unwrap()
            .count();
        assert_eq!(names, self.logs[2].lock().unwrap().acked.len());
    }
}

/// The longest pause of acknowledgements that spans `t`.
fn gap_around(times: &[Instant], t: Instant) -> Duration {
    let before = times.iter().filter(|x| **x <= t).max();
    let after = times.iter().filter(|x| **x > t).min();
    match (before, after) {
        (Some(b), Some(a)) => *a - *b,
        _ => Duration::MAX,
    }
}

fn count(log: &str, what: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches(what)
        .count()
}

/// The member writers use killed with SIGKILL under 4 appenders (fsync
/// each record) on 2 mounts and a creator: writes resume on another member
/// within the bound, every acknowledged record and file is there exactly
/// once, nothing is duplicated, and the killed member rejoins by IST.
#[test]
fn the_member_in_use_killed_under_appenders() {
    let _serial = all_members_synced();
    let mut dbs = GaleraDbs(Vec::new());
    let c = galera_cluster(&mut dbs);
    let st_db = dbs.0[1].clone();
    let mounts = [c.mount(), c.mount()];
    let space = mounts[0].space(7);
    let stop = Arc::new(AtomicBool::new(false));
    let logs: Vec<Arc<Mutex<Log>>> = (0..5).map(|_| Arc::default()).collect();
    let mut threads = Vec::new();
    for w in 0..4 {
        let path = mounts[w % 2].path().join(format!("vol01/7/log{w}"));
        let (stop, log) = (stop.clone(), logs[w].clone());
        threads.push(std::thread::spawn(move || appender(path, w, stop, log)));
    }
    {
        std::fs::create_dir(space.join("made")).unwrap();
        let dir = mounts[1].path().join("vol01/7/made");
        let (stop, log) = (stop.clone(), logs[4].clone());
        threads.push(std::thread::spawn(move || creator(dir, stop, log)));
    }
    std::thread::sleep(Duration::from_secs(3));

    let in_use = members_in_use(&st_db);
    assert_eq!(in_use.len(), 1, "one member in use (sticky): {in_use:?}");
    let victim = in_use[0];
    // State transfers the other members served by IST ("Bypassing state
    // dump"), so far.
    let donors_bypass_count = || -> usize {
        (0..3)
            .filter(|i| *i != victim)
            .map(|i| {
                count(
                    &state()
                        .join(format!("galera{}/error.log", i + 1))
                        .to_string_lossy(),
                    "Bypassing state dump",
                )
            })
            .sum()
    };
    let donors_bypass = donors_bypass_count();
    let killed_at = Instant::now();
    kill_member(victim);
    let moved = loop {
        let m = members_in_use(&st_db);
        if !m.is_empty() && !m.contains(&victim) {
            break m;
        }
        assert!(
            killed_at.elapsed() < FAILOVER_BOUND * 2,
            "writers did not move off member {victim}: {m:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        moved.len(),
        1,
        "all processes moved to one member: {moved:?}"
    );
    // tshs check warns: a member of the Admin Node's and the node's cluster is gone.
    // (Given 30 s: a member may hold a query until the cluster's new view
    // forms, which Galera's suspect timeout, 5 s, can delay; once the check
    // failed with "Admin Node: no answer within 5 s".)
    let o = c.tshs(&[
        "check",
        "--warning",
        "60000",
        "--critical",
        "60000",
        "--timeout",
        "30",
    ]);
    let line = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(o.status.code(), Some(1), "{line}");
    // The node's id depends on the member that took the insert (Galera
    // interleaves AUTO_INCREMENT values by member).
    let node_members = line
        .split_whitespace()
        .any(|w| w.starts_with("node") && w.ends_with("_members=2;;;0;3"));
    assert!(
        line.matches("2 of 3 Galera members synced").count() == 2
            && line.contains("Admin Node: 2 of 3 Galera members synced")
            && node_members,
        "{line}"
    );
    std::thread::sleep(Duration::from_secs(3));

    // The killed member rejoins (its position recovered: IST, not SST)
    // while the writers go on.
    let t = Instant::now();
    services("start", &format!("galera{}", victim + 1));
    let rejoin = t.elapsed();
    let donors_bypass_after = donors_bypass_count();
    assert_eq!(
        donors_bypass_after,
        donors_bypass + 1,
        "the killed member caught up by IST (a donor bypassed the state dump)"
    );
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }

    // Resumed within the bound, on every writer.
    let mut worst = Duration::ZERO;
    for (w, l) in logs.iter().enumerate() {
        let l = l.lock().unwrap();
        let gap = gap_around(&l.times, killed_at);
        assert!(
            gap < FAILOVER_BOUND,
            "writer {w}: acknowledgements paused {gap:?} around the kill (errors: {:?})",
            l.errors
        );
        worst = worst.max(gap);
    }

    // Read back through a fresh mount on the (possibly other) member.
    drop(mounts);
    let m = c.mount();
    let mut lost = 0;
    let mut duplicated = 0;
    let mut acked_total = 0;
    for (w, log) in logs.iter().enumerate().take(4) {
        let data = std::fs::read(m.path().join(format!("vol01/7/log{w}"))).unwrap();
        assert_eq!(data.len() % RECORD, 0, "writer {w}: torn record");
        let mut seen = std::collections::HashMap::<u64, usize>::new();
        for r in data.chunks(RECORD) {
            let text = std::str::from_utf8(r).unwrap();
            assert!(
                text.starts_with(&format!("w{w:02} ")),
                "writer {w}: foreign record {text:?}"
            );
            let i: u64 = text[4..16].parse().unwrap();
            assert_eq!(r, record(w, i).as_slice(), "writer {w}: bad record");
            *seen.entry(i).or_default() += 1;
        }
        duplicated += seen.values().filter(|n| **n > 1).count();
        let l = log.lock().unwrap();
        acked_total += l.acked.len();
        lost += l.acked.iter().filter(|i| !seen.contains_key(i)).count();
    }
    let errors: usize = logs.iter().map(|l| l.lock().unwrap().errors.len()).sum();
    for (w, l) in logs.iter().enumerate() {
        let l = l.lock().unwrap();
        if let (Some(first), Some(last)) = (l.errors.first(), l.errors.last()) {
            eprintln!("writer {w}: {} errors: {first} … {last}", l.errors.len());
        }
    }
    let made = logs[4].lock().unwrap();
    let names: std::collections::HashSet<String> = std::fs::read_dir(m.path().join("vol01/7/made"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let files_lost = made
        .acked
        .iter()
        .filter(|i| !names.contains(&format!("f{i:06}")))
        .count();
    let eexist = made.errors.iter().filter(|e| e.contains("exists")).count();
    eprintln!(
        "galera failover: member {victim} killed; {acked_total} records and {} files acknowledged; \
         worst pause of acknowledgements {worst:?} (bound {FAILOVER_BOUND:?}); {lost} lost, \
         {duplicated} duplicated, {files_lost} files lost, {eexist} creates answered EEXIST; \
         rejoin by IST {rejoin:?}; writer errors: {}",
        made.acked.len(),
        errors
    );
    assert_eq!(lost, 0, "acknowledged records lost");
    assert_eq!(duplicated, 0, "records applied twice");
    assert_eq!(files_lost, 0, "acknowledged files lost");
    assert_eq!(
        eexist, 0,
        "a create applied twice answers EEXIST: {:?}",
        made.errors
    );
    assert!(acked_total > 0 && !made.acked.is_empty());
}

/// A transaction whose COMMIT was answered by a lost connection runs again
/// through `db::once` without being applied twice; one that did not
/// commit is applied by the run again. Certification conflicts of two
/// members writing one row are retried like deadlocks.
#[test]
fn unknown_commit_outcomes_apply_once_and_conflicts_are_retried() {
    let _serial = all_members_synced();
    let mut dbs = GaleraDbs(Vec::new());
    let db_name = dbs.create("gonce");
    let opts = ConnOptions::parse(&format!("{};database={db_name}", galera_options())).unwrap();
    let db = Db::connect(&opts, 4).unwrap();
    db.exec_drop(
        "CREATE TABLE applied_ops (writer BINARY(8) NOT NULL, lane INT UNSIGNED NOT NULL,
         seq BIGINT UNSIGNED NOT NULL, at BIGINT NOT NULL, PRIMARY KEY (writer, lane))",
    )
    .unwrap();
    db.exec_drop("CREATE TABLE t (id INT PRIMARY KEY, n INT NOT NULL)")
        .unwrap();
    db.exec_drop("INSERT INTO t VALUES (1, 0)").unwrap();
    // The Storage Node's statements (shard::schema::APPLIED_OPS).
    let log = tshs::db::OpLog {
        check: "SELECT seq FROM applied_ops WHERE writer = ? AND lane = ? FOR UPDATE",
        record: "INSERT INTO applied_ops (writer, lane, seq, at) VALUES (?, ?, ?, ?)
                 ON DUPLICATE KEY UPDATE seq = VALUES(seq), at = VALUES(at)",
    };
    let lost_answer = || {
        TxError::Commit(tshs::db::DbError::Unreachable {
            server: "test".into(),
            detail: "Lost connection to server during query".into(),
        })
    };
    let bump = |tx: &mut mysql::Transaction<'_>| -> Result<(), Body<()>> {
        tx.query_drop("UPDATE t SET n = n + 1 WHERE id = 1")?;
        Ok(())
    };
    // Committed, but the answer "lost": the run again finds it applied.
    let mut runs = 0;
    let r = tshs::db::once(
        &log,
        |body: &mut tshs::db::OnceBody<'_, (), ()>| {
            runs += 1;
            let r = db.tx_body(body);
            if runs == 1 {
                assert_eq!(r.unwrap(), Once::Done(()));
                return Err(Failed::Tx(lost_answer()));
            }
            r
        },
        bump,
    );
    assert_eq!(r.unwrap(), Once::AlreadyDone);
    assert_eq!(runs, 2);
    // A transaction that records its operation itself (a one-trip batch):
    // asked afterwards, the node says whether it landed.
    let op = tshs::db::OpId::next();
    assert!(!db.was_applied(&log, &op).unwrap());
    db.tx(|tx| {
        tx.exec_drop(log.record, op.record_params())?;
        tx.query_drop("UPDATE t SET n = n + 1 WHERE id = 1")
    })
    .unwrap();
    assert!(db.was_applied(&log, &op).unwrap());
    assert!(!db.was_applied(&log, &tshs::db::OpId::next()).unwrap());
    // Not committed, answer lost: the run again applies it.
    let mut runs = 0;
    let r = tshs::db::once(
        &log,
        |body: &mut tshs::db::OnceBody<'_, (), ()>| {
            runs += 1;
            if runs == 1 {
                return Err(Failed::Tx(lost_answer()));
            }
            db.tx_body(body)
        },
        bump,
    );
    assert_eq!(r.unwrap(), Once::Done(()));
    let n: Option<i32> = db
        .read(|c| c.query_first("SELECT n FROM t WHERE id = 1"))
        .unwrap();
    assert_eq!(n, Some(3), "each operation applied exactly once");

    // Two members incrementing one row at once: certification failures
    // (1213) are retried, no increment is lost.
    let per = 100;
    let threads: Vec<_> = [0usize, 1]
        .into_iter()
        .map(|i| {
            let m = opts.members()[i].clone();
            std::thread::spawn(move || {
                let db = Db::connect(&m, 1).unwrap();
                for _ in 0..per {
                    db.tx(|tx| tx.query_drop("UPDATE t SET n = n + 1 WHERE id = 1"))
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let n: Option<i32> = db
        .read(|c| c.query_first("SELECT n FROM t WHERE id = 1"))
        .unwrap();
    assert_eq!(n, Some(3 + 2 * per));
}

/// Options naming a dead member first connect to the next one; bad member
/// lists are refused with the reason.
#[test]
fn a_dead_first_member_is_skipped_and_bad_lists_are_refused() {
    let _serial = all_members_synced();
    let mut dbs = GaleraDbs(Vec::new());
    let db_name = dbs.create("gdead");
    let m = members();
    let live = m.host.as_deref().unwrap();
    // Port 1 on loopback: nothing listens there.
    let opts = ConnOptions::parse(&format!(
        "host=127.0.0.1:1,{live};user={};password={};database={db_name}",
        m.user.as_deref().unwrap(),
        m.password.as_deref().unwrap()
    ))
    .unwrap();
    let db = Db::connect(&opts, 2).unwrap();
    assert_eq!(db.member().port, members().members()[0].port);
    // Reads after a move wait for the cluster's writes.
    let wait: Option<u32> = db
        .read(|c| c.query_first("SELECT @@SESSION.wsrep_sync_wait"))
        .unwrap();
    assert_eq!(wait, Some(1));
    let err = format!(
        "{:#}",
        ConnOptions::parse("host=127.0.0.1:3321,127.0.0.1:3321").unwrap_err()
    );
    assert!(err.contains("names a server twice"), "{err}");

    // A node whose members are not one Galera cluster's: refused, nothing made.
    let c = galera_cluster(&mut dbs);
    let plain = ConnOptions::parse(&common::server(1)).unwrap();
    let bad = format!(
        "host={live},{}:{};user={};password={};database={}",
        plain.host.as_deref().unwrap(),
        plain.port.unwrap(),
        m.user.as_deref().unwrap(),
        m.password.as_deref().unwrap(),
        db_name
    );
    let err = c.fails(&["create-storage-node", &bad]);
    assert!(err.contains("not a member of a Galera cluster"), "{err}");
    assert!(!err.contains(m.password.as_deref().unwrap()), "{err}");
    assert_eq!(c.cluster().nodes().unwrap().len(), 1);
    let tables: Vec<String> = member_conn(0)
        .exec(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = ?",
            (&db_name,),
        )
        .unwrap();
    assert!(tables.is_empty(), "{tables:?}");
}

/// A move's fence set through one member stops a writer in flight on
/// another: the triggers' share lock is local to a member, but applying the
/// fence's row there aborts the transaction holding it (Galera's
/// brute-force abort, error 1213, retried by tshs), and the retry meets
/// the fence (1644).
#[test]
fn a_fence_set_on_one_member_stops_writers_on_another() {
    let _serial = all_members_synced();
    let mut dbs = GaleraDbs(Vec::new());
    let c = galera_cluster(&mut dbs);
    let st_db = dbs.0[1].clone();
    let conn = |i: usize| {
        let mut c = member_conn(i);
        c.query_drop(format!("USE {st_db}")).unwrap();
        c.query_drop("SET SESSION wsrep_sync_wait = 1").unwrap();
        c
    };
    conn(0)
        .query_drop("INSERT INTO space_fence (space_id) VALUES (5)")
        .unwrap();
    let mut writer = conn(1);
    writer.query_drop("START TRANSACTION").unwrap();
    writer
        .query_drop("INSERT INTO xattrs (space_id, ino, name, value) VALUES (5, 1, 'a', 'b')")
        .unwrap();
    conn(0)
        .query_drop(
            "UPDATE space_fence SET fenced_until = UTC_TIMESTAMP(3) + INTERVAL 1 MINUTE WHERE space_id = 5",
        )
        .unwrap();
    // Until member 1 applied the fence, the writer there may still commit
    // (it was seen so on a loaded machine): a causal read there waits for it.
    let _: Option<Option<String>> = conn(1)
        .query_first("SELECT fenced_until FROM space_fence WHERE space_id = 5")
        .unwrap();
    let code = |r: Result<(), mysql::Error>| match r {
        Err(mysql::Error::MySqlError(e)) => e.code,
        other => panic!("expected an SQL error, got {other:?}"),
    };
    assert_eq!(
        code(writer.query_drop("COMMIT")),
        1213,
        "the writer in flight aborted"
    );
    assert_eq!(
        code(
            writer.query_drop(
                "INSERT INTO xattrs (space_id, ino, name, value) VALUES (5, 1, 'a', 'b')"
            )
        ),
        1644,
        "the retry meets the fence"
    );
    let n: Option<u64> = conn(2)
        .query_first("SELECT COUNT(*) FROM xattrs WHERE space_id = 5")
        .unwrap();
    assert_eq!(n, Some(0));
    drop(c);
}

/// The Admin Node unreachable (every member of its Galera cluster killed)
/// for longer than a process trusts its cached placement unconfirmed, under
/// 2 appenders with fsync on 2 mounts and a creator, the Storage Node (on
/// server 2) up: the I/O goes on, confirmed by the node's fence rows,
/// without an error; nothing is lost or duplicated once it is back.
#[test]
fn io_goes_on_while_the_admin_node_is_unreachable() {
    let _serial = all_members_synced();
    let mut dbs = GaleraDbs(Vec::new());
    let c = galera_admin(&mut dbs, false);
    let mounts = [c.mount(), c.mount()];
    let mut load = SpaceNineLoad::start(&mounts);
    std::thread::sleep(Duration::from_secs(2));
    let down_at = Instant::now();
    for i in 0..3 {
        kill_member(i);
    }
    // Past STALE_AFTER (20 s): placement is then confirmed by the node.
    std::thread::sleep(Duration::from_secs(30));
    let acked_while_down = load.acked_between(down_at + Duration::from_secs(22), Instant::now());
    let t = Instant::now();
    services("start", "galera");
    let back = t.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let errors = load.stop();
    eprintln!(
        "admin node down 30 s: acknowledged in its last 8 s {acked_while_down:?} (appenders, creator); \
         {} errors, first {:?}; cluster back in {back:?}",
        errors.len(),
        errors.iter().take(3).collect::<Vec<_>>()
    );
    went_on_without_the_admin_node(&errors, &acked_while_down);
    drop(mounts);
    let m = c.mount();
    load.check(&m);
}

/// A split under way when the Admin Node dies: the node on server 2 is
/// split onto a new node on server 1 and `copy-shards` is moving its spaces
/// when every member of the Admin Node's Galera cluster is killed, for
/// 60 s, under 2 appenders with fsync on 2 mounts and a creator. No writer
/// sees an error; copy-shards, which cannot reach the Admin Node, exits at
/// once with one line of error (one that waited would have to finish by
/// itself); once the Admin Node is back a rerun finishes the split, taking
/// over the move the dead run held (its 30 s lease lapsed): the new
/// node is ACTIVE_SHARD, every space is on the node its key says, every
/// acknowledged record and file is there once.
#[test]
fn a_split_under_way_finishes_after_the_admin_node_was_unreachable() {
    let _serial = all_members_synced();
    let t0 = Instant::now();
    let mut dbs = GaleraDbs(Vec::new());
    let c = galera_admin(&mut dbs, false);
    let mounts = [c.mount(), c.mount()];
    // Enough spaces that copy-shards is still moving them at the kill.
    let spaces: Vec<u32> = (1..=40).map(|i| i * 104_395_301).collect();
    for &s in &spaces {
        std::fs::write(
            mounts[0].space(s).join("f"),
            common::pattern(s.into(), 1 << 20),
        )
        .unwrap();
    }
    let mut load = SpaceNineLoad::start(&mounts);
    let old = node_id(&c);
    let new_db = c.new_db(1, "split");
    let out = c.ok(&[
        "split-storage-node",
        &old.to_string(),
        &format!("{};database={new_db}", common::server(1)),
    ]);
    assert!(out.contains("MIRROR_SHARD"), "{out}");
    let mut copier = Command::new(env!("CARGO_BIN_EXE_tshs"))
        .arg("--mysql-cfg-file")
        .arg(&c.mycnf)
        .arg("copy-shards")
        .env("TSHS_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        copier.try_wait().unwrap().is_none(),
        "copy-shards already done before the kill: too little to move"
    );
    let moved_before = c.ok(&["list-storage-nodes"]);
    let down_at = Instant::now();
    for i in 0..3 {
        kill_member(i);
    }
    // Watch copy-shards while the Admin Node is gone.
    let mut exited_down = None;
    while down_at.elapsed() < Duration::from_secs(60) {
        if exited_down.is_none()
            && let Some(st) = copier.try_wait().unwrap()
        {
            exited_down = Some((down_at.elapsed(), st));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let acked_while_down = load.acked_between(
        down_at + Duration::from_secs(22),
        down_at + Duration::from_secs(60),
    );
    let t = Instant::now();
    services("start", "galera");
    let back = t.elapsed();
    let back_at = Instant::now();
    // A copy-shards still running (it waited) finishes by itself.
    let st = copier.wait().unwrap();
    let waited = back_at.elapsed();
    let stdout = std::io::read_to_string(copier.stdout.take().unwrap()).unwrap();
    let stderr = std::io::read_to_string(copier.stderr.take().unwrap()).unwrap();
    eprintln!(
        "copy-shards during the outage: exited {exited_down:?}, {st} (after the Admin Node came back: {waited:?})\nstdout: {stdout}stderr: {stderr}"
    );
    let mut reruns = 0;
    if !st.success() {
        assert!(
            exited_down.is_some(),
            "copy-shards failed only after the Admin Node was back: {stderr}"
        );
        // Logged warnings aside, one line: the error, naming the member
        // it could not reach.
        let errors: Vec<&str> = stderr.lines().filter(|l| !l.contains(" WARN ")).collect();
        assert_eq!(errors.len(), 1, "one line of error: {stderr}");
        assert!(
            errors[0]
                .starts_with("tshs: error: copy-shards: cannot reach MySQL server 127.0.0.1:332"),
            "{stderr}"
        );
        // The dead run's lease (30 s) lapsed during the outage: a rerun
        // takes its move over.
        while c.ok(&["list-storage-nodes"]).contains("MIRROR_SHARD") {
            reruns += 1;
            assert!(reruns <= 3, "the split never finished");
            eprintln!("rerun {reruns}: {}", c.ok(&["copy-shards"]));
        }
    }
    let split_done = back_at.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let errors = load.stop();
    eprintln!(
        "admin node down 60 s: acknowledged 22-60 s after the kill {acked_while_down:?} (appenders, creator); \
         {} errors, first {:?}; cluster back in {back:?}; split done {split_done:?} later ({reruns} reruns); \
         before the kill: {moved_before}",
        errors.len(),
        errors.iter().take(3).collect::<Vec<_>>()
    );
    went_on_without_the_admin_node(&errors, &acked_while_down);
    let cl = c.cluster();
    let nodes = cl.nodes().unwrap();
    assert_eq!(nodes.len(), 2);
    assert!(
        nodes
            .iter()
            .all(|n| n.phase == tshs::cluster::Phase::ActiveShard),
        "{}",
        c.ok(&["list-storage-nodes"])
    );
    let mut moved = 0;
    for &s in spaces.iter().chain([9].iter()) {
        let row = cl.space(s).unwrap().unwrap();
        let want = nodes
            .iter()
            .find(|n| n.range.contains(tshs::placement::hash32(s)))
            .unwrap();
        assert_eq!(row.node_id, want.id, "space {s}");
        moved += usize::from(want.id != old);
    }
    assert!(moved >= 5, "too few spaces moved ({moved})");
    drop(mounts);
    let m = c.mount();
    for &s in &spaces {
        assert!(
            std::fs::read(m.path().join(format!("vol01/{s}/f"))).unwrap()
                == common::pattern(s.into(), 1 << 20),
            "space {s}: contents differ"
        );
    }
    load.check(&m);
    eprintln!("wall time {:?}", t0.elapsed());
}

/// A node on MariaDB server 2 split onto a Galera-backed node and its
/// spaces copied (copy-shards: fences, triggers, copier sessions on a
/// member) while a mount appends with fsync: every file and acknowledged
/// record is there afterwards, some spaces now on the Galera node.
#[test]
fn split_and_copy_shards_onto_a_galera_node() {
    let _serial = all_members_synced();
    let mut dbs = GaleraDbs(Vec::new());
    let c = TestCluster::empty();
    let st = c.new_db(2, "st");
    c.ok(&[
        "create-storage-node",
        &format!("{};database={st}", common::server(2)),
    ]);
    c.ok(&["create-volume", "vol01"]);
    let m = c.mount();
    let spaces: Vec<u32> = (1..=12).map(|i| i * 357_913_941).collect();
    for &s in &spaces {
        std::fs::write(m.space(s).join("f"), format!("space {s}\n").repeat(1000)).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let log: Arc<Mutex<Log>> = Arc::default();
    let writer = {
        let path = m.path().join(format!("vol01/{}/log", spaces[11]));
        let (stop, log) = (stop.clone(), log.clone());
        std::thread::spawn(move || appender(path, 0, stop, log))
    };
    std::thread::sleep(Duration::from_millis(500));
    let gdb = dbs.create("gsplit");
    let out = c.ok(&[
        "split-storage-node",
        "1",
        &format!("{};database={gdb}", galera_options()),
    ]);
    assert!(out.contains("MIRROR_SHARD"), "{out}");
    c.ok(&["copy-shards"]);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let list = c.ok(&["list-storage-nodes"]);
    assert_eq!(list.matches("ACTIVE_SHARD").count(), 2, "{list}");
    let on_galera: Option<u64> = member_conn(2)
        .query_first(format!("SELECT COUNT(*) FROM {gdb}.spaces"))
        .unwrap();
    assert!(
        on_galera.unwrap() > 0,
        "some spaces moved to the Galera node"
    );
    drop(m);
    let m = c.mount();
    for &s in &spaces {
        assert_eq!(
            std::fs::read_to_string(m.path().join(format!("vol01/{s}/f"))).unwrap(),
            format!("space {s}\n").repeat(1000)
        );
    }
    let data = std::fs::read(m.path().join(format!("vol01/{}/log", spaces[11]))).unwrap();
    let got: Vec<u64> = data
        .chunks(RECORD)
        .map(|r| std::str::from_utf8(&r[4..16]).unwrap().parse().unwrap())
        .collect();
    let l = log.lock().unwrap();
    assert!(l.errors.is_empty(), "{:?}", l.errors);
    assert_eq!(got, l.acked, "every acknowledged record once, in order");
}

/// The node's id (Galera interleaves AUTO_INCREMENT values by member).
fn node_id(c: &TestCluster) -> u32 {
    c.cluster().nodes().unwrap()[0].id
}

/// Polls `list-storage-nodes` until its output contains every one of `want`.
fn listing_until(c: &TestCluster, want: &[&str]) -> String {
    let t = Instant::now();
    loop {
        let out = c.ok(&["list-storage-nodes"]);
        if want.iter().all(|w| out.contains(w)) {
            return out;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "list-storage-nodes never showed {want:?}:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn check(c: &TestCluster) -> (i32, String) {
    let o = c.tshs(&["check", "--warning", "60000", "--critical", "60000"]);
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).to_string(),
    )
}

/// SIGKILL to member `i`.
fn kill_member(i: usize) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid_of(i)),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

/// Member `i` cut off from the others (non-Primary) until dropped, also
/// when an assertion fails.
struct Isolated(usize);

impl Isolated {
    fn member(i: usize) -> Isolated {
        isolate(i, true);
        Isolated(i)
    }
}

impl Drop for Isolated {
    fn drop(&mut self) {
        isolate(self.0, false);
    }
}

/// Sets member `i`'s Galera isolation (`gmcast.isolate`): isolated, it
/// leaves the primary component (non-Primary) without being killed.
fn isolate(i: usize, on: bool) {
    member_conn(i)
        .query_drop(format!(
            "SET GLOBAL wsrep_provider_options = 'gmcast.isolate={}'",
            u8::from(on)
        ))
        .unwrap();
}

/// `list-storage-nodes` shows each member of a Galera-backed node and its
/// state, following a killed member (unreachable) and its return; `tshs
/// check` warns while a member is missing and is CRITICAL, naming the node,
/// when no member it names is in a primary component.
#[test]
fn member_states_in_the_listing_and_in_check() {
    let _serial = all_members_synced();
    let t = Instant::now();
    let mut dbs = GaleraDbs(Vec::new());
    let c = galera_cluster(&mut dbs);
    let id = node_id(&c);
    let synced_line = |p: u16| format!("Member 127.0.0.1:{p}: Synced (Primary, ready)");
    let out = listing_until(
        &c,
        &[&synced_line(3321), &synced_line(3322), &synced_line(3323)],
    );
    assert!(out.starts_with("ID Phase"), "{out}");
    assert_eq!(check(&c).0, 0, "{}", check(&c).1);

    // Member 3 killed: unreachable in the table, check warns.
    kill_member(2);
    let out = listing_until(&c, &["Member 127.0.0.1:3323: unreachable (cannot reach"]);
    assert!(
        out.contains(&synced_line(3321)) && out.contains(&synced_line(3322)),
        "{out}"
    );
    let (code, line) = check(&c);
    assert_eq!(code, 1, "{line}");
    assert!(
        line.contains(&format!(
            "storage node {id}: 2 of 3 Galera members synced (127.0.0.1:3323: unreachable"
        )),
        "{line}"
    );
    services("start", "galera3");
    listing_until(&c, &[&synced_line(3323)]);

    // The node's options name member 3 and a server that is gone; member 3
    // isolated leaves the primary component: CRITICAL, naming the node.
    let m = members();
    let port = common::unused_port();
    let opts = format!(
        "host=127.0.0.1:3323,127.0.0.1:{port};user={};password={};database={}",
        m.user.as_deref().unwrap(),
        m.password.as_deref().unwrap(),
        dbs.0[1]
    );
    member_conn(0)
        .exec_drop(
            format!(
                "UPDATE {}.storage_nodes SET conn_options = ? WHERE id = ?",
                c.admin_db
            ),
            (&opts, id),
        )
        .unwrap();
    let rejoin = Isolated::member(2);
    let out = listing_until(&c, &["Member 127.0.0.1:3323: ", "(non-Primary, not ready)"]);
    eprintln!("{out}");
    let (code, line) = check(&c);
    drop(rejoin);
    assert_eq!(code, 2, "{line}");
    assert!(
        line.contains(&format!(
            "storage node {id}: no Galera member in a primary component (127.0.0.1:3323: not in the primary component (non-Primary)"
        )),
        "{line}"
    );
    assert!(!line.contains(m.password.as_deref().unwrap()), "{line}");
    let t0 = Instant::now();
    while !synced(&mut member_conn(2)) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "member 3 never synced again"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("galera member states: {:?}", t.elapsed());
}

/// Options naming `hosts` (`127.0.0.1:3321,…`) and database `db`, with the
/// test user.
fn options_on(hosts: &str, db: &str) -> String {
    let m = members();
    format!(
        "host={hosts};user={};password={};database={db}",
        m.user.as_deref().unwrap(),
        m.password.as_deref().unwrap()
    )
}

/// The Admin Node's rows that update-storage-node may change.
fn admin_state(c: &TestCluster) -> (Vec<(u32, String, Option<String>)>, u64) {
    let mut a = member_conn(0);
    a.query_drop(format!("USE {}", c.admin_db)).unwrap();
    let nodes = a
        .query("SELECT id, conn_options, identity FROM storage_nodes ORDER BY id")
        .unwrap();
    let epoch: Option<u64> = a
        .query_first("SELECT epoch FROM topology WHERE id = 1")
        .unwrap();
    (nodes, epoch.unwrap())
}

/// The longest pause between two acknowledgements of any writer.
fn worst_gap(logs: &[Arc<Mutex<Log>>]) -> Duration {
    logs.iter()
        .flat_map(|l| {
            let l = l.lock().unwrap();
            l.times.windows(2).map(|w| w[1] - w[0]).collect::<Vec<_>>()
        })
        .max()
        .unwrap_or_default()
}

/// `update-storage-node` moves a Galera-backed node from members
/// (3321, 3322) to (3322, 3323) under 4 appenders with fsync on 2 mounts:
/// writes pause behind the node's fence for a moment, every access point
/// acknowledges, no writer sees an error, every acknowledged record is there
/// exactly once, and no process uses member 3321 for the node any more.
#[test]
fn update_storage_node_changes_members_under_writers() {
    let _serial = all_members_synced();
    let t_test = Instant::now();
    let mut dbs = GaleraDbs(Vec::new());
    let c = admin_on_galera(&mut dbs);
    let st = dbs.create("gst");
    c.ok(&[
        "create-storage-node",
        &options_on("127.0.0.1:3321,127.0.0.1:3322", &st),
    ]);
    c.ok(&["create-volume", "vol01"]);
    let id = node_id(&c);
    let mounts = [c.mount(), c.mount()];
    mounts[0].space(7);
    let stop = Arc::new(AtomicBool::new(false));
    let logs: Vec<Arc<Mutex<Log>>> = (0..4).map(|_| Arc::default()).collect();
    let threads: Vec<_> = (0..4)
        .map(|w| {
            let path = mounts[w % 2].path().join(format!("vol01/7/log{w}"));
            let (stop, log) = (stop.clone(), logs[w].clone());
            std::thread::spawn(move || appender(path, w, stop, log))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        members_in_use(&st),
        vec![0],
        "the node's first member in use"
    );
    let before = worst_gap(&logs);

    let new = options_on("127.0.0.1:3322,127.0.0.1:3323", &st);
    let t = Instant::now();
    let out = c.ok(&["update-storage-node", &id.to_string(), &new]);
    let took = t.elapsed();
    let first = out.lines().next().unwrap().to_string();
    assert!(
        first.starts_with(&format!(
            "Storage node {id}: connection options updated (1 space(s) fenced for "
        )) && first.ends_with(" ms)"),
        "{out}"
    );
    assert!(
        out.contains("Member 127.0.0.1:3322: Synced")
            && out.contains("Member 127.0.0.1:3323: Synced")
            && !out.contains("127.0.0.1:3321"),
        "{out}"
    );
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let pause = worst_gap(&logs);
    // The old pools are gone with the epoch's acknowledgement.
    let t0 = Instant::now();
    loop {
        let used = members_in_use(&st);
        if !used.contains(&0) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "member 3321 still used for the node: {used:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let stored = &c.cluster().node(id).unwrap().conn;
    assert_eq!(*stored, ConnOptions::parse(&new).unwrap());

    drop(mounts);
    let m = c.mount();
    let (mut acked, mut lost, mut duplicated) = (0, 0, 0);
    for (w, log) in logs.iter().enumerate() {
        let data = std::fs::read(m.path().join(format!("vol01/7/log{w}"))).unwrap();
        assert_eq!(data.len() % RECORD, 0, "writer {w}: torn record");
        let mut seen = std::collections::HashMap::<u64, usize>::new();
        for r in data.chunks(RECORD) {
            let i: u64 = std::str::from_utf8(&r[4..16]).unwrap().parse().unwrap();
            assert_eq!(r, record(w, i).as_slice(), "writer {w}: bad record");
            *seen.entry(i).or_default() += 1;
        }
        duplicated += seen.values().filter(|n| **n > 1).count();
        let l = log.lock().unwrap();
        assert!(l.errors.is_empty(), "writer {w}: {:?}", l.errors);
        acked += l.acked.len();
        lost += l.acked.iter().filter(|i| !seen.contains_key(i)).count();
    }
    eprintln!(
        "update-storage-node under 4 writers: {first} — command {took:?}; worst pause of \
         acknowledgements {pause:?} (before the update {before:?}); {acked} records \
         acknowledged, {lost} lost, {duplicated} duplicated; test {:?}",
        t_test.elapsed()
    );
    assert_eq!(lost, 0, "acknowledged records lost");
    assert_eq!(duplicated, 0, "records applied twice");
    assert!(pause < Duration::from_secs(10), "writes paused {pause:?}");
}

/// update-storage-node refuses, with one line and the Admin Node unchanged:
/// a database holding another node, one holding none, a member that is not
/// synced, a plain server holding a copy that does not catch up (no
/// replica), an unknown node, unparsable options, the same options.
#[test]
fn update_storage_node_refuses_bad_targets() {
    let _serial = all_members_synced();
    let t_test = Instant::now();
    let mut dbs = GaleraDbs(Vec::new());
    let c = admin_on_galera(&mut dbs);
    let (sa, sb) = (dbs.create("gsa"), dbs.create("gsb"));
    let a_opts = options_on("127.0.0.1:3321,127.0.0.1:3322", &sa);
    c.ok(&["create-storage-node", &a_opts]);
    c.ok(&["create-storage-node", &options_on("127.0.0.1:3321", &sb)]);
    let nodes = c.cluster().nodes().unwrap();
    let a = nodes
        .iter()
        .find(|n| n.conn.database.as_deref() == Some(&*sa))
        .unwrap()
        .id;
    let b = nodes
        .iter()
        .find(|n| n.conn.database.as_deref() == Some(&*sb))
        .unwrap()
        .id;
    let before = admin_state(&c);
    assert!(
        before.0.iter().all(|(_, _, token)| token.is_some()),
        "identities recorded: {before:?}"
    );
    let pw = members().password.unwrap();
    let refused = |args: &[&str], want: &str| {
        let err = c.fails(args);
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains(&pw), "{err}");
        assert_eq!(admin_state(&c), before, "{args:?} changed the Admin Node");
    };
    let a_id = a.to_string();
    refused(
        &[
            "update-storage-node",
            &a_id,
            &options_on("127.0.0.1:3322,127.0.0.1:3323", &sb),
        ],
        &format!("holds storage node {b}, not storage node {a}"),
    );
    let empty = dbs.create("gempty");
    refused(
        &[
            "update-storage-node",
            &a_id,
            &options_on("127.0.0.1:3323", &empty),
        ],
        "holds no storage node",
    );
    refused(
        &["update-storage-node", "999", &a_opts],
        "there is no storage node 999",
    );
    refused(
        &["update-storage-node", &a_id, "host=127.0.0.1:3322;bogus"],
        "malformed connection option 'bogus'",
    );
    refused(
        &["update-storage-node", &a_id, &a_opts],
        "already has these connection options",
    );

    // A copy of node A on plain server 1 that nothing keeps up to date.
    let copy = c.new_db(1, "copy");
    let (node, token): (u32, String) = {
        let mut m = member_conn(0);
        m.query_first(format!("SELECT node_id, token FROM {sa}.node_identity"))
            .unwrap()
            .unwrap()
    };
    {
        let mut r = common::root_conn(1);
        r.query_drop(format!(
            "CREATE TABLE {copy}.node_identity (id TINYINT UNSIGNED NOT NULL PRIMARY KEY,
             node_id INT UNSIGNED NOT NULL, token CHAR(32) NOT NULL, switch_mark CHAR(32) NULL)"
        ))
        .unwrap();
        r.exec_drop(
            format!("INSERT INTO {copy}.node_identity VALUES (1, ?, ?, NULL)"),
            (node, &token),
        )
        .unwrap();
    }
    let t = Instant::now();
    refused(
        &[
            "update-storage-node",
            &a_id,
            &format!("{};database={copy}", common::server(1)),
        ],
        "did not catch up with storage node",
    );
    eprintln!("a copy that does not catch up refused in {:?}", t.elapsed());

    // A member that is not synced (isolated: non-Primary).
    let rejoin = Isolated::member(2);
    let t0 = Instant::now();
    while synced(&mut member_conn(2)) {
        assert!(t0.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(100));
    }
    refused(
        &[
            "update-storage-node",
            &a_id,
            &options_on("127.0.0.1:3322,127.0.0.1:3323", &sa),
        ],
        "not synced with its Galera cluster",
    );
    drop(rejoin);
    let t0 = Instant::now();
    while !synced(&mut member_conn(2)) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "member 3 never synced again"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The node still works where it was.
    c.ok(&["list-storage-nodes"]);
    eprintln!("update-storage-node refusals: test {:?}", t_test.elapsed());
}

/// On a plain server (no Galera needed): a node made before identities
/// gets one on first use; new options for the same database switch under an
/// appender behind the fence; a node whose old server is gone is pointed
/// at its database elsewhere by the identity alone, without fences.
#[test]
fn update_storage_node_on_a_plain_server() {
    let t_test = Instant::now();
    let (c, db) = TestCluster::with_one_node();
    let m = c.mount();
    m.space(7);
    let stop = Arc::new(AtomicBool::new(false));
    let log: Arc<Mutex<Log>> = Arc::default();
    let writer = {
        let (path, stop, log) = (m.path().join("vol01/7/log0"), stop.clone(), log.clone());
        std::thread::spawn(move || appender(path, 0, stop, log))
    };
    // As if made before identities (Storage Node migration 11).
    let mut root = common::root_conn(1);
    root.query_drop(format!("DELETE FROM {db}.node_identity"))
        .unwrap();
    root.query_drop(format!(
        "UPDATE {}.storage_nodes SET identity = NULL",
        c.admin_db
    ))
    .unwrap();
    std::thread::sleep(Duration::from_secs(1));

    let same = format!("{};database={db};connect-timeout=7", common::server(1));
    let out = c.ok(&["update-storage-node", "1", &same]);
    assert!(
        out.starts_with("Storage node 1: connection options updated (1 space(s) fenced for "),
        "{out}"
    );
    let held: Option<(u32, String)> = root
        .query_first(format!("SELECT node_id, token FROM {db}.node_identity"))
        .unwrap();
    let recorded: Option<Option<String>> = root
        .query_first(format!("SELECT identity FROM {}.storage_nodes", c.admin_db))
        .unwrap();
    let (node, token) = held.expect("identity written on first use");
    assert_eq!((node, Some(token)), (1, recorded.flatten()));

    // A switch that died after sealing: the same options again lift it.
    root.query_drop(format!(
        "UPDATE {db}.space_fence SET fenced_until = '9999-12-31 00:00:00' WHERE space_id = 7"
    ))
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let out = c.ok(&["update-storage-node", "1", &same]);
    assert!(
        out.starts_with("Storage node 1: connection options unchanged; lifted the fences a switch left on 1 space(s)\n"),
        "{out}"
    );
    let err = c.fails(&["update-storage-node", "1", &same]);
    assert!(
        err.contains("already has these connection options"),
        "{err}"
    );

    // The server named is gone (nothing listens there): the identity alone.
    let gone = format!(
        "{};database={db};port={}",
        common::server(1),
        common::unused_port()
    );
    root.exec_drop(
        format!("UPDATE {}.storage_nodes SET conn_options = ?", c.admin_db),
        (ConnOptions::parse(&gone).unwrap().to_stored(),),
    )
    .unwrap();
    let back = format!("{};database={db}", common::server(1));
    let out = c.ok(&["update-storage-node", "1", &back]);
    assert!(
        out.starts_with(
            "Storage node 1: connection options updated (its old servers could not be reached: nothing was fenced)"
        ),
        "{out}"
    );
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let l = log.lock().unwrap();
    assert!(l.errors.is_empty(), "{:?}", l.errors);
    let data = std::fs::read(m.path().join("vol01/7/log0")).unwrap();
    assert_eq!(data.len(), l.acked.len() * RECORD, "every record once");
    let acked = l.acked.len();
    drop(l);
    eprintln!(
        "plain server: {acked} records, worst pause {:?}; test {:?}",
        worst_gap(std::slice::from_ref(&log)),
        t_test.elapsed()
    );
}
