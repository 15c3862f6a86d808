//! A race of `open(O_CREAT)` with a rename, in a binary of its own: it
//! loads the CPUs on purpose, and binaries run one after another.

mod common;

use std::fs::{self, OpenOptions};

use common::TestCluster;

/// `open(O_CREAT)` finds the name taken, and before it can open that file a
/// rotation renames it away: the open creates the name anew, as on a local
/// disk, instead of failing with ENOENT (CI saw this once in
/// mount_posix's log rotation test).
#[test]
fn open_with_create_survives_its_name_being_renamed_away() {
    const OPENS: usize = 500;
    let c = TestCluster::with_nodes();
    // A mount lets one create or rename of a directory in at a time: each
    // opener, and the rotator, has a mount of its own.
    let mounts: Vec<_> = (0..5).map(|_| common::Mount::new(&c, &["ttl=0"])).collect();
    fs::create_dir(mounts[0].space(21).join("protolog")).unwrap();
    let dirs: Vec<_> = mounts
        .iter()
        .map(|m| m.path().join("vol01/21/protolog"))
        .collect();
    let stop = common::StopFlag::new();
    // CI saw it on a loaded machine: the window is wide when the mount
    // waits for a CPU between the refused create and its lookup.
    let burners: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.0.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
            })
        })
        .collect();
    let openers: Vec<_> = dirs[..4]
        .iter()
        .map(|dir| {
            let dir = dir.clone();
            std::thread::spawn(move || {
                let mut failed = Vec::new();
                for i in 0..OPENS {
                    // Half as the space server's appends, half as a writer
                    // that creates without O_APPEND.
                    let mut o = OpenOptions::new();
                    o.create(true);
                    if i % 2 == 0 {
                        o.append(true);
                    } else {
                        o.write(true);
                    }
                    if let Err(e) = o.open(dir.join("last.log")) {
                        failed.push(e.to_string());
                    }
                }
                failed
            })
        })
        .collect();
    let rotator = {
        let (dir, stop) = (dirs[4].clone(), stop.0.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                if fs::rename(dir.join("last.log"), dir.join(format!("{n}.log"))).is_ok() {
                    n += 1;
                }
            }
            n
        })
    };
    let failed: Vec<String> = openers
        .into_iter()
        .flat_map(|o| o.join().unwrap())
        .collect();
    stop.raise();
    let rotations = rotator.join().unwrap();
    burners.into_iter().for_each(|b| b.join().unwrap());
    assert!(rotations > 20, "only {rotations} rotations happened");
    assert!(
        failed.is_empty(),
        "{} of {} opens failed across {rotations} rotations, first: {}",
        failed.len(),
        4 * OPENS,
        failed[0]
    );
}
