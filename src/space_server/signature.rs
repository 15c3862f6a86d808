//! Signed requests: a client that knows the deployment's secret can sign a
//! request instead of sending the secret, and hand the signed URL to someone
//! else (a download link) that works for that one method and path until it
//! expires.
//!
//! The signature is HMAC-SHA256, keyed with the token, over
//! `METHOD "\n" PATH "\n" EXPIRES`: the method in capitals, the path exactly
//! as sent (still percent-encoded, without the query), and the expiry in Unix
//! seconds. It travels either in the query (`?expires=…&signature=<hex>`) or
//! in a header (`Authorization: TSHS-HMAC-SHA256 Expires=…,Signature=<hex>`).
//! The body is not signed (as S3's UNSIGNED-PAYLOAD): a signature allows its
//! method on its path (a GET signature also HEAD, which shows less), and may
//! be used again until it expires.

use ring::hmac;

/// The `Authorization` scheme of a signed request.
pub const SCHEME: &str = "TSHS-HMAC-SHA256";

/// Why a signature was refused (said to the client: no secret in it).
#[derive(Debug, PartialEq, Eq)]
pub struct Refused(pub &'static str);

/// The expiry and signature a request carries.
#[derive(Debug, PartialEq, Eq)]
pub struct Signed {
    pub expires: u64,
    pub signature: Vec<u8>,
}

/// Unix seconds, now: the clock expiries are read against.
pub fn now() -> u64 {
    (crate::clock::now_ns() / 1_000_000_000) as u64
}

/// The hex signature of `method path` until `expires`.
pub fn sign(key: &[u8], method: &str, path: &str, expires: u64) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    hex::encode(hmac::sign(&key, &string_to_sign(method, path, expires)))
}

/// `path?expires=…&signature=…`, ready to hand out.
pub fn signed_url(key: &[u8], method: &str, path: &str, expires: u64) -> String {
    format!(
        "{path}?expires={expires}&signature={}",
        sign(key, method, path, expires)
    )
}

/// Checks a request's signature at time `now` (Unix seconds); a signature
/// may reach at most `max_lifetime` seconds ahead.
pub fn verify(
    key: &[u8],
    method: &str,
    path: &str,
    signed: &Signed,
    now: u64,
    max_lifetime: u64,
) -> Result<(), Refused> {
    if signed.expires < now {
        return Err(Refused("the signature has expired"));
    }
    if signed.expires - now > max_lifetime {
        return Err(Refused("the signature expires too far ahead"));
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    // ring compares in constant time.
    let matches = |method| {
        hmac::verify(
            &key,
            &string_to_sign(method, path, signed.expires),
            &signed.signature,
        )
        .is_ok()
    };
    if matches(method) || (method == "HEAD" && matches("GET")) {
        Ok(())
    } else {
        Err(Refused("the signature does not match"))
    }
}

fn string_to_sign(method: &str, path: &str, expires: u64) -> Vec<u8> {
    format!("{method}\n{path}\n{expires}").into_bytes()
}

/// The signature in a query string, if it has one (`None`: not signed).
pub fn from_query(query: &str) -> Option<Result<Signed, Refused>> {
    let (mut expires, mut signature) = (None, None);
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("expires", v)) => expires = Some(v),
            Some(("signature", v)) => signature = Some(v),
            _ => {}
        }
    }
    if expires.is_none() && signature.is_none() {
        return None;
    }
    Some(parse(expires, signature))
}

/// The signature in an `Authorization` value after the scheme:
/// `Expires=…,Signature=…` (either order, spaces allowed).
pub fn from_header(params: &str) -> Result<Signed, Refused> {
    let (mut expires, mut signature) = (None, None);
    for part in params.split(',') {
        match part.trim().split_once('=') {
            Some((k, v)) if k.eq_ignore_ascii_case("expires") => expires = Some(v),
            Some((k, v)) if k.eq_ignore_ascii_case("signature") => signature = Some(v),
            _ => return Err(Refused("malformed signature parameters")),
        }
    }
    parse(expires, signature)
}

