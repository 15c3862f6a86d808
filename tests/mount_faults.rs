//! A Storage Node's MariaDB server goes away while the mount is in use:
//! operations on its spaces fail with EIO within a bounded time, other spaces
//! keep working, the mount recovers by itself, and no fsynced byte is lost.
//! (Its own test binary: it stops the shared server 2.)

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::time::{Duration, Instant};

use common::{TestCluster, env};

fn services(action: &str, which: &str) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/services");
    let st = std::process::Command::new(script)
        .args([action, which])
        .status()
        .unwrap();
    assert!(st.success(), "scripts/services {action} {which} failed");
}

/// A space id that lands on the node with the given id.
fn space_on(c: &TestCluster, node: u32, from: u32) -> u32 {
    let ranges = c.cluster().ranges().unwrap();
    (from..)
        .find(|s| tshs::placement::owner(&ranges, *s) == Some(node))
        .unwrap()
}

#[test]
fn a_lost_storage_node_gives_eio_then_recovers() {
    let _ = env("TSHS_MYSQL2");
    let c = TestCluster::with_nodes();
    let m = c.mount();
    let healthy = m.space(space_on(&c, 1, 100));
    let lost = m.space(space_on(&c, 2, 100));

    let mut h = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(lost.join("durable"))
        .unwrap();
    h.write_all(b"fsynced bytes").unwrap();
    h.sync_all().unwrap();

    services("stop", "mysql2");
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // The open handle's next flush fails, and so do new operations.
        let t = Instant::now();
        h.write_all(b" and more").unwrap();
        let e = h.sync_all().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
        let e = fs::write(lost.join("new"), b"x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "took {:?}",
            t.elapsed()
        );
        // The other node's spaces keep working.
        fs::write(healthy.join("still"), b"ok").unwrap();
        assert_eq!(fs::read(healthy.join("still")).unwrap(), b"ok");
    }));
    services("start", "mysql2");
    drop(h);
    result.unwrap();

    // Recovery without remounting.
    let t = Instant::now();
    loop {
        match fs::read(lost.join("durable")) {
            Ok(d) => {
                assert!(d.starts_with(b"fsynced bytes"), "{d:?}");
                break;
            }
            Err(e) if t.elapsed() < Duration::from_secs(30) => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO));
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("space did not recover: {e}"),
        }
    }
    fs::write(lost.join("after"), b"back").unwrap();
    assert_eq!(fs::read(lost.join("after")).unwrap(), b"back");
}
