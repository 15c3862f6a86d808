//! `tshs mount`: the FUSE daemon. Parses `-o` options, cleans up a mountpoint
//! left behind by a crashed mount, daemonises (unless `-f`) and reports
//! success only once the tree is mounted, registers as an access point,
//! runs the reaper, and unmounts cleanly on SIGINT/SIGTERM.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use fuser::{Config, MountOption, SessionACL};

use crate::fs::{Fs, FsConfig};
use crate::fuse::FuseFs;

#[derive(clap::Args, Debug, Clone)]
pub struct MountArgs {
    /// Where to mount (e.g. /spacedata).
    pub mountpoint: PathBuf,
    /// Stay in the foreground (log to stderr).
    #[arg(short = 'f', long)]
    pub foreground: bool,
    /// Comma-separated options: allow_other, ro, noacl, ttl=SECS, cache_size=BYTES[K|M|G],
    /// threads=N, connections=N, log_file=PATH, mysql_cfg=PATH, admin_gid=GID, metrics=[ADDR:]PORT, and the
    /// generic mount options (rw, defaults, nofail, _netdev, …), which are ignored.
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,
}

/// Parsed `-o` options.
#[derive(Debug, Clone, PartialEq)]
pub struct MountOptions {
    pub allow_other: bool,
    pub read_only: bool,
    pub ttl: Duration,
    pub cache_bytes: usize,
    pub threads: usize,
    pub connections: usize,
    pub log_file: Option<PathBuf>,
    pub mysql_cfg: Option<PathBuf>,
    /// Group (besides root) allowed into deactivated spaces.
    pub admin_gid: Option<u32>,
    /// Where to serve Prometheus metrics (off unless given).
    pub metrics: Option<std::net::SocketAddr>,
    /// POSIX ACLs enforced by the kernel (`noacl` turns it off: ACLs are
    /// then stored and kept in step with the mode, but only the mode is
    /// checked).
    pub acl: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            allow_other: false,
            read_only: false,
            ttl: Duration::from_secs(1),
            cache_bytes: 256 << 20,
            threads: 16,
            connections: 16,
            log_file: None,
            mysql_cfg: None,
            admin_gid: None,
            metrics: None,
            acl: true,
        }
    }
}

/// Parses a size with an optional K/M/G suffix.
pub fn parse_size(s: &str) -> Result<u64> {
    let (num, mul) = match s.as_bytes().last() {
        Some(b'K' | b'k') => (&s[..s.len() - 1], 1 << 10),
        Some(b'M' | b'm') => (&s[..s.len() - 1], 1 << 20),
        Some(b'G' | b'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| anyhow!("'{s}' is not a size (e.g. 512M)"))?;
    n.checked_mul(mul)
        .ok_or_else(|| anyhow!("size '{s}' is too large"))
}

/// Options generic to mount(8) and fstab that mean nothing to tshs.
const IGNORED: &[&str] = &[
    "rw",
    "defaults",
    "auto",
    "noauto",
    "nofail",
    "_netdev",
    "user",
    "nouser",
    "users",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "atime",
    "noatime",
    "relatime",
    "default_permissions",
];

pub fn parse_options(list: &[String]) -> Result<MountOptions> {
    let mut o = MountOptions::default();
    for item in list
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let (name, value) = match item.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (item, None),
        };
        let need =
            || value.ok_or_else(|| anyhow!("mount option '{name}' needs a value ({name}=…)"));
        let count = |v: &str, max: usize| -> Result<usize> {
            v.parse::<usize>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| {
                    anyhow!("mount option '{name}': '{v}' is not a number from 1 to {max}")
                })
        };
        match name {
            "allow_other" => o.allow_other = true,
            "acl" => o.acl = true,
            "noacl" => o.acl = false,
            "ro" => o.read_only = true,
            "ttl" | "entry_ttl" | "attr_ttl" => {
                let v = need()?;
                let secs: f64 = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && (0.0..=3600.0).contains(s))
                    .ok_or_else(|| {
                        anyhow!(
                            "mount option '{name}': '{v}' is not a number of seconds (0 to 3600)"
                        )
                    })?;
                o.ttl = Duration::from_secs_f64(secs);
            }
            "cache_size" => {
                let n = parse_size(need()?)?;
                if n < 1 << 20 {
                    bail!("mount option 'cache_size': at least 1M");
                }
                o.cache_bytes = n as usize;
            }
            "threads" => o.threads = count(need()?, 256)?,
            "connections" => o.connections = count(need()?, 1000)?,
            "log_file" => o.log_file = Some(PathBuf::from(need()?)),
            "mysql_cfg" => o.mysql_cfg = Some(PathBuf::from(need()?)),
            "metrics" => o.metrics = Some(crate::metrics::parse_addr(need()?)?),
            "admin_gid" => {
                let v = need()?;
                o.admin_gid = Some(v.parse().map_err(|_| {
                    anyhow!("mount option 'admin_gid': '{v}' is not a numeric group id")
                })?);
            }
            n if IGNORED.contains(&n) => {}
            _ => bail!("unknown mount option '{item}'"),
        }
    }
    Ok(o)
}

