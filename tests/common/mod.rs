//! Test support: a cluster of fresh databases on the two local MariaDB
//! servers (dropped on Drop), the `tshs` binary, and real FUSE mounts that
//! unmount on Drop. Tests need `scripts/services start` and its environment
//! (`source .state/env`); without them they fail loudly, never skip.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mysql::prelude::Queryable;

pub fn env(name: &str) -> String {
    if let Ok(v) = std::env::var(name) {
        return v;
    }
    // Fall back to the state file scripts/services writes.
    let state = Path::new(env!("CARGO_MANIFEST_DIR")).join(".state/env");
    let text = std::fs::read_to_string(&state).unwrap_or_default();
    for line in text.lines() {
        let line = line.trim_start_matches("export ");
        if let Some(v) = line.strip_prefix(&format!("{name}=")) {
            return v.trim_matches('"').trim_matches('\'').to_string();
        }
    }
    panic!(
        "{name} is not set: run scripts/services start (the tests need the local MariaDB and S3 servers)"
    );
}

/// Connection options of local MariaDB server 1 or 2 (no database).
pub fn server(n: u8) -> String {
    env(&format!("TSHS_MYSQL{n}"))
}

pub fn root_conn(n: u8) -> mysql::Conn {
    let opts = tshs::config::ConnOptions::parse(&server(n)).unwrap();
    mysql::Conn::new(opts.to_mysql())
        .unwrap_or_else(|e| panic!("MariaDB server {n} is not reachable: {e}"))
}

/// Drops a node's database: the node is lost. MariaDB sometimes answers
/// 1010 ("Directory not empty") after it dropped every table, when a file
/// it does not know stayed in the directory (CI met it twice; retrying for
/// 5 s did not help). The node is lost all the same once none of its tables
/// is left; what stayed is printed so a run that meets it says which file.
pub fn lose_database(n: u8, db: &str) {
    use mysql::prelude::Queryable;
    let Err(e) = root_conn(n).query_drop(format!("DROP DATABASE {db}")) else {
        return;
    };
    let mut conn = root_conn(n);
    let tables: Vec<String> = conn
        .exec(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = ?",
            (db,),
        )
        .unwrap();
    let dir: String = conn.query_first("SELECT @@datadir").unwrap().unwrap();
    let left: Vec<_> = std::fs::read_dir(std::path::Path::new(&dir).join(db))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    eprintln!("dropping {db}: {e}; left in its directory: {left:?}");
    assert!(
        tables.is_empty(),
        "dropping {db}: {e}; tables left: {tables:?}"
    );
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A unique database name for this test process.
pub fn unique(tag: &str) -> String {
    format!(
        "t{}_{}_{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed),
        tag
    )
}

/// An Admin Node and its databases, created for one test and dropped after.
pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub mycnf: PathBuf,
    pub admin_db: String,
    /// (server number, database) of every database this cluster created.
    pub dbs: std::sync::Mutex<Vec<(u8, String)>>,
    /// Buckets made on the local S3 server for this cluster.
    pub buckets: std::sync::Mutex<Vec<String>>,
}

impl TestCluster {
    /// An Admin Node on server 1, without storage nodes.
    pub fn empty() -> TestCluster {
        let dir = tempfile::tempdir().unwrap();
        let admin_db = unique("admin");
        root_conn(1)
            .query_drop(format!("CREATE DATABASE {admin_db}"))
            .unwrap();
        let o = tshs::config::ConnOptions::parse(&server(1)).unwrap();
        let mycnf = dir.path().join("my.cnf");
        std::fs::write(
            &mycnf,
            format!(
                "[client]\nport=1\n[tshs]\nhost={}\nport={}\nuser={}\npassword={}\ndatabase={admin_db}\n",
                o.host.unwrap(),
                o.port.unwrap(),
                o.user.unwrap(),
                o.password.unwrap()
            ),
        )
        .unwrap();
        let c = TestCluster {
            dir,
            mycnf,
            admin_db: admin_db.clone(),
            dbs: std::sync::Mutex::new(vec![(1, admin_db)]),
            buckets: Default::default(),
        };
        c.ok(&["create-admin-node"]);
        c
    }

