//! Configuration: MySQL connection options, the `[tshs]` group of a MySQL
//! options file (the Admin Node's address), and `/etc/tshs.conf`.
//!
//! Connection options are the reference's `<connection-options>`: a
//! `;`-separated list of `name=value` MySQL option names. They are stored in
//! the Admin Node verbatim (normalised) and are never printed with the
//! password in clear: use [`ConnOptions::masked`].
//!
//! `host` may name several servers of one Galera cluster, each with its own
//! port: `host=db1:3306,db2:3307,db3` (`port` is the default for those
//! without one). Every process writes through one member at a time (see
//! `db.rs`); [`ConnOptions::members`] gives each as options of its own.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

/// Default location of the MySQL options file holding the `[tshs]` group.
pub const DEFAULT_MYSQL_CFG: &str = "/etc/my.cnf";
/// Default location of the tshs options file.
pub const DEFAULT_TSHS_CONF: &str = "/etc/tshs.conf";

/// The MySQL option names tshs understands, in their canonical spelling.
/// `_` and `-` are interchangeable on input, as in MySQL option files.
const KNOWN: &[&str] = &[
    "host",
    "port",
    "user",
    "password",
    "database",
    "socket",
    "connect-timeout",
    "read-timeout",
    "write-timeout",
];

/// Parsed, validated connection options for one database.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ConnOptions {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub database: Option<String>,
    pub socket: Option<String>,
    /// Seconds; bounds how long an unreachable server can stall a caller.
    pub connect_timeout: Option<u64>,
    pub read_timeout: Option<u64>,
    pub write_timeout: Option<u64>,
}

/// Default timeouts keep every operation on a dead server bounded (the mount
/// turns them into `EIO`), without cutting off a long bulk statement.
const DEFAULT_CONNECT_TIMEOUT: u64 = 5;
/// Longer than InnoDB's lock wait (50 s), which then reports itself.
const DEFAULT_RW_TIMEOUT: u64 = 60;

impl ConnOptions {
    /// Parses `host=…;port=…;…`. Empty items (a trailing `;`) are allowed.
    pub fn parse(text: &str) -> Result<Self> {
        let mut opts = ConnOptions::default();
        let mut seen = 0;
        for item in text.split(';') {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let (name, value) = item.split_once('=').ok_or_else(|| {
                anyhow!("malformed connection option '{item}': expected name=value")
            })?;
            opts.set(name.trim(), value.trim())?;
            seen += 1;
        }
        if seen == 0 {
            bail!(
                "empty connection options: expected e.g. host=127.0.0.1;port=3306;user=…;database=…"
            );
        }
        Ok(opts)
    }

    /// Sets one option by its MySQL name; rejects unknown names and bad values.
    pub fn set(&mut self, name: &str, value: &str) -> Result<()> {
        let canonical = name.to_ascii_lowercase().replace('_', "-");
        let text = || -> Result<String> {
            if value.is_empty() {
                bail!("connection option '{name}' has an empty value");
            }
            Ok(unquote(value).to_string())
        };
        let seconds = || -> Result<u64> {
            let s: u64 = value.parse().map_err(|_| {
                anyhow!("connection option '{name}': '{value}' is not a number of seconds")
            })?;
            if s == 0 || s > 86_400 {
                bail!("connection option '{name}': {s} is out of range (1..86400 seconds)");
            }
            Ok(s)
        };
        match canonical.as_str() {
            "host" => {
                let hosts = text()?;
                let mut list = Vec::new();
                for item in hosts.split(',') {
                    let (h, port) = split_host(item.trim()).map_err(|e| {
                        anyhow!(
                            "connection option 'host': '{item}' {e} (expected host or host:port)"
                        )
                    })?;
                    list.push(match port {
                        Some(p) if h.contains(':') => format!("[{h}]:{p}"),
                        Some(p) => format!("{h}:{p}"),
                        None => h.to_string(),
                    });
                }
                let mut unique = list.clone();
                unique.sort();
                unique.dedup();
                if unique.len() != list.len() {
                    bail!("connection option 'host': '{hosts}' names a server twice");
                }
                self.host = Some(list.join(","))
            }
            "port" => {
                let port: u16 = value.parse().ok().filter(|p| *p != 0).ok_or_else(|| {
                    anyhow!("connection option 'port': '{value}' is not a port number (1..65535)")
                })?;
                self.port = Some(port);
            }
            "user" => self.user = Some(text()?),
            // An empty password is legal in MySQL.
            "password" => self.password = Some(unquote(value).to_string()),
            "database" => {
                let db = text()?;
                if db.len() > 64 || db.contains(['`', '/', '\\', '.']) {
                    bail!("connection option 'database': '{db}' is not a valid database name");
                }
                self.database = Some(db)
            }
            "socket" => self.socket = Some(text()?),
            "connect-timeout" => self.connect_timeout = Some(seconds()?),
            "read-timeout" => self.read_timeout = Some(seconds()?),
            "write-timeout" => self.write_timeout = Some(seconds()?),
            _ => bail!(
                "unknown connection option '{name}' (known: {})",
                KNOWN.join(", ")
            ),
        }
        Ok(())
    }

