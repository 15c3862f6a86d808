//! The object store tier against the local S3 server (SeaweedFS's S3
//! gateway, which checks keys) and real mounts: the store's own behaviour
//! (odd keys, empty objects, multipart, listing by pages, presigned URLs),
//! the S3 host commands and their bad input, move-to-s3 and reads of moved
//! files (warm and cold, random offsets), writes that bring a file back,
//! remove-deleted deleting objects, a move-to-s3 killed mid-upload, files
//! held open for writing (and a mount killed with one open), and the
//! store going away and coming back (through a proxy this test owns, so the
//! shared S3 server is never stopped).

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{Mount, TestCluster, env, pattern, root_conn, s3_keys, sh};
use mysql::prelude::Queryable;
use tshs::object_store::{Brand, S3Host, S3Options, S3Store};

/// A client of a bucket, to look at what the store holds.
fn store(endpoint: &str, bucket: &str) -> S3Store {
    let (ak, sk) = s3_keys();
    S3Store::new(&S3Host {
        id: 0,
        brand: Brand::Generic,
        server: endpoint.into(),
        bucket: bucket.into(),
        access_key: ak.into(),
        secret_key: sk.into(),
        options: S3Options::default(),
        is_current: false,
    })
}

fn objects(endpoint: &str, bucket: &str) -> Vec<(String, u64)> {
    store(endpoint, bucket).list("").unwrap()
}

fn no_secret(text: &str) {
    let (_, sk) = s3_keys();
    assert!(!text.contains(sk), "the secret key leaked");
    assert!(!text.contains(&sk[..8]), "part of the secret key leaked");
}

/// State of each file of `list-files <space>`: path -> state.
fn states(c: &TestCluster, space: u32) -> std::collections::HashMap<String, String> {
    c.ok(&["list-files", &space.to_string()])
        .lines()
        .skip(2)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[3].to_string(), f[2].to_string())
        })
        .collect()
}

/// Rows of a Storage Node table over both nodes of a `with_nodes` cluster.
fn count_rows(c: &TestCluster, sql_from_where: &str) -> u64 {
    let dbs = c.dbs.lock().unwrap().clone();
    dbs.iter()
        .skip(1)
        .map(|(n, db)| {
            root_conn(*n)
                .query_first::<u64, _>(format!("SELECT COUNT(*) FROM {db}.{sql_from_where}"))
                .unwrap()
                .unwrap()
        })
        .sum()
}

fn add_host(c: &TestCluster, endpoint: &str, bucket: &str, options: &str) -> String {
    let (ak, sk) = s3_keys();
    let out = c.ok(&["add-s3-host", "GENERIC", endpoint, bucket, ak, sk, options]);
    no_secret(&out);
    out
}

fn check_file(path: &Path, want: &[u8]) {
    let got = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        got == want,
        "{}: {} bytes read, {} expected (first difference at {:?})",
        path.display(),
        got.len(),
        want.len(),
        got.iter().zip(want).position(|(a, b)| a != b)
    );
}

/// Reads at pseudo-random offsets and lengths, compared with the model.
fn random_reads(path: &Path, want: &[u8], seed: u64) {
    let f = std::fs::File::open(path).unwrap();
    let r = pattern(seed, 800);
    for i in 0..200 {
        let pick =
            |k: usize| u64::from_le_bytes(r[k * 8 % 792..k * 8 % 792 + 8].try_into().unwrap());
        let off = (pick(i) % (want.len() as u64 + 10)) as usize;
        let len = (pick(i + 1) % 700_000) as usize;
        let mut buf = vec![0u8; len];
        let n = f.read_at(&mut buf, off as u64).unwrap();
        let end = (off + len).min(want.len());
        let expect = if off < want.len() {
            &want[off..end]
        } else {
            &[][..]
        };
        // read_at may return less than asked: compare what came.
        assert!(n <= expect.len(), "{}: read past the end", path.display());
        assert_eq!(
            &buf[..n],
            &expect[..n],
            "{}: at {off} (+{len})",
            path.display()
        );
    }
}

/// A GET of `url` with a Range header: (HTTP status, body). Run without a
/// shell, so a failure shows no presigned URL.
fn get_url(url: &str, range: &str, out: &Path) -> (u16, Vec<u8>) {
    let _ = std::fs::remove_file(out);
    let o = Command::new("curl")
        .args(["-s", "-r", range, "-w", "%{http_code}", "-o"])
        .arg(out)
        .arg(url)
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    (status, std::fs::read(out).unwrap_or_default())
}

