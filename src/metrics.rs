//! Prometheus metrics of this process (mount daemon, maintenance daemon,
//! space server), in one registry encoded on request by the `/metrics`
//! endpoint (off unless configured; see [`serve`]).
//!
//! Recording is a few atomic operations, so the hot paths (every FUSE call,
//! every database round) record unconditionally.

use std::sync::OnceLock;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrLabel {
    pub op: &'static str,
    pub errno: i32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabel {
    pub node: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WayLabel {
    pub op: &'static str,
    /// `one`: one request; `statements`: left to the transaction of
    /// statements (refused, or its answer lost).
    pub way: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabel {
    pub task: &'static str,
}

type Latency = Family<OpLabel, Histogram, fn() -> Histogram>;
type NodeLatency = Family<NodeLabel, Histogram, fn() -> Histogram>;

/// 50 µs to ~26 s.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

pub struct Metrics {
    registry: Registry,
    pub ops: Family<OpLabel, Counter>,
    pub op_seconds: Latency,
    pub errors: Family<ErrLabel, Counter>,
    pub bytes_read: Counter,
    pub bytes_written: Counter,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub db_data_read: Counter,
    pub db_seconds: NodeLatency,
    pub db_errors: Family<NodeLabel, Counter>,
    pub one_requests: Family<WayLabel, Counter>,
    pub task_runs: Family<TaskLabel, Counter>,
    pub task_errors: Family<TaskLabel, Counter>,
    pub task_units: Family<TaskLabel, Counter>,
    pub task_bytes: Family<TaskLabel, Counter>,
}

impl Metrics {
    fn new() -> Metrics {
        let m = Metrics {
            registry: Registry::with_prefix("tshs"),
            ops: Family::default(),
            op_seconds: Family::new_with_constructor(seconds),
            errors: Family::default(),
            bytes_read: Counter::default(),
            bytes_written: Counter::default(),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            db_data_read: Counter::default(),
            db_seconds: Family::new_with_constructor(seconds),
            db_errors: Family::default(),
            one_requests: Family::default(),
            task_runs: Family::default(),
            task_errors: Family::default(),
            task_units: Family::default(),
            task_bytes: Family::default(),
        };
        let mut r = m.registry;
        r.register("fs_ops", "Filesystem operations by kind", m.ops.clone());
        r.register(
            "fs_op_seconds",
            "Filesystem operation latency by kind",
            m.op_seconds.clone(),
        );
        r.register(
            "fs_errors",
            "Filesystem operations that failed, by kind and errno",
            m.errors.clone(),
        );
        r.register(
            "fs_read_bytes",
            "Bytes read by applications",
            m.bytes_read.clone(),
        );
        r.register(
            "db_data_read_bytes",
            "Bytes of file data read from Storage Nodes",
            m.db_data_read.clone(),
        );
        r.register(
            "fs_written_bytes",
            "Bytes written by applications",
            m.bytes_written.clone(),
        );
        r.register(
            "cache_hits",
            "Data cache hits (extents)",
            m.cache_hits.clone(),
        );
        r.register(
            "cache_misses",
            "Data cache misses (extents)",
            m.cache_misses.clone(),
        );
        r.register(
            "db_seconds",
            "Storage Node transaction and read latency by node",
            m.db_seconds.clone(),
        );
        r.register(
            "db_errors",
            "Storage Node failures by node",
            m.db_errors.clone(),
        );
        r.register(
            "one_requests",
            "New files' first commits and renames sent as one request, or left to statements",
            m.one_requests.clone(),
        );
        r.register("task_runs", "Maintenance task runs", m.task_runs.clone());
        r.register(
            "task_errors",
            "Maintenance task runs that failed",
            m.task_errors.clone(),
        );
        r.register(
            "task_units",
            "Units a maintenance task finished (spaces moved, inodes purged)",
            m.task_units.clone(),
        );
        r.register(
            "task_bytes",
            "Bytes a maintenance task moved",
            m.task_bytes.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }

    /// Counts a filesystem operation and its latency when the guard drops;
    /// until then errors on this thread count against `op`.
    pub fn op(&self, op: &'static str) -> OpTimer<'_> {
        CURRENT_OP.set(op);
        OpTimer {
            m: self,
            op,
            start: Instant::now(),
        }
    }

    pub fn error(&self, op: &'static str, errno: i32) {
        self.errors.get_or_create(&ErrLabel { op, errno }).inc();
    }

    /// A commit of kind `op` that went as one request (`one`) or, refused
    /// or unanswered, by its statements.
    pub fn one_request(&self, op: &'static str, one: bool) {
        let way = if one { "one" } else { "statements" };
        self.one_requests.get_or_create(&WayLabel { op, way }).inc();
    }

    pub fn db(&self, node: u32, start: Instant, ok: bool) {
        self.db_seconds
            .get_or_create(&NodeLabel { node })
            .observe(start.elapsed().as_secs_f64());
        if !ok {
            self.db_errors.get_or_create(&NodeLabel { node }).inc();
        }
    }
}

pub struct OpTimer<'a> {
    m: &'a Metrics,
    op: &'static str,
    start: Instant,
}

thread_local! {
    static CURRENT_OP: std::cell::Cell<&'static str> = const { std::cell::Cell::new("other") };
}

/// The operation this thread is serving (for error counts).
pub fn current_op() -> &'static str {
    CURRENT_OP.get()
}

impl Drop for OpTimer<'_> {
    fn drop(&mut self) {
        CURRENT_OP.set("other");
        let l = OpLabel { op: self.op };
        self.m.ops.get_or_create(&l).inc();
        self.m
            .op_seconds
            .get_or_create(&l)
            .observe(self.start.elapsed().as_secs_f64());
    }
}

/// Parses the endpoint option: `PORT` (loopback) or `ADDR:PORT`.
pub fn parse_addr(v: &str) -> anyhow::Result<std::net::SocketAddr> {
    if let Ok(port) = v.parse::<u16>() {
        return Ok(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    v.parse()
        .map_err(|_| anyhow::anyhow!("metrics address '{v}' is not PORT or ADDR:PORT"))
}

/// Serves `GET /metrics` on `addr` from a thread of its own; fails at once
/// if the address cannot be bound.
pub fn serve(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    use anyhow::Context;
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot listen for metrics on {addr}"))?;
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("tshs-metrics".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return log::error!("metrics endpoint: {e}"),
            };
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => return log::error!("metrics endpoint: {e}"),
                };
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(|req| async move {
                            Ok::<_, std::convert::Infallible>(respond(&req))
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                            .await;
                    });
                }
            })
        })?;
    log::info!("metrics on http://{addr}/metrics");
    Ok(())
}

