//! The time the filesystem stamps: nanoseconds since the epoch.

/// Nanoseconds since the epoch, now.
pub fn now_ns() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    d.as_nanos() as i64
}
