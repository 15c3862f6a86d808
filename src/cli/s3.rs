//! The S3 host commands and their tables: add-s3-host, list-s3-hosts,
//! set-current-s3-host, update-s3-host, transfer-to-s3-info.

use std::fmt;
use std::str::FromStr;

use anyhow::Result;
use indicatif::BinaryBytes;

use super::table::{Line, render};
use crate::cluster::Cluster;

/// A secret given on the command line: kept out of `Debug` output, so it
/// cannot reach a log line through the parsed command.
#[derive(Clone)]
pub struct Secret(pub String);

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

pub fn add_host(
    cluster: &Cluster,
    brand: &str,
    server: &str,
    bucket: &str,
    access_key: &str,
    secret_key: &Secret,
    options: Option<&str>,
) -> Result<String> {
    let h = cluster.add_s3_host(
        brand,
        server,
        bucket,
        access_key,
        &secret_key.0,
        options.unwrap_or(""),
    )?;
    Ok(format!(
        "S3 host {} added ({} {}, bucket {}); it is the current S3 host\n{}",
        h.id,
        h.brand.as_str(),
        h.server,
        h.bucket,
        list_hosts(cluster)?
    ))
}

/// The reference's table, with each host's brand and options on a line below it.
pub fn list_hosts(cluster: &Cluster) -> Result<String> {
    let mut lines = Vec::new();
    for h in cluster.s3_hosts()? {
        lines.push(Line::Row(vec![
            h.id.to_string(),
            if h.is_current { "yes" } else { "no" }.into(),
            h.server.clone(),
            h.bucket.clone(),
            h.access_key.clone(),
            h.masked_secret().into(),
        ]));
        lines.push(Line::Text(format!(
            "({} {})",
            h.brand.as_str(),
            h.options.to_text()
        )));
    }
    Ok(render(
        &["ID", "Cur", "Server", "Bucket", "Public Key", "Private Key"],
        &lines,
    ))
}

pub fn set_current(cluster: &Cluster, id: u32) -> Result<String> {
    cluster.set_current_s3_host(id)?;
    Ok(format!("S3 host {id} is the current S3 host\n"))
}

pub fn update_host(cluster: &Cluster, id: u32, options: &str) -> Result<String> {
    let h = cluster.update_s3_host(id, options)?;
    Ok(format!("S3 host {id}: {}\n", h.options.to_text()))
}

/// How many files wait for move-to-s3, per Storage Node and in all.
pub fn transfer_info(cluster: &Cluster) -> Result<String> {
    let host = cluster.current_s3_host()?;
    let waiting = crate::tasks::waiting_for_s3(cluster, host.as_ref())?;
    let mut lines = Vec::new();
    let (mut files, mut bytes) = (0, 0);
    for (node, w) in &waiting {
        let text = match w {
            Ok((f, b)) => {
                files += f;
                bytes += b;
                vec![f.to_string(), format!("{}", BinaryBytes(*b))]
            }
            Err(e) => vec!["?".into(), format!("unreachable: {e:#}")],
        };
        lines.push(Line::Row(
            std::iter::once(node.to_string()).chain(text).collect(),
        ));
    }
    let mut out = render(&["Node", "Files", "Bytes"], &lines);
    out += &format!(
        "Ready for transfer to S3: {files} file(s), {} ({bytes} bytes)\n",
        BinaryBytes(bytes)
    );
    match host {
        Some(h) => out += &format!("Current S3 host: {}\n", h.id),
        None => out += "No S3 host yet: add one with tshs add-s3-host\n",
    }
    Ok(out)
}

/// `restore-from-s3`: what was restored, and what could not be.
pub fn restore(cluster: &Cluster, node: u32, connection_options: &str) -> Result<String> {
    let opts = crate::config::ConnOptions::parse(connection_options)?;
    let r = crate::tasks::restore_from_s3(cluster, node, &opts)?;
    let mut out = format!(
        "Storage node {node} restored from the object store into {}: {} space(s), {} file(s) ({} in S3, {} last.log backup(s) copied back)\n",
        opts.masked(),
        r.spaces,
        r.files - r.lost,
        r.from_objects,
        r.from_backups
    );
    if r.lost > 0 {
        out += &format!(
            "{} file(s) had no copy in the object store and were left out: {}{}\n",
            r.lost,
            r.lost_paths.join(", "),
            if r.lost as usize > r.lost_paths.len() {
                " … (the log names every one)"
            } else {
                ""
            }
        );
    }
    if !r.reimported.is_empty() {
        out += &format!(
            "Space(s) {:?} of the unfinished import: their tree comes in again from the on-disk tree (changes since the import are lost)\n",
            r.reimported
        );
    }
    if !r.without_manifest.is_empty() {
        out += &format!(
            "No manifest for space(s) {:?}: restored empty (run copy-to-s3 regularly)\n",
            r.without_manifest
        );
    }
    Ok(out)
}