    /// The database name, required for every node.
    pub fn database(&self) -> Result<&str> {
        self.database
            .as_deref()
            .ok_or_else(|| anyhow!("connection options name no database (add database=…)"))
    }

    /// A short description of the server for error messages: `host:port`
    /// (comma-separated for several members) or the socket.
    pub fn server(&self) -> String {
        match (&self.socket, &self.host) {
            (Some(s), None) => s.clone(),
            _ => self
                .members()
                .iter()
                .map(|m| {
                    let h = m.host.as_deref().unwrap_or("localhost");
                    let h = if h.contains(':') {
                        format!("[{h}]")
                    } else {
                        h.to_string()
                    };
                    format!("{h}:{}", m.port.unwrap_or(3306))
                })
                .collect::<Vec<_>>()
                .join(","),
        }
    }

    /// One set of options per server `host` names (itself when it names one
    /// or none): each with a single host and its port.
    pub fn members(&self) -> Vec<ConnOptions> {
        let Some(hosts) = self.host.as_deref() else {
            return vec![self.clone()];
        };
        hosts
            .split(',')
            .map(|item| {
                let (h, port) = split_host(item).expect("validated by set");
                ConnOptions {
                    host: Some(h.to_string()),
                    port: port.or(self.port),
                    ..self.clone()
                }
            })
            .collect()
    }

    /// The canonical text form with the password in clear: what the Admin Node stores.
    pub fn to_stored(&self) -> String {
        self.render(false)
    }

    /// The text form with the password replaced by `****`: safe to print or log.
    pub fn masked(&self) -> String {
        self.render(true)
    }

    fn render(&self, mask: bool) -> String {
        let mut parts = Vec::new();
        let mut push = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                parts.push(format!("{k}={v}"));
            }
        };
        push("host", self.host.clone());
        push("port", self.port.map(|p| p.to_string()));
        push("user", self.user.clone());
        push(
            "password",
            self.password
                .as_ref()
                .map(|p| if mask { "****".to_string() } else { p.clone() }),
        );
        push("database", self.database.clone());
        push("socket", self.socket.clone());
        push(
            "connect-timeout",
            self.connect_timeout.map(|s| s.to_string()),
        );
        push("read-timeout", self.read_timeout.map(|s| s.to_string()));
        push("write-timeout", self.write_timeout.map(|s| s.to_string()));
        parts.join(";")
    }

    /// The same server with another database (used to probe the server itself).
    pub fn with_database(&self, db: Option<&str>) -> ConnOptions {
        ConnOptions {
            database: db.map(str::to_string),
            ..self.clone()
        }
    }

    /// Options for the `mysql` crate, with bounded timeouts; for the first
    /// member when `host` names several.
    // Exception to "only db.rs, shard/, cluster/ name mysql::": option mapping beside its defaults, no SQL.
    pub fn to_mysql(&self) -> mysql::Opts {
        let secs = |v: Option<u64>, d| Some(Duration::from_secs(v.unwrap_or(d)));
        let mut b = mysql::OptsBuilder::new()
            .user(self.user.clone())
            .pass(self.password.clone())
            .db_name(self.database.clone())
            .tcp_connect_timeout(secs(self.connect_timeout, DEFAULT_CONNECT_TIMEOUT))
            .read_timeout(secs(self.read_timeout, DEFAULT_RW_TIMEOUT))
            .write_timeout(secs(self.write_timeout, DEFAULT_RW_TIMEOUT))
            .prefer_socket(false)
            // Every statement tshs runs stays prepared on its connection.
            .stmt_cache_size(Some(256))
            // File data and names are bytes: with a binary client character
            // set the server does not scan every parameter for conversion.
            .init(vec!["SET NAMES binary"]);
        match (&self.socket, &self.host) {
            (Some(sock), None) => b = b.socket(Some(sock.clone())),
            _ => {
                let first = self.members().swap_remove(0);
                b = b
                    .ip_or_hostname(Some(first.host.unwrap_or_else(|| "localhost".into())))
                    .tcp_port(first.port.unwrap_or(3306))
            }
        }
        b.into()
    }
}

