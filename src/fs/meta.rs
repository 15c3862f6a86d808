//! Namespace requests inside one space as the filesystem takes them: names
//! and arguments checked here, then one operation of the Storage Node that
//! owns the space ([`crate::shard::namespace`], [`crate::shard::xattrs`]).
//! Inode numbers here are per-space (`1` is the space's root).

use super::error::{Error, FsResult};
use crate::cluster::Route;
use crate::shard::{attrs, namespace, xattrs};

pub use crate::shard::attrs::{AttrChange, SetAttr, SetIdRule};
pub use crate::shard::namespace::{
    DirPage, Head, Known, NewInode, OpenHere, RENAME_EXCHANGE, RENAME_NOREPLACE, UNLINK_TRIP_HELD,
    new_attr,
};
pub use crate::shard::xattrs::{XATTR_CREATE, XATTR_REPLACE};

use super::attr::Attr;

pub use crate::shard::NAME_MAX;
/// Longest symlink target, in bytes.
pub const PATH_MAX: usize = 4096;
/// Largest xattr value, in bytes.
const XATTR_SIZE_MAX: usize = 65536;

pub fn check_name(name: &[u8]) -> FsResult<()> {
    if name.len() > NAME_MAX {
        return Err(Error::ENAMETOOLONG);
    }
    if name.is_empty() || name.contains(&0) || name.contains(&b'/') || name == b"." || name == b".."
    {
        return Err(Error::EINVAL);
    }
    Ok(())
}

/// A name that is looked up or removed need only fit.
fn check_len(name: &[u8]) -> FsResult<()> {
    if name.len() > NAME_MAX {
        return Err(Error::ENAMETOOLONG);
    }
    Ok(())
}

pub fn apply_changes(shard: &Route, space: u32, changes: &[(u64, AttrChange)]) -> FsResult<()> {
    Ok(attrs::apply_changes(shard, space, changes)?)
}

pub fn clear_setid(
    shard: &Route,
    space: u32,
    ino: u64,
    rule: SetIdRule<'_>,
) -> FsResult<Option<Attr>> {
    Ok(attrs::clear_setid(shard, space, ino, rule)?)
}

pub fn set_acl(
    shard: &Route,
    space: u32,
    ino: u64,
    name: &[u8],
    value: Option<&[u8]>,
    mode_bits: Option<u32>,
    kill_sgid: bool,
) -> FsResult<()> {
    Ok(xattrs::set_acl(
        shard, space, ino, name, value, mode_bits, kill_sgid,
    )?)
}

pub fn getattr(shard: &Route, space: u32, ino: u64) -> FsResult<Attr> {
    Ok(namespace::getattr(shard, space, ino)?)
}

pub fn getattr_with_head(
    shard: &Route,
    space: u32,
    ino: u64,
    head: Head,
) -> FsResult<(Attr, u64, Option<Vec<u8>>)> {
    Ok(namespace::getattr_with_head(shard, space, ino, head)?)
}

pub fn lookup(shard: &Route, space: u32, parent: u64, name: &[u8]) -> FsResult<(Attr, bool)> {
    check_len(name)?;
    Ok(namespace::lookup(shard, space, parent, name)?)
}

pub fn create(
    shard: &Route,
    space: u32,
    parent: u64,
    name: &[u8],
    new: &NewInode<'_>,
) -> FsResult<(Attr, Option<Attr>)> {
    check_name(name)?;
    Ok(namespace::create(shard, space, parent, name, new)?)
}

pub fn check_create(shard: &Route, space: u32, parent: u64, name: &[u8]) -> FsResult<Attr> {
    check_name(name)?;
    Ok(namespace::check_create(shard, space, parent, name)?)
}

pub fn reserve_ids(shard: &Route, space: u32, n: u64) -> FsResult<u64> {
    Ok(namespace::reserve_ids(shard, space, n)?)
}