/// The local S3 server does what tshs needs of a store: keys with spaces,
/// `+`, `&`, `%2F` and UTF-8 stored, listed and read back as they are,
/// empty objects, a multipart upload read across its part boundaries,
/// listings longer than a page (1,000 keys), presigned GETs that expire.
#[test]
fn the_store_keeps_odd_keys_large_objects_and_long_listings() {
    let c = TestCluster::empty();
    let ep = env("TSHS_S3_ENDPOINT");
    let s = store(&ep, &c.new_bucket("store"));
    let odd = [
        "odd/a b c",
        "odd/x+y",
        "odd/p&q=r",
        "odd/pct%2Fkey",
        "odd/ünïcödé/ключ ✓",
        "odd/empty",
    ];
    let mut want = Vec::new();
    for (i, k) in odd.iter().enumerate() {
        let data = match *k {
            "odd/empty" => Vec::new(),
            _ => pattern(i as u64, 1000 + i),
        };
        s.put_bytes_whole(k, data.clone()).unwrap();
        assert_eq!(s.get(k).unwrap().as_deref(), Some(&data[..]), "{k}");
        assert_eq!(s.head(k).unwrap().unwrap().0, data.len() as u64, "{k}");
        want.push((k.to_string(), data.len() as u64));
    }
    want.sort();
    assert_eq!(s.list("odd/").unwrap(), want);
    // `%2F` is three characters of a key, not a slash.
    assert_eq!(s.head("odd/pct/key").unwrap(), None);
    for k in odd {
        s.delete(k).unwrap();
        assert_eq!(s.head(k).unwrap(), None, "{k}");
    }
    s.delete("odd/x+y").unwrap();
    assert_eq!(s.list("odd/").unwrap(), []);

    // Multipart (parts of 5 MiB, 5 MiB and 2 MiB + 1; put checks the size
    // and ETag with a HEAD), read across the parts' boundaries.
    let big = pattern(99, (12 << 20) + 1);
    s.put_bytes_whole("big", big.clone()).unwrap();
    for (off, len) in [
        (0, 4096),
        ((5 << 20) - 100, 200),
        ((10 << 20) - 1, 2),
        ((12 << 20) - 99, 100),
    ] {
        let got = s.get_range("big", off, len).unwrap();
        assert!(
            got == big[off as usize..(off + len) as usize],
            "{off}+{len}"
        );
    }

    // A listing of more than one page, in key order.
    let n = 1003;
    std::thread::scope(|t| {
        for w in 0..4 {
            let s = &s;
            t.spawn(move || {
                for i in (w..n).step_by(4) {
                    s.put_bytes_whole(&format!("many/{i:05}"), i.to_string().into_bytes())
                        .unwrap();
                }
            });
        }
    });
    let list = s.list("many/").unwrap();
    assert_eq!(list.len(), n);
    for (i, (k, size)) in list.iter().enumerate() {
        assert_eq!(
            (k.as_str(), *size),
            (format!("many/{i:05}").as_str(), i.to_string().len() as u64)
        );
    }

    // Presigned GETs: read while valid, refused once expired.
    let out = c.dir.path().join("get.out");
    let url = s.presign_get("big", Duration::from_secs(60)).unwrap();
    let (status, body) = get_url(&url, "100-199", &out);
    assert_eq!((status, body.as_slice()), (206, &big[100..200]));
    let url = s.presign_get("big", Duration::from_secs(1)).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(get_url(&url, "100-199", &out).0, 403, "an expired URL");
}

#[test]
fn s3_host_commands_and_their_bad_input() {
    let c = TestCluster::with_nodes();
    let ep = env("TSHS_S3_ENDPOINT");
    let b = c.new_bucket("cmd");
    let (ak, sk) = s3_keys();
    let header = "ID Cur Server Bucket Public Key Private Key";
    let empty = c.ok(&["list-s3-hosts"]);
    assert_eq!(empty.lines().count(), 2, "{empty}");
    let bad: &[(&[&str], &str)] = &[
        (&["ACME", &ep, &b, ak, sk], "unknown S3 brand 'ACME'"),
        (&["GENERIC", "127.0.0.1:9000", &b, ak, sk], "endpoint URL"),
        (
            &["GENERIC", "http://127.0.0.1:99999", &b, ak, sk],
            "not a port number",
        ),
        (
            &["GENERIC", &ep, "Bad_Bucket", ak, sk],
            "not an S3 bucket name",
        ),
        (
            &["GENERIC", &ep, "tshs-no-such-bucket-x", ak, sk],
            "bucket 'tshs-no-such-bucket-x' does not exist",
        ),
        (
            &["GENERIC", "http://127.0.0.1:1", &b, ak, sk],
            "cannot reach the store",
        ),
        (
            &["GENERIC", &ep, &b, ak, sk, "Bogus=1"],
            "unknown S3 option 'Bogus'",
        ),
        (&["GENERIC", &ep, &b, ak, sk, "MinSize=abc"], "not a size"),
        (
            &["GENERIC", &ep, &b, ak, sk, "MaxUploadThreads=100"],
            "not a number from 0 to 64",
        ),
        (
            &["GENERIC", &ep, &b, ak, sk, "MinBlockSize=1M"],
            "out of range",
        ),
        (
            &["GENERIC", &ep, &b, ak, sk, "MinSize=2M;MaxSize=1M"],
            "below MinSize",
        ),
        (&["GENERIC", &ep, &b, ak, sk, "MinSize"], "malformed"),
    ];
    for (args, msg) in bad {
        let mut all = vec!["add-s3-host"];
        all.extend_from_slice(args);
        let err = c.fails(&all);
        assert!(err.contains(msg), "{all:?}: {err}");
        no_secret(&err);
    }
    assert_eq!(c.ok(&["list-s3-hosts"]), empty, "nothing was added");
    for (args, msg) in [
        (vec!["set-current-s3-host", "1"], "there is no S3 host 1"),
        (
            vec!["update-s3-host", "1", "MinSize=1"],
            "there is no S3 host 1",
        ),
        (vec!["set-current-s3-host", "x"], "'x'"),
    ] {
        let err = c.fails(&args);
        assert!(err.contains(msg), "{args:?}: {err}");
    }

    let out = add_host(&c, &ep, &b, "MinSize=1K;MaxUploadThreads=2");
    assert!(out.starts_with("S3 host 1 added (GENERIC"), "{out}");
    let list = c.ok(&["list-s3-hosts"]);
    no_secret(&list);
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>().join(" "),
        header
    );
    assert!(lines[1].starts_with("-- --- "), "{list}");
    assert_eq!(
        lines[2].split_whitespace().collect::<Vec<_>>(),
        ["1", "yes", ep.as_str(), b.as_str(), ak, "****"]
    );
    assert_eq!(
        lines[3],
        "(GENERIC MinSize=1K;RedirectTimeout=10;MinBlockSize=5M;MaxParts=1000;MaxSize=0;MaxUploadThreads=2)"
    );

    // A second host becomes current; set-current-s3-host switches back.
    add_host(&c, &ep, &b, "");
    let cur = |c: &TestCluster| -> Vec<String> {
        c.ok(&["list-s3-hosts"])
            .lines()
            .skip(2)
            .step_by(2)
            .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
            .collect()
    };
    assert_eq!(cur(&c), ["1 no", "2 yes"]);
    assert_eq!(
        c.ok(&["set-current-s3-host", "1"]),
        "S3 host 1 is the current S3 host\n"
    );
    assert_eq!(cur(&c), ["1 yes", "2 no"]);

    // update-s3-host changes only what it names; bad options change nothing.
    let out = c.ok(&["update-s3-host", "1", "MaxSize=1G;MaxParts=500"]);
    assert_eq!(
        out,
        "S3 host 1: MinSize=1K;RedirectTimeout=10;MinBlockSize=5M;MaxParts=500;MaxSize=1G;MaxUploadThreads=2\n"
    );
    let before = c.ok(&["list-s3-hosts"]);
    for bad in ["MaxParts=0", "Nope=1", "MinSize=2G", ""] {
        let err = c.fails(&["update-s3-host", "1", bad]);
        assert!(!err.is_empty());
    }
    assert_eq!(c.ok(&["list-s3-hosts"]), before);

    let info = c.ok(&["transfer-to-s3-info"]);
    assert!(
        info.contains("Ready for transfer to S3: 0 file(s)") && info.contains("Current S3 host: 1"),
        "{info}"
    );
    // The shell's and the table's outputs never show the secret; the Admin
    // Node holds it.
    no_secret(&c.ok(&["list-access-points"]));
}

