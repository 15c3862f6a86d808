//! The space server (`tshs-space-server`) against real mounts of a real
//! cluster: authentication, path confinement, body limits, GET/HEAD/Range,
//! atomic PUT, POST offsets and rotation, DELETE, listings, a Standby
//! volume, graceful shutdown, redirects of files in S3 to presigned URLs,
//! the mount's xattrs the server relies on (`user.tshs.append_offset`,
//! `user.tshs.s3_url`), and a load test with two servers on two mounts
//! appending to the same logs (`TSHS_HTTP_LOAD_SECS`, default 8;
//! `scripts/bench-http` runs it longer and prints the numbers).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Mount, TestCluster, env, sh};

const TOKEN: &str = "test-token-0123456789abcdef";

/// A running `tshs-space-server` on a free loopback port.
struct Server {
    child: Option<Child>,
    addr: String,
    dir: tempfile::TempDir,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    fn start(root: &Path, args: &[&str]) -> Server {
        Server::start_as(root, args, None)
    }

    /// The server, run as user `uid` when given.
    fn start_as(root: &Path, args: &[&str], uid: Option<u32>) -> Server {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tshs-space-server"));
        if let Some(uid) = uid {
            use std::os::unix::fs::PermissionsExt;
            use std::os::unix::process::CommandExt;
            let perms = |mode| std::fs::Permissions::from_mode(mode);
            std::fs::set_permissions(dir.path(), perms(0o777)).unwrap();
            std::fs::set_permissions(dir.path().join("token"), perms(0o644)).unwrap();
            // The build directory may be where that user cannot go (a clone
            // under /root): run a copy of the binary from here.
            let bin = dir.path().join("tshs-space-server");
            std::fs::copy(env!("CARGO_BIN_EXE_tshs-space-server"), &bin).unwrap();
            std::fs::set_permissions(&bin, perms(0o755)).unwrap();
            cmd = Command::new(&bin);
            cmd.uid(uid).gid(uid);
        }
        let mut child = cmd
            .arg("--root")
            .arg(root)
            .args(["--listen", "127.0.0.1:0", "--token-file"])
            .arg(dir.path().join("token"))
            .arg("--access-log")
            .arg(dir.path().join("access.log"))
            .args(args)
            .env("TSHS_LOG", "info")
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut first = String::new();
        err.read_line(&mut first).unwrap();
        let addr = first
            .split("http://")
            .nth(1)
            .and_then(|s| s.split('/').next())
            .unwrap_or_else(|| panic!("no address in {first:?}"))
            .to_string();
        let stderr = Arc::new(Mutex::new(first));
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in err.lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Server {
            child: Some(child),
            addr,
            dir,
            stderr,
        }
    }

    fn conn(&self) -> Conn {
        Conn::new(&self.addr)
    }

    /// One request with the token, on a fresh connection.
    fn req(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        self.conn().req(method, path, headers, body, true)
    }

    fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    /// SIGTERM; waits for the exit and returns its status code.
    fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if let Some(st) = child.try_wait().unwrap() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        panic!("the server did not stop on SIGTERM");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "server {} stderr:\n{}",
                self.addr,
                self.stderr.lock().unwrap()
            );
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// A minimal HTTP/1.1 client with keep-alive: enough for these tests, and
/// it sends paths exactly as given (no normalisation of `..` or `%2F`).
struct Conn {
    r: BufReader<TcpStream>,
}

impl Conn {
    fn new(addr: &str) -> Conn {
        let s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        Conn {
            r: BufReader::new(s),
        }
    }

