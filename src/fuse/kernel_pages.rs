//! What the kernel's page cache may hold of each file, so that it is never
//! told a larger size while it holds zeros below it.
//!
//! Zeros come two ways:
//! - a read answered short (the file ends inside what was asked) leaves a
//!   page zero-filled past that end, and maybe whole pages of zeros after;
//! - a size told smaller than bytes the kernel holds zeroes its pages from
//!   that size on: another mount cut the file, attributes were kept a
//!   while, or the file grew between the size's query and a read answered
//!   before the kernel took the size.
//!
//! Were the kernel then told a larger size (the file grew: an append here
//! or through another mount), a reader would read those zeros as the file's
//! bytes. The mount asks the kernel to leave its pages alone when a size
//! changes (`FUSE_EXPLICIT_INVAL_DATA`) and keeps this rule itself:
//! - a read holds its inode's shard (shared) from before it takes its data
//!   until its reply is sent, and records how far the kernel now holds the
//!   file's bytes, where a short reply ended, and a size told lately that
//!   is smaller than its end (the kernel may take it after the read);
//! - before any reply that tells the kernel a size (attributes, a direct
//!   write), the teller passes the shard (waits for the reads in flight:
//!   each read that took its data before the size was known has then
//!   replied and recorded) and records the size as told. A size below what
//!   the kernel holds is recorded as an end of its bytes. If an end lies
//!   below the size told, the kernel's pages from that end's page on are
//!   dropped before the reply goes.
//!
//! A drop changes the inode's attributes, so the kernel ignores every
//! attribute reply whose request was sent before it: the sizes told before
//! a drop are forgotten with it. (Replies to writes and fallocate only ever
//! raise the size.)

use std::collections::HashMap;
use std::sync::{Mutex, RwLock, RwLockReadGuard};

const SHARDS: usize = 4096;
/// Files recorded at most; past it one is forgotten after the kernel's pages
/// of it are dropped, so that the record stays bounded on a mount that
/// reads many files.
const MAX_FILES: usize = 65_536;
/// Sizes told are remembered in two generations of this many files each:
/// far longer than the kernel takes to apply a reply.
const TOLD_GENERATION: usize = 32_768;
const PAGE: u64 = 4096;

/// What the kernel may hold of one file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Held {
    /// How far it may hold the file's bytes.
    upto: u64,
    /// The lowest offset past which it may hold zeros.
    zeros_from: Option<u64>,
    /// The record's count when this last changed: a drop clears only what
    /// it saw.
    seen: u64,
}

/// The kernel's pages of `ino` from `from` on, to drop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageDrop {
    pub ino: u64,
    pub from: u64,
    seen: u64,
}

pub struct KernelPages {
    shards: Box<[RwLock<()>]>,
    record: Mutex<Record>,
}

#[derive(Default)]
struct Record {
    files: HashMap<u64, Held>,
    /// The lowest size told each file since its last drop, in two
    /// generations, the newer first.
    told: [HashMap<u64, u64>; 2],
    /// Counts changes, for [`Held::seen`].
    seq: u64,
}

impl Record {
    fn told(&self, ino: u64) -> Option<u64> {
        let (a, b) = (self.told[0].get(&ino), self.told[1].get(&ino));
        a.into_iter().chain(b).copied().min()
    }

    /// The kernel now holds the file's bytes up to `end`, and zeros past
    /// `zeros`. Returns a file to forget when the record is full.
    fn hold(&mut self, ino: u64, end: u64, zeros: Option<u64>) -> Option<PageDrop> {
        // A size told lately and smaller may be taken after this.
        let zeros = match self.told(ino) {
            Some(t) if t < end => Some(zeros.map_or(t, |z| z.min(t))),
            _ => zeros,
        };
        self.seq += 1;
        let seq = self.seq;
        let h = self.files.entry(ino).or_default();
        h.upto = h.upto.max(end);
        if let Some(z) = zeros {
            h.zeros_from = Some(h.zeros_from.map_or(z, |old| old.min(z)));
        }
        h.seen = seq;
        if self.files.len() <= MAX_FILES {
            return None;
        }
        let (&ino, h) = self.files.iter().find(|(i, _)| **i != ino)?;
        Some(PageDrop {
            ino,
            from: 0,
            seen: h.seen,
        })
    }
}

impl Default for KernelPages {
    fn default() -> Self {
        KernelPages {
            shards: (0..SHARDS).map(|_| RwLock::new(())).collect(),
            record: Mutex::default(),
        }
    }
}

impl KernelPages {
    fn shard(&self, ino: u64) -> &RwLock<()> {
        &self.shards[(ino.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 52) as usize % SHARDS]
    }

