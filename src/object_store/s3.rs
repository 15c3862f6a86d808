//! [`S3Store`]: a blocking client for one S3 host, over the AWS SDK for Rust.
//!
//! Every call runs its request on a private tokio runtime (started on first
//! use, after a daemon forked) and blocks the calling thread: the FUSE
//! threads and the maintenance tasks stay synchronous. Requests time out
//! (5 s to connect, 60 s without data) and are retried by the SDK a few
//! times, so a store that went away fails an operation quickly and cleanly.
//!
//! Uploads are verified: each PUT or part carries its MD5 (`Content-MD5`,
//! signed, and checked by the store), and after the upload a HEAD must show
//! the size and ETag the upload returned. Their bodies are not signed
//! (`UNSIGNED-PAYLOAD`): the MD5 already covers them, and hashing them once
//! more for the signature cost move-to-s3 an eighth of its CPU time.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::Result;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    StalledStreamProtectionConfig,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use md5::{Digest, Md5};

use super::{Brand, ErrorKind, S3Host, StoreError};

/// Test hook: milliseconds to wait before each part of an upload, so a test
/// can kill move-to-s3 in the middle of one.
const PART_DELAY_ENV: &str = "TSHS_TEST_S3_PART_DELAY_MS";

/// The runtime every store's requests run on.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tshs-s3")
            .enable_all()
            .build()
            .expect("start the S3 client's runtime")
    })
}

/// What an upload reads its bytes with, and reports to.
pub struct Upload<'a> {
    /// `read(offset, len)`: exactly `len` bytes of the file at `offset`.
    pub read: &'a (dyn Fn(u64, usize) -> Result<Vec<u8>> + Sync),
    /// A multipart upload was started under this id (record it, so an
    /// interrupted upload can be aborted later).
    pub started: &'a (dyn Fn(&str) -> Result<()> + Sync),
    /// After each part, with the bytes uploaded so far; an error stops the
    /// upload (it is aborted).
    pub progress: &'a (dyn Fn(u64) -> Result<()> + Sync),
}

/// A connection to one S3 host.
pub struct S3Store {
    host: S3Host,
    client: Client,
    name: String,
}

