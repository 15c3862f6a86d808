//! Extended attributes: stored ones (cached for the attribute TTL, see
//! [`super::xattr_cache`]), POSIX ACLs kept in step with the mode (see
//! [`super::acl`]), and the mount's own, answered and never stored (see
//! [`super::own_xattrs`]). SELinux labels are not carried (see
//! [`SELINUX`]).

use std::sync::Arc;

use super::{Attr, Caller, Error, Fs, FsResult, Node, acl, meta, own_xattrs, xattr_cache};
use crate::cluster::SpaceStatus;

/// The (space, inode) of an inode inside a space; `None` for the root
/// and the volumes, which have no xattrs of their own.
fn space_node(ino: u64) -> Option<(u32, u64)> {
    match Node::from_ino(ino) {
        Node::Space(s, i) => Some((s, i)),
        _ => None,
    }
}

/// SELinux labels are not carried: `security.selinux` is refused with
/// `EOPNOTSUPP` (read, written, removed) and never listed. A host that
/// enforces SELinux labels a FUSE mount by its policy (`genfscon`), never
/// asking the filesystem, so only hosts without SELinux ever ask; and for
/// those `ls -l` asks every entry's label, unless the file system says it
/// has none: it then stops asking for the whole mount. A cold `ls -lR`
/// makes half as many requests.
const SELINUX: &[u8] = b"security.selinux";

impl Fs {
    pub fn setxattr(
        &self,
        ino: u64,
        name: &[u8],
        value: &[u8],
        flags: i32,
        caller: Caller,
    ) -> FsResult<()> {
        if name == SELINUX {
            return Err(Error::EOPNOTSUPP);
        }
        self.refuse_in_snapshot(ino)?;
        let _changing = self.changing();
        let (s, i) = space_node(ino).ok_or(Error::EPERM)?;
        if own_xattrs::is_own(name) {
            return Err(Error::EPERM);
        }
        self.commit_pending(s);
        let r = if name == acl::ACCESS || name == acl::DEFAULT {
            self.set_acl(ino, name, value, caller)
        } else {
            meta::setxattr(&self.shard_rw_after_import(s)?, s, i, name, value, flags)
        };
        self.xattrs.forget(ino);
        r
    }

    /// Sets an ACL, validated, with the mode kept in step (see [`acl`]):
    /// an access ACL sets the permission bits and is kept only if it says
    /// more than they do; an empty one removes the ACL.
    fn set_acl(&self, ino: u64, name: &[u8], value: &[u8], caller: Caller) -> FsResult<()> {
        let (s, i) = space_node(ino).ok_or(Error::EPERM)?;
        let parsed = acl::Acl::parse(value)?;
        let a = self.getattr(ino)?;
        let shard = self.shard_rw_after_import(s)?;
        let stored = parsed.to_bytes();
        let r = if name == acl::DEFAULT {
            if !a.is_dir() {
                return Err(Error::EACCES);
            }
            let keep = !parsed.is_empty();
            meta::set_acl(&shard, s, i, name, keep.then_some(&stored[..]), None, false)
        } else {
            let keep = !parsed.is_empty() && !parsed.is_mode_only();
            let bits = (!parsed.is_empty()).then(|| parsed.mode_bits());
            // As chmod would: a caller outside the file's group loses its
            // set-group-ID bit.
            let kill_sgid =
                bits.is_some() && a.mode & libc::S_ISGID != 0 && caller.loses_sgid(a.gid);
            let r = meta::set_acl(
                &shard,
                s,
                i,
                name,
                keep.then_some(&stored[..]),
                bits,
                kill_sgid,
            );
            if r.is_ok()
                && let Some(bits) = bits
            {
                let mut mode = (a.mode & !0o777) | bits;
                if kill_sgid {
                    mode &= !libc::S_ISGID;
                }
                self.note_owner_mode(s, i, &Attr { mode, ..a });
            }
            r
        };
        match r {
            // Removing an ACL that is not there.
            Err(e) if e == Error::ENODATA && parsed.is_empty() => Ok(()),
            r => r,
        }
    }

