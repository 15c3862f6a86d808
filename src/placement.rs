//! Placement: which Storage Node owns a space.
//!
//! `key = hash32(space id)`; the node whose range `[boundary, boundary+size)`
//! of the 2^32 key space holds `key` owns every row of that space, so every
//! operation inside one space is a single-database transaction.
//!
//! The hash is FNV-1a (32 bit) over the space ID as 8 little-endian bytes.
//! It is part of the on-disk format: changing it would strand every space.

/// The size of the key space: 2^32.
pub const KEY_SPACE: u64 = 1 << 32;

/// FNV-1a, 32 bit, over the little-endian bytes of the space ID.
pub fn hash32(space_id: u32) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in u64::from(space_id).to_le_bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// A node's share of the key space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub boundary: u64,
    pub size: u64,
}

impl Range {
    pub fn contains(&self, key: u32) -> bool {
        let k = u64::from(key);
        k >= self.boundary && k < self.boundary + self.size
    }
}

/// Spreads the key space evenly over `n` nodes; the last takes the remainder.
pub fn even_ranges(n: usize) -> Vec<Range> {
    if n == 0 {
        return Vec::new();
    }
    let step = KEY_SPACE / n as u64;
    (0..n as u64)
        .map(|i| Range {
            boundary: i * step,
            size: if i + 1 == n as u64 {
                KEY_SPACE - i * step
            } else {
                step
            },
        })
        .collect()
}

/// The node owning `space_id`, given `(node id, range)` pairs.
pub fn owner(nodes: &[(u32, Range)], space_id: u32) -> Option<u32> {
    let key = hash32(space_id);
    nodes
        .iter()
        .find(|(_, r)| r.contains(key))
        .map(|(id, _)| *id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable() {
        // Test vectors: the hash is part of the on-disk format.
        // FNV-1a-32 of eight zero bytes, and of 01 00 00 00 00 00 00 00.
        assert_eq!(hash32(0), 0x9be1_7165);
        assert_eq!(hash32(1), 0x3e80_1244);
    }

    #[test]
    fn ranges_cover_key_space() {
        for n in 1..9 {
            let r = even_ranges(n);
            assert_eq!(r[0].boundary, 0);
            let total: u64 = r.iter().map(|r| r.size).sum();
            assert_eq!(total, KEY_SPACE);
            for w in r.windows(2) {
                assert_eq!(w[0].boundary + w[0].size, w[1].boundary);
            }
        }
        assert_eq!(
            even_ranges(2)[1],
            Range {
                boundary: 2147483648,
                size: 2147483648
            }
        );
    }

    #[test]
    fn every_space_has_one_owner() {
        let nodes: Vec<(u32, Range)> = even_ranges(3)
            .into_iter()
            .zip(1..)
            .map(|(r, i)| (i, r))
            .collect();
        let mut counts = [0; 4];
        for s in 1..3000 {
            counts[owner(&nodes, s).unwrap() as usize] += 1;
        }
        assert!(counts[1..].iter().all(|c| *c > 700), "{counts:?}");
    }
}
