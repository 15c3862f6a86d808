//! Who is calling, and what the caller's privileges change: whether a
//! write or truncate clears set-user-ID and set-group-ID, as Linux decides
//! on a local disk. The kernel checks permissions (`default_permissions`);
//! these decisions are the filesystem's, because the kernel leaves them to
//! it (direct I/O, atomic `O_TRUNC`) or applies a weaker rule (FUSE keeps
//! set-group-ID that Linux clears for callers outside the file's group).

use super::attr;

/// Who is calling.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    /// The calling thread (0 when unknown).
    pub pid: u32,
}

const CAP_FSETID: u32 = 4;

impl Caller {
    /// The permission bits a write or truncate by this caller leaves on a
    /// file of group `gid` and `mode`, if it changes them (see
    /// [`attr::setid_cleared`]). `/proc/<pid>/status` is read once, and
    /// only for files that have set-user-ID or set-group-ID.
    pub fn setid_cleared(&self, gid: u32, mode: u32) -> Option<u32> {
        if mode & (libc::S_ISUID | libc::S_ISGID) == 0 {
            return None;
        }
        let status = self.status();
        if self.holds_fsetid(status.as_deref()) {
            return None;
        }
        attr::setid_cleared(mode, || self.in_group(status.as_deref(), gid))
    }

    /// Setting an access ACL drops set-group-ID for a caller outside the
    /// file's group without `CAP_FSETID`, as chmod would.
    pub fn loses_sgid(&self, gid: u32) -> bool {
        let status = self.status();
        !self.in_group(status.as_deref(), gid) && !self.holds_fsetid(status.as_deref())
    }

    fn status(&self) -> Option<String> {
        (self.pid != 0)
            .then(|| std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok())
            .flatten()
    }

    /// `CAP_FSETID` in the effective set; without `/proc`, root is taken
    /// to hold it.
    fn holds_fsetid(&self, status: Option<&str>) -> bool {
        let eff = status.and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        });
        match eff {
            Some(caps) => caps & (1 << CAP_FSETID) != 0,
            None => self.uid == 0,
        }
    }

    /// `gid` is the caller's group or one of its supplementary groups.
    fn in_group(&self, status: Option<&str>, gid: u32) -> bool {
        gid == self.gid
            || status.is_some_and(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Groups:"))
                    .is_some_and(|g| g.split_whitespace().any(|x| x.parse() == Ok(gid)))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_as_the_caller() {
        // The test runs as root with every capability (CI and here).
        let me = Caller {
            uid: 0,
            gid: 0,
            pid: std::process::id(),
        };
        let caps_fsetid = me.holds_fsetid(me.status().as_deref());
        assert_eq!(me.setid_cleared(0, 0o6777).is_none(), caps_fsetid);
        // Without /proc (pid 0): root keeps, others lose.
        let unknown = |uid| Caller {
            uid,
            gid: uid,
            pid: 0,
        };
        assert_eq!(unknown(0).setid_cleared(0, 0o4755), None);
        assert_eq!(unknown(7).setid_cleared(0, 0o4755), Some(0o755));
        assert_eq!(
            unknown(7).setid_cleared(0, 0o2745),
            Some(0o745),
            "not in group 0"
        );
        assert_eq!(unknown(7).setid_cleared(7, 0o2745), None, "its own group");
        assert_eq!(unknown(7).setid_cleared(0, 0o755), None);
    }
}