/// A mountpoint whose FUSE daemon died answers ENOTCONN: detach it.
fn clean_stale_mount(mountpoint: &Path) -> Result<()> {
    match std::fs::metadata(mountpoint) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            log::warn!(
                "{}: left behind by a crashed mount; unmounting it",
                mountpoint.display()
            );
            let status = std::process::Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(mountpoint)
                .status()
                .context("running fusermount3 (install the fuse3 package)")?;
            if !status.success() {
                bail!(
                    "cannot clean up the stale mount at {}",
                    mountpoint.display()
                );
            }
            Ok(())
        }
        Err(e) => Err(anyhow!("mountpoint {}: {e}", mountpoint.display())),
        Ok(m) if !m.is_dir() => bail!("mountpoint {} is not a directory", mountpoint.display()),
        Ok(_) => Ok(()),
    }
}

/// What is mounted at a path (the topmost mount there).
pub struct MountEntry {
    pub fstype: String,
    pub source: String,
}

impl MountEntry {
    /// A tshs mount: type `fuse.tshs`, or `fuse` from source `tshs` (a
    /// fusermount that dropped the subtype, or a mount before tshs named it).
    pub fn is_tshs(&self) -> bool {
        self.source == "tshs" && matches!(self.fstype.as_str(), "fuse.tshs" | "fuse")
    }
}

