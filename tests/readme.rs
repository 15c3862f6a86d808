//! The README's administrator's guide shows what commands print: these run
//! them on a fresh cluster and compare, so the README stays true. Server
//! names, database names and times differ from the README's; they are
//! put in its words before comparing, and runs of spaces (table padding,
//! which follows those names' lengths) count as one.

mod common;

use common::{TestCluster, server};

const README: &str = include_str!("../README.md");

/// The indented lines shown right after the line `    <command>` (up to a
/// blank line or the next command).
fn shown_after(command: &str) -> Vec<&'static str> {
    let mut lines = README
        .lines()
        .skip_while(|l| l.trim_end() != format!("    {command}"));
    assert!(lines.next().is_some(), "the README shows no `{command}`");
    lines
        .take_while(|l| {
            l.starts_with("    ") && !l.starts_with("    tshs ") && !l.starts_with("    rsync ")
        })
        .map(|l| l.trim_start())
        .collect()
}

fn squeeze(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Replaces `yymmdd hh:mm:ss` at the start of a line by the README's.
fn same_time(line: &str, readme: &str) -> String {
    match (line.get(..15), readme.get(..15)) {
        (Some(_), Some(t)) if line.as_bytes().get(6) == Some(&b' ') => {
            format!("{t}{}", &line[15..])
        }
        _ => line.to_string(),
    }
}

#[test]
fn creating_a_cluster_prints_what_the_readme_shows() {
    let c = TestCluster::empty();
    let db1 = c.new_db(1, "readme");
    let db2 = c.new_db(2, "readme");
    assert!(
        c.ok(&["create-admin-node"]).contains("up to date"),
        "README: again: \"up to date\""
    );
    let n1 = format!("{};database={db1}", server(1));
    let n2 = format!("{};database={db2}", server(2));
    c.ok(&["create-storage-node", &n1]);
    c.ok(&["create-storage-node", &n2]);
    let masked = |n: &str| n.replace("password=tshs-test-pw", "password=****");
    let out = c
        .ok(&["list-storage-nodes"])
        .replace(
            &masked(&n1),
            "host=db1;user=td;password=****;database=tshs_storage_1",
        )
        .replace(
            &masked(&n2),
            "host=db2;user=td;password=****;database=tshs_storage_2",
        );
    let want = shown_after("tshs list-storage-nodes");
    assert_eq!(
        out.lines().map(squeeze).collect::<Vec<_>>(),
        want.iter().map(|l| squeeze(l)).collect::<Vec<_>>(),
        "list-storage-nodes:\n{out}"
    );
}

#[test]
fn deactivate_and_reactivate_print_what_the_readme_shows() {
    let c = TestCluster::with_nodes();
    let m = c.mount();
    m.space(3);
    drop(m);
    for (cmd, args) in [
        ("tshs deactivate-space 3", ["deactivate-space", "3"]),
        ("tshs reactivate-space 3", ["reactivate-space", "3"]),
    ] {
        let want = shown_after(cmd);
        let out = c.ok(&args);
        let got: Vec<String> = out
            .lines()
            .zip(want.iter())
            .map(|(l, w)| same_time(l, w))
            .collect();
        assert_eq!(got, want, "{cmd}:\n{out}");
        assert_eq!(out.lines().count(), want.len(), "{cmd}:\n{out}");
    }
}