#[test]
fn moved_files_read_back_and_come_back_on_write() {
    let c = TestCluster::with_nodes();
    let ep = env("TSHS_S3_ENDPOINT");
    let b = c.new_bucket("tree");
    let mut m = Mount::new(&c, &[]);
    let s3 = m.space(3);
    let s4 = m.space(4);
    std::fs::create_dir(s3.join("protolog")).unwrap();
    std::fs::create_dir(s3.join("dir")).unwrap();
    let mut model: Vec<(String, Vec<u8>)> = vec![
        ("3/a.bin".into(), pattern(1, 2000)),
        ("3/b.bin".into(), pattern(2, 300_000)),
        ("3/dir/c.bin".into(), pattern(3, (6 << 20) + 123)),
        ("3/e.bin".into(), pattern(5, 2 << 20)),
        ("3/tiny".into(), pattern(6, 100)),
        ("3/empty".into(), Vec::new()),
        ("3/protolog/last.log".into(), pattern(7, 5000)),
        ("4/x.bin".into(), pattern(8, 700_000)),
    ];
    // A sparse file: two short runs of data in a 3 MiB hole.
    let mut sparse = vec![0u8; (3 << 20) + 10];
    sparse[1 << 20..(1 << 20) + 10].copy_from_slice(b"0123456789");
    sparse[3 << 20..].copy_from_slice(b"abcdefghij");
    {
        let f = std::fs::File::create(s3.join("d.sparse")).unwrap();
        f.write_all_at(b"0123456789", 1 << 20).unwrap();
        f.write_all_at(b"abcdefghij", 3 << 20).unwrap();
    }
    model.push(("3/d.sparse".into(), sparse));
    let vol = m.path().join("vol01");
    for (p, d) in &model {
        if p != "3/d.sparse" {
            std::fs::write(vol.join(p), d).unwrap();
        }
    }
    let _ = &s4;

    add_host(&c, &ep, &b, "MinSize=1K;MinBlockSize=5M;MaxUploadThreads=2");
    // Nothing has settled for 60 s yet.
    let out = c.ok(&["move-to-s3"]);
    assert_eq!(out, "move-to-s3: nothing to do\n");
    let info = c.ok(&["transfer-to-s3-info"]);
    assert!(
        info.contains("Ready for transfer to S3: 0 file(s)"),
        "{info}"
    );

    let out = c.ok(&["move-to-s3", "--settle", "0"]);
    assert!(out.contains("move-to-s3: 6 files, 11.96 MiB"), "{out}");
    let moved = ["a.bin", "b.bin", "dir/c.bin", "e.bin", "d.sparse"];
    let st = states(&c, 3);
    for f in moved {
        assert_eq!(st[f], "OnS3", "{f}: {st:?}");
    }
    for f in ["tiny", "empty", "protolog/last.log"] {
        assert_ne!(st[f], "OnS3", "{f}: {st:?}");
    }
    assert_eq!(states(&c, 4)["x.bin"], "OnS3");
    let nodes = c.ok(&["list-storage-nodes"]);
    let on_s3: u64 = nodes
        .split("OnS3=")
        .skip(1)
        .map(|s| s.split(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(on_s3, 6, "{nodes}");
    // The moved files' data left the databases; the store holds one object each.
    assert_eq!(
        count_rows(&c, "extents"),
        2, // tiny and last.log
    );
    let objs = objects(&ep, &b);
    assert_eq!(objs.len(), 6, "{objs:?}");
    assert!(
        objs.iter()
            .all(|(k, _)| k.starts_with("3/") || k.starts_with("4/"))
    );
    assert_eq!(count_rows(&c, "s3_uploads"), 0);
    // A second run finds nothing more to move.
    assert_eq!(
        c.ok(&["move-to-s3", "--settle", "0"]),
        "move-to-s3: nothing to do\n"
    );

    // Through the same mount, then cold through a new one.
    for (p, d) in &model {
        check_file(&vol.join(p), d);
    }
    m.unmount();
    let mut m = Mount::new(&c, &[]);
    let vol = m.path().join("vol01");
    for (i, (p, d)) in model.iter().enumerate() {
        random_reads(&vol.join(p), d, i as u64 + 100);
        check_file(&vol.join(p), d);
    }
    let md = std::fs::metadata(vol.join("3/dir/c.bin")).unwrap();
    assert_eq!(md.len(), (6 << 20) + 123);
    assert!(md.blocks() * 512 >= md.len(), "st_blocks stays honest");

    // Writes bring files back, with POSIX semantics: append, overwrite in
    // the middle, truncate, truncate to nothing.
    let get = |model: &mut Vec<(String, Vec<u8>)>, p: &str| -> usize {
        model.iter().position(|(q, _)| q == p).unwrap()
    };
    {
        let i = get(&mut model, "3/b.bin");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(vol.join("3/b.bin"))
            .unwrap();
        f.write_all(b"appended").unwrap();
        model[i].1.extend_from_slice(b"appended");
    }
    {
        let i = get(&mut model, "3/dir/c.bin");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(vol.join("3/dir/c.bin"))
            .unwrap();
        f.write_all_at(b"overwritten", 5_000_000).unwrap();
        f.sync_all().unwrap();
        model[i].1[5_000_000..5_000_011].copy_from_slice(b"overwritten");
    }
    {
        let i = get(&mut model, "3/e.bin");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(vol.join("3/e.bin"))
            .unwrap();
        f.set_len(1_500_000).unwrap();
        model[i].1.truncate(1_500_000);
    }
    {
        let i = get(&mut model, "3/a.bin");
        std::fs::File::create(vol.join("3/a.bin")).unwrap();
        model[i].1.clear();
    }
    let st = states(&c, 3);
    for f in ["a.bin", "b.bin", "dir/c.bin", "e.bin"] {
        assert_ne!(st[f], "OnS3", "{f}: {st:?}");
    }
    assert_eq!(st["d.sparse"], "OnS3");
    for (p, d) in &model {
        check_file(&vol.join(p), d);
    }
    m.unmount();
    let m = Mount::new(&c, &[]);
    let vol = m.path().join("vol01");
    for (p, d) in &model {
        check_file(&vol.join(p), d);
    }
    // The replaced objects wait for the grace period.
    assert_eq!(count_rows(&c, "s3_uploads WHERE state = 'garbage'"), 4);
    let out = c.ok(&["remove-deleted"]);
    assert!(!out.contains("object"), "{out}");
    assert_eq!(objects(&ep, &b).len(), 6);

    // Deleting moved files: their objects go with their inodes.
    std::fs::remove_file(vol.join("3/d.sparse")).unwrap();
    std::fs::remove_file(vol.join("4/x.bin")).unwrap();
    let out = c.ok(&["remove-deleted", "--dry-run", "--grace", "0"]);
    assert!(out.contains("would remove 4 object(s)"), "{out}");
    let out = c.ok(&["remove-deleted", "--grace", "0"]);
    assert!(
        out.contains("removed 2 deleted inode(s)") || out.contains("removed 1 deleted inode(s)"),
        "{out}"
    );
    assert!(objects(&ep, &b).is_empty(), "{:?}", objects(&ep, &b));
    assert_eq!(count_rows(&c, "s3_uploads"), 0);
    // The files that came back can move again.
    let out = c.ok(&["move-to-s3", "--settle", "0"]);
    assert!(out.contains("move-to-s3: 3 files"), "{out}");
    for (p, d) in model
        .iter()
        .filter(|(p, _)| p != "3/d.sparse" && p != "4/x.bin")
    {
        check_file(&vol.join(p), d);
    }
}

/// Reads of a file in the object store: a sequential reader's read-ahead
/// (large ranged GETs, several at once) asks the store for each byte once,
/// and readers at once, forwards, backwards and at random, taking over and
/// waiting for each other's GETs, all see the file's bytes.
#[test]
fn a_moved_file_is_read_ahead_once_and_shared_by_readers() {
    let c = TestCluster::with_nodes();
    let b = c.new_bucket("ahead");
    let proxy = Proxy::new(&env("TSHS_S3_ENDPOINT"));
    let mut m = Mount::new(&c, &[]);
    let data = pattern(21, (40 << 20) + 4321);
    std::fs::write(m.space(3).join("big"), &data).unwrap();
    add_host(&c, &proxy.endpoint(), &b, "");
    let out = c.ok(&["move-to-s3", "--settle", "0"]);
    assert!(out.contains("move-to-s3: 1 files"), "{out}");
    m.unmount();

    let mut m = Mount::new(&c, &[]);
    let path = m.space(3).join("big");
    let before = proxy.sent();
    check_file(&path, &data);
    let sent = proxy.sent() - before;
    // Bodies, plus a few hundred bytes of headers per GET.
    let len = data.len() as u64;
    assert!(
        (len..len + (64 << 10)).contains(&sent),
        "{sent} bytes came from the store for a file of {len}"
    );
    m.unmount();

    let m = Mount::new(&c, &[]);
    let path = m.space(3).join("big");
    std::thread::scope(|s| {
        s.spawn(|| check_file(&path, &data));
        s.spawn(|| random_reads(&path, &data, 22));
        s.spawn(|| {
            // Forwards from an odd offset, in odd sizes.
            let f = std::fs::File::open(&path).unwrap();
            let mut buf = vec![0u8; 300_001];
            let mut off = 12_345;
            while off < data.len() {
                let n = f.read_at(&mut buf, off as u64).unwrap();
                assert!(n > 0, "no data at {off}");
                assert!(buf[..n] == data[off..off + n], "forwards at {off}");
                off += n;
            }
        });
        s.spawn(|| {
            // Backwards, a MiB at a time.
            let f = std::fs::File::open(&path).unwrap();
            let mut buf = vec![0u8; 1 << 20];
            let mut end = data.len();
            while end > 0 {
                let off = end.saturating_sub(1 << 20);
                f.read_exact_at(&mut buf[..end - off], off as u64).unwrap();
                assert!(buf[..end - off] == data[off..end], "backwards at {off}");
                end = off;
            }
        });
    });
}

#[test]
fn move_to_s3_killed_mid_upload_loses_nothing() {
    let c = TestCluster::with_nodes();
    let ep = env("TSHS_S3_ENDPOINT");
    let b = c.new_bucket("kill");
    let m = Mount::new(&c, &[]);
    let space = m.space(5);
    let data = pattern(9, 16 << 20);
    std::fs::write(space.join("big"), &data).unwrap();
    add_host(&c, &ep, &b, "MinBlockSize=5M;MaxUploadThreads=1");

    // Four parts, two seconds before each: kill it while the parts go up
    // (after the first, with five seconds to spare on a loaded machine).
    let mut child = c.slow_move_to_s3(2000);
    let t = Instant::now();
    while !c.uploads().iter().any(|(_, multipart)| *multipart) {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the upload did not start"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "move-to-s3 ended early"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(3000));
    child.kill().unwrap();
    child.wait().unwrap();
    let killed_at = Instant::now();
    // A fresh upload record is left alone: its process may be alive (this
    // must run within the 10 s a record stays fresh).
    let out = c.ok(&["remove-deleted", "--grace", "0"]);
    assert!(!out.contains("object"), "{out}");

    // In the database (R/O once it has not changed for a minute).
    assert!(["InDB", "R/O"].contains(&states(&c, 5)["big"].as_str()));
    assert_eq!(c.uploads(), [("uploading".to_string(), true)]);
    check_file(&space.join("big"), &data);

    // The next run moves it.
    let out = c.ok(&["move-to-s3", "--settle", "0"]);
    assert!(out.contains("move-to-s3: 1 files"), "{out}");
    assert_eq!(states(&c, 5)["big"], "OnS3");
    let live: Vec<(String, u64)> = objects(&ep, &b);
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(live[0].1, 16 << 20);
    drop(m);
    let m = Mount::new(&c, &[]);
    check_file(&m.space(5).join("big"), &data);

    // Once the killed run's record is stale, remove-deleted aborts its
    // multipart upload and forgets it; the live object stays.
    let stale = Duration::from_secs(11);
    if let Some(rest) = stale.checked_sub(killed_at.elapsed()) {
        std::thread::sleep(rest);
    }
    let out = c.ok(&["remove-deleted", "--grace", "0"]);
    assert!(out.contains("removed 1 object(s)"), "{out}");
    assert!(c.uploads().is_empty());
    assert_eq!(objects(&ep, &b), live);
    check_file(&m.space(5).join("big"), &data);
}

/// A running proxy: its stop flag, accept thread and open connections.
type Running = (Arc<AtomicBool>, JoinHandle<()>, Arc<Mutex<Vec<TcpStream>>>);

/// A TCP proxy in front of the shared S3 server that the test can take
/// down (connections refused, open ones cut) and bring back on the same port.
/// It counts the bytes the store sent.
struct Proxy {
    port: u16,
    upstream: SocketAddr,
    run: Mutex<Option<Running>>,
    from_store: Arc<AtomicU64>,
}

impl Proxy {
    fn new(upstream: &str) -> Proxy {
        let upstream: SocketAddr = upstream.trim_start_matches("http://").parse().unwrap();
        let port = common::unused_port();
        let p = Proxy {
            port,
            upstream,
            run: Mutex::new(None),
            from_store: Arc::default(),
        };
        p.up();
        p
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Bytes the store sent so far (bodies and headers).
    fn sent(&self) -> u64 {
        self.from_store.load(Ordering::Acquire)
    }

    fn up(&self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (s, cs, upstream) = (stop.clone(), conns.clone(), self.upstream);
        let counted = self.from_store.clone();
        let t = std::thread::spawn(move || {
            while !s.load(Ordering::Acquire) {
                match listener.accept() {
                    Ok((down, _)) => {
                        down.set_nonblocking(false).unwrap();
                        let Ok(up) = TcpStream::connect(upstream) else {
                            continue;
                        };
                        let mut list = cs.lock().unwrap();
                        list.push(down.try_clone().unwrap());
                        list.push(up.try_clone().unwrap());
                        for (mut a, mut b, count) in [
                            (down.try_clone().unwrap(), up.try_clone().unwrap(), None),
                            (up, down, Some(counted.clone())),
                        ] {
                            std::thread::spawn(move || {
                                let mut buf = vec![0u8; 64 << 10];
                                while let Ok(n @ 1..) = a.read(&mut buf) {
                                    if b.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                    if let Some(c) = &count {
                                        c.fetch_add(n as u64, Ordering::AcqRel);
                                    }
                                }
                                let _ = b.shutdown(std::net::Shutdown::Write);
                            });
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        *self.run.lock().unwrap() = Some((stop, t, conns));
    }

    fn down(&self) {
        if let Some((stop, t, conns)) = self.run.lock().unwrap().take() {
            stop.store(true, Ordering::Release);
            t.join().unwrap();
            for c in conns.lock().unwrap().iter() {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.down();
    }
}

#[test]
fn store_down_gives_eio_and_clear_errors_then_recovers() {
    let c = TestCluster::with_nodes();
    let b = c.new_bucket("down");
    let proxy = Proxy::new(&env("TSHS_S3_ENDPOINT"));
    let ep = proxy.endpoint();
    let m = Mount::new(&c, &[]);
    let space = m.space(6);
    let (d1, d2, d3) = (
        pattern(11, 400_000),
        pattern(12, 400_000),
        pattern(13, 400_000),
    );
    std::fs::write(space.join("f1"), &d1).unwrap();
    std::fs::write(space.join("f2"), &d2).unwrap();
    add_host(&c, &ep, &b, "");
    c.ok(&["move-to-s3", "--settle", "0"]);
    assert_eq!(states(&c, 6)["f2"], "OnS3");
    drop(m);

    proxy.down();
    let m = Mount::new(&c, &[]);
    let space = m.space(6);
    // Names and attributes live in the database: still there.
    assert_eq!(std::fs::metadata(space.join("f2")).unwrap().len(), 400_000);
    let e = std::fs::read(space.join("f2")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    // A write that would bring a file back fails too, and changes nothing.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(space.join("f1"))
        .unwrap();
    let e = f.write_all(b"more").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    drop(f);
    // move-to-s3 fails with one clear line naming the host; nothing moves.
    std::fs::write(space.join("f3"), &d3).unwrap();
    let err = c.fails(&["move-to-s3", "--settle", "0"]);
    assert!(
        err.contains("move-to-s3") && err.contains("S3 host 1") && err.contains("cannot reach"),
        "{err}"
    );
    no_secret(&err);
    assert_eq!(states(&c, 6)["f3"], "InDB");
    check_file(&space.join("f3"), &d3);
    // Its object could not be deleted either: recorded for remove-deleted.
    assert_eq!(count_rows(&c, "s3_uploads WHERE state = 'garbage'"), 1);

    proxy.up();
    check_file(&space.join("f2"), &d2);
    check_file(&space.join("f1"), &d1);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(space.join("f1"))
        .unwrap();
    f.write_all(b"more").unwrap();
    drop(f);
    let mut want = d1.clone();
    want.extend_from_slice(b"more");
    check_file(&space.join("f1"), &want);
    let out = c.ok(&["move-to-s3", "--settle", "0"]);
    assert!(out.contains("move-to-s3: 2 files"), "{out}");
    let mut f = std::fs::File::open(space.join("f3")).unwrap();
    f.seek(SeekFrom::Start(1000)).unwrap();
    let mut buf = vec![0u8; 5000];
    f.read_exact(&mut buf).unwrap();
    assert_eq!(buf, d3[1000..6000]);
    let out = c.ok(&["remove-deleted", "--grace", "0"]);
    assert!(out.contains("object(s)"), "{out}");
    assert_eq!(count_rows(&c, "s3_uploads"), 0);
}

/// The shared S3 server checks keys: a wrong secret and an unknown access
/// key are refused before the host is added; the right ones work.
#[test]
fn wrong_keys_are_refused_before_a_host_is_added() {
    let c = TestCluster::with_nodes();
    let ep = env("TSHS_S3_ENDPOINT");
    let b = c.new_bucket("auth");
    let (ak, sk) = s3_keys();
    let wrong_secret = format!("{sk}x");
    for (key, secret) in [(ak, wrong_secret.as_str()), ("AKIDUNKNOWN00000", sk)] {
        let err = c.fails(&["add-s3-host", "GENERIC", &ep, &b, key, secret]);
        assert!(
            err.contains("check the access key and the secret key") && err.contains("S3 host"),
            "{err}"
        );
        no_secret(&err);
    }
    assert_eq!(c.ok(&["list-s3-hosts"]).lines().count(), 2, "nothing added");
    let out = add_host(&c, &ep, &b, "");
    assert!(out.starts_with("S3 host 1 added"), "{out}");
    // The keys work for the real thing too.
    let m = Mount::new(&c, &[]);
    let data = pattern(21, 100_000);
    std::fs::write(m.space(9).join("f"), &data).unwrap();
    let out = c.ok(&["move-to-s3", "--settle", "0"]);
    assert!(out.contains("move-to-s3: 1 files"), "{out}");
    drop(m);
    let m = Mount::new(&c, &[]);
    check_file(&m.space(9).join("f"), &data);
}

#[test]
fn a_file_changed_during_its_upload_stays_in_the_database() {
    let c = TestCluster::with_nodes();
    let ep = env("TSHS_S3_ENDPOINT");
    let b = c.new_bucket("changed");
    let m = Mount::new(&c, &[]);
    let space = m.space(10);
    let mut data = pattern(31, 12 << 20);
    std::fs::write(space.join("f"), &data).unwrap();
    add_host(&c, &ep, &b, "MinBlockSize=5M");
    // Three slow parts (7.5 s in all); the file is appended to while they
    // go up.
    let child = c.slow_move_to_s3(2500);
    let t = Instant::now();
    while !c.uploads().iter().any(|(_, multipart)| *multipart) {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the upload did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(space.join("f"))
        .unwrap();
    f.write_all(b"late").unwrap();
    drop(f);
    data.extend_from_slice(b"late");
    let o = child.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        out.contains("1 file(s) changed or were opened for writing during their upload and stay in the database"),
        "{out}"
    );
    assert_eq!(states(&c, 10)["f"], "InDB");
    assert!(objects(&ep, &b).is_empty(), "its object was deleted");
    assert!(c.uploads().is_empty());
    check_file(&space.join("f"), &data);
}

/// Polls `done` every 200 ms for up to `secs` seconds; panics with `what`.
fn wait_for(secs: u64, what: &str, mut done: impl FnMut() -> bool) {
    let t = Instant::now();
    while !done() {
        assert!(t.elapsed() < Duration::from_secs(secs), "{what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn files_open_for_writing_stay_until_closed_and_a_dead_mount_blocks_nothing() {
    let c = TestCluster::with_nodes();
    let ep = env("TSHS_S3_ENDPOINT");
    let b = c.new_bucket("open");
    let a = Mount::new(&c, &[]);
    let mut dying = Mount::new(&c, &[]);
    let space = a.space(11);
    let (mut held_data, orphaned_data) = (pattern(41, 300_000), pattern(42, 200_000));
    let open_rw = |p: &Path| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(p)
            .unwrap()
    };
    // Written, committed and kept open for writing: on mount A, and on the
    // mount that will die.
    let mut held = open_rw(&space.join("held"));
    held.write_all(&held_data).unwrap();
    held.sync_all().unwrap();
    let orphaned = open_rw(&dying.space(11).join("orphaned"));
    orphaned.write_all_at(&orphaned_data, 0).unwrap();
    orphaned.sync_all().unwrap();
    // Created, written and closed at once: never registered.
    let closed = pattern(43, 100_000);
    std::fs::write(space.join("closed"), &closed).unwrap();
    add_host(&c, &ep, &b, "MinSize=1K");

    // Each mount registers its file within 20 s of the open.
    wait_for(40, "the open files were not registered", || {
        count_rows(&c, "open_writers") == 2
    });
    // `--settle 0`: all three are past the settle time; only the closed one
    // moves, and the open ones are not even uploaded.
    let out = c.ok(&["move-to-s3", "--settle", "0"]);
    assert!(out.contains("move-to-s3: 1 files"), "{out}");
    assert!(!out.contains("opened for writing"), "{out}");
    let st = states(&c, 11);
    assert_eq!(st["closed"], "OnS3", "{st:?}");
    assert_eq!(st["held"], "InDB", "{st:?}");
    assert_eq!(st["orphaned"], "InDB", "{st:?}");

    // Written again and closed: the last close drops the registration, and
    // the file moves.
    held.write_all(b"more").unwrap();
    held_data.extend_from_slice(b"more");
    drop(held);
    wait_for(10, "the close did not drop the registration", || {
        count_rows(&c, "open_writers") == 1
    });
    let out = c.ok(&["move-to-s3", "--settle", "0"]);
    assert!(out.contains("move-to-s3: 1 files"), "{out}");
    let st = states(&c, 11);
    assert_eq!(st["held"], "OnS3", "{st:?}");
    assert_eq!(st["orphaned"], "InDB", "{st:?}");
    check_file(&space.join("held"), &held_data);

    // The other mount dies with its file open: its registration lapses
    // 30 s after its last renewal (at most 10 s before the kill) and the
    // file moves then.
    sh(&format!("kill -9 {}", dying.pid()));
    let killed = Instant::now();
    drop(orphaned);
    wait_for(60, "a dead mount's registration blocked the move", || {
        c.ok(&["move-to-s3", "--settle", "0"]);
        states(&c, 11)["orphaned"] == "OnS3"
    });
    assert!(
        killed.elapsed() >= Duration::from_secs(15),
        "moved {:?} after the kill: the registration was ignored early",
        killed.elapsed()
    );
    check_file(&space.join("orphaned"), &orphaned_data);
    // remove-deleted forgets the lapsed registration.
    assert_eq!(count_rows(&c, "open_writers"), 1);
    c.ok(&["remove-deleted"]);
    assert_eq!(count_rows(&c, "open_writers"), 0);
    dying.unmount();
    check_file(&space.join("closed"), &closed);
}

#[test]
fn a_file_registered_open_for_writing_during_its_upload_stays() {
    let c = TestCluster::with_nodes();
    let ep = env("TSHS_S3_ENDPOINT");
    let b = c.new_bucket("openlate");
    let m = Mount::new(&c, &[]);
    let space = m.space(12);
    let data = pattern(44, 12 << 20);
    std::fs::write(space.join("f"), &data).unwrap();
    let ino = std::fs::metadata(space.join("f")).unwrap().ino() & 0xffff_ffff;
    add_host(&c, &ep, &b, "MinBlockSize=5M");
    let child = c.slow_move_to_s3(2500);
    wait_for(20, "the upload did not start", || {
        c.uploads().iter().any(|(_, multipart)| *multipart)
    });
    // What a mount's sweep writes for a file it has held open for writing
    // (here on both nodes: one of them holds the space).
    for (n, db) in c.dbs.lock().unwrap().iter().skip(1) {
        root_conn(*n)
            .exec_drop(
                format!("INSERT INTO {db}.open_writers VALUES (12, ?, 999, UTC_TIMESTAMP(3))"),
                (ino,),
            )
            .unwrap();
    }
    let o = child.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        out.contains("1 file(s) changed or were opened for writing during their upload"),
        "{out}"
    );
    assert_eq!(states(&c, 12)["f"], "InDB");
    assert!(objects(&ep, &b).is_empty(), "its object was deleted");
    check_file(&space.join("f"), &data);
}

#[test]
fn moved_files_follow_their_space_to_a_new_node() {
    // One node on server 1, split onto server 2 after files moved to S3.
    let c = TestCluster::empty();
    let db1 = c.new_db(1, "st");
    c.ok(&[
        "create-storage-node",
        &format!("{};database={db1}", common::server(1)),
    ]);
    c.ok(&["create-volume", "vol01"]);
    let ep = env("TSHS_S3_ENDPOINT");
    let b = c.new_bucket("split");
    let m = Mount::new(&c, &[]);
    let files: Vec<(u32, Vec<u8>)> = (1..=8)
        .map(|s| (s, pattern(40 + s as u64, 300_000)))
        .collect();
    for (s, d) in &files {
        std::fs::write(m.space(*s).join("f"), d).unwrap();
    }
    add_host(&c, &ep, &b, "");
    let out = c.ok(&["move-to-s3", "--settle", "0"]);
    assert!(out.contains("move-to-s3: 8 files"), "{out}");
    let db2 = c.new_db(2, "st");
    c.ok(&[
        "split-storage-node",
        "1",
        &format!("{};database={db2}", common::server(2)),
    ]);
    c.ok(&["copy-shards"]);
    let moved: u64 = root_conn(2)
        .query_first(format!(
            "SELECT COUNT(*) FROM {db2}.inodes WHERE s3_key IS NOT NULL"
        ))
        .unwrap()
        .unwrap();
    assert!(moved > 0 && moved < 8, "{moved} of 8 spaces moved");
    // The old node's copies are gone, the objects are not.
    let out = c.ok(&["remove-deleted", "--grace", "0"]);
    assert!(!out.contains("object"), "{out}");
    assert_eq!(objects(&ep, &b).len(), 8);
    drop(m);
    let m = Mount::new(&c, &[]);
    for (s, d) in &files {
        check_file(&m.space(*s).join("f"), d);
        assert_eq!(states(&c, *s)["f"], "OnS3");
    }
    let nodes = c.ok(&["list-storage-nodes"]);
    assert!(nodes.contains(&format!("OnS3={}", 8 - moved)), "{nodes}");
    assert!(nodes.contains(&format!("OnS3={moved}")), "{nodes}");
}

#[test]
fn a_lost_storage_node_is_rebuilt_from_the_object_store() {
    let c = TestCluster::with_nodes();
    let ep = env("TSHS_S3_ENDPOINT");
    let b = c.new_bucket("restore");
    let mut m = Mount::new(&c, &[]);
    let space = m.space(3);
    let other = (4..40)
        .find(|s| {
            m.space(*s);
            let c2 = c.cluster();
            c2.space(*s).unwrap().unwrap().node_id != c2.space(3).unwrap().unwrap().node_id
        })
        .unwrap();
    let node = c.cluster().space(3).unwrap().unwrap().node_id;
    std::fs::create_dir_all(space.join("docs")).unwrap();
    std::fs::create_dir(space.join("protolog")).unwrap();
    let big = pattern(51, 300_000);
    std::fs::write(space.join("docs/big.bin"), &big).unwrap();
    sh(&format!(
        "chmod 640 {0} && setfattr -n user.tag -v blue {0}",
        space.join("docs/big.bin").display()
    ));
    std::fs::write(space.join("small"), b"ten bytes!").unwrap();
    std::os::unix::fs::symlink("docs/big.bin", space.join("link")).unwrap();
    let mut log = pattern(52, 5000);
    std::fs::write(space.join("protolog/last.log"), &log).unwrap();
    let elsewhere = pattern(53, 200_000);
    std::fs::write(m.space(other).join("keep"), &elsewhere).unwrap();

    add_host(&c, &ep, &b, "MinSize=1K");
    c.ok(&["move-to-s3", "--settle", "0"]);
    let out = c.ok(&["copy-to-s3"]);
    assert!(out.contains("copy-to-s3: "), "{out}");
    assert_eq!(c.ok(&["copy-to-s3"]), "copy-to-s3: nothing to do\n");
    // The log grows: the next run backs it up again; what comes after that
    // is not in the store.
    let append = |data: &[u8]| {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(space.join("protolog/last.log"))
            .unwrap();
        f.write_all(data).unwrap();
    };
    append(b"second backup");
    log.extend_from_slice(b"second backup");
    let out = c.ok(&["do-tasks", "copy-to-s3"]);
    assert!(out.contains("copy-to-s3: 1 spaces"), "{out}");
    append(b"never backed up");
    m.unmount();
    // A mount that stays up through the restore reconnects by itself.
    let live = Mount::new(&c, &[]);
    check_file(&live.space(other).join("keep"), &elsewhere);
    assert_eq!(
        std::fs::metadata(live.space(3).join("docs/big.bin"))
            .unwrap()
            .len(),
        300_000
    );

    // The node's database is lost.
    let (n, db) = c.dbs.lock().unwrap()[node as usize].clone();
    common::lose_database(n, &db);
    let new = c.new_db(n, "restored");
    let conn = format!("{};database={new}", common::server(n));
    let err = c.fails(&["restore-from-s3", "99", &conn]);
    assert!(err.contains("no storage node 99"), "{err}");
    let out = c.ok(&["restore-from-s3", &node.to_string(), &conn]);
    assert!(
        out.contains(&format!(
            "Storage node {node} restored from the object store"
        )) && out.contains(
            "1 file(s) had no copy in the object store and were left out: space 3: /small\n"
        ),
        "{out}"
    );
    assert!(!out.contains("tshs-test-pw"), "{out}");
    let err = c.fails(&["restore-from-s3", &node.to_string(), &conn]);
    assert!(err.contains("not empty"), "{err}");
    // The live mount reads the new database once it took the new topology.
    let cluster = c.cluster();
    let t = Instant::now();
    let unacked = || cluster.unacknowledged(cluster.epoch().unwrap()).unwrap();
    while unacked() > 0 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the mount never acknowledged"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    check_file(&live.space(3).join("docs/big.bin"), &big);
    check_file(&live.space(3).join("protolog/last.log"), &log);
    drop(live);

    let m = Mount::new(&c, &[]);
    let space = m.space(3);
    check_file(&space.join("docs/big.bin"), &big);
    let md = std::fs::metadata(space.join("docs/big.bin")).unwrap();
    assert_eq!(md.mode() & 0o777, 0o640);
    assert!(
        sh(&format!(
            "getfattr -n user.tag {}",
            space.join("docs/big.bin").display()
        ))
        .contains("blue")
    );
    assert_eq!(
        std::fs::read_link(space.join("link")).unwrap(),
        Path::new("docs/big.bin")
    );
    check_file(&space.join("link"), &big);
    check_file(&space.join("protolog/last.log"), &log);
    assert!(
        !space.join("small").exists(),
        "its data was only in the lost database"
    );
    check_file(&m.space(other).join("keep"), &elsewhere);
    assert_eq!(states(&c, 3)["docs/big.bin"], "OnS3");
    // The restored space works as before.
    std::fs::write(space.join("new"), b"after the restore").unwrap();
    check_file(&space.join("new"), b"after the restore");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(space.join("protolog/last.log"))
        .unwrap();
    f.write_all(b"!").unwrap();
    drop(f);
    log.push(b'!');
    check_file(&space.join("protolog/last.log"), &log);
}
