//! Requests → file operations → responses. Each handler parses, runs the
//! file operation on the blocking pool (a FUSE call can block), and answers;
//! [`fail`] is the one mapping from a file error to a status.
//!
//! Before anything else a request must carry the deployment's bearer token
//! (compared in constant time) or a signature made with it ([`signature`]),
//! as `--auth` allows; without one the answer is 401 and nothing is touched.
//! Bodies are read only up to the configured limit (413 beyond).

use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body as _, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use nix::errno::Errno;
use subtle::ConstantTimeEq;

use super::files::{self, Error, Got, MAX_APPEND, Tree};
use super::path::RelPath;
use super::range::Want;
use super::signature;

pub type Body = BoxBody<Bytes, std::io::Error>;

/// Bytes a file body reads per blocking call.
const CHUNK: u64 = 1 << 20;

/// The server's shared state.
pub struct App {
    pub tree: Tree,
    /// The bearer token, also the key of signatures; never logged.
    pub token: Vec<u8>,
    /// Which of the two ways in are open.
    pub auth: Auth,
    /// How far ahead a signature may expire, in seconds.
    pub max_signature_lifetime: u64,
    pub max_body: u64,
    /// GET of a file in S3 answers 307 to a presigned URL (`--s3-redirect`).
    pub s3_redirect: bool,
    pub access_log: Mutex<Box<dyn Write + Send>>,
}

/// The ways in a deployment opens (`--auth`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auth {
    /// The bearer token or a signature made with it.
    Any,
    /// The bearer token only.
    Token,
    /// Signatures only: the token never crosses the network.
    Signed,
}

impl Auth {
    fn bearer(self) -> bool {
        self != Auth::Signed
    }

    fn signed(self) -> bool {
        self != Auth::Token
    }

    /// The `WWW-Authenticate` value of a 401.
    fn challenge(self) -> &'static str {
        match self {
            Auth::Any => "Bearer, TSHS-HMAC-SHA256",
            Auth::Token => "Bearer",
            Auth::Signed => "TSHS-HMAC-SHA256",
        }
    }
}

impl App {
    /// Answers one request and writes its access log line.
    pub async fn serve(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<Body> {
        let t = Instant::now();
        let method = req.method().clone();
        // The path only: a query string could carry anything.
        let path = req.uri().path().to_string();
        let resp = self.handle(req).await;
        let bytes = resp.body().size_hint().exact().unwrap_or(0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let line = format!(
            "{}.{:03} {peer} {method} {path} {} {bytes} {}ms\n",
            now.as_secs(),
            now.subsec_millis(),
            resp.status().as_u16(),
            t.elapsed().as_millis()
        );
        let _ = self.access_log.lock().unwrap().write_all(line.as_bytes());
        resp
    }

    async fn handle(self: &Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        if let Err(why) = self.authorized(&req) {
            let mut r = error(StatusCode::UNAUTHORIZED, why);
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(self.auth.challenge()),
            );
            return r;
        }
        let rel = match RelPath::parse(req.uri().path()) {
            Ok(rel) => rel,
            Err(refused) => return error(StatusCode::FORBIDDEN, refused.0),
        };
        match *req.method() {
            Method::GET | Method::HEAD => self.get(&req, rel).await,
            Method::PUT => {
                let data = match body(req, self.max_body).await {
                    Ok(d) => d,
                    Err(r) => return r,
                };
                let size = data.len();
                match self
                    .blocking(rel, move |app, rel| app.tree.put(rel, &data))
                    .await
                {
                    Ok(created) => json(
                        if created {
                            StatusCode::CREATED
                        } else {
                            StatusCode::OK
                        },
                        serde_json::json!({ "size": size }),
                    ),
                    Err(e) => fail(&e),
                }
            }
            Method::POST => {
                if !rel.is_last_log() {
                    return error(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "POST appends only to /<volume>/<space>/protolog/last.log",
                    );
                }
                let data = match body(req, self.max_body.min(MAX_APPEND)).await {
                    Ok(d) => d,
                    Err(r) => return r,
                };
                match self
                    .blocking(rel, move |app, rel| app.tree.append(rel, &data))
                    .await
                {
                    Ok(a) => json(
                        StatusCode::OK,
                        serde_json::json!({
                            "offset": a.offset,
                            "end": a.end,
                            "file": a.file,
                            "ino": a.ino,
                        }),
                    ),
                    Err(e) => fail(&e),
                }
            }
            Method::DELETE => match self.blocking(rel, |app, rel| app.tree.delete(rel)).await {
                Ok(()) => empty(StatusCode::NO_CONTENT),
                Err(e) => fail(&e),
            },
            _ => {
                let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
                r.headers_mut().insert(
                    header::ALLOW,
                    HeaderValue::from_static("GET, HEAD, PUT, POST, DELETE"),
                );
                r
            }
        }
    }

    /// Whether the request carries the token or a valid signature, as
    /// `--auth` allows; else why not (no secret in it).
    fn authorized(&self, req: &Request<Incoming>) -> Result<(), &'static str> {
        let header = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        let (scheme, params) = match header {
            Some(v) => {
                let v = v.trim_ascii();
                let at = v.iter().position(|b| *b == b' ').unwrap_or(v.len());
                (&v[..at], v[at..].trim_ascii())
            }
            None => (&b""[..], &b""[..]),
        };
        let query = req.uri().query().and_then(signature::from_query);
        let bearer = scheme.eq_ignore_ascii_case(b"bearer");
        let header_signed = scheme.eq_ignore_ascii_case(signature::SCHEME.as_bytes());
        if bearer && query.is_none() {
            if !self.auth.bearer() {
                return Err("bearer tokens are not accepted here: sign the request");
            }
            // Constant time in the token's content (its length is no secret).
            return if bool::from(self.token.as_slice().ct_eq(params)) {
                Ok(())
            } else {
                Err("a valid bearer token or signature is required")
            };
        }
        let signed = match query {
            Some(_) if bearer || header_signed => {
                return Err("a signed query and a token or signature in the header: send one");
            }
            // Another scheme (a proxy's or a browser's Basic) is not ours.
            Some(q) => q,
            None if header_signed => {
                signature::from_header(std::str::from_utf8(params).unwrap_or(""))
            }
            None => return Err("a valid bearer token or signature is required"),
        };
        if !self.auth.signed() {
            return Err("signed requests are not accepted here: send the token");
        }
        let signed = signed.map_err(|r| r.0)?;
        signature::verify(
            &self.token,
            req.method().as_str(),
            req.uri().path(),
            &signed,
            signature::now(),
            self.max_signature_lifetime,
        )
        .map_err(|r| r.0)
    }

