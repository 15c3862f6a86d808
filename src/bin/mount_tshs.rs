//! `mount.tshs` (built as `mount-tshs`): the helper mount(8) runs for `/etc/fstab` lines of type
//! `tshs` or `fuse.tshs` (install it as `/sbin/mount.tshs` and
//! `/sbin/mount.fuse.tshs`). It is called as
//! `mount.tshs <source> <mountpoint> [-o options]` and runs
//! `tshs mount <mountpoint> -o options`; the source names the MySQL options
//! file holding the `[tshs]` group (`tshs` or `none` for the default).

use std::os::unix::process::CommandExt;
use std::path::PathBuf;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-o" => options.extend(it.next()),
            // mount(8) flags: sloppy, fake, verbose, no-mtab; nothing to do.
            "-s" | "-f" | "-v" | "-n" => {}
            _ => positional.push(a),
        }
    }
    if positional.len() != 2 {
        eprintln!("usage: mount.tshs <source> <mountpoint> [-o options]");
        std::process::exit(1);
    }
    let tshs = std::env::current_exe()
        .ok()
        .and_then(|p| p.canonicalize().ok())
        .map(|p| p.with_file_name("tshs"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("tshs"));
    let mut cmd = std::process::Command::new(tshs);
    if !matches!(positional[0].as_str(), "tshs" | "none" | "") {
        cmd.arg("--mysql-cfg-file").arg(&positional[0]);
    }
    cmd.arg("mount").arg(&positional[1]);
    for o in options {
        cmd.arg("-o").arg(o);
    }
    let err = cmd.exec();
    eprintln!("mount.tshs: cannot run tshs: {err}");
    std::process::exit(1);
}