impl S3Store {
    pub fn new(host: &S3Host) -> S3Store {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(host.region()))
            .credentials_provider(Credentials::new(
                host.access_key.clone(),
                host.secret_key.clone(),
                None,
                None,
                "tshs-admin-node",
            ))
            .endpoint_url(host.endpoint())
            .force_path_style(host.brand != Brand::Amazon)
            .http_client(http)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .read_timeout(Duration::from_secs(60))
                    .build(),
            )
            .stalled_stream_protection(
                StalledStreamProtectionConfig::enabled()
                    .grace_period(Duration::from_secs(30))
                    .build(),
            )
            // Plain Content-MD5 instead of the newer trailing checksums,
            // which not every S3-compatible store understands.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .build();
        S3Store {
            name: host.describe(),
            host: host.clone(),
            client: Client::from_conf(conf),
        }
    }

    pub fn host(&self) -> &S3Host {
        &self.host
    }

    /// An error naming this host; the keys are scrubbed from the detail.
    fn fail<E>(&self, what: &'static str, e: SdkError<E>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let (kind, detail) = match &e {
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => (
                ErrorKind::Unreachable,
                format!("cannot reach the store: {}", chain(&e)),
            ),
            SdkError::ServiceError(s) => {
                let status = s.raw().status().as_u16();
                let code = e.code().unwrap_or("");
                let kind = match (status, code) {
                    (404, _) | (_, "NoSuchKey" | "NoSuchBucket" | "NotFound") => {
                        ErrorKind::NotFound
                    }
                    (403, _)
                    | (_, "AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch") => {
                        ErrorKind::Denied
                    }
                    (500..=599, _) => ErrorKind::Unreachable,
                    _ => ErrorKind::Other,
                };
                let msg = e.message().unwrap_or("");
                if code.is_empty() && msg.is_empty() {
                    // A HEAD's error has no body to name it.
                    let what = match kind {
                        ErrorKind::Denied => "access denied".to_string(),
                        ErrorKind::NotFound => "not found".to_string(),
                        _ => chain(&e),
                    };
                    (kind, format!("{what} (HTTP {status})"))
                } else {
                    let code = if code.is_empty() { "error" } else { code };
                    (
                        kind,
                        format!("{code} (HTTP {status}) {msg}").trim().to_string(),
                    )
                }
            }
            SdkError::ResponseError(_) => (
                ErrorKind::Unreachable,
                format!("bad response: {}", chain(&e)),
            ),
            _ => (ErrorKind::Other, chain(&e)),
        };
        self.error(what, kind, detail)
    }

    fn error(&self, what: &'static str, kind: ErrorKind, detail: String) -> StoreError {
        let mut detail = detail;
        if kind == ErrorKind::Denied {
            detail += " (check the access key and the secret key)";
        }
        for secret in [&self.host.secret_key, &self.host.access_key] {
            if secret.len() >= 4 {
                detail = detail.replace(secret.as_str(), "****");
            }
        }
        StoreError {
            host: self.name.clone(),
            what,
            detail,
            kind,
        }
    }

    /// Checks, without writing, that the store answers and the bucket exists
    /// (for monitoring).
    pub fn head_bucket(&self) -> Result<(), StoreError> {
        runtime()
            .block_on(self.client.head_bucket().bucket(&self.host.bucket).send())
            .map(drop)
            .map_err(|e| self.fail("checking the bucket", e))
    }

    /// Checks that the bucket exists and that we may write, read and delete
    /// in it (a small probe object that is removed again).
    pub fn ping(&self) -> Result<(), StoreError> {
        let rt = runtime();
        rt.block_on(self.client.head_bucket().bucket(&self.host.bucket).send())
            .map_err(|e| {
                let e = self.fail("checking the bucket", e);
                if e.kind == ErrorKind::NotFound {
                    self.error(
                        "checking the bucket",
                        ErrorKind::NotFound,
                        format!("bucket '{}' does not exist", self.host.bucket),
                    )
                } else {
                    e
                }
            })?;
        let key = format!("tshs-probe/{}", unique());
        let body = b"tshs probe".to_vec();
        self.put_bytes("writing a probe object", &key, body.clone())?;
        let back = self.get_range(&key, 0, body.len() as u64);
        let gone = self.delete(&key);
        if back? != body {
            return Err(self.error(
                "reading a probe object",
                ErrorKind::Other,
                "the object read back differs from what was written".into(),
            ));
        }
        gone
    }

    /// One PUT with its MD5; returns the ETag.
    fn put_bytes(
        &self,
        what: &'static str,
        key: &str,
        data: Vec<u8>,
    ) -> Result<String, StoreError> {
        let md5 = content_md5(&data);
        let len = data.len() as i64;
        let r = runtime()
            .block_on(
                self.client
                    .put_object()
                    .bucket(&self.host.bucket)
                    .key(key)
                    .content_length(len)
                    .content_md5(md5)
                    .body(ByteStream::from(data))
                    .customize()
                    .disable_payload_signing()
                    .send(),
            )
            .map_err(|e| self.fail(what, e))?;
        Ok(r.e_tag().unwrap_or_default().to_string())
    }

    /// Uploads a file of `size` bytes under `key`: one PUT up to
    /// MinBlockSize, else a multipart upload (parts of MinBlockSize or more,
    /// at most MaxParts of them, MaxUploadThreads at once). Verified with a
    /// HEAD before it returns the ETag. A failed multipart upload is aborted.
    pub fn put(&self, key: &str, size: u64, up: &Upload<'_>) -> Result<String> {
        let opts = &self.host.options;
        let delay = std::env::var(PART_DELAY_ENV)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_millis);
        let etag = match opts.part_size(size) {
            None => {
                if let Some(d) = delay {
                    std::thread::sleep(d);
                }
                let data = (up.read)(0, size as usize)?;
                let etag = self.put_bytes("upload", key, data)?;
                (up.progress)(size)?;
                etag
            }
            Some(part) => self.put_multipart(key, size, part, up, delay)?,
        };
        match self.head(key)? {
            Some((len, tag)) if len == size && tag == etag => Ok(etag),
            Some((len, tag)) => Err(self
                .error(
                    "verifying an upload",
                    ErrorKind::Other,
                    format!(
                        "the store holds {len} bytes (ETag {tag}) where {size} bytes (ETag {etag}) were uploaded"
                    ),
                )
                .into()),
            None => Err(self
                .error(
                    "verifying an upload",
                    ErrorKind::NotFound,
                    "the object is missing right after its upload".into(),
                )
                .into()),
        }
    }

    fn put_multipart(
        &self,
        key: &str,
        size: u64,
        part: u64,
        up: &Upload<'_>,
        delay: Option<Duration>,
    ) -> Result<String> {
        let rt = runtime();
        let bucket = &self.host.bucket;
        let created = rt
            .block_on(
                self.client
                    .create_multipart_upload()
                    .bucket(bucket)
                    .key(key)
                    .send(),
            )
            .map_err(|e| self.fail("starting a multipart upload", e))?;
        let id = created
            .upload_id()
            .ok_or_else(|| {
                self.error(
                    "starting a multipart upload",
                    ErrorKind::Other,
                    "no upload id in the answer".into(),
                )
            })?
            .to_string();
        let nparts = size.div_ceil(part);
        let threads = self.host.options.max_upload_threads.clamp(1, nparts);
        let next = AtomicU64::new(0);
        let sent = AtomicU64::new(0);
        // Each part with the MD5 of its bytes.
        let done: Mutex<Vec<(CompletedPart, [u8; 16])>> = Mutex::default();
        let failed: Mutex<Option<anyhow::Error>> = Mutex::default();
        let result = (up.started)(&id);
        if let Err(e) = result {
            *failed.lock().unwrap() = Some(e);
        }
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    loop {
                        if failed.lock().unwrap().is_some() {
                            return;
                        }
                        let i = next.fetch_add(1, Ordering::AcqRel);
                        if i >= nparts {
                            return;
                        }
                        let r = (|| -> Result<()> {
                            if let Some(d) = delay {
                                std::thread::sleep(d);
                            }
                            let off = i * part;
                            let len = part.min(size - off);
                            let data = (up.read)(off, len as usize)?;
                            let digest: [u8; 16] = Md5::digest(&data).into();
                            let md5 = aws_smithy_types::base64::encode(digest);
                            let r = rt
                                .block_on(
                                    self.client
                                        .upload_part()
                                        .bucket(bucket)
                                        .key(key)
                                        .upload_id(&id)
                                        .part_number(i as i32 + 1)
                                        .content_length(len as i64)
                                        .content_md5(md5)
                                        .body(ByteStream::from(data))
                                        .customize()
                                        .disable_payload_signing()
                                        .send(),
                                )
                                .map_err(|e| self.fail("uploading a part", e))?;
                            done.lock().unwrap().push((
                                CompletedPart::builder()
                                    .part_number(i as i32 + 1)
                                    .set_e_tag(r.e_tag().map(str::to_string))
                                    .build(),
                                digest,
                            ));
                            (up.progress)(sent.fetch_add(len, Ordering::AcqRel) + len)
                        })();
                        if let Err(e) = r {
                            failed.lock().unwrap().get_or_insert(e);
                            return;
                        }
                    }
                });
            }
        });
        if let Some(e) = failed.into_inner().unwrap() {
            self.abort_upload(key, &id);
            return Err(e);
        }
        let mut parts = done.into_inner().unwrap();
        parts.sort_by_key(|p| p.0.part_number());
        // The ETag S3 gives a multipart object: the MD5 of the parts' MD5s
        // and the number of parts.
        let mut all = Md5::new();
        for (_, d) in &parts {
            all.update(d);
        }
        let local_etag = format!("\"{:x}-{}\"", all.finalize(), parts.len());
        let parts: Vec<CompletedPart> = parts.into_iter().map(|(p, _)| p).collect();
        let r = rt
            .block_on(
                self.client
                    .complete_multipart_upload()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(&id)
                    .multipart_upload(
                        CompletedMultipartUpload::builder()
                            .set_parts(Some(parts))
                            .build(),
                    )
                    .send(),
            )
            .map_err(|e| match &e {
                // Some stores (moto) answer with a root element the SDK does
                // not accept. The upload is complete; the HEAD that follows
                // checks the object against the ETag we expect.
                SdkError::ServiceError(s)
                    if s.raw().status().as_u16() == 200 && e.code().is_none() =>
                {
                    log::debug!(
                        "{}: the answer to completing a multipart upload was not understood: {}",
                        self.name,
                        chain(&e)
                    );
                    None
                }
                _ => Some(self.fail("completing a multipart upload", e)),
            });
        match r {
            Ok(r) => Ok(r.e_tag().map_or(local_etag, |t| t.to_string())),
            Err(None) => Ok(local_etag),
            Err(Some(e)) => {
                self.abort_upload(key, &id);
                Err(e.into())
            }
        }
    }

    /// Aborts a multipart upload (best effort: one that is gone is fine).
    pub fn abort_upload(&self, key: &str, upload_id: &str) {
        let r = runtime().block_on(
            self.client
                .abort_multipart_upload()
                .bucket(&self.host.bucket)
                .key(key)
                .upload_id(upload_id)
                .send(),
        );
        if let Err(e) = r {
            let e = self.fail("aborting a multipart upload", e);
            if e.kind != ErrorKind::NotFound {
                log::warn!("{e}");
            }
        }
    }

    /// `len` bytes of an object from `off` (one ranged GET).
    pub fn get_range(&self, key: &str, off: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        let mut pieces = self.get_range_pieces(key, off, len, len.max(1) as usize)?;
        Ok(pieces.pop().unwrap_or_default())
    }

    /// `len` bytes of an object from `off` (one ranged GET), cut into pieces
    /// of `piece` bytes (the last may be shorter). The body is copied into
    /// the pieces as it arrives: no second copy of the range is held.
    pub fn get_range_pieces(
        &self,
        key: &str,
        off: u64,
        len: u64,
        piece: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let piece = piece.max(1);
        let rt = runtime();
        let (pieces, got) = rt.block_on(async {
            let mut r = self
                .client
                .get_object()
                .bucket(&self.host.bucket)
                .key(key)
                .range(format!("bytes={off}-{}", off + len - 1))
                .send()
                .await
                .map_err(|e| self.fail("read", e))?;
            let mut pieces: Vec<Vec<u8>> = Vec::with_capacity(len.div_ceil(piece as u64) as usize);
            let mut got = 0u64;
            while let Some(chunk) = r
                .body
                .try_next()
                .await
                .map_err(|e| self.error("read", ErrorKind::Unreachable, e.to_string()))?
            {
                got += chunk.len() as u64;
                if got > len {
                    break; // more than asked for: reported below
                }
                let mut rest = &chunk[..];
                while !rest.is_empty() {
                    if pieces.last().is_none_or(|p| p.len() == piece) {
                        let want = piece.min((len - pieces.len() as u64 * piece as u64) as usize);
                        pieces.push(Vec::with_capacity(want));
                    }
                    let p = pieces.last_mut().expect("pushed above");
                    let n = (piece - p.len()).min(rest.len());
                    p.extend_from_slice(&rest[..n]);
                    rest = &rest[n..];
                }
            }
            Ok::<_, StoreError>((pieces, got))
        })?;
        if got != len {
            return Err(self.error(
                "read",
                ErrorKind::Other,
                format!("asked for {len} bytes at offset {off}, got {got}"),
            ));
        }
        Ok(pieces)
    }

    /// A presigned URL for a GET of `key`, valid `valid` from now (up to 7
    /// days). Computed locally: no request is sent. The URL carries a
    /// signature: show it to nobody but the reader it is for, never log it.
    pub fn presign_get(&self, key: &str, valid: Duration) -> Result<String, StoreError> {
        let conf = PresigningConfig::expires_in(valid)
            .map_err(|e| self.error("presigning a read", ErrorKind::Other, e.to_string()))?;
        let req = runtime()
            .block_on(
                self.client
                    .get_object()
                    .bucket(&self.host.bucket)
                    .key(key)
                    .presigned(conf),
            )
            .map_err(|e| self.fail("presigning a read", e))?;
        Ok(req.uri().to_string())
    }

    /// A whole (small) object, or `None` if there is none.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self.head(key)? {
            None => Ok(None),
            Some((size, _)) => match self.get_range(key, 0, size) {
                Ok(d) => Ok(Some(d)),
                Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            },
        }
    }

    /// Stores an object held in memory (verified; in parts if large).
    pub fn put_bytes_whole(&self, key: &str, data: Vec<u8>) -> Result<()> {
        let size = data.len() as u64;
        self.put(
            key,
            size,
            &Upload {
                read: &|off, len| Ok(data[off as usize..off as usize + len].to_vec()),
                started: &|_| Ok(()),
                progress: &|_| Ok(()),
            },
        )?;
        Ok(())
    }

    /// (size, ETag) of an object, or `None` if there is none.
    pub fn head(&self, key: &str) -> Result<Option<(u64, String)>, StoreError> {
        let r = runtime().block_on(
            self.client
                .head_object()
                .bucket(&self.host.bucket)
                .key(key)
                .send(),
        );
        match r {
            Ok(h) => Ok(Some((
                h.content_length().unwrap_or(0).max(0) as u64,
                h.e_tag().unwrap_or_default().to_string(),
            ))),
            Err(e) => {
                let e = self.fail("head", e);
                if e.kind == ErrorKind::NotFound {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Deletes an object; deleting one that is gone succeeds.
    pub fn delete(&self, key: &str) -> Result<(), StoreError> {
        let r = runtime().block_on(
            self.client
                .delete_object()
                .bucket(&self.host.bucket)
                .key(key)
                .send(),
        );
        match r {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = self.fail("delete", e);
                if e.kind == ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Every object whose key starts with `prefix`: (key, size), in key order.
    pub fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self.list_page(prefix, token.take())?;
            out.extend(page.objects.into_iter().map(|o| (o.key, o.size)));
            match page.next {
                Some(t) => token = Some(t),
                None => return Ok(out),
            }
        }
    }

    /// One page (up to 1,000 objects, in key order) of the objects whose
    /// key starts with `prefix`, from where `token` (the `next` of the page
    /// before) left off: a caller walking a big bucket holds one page at a time.
    pub fn list_page(&self, prefix: &str, token: Option<String>) -> Result<ListPage, StoreError> {
        let r = runtime()
            .block_on(
                self.client
                    .list_objects_v2()
                    .bucket(&self.host.bucket)
                    .prefix(prefix)
                    .set_continuation_token(token)
                    .send(),
            )
            .map_err(|e| self.fail("list", e))?;
        let objects = r
            .contents()
            .iter()
            .map(|o| Listed {
                key: o.key().unwrap_or_default().to_string(),
                size: o.size().unwrap_or(0).max(0) as u64,
                modified_ns: o.last_modified().map_or(0, |t| {
                    t.secs()
                        .saturating_mul(1_000_000_000)
                        .saturating_add(i64::from(t.subsec_nanos()))
                }),
            })
            .collect();
        let next = match r.next_continuation_token() {
            Some(t) if r.is_truncated() == Some(true) => Some(t.to_string()),
            _ => None,
        };
        Ok(ListPage { objects, next })
    }
}

/// An object of a listing.
#[derive(Clone, Debug)]
pub struct Listed {
    pub key: String,
    pub size: u64,
    /// When it was written (ns since the epoch; 0 if the store did not say).
    pub modified_ns: i64,
}

/// A page of a listing, and the token of the next page if there is one.
#[derive(Clone, Debug)]
pub struct ListPage {
    pub objects: Vec<Listed>,
    pub next: Option<String>,
}

/// An error and its sources as one line (`dispatch failure: io error: …:
/// Connection refused (os error 111)`), without the SDK's debug dump.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        if !text.is_empty() && parts.last() != Some(&text) {
            parts.push(text);
        }
        cur = err.source();
    }
    parts.join(": ")
}

