//! The object store tier: S3 hosts (brand, endpoint, bucket, keys and the
//! reference's `<options>`), and [`S3Store`], a small blocking client over
//! the AWS SDK for Rust that the FUSE threads and the maintenance tasks call
//! like any other synchronous function (a private tokio runtime runs the
//! requests).
//!
//! What the store holds: closed files moved out of the Storage Nodes by
//! move-to-s3, each under a key that is never reused
//! (`<space>/<inode>/<unique>`). An object is written whole, verified, and
//! only then named by its inode; an object no inode names any more is
//! recorded in the node's `s3_uploads` table and deleted by remove-deleted.
//!
//! Secrets: the secret key is stored in the Admin Node and used to sign
//! requests; it is never printed, logged or put into an error message
//! (errors name the host, see [`StoreError`]; [`S3Host::masked_secret`]).

mod s3;

use std::fmt;

use anyhow::{Result, anyhow, bail};

pub use s3::{ListPage, Listed, S3Store, Upload, unique};

/// The kind of object store, as `add-s3-host` takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Brand {
    /// Amazon S3: virtual-hosted addressing; `server` is a host name
    /// (`s3.amazonaws.com`, `s3.eu-central-1.amazonaws.com`).
    Amazon,
    /// OpenStack Swift's S3 API: path-style addressing.
    Openstack,
    /// Any S3-compatible store (MinIO, Ceph RGW, …): path-style addressing,
    /// `server` an explicit endpoint `http(s)://host[:port]`.
    Generic,
}

impl Brand {
    pub fn parse(s: &str) -> Result<Brand> {
        match s.to_ascii_uppercase().as_str() {
            "AMAZON" => Ok(Brand::Amazon),
            "OPENSTACK" => Ok(Brand::Openstack),
            "GENERIC" => Ok(Brand::Generic),
            _ => bail!("unknown S3 brand '{s}' (known: AMAZON, OPENSTACK, GENERIC)"),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Brand::Amazon => "AMAZON",
            Brand::Openstack => "OPENSTACK",
            Brand::Generic => "GENERIC",
        }
    }
}

/// The `<options>` of an S3 host: `name=value;…` (names as in the reference,
/// case-insensitive; sizes take K, M, G).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Options {
    /// Smallest file move-to-s3 moves.
    pub min_size: u64,
    /// Seconds a presigned read URL is valid (the mount's
    /// `user.tshs.s3_url` xattr, the space server's `--s3-redirect`);
    /// 0: no redirects.
    pub redirect_timeout: u64,
    /// Part size of multipart uploads; files up to this size are one PUT.
    pub min_block_size: u64,
    /// Most parts of one upload: larger files get larger parts.
    pub max_parts: u64,
    /// Largest file move-to-s3 moves; 0: no limit.
    pub max_size: u64,
    /// Parts uploaded at once; 0: one at a time.
    pub max_upload_threads: u64,
    /// Region to sign requests for (a tshs addition; default from the
    /// server name for AMAZON, `us-east-1` otherwise).
    pub region: Option<String>,
}

impl Default for S3Options {
    fn default() -> Self {
        S3Options {
            min_size: 0,
            redirect_timeout: 10,
            min_block_size: 5 << 20,
            max_parts: 1000,
            max_size: 0,
            max_upload_threads: 0,
            region: None,
        }
    }
}

/// S3's own limits: parts of 5 MiB to 5 GiB (the last may be smaller), at
/// most 10,000 of them.
const MIN_PART: u64 = 5 << 20;
const MAX_PART: u64 = 5 << 30;
const MAX_PARTS: u64 = 10_000;
const MAX_THREADS: u64 = 64;

impl S3Options {
    /// Parses `MinSize=1M;MaxUploadThreads=4`; empty text gives the defaults.
    pub fn parse(text: &str) -> Result<S3Options> {
        let mut o = S3Options::default();
        o.update(text)?;
        Ok(o)
    }