impl fmt::Display for ConnOptions {
    /// Displays masked: a password never reaches a log line by accident.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

/// Splits `host`, `host:port`, `[v6]` or `[v6]:port` (a bare IPv6 address
/// has no port).
fn split_host(item: &str) -> Result<(&str, Option<u16>)> {
    let port = |p: &str| -> Result<u16> {
        p.parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| anyhow!("has a bad port '{p}'"))
    };
    let (host, p) = if let Some(rest) = item.strip_prefix('[') {
        let (h, tail) = rest
            .split_once(']')
            .ok_or_else(|| anyhow!("lacks its ']'"))?;
        match tail {
            "" => (h, None),
            t => (
                h,
                Some(port(
                    t.strip_prefix(':').ok_or_else(|| anyhow!("is malformed"))?,
                )?),
            ),
        }
    } else if item.matches(':').count() == 1 {
        let (h, p) = item.split_once(':').unwrap();
        (h, Some(port(p)?))
    } else {
        (item, None)
    };
    if host.is_empty() {
        bail!("has no host name");
    }
    Ok((host, p))
}

fn unquote(v: &str) -> &str {
    let b = v.as_bytes();
    if b.len() >= 2 && (b[0] == b'"' || b[0] == b'\'') && b[b.len() - 1] == b[0] {
        &v[1..v.len() - 1]
    } else {
        v
    }
}

/// Reads the `[tshs]` group of a MySQL options file: the Admin Node's connection.
pub fn read_mysql_cfg(path: &Path) -> Result<ConnOptions> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read MySQL options file {}", path.display()))?;
    let ini = ini::Ini::load_from_str_opt(
        &text,
        ini::ParseOption {
            enabled_quote: true,
            enabled_escape: false,
            ..Default::default()
        },
    )
    .map_err(|e| anyhow!("MySQL options file {}: {e}", path.display()))?;
    let group = ini.section(Some("tshs")).ok_or_else(|| {
        anyhow!(
            "MySQL options file {} has no [tshs] group (it names the Admin Node database)",
            path.display()
        )
    })?;
    let mut opts = ConnOptions::default();
    for (name, value) in group.iter() {
        opts.set(name, value)
            .with_context(|| format!("in the [tshs] group of {}", path.display()))?;
    }
    if opts.database.is_none() {
        opts.database = Some("tshs_admin".into());
    }
    Ok(opts)
}