    /// The inode's xattrs, from the cache or one query; `None` where there
    /// are none to have (the root, the volumes).
    pub(super) fn xattrs_of(&self, ino: u64) -> FsResult<Option<xattr_cache::Xattrs>> {
        if let Some(x) = self.xattrs.get(ino) {
            return Ok(Some(x));
        }
        if let Node::Snapshot(n) = Node::from_ino(ino) {
            return Ok(Some(Arc::new(self.snapshot_xattrs(n)?)));
        }
        let Some((s, i)) = space_node(ino) else {
            return Ok(None);
        };
        if i == 1
            && let Some(dir) = self.space(s)?.0.import_from
        {
            // Not imported yet (see `getattr`): `ls -l` asks for ACLs.
            return crate::disk_tier::xattrs(&dir)
                .map(|x| Some(Arc::new(x)))
                .map_err(|e| super::error::failed(format!("space {s}: {e:#}")));
        }
        let x = Arc::new(meta::xattrs(&self.shard_after_import(s)?, s, i)?);
        self.xattrs.put(ino, x.clone());
        Ok(Some(x))
    }

    /// An xattr; the mount's own ([`own_xattrs`]) as seen by thread `tid`.
    pub fn getxattr(&self, ino: u64, name: &[u8], tid: u32, caller: Caller) -> FsResult<Vec<u8>> {
        if name == SELINUX {
            return Err(Error::EOPNOTSUPP);
        }
        if own_xattrs::is_own(name) {
            return self.own_xattr(ino, name, tid, caller);
        }
        let x = self.xattrs_of(ino)?.ok_or(Error::ENODATA)?;
        let v = x
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .ok_or(Error::ENODATA)?;
        // The mode is the truth for an access ACL's owner, mask (or group)
        // and other entries: a chmod (from any mount, deferred or not)
        // needs no rewrite of the stored ACL, and the two never disagree.
        if name == acl::ACCESS
            && let Ok(mut a) = acl::Acl::parse(&v)
        {
            a.chmod(self.getattr(ino)?.mode);
            return Ok(a.to_bytes());
        }
        Ok(v)
    }

    pub fn listxattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        let Some(x) = self.xattrs_of(ino)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for (n, _) in x
            .iter()
            .filter(|(n, _)| !own_xattrs::is_own(n) && n != SELINUX)
        {
            out.extend_from_slice(n);
            out.push(0);
        }
        Ok(out)
    }

    /// The mount's own xattrs ([`own_xattrs`]), answered without the xattr table.
    fn own_xattr(&self, ino: u64, name: &[u8], tid: u32, caller: Caller) -> FsResult<Vec<u8>> {
        if name == crate::protocol::DEACTIVATED_SPACES.to_bytes() {
            let Node::Volume(v) = Node::from_ino(ino) else {
                return Err(Error::ENODATA);
            };
            // Only the spaces refused to this caller, from the same view
            // that refuses them (check_caller).
            if self.sees_deactivated(caller.uid, caller.gid) {
                return Err(Error::ENODATA);
            }
            let view = self.view()?;
            let mut ids: Vec<u32> = view
                .spaces
                .values()
                .filter(|s| s.volume_id == v && s.status == SpaceStatus::Deactivated)
                .map(|s| s.id)
                .collect();
            if ids.is_empty() {
                return Err(Error::ENODATA);
            }
            ids.sort_unstable();
            return Ok(crate::protocol::encode_space_ids(&ids));
        }
        let Node::Space(s, i) = Node::from_ino(ino) else {
            return Err(Error::ENODATA);
        };
        let node = self.open.lock().unwrap().get(&(s, i)).cloned();
        if name == crate::protocol::APPEND_OFFSET.to_bytes() {
            let off = node.and_then(|n| n.last_append(tid));
            return off
                .map(crate::protocol::encode_offset)
                .ok_or(Error::ENODATA);
        }
        // Buffered writes here bring the file back into the database at
        // their flush: the object would be stale.
        if node.is_some_and(|n| n.local_size().is_some()) {
            return Err(Error::ENODATA);
        }
        own_xattrs::s3_url(&self.shard_after_import(s)?, s, i)
    }

    pub fn removexattr(&self, ino: u64, name: &[u8]) -> FsResult<()> {
        if name == SELINUX {
            return Err(Error::EOPNOTSUPP);
        }
        self.refuse_in_snapshot(ino)?;
        let _changing = self.changing();
        let (s, i) = space_node(ino).ok_or(Error::EPERM)?;
        if own_xattrs::is_own(name) {
            return Err(Error::EPERM);
        }
        self.commit_pending(s);
        let r = meta::removexattr(&self.shard_rw_after_import(s)?, s, i, name);
        self.xattrs.forget(ino);
        r
    }
}