    /// An Admin Node with one storage node on each MariaDB server and volume `vol01`.
    pub fn with_nodes() -> TestCluster {
        let c = TestCluster::empty();
        for n in [1, 2] {
            let db = c.new_db(n, "st");
            c.ok(&[
                "create-storage-node",
                &format!("{};database={db}", server(n)),
            ]);
        }
        c.ok(&["create-volume", "vol01"]);
        c
    }

    /// An Admin Node with one storage node, on server 1 (so every space
    /// lives there), and volume `vol01`; with that node's database.
    pub fn with_one_node() -> (TestCluster, String) {
        let c = TestCluster::empty();
        let db = c.new_db(1, "st");
        c.ok(&[
            "create-storage-node",
            &format!("{};database={db}", server(1)),
        ]);
        c.ok(&["create-volume", "vol01"]);
        (c, db)
    }

    /// Creates an empty database on server `n`, dropped with the cluster.
    pub fn new_db(&self, n: u8, tag: &str) -> String {
        let db = unique(tag);
        root_conn(n)
            .query_drop(format!("CREATE DATABASE {db}"))
            .unwrap();
        self.dbs.lock().unwrap().push((n, db.clone()));
        db
    }

    /// Splits storage node 1 onto a new database on server 2 (storage node
    /// 2, MIRROR_SHARD); returns split-storage-node's output.
    pub fn split_node_1(&self, tag: &str) -> String {
        let db = self.new_db(2, tag);
        self.ok(&[
            "split-storage-node",
            "1",
            &format!("{};database={db}", server(2)),
        ])
    }

    /// Those of `spaces` that live on storage node `node`.
    pub fn spaces_on(&self, spaces: impl IntoIterator<Item = u32>, node: u32) -> Vec<u32> {
        let cl = self.cluster();
        spaces
            .into_iter()
            .filter(|&s| cl.space(s).unwrap().unwrap().node_id == node)
            .collect()
    }

    /// Makes an empty bucket on the local S3 server, deleted (with what it
    /// holds) with the cluster.
    pub fn new_bucket(&self, tag: &str) -> String {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let b = format!(
            "tshs-{}-{}-{tag}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        assert_eq!(
            s3_request("PUT", &format!("/{b}")),
            200,
            "creating bucket {b}"
        );
        // SeaweedFS grows a bucket's first volume at its first write, which
        // a loaded machine can answer with 500: wait until a write goes
        // through, so the test meets a store that takes writes.
        let probe = format!("/{b}/.tshs-probe");
        let t = Instant::now();
        loop {
            match s3_put_empty(&probe) {
                200 => break,
                code if t.elapsed() < Duration::from_secs(60) => {
                    eprintln!("bucket {b}: a first write answered {code}; again");
                    std::thread::sleep(Duration::from_millis(500));
                }
                code => panic!("bucket {b} takes no writes: HTTP {code}"),
            }
        }
        assert_eq!(s3_request("DELETE", &probe), 204, "deleting {probe}");
        self.buckets.lock().unwrap().push(b.clone());
        b
    }

    /// Runs `tshs` against this cluster.
    pub fn tshs(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_tshs"))
            .arg("--mysql-cfg-file")
            .arg(&self.mycnf)
            .args(args)
            .env("TSHS_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs `tshs`, asserts success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.tshs(args);
        assert!(
            o.status.success(),
            "tshs {} failed: {}{}",
            shown(args),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// Runs `tshs`, asserts failure with exit 1 and a one-line error; returns it.
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.tshs(args);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(
            o.status.code(),
            Some(1),
            "tshs {} should fail: {err}",
            shown(args)
        );
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "one line of error expected: {err}"
        );
        err
    }

    pub fn cluster(&self) -> tshs::cluster::Cluster {
        let o = tshs::config::read_mysql_cfg(&self.mycnf).unwrap();
        tshs::cluster::Cluster::connect(&o, 4).unwrap()
    }

    pub fn mount(&self) -> Mount {
        Mount::new(self, &[])
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for b in self.buckets.lock().unwrap().drain(..) {
            // The server deletes a bucket with its objects.
            let _ = std::panic::catch_unwind(|| s3_request("DELETE", &format!("/{b}")));
        }
        for (n, db) in self.dbs.lock().unwrap().drain(..) {
            if let Ok(mut c) = std::panic::catch_unwind(|| root_conn(n)) {
                let _ = c.query_drop(format!("DROP DATABASE IF EXISTS {db}"));
            }
        }
    }
}

/// A real FUSE mount of a test cluster (`tshs mount -f` as a child process).
pub struct Mount {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Mount {
    pub fn new(c: &TestCluster, opts: &[&str]) -> Mount {
        Mount::with_env(c, opts, &[])
    }