    async fn get(self: &Arc<Self>, req: &Request<Incoming>, rel: RelPath) -> Response<Body> {
        let head = req.method() == Method::HEAD;
        let range = req
            .headers()
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        // HEAD is served here: a presigned URL is signed for GET only.
        let redirect = self.s3_redirect && !head;
        let got = match self
            .blocking(rel, move |app, rel| {
                app.tree.get(rel, range.as_deref(), redirect)
            })
            .await
        {
            Ok(g) => g,
            Err(e) => return fail(&e),
        };
        match got {
            Got::Redirect(url) => {
                let Ok(location) = HeaderValue::from_str(&url) else {
                    return error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the mount's S3 URL is not a valid header",
                    );
                };
                let mut r = empty(StatusCode::TEMPORARY_REDIRECT);
                let h = r.headers_mut();
                h.insert(header::LOCATION, location);
                // The URL expires (RedirectTimeout): nobody may keep it.
                h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                h.insert(header::CONTENT_LENGTH, 0.into());
                r
            }
            Got::Dir(listing) => {
                let len = listing.len();
                let mut r = if head {
                    empty(StatusCode::OK)
                } else {
                    full(StatusCode::OK, listing)
                };
                let h = r.headers_mut();
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                h.insert(header::CONTENT_LENGTH, len.into());
                r
            }
            Got::File { file, size, want } => {
                let (status, start, end) = match want {
                    Want::All => (StatusCode::OK, 0, size),
                    Want::Part { start, end } => (StatusCode::PARTIAL_CONTENT, start, end),
                    Want::Unsatisfiable => {
                        let mut r =
                            error(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable");
                        r.headers_mut().insert(
                            header::CONTENT_RANGE,
                            HeaderValue::from_str(&format!("bytes */{size}")).expect("ascii"),
                        );
                        return r;
                    }
                };
                let mut r = Response::new(if head {
                    empty_body()
                } else {
                    FileBody {
                        file,
                        pos: start,
                        end,
                        pending: None,
                    }
                    .boxed()
                });
                *r.status_mut() = status;
                let h = r.headers_mut();
                h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                h.insert(header::CONTENT_LENGTH, (end - start).into());
                if status == StatusCode::PARTIAL_CONTENT {
                    h.insert(
                        header::CONTENT_RANGE,
                        HeaderValue::from_str(&format!("bytes {start}-{}/{size}", end - 1))
                            .expect("ascii"),
                    );
                }
                r
            }
        }
    }

    /// Runs the file work on `rel` on the blocking pool. A refusal by the
    /// mount in a space deactivated for a restore becomes a "try later".
    async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        rel: RelPath,
        f: impl FnOnce(&App, &RelPath) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let app = self.clone();
        let work = move || match f(&app, &rel) {
            Err(Error::Sys {
                errno: Errno::EACCES | Errno::EPERM,
                ..
            }) if let Some(space) = app.tree.deactivated(&rel) => Err(Error::Deactivated(space)),
            r => r,
        };
        match tokio::task::spawn_blocking(work).await {
            Ok(r) => r,
            Err(e) => Err(Error::Internal(format!("the file operation failed: {e}"))),
        }
    }
}

