//! The `Range` request header (RFC 9110 §14): one byte range is served as
//! 206; several ranges, or a header that does not parse, are ignored (the
//! whole file is served, as the RFC allows); a range that starts at or past
//! the end of the file is 416.

/// What a `Range` header asks of a file of `size` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// The whole file (no header, or one we ignore).
    All,
    /// `[start, end)`, inside the file and not empty.
    Part { start: u64, end: u64 },
    /// Nothing of the file satisfies the range.
    Unsatisfiable,
}

pub fn parse(header: Option<&str>, size: u64) -> Want {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Want::All;
    };
    if spec.contains(',') {
        return Want::All;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Want::All;
    };
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    match (a.trim(), b.trim()) {
        ("", suffix) => match num(suffix) {
            None => Want::All,
            Some(0) => Want::Unsatisfiable,
            Some(_) if size == 0 => Want::Unsatisfiable,
            Some(n) => Want::Part {
                start: size.saturating_sub(n),
                end: size,
            },
        },
        (first, "") => match num(first) {
            None => Want::All,
            Some(s) if s >= size => Want::Unsatisfiable,
            Some(s) => Want::Part {
                start: s,
                end: size,
            },
        },
        (first, last) => match (num(first), num(last)) {
            (Some(s), Some(l)) if s <= l => {
                if s >= size {
                    Want::Unsatisfiable
                } else {
                    Want::Part {
                        start: s,
                        end: l.saturating_add(1).min(size),
                    }
                }
            }
            _ => Want::All,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let p = |h, size| parse(Some(h), size);
        assert_eq!(parse(None, 10), Want::All);
        assert_eq!(p("bytes=0-0", 10), Want::Part { start: 0, end: 1 });
        assert_eq!(p("bytes=2-5", 10), Want::Part { start: 2, end: 6 });
        assert_eq!(p("bytes=2-100", 10), Want::Part { start: 2, end: 10 });
        assert_eq!(p("bytes=7-", 10), Want::Part { start: 7, end: 10 });
        assert_eq!(p("bytes=-3", 10), Want::Part { start: 7, end: 10 });
        assert_eq!(p("bytes=-30", 10), Want::Part { start: 0, end: 10 });
        assert_eq!(p("bytes=10-", 10), Want::Unsatisfiable);
        assert_eq!(p("bytes=10-12", 10), Want::Unsatisfiable);
        assert_eq!(p("bytes=-0", 10), Want::Unsatisfiable);
        assert_eq!(p("bytes=0-", 0), Want::Unsatisfiable);
        assert_eq!(p("bytes=5-2", 10), Want::All);
        assert_eq!(p("bytes=0-1,4-5", 10), Want::All);
        assert_eq!(p("items=0-1", 10), Want::All);
        assert_eq!(p("bytes=a-b", 10), Want::All);
        assert_eq!(p("bytes=+1-2", 10), Want::All);
    }
}
