//! Which pages past a file's end the kernel may hold, so that it is never
//! told a larger size while it holds one.
//!
//! A read answered short (the file ends inside what was asked) leaves the
//! kernel's page cache a page zero-filled past that end, and maybe whole
//! pages of zeros after it. Were the kernel then told a larger size (the file
//! grew: an append here or through another mount), a reader would read those
//! zeros as the file's bytes. The mount asks the kernel to leave its pages
//! alone when a size changes (`FUSE_EXPLICIT_INVAL_DATA`) and keeps this
//! rule itself:
//! - a read holds its inode's shard (shared) from before it takes its data
//!   until its reply is sent, and records where a short reply ended;
//! - before any reply that tells the kernel a size (attributes, a direct
//!   write), the teller passes the shard (waits for the reads in flight:
//!   each read that took its data before the size was known has then
//!   replied and recorded). If a recorded end lies below the size, the
//!   kernel's pages from that end's page on are dropped before the reply.
//!
//! A read that takes its data after the size was known sees at least that
//! size (the file only grew), so the page it leaves holds the file's bytes
//! up to it. Pages are dropped only while no shard is held: a drop waits for
//! the pages that reads in flight hold locked.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock, RwLockReadGuard};

const SHARDS: usize = 1024;
/// Recorded ends kept at most; past it the oldest known are dropped (their
/// pages first), so that the record stays bounded on a mount that reads
/// many files to their end.
const MAX_RECORDED: usize = 65_536;
const PAGE: u64 = 4096;

/// A recorded end: the lowest end a short reply left, and a count of the
/// records that went into it (a drop clears only what it saw).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShortEnd {
    pub ino: u64,
    pub end: u64,
    seen: u64,
}

impl ShortEnd {
    /// The offset the kernel's pages are dropped from.
    pub fn page_start(&self) -> u64 {
        self.end / PAGE * PAGE
    }
}

pub struct KernelPages {
    shards: Box<[RwLock<()>]>,
    short: Mutex<HashMap<u64, (u64, u64)>>,
}

impl Default for KernelPages {
    fn default() -> Self {
        KernelPages {
            shards: (0..SHARDS).map(|_| RwLock::new(())).collect(),
            short: Mutex::default(),
        }
    }
}

impl KernelPages {
    fn shard(&self, ino: u64) -> &RwLock<()> {
        &self.shards[(ino.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54) as usize % SHARDS]
    }

    /// Held by a read from before it takes its data until its reply is sent.
    pub fn reading(&self, ino: u64) -> RwLockReadGuard<'_, ()> {
        self.shard(ino).read().unwrap_or_else(|e| e.into_inner())
    }

    /// A read of `asked` bytes at `offset` was answered with `got` (under
    /// [`KernelPages::reading`]). Returns another file's recorded end to drop
    /// when the record is full: its pages are to be dropped, then
    /// [`KernelPages::dropped`] called.
    pub fn replied(&self, ino: u64, offset: u64, asked: u32, got: usize) -> Option<ShortEnd> {
        if got >= asked as usize {
            return None;
        }
        let end = offset + got as u64;
        let mut short = self.short.lock().unwrap();
        let e = short.entry(ino).or_insert((end, 0));
        e.0 = e.0.min(end);
        e.1 += 1;
        if short.len() <= MAX_RECORDED {
            return None;
        }
        short
            .iter()
            .find(|(i, _)| **i != ino)
            .map(|(&ino, &(end, seen))| ShortEnd { ino, end, seen })
    }

    /// Before a reply that tells the kernel `size`: the recorded end its
    /// pages must be dropped from first (then [`KernelPages::dropped`]).
    pub fn before_telling(&self, ino: u64, size: u64) -> Option<ShortEnd> {
        // The barrier: every read that took its data before `size` was
        // known has recorded by now.
        drop(self.shard(ino).write().unwrap_or_else(|e| e.into_inner()));
        let short = self.short.lock().unwrap();
        match short.get(&ino) {
            Some(&(end, seen)) if end < size => Some(ShortEnd { ino, end, seen }),
            _ => None,
        }
    }

    /// The kernel's pages from `e` on are gone: forgets `e`, unless a read
    /// recorded again since (its page may have come back).
    pub fn dropped(&self, e: ShortEnd) {
        let mut short = self.short.lock().unwrap();
        if short.get(&e.ino) == Some(&(e.end, e.seen)) {
            short.remove(&e.ino);
        }
    }

    /// The kernel forgot the inode, and its pages with it.
    pub fn forget(&self, ino: u64) {
        self.short.lock().unwrap().remove(&ino);
    }

    pub fn recorded(&self) -> usize {
        self.short.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_reply_is_dropped_before_a_larger_size_is_told() {
        let k = KernelPages::default();
        // Whole replies leave nothing to drop.
        assert_eq!(k.replied(7, 0, 4096, 4096), None);
        assert_eq!(k.before_telling(7, 1 << 20), None);
        // A reply that ended at 5,000: sizes up to it are safe to tell.
        drop(k.reading(7));
        assert_eq!(k.replied(7, 4096, 8192, 904), None);
        assert_eq!(k.before_telling(7, 5000), None);
        let e = k.before_telling(7, 5001).expect("a page to drop");
        assert_eq!((e.ino, e.end, e.page_start()), (7, 5000, 4096));
        // A lower end recorded meanwhile stays after the drop.
        k.replied(7, 0, 4096, 100);
        k.dropped(e);
        let e2 = k.before_telling(7, 5001).expect("still one to drop");
        assert_eq!((e2.end, e2.page_start()), (100, 0));
        k.dropped(e2);
        assert_eq!(k.before_telling(7, u64::MAX), None);
        // Another file's record is its own; a forgotten inode has none.
        k.replied(8, 0, 4096, 10);
        assert_eq!(k.before_telling(7, 11), None);
        k.forget(8);
        assert_eq!(k.before_telling(8, 11), None);
    }

    #[test]
    fn the_record_is_bounded() {
        let k = KernelPages::default();
        let mut evict = None;
        for ino in 0..=MAX_RECORDED as u64 {
            evict = k.replied(ino, 0, 4096, 1);
        }
        let e = evict.expect("full: one to drop");
        assert_ne!(e.ino, MAX_RECORDED as u64);
        k.dropped(e);
        assert_eq!(k.recorded(), MAX_RECORDED);
    }

    #[test]
    fn a_teller_waits_for_the_reads_in_flight() {
        use std::sync::Arc;
        use std::time::Duration;
        let k = Arc::new(KernelPages::default());
        let read = k.reading(3);
        let teller = {
            let k = k.clone();
            std::thread::spawn(move || k.before_telling(3, 100))
        };
        std::thread::sleep(Duration::from_millis(50));
        // The read in flight replies short after the size was taken.
        k.replied(3, 0, 4096, 40);
        drop(read);
        let e = teller.join().unwrap().expect("the read's page is seen");
        assert_eq!(e.end, 40);
    }
}