/// Base64 of the MD5 of `data`, for `Content-MD5`.
fn content_md5(data: &[u8]) -> String {
    aws_smithy_types::base64::encode(Md5::digest(data))
}

/// A value no other process or call produces: random per process (the
/// standard library seeds its hasher from the OS), plus time and a counter.
pub fn unique() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    static SEED: OnceLock<u64> = OnceLock::new();
    let seed = *SEED.get_or_init(|| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish()
    });
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(seed);
    h.write_i64(crate::clock::now_ns());
    h.write_u64(SEQ.fetch_add(1, Ordering::Relaxed));
    format!("{:016x}{:016x}", seed, h.finish())
}

#[cfg(test)]
mod tests {
    #[test]
    fn unique_values_differ() {
        let a = super::unique();
        let b = super::unique();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
    }

    #[test]
    fn errors_never_carry_the_keys() {
        let host = super::S3Host {
            id: 7,
            brand: super::Brand::Generic,
            server: "http://127.0.0.1:1".into(),
            bucket: "b-1".into(),
            access_key: "AKIDEXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG".into(),
            options: Default::default(),
            is_current: true,
        };
        let store = super::S3Store::new(&host);
        let e = store.error(
            "read",
            super::ErrorKind::Denied,
            "echo wJalrXUtnFEMI/K7MDENG by AKIDEXAMPLE".into(),
        );
        let text = e.to_string();
        assert!(
            !text.contains("wJalr") && !text.contains("AKIDEXAMPLE"),
            "{text}"
        );
        assert!(text.starts_with("S3 host 7 (http://127.0.0.1:1, bucket b-1): read failed"));
        assert!(text.contains("check the access key and the secret key"));
    }

    #[test]
    fn md5_is_base64() {
        // RFC 1321 test vector "abc".
        assert_eq!(super::content_md5(b"abc"), "kAFQmDzST7DWlj99KOF/cg==");
    }
}