    /// Applies `name=value;…` on top of these options, then checks them as a whole.
    pub fn update(&mut self, text: &str) -> Result<()> {
        for item in text.split(';').map(str::trim).filter(|i| !i.is_empty()) {
            let (name, value) = item
                .split_once('=')
                .map(|(n, v)| (n.trim(), v.trim()))
                .ok_or_else(|| anyhow!("malformed S3 option '{item}': expected name=value"))?;
            let size = || parse_size(value).map_err(|e| anyhow!("S3 option '{name}': {e}"));
            let number = |min: u64, max: u64| -> Result<u64> {
                value
                    .parse::<u64>()
                    .ok()
                    .filter(|n| (min..=max).contains(n))
                    .ok_or_else(|| {
                        anyhow!("S3 option '{name}': '{value}' is not a number from {min} to {max}")
                    })
            };
            match name.to_ascii_lowercase().as_str() {
                "minsize" => self.min_size = size()?,
                "redirecttimeout" => self.redirect_timeout = number(0, 86_400)?,
                "minblocksize" => {
                    let v = size()?;
                    if !(MIN_PART..=MAX_PART).contains(&v) {
                        bail!("S3 option '{name}': '{value}' is out of range (5M to 5G)");
                    }
                    self.min_block_size = v;
                }
                "maxparts" => self.max_parts = number(1, MAX_PARTS)?,
                "maxsize" => self.max_size = size()?,
                "maxuploadthreads" => self.max_upload_threads = number(0, MAX_THREADS)?,
                "region" => {
                    if value.is_empty()
                        || !value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    {
                        bail!("S3 option '{name}': '{value}' is not a region name");
                    }
                    self.region = Some(value.to_string());
                }
                _ => bail!(
                    "unknown S3 option '{name}' (known: MinSize, RedirectTimeout, MinBlockSize, MaxParts, MaxSize, MaxUploadThreads, Region)"
                ),
            }
        }
        if self.max_size > 0 && self.max_size < self.min_size {
            bail!(
                "S3 options: MaxSize ({}) is below MinSize ({})",
                self.max_size,
                self.min_size
            );
        }
        Ok(())
    }

    /// The canonical text form (what the Admin Node stores and listings show).
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "MinSize={};RedirectTimeout={};MinBlockSize={};MaxParts={};MaxSize={};MaxUploadThreads={}",
            show_size(self.min_size),
            self.redirect_timeout,
            show_size(self.min_block_size),
            self.max_parts,
            show_size(self.max_size),
            self.max_upload_threads
        );
        if let Some(r) = &self.region {
            s += &format!(";Region={r}");
        }
        s
    }

    /// The part size for a file of `size` bytes: MinBlockSize, or larger so
    /// that the file fits in MaxParts parts. `None`: one PUT.
    pub fn part_size(&self, size: u64) -> Option<u64> {
        if size <= self.min_block_size {
            return None;
        }
        Some(self.min_block_size.max(size.div_ceil(self.max_parts)))
    }

    /// True if move-to-s3 moves a file of this size.
    pub fn eligible(&self, size: u64) -> bool {
        size >= self.min_size && (self.max_size == 0 || size <= self.max_size)
    }
}

/// `5M` → 5 MiB; K, M, G, T (also KB, MB, …), case-insensitive; plain bytes.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let upper = t.to_ascii_uppercase();
    let digits = upper.trim_end_matches('B');
    let digits = if digits.is_empty() { &upper } else { digits };
    let (num, shift) = match digits.as_bytes().last() {
        Some(b'K') => (&digits[..digits.len() - 1], 10),
        Some(b'M') => (&digits[..digits.len() - 1], 20),
        Some(b'G') => (&digits[..digits.len() - 1], 30),
        Some(b'T') => (&digits[..digits.len() - 1], 40),
        _ => (digits, 0),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| anyhow!("'{s}' is not a size (e.g. 512K, 5M, 1G)"))?;
    n.checked_mul(1 << shift)
        .filter(|v| *v < 1 << 50)
        .ok_or_else(|| anyhow!("size '{s}' is too large"))
}

/// A size in the largest unit that divides it.
fn show_size(n: u64) -> String {
    for (shift, unit) in [(30, "G"), (20, "M"), (10, "K")] {
        if n > 0 && n.is_multiple_of(1 << shift) {
            return format!("{}{unit}", n >> shift);
        }
    }
    n.to_string()
}

/// One row of the Admin Node's `s3_hosts`.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Host {
    pub id: u32,
    pub brand: Brand,
    pub server: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    pub options: S3Options,
    pub is_current: bool,
}