    /// Held by a read from before it takes its data until its reply is sent.
    pub fn reading(&self, ino: u64) -> RwLockReadGuard<'_, ()> {
        self.shard(ino).read().unwrap_or_else(|e| e.into_inner())
    }

    /// A read of `asked` bytes at `offset` was answered with `got` (under
    /// [`KernelPages::reading`]). Returns a file to forget when the record
    /// is full: its pages are to be dropped first.
    pub fn replied(&self, ino: u64, offset: u64, asked: u32, got: usize) -> Option<PageDrop> {
        let end = offset + got as u64;
        let short = (got < asked as usize).then_some(end);
        self.record.lock().unwrap().hold(ino, end, short)
    }

    /// A write that may come from the kernel's page cache put bytes up to
    /// `end` in it. Returns a file to forget, as [`KernelPages::replied`].
    pub fn cached_write(&self, ino: u64, end: u64) -> Option<PageDrop> {
        self.record.lock().unwrap().hold(ino, end, None)
    }

    /// Before a reply that tells the kernel `size`: the pages to drop first
    /// (then [`KernelPages::dropped`]).
    pub fn before_telling(&self, ino: u64, size: u64) -> Option<PageDrop> {
        // The barrier: every read that took its data before `size` was
        // known has recorded by now.
        drop(self.shard(ino).write().unwrap_or_else(|e| e.into_inner()));
        let mut r = self.record.lock().unwrap();
        if r.told[0].len() >= TOLD_GENERATION {
            r.told[1] = std::mem::take(&mut r.told[0]);
        }
        let told = r.told[0].entry(ino).or_insert(size);
        *told = (*told).min(size);
        r.seq += 1;
        let seq = r.seq;
        let h = r.files.get_mut(&ino)?;
        if size < h.upto {
            // The kernel zeroes what it holds past `size` once told.
            h.zeros_from = Some(h.zeros_from.map_or(size, |z| z.min(size)));
            h.seen = seq;
        }
        match h.zeros_from {
            Some(z) if z < size => Some(PageDrop {
                ino,
                from: z / PAGE * PAGE,
                seen: h.seen,
            }),
            _ => None,
        }
    }

    /// The kernel's pages from `d.from` on are gone, and the sizes told
    /// before with them. What was recorded since stays (its pages may have
    /// come back).
    pub fn dropped(&self, d: PageDrop) {
        let mut r = self.record.lock().unwrap();
        r.told[0].remove(&d.ino);
        r.told[1].remove(&d.ino);
        let Some(h) = r.files.get_mut(&d.ino) else {
            return;
        };
        if h.seen != d.seen {
            return;
        }
        if d.from == 0 {
            r.files.remove(&d.ino);
        } else {
            h.upto = h.upto.min(d.from);
            h.zeros_from = None;
        }
    }

    pub fn files(&self) -> usize {
        self.record.lock().unwrap().files.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeros_left_by_a_short_read_are_dropped_before_a_larger_size_is_told() {
        let k = KernelPages::default();
        // Whole replies leave no zeros.
        assert_eq!(k.replied(7, 0, 4096, 4096), None);
        assert_eq!(k.before_telling(7, 1 << 20), None);
        // A reply that ended at 5,000: sizes up to it are safe to tell.
        drop(k.reading(7));
        assert_eq!(k.replied(7, 4096, 8192, 904), None);
        assert_eq!(k.before_telling(7, 5000), None);
        let d = k.before_telling(7, 5001).expect("pages to drop");
        assert_eq!((d.ino, d.from), (7, 4096));
        // A read since: what it left stays recorded after the drop.
        k.replied(7, 0, 4096, 100);
        k.dropped(d);
        let d2 = k.before_telling(7, 5001).expect("still pages to drop");
        assert_eq!(d2.from, 0);
        k.dropped(d2);
        assert_eq!(k.before_telling(7, u64::MAX), None);
        assert_eq!(k.files(), 0, "all dropped: nothing left to know");
        // Another file's record is its own.
        k.replied(8, 0, 4096, 10);
        assert_eq!(k.before_telling(7, 11), None);
        assert!(k.before_telling(8, 11).is_some());
    }

    #[test]
    fn a_smaller_size_told_leaves_zeros_to_drop_before_a_larger_one() {
        let k = KernelPages::default();
        // The kernel holds 10,000 bytes, read whole; then another mount
        // cuts the file to 5,000 and it grows back to 9,000.
        k.replied(4, 0, 10_000, 10_000);
        assert_eq!(k.before_telling(4, 10_000), None);
        assert_eq!(
            k.before_telling(4, 5000),
            None,
            "smaller: nothing to drop yet"
        );
        let d = k.before_telling(4, 9000).expect("the zeros past 5,000");
        assert_eq!(d.from, 4096);
        k.dropped(d);
        assert_eq!(k.before_telling(4, 9000), None);
        // A write past a size told lately: that size may still be taken.
        k.cached_write(4, 20_000);
        assert_eq!(k.before_telling(4, 12_000).map(|d| d.from), Some(8192));
        k.dropped(k.before_telling(4, 12_000).unwrap());
        // Bytes held past a size told smaller count too.
        k.cached_write(4, 20_000);
        assert_eq!(k.before_telling(4, 10_000), None);
        assert_eq!(k.before_telling(4, 20_000).map(|d| d.from), Some(8192));
    }

    #[test]
    fn a_read_past_a_size_told_lately_leaves_zeros_there() {
        let k = KernelPages::default();
        // A stat took 5,500; the file grew to 6,000 before a read of its
        // last page was answered, and the kernel took 5,500 after that.
        assert_eq!(k.before_telling(5, 5500), None);
        assert_eq!(k.replied(5, 0, 4096, 4096), None);
        assert_eq!(k.before_telling(5, 5500), None);
        k.replied(5, 4096, 4096, 1904);
        assert_eq!(k.before_telling(5, 6000).map(|d| d.from), Some(4096));
    }

    #[test]
    fn the_record_is_bounded() {
        let k = KernelPages::default();
        let mut full = None;
        for ino in 0..=MAX_FILES as u64 {
            full = k.replied(ino, 0, 4096, 1);
        }
        let d = full.expect("full: one to forget");
        assert_ne!(d.ino, MAX_FILES as u64);
        assert_eq!(d.from, 0, "all its pages go");
        k.dropped(d);
        assert_eq!(k.files(), MAX_FILES);
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
        let d = teller.join().unwrap().expect("the read's page is seen");
        assert_eq!(d.from, 0);
    }
}