/// The mount at `path` (absolute), from `/proc/self/mountinfo`.
pub fn mounted_at(path: &Path) -> Option<MountEntry> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    // mountinfo: id parent dev root MOUNTPOINT opts… - FSTYPE source superopts
    info.lines().rev().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mp = unescape(left.split(' ').nth(4)?);
        let mut f = right.split(' ');
        let (fstype, source) = (f.next().unwrap_or(""), f.next().unwrap_or(""));
        (Path::new(&mp) == path).then(|| MountEntry {
            fstype: fstype.into(),
            source: source.into(),
        })
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A second tshs mount on top of a live one would hide it (and mount it
/// again with other options): refused.
fn refuse_double_mount(mountpoint: &Path) -> Result<()> {
    let Ok(path) = mountpoint.canonicalize() else {
        return Ok(());
    };
    if mounted_at(&path).is_some_and(|m| m.is_tshs()) {
        bail!(
            "{} is already a tshs mount (unmount it first: umount {})",
            path.display(),
            path.display()
        );
    }
    Ok(())
}

/// Mounts as `tshs mount` asks; `mysql_cfg_file` is its `--mysql-cfg-file`
/// (the mount option `mysql_cfg` overrides it).
pub fn run(mysql_cfg_file: Option<&Path>, args: &MountArgs) -> Result<()> {
    let opts = parse_options(&args.options)?;
    clean_stale_mount(&args.mountpoint)?;
    refuse_double_mount(&args.mountpoint)?;
    let admin = crate::config::read_mysql_cfg(
        opts.mysql_cfg
            .as_deref()
            .or(mysql_cfg_file)
            .unwrap_or(Path::new(crate::config::DEFAULT_MYSQL_CFG)),
    )?;
    // Fail in the foreground when the cluster is unusable.
    {
        let c = crate::cluster::Cluster::connect(&admin, 1)?;
        c.require_admin_node()?;
    }
    if args.foreground {
        return serve(&admin, &args.mountpoint, &opts, None);
    }
    // Daemonise; the parent returns once the child reports the mount is up.
    let (r, w) = nix::unistd::pipe()?;
    match unsafe { nix::unistd::fork()? } {
        nix::unistd::ForkResult::Parent { .. } => {
            drop(w);
            let mut msg = String::new();
            std::fs::File::from(r).read_to_string(&mut msg)?;
            match msg.strip_prefix("ok") {
                Some(_) => Ok(()),
                None if msg.is_empty() => bail!("the mount daemon exited during startup"),
                None => bail!("{msg}"),
            }
        }
        nix::unistd::ForkResult::Child => {
            drop(r);
            let _ = nix::unistd::setsid();
            let log = opts
                .log_file
                .clone()
                .unwrap_or_else(|| PathBuf::from("/var/log/tshs-mount.log"));
            let _ = crate::logging::to_file(&log);
            let devnull = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")?;
            let fd = devnull.into_raw_fd();
            for target in 0..3 {
                unsafe { libc::dup2(fd, target) };
            }
            let report = unsafe { std::fs::File::from_raw_fd(w.into_raw_fd()) };
            let status = Arc::new(std::sync::Mutex::new(Some(report)));
            let r = serve(&admin, &args.mountpoint, &opts, Some(status.clone()));
            if let Err(e) = &r {
                if let Some(mut f) = status.lock().unwrap().take() {
                    let _ = write!(f, "{e:#}");
                }
                log::error!("mount: {e:#}");
            }
            std::process::exit(i32::from(r.is_err()));
        }
    }
}

/// Mounts and serves until unmounted or signalled.
/// `ready` receives "ok" once mounted and is then closed, so the waiting
/// parent sees end-of-file.
fn serve(
    admin: &crate::config::ConnOptions,
    mountpoint: &Path,
    opts: &MountOptions,
    ready: Option<Arc<std::sync::Mutex<Option<std::fs::File>>>>,
) -> Result<()> {
    // SIGINT/SIGTERM are handled by a dedicated thread; block them everywhere else.
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(nix::sys::signal::Signal::SIGINT);
    set.add(nix::sys::signal::Signal::SIGTERM);
    set.thread_block()?;

    // glibc gives each of our ~30 threads its own malloc arena, each keeping
    // freed extent buffers: two arenas keep the daemon's memory near the
    // cache size. (Making every extent an mmap of its own kept RSS lower
    // still but halved cold-read speed: page faults on every buffer.)
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    // Blocks of 2 MiB or more (each FUSE thread's 16 MiB request buffer,
    // each database connection's 4 MiB packet buffers) get mappings of their
    // own: only the pages used count, and all go back when freed. Without
    // this glibc raises the threshold as it sees such blocks freed, and
    // later ones land in the heap, zeroed (all resident) and kept.
    // Extents (256 KiB) and read replies (1 MiB) stay in the heap.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 2 << 20) };
    let cluster = crate::cluster::Cluster::connect(admin, opts.connections)?;
    let fs = Fs::new(
        cluster.clone(),
        FsConfig {
            cache_bytes: opts.cache_bytes,
            xattr_ttl: opts.ttl,
            admin_gid: opts.admin_gid,
            ..FsConfig::default()
        },
    );
    let fs = Arc::new(fs);
    let ap = {
        let fs = fs.clone();
        cluster.register("tshs mount", move |_epoch| fs.topology_changed())?
    };
    fs.set_access_point(&ap);
    if let Some(addr) = opts.metrics {
        crate::metrics::serve(addr)?;
    }
    let reaper = crate::fs::reaper::spawn(fs.clone());

    let fuse_fs = FuseFs {
        fs: fs.clone(),
        ttl: opts.ttl,
        direct_mmap: false,
        acl: opts.acl,
        notifier: Arc::default(),
    };
    let notifier = fuse_fs.notifier.clone();
    let acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    let mut config = Config::default();
    config.acl = acl;
    config.n_threads = Some(opts.threads);
    let own_mount = mount_fuse_tshs(mountpoint, opts)
        .with_context(|| format!("cannot mount {}", mountpoint.display()))?;
    let ours = own_mount.is_some();
    let mut session = match own_mount {
        Some(fd) => fuser::Session::from_fd(fuse_fs, fd, acl, config).inspect_err(|_| {
            // A mount whose daemon never came up would answer ENOTCONN.
            let _ = nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH);
        }),
        None => {
            // Not root: fusermount3 mounts it (and names the type fuse.tshs itself).
            config.mount_options = vec![
                MountOption::FSName("tshs".into()),
                MountOption::Subtype("tshs".into()),
                MountOption::DefaultPermissions,
                MountOption::NoAtime,
            ];
            if opts.read_only {
                config.mount_options.push(MountOption::RO);
            }
            fuser::Session::new(fuse_fs, mountpoint, &config)
        }
    }
    .with_context(|| format!("cannot mount {}", mountpoint.display()))?;
    let _ = notifier.set(session.notifier());
    log::info!(
        "mounted {} (access point {})",
        mountpoint.display(),
        ap.id()
    );
    let mut unmounter = session.unmount_callable();
    let target = mountpoint.to_path_buf();
    std::thread::Builder::new()
        .name("tshs-signals".into())
        .spawn(move || {
            if let Ok(sig) = set.wait() {
                log::info!("{sig:?}: unmounting");
                // A mount of our own (root) is unmounted here; fuser's
                // unmounter handles one fusermount3 made.
                let r = if ours {
                    nix::mount::umount(&target).map_err(std::io::Error::from)
                } else {
                    unmounter.unmount()
                };
                if let Err(e) = r {
                    log::error!("unmount failed: {e}");
                }
            }
        })?;
    if let Some(mut f) = ready.and_then(|r| r.lock().unwrap().take()) {
        let _ = f.write_all(b"ok");
    }
    let result = session.run();
    log::info!("unmounted {}", mountpoint.display());
    // While this mount still holds its open files (its access point): the
    // appends their closes left queued land, then those files are let go.
    fs.drain_appends();
    reaper.stop();
    fs.release_lingering();
    drop(ap);
    result.map_err(Into::into)
}

