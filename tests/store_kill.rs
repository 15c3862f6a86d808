//! The object store killed under the tier: a SeaweedFS server of this
//! test's own (`weed`, installed by scripts/services), its keys enforced,
//! on free loopback ports, SIGKILLed in the middle of a cold read through a
//! mount and in the middle of a move-to-s3 upload, then started again on the
//! same data. The mount must answer EIO within its timeout, keep serving
//! what the database holds, recover by itself once the store is back, and
//! nothing may be lost. The shared S3 service is never touched.

mod common;

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Mount, TestCluster, pattern, unused_port};

/// The keys of this test's store (its own, not the shared service's).
const AK: &str = "AKIDSTOREKILLTEST01";
const SK: &str = "storeKillTestSecret/0123456789+abcdefghij";

/// How long the store may take to serve reads again after a restart: its
/// volume server has to register with its master first (about 20 s here).
const BACK_WITHIN: Duration = Duration::from_secs(120);

/// A SeaweedFS server (master, volume, filer, S3 gateway in one process)
/// with a data directory of its own. Killed by PID on drop.
struct Weed {
    child: Option<Child>,
    dir: PathBuf,
    args: Vec<String>,
    endpoint: String,
}

impl Weed {
    fn start() -> Weed {
        let dir = std::env::temp_dir().join(common::unique("weed"));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let ids = format!(
            r#"{{"identities":[{{"name":"tshs","credentials":[{{"accessKey":"{AK}","secretKey":"{SK}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
        );
        std::fs::write(dir.join("identities.json"), ids).unwrap();
        let s3 = unused_port();
        let mut args: Vec<String> = vec![
            "server".into(),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            format!("-dir={}", dir.join("data").display()),
            "-master.telemetry=false".into(),
            // One master: no 10 s election after a restart.
            "-master.electionTimeout=1s".into(),
            "-volume.preStopSeconds=0".into(),
            "-s3.iam=false".into(),
            "-s3".into(),
            format!("-s3.port={s3}"),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            format!("-s3.config={}", dir.join("identities.json").display()),
            format!("-filer.localSocket={}", dir.join("filer.sock").display()),
            format!("-s3.localSocket={}", dir.join("s3.sock").display()),
        ];
        for p in [
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "s3.port.grpc",
        ] {
            args.push(format!("-{p}={}", unused_port()));
        }
        let mut w = Weed {
            child: None,
            dir,
            args,
            endpoint: format!("http://127.0.0.1:{s3}"),
        };
        w.spawn();
        w
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("weed.log"))
            .unwrap();
        let child = Command::new("weed")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("weed (SeaweedFS) not found: scripts/services installs it");
        self.child = Some(child);
        let t = Instant::now();
        while self.signed("GET", "/", &[]).is_none() {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "SeaweedFS did not come up (log: {})",
                self.dir.join("weed.log").display()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// A signed request with curl; the HTTP status, or `None` when the
    /// server did not answer.
    fn signed(&self, method: &str, path: &str, extra: &[&str]) -> Option<u16> {
        let out = Command::new("curl")
            .args(["-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(["--aws-sigv4", "aws:amz:us-east-1:s3", "--user"])
            .arg(format!("{AK}:{SK}"))
            .args(["-X", method])
            .args(extra)
            .arg(format!("{}{path}", self.endpoint))
            .output()
            .unwrap();
        let code: u16 = String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0);
        (code != 0).then_some(code)
    }

    fn new_bucket(&self, tag: &str) -> String {
        let b = common::unique(tag).to_lowercase().replace('_', "-");
        assert_eq!(self.signed("PUT", &format!("/{b}"), &[]), Some(200));
        b
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
}

impl Drop for Weed {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn state_of(c: &TestCluster, space: u32, name: &str) -> String {
    c.ok(&["list-files", &space.to_string()])
        .lines()
        .skip(2)
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[3] == name).then(|| f[2].to_string())
        })
        .unwrap_or_else(|| panic!("{name} not listed"))
}

fn add_host(c: &TestCluster, w: &Weed, bucket: &str, options: &str) {
    c.ok(&[
        "add-s3-host",
        "GENERIC",
        &w.endpoint,
        bucket,
        AK,
        SK,
        options,
    ]);
}

/// Reads the whole file until it succeeds (the store coming back).
fn read_when_back(path: &Path, want: &[u8]) {
    let t = Instant::now();
    loop {
        match std::fs::read(path) {
            Ok(got) => {
                assert!(got == want, "{}: other bytes than written", path.display());
                return;
            }
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
                assert!(
                    t.elapsed() < BACK_WITHIN,
                    "{}: still {e} {:?} after the store came back",
                    path.display(),
                    t.elapsed()
                );
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

#[test]
fn store_killed_mid_read_gives_eio_then_recovers() {
    let c = TestCluster::with_nodes();
    let mut weed = Weed::start();
    let bucket = weed.new_bucket("kill-read");
    let m = Mount::new(&c, &[]);
    let space = m.space(7);
    let big = pattern(1, 48 << 20);
    let small = pattern(2, 300_000);
    std::fs::write(space.join("big"), &big).unwrap();
    std::fs::write(space.join("small"), &small).unwrap();
    add_host(&c, &weed, &bucket, "");
    c.ok(&["move-to-s3", "--settle", "0"]);
    assert_eq!(state_of(&c, 7, "big"), "OnS3");
    assert_eq!(state_of(&c, 7, "small"), "OnS3");
    drop(m);

    // A cold mount reads the big file; the store dies after 8 MiB.
    let m = Mount::new(&c, &[]);
    let space = m.space(7);
    let mut f = std::fs::File::open(space.join("big")).unwrap();
    let mut got = vec![0u8; 8 << 20];
    f.read_exact(&mut got).unwrap();
    assert!(got == big[..8 << 20]);
    weed.kill();
    let killed = Instant::now();
    let mut rest = Vec::new();
    let e = f.read_to_end(&mut rest).unwrap_err();
    let took = killed.elapsed();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert!(
        took < Duration::from_secs(30),
        "EIO took {took:?} after the kill"
    );
    eprintln!("EIO {took:?} after the store was killed mid-read");
    // What the database holds is served meanwhile: names, attributes,
    // files in the database, new files.
    assert_eq!(
        std::fs::metadata(space.join("big")).unwrap().size(),
        48 << 20
    );
    std::fs::write(space.join("new"), b"written while the store is down").unwrap();
    assert_eq!(
        std::fs::read(space.join("new")).unwrap(),
        b"written while the store is down"
    );
    drop(f);

    weed.spawn();
    let t = Instant::now();
    read_when_back(&space.join("big"), &big);
    eprintln!("reads back {:?} after the restart", t.elapsed());
    read_when_back(&space.join("small"), &small);
    // And through a mount that never saw the failure.
    drop(m);
    let m = Mount::new(&c, &[]);
    read_when_back(&m.space(7).join("big"), &big);
}

#[test]
fn store_killed_mid_upload_loses_nothing() {
    let c = TestCluster::with_nodes();
    let mut weed = Weed::start();
    let bucket = weed.new_bucket("kill-upload");
    let m = Mount::new(&c, &[]);
    let space = m.space(8);
    let data = pattern(3, 24 << 20);
    std::fs::write(space.join("big"), &data).unwrap();
    add_host(&c, &weed, &bucket, "MinBlockSize=5M;MaxUploadThreads=1");

    // Parts go up one a second: kill the store after the first.
    let child = c.slow_move_to_s3(1000);
    let t = Instant::now();
    while !c.uploads().iter().any(|(_, multipart)| *multipart) {
        assert!(t.elapsed() < Duration::from_secs(30), "no upload started");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1500));
    weed.kill();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "move-to-s3 succeeded without its store"
    );
    assert!(err.contains("S3 host 1"), "{err}");
    assert!(!err.contains(SK), "the secret key leaked: {err}");

    // Still in the database, whole, and writable.
    assert_ne!(state_of(&c, 8, "big"), "OnS3");
    assert!(std::fs::read(space.join("big")).unwrap() == data);

    weed.spawn();
    let t = Instant::now();
    let out = loop {
        let o = c.tshs(&["move-to-s3", "--settle", "0"]);
        if o.status.success() {
            break String::from_utf8_lossy(&o.stdout).into_owned();
        }
        assert!(t.elapsed() < BACK_WITHIN, "move-to-s3 still fails: {o:?}");
        std::thread::sleep(Duration::from_secs(2));
    };
    assert!(out.contains("move-to-s3: 1 files"), "{out}");
    assert_eq!(state_of(&c, 8, "big"), "OnS3");
    drop(m);
    let m = Mount::new(&c, &[]);
    read_when_back(&m.space(8).join("big"), &data);
}