/// Reads a tshs options file into command-line words (`--name=value`), so the
/// file accepts exactly the long options of the command line. Lines are
/// `name=value`, `name value` or `name` (a flag), with or without the leading
/// `--`; `#` and `;` start comments.
pub fn read_tshs_conf(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read options file {}", path.display()))?;
    let mut words = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty()
            || line.starts_with('#')
            || line.starts_with(';')
            || line.starts_with('[')
        {
            continue;
        }
        let line = line.trim_start_matches("--");
        let (name, value) = match line.split_once(['=', ' ', '\t']) {
            Some((n, v)) => (n.trim(), Some(v.trim())),
            None => (line, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            bail!("{}:{}: not an option line: {line}", path.display(), n + 1);
        }
        words.push(match value {
            Some(v) => format!("--{name}={v}"),
            None => format!("--{name}"),
        });
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_masks() {
        let o = ConnOptions::parse(
            "host=127.0.0.1;port=3307;user=td;password=s3cret;database=tshs_storage_1;",
        )
        .unwrap();
        assert_eq!(o.port, Some(3307));
        assert_eq!(
            o.masked(),
            "host=127.0.0.1;port=3307;user=td;password=****;database=tshs_storage_1"
        );
        assert!(!format!("{o}").contains("s3cret"));
        assert_eq!(ConnOptions::parse(&o.to_stored()).unwrap(), o);
    }

    #[test]
    fn several_members() {
        let o = ConnOptions::parse("host=db1:3321, db2 ,[::1]:3323;port=3310;database=x").unwrap();
        assert_eq!(o.host.as_deref(), Some("db1:3321,db2,[::1]:3323"));
        let m = o.members();
        assert_eq!(m.len(), 3);
        assert_eq!((m[0].host.as_deref(), m[0].port), (Some("db1"), Some(3321)));
        assert_eq!((m[1].host.as_deref(), m[1].port), (Some("db2"), Some(3310)));
        assert_eq!((m[2].host.as_deref(), m[2].port), (Some("::1"), Some(3323)));
        assert_eq!(m[1].database.as_deref(), Some("x"));
        assert_eq!(o.server(), "db1:3321,db2:3310,[::1]:3323");
        assert_eq!(ConnOptions::parse(&o.to_stored()).unwrap(), o);
        let one = ConnOptions::parse("host=db1;port=3307").unwrap();
        assert_eq!(one.members(), vec![one.clone()]);
        assert_eq!(one.server(), "db1:3307");
        let err = |s: &str| format!("{:#}", ConnOptions::parse(s).unwrap_err());
        assert!(err("host=db1:0").contains("bad port '0'"));
        assert!(err("host=db1,,db2").contains("has no host name"));
        assert!(err("host=db1:3306,db1:3306").contains("names a server twice"));
        assert!(err("host=[::1").contains("lacks its ']'"));
    }

    #[test]
    fn underscore_and_dash_are_the_same() {
        let o = ConnOptions::parse("connect_timeout=3;database=x").unwrap();
        assert_eq!(o.connect_timeout, Some(3));
    }

    #[test]
    fn rejects_bad_input() {
        let err = |s: &str| ConnOptions::parse(s).unwrap_err().to_string();
        assert!(err("hots=x").contains("unknown connection option 'hots'"));
        assert!(err("port=99999").contains("not a port number"));
        assert!(err("port=abc").contains("not a port number"));
        assert!(err("host").contains("malformed"));
        assert!(err("").contains("empty connection options"));
        assert!(err("database=a`b").contains("not a valid database name"));
        assert!(err("connect-timeout=0").contains("out of range"));
    }

    #[test]
    fn mysql_cfg_group() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("my.cnf");
        std::fs::write(
            &p,
            "[client]\nuser=x\n[tshs]\nhost=127.0.0.1\nport=3307\nuser=tshs\npassword=\"pw\"\n",
        )
        .unwrap();
        let o = read_mysql_cfg(&p).unwrap();
        assert_eq!(o.database.as_deref(), Some("tshs_admin"));
        assert_eq!(o.password.as_deref(), Some("pw"));
        std::fs::write(&p, "[client]\nuser=x\n").unwrap();
        assert!(
            read_mysql_cfg(&p)
                .unwrap_err()
                .to_string()
                .contains("no [tshs] group")
        );
        std::fs::write(&p, "[tshs]\nbogus=1\n").unwrap();
        assert!(
            format!("{:#}", read_mysql_cfg(&p).unwrap_err())
                .contains("unknown connection option 'bogus'")
        );
    }

    #[test]
    fn tshs_conf_words() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tshs.conf");
        std::fs::write(
            &p,
            "# comment\nmax-threads=4\n--time-limit 30\nretry unlimited\n",
        )
        .unwrap();
        assert_eq!(
            read_tshs_conf(&p).unwrap(),
            ["--max-threads=4", "--time-limit=30", "--retry=unlimited"]
        );
        std::fs::write(&p, "max_threads!=4\n").unwrap();
        assert!(read_tshs_conf(&p).is_err());
    }
}
