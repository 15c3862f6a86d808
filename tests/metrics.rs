//! The Prometheus endpoint of the mount and of the maintenance daemon.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Mount, TestCluster, sh};

/// The metrics text once the endpoint answers (it starts with the process).
fn scrape(port: u16) -> String {
    let t = Instant::now();
    loop {
        let o = Command::new("curl")
            .args(["-sf", &format!("http://127.0.0.1:{port}/metrics")])
            .output()
            .unwrap();
        if o.status.success() {
            return String::from_utf8(o.stdout).unwrap();
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no metrics on port {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} missing:\n{text}"))
}

#[test]
fn the_mount_serves_its_metrics_on_loopback() {
    let c = TestCluster::with_nodes();
    let port = common::unused_port();
    let m = Mount::new(&c, &[&format!("metrics={port}")]);
    let s = m.space(3);
    std::fs::write(s.join("f"), vec![7u8; 100_000]).unwrap();
    assert_eq!(std::fs::read(s.join("f")).unwrap().len(), 100_000);
    assert!(std::fs::read(s.join("missing")).is_err());
    let t = scrape(port);
    assert!(value(&t, "tshs_fs_ops_total{op=\"write\"}") >= 1.0);
    assert!(value(&t, "tshs_fs_written_bytes_total") >= 100_000.0);
    assert!(value(&t, "tshs_fs_errors_total{op=\"lookup\",errno=\"2\"}") >= 1.0);
    assert!(t.contains("tshs_db_seconds_bucket{le="), "{t}");
    assert!(t.contains("tshs_fs_op_seconds_count{op=\"lookup\"}"), "{t}");
    let other = sh(&format!(
        "curl -s -o /dev/null -w '%{{http_code}}' http://127.0.0.1:{port}/other"
    ));
    assert_eq!(other, "404");
    // The port is on loopback only.
    let listen = sh(&format!("ss -Hltn 'sport = :{port}'"));
    assert!(listen.contains(&format!("127.0.0.1:{port}")), "{listen}");
    // A bad address is refused before mounting.
    let o = c.tshs(&["mount", "/tmp/nowhere-tshs", "-f", "-o", "metrics=here"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("metrics address 'here'"));
}

#[test]
fn the_maintenance_daemon_counts_task_runs() {
    let c = TestCluster::with_nodes();
    let port = common::unused_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tshs"))
        .arg("--mysql-cfg-file")
        .arg(&c.mycnf)
        .args([
            "--metrics",
            &port.to_string(),
            "repeat",
            "1",
            "remove-deleted",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let mut runs = 0.0;
    while runs < 2.0 && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(300));
        runs = scrape(port)
            .lines()
            .find_map(|l| {
                l.strip_prefix("tshs_task_runs_total{task=\"remove-deleted\"}")?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0.0);
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(runs >= 2.0, "remove-deleted ran {runs} times");
}