pub fn unlink(
    shard: &Route,
    space: u32,
    parent: u64,
    name: &[u8],
    rmdir: bool,
    open_here: (OpenHere<'_>, Option<Vec<u64>>),
) -> FsResult<i64> {
    check_len(name)?;
    Ok(namespace::unlink(
        shard, space, parent, name, rmdir, open_here,
    )?)
}

#[allow(clippy::too_many_arguments)]
pub fn rename(
    shard: &Route,
    space: u32,
    parent: u64,
    name: &[u8],
    newparent: u64,
    newname: &[u8],
    flags: u32,
    changes: &[(u64, AttrChange)],
    open_here: OpenHere<'_>,
) -> FsResult<Option<i64>> {
    check_name(newname)?;
    check_len(name)?;
    if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0
        || flags == RENAME_NOREPLACE | RENAME_EXCHANGE
    {
        return Err(Error::EINVAL);
    }
    Ok(namespace::rename(
        shard, space, parent, name, newparent, newname, flags, changes, open_here,
    )?)
}

pub fn link(shard: &Route, space: u32, ino: u64, newparent: u64, newname: &[u8]) -> FsResult<Attr> {
    check_name(newname)?;
    Ok(namespace::link(shard, space, ino, newparent, newname)?)
}

pub fn readlink(shard: &Route, space: u32, ino: u64) -> FsResult<Vec<u8>> {
    Ok(namespace::readlink(shard, space, ino)?)
}

pub fn setattr(
    shard: &Route,
    space: u32,
    ino: u64,
    s: &SetAttr,
    clear_setid: SetIdRule<'_>,
) -> FsResult<Attr> {
    Ok(attrs::setattr(
        shard,
        shard.cluster(),
        space,
        ino,
        s,
        clear_setid,
    )?)
}

pub fn fallocate(
    shard: &Route,
    space: u32,
    ino: u64,
    range: (u64, u64),
    zero: bool,
    extend: bool,
) -> FsResult<Attr> {
    Ok(attrs::fallocate(
        shard,
        shard.cluster(),
        space,
        ino,
        range,
        zero,
        extend,
    )?)
}

pub fn names(shard: &Route, space: u32, dir: u64, most: usize) -> FsResult<Option<Vec<Vec<u8>>>> {
    Ok(namespace::names(shard, space, dir, most)?)
}

pub fn readdir(
    shard: &Route,
    space: u32,
    dir: u64,
    after: u64,
    limit: usize,
    parent: bool,
) -> FsResult<DirPage> {
    Ok(namespace::readdir(shard, space, dir, after, limit, parent)?)
}

pub fn is_empty_dir(shard: &Route, space: u32, dir: u64) -> FsResult<bool> {
    Ok(namespace::is_empty_dir(shard, space, dir)?)
}

pub fn release_orphan(shard: &Route, space: u32, ino: u64) -> FsResult<()> {
    Ok(namespace::release_orphan(shard, space, ino)?)
}

pub fn setxattr(
    shard: &Route,
    space: u32,
    ino: u64,
    name: &[u8],
    value: &[u8],
    flags: i32,
) -> FsResult<()> {
    if name.is_empty() {
        return Err(Error::EINVAL);
    }
    if name.len() > NAME_MAX {
        return Err(Error::ERANGE);
    }
    if value.len() > XATTR_SIZE_MAX {
        return Err(Error::E2BIG);
    }
    Ok(xattrs::set(shard, space, ino, name, value, flags)?)
}

pub fn xattrs(shard: &Route, space: u32, ino: u64) -> FsResult<Vec<(Vec<u8>, Vec<u8>)>> {
    Ok(xattrs::all(shard, space, ino)?)
}

pub fn removexattr(shard: &Route, space: u32, ino: u64, name: &[u8]) -> FsResult<()> {
    Ok(xattrs::remove(shard, space, ino, name)?)
}

/// Counts for statfs: (inodes in use, bytes stored) over the whole node.
pub fn usage(shard: &crate::shard::Shard) -> FsResult<(u64, u64)> {
    Ok(namespace::usage(shard)?)
}