fn parse(expires: Option<&str>, signature: Option<&str>) -> Result<Signed, Refused> {
    let expires = expires
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or(Refused("expires must be Unix seconds"))?;
    let signature = signature
        .filter(|s| s.len() == 64)
        .and_then(|s| hex::decode(s).ok())
        .ok_or(Refused("signature must be 64 hex digits"))?;
    Ok(Signed { expires, signature })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"test-token-0123456789abcdef";
    const NOW: u64 = 1_800_000_000;
    const DAY: u64 = 86_400;

    #[test]
    fn hmac_sha256_is_the_rfc_4231_function() {
        // RFC 4231, test case 2.
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"Jefe");
        let tag = hmac::sign(&key, b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(tag),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    fn signed(method: &str, path: &str, expires: u64) -> Signed {
        from_header(&format!(
            "Expires={expires}, Signature={}",
            sign(KEY, method, path, expires)
        ))
        .unwrap()
    }

    #[test]
    fn a_signature_allows_its_method_and_path_until_it_expires() {
        let s = signed("GET", "/vol01/3/a%20b", NOW + 60);
        assert_eq!(verify(KEY, "GET", "/vol01/3/a%20b", &s, NOW, DAY), Ok(()));
        assert_eq!(
            verify(KEY, "GET", "/vol01/3/a%20b", &s, NOW + 60, DAY),
            Ok(())
        );
        let bad = |m, p, now, key: &[u8]| verify(key, m, p, &s, now, DAY).unwrap_err().0;
        assert_eq!(
            bad("GET", "/vol01/3/a%20b", NOW + 61, KEY),
            "the signature has expired"
        );
        assert_eq!(
            bad("DELETE", "/vol01/3/a%20b", NOW, KEY),
            "the signature does not match"
        );
        assert_eq!(
            bad("GET", "/vol01/3/a b", NOW, KEY),
            "the signature does not match"
        );
        assert_eq!(
            bad("GET", "/vol01/4/a%20b", NOW, KEY),
            "the signature does not match"
        );
        assert_eq!(
            bad("GET", "/vol01/3/a%20b", NOW, b"another-key-0123456789"),
            "the signature does not match"
        );
        // HEAD shows less than GET: a GET signature allows it, not the reverse.
        assert_eq!(verify(KEY, "HEAD", "/vol01/3/a%20b", &s, NOW, DAY), Ok(()));
        let head = signed("HEAD", "/vol01/3/a%20b", NOW + 60);
        assert!(verify(KEY, "GET", "/vol01/3/a%20b", &head, NOW, DAY).is_err());
        // Moving the expiry breaks the signature.
        let moved = Signed {
            expires: NOW + 3600,
            signature: s.signature.clone(),
        };
        assert!(verify(KEY, "GET", "/vol01/3/a%20b", &moved, NOW, DAY).is_err());
    }

    #[test]
    fn lifetimes_beyond_the_limit_are_refused() {
        let s = signed("GET", "/v/1/f", NOW + DAY + 1);
        assert_eq!(
            verify(KEY, "GET", "/v/1/f", &s, NOW, DAY),
            Err(Refused("the signature expires too far ahead"))
        );
        assert_eq!(verify(KEY, "GET", "/v/1/f", &s, NOW + 1, DAY), Ok(()));
    }

    #[test]
    fn signatures_are_read_from_queries_and_headers() {
        let url = signed_url(KEY, "GET", "/v/1/f", NOW);
        let (path, query) = url.split_once('?').unwrap();
        assert_eq!(path, "/v/1/f");
        let s = from_query(query).unwrap().unwrap();
        assert_eq!(s.expires, NOW);
        assert_eq!(verify(KEY, "GET", "/v/1/f", &s, NOW, DAY), Ok(()));
        assert_eq!(from_query("list=1"), None);
        assert_eq!(from_query(""), None);
        let sig = sign(KEY, "GET", "/v/1/f", NOW);
        for bad in [
            format!("expires=soon&signature={sig}"),
            format!("expires={NOW}"),
            format!("expires={NOW}&signature={}", &sig[..63]),
            format!("expires={NOW}&signature={}zz", &sig[..62]),
            format!("expires=-1&signature={sig}"),
            format!("expires=+{NOW}&signature={sig}"),
            format!("expires={NOW}&signature=+{}", &sig[1..]),
        ] {
            assert!(from_query(&bad).unwrap().is_err(), "{bad}");
        }
        let h = from_header(&format!("signature={sig},EXPIRES={NOW}")).unwrap();
        assert_eq!(h, s);
        assert!(from_header(&format!("Expires={NOW},Signature={sig},Extra=1")).is_err());
        assert!(from_header("").is_err());
    }
}