fn respond<B>(
    req: &hyper::Request<B>,
) -> hyper::Response<http_body_util::Full<hyper::body::Bytes>> {
    let (status, body) = if req.method() == hyper::Method::GET && req.uri().path() == "/metrics" {
        (hyper::StatusCode::OK, global().encode())
    } else {
        (hyper::StatusCode::NOT_FOUND, "GET /metrics\n".to_string())
    };
    hyper::Response::builder()
        .status(status)
        .header(
            hyper::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
        .body(http_body_util::Full::new(body.into()))
        .expect("a valid response")
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format_has_the_recorded_values() {
        let m = Metrics::new();
        drop(m.op("read"));
        m.error("read", 5);
        m.bytes_read.inc_by(4096);
        m.db(2, Instant::now(), false);
        let t = m.encode();
        assert!(t.contains("tshs_fs_ops_total{op=\"read\"} 1"), "{t}");
        assert!(
            t.contains("tshs_fs_errors_total{op=\"read\",errno=\"5\"} 1"),
            "{t}"
        );
        assert!(t.contains("tshs_fs_read_bytes_total 4096"), "{t}");
        assert!(t.contains("tshs_db_errors_total{node=\"2\"} 1"), "{t}");
        assert!(t.contains("tshs_fs_op_seconds_bucket{le="), "{t}");
        assert!(t.ends_with("# EOF\n"), "{t}");
    }
}