impl S3Host {
    /// Checks the fields `add-s3-host` takes; the text of errors never
    /// contains a key.
    pub fn check(&self) -> Result<()> {
        check_server(self.brand, &self.server)?;
        check_bucket(&self.bucket)?;
        if self.access_key.is_empty() || self.access_key.chars().any(char::is_whitespace) {
            bail!("the S3 access key is empty or contains white space");
        }
        if self.secret_key.is_empty() || self.secret_key.chars().any(char::is_whitespace) {
            bail!("the S3 secret key is empty or contains white space");
        }
        Ok(())
    }

    /// `S3 host 3 (http://127.0.0.1:9000, bucket tshs)`: what messages name.
    pub fn describe(&self) -> String {
        if self.id == 0 {
            // Not added yet (add-s3-host's check).
            return format!("new S3 host ({}, bucket {})", self.server, self.bucket);
        }
        format!(
            "S3 host {} ({}, bucket {})",
            self.id, self.server, self.bucket
        )
    }

    /// The secret key as listings show it.
    pub fn masked_secret(&self) -> &'static str {
        "****"
    }

    /// The endpoint URL requests go to.
    pub fn endpoint(&self) -> String {
        if self.server.contains("://") {
            self.server.trim_end_matches('/').to_string()
        } else {
            format!("https://{}", self.server.trim_end_matches('/'))
        }
    }

    /// The region requests are signed for.
    pub fn region(&self) -> String {
        if let Some(r) = &self.options.region {
            return r.clone();
        }
        if self.brand == Brand::Amazon {
            // s3.eu-central-1.amazonaws.com, s3-eu-west-1.amazonaws.com
            let host = self
                .server
                .rsplit("://")
                .next()
                .unwrap_or("")
                .split([':', '/'])
                .next()
                .unwrap_or("");
            let first = host.split('.').take(2).collect::<Vec<_>>();
            match first.as_slice() {
                ["s3", r] if *r != "amazonaws" => return r.to_string(),
                [s, _] if s.starts_with("s3-") => return s[3..].to_string(),
                _ => {}
            }
        }
        "us-east-1".into()
    }
}

impl fmt::Debug for S3Host {
    /// Never shows the secret key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Host")
            .field("id", &self.id)
            .field("brand", &self.brand)
            .field("server", &self.server)
            .field("bucket", &self.bucket)
            .field("access_key", &self.access_key)
            .field("secret_key", &"****")
            .field("options", &self.options.to_text())
            .field("is_current", &self.is_current)
            .finish()
    }
}

fn check_server(brand: Brand, server: &str) -> Result<()> {
    if server.is_empty() || server.chars().any(|c| c.is_whitespace() || c == '@') {
        bail!("'{server}' is not an S3 server (a host name, or for GENERIC http(s)://host:port)");
    }
    let explicit = server.starts_with("http://") || server.starts_with("https://");
    if brand == Brand::Generic && !explicit {
        bail!("a GENERIC S3 server is an endpoint URL: http(s)://host:port (got '{server}')");
    }
    if server.contains("://") && !explicit {
        bail!("S3 server '{server}': only http:// and https:// endpoints are supported");
    }
    let rest = server.split("://").last().unwrap_or("");
    let host_port = rest.split('/').next().unwrap_or("");
    if host_port.is_empty() || rest.trim_end_matches('/').contains('/') {
        bail!("S3 server '{server}' must be host[:port] (no path: the bucket is separate)");
    }
    if let Some((_, port)) = host_port.rsplit_once(':')
        && !host_port.ends_with(']')
        && port.parse::<u16>().ok().filter(|p| *p > 0).is_none()
    {
        bail!("S3 server '{server}': '{port}' is not a port number");
    }
    Ok(())
}

/// S3's bucket naming rules (lower case, digits, `.` and `-`, 3 to 63).
fn check_bucket(b: &str) -> Result<()> {
    let ok = (3..=63).contains(&b.len())
        && b.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && b.starts_with(|c: char| c.is_ascii_alphanumeric())
        && b.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !ok {
        bail!("'{b}' is not an S3 bucket name (3 to 63 lower-case letters, digits, '.' and '-')");
    }
    Ok(())
}

/// What went wrong talking to a store, for callers that react to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// No such object (or bucket).
    NotFound,
    /// The store could not be reached or timed out: retry later.
    Unreachable,
    /// The store refused the credentials.
    Denied,
    Other,
}

