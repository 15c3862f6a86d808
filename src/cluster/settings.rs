//! Cluster settings in the Admin Node (`list-settings`, `set-setting`).
//! Only known names with checked values are stored.

use anyhow::{Result, bail};
use mysql::prelude::Queryable;

use super::Cluster;

/// `StoreSpaceNames`: whether space titles are kept (off by default, as in
/// the reference: spaces are known by their IDs only).
pub const STORE_SPACE_NAMES: &str = "StoreSpaceNames";

/// Every setting: name, default, what it does.
pub const SETTINGS: &[(&str, &str, &str)] = &[(
    STORE_SPACE_NAMES,
    "False",
    "keep space titles (set-space-info --title); False forgets them",
)];

/// The canonical spelling of a boolean setting's value.
fn parse_bool(name: &str, value: &str) -> Result<&'static str> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok("True"),
        "false" | "0" | "no" | "off" => Ok("False"),
        _ => bail!("{name} is True or False, not '{value}'"),
    }
}

impl Cluster {
    /// Every setting with its current value.
    pub fn settings(&self) -> Result<Vec<(String, String)>> {
        let stored: Vec<(String, String)> = self
            .admin
            .conn()?
            .query("SELECT name, value FROM settings")
            .map_err(|e| self.admin.err(e))?;
        Ok(SETTINGS
            .iter()
            .map(|(name, default, _)| {
                let v = stored
                    .iter()
                    .find(|(n, _)| n == name)
                    .map_or(*default, |(_, v)| v.as_str());
                (name.to_string(), v.to_string())
            })
            .collect())
    }

    pub fn setting_on(&self, name: &str) -> Result<bool> {
        Ok(self
            .settings()?
            .into_iter()
            .any(|(n, v)| n == name && v == "True"))
    }

    /// Sets a setting; turning StoreSpaceNames off forgets every title in
    /// the same transaction. Returns the name and value as stored.
    pub fn set_setting(&self, name: &str, value: &str) -> Result<(&'static str, &'static str)> {
        self.require_admin_node()?;
        let Some((name, _, _)) = SETTINGS
            .iter()
            .find(|(n, _, _)| n.eq_ignore_ascii_case(name))
        else {
            let known: Vec<&str> = SETTINGS.iter().map(|s| s.0).collect();
            bail!("unknown setting '{name}' (known: {})", known.join(", "));
        };
        let value = parse_bool(name, value)?;
        let mut conn = self.admin.conn()?;
        let mut tx = conn
            .start_transaction(Default::default())
            .map_err(|e| self.admin.err(e))?;
        tx.exec_drop(
            "INSERT INTO settings (name, value) VALUES (?, ?) ON DUPLICATE KEY UPDATE value = VALUES(value)",
            (name, value),
        )
        .map_err(|e| self.admin.err(e))?;
        if *name == STORE_SPACE_NAMES && value == "False" {
            tx.exec_drop("UPDATE spaces SET title = NULL", ())
                .map_err(|e| self.admin.err(e))?;
        }
        tx.commit().map_err(|e| self.admin.err(e))?;
        Ok((name, value))
    }

    /// Sets a space's title (only while StoreSpaceNames is on) and/or its
    /// resource ID.
    pub fn set_space_info(
        &self,
        id: u32,
        title: Option<&str>,
        resource_id: Option<&str>,
    ) -> Result<()> {
        if title.is_none() && resource_id.is_none() {
            bail!("nothing to set: give --title and/or --resource-id");
        }
        if title.is_some() && !self.setting_on(STORE_SPACE_NAMES)? {
            bail!("space titles are not stored: tshs set-setting {STORE_SPACE_NAMES} True first");
        }
        if title.is_some_and(|t| t.chars().count() > 255) {
            bail!("a space title is at most 255 characters");
        }
        if resource_id.is_some_and(|r| r.chars().count() > 64) {
            bail!("a resource ID is at most 64 characters");
        }
        let mut conn = self.admin.conn()?;
        conn.exec_drop(
            "UPDATE spaces SET title = COALESCE(?, title), resource_id = COALESCE(?, resource_id) WHERE id = ?",
            (title, resource_id, id),
        )
        .map_err(|e| self.admin.err(e))?;
        let changed = conn.affected_rows() > 0;
        drop(conn);
        if !changed && self.space(id)?.is_none() {
            bail!("there is no space {id} (see tshs list-spaces)");
        }
        Ok(())
    }
}