    fn send_head(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        len: usize,
        auth: bool,
    ) {
        let mut head =
            format!("{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {len}\r\n");
        if auth {
            head.push_str(&format!("Authorization: Bearer {TOKEN}\r\n"));
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        self.r.get_mut().write_all(head.as_bytes()).unwrap();
    }

    fn req(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        auth: bool,
    ) -> Resp {
        self.send_head(method, path, headers, body.len(), auth);
        self.r.get_mut().write_all(body).unwrap();
        self.read(method == "HEAD")
    }

    /// POST of one record to a last.log, sent again after each 503 "try
    /// again" (this mount still showed a log another one rotated away: the
    /// API says to retry, and nothing was written) for up to 60 s; the last
    /// answer and how many 503s came before it.
    fn append(&mut self, path: &str, body: &[u8]) -> (Resp, usize) {
        let t = Instant::now();
        let mut retries = 0;
        loop {
            let r = self.req("POST", path, &[], body, true);
            let again = r.status == 503 && String::from_utf8_lossy(&r.body).contains("try again");
            if !again || t.elapsed() > Duration::from_secs(60) {
                return (r, retries);
            }
            retries += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn read(&mut self, head_only: bool) -> Resp {
        let mut line = String::new();
        self.r.read_line(&mut line).unwrap();
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"));
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            self.r.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').unwrap();
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
        let mut body = Vec::new();
        // 204 and 304 have no body (and no Content-Length).
        if !head_only && status != 204 && status != 304 {
            let len: usize = headers
                .get("content-length")
                .map(|v| v.parse().unwrap())
                .expect("the server always sends Content-Length");
            body.resize(len, 0);
            self.r.read_exact(&mut body).unwrap();
        }
        Resp {
            status,
            headers,
            body,
        }
    }
}

fn start(c: &TestCluster, args: &[&str]) -> (Mount, Server) {
    let m = Mount::new(c, &[]);
    let s = Server::start(m.path(), args);
    (m, s)
}

#[test]
fn without_the_token_nothing_is_touched() {
    let c = TestCluster::with_nodes();
    let (m, s) = start(&c, &[]);
    let space = m.space(3);
    for (method, path) in [
        ("PUT", "/vol01/3/a.txt"),
        ("POST", "/vol01/3/protolog/last.log"),
        ("GET", "/vol01/3/"),
        ("DELETE", "/vol01/3/keep"),
    ] {
        std::fs::write(space.join("keep"), b"k").unwrap();
        let r = s.conn().req(method, path, &[], b"data", false);
        assert_eq!(r.status, 401, "{method} {path}");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer, TSHS-HMAC-SHA256")
        );
        // A wrong token, and a right one with another scheme, are no better.
        let basic = format!("Basic {TOKEN}");
        for auth in ["Bearer wrong-token-0123456789abcdef", basic.as_str()] {
            let r = s
                .conn()
                .req(method, path, &[("Authorization", auth)], b"data", false);
            assert_eq!(r.status, 401, "{method} {path} with {auth}");
        }
    }
    assert!(!space.join("a.txt").exists());
    assert!(!space.join("protolog").exists());
    assert!(space.join("keep").exists());
    let log = s.access_log();
    assert!(log.contains("PUT /vol01/3/a.txt 401"), "{log}");
    assert!(!log.contains(TOKEN) && !s.stderr.lock().unwrap().contains(TOKEN));
}

/// `tshs-space-server sign …`: its output, or its one-line error.
fn sign(s: &Server, args: &[&str]) -> Result<String, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_tshs-space-server"))
        .arg("sign")
        .arg("--token-file")
        .arg(s.dir.path().join("token"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    );
    assert!(!stdout.contains(TOKEN) && !stderr.contains(TOKEN));
    if out.status.success() {
        Ok(stdout.trim_end().to_string())
    } else {
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        Err(stderr)
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn signed_urls_allow_one_method_and_path_until_they_expire() {
    use tshs::space_server::signature;
    let c = TestCluster::with_nodes();
    let (m, s) = start(&c, &[]);
    let space = m.space(3);
    std::fs::write(space.join("doc one.txt"), b"signed bytes").unwrap();
    std::fs::write(space.join("other"), b"not for you").unwrap();

    let url = sign(&s, &["--method", "get", "/vol01/3/doc one.txt"]).unwrap();
    let (path, query) = url.split_once('?').unwrap();
    assert_eq!(path, "/vol01/3/doc%20one.txt");
    assert!(query.starts_with("expires="), "{url}");
    let r = s.conn().req("GET", &url, &[], b"", false);
    assert_eq!((r.status, r.body.as_slice()), (200, &b"signed bytes"[..]));
    let r = s
        .conn()
        .req("GET", &url, &[("Range", "bytes=7-")], b"", false);
    assert_eq!((r.status, r.body.as_slice()), (206, &b"bytes"[..]));
    // HEAD shows less than GET: a link checker may look first.
    let r = s.conn().req("HEAD", &url, &[], b"", false);
    assert_eq!((r.status, r.header("content-length")), (200, Some("12")));
    // A proxy's or browser's Basic credentials are not ours to judge.
    let basic = [("Authorization", "Basic dXNlcjpwYXNz")];
    let r = s.conn().req("GET", &url, &basic, b"", false);
    assert_eq!((r.status, r.body.as_slice()), (200, &b"signed bytes"[..]));
    // Not another method, not another file, not with a changed expiry.
    let r = s.conn().req("DELETE", &url, &[], b"", false);
    assert_eq!(r.status, 401);
    assert!(String::from_utf8_lossy(&r.body).contains("does not match"));
    let r = s
        .conn()
        .req("GET", &format!("/vol01/3/other?{query}"), &[], b"", false);
    assert_eq!(r.status, 401);
    let later = unix_now() + 7200;
    let moved = query.replacen("expires=", &format!("expires={later}&x="), 1);
    let r = s
        .conn()
        .req("GET", &format!("{path}?{moved}"), &[], b"", false);
    assert_eq!(r.status, 401);
    // Expired, or reaching beyond the server's limit (7 days by default).
    let key = TOKEN.as_bytes();
    let stale = signature::signed_url(key, "GET", path, unix_now() - 1);
    let r = s.conn().req("GET", &stale, &[], b"", false);
    assert_eq!(r.status, 401);
    assert!(String::from_utf8_lossy(&r.body).contains("expired"));
    let far = signature::signed_url(key, "GET", path, unix_now() + 8 * 86_400);
    let r = s.conn().req("GET", &far, &[], b"", false);
    assert_eq!(r.status, 401);
    assert!(String::from_utf8_lossy(&r.body).contains("too far ahead"));
    // A signature in the header, for a PUT; the body is the signer's choice.
    let exp = unix_now() + 60;
    let sig = signature::sign(key, "PUT", "/vol01/3/up.txt", exp);
    let auth = format!("TSHS-HMAC-SHA256 Expires={exp}, Signature={sig}");
    let r = s.conn().req(
        "PUT",
        "/vol01/3/up.txt",
        &[("Authorization", auth.as_str())],
        b"uploaded",
        false,
    );
    assert_eq!(r.status, 201);
    assert_eq!(std::fs::read(space.join("up.txt")).unwrap(), b"uploaded");
    // Both at once is ambiguous, and refused.
    let r = s.conn().req(
        "PUT",
        &format!("/vol01/3/up.txt?{query}"),
        &[("Authorization", auth.as_str())],
        b"again",
        false,
    );
    assert_eq!(r.status, 401);
    assert!(String::from_utf8_lossy(&r.body).contains("send one"));
    assert_eq!(std::fs::read(space.join("up.txt")).unwrap(), b"uploaded");
    assert!(space.join("doc one.txt").exists() && space.join("other").exists());
    // Names the sign command must encode: what it prints reaches the file.
    for name in ["100%", "a?b", "c#d", "e+f", "grüße ü", "semi;colon&amp"] {
        std::fs::write(space.join(name), name.as_bytes()).unwrap();
        let url = sign(&s, &[&format!("/vol01/3/{name}")]).unwrap();
        let r = s.conn().req("GET", &url, &[], b"", false);
        assert_eq!(
            (r.status, r.body.as_slice()),
            (200, name.as_bytes()),
            "{url}"
        );
    }
    // Neither the access log nor stderr holds a signature.
    let sig_of_url = query.rsplit('=').next().unwrap();
    let log = s.access_log() + &s.stderr.lock().unwrap();
    assert!(log.contains("GET /vol01/3/doc%20one.txt 200"), "{log}");
    assert!(!log.contains(sig_of_url) && !log.contains(&sig), "{log}");

    // Bad input to the sign command: one line, exit 1, no URL.
    for (args, why) in [
        (&["--method", "PATCH", "/vol01/3/x"][..], "not a method"),
        (&["vol01/3/x"][..], "must start with /"),
        (&["/vol01/../etc/passwd"][..], "would refuse"),
        (
            &["--expires-in", "604801", "/vol01/3/x"][..],
            "beyond the server's",
        ),
    ] {
        let e = sign(&s, args).unwrap_err();
        assert!(e.contains(why), "{args:?}: {e}");
    }
    let out = server_command(&["sign", "--token-file", "/nonexistent/token", "/vol01/3/x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the token file"));
}

/// `tshs-space-server ARGS` run to its end, for its bad input.
fn server_command(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tshs-space-server"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn auth_modes_open_only_their_way_in() {
    let c = TestCluster::with_nodes();
    let m = Mount::new(&c, &[]);
    std::fs::write(m.space(3).join("f"), b"data").unwrap();
    let signed_only = Server::start(m.path(), &["--auth", "signed"]);
    let token_only = Server::start(m.path(), &["--auth", "token"]);
    let url = sign(&signed_only, &["/vol01/3/f"]).unwrap();

    let r = signed_only.req("GET", "/vol01/3/f", &[], b"");
    assert_eq!(r.status, 401);
    assert!(String::from_utf8_lossy(&r.body).contains("bearer tokens are not accepted"));
    assert_eq!(r.header("www-authenticate"), Some("TSHS-HMAC-SHA256"));
    let r = signed_only.conn().req("GET", &url, &[], b"", false);
    assert_eq!((r.status, r.body.as_slice()), (200, &b"data"[..]));

    let r = token_only.conn().req("GET", &url, &[], b"", false);
    assert_eq!(r.status, 401);
    assert!(String::from_utf8_lossy(&r.body).contains("signed requests are not accepted"));
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let r = token_only.req("GET", "/vol01/3/f", &[], b"");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"data"[..]));

    // A mode the server does not know: one line, and no server.
    let token = signed_only.dir.path().join("token");
    let out = server_command(&[
        "--root",
        "/nonexistent",
        "--auth",
        "hmac",
        "--token-file",
        token.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value 'hmac'"));
}

#[test]
fn paths_cannot_leave_the_root_and_bodies_are_limited() {
    let c = TestCluster::with_nodes();
    let (m, s) = start(&c, &["--max-body", "64K"]);
    let space = m.space(3);
    std::fs::write(space.join("a.txt"), b"inside").unwrap();
    std::os::unix::fs::symlink("/etc", space.join("etc")).unwrap();
    std::os::unix::fs::symlink("../../..", space.join("up")).unwrap();
    std::os::unix::fs::symlink("a.txt", space.join("link")).unwrap();
    for path in [
        "/vol01/3/../../../etc/passwd",
        "/vol01/3/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/vol01/3/..%2F..%2F..%2Fetc%2Fpasswd",
        "/vol01/3/a%2Fb",
        "/vol01/3/a%00b",
        "/vol01/3/etc/passwd",
        "/vol01/3/up/",
    ] {
        let r = s.req("GET", path, &[], b"");
        assert_eq!(
            r.status,
            403,
            "GET {path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(r.json()["error"].is_string());
    }
    // A symlink that stays inside is followed.
    assert_eq!(s.req("GET", "/vol01/3/link", &[], b"").body, b"inside");
    // Writes through a symlink out of the root, or outside a space, are refused.
    assert_eq!(s.req("PUT", "/vol01/3/etc/x", &[], b"x").status, 403);
    assert_eq!(s.req("PUT", "/vol01/x", &[], b"x").status, 403);
    assert_eq!(s.req("DELETE", "/vol01/3", &[], b"").status, 403);
    assert_eq!(s.req("POST", "/vol01/3/other.log", &[], b"x").status, 405);
    assert_eq!(s.req("PATCH", "/vol01/3/a.txt", &[], b"x").status, 405);

    // Too large: refused on the declared length, before a byte is read…
    let mut conn = s.conn();
    conn.send_head("PUT", "/vol01/3/big", &[], 1 << 30, true);
    assert_eq!(conn.read(false).status, 413);
    // …and on the real one.
    let big = vec![b'x'; 64 * 1024 + 1];
    assert_eq!(s.req("PUT", "/vol01/3/big", &[], &big).status, 413);
    assert_eq!(
        s.req("POST", "/vol01/3/protolog/last.log", &[], &big)
            .status,
        413
    );
    assert!(!space.join("big").exists());
    assert_eq!(s.req("PUT", "/vol01/3/big", &[], &big[1..]).status, 201);
    assert_eq!(std::fs::read(space.join("big")).unwrap(), &big[1..]);
}

#[test]
fn get_head_range_put_delete_and_listing() {
    let c = TestCluster::with_nodes();
    let (m, s) = start(&c, &[]);
    let space = m.space(3);
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let r = s.req("PUT", "/vol01/3/dir/f.bin", &[], &data);
    assert_eq!(r.status, 404, "no parent directory");
    std::fs::create_dir(space.join("dir")).unwrap();
    let r = s.req("PUT", "/vol01/3/dir/f.bin", &[], &data);
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["size"], data.len());
    assert_eq!(std::fs::read(space.join("dir/f.bin")).unwrap(), data);
    assert_eq!(s.req("PUT", "/vol01/3/dir/f.bin", &[], &data).status, 200);

    let r = s.req("GET", "/vol01/3/dir/f.bin", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert!(r.body == data, "whole file differs");
    let r = s.req("HEAD", "/vol01/3/dir/f.bin", &[], b"");
    assert_eq!(
        (r.status, r.header("content-length")),
        (200, Some("3000000"))
    );
    let n = data.len();
    for (range, start, end) in [
        ("bytes=0-0", 0, 1),
        ("bytes=1000-2000999", 1000, 2_001_000),
        ("bytes=2999990-", 2_999_990, n),
        ("bytes=-10", n - 10, n),
        ("bytes=100-99999999", 100, n),
    ] {
        let r = s.req("GET", "/vol01/3/dir/f.bin", &[("Range", range)], b"");
        assert_eq!(r.status, 206, "{range}");
        assert_eq!(
            r.header("content-range").unwrap(),
            format!("bytes {start}-{}/{n}", end - 1)
        );
        assert!(r.body == data[start..end], "{range}: bytes differ");
    }
    for range in ["bytes=3000000-", "bytes=-0"] {
        let r = s.req("GET", "/vol01/3/dir/f.bin", &[("Range", range)], b"");
        assert_eq!(r.status, 416, "{range}");
        assert_eq!(r.header("content-range"), Some("bytes */3000000"));
    }
    // Several ranges are ignored: the whole file.
    let r = s.req(
        "GET",
        "/vol01/3/dir/f.bin",
        &[("Range", "bytes=0-1,5-6")],
        b"",
    );
    assert_eq!((r.status, r.body.len()), (200, n));
    // Keep-alive: several requests on one connection.
    let mut conn = s.conn();
    for _ in 0..3 {
        let r = conn.req(
            "GET",
            "/vol01/3/dir/f.bin",
            &[("Range", "bytes=5-9")],
            b"",
            true,
        );
        assert_eq!(r.body, &data[5..10]);
    }

    std::fs::write(space.join("dir/b.txt"), b"bee").unwrap();
    let l = s.req("GET", "/vol01/3/dir", &[], b"").json();
    assert_eq!(l["path"], "/vol01/3/dir");
    let entries = l["entries"].as_array().unwrap();
    let names: Vec<_> = entries
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["b.txt", "f.bin"], "no temporary file is left");
    assert_eq!(entries[0]["type"], "file");
    assert_eq!(entries[0]["size"], 3);
    let l = s.req("GET", "/vol01/3/", &[], b"").json();
    assert_eq!(l["entries"][0]["name"], "dir");
    assert_eq!(l["entries"][0]["type"], "dir");
    let l = s.req("GET", "/vol01", &[], b"").json();
    assert!(
        l["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "3")
    );
    assert_eq!(s.req("GET", "/vol01/3/nope", &[], b"").status, 404);
    assert_eq!(s.req("GET", "/vol01/999999", &[], b"").status, 404);

    assert_eq!(
        s.req("DELETE", "/vol01/3/dir", &[], b"").status,
        409,
        "not empty"
    );
    assert_eq!(s.req("DELETE", "/vol01/3/dir/f.bin", &[], b"").status, 204);
    assert_eq!(s.req("DELETE", "/vol01/3/dir/b.txt", &[], b"").status, 204);
    assert_eq!(s.req("GET", "/vol01/3/dir/f.bin", &[], b"").status, 404);
    assert_eq!(s.req("DELETE", "/vol01/3/dir", &[], b"").status, 204);
    assert!(!space.join("dir").exists());
    assert_eq!(s.req("DELETE", "/vol01/3/dir", &[], b"").status, 404);

    let log = s.access_log();
    let line = log
        .lines()
        .find(|l| l.contains("HEAD /vol01/3/dir/f.bin"))
        .unwrap();
    let f: Vec<_> = line.split(' ').collect();
    assert_eq!(
        (f[2], f[3], f[4]),
        ("HEAD", "/vol01/3/dir/f.bin", "200"),
        "{line}"
    );
    assert!(f[6].ends_with("ms"), "{line}");
}

#[test]
fn put_is_atomic_for_readers() {
    let c = TestCluster::with_nodes();
    let (m, s) = start(&c, &[]);
    m.space(3);
    let a = vec![b'a'; 1 << 20];
    let b = vec![b'b'; 3 << 19];
    assert_eq!(s.req("PUT", "/vol01/3/f", &[], &a).status, 201);
    let done = Arc::new(AtomicBool::new(false));
    let s = Arc::new(s);
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (s, done) = (s.clone(), done.clone());
            std::thread::spawn(move || {
                let mut reads = 0;
                // At least one read, however late this thread runs.
                loop {
                    let r = s.req("GET", "/vol01/3/f", &[], b"");
                    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                    let got = r.body;
                    let ok = (got.len() == 1 << 20 && got.iter().all(|&x| x == b'a'))
                        || (got.len() == 3 << 19 && got.iter().all(|&x| x == b'b'));
                    assert!(ok, "a reader saw a partial file of {} bytes", got.len());
                    reads += 1;
                    if done.load(Ordering::Acquire) {
                        break;
                    }
                }
                reads
            })
        })
        .collect();
    for i in 0..20 {
        let data = if i % 2 == 0 { &b } else { &a };
        assert_eq!(s.req("PUT", "/vol01/3/f", &[], data).status, 200);
    }
    done.store(true, Ordering::Release);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
}

/// Reads every log of a space's protolog through a mount: inode → bytes,
/// and the names seen.
fn logs(protolog: &Path) -> (HashMap<u64, Vec<u8>>, Vec<String>) {
    let mut by_ino = HashMap::new();
    let mut names = Vec::new();
    for e in std::fs::read_dir(protolog).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        let p = e.path();
        by_ino.insert(
            std::fs::metadata(&p).unwrap().ino(),
            std::fs::read(&p).unwrap(),
        );
        names.push(name);
    }
    names.sort();
    (by_ino, names)
}

/// Every acknowledged append is at its offset in the file of its inode, its
/// record occurs exactly once in the space's logs, and the logs hold
/// nothing else (records are single lines).
fn verify(acks: &[(u64, u64, u64, Vec<u8>)], by_ino: &HashMap<u64, Vec<u8>>) {
    let mut count: HashMap<&[u8], usize> = HashMap::new();
    for f in by_ino.values() {
        for rec in f.split_inclusive(|&b| b == b'\n') {
            *count.entry(rec).or_default() += 1;
        }
    }
    for (ino, offset, end, body) in acks {
        let file = by_ino
            .get(ino)
            .unwrap_or_else(|| panic!("inode {ino} of an acknowledged append is gone"));
        assert_eq!(*end - *offset, body.len() as u64);
        assert!(
            file.len() as u64 >= *end && &file[*offset as usize..*end as usize] == body.as_slice(),
            "{} not at its offset {offset} in inode {ino}",
            String::from_utf8_lossy(body)
        );
        let n = count.get(body.as_slice()).copied().unwrap_or(0);
        assert_eq!(
            n,
            1,
            "{} is in the logs {n} times",
            String::from_utf8_lossy(body)
        );
    }
    let stored: usize = by_ino.values().map(Vec::len).sum();
    let acked: usize = acks.iter().map(|a| a.3.len()).sum();
    assert_eq!(stored, acked, "the logs hold bytes no append acknowledged");
}

/// An xattr of an open file as text, or the errno.
fn fgetxattr(f: &std::fs::File, name: &str) -> Result<String, i32> {
    use std::os::fd::AsRawFd;
    let name = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: a NUL-terminated name and a writable buffer of its length.
    let n = unsafe {
        libc::fgetxattr(
            f.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap());
    }
    buf.truncate(n as usize);
    Ok(String::from_utf8(buf).unwrap())
}

/// setxattr (`remove`: removexattr) on an open file; the errno if refused.
fn fsetxattr(f: &std::fs::File, name: &str, value: Option<&str>) -> Result<(), i32> {
    use std::os::fd::AsRawFd;
    let name = std::ffi::CString::new(name).unwrap();
    // SAFETY: a NUL-terminated name and a readable value of its length.
    let r = unsafe {
        match value {
            Some(v) => libc::fsetxattr(f.as_raw_fd(), name.as_ptr(), v.as_ptr().cast(), v.len(), 0),
            None => libc::fremovexattr(f.as_raw_fd(), name.as_ptr()),
        }
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap());
    }
    Ok(())
}

/// The mount tells each thread where its own last `O_APPEND` write landed,
/// also while another mount appends; the name is the mount's alone.
/// The mount's append call (`tshs::protocol::APPEND_IOCTL`) with `len`
/// as the length it claims and `data`: the offset it landed at, or errno.
fn append_call(f: &std::fs::File, cmd: u32, len: u32, data: &[u8]) -> Result<u64, i32> {
    use std::os::fd::AsRawFd;
    let mut arg = tshs::protocol::AppendArg::new(data);
    arg.len = len;
    // SAFETY: the argument the command's size names, alive for the call.
    let r = unsafe {
        libc::ioctl(
            f.as_raw_fd(),
            cmd as libc::Ioctl,
            &mut *arg as *mut tshs::protocol::AppendArg,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap());
    }
    Ok(arg.landed().expect("the mount knows where it landed"))
}

/// Appends through the call from many threads on one descriptor: each
/// lands whole, once, where it says, committed when the call returns (the
/// other mount reads it while the file is still open here). Refused on a
/// descriptor not open `O_APPEND` for writing, with a wrong length, and
/// any other command is not the mount's.
#[test]
fn the_append_call_is_durable_and_tells_where_it_landed() {
    use tshs::protocol::{APPEND_IOCTL, APPEND_IOCTL_DATA};
    let c = TestCluster::with_nodes();
    let m1 = Mount::new(&c, &[]);
    let m2 = Mount::new(&c, &[]);
    let path = m1.space(3).join("calls.log");
    let f = Arc::new(
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .unwrap(),
    );
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let f = f.clone();
            std::thread::spawn(move || {
                (0..25)
                    .map(|k| {
                        let record = format!("<{t}:{k}>").repeat(1 + k % 7).into_bytes();
                        let at = append_call(&f, APPEND_IOCTL, record.len() as u32, &record)
                            .expect("append call");
                        (at, record)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let landed: Vec<(u64, Vec<u8>)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let seen = std::fs::read(m2.path().join("vol01/3/calls.log")).unwrap();
    let total: usize = landed.iter().map(|(_, r)| r.len()).sum();
    assert_eq!(seen.len(), total, "every append once, nothing else");
    for (at, record) in &landed {
        let at = *at as usize;
        assert!(
            seen.get(at..at + record.len()) == Some(&record[..]),
            "a record at the offset the call told"
        );
    }
    // Refused: a descriptor for reading only, one not open O_APPEND, a
    // length past the most or past what was sent.
    let read_only = std::fs::File::open(&path).unwrap();
    assert_eq!(
        append_call(&read_only, APPEND_IOCTL, 1, b"x"),
        Err(libc::EBADF)
    );
    let writer = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    assert_eq!(
        append_call(&writer, APPEND_IOCTL, 1, b"x"),
        Err(libc::EBADF)
    );
    let too_long = APPEND_IOCTL_DATA as u32 + 1;
    assert_eq!(
        append_call(&f, APPEND_IOCTL, too_long, b"x"),
        Err(libc::EINVAL)
    );
    // Another command with the same argument size is not ours.
    assert_eq!(
        append_call(&f, APPEND_IOCTL + 1, 1, b"x"),
        Err(libc::ENOTTY)
    );
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        total as u64,
        "nothing of the refused calls landed"
    );
}

#[test]
fn the_mount_tells_each_thread_where_its_append_landed() {
    let c = TestCluster::with_nodes();
    let m1 = Mount::new(&c, &[]);
    let m2 = Mount::new(&c, &[]);
    let path = m1.space(3).join("last.log");
    let open = |p: &Path| {
        Arc::new(
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(p)
                .unwrap(),
        )
    };
    let f = open(&path);
    const OFF: &str = "user.tshs.append_offset";
    assert_eq!(
        fgetxattr(&f, OFF),
        Err(libc::ENODATA),
        "nothing appended yet"
    );
    (&*f).write_all(b"aaa").unwrap();
    assert_eq!(fgetxattr(&f, OFF).as_deref(), Ok("0"));
    // Another thread, same descriptor: its own offset; ours is unchanged.
    let other = {
        let f = f.clone();
        std::thread::spawn(move || {
            let before = fgetxattr(&f, OFF);
            (&*f).write_all(b"bbbb").unwrap();
            (before, fgetxattr(&f, OFF))
        })
        .join()
        .unwrap()
    };
    assert_eq!(other, (Err(libc::ENODATA), Ok("3".to_string())));
    assert_eq!(fgetxattr(&f, OFF).as_deref(), Ok("0"));
    // The other mount appends; this one lands after it.
    let g = open(&m2.path().join("vol01/3/last.log"));
    (&*g).write_all(b"cc").unwrap();
    assert_eq!(fgetxattr(&g, OFF).as_deref(), Ok("7"));
    (&*f).write_all(b"dddd\n").unwrap();
    assert_eq!(fgetxattr(&f, OFF).as_deref(), Ok("9"));
    assert_eq!(std::fs::read(&path).unwrap(), b"aaabbbbccdddd\n");

    // Reserved: not stored, not listed; other names work as before.
    for name in [OFF, "user.tshs.s3_url"] {
        assert_eq!(fsetxattr(&f, name, Some("5")), Err(libc::EPERM), "{name}");
        assert_eq!(fsetxattr(&f, name, None), Err(libc::EPERM), "{name}");
    }
    fsetxattr(&f, "user.note", Some("n")).unwrap();
    assert_eq!(fgetxattr(&f, "user.note").as_deref(), Ok("n"));
    assert_eq!(fgetxattr(&f, OFF).as_deref(), Ok("9"));
    let listed = sh(&format!("getfattr -d -m - '{}'", path.display()));
    assert!(
        listed.contains("user.note") && !listed.contains("tshs"),
        "{listed}"
    );
    // A file in the database has no S3 URL; a fresh open no offsets.
    assert_eq!(fgetxattr(&f, "user.tshs.s3_url"), Err(libc::ENODATA));
    drop((f, g));
    let f = std::fs::File::open(&path).unwrap();
    assert_eq!(fgetxattr(&f, OFF), Err(libc::ENODATA));
}

/// `LANDED_IOCTL` of a descriptor, or the errno.
fn landed(f: &std::fs::File) -> Result<u64, i32> {
    use std::os::fd::AsRawFd;
    let mut at = 0u64;
    // SAFETY: the `u64` the command's size names, alive for the call.
    let r = unsafe {
        libc::ioctl(
            f.as_raw_fd(),
            tshs::protocol::LANDED_IOCTL as libc::Ioctl,
            &mut at,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap());
    }
    Ok(at)
}

/// Where the last append through a descriptor landed
/// (`LANDED_IOCTL`): per descriptor, so two descriptors of one thread (or
/// callers FUSE gives one thread id) each learn their own; known for
/// appends that waited for their commit (`O_SYNC`, the append call), not
/// for one queued behind its write; refused on a descriptor that does not
/// append.
#[test]
fn the_mount_tells_each_descriptor_where_its_append_landed() {
    use std::os::unix::fs::OpenOptionsExt;
    use tshs::protocol::APPEND_IOCTL;
    let c = TestCluster::with_nodes();
    let m1 = Mount::new(&c, &[]);
    let m2 = Mount::new(&c, &[]);
    let path = m1.space(3).join("last.log");
    let open = |p: &Path, sync: bool| {
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .custom_flags(if sync { libc::O_SYNC } else { 0 })
            .open(p)
            .unwrap()
    };
    let (a, b) = (open(&path, true), open(&path, true));
    assert_eq!(landed(&a), Err(libc::ENODATA), "nothing appended yet");
    (&a).write_all(b"aaa").unwrap();
    (&b).write_all(b"bbbb").unwrap();
    assert_eq!((landed(&a), landed(&b)), (Ok(0), Ok(3)));
    // The thread's offset is the last one of either descriptor.
    assert_eq!(fgetxattr(&a, "user.tshs.append_offset").as_deref(), Ok("3"));
    // Another mount appends; ours lands after it.
    (&open(&m2.path().join("vol01/3/last.log"), false))
        .write_all(b"cc")
        .unwrap();
    (&a).write_all(b"dd").unwrap();
    assert_eq!((landed(&a), landed(&b)), (Ok(9), Ok(3)));
    // Queued behind its write: not known.
    let q = open(&path, false);
    (&q).write_all(b"e").unwrap();
    (&q).write_all(b"f").unwrap();
    assert_eq!(landed(&q), Err(libc::ENODATA));
    q.sync_all().unwrap();
    // The append call tells it too.
    assert_eq!(append_call(&q, APPEND_IOCTL, 3, b"ggg"), Ok(13));
    assert_eq!(landed(&q), Ok(13));
    // A queued append after it: not known, not the call's offset.
    (&q).write_all(b"h").unwrap();
    assert_eq!(landed(&q), Err(libc::ENODATA));
    (&a).write_all(b"\n").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"aaabbbbccddefgggh\n");
    // Only a descriptor that appends.
    let ro = std::fs::File::open(&path).unwrap();
    let rw = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    assert_eq!(
        (landed(&ro), landed(&rw)),
        (Err(libc::EBADF), Err(libc::EBADF))
    );
}

/// Bodies too large for the append call go by `write` on an `O_SYNC`
/// descriptor, and the mount tells each where it landed: three servers,
/// two of them on a mount whose daemon sees all their threads as thread
/// id 0 (its own pid namespace), the third on another mount, appending to
/// one log at once, acknowledge each at its offset, once.
#[test]
fn large_appends_through_three_servers_return_their_offsets() {
    let c = TestCluster::with_nodes();
    let m = Mount::in_own_pid_namespace(&c);
    // Two threads here are one to that daemon: the per-thread xattr mixes
    // their appends up, each descriptor's answer does not.
    let log = m.space(3).join("threads.log");
    let open = || {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .custom_flags(libc::O_SYNC)
            .open(&log)
            .unwrap()
    };
    let mine = open();
    (&mine).write_all(b"aaa").unwrap();
    let theirs = std::thread::scope(|t| {
        t.spawn(|| {
            let f = open();
            (&f).write_all(b"bbbb").unwrap();
            landed(&f)
        })
        .join()
        .unwrap()
    });
    assert_eq!((landed(&mine), theirs), (Ok(0), Ok(3)));
    assert_eq!(
        fgetxattr(&mine, "user.tshs.append_offset").as_deref(),
        Ok("3"),
        "the other thread's, as thread id 0"
    );
    let (s1, s2) = (Server::start(m.path(), &[]), Server::start(m.path(), &[]));
    let (_m2, s3) = start(&c, &[]);
    let acks = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = [Arc::new(s1), Arc::new(s2), Arc::new(s3)]
        .into_iter()
        .flat_map(|s| (0..3).map(move |t| (s.clone(), t)))
        .enumerate()
        .map(|(n, (s, t))| {
            let acks = acks.clone();
            std::thread::spawn(move || {
                let mut conn = s.conn();
                for i in 0..8 {
                    let body = format!("<big {n}/{t}/{i} {}>\n", "y".repeat(17_000 + 997 * i))
                        .into_bytes();
                    let r = conn.req("POST", "/vol01/3/protolog/last.log", &[], &body, true);
                    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                    let j = r.json();
                    acks.lock().unwrap().push((
                        j["ino"].as_u64().unwrap(),
                        j["offset"].as_u64().unwrap(),
                        j["end"].as_u64().unwrap(),
                        body,
                    ));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let (by_ino, _) = logs(&m.path().join("vol01/3/protolog"));
    verify(&acks.lock().unwrap(), &by_ino);
    assert_eq!(acks.lock().unwrap().len(), 72);
}

/// `curl` of a URL: (status, body, or the first bytes of an error document).
fn curl(url: &str, range: Option<&str>) -> (u16, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("body");
    let range = range
        .map(|r| format!("-H 'Range: {r}'"))
        .unwrap_or_default();
    let status = sh(&format!(
        "curl -s {range} -o '{}' -w '%{{http_code}}' '{url}'",
        out.display()
    ));
    (status.trim().parse().unwrap(), std::fs::read(out).unwrap())
}

/// With `--s3-redirect`, GET of a file whose data is in S3 answers 307 to a
/// presigned URL of its object, valid RedirectTimeout seconds; everything
/// else (HEAD, files in the database, the option off, RedirectTimeout=0) is
/// served from the mount.
#[test]
fn files_in_s3_are_redirected_to_a_presigned_url() {
    let c = TestCluster::with_nodes();
    let ep = env("TSHS_S3_ENDPOINT");
    let bucket = c.new_bucket("redirect");
    let (ak, sk) = common::s3_keys();
    let options = "MinSize=1K;RedirectTimeout=60";
    c.ok(&["add-s3-host", "GENERIC", &ep, &bucket, ak, sk, options]);
    let m = Mount::new(&c, &[]);
    let space = m.space(3);
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 13 % 251) as u8).collect();
    std::fs::write(space.join("s3.bin"), &data).unwrap();
    std::fs::write(space.join("db.bin"), b"small, stays in the database").unwrap();
    let out = c.ok(&["move-to-s3", "--settle", "0"]);
    assert!(out.contains("move-to-s3: 1 files"), "{out}");
    // The mount offers the URL of a moved file only.
    let f = std::fs::File::open(space.join("s3.bin")).unwrap();
    let url = fgetxattr(&f, "user.tshs.s3_url").unwrap();
    assert!(
        url.starts_with(&format!("{ep}/{bucket}/")),
        "{}",
        &url[..40]
    );
    assert!(
        url.contains("X-Amz-Expires=60&"),
        "RedirectTimeout is the validity"
    );
    let db = std::fs::File::open(space.join("db.bin")).unwrap();
    assert_eq!(fgetxattr(&db, "user.tshs.s3_url"), Err(libc::ENODATA));

    let on = Server::start(m.path(), &["--s3-redirect"]);
    let off = Server::start(m.path(), &[]);
    let r = on.req("GET", "/vol01/3/s3.bin", &[], b"");
    assert_eq!(r.status, 307, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let location = r.header("location").unwrap().to_string();
    assert!(location.starts_with(&format!("{ep}/{bucket}/")));
    let (status, body) = curl(&location, None);
    assert_eq!(status, 200);
    assert!(body == data, "the object's bytes differ from the file's");
    // A range is redirected too, and S3 honours it.
    let r = on.req(
        "GET",
        "/vol01/3/s3.bin",
        &[("Range", "bytes=1000-1999")],
        b"",
    );
    assert_eq!(r.status, 307);
    let (status, body) = curl(r.header("location").unwrap(), Some("bytes=1000-1999"));
    assert_eq!((status, body.as_slice()), (206, &data[1000..2000]));
    // HEAD, a file in the database, and a server without the option: served.
    let r = on.req("HEAD", "/vol01/3/s3.bin", &[], b"");
    assert_eq!(
        (r.status, r.header("content-length")),
        (200, Some("300000"))
    );
    let r = on.req("GET", "/vol01/3/db.bin", &[], b"");
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"small, stays in the database"[..])
    );
    let r = off.req("GET", "/vol01/3/s3.bin", &[], b"");
    assert_eq!(r.status, 200);
    assert!(r.body == data);
    // The signature is in no log.
    let logs = format!("{}{}", on.access_log(), on.stderr.lock().unwrap());
    assert!(logs.contains("GET /vol01/3/s3.bin 307"), "{logs}");
    assert!(!logs.contains("X-Amz-Signature"), "{logs}");

    // RedirectTimeout=0: no redirects. The running mount takes the new
    // options at the topology epoch update-s3-host bumps.
    c.ok(&["update-s3-host", "1", "RedirectTimeout=0"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let r = loop {
        let r = on.req("GET", "/vol01/3/s3.bin", &[], b"");
        if r.status != 307 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(r.status, 200, "the mount kept RedirectTimeout=60");
    assert!(r.body == data);

    // RedirectTimeout=1: the URL is signed now, for one second; the store
    // refuses it once it has expired.
    c.ok(&["update-s3-host", "1", "RedirectTimeout=1"]);
    let utc_now = || sh("date -u +%Y%m%dT%H%M%SZ").trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (before, r, after) = loop {
        let before = utc_now();
        let r = on.req("GET", "/vol01/3/s3.bin", &[], b"");
        if r.status == 307 || Instant::now() > deadline {
            break (before, r, utc_now());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(r.status, 307);
    let location = r.header("location").unwrap();
    assert!(location.contains("X-Amz-Expires=1&"));
    let signed = location
        .split("X-Amz-Date=")
        .nth(1)
        .and_then(|s| s.split('&').next())
        .unwrap();
    assert!(
        before.as_str() <= signed && signed <= after.as_str(),
        "{before} {signed} {after}"
    );
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(curl(location, None).0, 403, "an expired URL is refused");
}

#[test]
fn appends_return_their_offsets_and_logs_rotate() {
    let c = TestCluster::with_nodes();
    let (m, s) = start(&c, &["--rotate-size", "1000"]);
    m.space(3);
    let s = Arc::new(s);
    let acks = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (s, acks) = (s.clone(), acks.clone());
            std::thread::spawn(move || {
                let mut conn = s.conn();
                for i in 0..40 {
                    let body = format!("<record {t}/{i} {}>\n", "x".repeat(40 + i)).into_bytes();
                    let r = conn.req("POST", "/vol01/3/protolog/last.log", &[], &body, true);
                    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                    let j = r.json();
                    let (off, end) = (j["offset"].as_u64().unwrap(), j["end"].as_u64().unwrap());
                    let file = j["file"].as_str().unwrap();
                    assert!(file == "last.log" || file.ends_with(".log"), "{file}");
                    acks.lock()
                        .unwrap()
                        .push((j["ino"].as_u64().unwrap(), off, end, body));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let (by_ino, names) = logs(&m.path().join("vol01/3/protolog"));
    let acks = acks.lock().unwrap();
    verify(&acks, &by_ino);
    // About 10 kB in 1000-byte logs: 0.log … n.log without gaps.
    let mut rotated: Vec<u64> = names
        .iter()
        .filter_map(|n| n.strip_suffix(".log")?.parse().ok())
        .collect();
    rotated.sort();
    assert!(rotated.len() >= 5, "{names:?}");
    assert_eq!(
        rotated,
        (0..rotated.len() as u64).collect::<Vec<_>>(),
        "{names:?}"
    );
    for (ino, data) in &by_ino {
        let name = names
            .iter()
            .find(|n| {
                std::fs::metadata(m.path().join("vol01/3/protolog").join(n))
                    .unwrap()
                    .ino()
                    == *ino
            })
            .unwrap();
        if name != "last.log" {
            assert!(data.len() >= 1000, "{name} rotated at {} bytes", data.len());
        }
    }
}

/// After server A rotated last.log, server B's mount still shows the old
/// file under that name for its entry TTL: B's append must not go there.
#[test]
fn a_rotated_log_does_not_grow_through_another_mounts_stale_name() {
    let c = TestCluster::with_nodes();
    let (m1, a) = start(&c, &["--rotate-size", "100"]);
    let m2 = Mount::new(&c, &[]);
    let b = Server::start(m2.path(), &["--rotate-size", "100"]);
    m1.space(3);
    let retries = std::cell::Cell::new(0);
    let post = |s: &Server, body: &[u8]| {
        let (r, retried) = s.conn().append("/vol01/3/protolog/last.log", body);
        retries.set(retries.get() + retried);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()
    };
    let b1 = format!("{}\n", "b".repeat(69));
    let first = post(&b, b1.as_bytes());
    let a1 = format!("{}\n", "a".repeat(39));
    let rotated = post(&a, a1.as_bytes());
    assert_eq!(rotated["file"], "0.log");
    assert_eq!(rotated["ino"], first["ino"]);
    let r = post(&b, b"b2\n");
    assert_eq!(
        (r["file"].as_str(), r["offset"].as_u64()),
        (Some("last.log"), Some(0))
    );
    assert_ne!(r["ino"], first["ino"]);
    let dir = m1.path().join("vol01/3/protolog");
    assert_eq!(
        std::fs::read(dir.join("0.log")).unwrap(),
        format!("{b1}{a1}").into_bytes()
    );
    // Each record once: none of the 503s wrote anything.
    assert_eq!(std::fs::read(dir.join("last.log")).unwrap(), b"b2\n");
    println!("{} appends retried after 503", retries.get());
}

#[test]
fn a_standby_volume_answers_503_to_writes() {
    let c = TestCluster::with_nodes();
    let (m, s) = start(&c, &[]);
    let space = m.space(3);
    std::fs::write(space.join("a"), b"a").unwrap();
    let cl = c.cluster();
    let vol = cl.volume_by_name("vol01").unwrap().unwrap();
    cl.set_volume_status(vol.id, tshs::cluster::VolumeStatus::Standby)
        .unwrap();
    let t = Instant::now();
    let r = loop {
        let r = s.req("POST", "/vol01/3/protolog/last.log", &[], b"x");
        if r.status != 200 || t.elapsed() > Duration::from_secs(60) {
            break r;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.json()["error"].as_str().unwrap().contains("read-only"));
    assert_eq!(s.req("PUT", "/vol01/3/b", &[], b"b").status, 503);
    assert_eq!(
        s.req("GET", "/vol01/3/a", &[], b"").body,
        b"a",
        "reads still work"
    );
}

#[test]
fn access_refused_by_the_mount_is_403_and_deactivated_spaces_503() {
    // The server as an unprivileged user on a mount others may use: the
    // kernel checks permissions (default_permissions) and says EACCES.
    let c = TestCluster::with_nodes();
    let m = Mount::new(&c, &["allow_other"]);
    let space = m.space(3);
    std::fs::write(space.join("secret"), b"s").unwrap();
    std::fs::set_permissions(
        space.join("secret"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    std::fs::write(space.join("open"), b"o").unwrap();
    let s = Server::start_as(m.path(), &[], Some(65534));
    assert_eq!(s.req("GET", "/vol01/3/open", &[], b"").body, b"o");
    let r = s.req("GET", "/vol01/3/secret", &[], b"");
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("refuses access")
    );
    assert_eq!(s.req("PUT", "/vol01/3/new", &[], b"n").status, 403);
    assert_eq!(
        s.req("POST", "/vol01/3/protolog/last.log", &[], b"n")
            .status,
        403
    );
    assert!(!space.join("new").exists() && !space.join("protolog").exists());

    // A space deactivated for a restore is refused to all but root.
    c.ok(&["deactivate-space", "3"]);
    let t = Instant::now();
    let r = loop {
        let r = s.req("GET", "/vol01/3/open", &[], b"");
        if r.status != 200 || t.elapsed() > Duration::from_secs(60) {
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Its mount says why (the volume's user.tshs.deactivated_spaces): try later.
    let reason = |r: &Resp| r.json()["error"].as_str().unwrap().to_string();
    assert_eq!(
        (r.status, reason(&r)),
        (
            503,
            "space 3 is deactivated for a restore: try again later".to_string()
        )
    );
    assert_eq!(r.header("retry-after"), Some("60"));
    for (method, path) in [
        ("GET", "/vol01/3/"),
        ("PUT", "/vol01/3/new"),
        ("POST", "/vol01/3/protolog/last.log"),
        ("DELETE", "/vol01/3/open"),
    ] {
        let r = s.req(method, path, &[], b"n");
        assert_eq!(r.status, 503, "{method} {path}: {}", reason(&r));
    }
    // Another space of the volume is served, and a file there the user may
    // not read is still 403, not "deactivated".
    std::fs::write(m.space(4).join("f"), b"4").unwrap();
    std::fs::write(m.space(4).join("secret"), b"s").unwrap();
    std::fs::set_permissions(
        m.space(4).join("secret"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    assert_eq!(s.req("GET", "/vol01/4/f", &[], b"").body, b"4");
    assert_eq!(s.req("GET", "/vol01/4/secret", &[], b"").status, 403);
    // The list names the spaces refused to the caller: root is refused none.
    let ids = |user: &str| {
        Command::new("setpriv")
            .args(user.split(' '))
            .args([
                "getfattr",
                "--only-values",
                "-n",
                "user.tshs.deactivated_spaces",
            ])
            .arg(m.path().join("vol01"))
            .output()
            .unwrap()
    };
    let nobody = ids("--reuid=65534 --regid=65534 --clear-groups");
    assert_eq!(String::from_utf8_lossy(&nobody.stdout), "3");
    let root = ids("--reuid=0 --regid=0 --clear-groups");
    assert!(!root.status.success());
    assert!(String::from_utf8_lossy(&root.stderr).contains("No such attribute"));
    c.ok(&["reactivate-space", "3"]);
    let t = Instant::now();
    while s.req("GET", "/vol01/3/open", &[], b"").status != 200 {
        assert!(t.elapsed() < Duration::from_secs(60), "never served again");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(s.req("GET", "/vol01/3/secret", &[], b"").status, 403);
    assert!(space.join("open").exists() && !space.join("new").exists());
}

#[test]
fn sigterm_finishes_the_request_in_flight() {
    let c = TestCluster::with_nodes();
    let (m, mut s) = start(&c, &[]);
    let space = m.space(3);
    let body = vec![b'z'; 100_000];
    let mut conn = s.conn();
    // A whole request first: the server has accepted this connection.
    assert_eq!(conn.req("GET", "/vol01/3/", &[], b"", true).status, 200);
    // The server answers `100 Continue` only once it parsed the head and
    // the handler reads the body: then the request is in flight (a head
    // not parsed yet leaves the connection idle, and shutdown closes it).
    conn.send_head(
        "PUT",
        "/vol01/3/late",
        &[("Expect", "100-continue")],
        body.len(),
        true,
    );
    let mut interim = String::new();
    for _ in 0..2 {
        conn.r.read_line(&mut interim).unwrap();
    }
    assert_eq!(interim, "HTTP/1.1 100 Continue\r\n\r\n");
    conn.r.get_mut().write_all(&body[..50_000]).unwrap();
    let pid = s.child.as_ref().unwrap().id();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    // New connections are refused once it stopped listening…
    let t = Instant::now();
    while TcpStream::connect(&s.addr).is_ok() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "still listening 30 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // …while the request in flight completes.
    conn.r.get_mut().write_all(&body[50_000..]).unwrap();
    assert_eq!(conn.read(false).status, 201);
    assert_eq!(s.stop(), Some(0));
    assert_eq!(std::fs::read(space.join("late")).unwrap(), body);
}

/// What one run of the load measured: rates per second, latencies in ms.
struct LoadFigures {
    appends_s: f64,
    append_p50: f64,
    append_p99: f64,
    gets_s: f64,
    get_p50: f64,
    get_p99: f64,
    appends: usize,
    rotated: usize,
    /// Appends sent again after a 503 "try again".
    retried: usize,
}

/// 32 clients append to `spaces`' last.log, each space's clients spread
/// over both `servers` (so two mounts append to the same log at the same
/// moment), while 4 readers read ranges, for `secs` seconds; then every acknowledged
/// append must be in its log (read from `tree`) exactly once at its offset,
/// and rotated logs must be full and not much more. `what` names the setup
/// in the printed line.
fn run_load(
    what: &str,
    servers: &[Arc<Server>; 2],
    tree: &Path,
    spaces: &[u32],
    secs: u64,
) -> LoadFigures {
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(Mutex::new(
        BTreeMap::<u32, Vec<(u64, u64, u64, Vec<u8>)>>::new(),
    ));
    let lat = Arc::new(Mutex::new(Vec::<(bool, Duration)>::new()));
    let retried = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut threads = Vec::new();
    for client in 0..32usize {
        // Clients c, c + n, c + 2n… share a space; they alternate servers.
        let (s, stop, acks, lat, retried) = (
            servers[(client / spaces.len()) % 2].clone(),
            stop.clone(),
            acks.clone(),
            lat.clone(),
            retried.clone(),
        );
        let space = spaces[client % spaces.len()];
        threads.push(std::thread::spawn(move || {
            let mut conn = s.conn();
            let path = format!("/vol01/{space}/protolog/last.log");
            let mut i = 0usize;
            while !stop.load(Ordering::Acquire) {
                let body = format!("<c{client} n{i} {}>\n", "p".repeat(100 + i % 900)).into_bytes();
                let t = Instant::now();
                // A 503 "try again" wrote nothing: the record is sent again,
                // and verify() still finds each one exactly once.
                let (r, n) = conn.append(&path, &body);
                lat.lock().unwrap().push((true, t.elapsed()));
                retried.fetch_add(n, Ordering::Relaxed);
                assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                let j = r.json();
                acks.lock().unwrap().entry(space).or_default().push((
                    j["ino"].as_u64().unwrap(),
                    j["offset"].as_u64().unwrap(),
                    j["end"].as_u64().unwrap(),
                    body,
                ));
                i += 1;
            }
        }));
    }
    for reader in 0..4usize {
        let (s, stop, lat) = (servers[reader % 2].clone(), stop.clone(), lat.clone());
        let spaces = spaces.to_vec();
        threads.push(std::thread::spawn(move || {
            let mut conn = s.conn();
            let mut i = 0usize;
            while !stop.load(Ordering::Acquire) {
                let path = format!("/vol01/{}/protolog/last.log", spaces[i % spaces.len()]);
                let t = Instant::now();
                let r = conn.req("GET", &path, &[("Range", "bytes=0-4095")], b"", true);
                lat.lock().unwrap().push((false, t.elapsed()));
                // 404: rotated away and not yet created again.
                assert!(
                    [200, 206, 404, 416].contains(&r.status),
                    "GET {path}: {}",
                    r.status
                );
                if r.status == 206 {
                    assert!(
                        r.body.starts_with(b"<c"),
                        "a range read does not start at a record"
                    );
                }
                i += 1;
            }
        }));
    }
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Release);
    for t in threads {
        t.join().unwrap();
    }
    let elapsed = t0.elapsed().as_secs_f64();

    let acks = acks.lock().unwrap();
    let mut rotated = 0;
    let mut biggest = 0;
    for (space, list) in acks.iter() {
        let dir = tree.join(format!("vol01/{space}/protolog"));
        let (by_ino, names) = logs(&dir);
        verify(list, &by_ino);
        for n in names.iter().filter(|n| *n != "last.log") {
            rotated += 1;
            // Rotated once full: only appends racing the rotation itself
            // (at most one per client) may land after that.
            let size = std::fs::metadata(dir.join(n)).unwrap().len();
            assert!(size >= 256 << 10, "{space}/{n} rotated at {size} bytes");
            biggest = biggest.max(size);
        }
    }
    println!("biggest rotated log ({what}): {biggest} bytes");
    assert!(
        biggest < (256 << 10) + 32 * 1100,
        "a rotated log grew to {biggest} bytes"
    );
    let lat = lat.lock().unwrap();
    let p = |append: bool, q: f64| -> f64 {
        let mut v: Vec<f64> = lat
            .iter()
            .filter(|(a, _)| *a == append)
            .map(|(_, d)| d.as_secs_f64() * 1000.0)
            .collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v.get(((v.len() as f64 * q) as usize).min(v.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    let appends = lat.iter().filter(|(a, _)| *a).count();
    let reads = lat.len() - appends;
    let f = LoadFigures {
        appends_s: appends as f64 / elapsed,
        append_p50: p(true, 0.5),
        append_p99: p(true, 0.99),
        gets_s: reads as f64 / elapsed,
        get_p50: p(false, 0.5),
        get_p99: p(false, 0.99),
        appends,
        rotated,
        retried: retried.load(Ordering::Relaxed),
    };
    println!(
        "space-server load: {secs} s, {what}, 32 appenders on 8 spaces + 4 range readers: \
         {:.0} appends/s (p50 {:.1} ms, p99 {:.1} ms), {:.0} range GETs/s (p50 {:.1} ms, p99 {:.1} ms), \
         {} rotated logs, {} appends retried after 503, every acknowledged append found once at its offset",
        f.appends_s,
        f.append_p50,
        f.append_p99,
        f.gets_s,
        f.get_p50,
        f.get_p99,
        f.rotated,
        f.retried
    );
    assert!(appends > 0 && reads > 0);
    f
}

/// 32 clients append to 8 spaces' last.log through two servers on two
/// mounts, each space through both (logs rotating at 256 KiB), while 4
/// readers read ranges; then
/// every acknowledged append must be in its log exactly once at its offset.
///
/// With `TSHS_HTTP_LOAD_LOCAL=DIR` (`scripts/bench-http`) the same load
/// first runs on the local disk, two servers on one temporary directory in
/// DIR, as the baseline, and one `space-server figures:` line per side is
/// printed for the ratio table.
#[test]
fn load_two_servers_on_two_mounts() {
    let secs: u64 = std::env::var("TSHS_HTTP_LOAD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let spaces: Vec<u32> = (11..19).collect();
    let mut sides = Vec::new();
    if let Some(parent) = std::env::var_os("TSHS_HTTP_LOAD_LOCAL") {
        let dir = tempfile::Builder::new()
            .prefix("tshs-bench-http-")
            .tempdir_in(parent)
            .unwrap();
        for id in &spaces {
            // Like Mount::space: the space's directory; the servers create
            // protolog/ and last.log at the first append, as on the mounts.
            std::fs::create_dir_all(dir.path().join(format!("vol01/{id}"))).unwrap();
        }
        let servers = [
            Arc::new(Server::start(dir.path(), &["--rotate-size", "256K"])),
            Arc::new(Server::start(dir.path(), &["--rotate-size", "256K"])),
        ];
        let what = format!("2 servers on one local directory {}", dir.path().display());
        sides.push((
            "local",
            run_load(&what, &servers, dir.path(), &spaces, secs),
        ));
    }
    let c = TestCluster::with_nodes();
    let m1 = Mount::new(&c, &[]);
    let m2 = Mount::new(&c, &[]);
    for id in &spaces {
        m1.space(*id);
    }
    let servers = [
        Arc::new(Server::start(m1.path(), &["--rotate-size", "256K"])),
        Arc::new(Server::start(m2.path(), &["--rotate-size", "256K"])),
    ];
    let mount = run_load("2 servers on 2 mounts", &servers, m1.path(), &spaces, secs);
    sides.push(("mount", mount));
    if sides.len() > 1 {
        for (side, f) in &sides {
            println!(
                "space-server figures: {side} {:.1} {:.3} {:.3} {:.1} {:.3} {:.3} {} {}",
                f.appends_s,
                f.append_p50,
                f.append_p99,
                f.gets_s,
                f.get_p50,
                f.get_p99,
                f.appends,
                f.rotated
            );
        }
    }
}
