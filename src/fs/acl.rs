//! POSIX ACLs in the kernel's xattr form (`system.posix_acl_access`,
//! `system.posix_acl_default`): a little-endian `u32` version 2, then one
//! `(u16 tag, u16 perm, u32 id)` entry per rule, sorted by tag and id.
//!
//! The kernel enforces them (FUSE's POSIX ACL mode); the filesystem keeps
//! them in step with the mode, as a local filesystem does:
//! - setting an access ACL sets the permission bits from it (owner, mask or
//!   group, other), and an ACL that says no more than the mode is not kept;
//! - the mode is the truth for those three entries: they are taken from it
//!   whenever the ACL is read (`Fs::getxattr`), so a chmod through any
//!   mount, deferred or not, changes them without rewriting the stored ACL,
//!   and the two can never disagree;
//! - a new inode in a directory with a default ACL gets that ACL, narrowed
//!   by the mode asked for, instead of the umask (directories also inherit
//!   the default ACL itself).

use super::error::{Error, FsResult};

pub const ACCESS: &[u8] = b"system.posix_acl_access";
pub const DEFAULT: &[u8] = b"system.posix_acl_default";

/// (name, value) xattrs a new inode is born with.
pub type BornXattrs = Vec<(Vec<u8>, Vec<u8>)>;

const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;
const UNDEFINED_ID: u32 = u32::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    tag: u16,
    perm: u16,
    id: u32,
}

/// A parsed, valid ACL (possibly empty: the xattr form of "no ACL").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acl(Vec<Entry>);

