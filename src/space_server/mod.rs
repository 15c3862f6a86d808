//! The space server (`tshs-space-server`): the mounted `/spacedata` tree over
//! HTTP, using it only as ordinary files (no database access), so it works
//! on any mount and keeps every guarantee the mount gives.
//!
//! [`path`] turns a request path into segments below the root (refusing
//! `..`, `%2F`, NUL); [`files`] does the blocking file work (GET with
//! ranges, listings, atomic PUT, `O_APPEND` POST with rotation, DELETE) on
//! descriptors opened beneath the root (with `--s3-redirect`, GET of a file
//! in S3 becomes a redirect to the presigned URL the mount offers); [`http`] authenticates, limits
//! bodies, runs the file work on tokio's blocking pool, and maps errors to
//! statuses. [`run`] binds (loopback by default), serves HTTP/1.1, logs one
//! access line per request, and on SIGTERM or SIGINT stops accepting and
//! waits for the requests in flight.

pub mod files;
pub mod http;
pub mod path;
mod protolog;
pub mod range;
pub mod signature;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

/// How long shutdown waits for requests in flight.
const DRAIN: Duration = Duration::from_secs(30);
/// A client must send its request head within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Threads for blocking file calls (each may wait on the mount).
const BLOCKING_THREADS: usize = 64;

/// How far ahead a signature may expire unless configured: 7 days, as S3's
/// presigned URLs.
const DEFAULT_MAX_SIGNATURE_LIFETIME: u64 = 7 * 86_400;

/// Serves the mounted tree over HTTP.
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "tshs-space-server", version)]
pub struct Config {
    /// The mounted tree to serve.
    #[arg(long, default_value = "/spacedata", value_name = "PATH")]
    pub root: PathBuf,
    /// Address and port to listen on (port 0: any free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR:PORT")]
    pub listen: SocketAddr,
    /// File holding the bearer token clients must send, or sign requests
    /// with (at least 16 characters).
    #[arg(long, value_name = "PATH")]
    pub token_file: PathBuf,
    /// Which requests get in: the token or a signature (any), the token
    /// only (token), or signatures only (signed).
    #[arg(long, value_enum, default_value = "any")]
    pub auth: http::Auth,
    /// How far ahead a signature may expire, in seconds (default 7 days).
    #[arg(long, default_value_t = DEFAULT_MAX_SIGNATURE_LIFETIME, value_name = "SECS")]
    pub max_signature_lifetime: u64,
    /// Rotate last.log to <n>.log once it reaches this size (K, M, G; 0: never).
    #[arg(long, default_value = "8M", value_name = "SIZE", value_parser = parse_size)]
    pub rotate_size: u64,
    /// Largest request body accepted (413 beyond); appends are also capped at 1M.
    #[arg(long, default_value = "64M", value_name = "SIZE", value_parser = parse_size)]
    pub max_body: u64,
    /// Append the access log (one line per request) to this file instead of stderr.
    #[arg(long, value_name = "PATH")]
    pub access_log: Option<PathBuf>,
    /// Answer GET of a file whose data is in S3 with 307 to a presigned URL
    /// of its object (valid for the S3 host's RedirectTimeout seconds),
    /// which the mount offers as the xattr user.tshs.s3_url. HEAD is served
    /// as usual.
    #[arg(long)]
    pub s3_redirect: bool,
    /// Serve Prometheus metrics on PORT (127.0.0.1) or ADDR:PORT. Off unless given.
    #[arg(long, value_name = "ADDR", value_parser = parse_metrics_addr)]
    pub metrics: Option<SocketAddr>,
}

/// Prints a signed URL (`tshs-space-server sign …`): a link that works for
/// one method and path until it expires, without the token.
#[derive(clap::Parser, Debug)]
#[command(name = "tshs-space-server sign")]
pub struct SignConfig {
    /// File holding the deployment's token.
    #[arg(long, value_name = "PATH")]
    pub token_file: PathBuf,
    /// The method the URL allows.
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// Seconds until the URL expires (at most the server's
    /// --max-signature-lifetime).
    #[arg(long, default_value_t = 3600, value_name = "SECS")]
    pub expires_in: u64,
    /// The server's --max-signature-lifetime, when it is not the default.
    #[arg(long, default_value_t = DEFAULT_MAX_SIGNATURE_LIFETIME, value_name = "SECS")]
    pub max_lifetime: u64,
    /// Put this before the path, e.g. http://files.example.com:8080.
    #[arg(long, default_value = "", value_name = "URL")]
    pub base_url: String,
    /// The path as a file name below the root, e.g. /vol01/3/doc.pdf (not
    /// percent-encoded: that is done here).
    pub path: String,
}