/// A request body, at most `limit` bytes (413 beyond: a declared length is
/// refused before a byte is read).
async fn body(req: Request<Incoming>, limit: u64) -> Result<Bytes, Response<Body>> {
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the body is larger than {limit} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    match Limited::new(req.into_body(), limit as usize)
        .collect()
        .await
    {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            &format!("cannot read the body: {e}"),
        )),
    }
}

/// The status and reason for a failed file operation.
fn fail(e: &Error) -> Response<Body> {
    let (status, reason) = match e {
        Error::Sys { errno, .. } => {
            let (status, hint) = errno_status(*errno);
            (status, format!("{e}{hint}"))
        }
        Error::Refused(r) => (StatusCode::FORBIDDEN, r.to_string()),
        Error::Conflict(r) => (StatusCode::CONFLICT, r.to_string()),
        Error::Busy(r) => (StatusCode::SERVICE_UNAVAILABLE, r.to_string()),
        Error::Deactivated(_) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Error::OffsetUnknown(_) | Error::Internal(_) => {
            log::error!("{e}");
            (StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    };
    let mut r = error(status, &reason);
    if let Error::Deactivated(_) = e {
        // A restore takes minutes.
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
    }
    r
}

/// What the mount's errno means to a client.
fn errno_status(errno: Errno) -> (StatusCode, &'static str) {
    use Errno::*;
    match errno {
        ENOENT | ENOTDIR => (StatusCode::NOT_FOUND, ""),
        EACCES | EPERM => (StatusCode::FORBIDDEN, " (the mount refuses access)"),
        EXDEV | ELOOP => (StatusCode::FORBIDDEN, ""),
        EROFS => (
            StatusCode::SERVICE_UNAVAILABLE,
            " (the volume is read-only: Standby)",
        ),
        EIO | ENOTCONN | ETIMEDOUT | EAGAIN | ESHUTDOWN | ECONNREFUSED => (
            StatusCode::SERVICE_UNAVAILABLE,
            " (storage unavailable: see the mount's log)",
        ),
        EEXIST | ENOTEMPTY | EISDIR | EBUSY | ETXTBSY => (StatusCode::CONFLICT, ""),
        ENOSPC | EDQUOT | EFBIG => (StatusCode::INSUFFICIENT_STORAGE, ""),
        ENAMETOOLONG | EINVAL => (StatusCode::BAD_REQUEST, ""),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, ""),
    }
}

fn empty_body() -> Body {
    Full::new(Bytes::new()).map_err(|e| match e {}).boxed()
}

fn full(status: StatusCode, data: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(data)).map_err(|e| match e {}).boxed());
    *r.status_mut() = status;
    r
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(empty_body());
    *r.status_mut() = status;
    r
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    let mut r = full(
        status,
        serde_json::to_vec(&v).expect("JSON of plain values"),
    );
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// `{"error": reason}` with the status.
fn error(status: StatusCode, reason: &str) -> Response<Body> {
    json(status, serde_json::json!({ "error": reason }))
}

/// A file's bytes `[pos, end)`, read a chunk at a time on the blocking pool.
struct FileBody {
    file: Arc<File>,
    pos: u64,
    end: u64,
    pending: Option<tokio::task::JoinHandle<std::io::Result<Vec<u8>>>>,
}

impl hyper::body::Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        if this.pending.is_none() {
            if this.pos >= this.end {
                return Poll::Ready(None);
            }
            let (f, pos, len) = (
                this.file.clone(),
                this.pos,
                (this.end - this.pos).min(CHUNK),
            );
            this.pending = Some(tokio::task::spawn_blocking(move || {
                files::read_chunk(&f, pos, len as usize)
            }));
        }
        let r = ready!(Pin::new(this.pending.as_mut().expect("set above")).poll(cx));
        this.pending = None;
        Poll::Ready(Some(match r {
            Ok(Ok(buf)) if buf.is_empty() => {
                log::warn!("a file shrank while it was sent (at byte {})", this.pos);
                Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the file shrank while it was sent",
                ))
            }
            Ok(Err(e)) => {
                log::warn!("reading a file to send it: {e}");
                Err(e)
            }
            Ok(Ok(buf)) => {
                this.pos += buf.len() as u64;
                Ok(Frame::data(Bytes::from(buf)))
            }
            Err(e) => Err(std::io::Error::other(e)),
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_none() && self.pos >= self.end
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.end - self.pos)
    }
}