impl Acl {
    /// Parses and validates, as the kernel's `posix_acl_valid` does:
    /// exactly one owner, group and other entry, a mask wherever named
    /// users or groups appear, named ids ascending and unique, permissions
    /// within `rwx`. Anything else is `EINVAL`.
    pub fn parse(v: &[u8]) -> FsResult<Acl> {
        if v.len() < 4 || !(v.len() - 4).is_multiple_of(8) {
            return Err(Error::EINVAL);
        }
        if u32::from_le_bytes(v[..4].try_into().unwrap()) != VERSION {
            return Err(Error::EOPNOTSUPP);
        }
        let entries: Vec<Entry> = v[4..]
            .chunks_exact(8)
            .map(|c| Entry {
                tag: u16::from_le_bytes([c[0], c[1]]),
                perm: u16::from_le_bytes([c[2], c[3]]),
                id: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect();
        if entries.is_empty() {
            return Ok(Acl(entries));
        }
        // Tags must come in this order; named ids ascend within their tag.
        let order = [USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER];
        let mut at = 0;
        let mut last_id: Option<u32> = None;
        let (mut objs, mut named, mut mask) = (0, false, false);
        for e in &entries {
            if e.perm & !7 != 0 {
                return Err(Error::EINVAL);
            }
            let rank = order
                .iter()
                .position(|t| *t == e.tag)
                .ok_or(Error::EINVAL)?;
            if rank < at {
                return Err(Error::EINVAL);
            }
            if rank != at {
                last_id = None;
            }
            at = rank;
            match e.tag {
                USER | GROUP => {
                    if e.id == UNDEFINED_ID || last_id.is_some_and(|l| e.id <= l) {
                        return Err(Error::EINVAL);
                    }
                    last_id = Some(e.id);
                    named = true;
                }
                tag => {
                    // One each: a second would not move `at` on.
                    if last_id.is_some() {
                        return Err(Error::EINVAL);
                    }
                    last_id = Some(0);
                    if tag == MASK {
                        mask = true;
                    } else {
                        objs += 1;
                    }
                }
            }
        }
        if objs != 3 || (named && !mask) {
            return Err(Error::EINVAL);
        }
        Ok(Acl(entries))
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = VERSION.to_le_bytes().to_vec();
        for e in &self.0 {
            v.extend_from_slice(&e.tag.to_le_bytes());
            v.extend_from_slice(&e.perm.to_le_bytes());
            v.extend_from_slice(&e.id.to_le_bytes());
        }
        v
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn perm(&self, tag: u16) -> u32 {
        self.0
            .iter()
            .find(|e| e.tag == tag)
            .map_or(0, |e| u32::from(e.perm))
    }

    /// The permission bits (`0o777`) the ACL implies: owner, mask if any
    /// (else group), other.
    pub fn mode_bits(&self) -> u32 {
        let group = if self.0.iter().any(|e| e.tag == MASK) {
            self.perm(MASK)
        } else {
            self.perm(GROUP_OBJ)
        };
        self.perm(USER_OBJ) << 6 | group << 3 | self.perm(OTHER)
    }

    /// Says no more than the permission bits (owner, group, other only).
    pub fn is_mode_only(&self) -> bool {
        self.0.len() == 3
    }

    /// The owner, mask (or group) and other entries take the bits of `mode`.
    pub fn chmod(&mut self, mode: u32) {
        let has_mask = self.0.iter().any(|e| e.tag == MASK);
        for e in &mut self.0 {
            let shift = match e.tag {
                USER_OBJ => 6,
                MASK => 3,
                GROUP_OBJ if !has_mask => 3,
                OTHER => 0,
                _ => continue,
            };
            e.perm = ((mode >> shift) & 7) as u16;
        }
    }

    /// The ACL of a new inode created with `mode` under this default ACL,
    /// and the mode it gets (the kernel's `posix_acl_create_masq`).
    fn create_masq(&self, mode: u32) -> (Acl, u32) {
        let mut acl = self.clone();
        let mut mode = mode;
        let has_mask = acl.0.iter().any(|e| e.tag == MASK);
        for e in &mut acl.0 {
            let shift = match e.tag {
                USER_OBJ => 6,
                OTHER => 0,
                MASK => 3,
                GROUP_OBJ if !has_mask => 3,
                _ => continue,
            };
            let p = u32::from(e.perm) & ((mode >> shift) & 7);
            e.perm = p as u16;
            mode = (mode & !(7 << shift)) | (p << shift);
        }
        (acl, mode)
    }
}

/// The mode and ACL xattrs of a new inode asked for with `mode` (type bits
/// included) and `umask`, in a directory whose default ACL is `default`:
/// without one the umask applies; with one, the default ACL does instead.
pub fn inherit(default: Option<&[u8]>, mode: u32, umask: u32) -> (u32, BornXattrs) {
    let kind = mode & libc::S_IFMT;
    let parsed = default
        .filter(|_| kind != libc::S_IFLNK)
        .and_then(|d| Acl::parse(d).ok())
        .filter(|a| !a.is_empty());
    let Some(d) = parsed else {
        if kind == libc::S_IFLNK {
            return (mode, Vec::new());
        }
        return (kind | (mode & 0o7777 & !umask), Vec::new());
    };
    let (access, perm) = d.create_masq(mode & 0o777);
    let mut xattrs = Vec::new();
    if !access.is_mode_only() {
        xattrs.push((ACCESS.to_vec(), access.to_bytes()));
    }
    if kind == libc::S_IFDIR {
        xattrs.push((DEFAULT.to_vec(), d.to_bytes()));
    }
    (kind | (mode & 0o7000) | perm, xattrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        Acl(entries
            .iter()
            .map(|&(tag, perm, id)| Entry { tag, perm, id })
            .collect())
        .to_bytes()
    }

    const U: u32 = UNDEFINED_ID;

    #[test]
    fn parse_validates_like_the_kernel() {
        let good = acl(&[
            (USER_OBJ, 6, U),
            (USER, 4, 65534),
            (GROUP_OBJ, 4, U),
            (MASK, 4, U),
            (OTHER, 0, U),
        ]);
        let a = Acl::parse(&good).unwrap();
        assert_eq!(a.to_bytes(), good);
        assert_eq!(a.mode_bits(), 0o640);
        assert!(!a.is_mode_only());
        for bad in [
            // a named user without a mask
            acl(&[
                (USER_OBJ, 6, U),
                (USER, 4, 7),
                (GROUP_OBJ, 4, U),
                (OTHER, 0, U),
            ]),
            // no other entry
            acl(&[(USER_OBJ, 6, U), (GROUP_OBJ, 4, U)]),
            // out of order
            acl(&[(GROUP_OBJ, 4, U), (USER_OBJ, 6, U), (OTHER, 0, U)]),
            // two owners
            acl(&[
                (USER_OBJ, 6, U),
                (USER_OBJ, 6, U),
                (GROUP_OBJ, 4, U),
                (OTHER, 0, U),
            ]),
            // named ids not ascending
            acl(&[
                (USER_OBJ, 6, U),
                (USER, 4, 9),
                (USER, 4, 7),
                (GROUP_OBJ, 4, U),
                (MASK, 4, U),
                (OTHER, 0, U),
            ]),
            // permission beyond rwx
            acl(&[(USER_OBJ, 8, U), (GROUP_OBJ, 4, U), (OTHER, 0, U)]),
            // unknown tag
            acl(&[
                (USER_OBJ, 6, U),
                (0x40, 4, U),
                (GROUP_OBJ, 4, U),
                (OTHER, 0, U),
            ]),
            vec![2, 0, 0, 0, 1],
            vec![],
        ] {
            assert_eq!(Acl::parse(&bad), Err(Error::EINVAL), "{bad:?}");
        }
        assert!(Acl::parse(&2u32.to_le_bytes()).unwrap().is_empty());
    }

    #[test]
    fn chmod_sets_owner_mask_and_other() {
        let mut a = Acl::parse(&acl(&[
            (USER_OBJ, 6, U),
            (USER, 7, 65534),
            (GROUP_OBJ, 5, U),
            (MASK, 7, U),
            (OTHER, 4, U),
        ]))
        .unwrap();
        a.chmod(0o750);
        assert_eq!(a.mode_bits(), 0o750);
        assert_eq!(
            a.perm(GROUP_OBJ),
            5,
            "the group entry is masked, not changed"
        );
        let mut plain =
            Acl::parse(&acl(&[(USER_OBJ, 6, U), (GROUP_OBJ, 4, U), (OTHER, 4, U)])).unwrap();
        plain.chmod(0o701);
        assert_eq!(plain.mode_bits(), 0o701);
    }

    #[test]
    fn inherit_replaces_the_umask() {
        let d = acl(&[
            (USER_OBJ, 7, U),
            (USER, 5, 65534),
            (GROUP_OBJ, 5, U),
            (MASK, 7, U),
            (OTHER, 0, U),
        ]);
        // A file asked for 0666 gets rw for owner, the mask narrowed to rw.
        let (mode, x) = inherit(Some(&d), libc::S_IFREG | 0o666, 0o022);
        assert_eq!(mode, libc::S_IFREG | 0o660);
        assert_eq!(x.len(), 1);
        assert_eq!(x[0].0, ACCESS);
        assert_eq!(Acl::parse(&x[0].1).unwrap().mode_bits(), 0o660);
        // A directory also inherits the default ACL itself.
        let (mode, x) = inherit(Some(&d), libc::S_IFDIR | 0o777, 0o022);
        assert_eq!(mode, libc::S_IFDIR | 0o770);
        assert_eq!(
            x.iter().map(|(n, _)| n.as_slice()).collect::<Vec<_>>(),
            [ACCESS, DEFAULT]
        );
        // No default ACL: the umask.
        assert_eq!(
            inherit(None, libc::S_IFREG | 0o666, 0o022),
            (libc::S_IFREG | 0o644, vec![])
        );
        // Symlinks take neither.
        assert_eq!(
            inherit(Some(&d), libc::S_IFLNK | 0o777, 0o022),
            (libc::S_IFLNK | 0o777, vec![])
        );
    }
}