    /// A mount whose daemon runs with `env` set (test hooks).
    pub fn with_env(c: &TestCluster, opts: &[&str], env: &[(&str, &str)]) -> Mount {
        Mount::spawn(Command::new(env!("CARGO_BIN_EXE_tshs")), c, opts, env)
    }

    /// A mount whose daemon runs in a pid namespace of its own: FUSE gives
    /// every caller from outside it thread id 0. Its [`Mount::pid`] is
    /// `unshare`'s, not the daemon's.
    pub fn in_own_pid_namespace(c: &TestCluster) -> Mount {
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--pid",
            "--fork",
            "--kill-child",
            env!("CARGO_BIN_EXE_tshs"),
        ]);
        Mount::spawn(cmd, c, &[], &[])
    }

    fn spawn(mut cmd: Command, c: &TestCluster, opts: &[&str], env: &[(&str, &str)]) -> Mount {
        let dir = tempfile::tempdir().unwrap();
        cmd.arg("--mysql-cfg-file")
            .arg(&c.mycnf)
            .arg("mount")
            .arg(dir.path())
            .arg("-f");
        for o in opts {
            cmd.arg("-o").arg(o);
        }
        let child = cmd
            .env("TSHS_LOG", "warn")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut m = Mount {
            dir,
            child: Some(child),
        };
        m.wait_mounted();
        m
    }