/// A failed request. The message names the host and the operation, never
/// a key: access and secret key are scrubbed from what the SDK reports.
#[derive(Debug, thiserror::Error)]
#[error("{host}: {what} failed: {detail}")]
pub struct StoreError {
    pub host: String,
    pub what: &'static str,
    pub detail: String,
    pub kind: ErrorKind,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_and_print() {
        let o = S3Options::parse("").unwrap();
        assert_eq!(o, S3Options::default());
        assert_eq!(
            o.to_text(),
            "MinSize=0;RedirectTimeout=10;MinBlockSize=5M;MaxParts=1000;MaxSize=0;MaxUploadThreads=0"
        );
        let o =
            S3Options::parse("minsize=1K; MaxSize=2G;MaxUploadThreads=4;MinBlockSize=8MB").unwrap();
        assert_eq!(
            (
                o.min_size,
                o.max_size,
                o.max_upload_threads,
                o.min_block_size
            ),
            (1024, 2 << 30, 4, 8 << 20)
        );
        assert_eq!(S3Options::parse(&o.to_text()).unwrap(), o);
        let err = |s: &str| S3Options::parse(s).unwrap_err().to_string();
        assert!(err("Bogus=1").contains("unknown S3 option 'Bogus'"));
        assert!(err("MinSize=abc").contains("not a size"));
        assert!(err("MinBlockSize=1M").contains("out of range"));
        assert!(err("MaxParts=0").contains("not a number from 1"));
        assert!(err("MaxUploadThreads=-1").contains("not a number"));
        assert!(err("MinSize").contains("malformed"));
        assert!(err("MinSize=2M;MaxSize=1M").contains("below MinSize"));
    }

    #[test]
    fn part_sizes() {
        let o = S3Options::parse("MinBlockSize=5M;MaxParts=4").unwrap();
        assert_eq!(o.part_size(5 << 20), None);
        assert_eq!(o.part_size((5 << 20) + 1), Some(5 << 20));
        assert_eq!(o.part_size(40 << 20), Some(10 << 20));
        assert!(o.eligible(0));
        let o = S3Options::parse("MinSize=10;MaxSize=20").unwrap();
        assert!(!o.eligible(9) && o.eligible(10) && o.eligible(20) && !o.eligible(21));
    }

    fn host(brand: Brand, server: &str) -> S3Host {
        S3Host {
            id: 1,
            brand,
            server: server.into(),
            bucket: "my-bucket".into(),
            access_key: "AK".into(),
            secret_key: "SECRETSECRET".into(),
            options: S3Options::default(),
            is_current: true,
        }
    }

    #[test]
    fn servers_and_regions() {
        assert!(
            host(Brand::Generic, "http://127.0.0.1:9000")
                .check()
                .is_ok()
        );
        assert!(host(Brand::Generic, "127.0.0.1:9000").check().is_err());
        assert!(
            host(Brand::Generic, "http://127.0.0.1:99999")
                .check()
                .is_err()
        );
        assert!(host(Brand::Generic, "ftp://x").check().is_err());
        assert!(host(Brand::Generic, "http://u:p@x").check().is_err());
        assert!(host(Brand::Amazon, "s3.amazonaws.com/b").check().is_err());
        let a = host(Brand::Amazon, "s3.eu-central-1.amazonaws.com");
        assert_eq!(a.region(), "eu-central-1");
        assert_eq!(a.endpoint(), "https://s3.eu-central-1.amazonaws.com");
        assert_eq!(
            host(Brand::Amazon, "s3.amazonaws.com").region(),
            "us-east-1"
        );
        assert_eq!(
            host(Brand::Amazon, "s3-eu-west-1.amazonaws.com").region(),
            "eu-west-1"
        );
        let mut b = host(Brand::Generic, "http://x:1");
        b.bucket = "Bad_Bucket".into();
        assert!(b.check().is_err());
        assert!(!format!("{b:?}").contains("SECRET"));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("5M").unwrap(), 5 << 20);
        assert_eq!(parse_size("5mb").unwrap(), 5 << 20);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert_eq!(parse_size("1k").unwrap(), 1024);
        assert!(parse_size("x").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999T").is_err());
    }
}