/// Mounts /dev/fuse at `mountpoint` as type `fuse.tshs` (so `findmnt -t
/// fuse.tshs`, `umount -a -t fuse.tshs` and monitoring find it; fuser's
/// own mount(2) says only `fuse`). Needs root: `None` when not permitted,
/// and the caller lets fusermount3 mount instead.
fn mount_fuse_tshs(mountpoint: &Path, opts: &MountOptions) -> Result<Option<std::os::fd::OwnedFd>> {
    use nix::mount::MsFlags;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let root_mode = std::fs::metadata(mountpoint)?.mode() & libc::S_IFMT;
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .context("cannot open /dev/fuse (modprobe fuse?)")?;
    let mut data = format!(
        "fd={},rootmode={root_mode:o},user_id=0,group_id=0,default_permissions",
        dev.as_raw_fd()
    );
    if opts.allow_other {
        data.push_str(",allow_other");
    }
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOATIME;
    if opts.read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    match nix::mount::mount(
        Some("tshs"),
        mountpoint,
        Some("fuse.tshs"),
        flags,
        Some(data.as_str()),
    ) {
        Ok(()) => Ok(Some(dev.into())),
        Err(nix::errno::Errno::EPERM) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let o = parse_options(&[
            "allow_other,ro,ttl=0.5".into(),
            "cache_size=64M,defaults".into(),
        ])
        .unwrap();
        assert!(o.allow_other && o.read_only);
        assert_eq!(o.ttl, Duration::from_millis(500));
        assert_eq!(o.cache_bytes, 64 << 20);
        assert_eq!(unescape(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape(r"/mnt/x\134y"), r"/mnt/x\y");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape(r"/end\04"), r"/end\04");
        for bad in [
            "bogus",
            "ttl",
            "ttl=-1",
            "cache_size=12Q",
            "threads=0",
            "cache_size=1K",
        ] {
            assert!(parse_options(&[bad.into()]).is_err(), "{bad}");
        }
    }
}