    fn wait_mounted(&mut self) {
        let t = Instant::now();
        let p = self.dir.path().to_str().unwrap().to_string();
        while t.elapsed() < Duration::from_secs(60) {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!("the mount at {p} exited before it came up: {status}");
            }
            let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
            if mounts
                .lines()
                .any(|l| l.split(' ').nth(1) == Some(p.as_str()))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("mount at {p} did not come up");
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `<mount>/vol01/<space>`, creating the space if needed.
    pub fn space(&self, id: u32) -> PathBuf {
        let p = self.path().join("vol01").join(id.to_string());
        if !p.exists() {
            std::fs::create_dir(&p).unwrap();
        }
        p
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Unmounts and waits for the daemon to exit.
    pub fn unmount(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(self.dir.path())
                .status();
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(60) {
                if child.try_wait().unwrap().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            // Killed, it leaves its access point and unsaved attributes
            // behind, which later checks of the test would trip over.
            if !std::thread::panicking() {
                panic!(
                    "the mount at {} did not exit within 60 s of unmounting",
                    self.dir.path().display()
                );
            }
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// A mount's metrics (its `metrics=PORT`), asked without starting a
/// process: a child would inherit the caller's open files and close them,
/// and a close commits.
pub fn metrics(port: u16) -> String {
    use std::io::{Read, Write};
    let t = std::time::Instant::now();
    loop {
        let got = std::net::TcpStream::connect(("127.0.0.1", port)).and_then(|mut c| {
            c.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
            let mut text = String::new();
            c.read_to_string(&mut text)?;
            Ok(text)
        });
        if let Ok(text) = got
            && (text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.0 200"))
        {
            return text;
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(20),
            "no metrics on {port}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Runs a shell command, asserting success; returns stdout.
pub fn sh(cmd: &str) -> String {
    let o = Command::new("bash").arg("-c").arg(cmd).output().unwrap();
    assert!(
        o.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

static S3_KEYS: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();

/// The access key and secret key of the local S3 server (SeaweedFS checks
/// them; scripts/services makes them per state directory).
pub fn s3_keys() -> (&'static str, &'static str) {
    let (ak, sk) = S3_KEYS.get_or_init(|| (env("TSHS_S3_ACCESS_KEY"), env("TSHS_S3_SECRET_KEY")));
    (ak, sk)
}

/// `args` for a message, the S3 secret key masked.
fn shown(args: &[&str]) -> String {
    let text = format!("{args:?}");
    match S3_KEYS.get() {
        Some((_, sk)) => text.replace(sk.as_str(), "****"),
        None => text,
    }
}

/// A SigV4-signed request to the local S3 server (curl; the keys go in on
/// stdin, so no command line or message shows them). Returns the HTTP status.
pub fn s3_request(method: &str, path: &str) -> u16 {
    s3_curl(&["-X", method], path)
}

/// A signed PUT of an empty object at `path`: the HTTP status.
pub fn s3_put_empty(path: &str) -> u16 {
    s3_curl(&["-T", "/dev/null"], path)
}

fn s3_curl(how: &[&str], path: &str) -> u16 {
    use std::io::Write;
    let (ak, sk) = s3_keys();
    let url = format!("{}{path}", env("TSHS_S3_ENDPOINT"));
    let method = how.join(" ");
    let mut child = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "30",
        ])
        .args(["-K", "-"])
        .args(how)
        .arg(&url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let config = format!("aws-sigv4 = \"aws:amz:us-east-1:s3\"\nuser = \"{ak}:{sk}\"\n");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(config.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let status = String::from_utf8_lossy(&o.stdout);
    status
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("curl {method} {url}: no HTTP status ({status})"))
}

/// A loopback port nobody listens on, for a process the test starts (or a
/// listener it takes down and up again). Taken below Linux's ephemeral range
/// (32768 and up), so no outgoing connection can take it meanwhile.
pub fn unused_port() -> u16 {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let start = std::process::id() as usize * 7919 + SEQ.fetch_add(1, Ordering::Relaxed) * 104_729;
    (0..12_000)
        .map(|i| 20_000 + ((start + i * 7) % 12_000) as u16)
        .find(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        .expect("no unused port between 20000 and 32000")
}

/// A stop flag for a test's background threads that is also raised when the
/// test panics, so a failed assertion is not buried under the output of
/// threads still working on an unmounted tree.
pub struct StopFlag(pub std::sync::Arc<std::sync::atomic::AtomicBool>);

impl StopFlag {
    pub fn new() -> StopFlag {
        StopFlag(Default::default())
    }

    pub fn raise(&self) {
        self.0.store(true, Ordering::Release);
    }
}

impl Drop for StopFlag {
    fn drop(&mut self) {
        self.raise();
    }
}

/// Bytes that differ from file to file and from offset to offset.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

impl TestCluster {
    /// Upload records of the cluster's Storage Nodes: (state, multipart?).
    pub fn uploads(&self) -> Vec<(String, bool)> {
        use mysql::prelude::Queryable;
        let dbs = self.dbs.lock().unwrap().clone();
        let mut out = Vec::new();
        for (n, db) in dbs.iter().skip(1) {
            let rows: Vec<(String, u8)> = root_conn(*n)
                .query(format!(
                    "SELECT state, upload_id IS NOT NULL FROM {db}.s3_uploads"
                ))
                .unwrap();
            out.extend(rows.into_iter().map(|(s, u)| (s, u != 0)));
        }
        out
    }

    /// `move-to-s3 --settle 0` in the background, each part of its uploads
    /// waiting `part_delay_ms` first (a test hook), so a test can act in
    /// the middle of an upload; output piped.
    pub fn slow_move_to_s3(&self, part_delay_ms: u64) -> Child {
        Command::new(env!("CARGO_BIN_EXE_tshs"))
            .arg("--mysql-cfg-file")
            .arg(&self.mycnf)
            .args(["move-to-s3", "--settle", "0"])
            .env("TSHS_TEST_S3_PART_DELAY_MS", part_delay_ms.to_string())
            .env("TSHS_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}