/// The URL `tshs-space-server sign` prints.
pub fn signed_url(cfg: &SignConfig) -> Result<String> {
    let token = read_token(&cfg.token_file)?;
    let method = cfg.method.to_ascii_uppercase();
    if !["GET", "HEAD", "PUT", "POST", "DELETE"].contains(&method.as_str()) {
        bail!(
            "'{}' is not a method the server answers (GET, HEAD, PUT, POST, DELETE)",
            cfg.method
        );
    }
    if cfg.expires_in > cfg.max_lifetime {
        // The server would refuse it until its last days, then take it.
        bail!(
            "--expires-in {} is beyond the server's signature lifetime of {} s (--max-lifetime)",
            cfg.expires_in,
            cfg.max_lifetime
        );
    }
    if !cfg.path.starts_with('/') {
        bail!("the path must start with / (e.g. /vol01/3/file)");
    }
    // Every byte but the unreserved ones and `/` is encoded: the server
    // checks the path exactly as sent.
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~')
        .remove(b'/');
    let path = percent_encoding::utf8_percent_encode(&cfg.path, SEGMENT).to_string();
    if let Err(refused) = path::RelPath::parse(&path) {
        bail!("the server would refuse {}: {}", cfg.path, refused.0);
    }
    let expires = signature::now().saturating_add(cfg.expires_in);
    let url = signature::signed_url(&token, &method, &path, expires);
    Ok(format!("{}{url}", cfg.base_url.trim_end_matches('/')))
}

fn parse_metrics_addr(v: &str) -> Result<SocketAddr, String> {
    crate::metrics::parse_addr(v).map_err(|e| e.to_string())
}

/// `8M` → 8 MiB; suffixes K, M, G (powers of 1024), or plain bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M') => (&s[..s.len() - 1], 1 << 20),
        Some('G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("'{s}' is not a size (e.g. 8M, 512K, 1048576)"))
}

/// Reads the token; refuses an empty or short one. Never prints it.
pub fn read_token(path: &Path) -> Result<Vec<u8>> {
    let text = std::fs::read(path)
        .with_context(|| format!("cannot read the token file {}", path.display()))?;
    let token = text.trim_ascii().to_vec();
    if token.len() < 16 {
        bail!(
            "the token in {} is too short (at least 16 characters)",
            path.display()
        );
    }
    if token.iter().any(|b| !b.is_ascii_graphic()) {
        bail!(
            "the token in {} must be printable ASCII without spaces",
            path.display()
        );
    }
    Ok(token)
}

/// Runs the server until SIGTERM or SIGINT.
pub fn run(cfg: Config) -> Result<()> {
    let token = read_token(&cfg.token_file)?;
    if let Some(addr) = cfg.metrics {
        crate::metrics::serve(addr)?;
    }
    let tree = files::Tree::open(&cfg.root, cfg.rotate_size)
        .with_context(|| format!("cannot serve {}", cfg.root.display()))?;
    let access_log: Box<dyn Write + Send> = match &cfg.access_log {
        Some(p) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("cannot open the access log {}", p.display()))?,
        ),
        None => Box::new(std::io::stderr()),
    };
    let app = Arc::new(http::App {
        tree,
        token,
        auth: cfg.auth,
        max_signature_lifetime: cfg.max_signature_lifetime,
        max_body: cfg.max_body,
        s3_redirect: cfg.s3_redirect,
        access_log: Mutex::new(access_log),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .build()?;
    rt.block_on(serve(cfg, app))
}

async fn serve(cfg: Config, app: Arc<http::App>) -> Result<()> {
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() {
        log::warn!("listening on {addr}, which is not a loopback address");
    }
    // Tests and scripts read the port from this line.
    eprintln!(
        "tshs-space-server: listening on http://{addr}/ serving {}",
        cfg.root.display()
    );
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors, typically: pause, go on.
                        log::warn!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                let svc = service_fn(move |req| {
                    let app = app.clone();
                    async move { Ok::<_, std::convert::Infallible>(app.serve(req, peer).await) }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), svc);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        log::debug!("{peer}: {e}");
                    }
                });
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    drop(listener);
    log::info!("stopping: waiting for the requests in flight");
    tokio::select! {
        _ = graceful.shutdown() => log::info!("stopped"),
        _ = tokio::time::sleep(DRAIN) => log::warn!("stopped with requests still in flight after {DRAIN:?}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("8M"), Ok(8 << 20));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("123"), Ok(123));
        assert!(parse_size("M").is_err());
        assert!(parse_size("-1M").is_err());
        assert!(parse_size("1T").is_err());
        assert!(parse_size("99999999999G").is_err());
    }
}
