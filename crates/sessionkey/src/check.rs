//! Checking configuration files without starting anything (`sessionkey check FILE`): every
//! problem found is a [`Problem`] located at its file, line and field, with what is wrong
//! and how to fix it.
//!
//! Tunnel files (docs/CONFIG.md) are checked field by field here: TOML syntax, unknown
//! fields (each at its own line), roles, required fields, addresses and ports, suite
//! names, key files (readable, mode 0600, parseable), pre-shared key files, authorized-peers
//! files, certificate files, duplicate names and listening addresses. The binary then
//! builds each table as `tunnel --config` would, so nothing that start-up refuses passes.
//! VPN files (docs/VPN.md) are checked by [`VpnConfig::parse`](crate::vpn::VpnConfig::parse),
//! which stops at the first problem.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use sessionkey_proto::keys::read_private_key;
use toml::Spanned;

use crate::trust::AuthorizedPeers;

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file.
    pub path: PathBuf,
    /// The line (1-based; 0 when the file could not be read).
    pub line: usize,
    /// The field (`tunnel[2].listen`), or `file`, `syntax`.
    pub field: String,
    /// What is wrong, and the fix.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.path.display(),
            self.line,
            self.field,
            self.message
        )
    }
}

impl std::error::Error for Problem {}

/// What a configuration file configures, from its top-level keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `[[tunnel]]` tables: `sessionkey tunnel --config`.
    Tunnel,
    /// An `[interface]` table: `sessionkey vpn up`.
    Vpn,
}

/// The kind of `text`: `[interface]` makes a VPN file, anything else a tunnel file.
pub fn kind_of(text: &str) -> Kind {
    match toml::from_str::<toml::Table>(text) {
        Ok(t) if t.contains_key("interface") => Kind::Vpn,
        Ok(_) => Kind::Tunnel,
        // Unparseable: a VPN file if a line opens its table, else a tunnel file.
        Err(_) if text.lines().any(|l| l.trim() == "[interface]") => Kind::Vpn,
        Err(_) => Kind::Tunnel,
    }
}

/// A `[[tunnel]]` table that passed the field checks, for the caller to build.
#[derive(Debug, Clone)]
pub struct TunnelTable {
    /// Its index in the file (0-based; fields are named `tunnel[INDEX]`).
    pub index: usize,
    /// The line of its first field.
    pub line: usize,
    /// Its fields.
    pub table: toml::Table,
}

/// The checks of a tunnel file: its problems, and the tables that had none.
#[derive(Debug, Default)]
pub struct TunnelCheck {
    /// Every problem found.
    pub problems: Vec<Problem>,
    /// The tables without problems, for the caller to build as start-up would.
    pub clean: Vec<TunnelTable>,
    /// How many `[[tunnel]]` tables the file has.
    pub tables: usize,
}

/// Fields of both roles.
const COMMON: &[&str] = &[
    "role",
    "name",
    "listen",
    "key",
    "suite",
    "classic",
    "psk",
    "key_update_bytes",
    "transport",
    "cert",
    "cert_key",
    "keylog",
    "insecure_legacy_cipher",
];
/// Fields only a server takes.
const SERVER: &[&str] = &[
    "to",
    "authorized_peers",
    "allow",
    "any_client",
    "insecure_anonymous",
    "max_handshakes",
    "max_handshakes_per_source",
    "max_connections",
    "handshakes_per_second_per_source",
    "client_ca",
    "peers_database",
    "peers_group",
    "fail_closed",
    "ticket_key_file",
];
/// Fields only a client takes.
const CLIENT: &[&str] = &[
    "server",
    "server_key",
    "known_peers",
    "accept_new",
    "insecure_anonymous",
    "ca",
    "sni",
];
/// Fields whose value is a file that must exist and be readable.
const READABLE_FILES: &[&str] = &["cert", "cert_key", "client_ca", "ca", "ticket_key_file"];
/// Positive integers.
const COUNTS: &[&str] = &[
    "max_handshakes",
    "max_handshakes_per_source",
    "max_connections",
    "handshakes_per_second_per_source",
    "key_update_bytes",
];
/// Booleans.
const FLAGS: &[&str] = &[
    "classic",
    "any_client",
    "insecure_anonymous",
    "accept_new",
    "fail_closed",
];

type SpannedTable = BTreeMap<Spanned<String>, Spanned<toml::Value>>;

#[derive(serde::Deserialize)]
struct RawTunnels {
    #[serde(default)]
    tunnel: Option<Spanned<Vec<Spanned<SpannedTable>>>>,
}

struct Source<'a> {
    path: &'a Path,
    text: &'a str,
    problems: Vec<Problem>,
}

impl Source<'_> {
    fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .bytes()
            .filter(|b| *b == b'\n')
            .count()
            + 1
    }

    fn report(&mut self, span: Range<usize>, field: impl Into<String>, message: impl Into<String>) {
        let line = self.line_of(span.start);
        self.problems.push(Problem {
            path: self.path.to_path_buf(),
            line,
            field: field.into(),
            message: message.into(),
        });
    }
}

/// Checks the tunnel file `path`, whose contents are `text`. Problems come in line order.
pub fn tunnel_file(path: &Path, text: &str) -> TunnelCheck {
    let mut out = check_tunnels(path, text);
    // Stable: problems on one line stay in the order they were found.
    out.problems.sort_by_key(|p| p.line);
    out
}

fn check_tunnels(path: &Path, text: &str) -> TunnelCheck {
    let mut src = Source {
        path,
        text,
        problems: Vec::new(),
    };
    let mut out = TunnelCheck::default();
    // Top-level keys first: each unknown one at its own line.
    let top: BTreeMap<Spanned<String>, toml::Value> = match toml::from_str(text) {
        Ok(top) => top,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            src.report(
                span,
                "syntax",
                format!("{} (fix the TOML syntax)", e.message().trim()),
            );
            out.problems = src.problems;
            return out;
        }
    };
    for (key, value) in &top {
        if key.get_ref() == "metrics" {
            let problem = match value.as_str() {
                Some(addr) => check_address(addr, true).err(),
                None => Some(format!(
                    "{value} must be an address in double quotes, e.g. \"127.0.0.1:9100\""
                )),
            };
            if let Some(m) = problem {
                src.report(key.span(), "metrics", m);
            }
        } else if key.get_ref() != "tunnel" {
            src.report(
                key.span(),
                key_name(key.get_ref()),
                "unknown top-level field; a tunnel file holds [[tunnel]] tables and \
                 `metrics` (docs/CONFIG.md); remove it or move it into a table",
            );
        }
    }
    let raw: RawTunnels = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            src.report(
                span,
                "tunnel",
                format!(
                    "{}; write each tunnel as a [[tunnel]] table",
                    e.message().trim()
                ),
            );
            out.problems = src.problems;
            return out;
        }
    };
    let tables = match raw.tunnel {
        Some(t) if !t.get_ref().is_empty() => t.into_inner(),
        _ => {
            src.report(
                0..0,
                "tunnel",
                "no [[tunnel]] tables: add one with role = \"server\" or \"client\" \
                 (docs/CONFIG.md)",
            );
            out.problems = src.problems;
            return out;
        }
    };
    out.tables = tables.len();
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    let mut listens: BTreeMap<String, usize> = BTreeMap::new();
    for (index, table) in tables.into_iter().enumerate() {
        let table_span = table.span();
        let fields = table.into_inner();
        let before = src.problems.len();
        let first = fields
            .keys()
            .map(|k| k.span().start)
            .min()
            .unwrap_or(table_span.start);
        let line = src.line_of(first);
        check_table(
            &mut src,
            index,
            first..first,
            &fields,
            &mut names,
            &mut listens,
        );
        if src.problems.len() == before {
            out.clean.push(TunnelTable {
                index,
                line,
                table: fields
                    .into_iter()
                    .map(|(k, v)| (k.into_inner(), v.into_inner()))
                    .collect(),
            });
        }
    }
    out.problems = src.problems;
    out
}

fn check_table(
    src: &mut Source<'_>,
    index: usize,
    table_span: Range<usize>,
    fields: &SpannedTable,
    names: &mut BTreeMap<String, usize>,
    listens: &mut BTreeMap<String, usize>,
) {
    let at = |field: &str| format!("tunnel[{index}].{}", key_name(field));
    let get = |name: &str| fields.iter().find(|(k, _)| k.get_ref() == name);
    let role = match get("role") {
        None => {
            src.report(
                table_span,
                at("role"),
                "missing: add role = \"server\" or role = \"client\"",
            );
            return;
        }
        Some((_, v)) => match v.get_ref().as_str() {
            Some("server") => "server",
            Some("client") => "client",
            _ => {
                src.report(
                    v.span(),
                    at("role"),
                    format!(
                        "{} is not a role: write role = \"server\" or role = \"client\"",
                        v.get_ref()
                    ),
                );
                return;
            }
        },
    };
    let own: &[&str] = if role == "server" { SERVER } else { CLIENT };
    for key in fields.keys() {
        let k = key.get_ref().as_str();
        if COMMON.contains(&k) || own.contains(&k) {
            continue;
        }
        let other = if role == "server" { CLIENT } else { SERVER };
        let hint = if other.contains(&k) {
            format!("a {} field, not a {role} one; remove it", other_role(role))
        } else {
            let mut known: Vec<&str> = COMMON.iter().chain(own).copied().collect();
            known.sort_unstable();
            known.dedup();
            let all = COMMON.iter().chain(SERVER).chain(CLIENT);
            match all
                .min_by_key(|f| edit_distance(f, k))
                .filter(|f| edit_distance(f, k) <= 2)
            {
                Some(near) => format!("unknown field; did you mean {near}?"),
                None => format!(
                    "unknown field; a {role} takes: {} (dashes are underscores)",
                    known.join(", ")
                ),
            }
        };
        src.report(key.span(), at(k), hint);
    }
    let required: &[&str] = if role == "server" {
        &["listen", "to"]
    } else {
        &["listen", "server"]
    };
    for name in required {
        if get(name).is_none() {
            let example = match *name {
                "listen" if role == "server" => "listen = \"0.0.0.0:7000\"",
                "listen" => "listen = \"127.0.0.1:8080\"",
                "to" => "to = \"127.0.0.1:8080\"",
                _ => "server = \"host.example:7000\"",
            };
            src.report(
                table_span.clone(),
                at(name),
                format!("missing: add {example}"),
            );
        }
    }
    for (key, value) in fields {
        let k = key.get_ref().as_str();
        if !(COMMON.contains(&k) || own.contains(&k)) {
            continue; // reported above
        }
        let span = value.span();
        let v = value.get_ref();
        if FLAGS.contains(&k) && !v.is_bool() {
            src.report(span, at(k), format!("{v} is not true or false"));
            continue;
        }
        if COUNTS.contains(&k) {
            match v.as_integer() {
                Some(n) if n >= 1 && (k == "key_update_bytes" || n <= i64::from(u32::MAX)) => {}
                _ => src.report(span, at(k), format!("{v} is not a positive whole number")),
            }
            continue;
        }
        if k == "allow" {
            match v.as_array() {
                Some(keys) => {
                    for key in keys {
                        match key.as_str().map(str::parse::<crate::trust::PeerKey>) {
                            Some(Ok(_)) => {}
                            Some(Err(e)) => src.report(
                                span.clone(),
                                at(k),
                                format!(
                                    "{key}: {e} (give the public key as `sessionkey pubkey` prints it)"
                                ),
                            ),
                            None => src.report(span.clone(), at(k), format!("{key} is not a string")),
                        }
                    }
                }
                None => src.report(
                    span,
                    at(k),
                    "must be a list of keys: allow = [\"KEY\", ...]",
                ),
            }
            continue;
        }
        if k == "role" {
            continue;
        }
        let Some(s) = v.as_str() else {
            if !FLAGS.contains(&k) {
                src.report(
                    span,
                    at(k),
                    format!("{v} must be a string in double quotes"),
                );
            }
            continue;
        };
        // Relative paths are the configuration file's directory's, as `tunnel --config`
        // reads them.
        let file = src.path.parent().unwrap_or(Path::new("")).join(s);
        match k {
            "name" => {
                if let Some(first) = names.insert(s.to_string(), index) {
                    src.report(
                        span,
                        at(k),
                        format!("{s:?} is also the name of tunnel[{first}]; names must differ (logs and status use them)"),
                    );
                }
            }
            "listen" => {
                if let Err(m) = check_address(s, true) {
                    src.report(span.clone(), at(k), m);
                } else if let Some(first) = listens.insert(s.to_string(), index) {
                    src.report(
                        span,
                        at(k),
                        format!("{s} is also where tunnel[{first}] listens; give each tunnel its own address"),
                    );
                }
            }
            "to" | "server" => {
                if let Err(m) = check_address(s, false) {
                    src.report(span, at(k), m);
                }
            }
            "suite" => {
                if let Err(m) = crate::config::parse_suite(s) {
                    src.report(span, at(k), m);
                }
            }
            "transport" if s != "native" && s != "tls" => {
                src.report(span, at(k), format!("{s:?}: write \"native\" or \"tls\""));
            }
            "key" => {
                if let Err(e) = read_private_key(&file) {
                    let e = e.to_string();
                    let fix = if file.exists() {
                        String::new()
                    } else {
                        format!(" (make one with: sessionkey keygen -o {s})")
                    };
                    src.report(span, at(k), format!("{e}{fix}"));
                }
            }
            "psk" => {
                if let Err(m) = check_psk(&file) {
                    src.report(span, at(k), m);
                }
            }
            "authorized_peers" => {
                if let Err(e) = AuthorizedPeers::load(&file) {
                    src.report(span, at(k), format!("{e}"));
                }
            }
            "known_peers" => {
                let p = file.as_path();
                let dir = p.parent().filter(|d| !d.as_os_str().is_empty());
                if !p.exists() && dir.is_some_and(|d| !d.is_dir()) {
                    src.report(
                        span,
                        at(k),
                        format!("{s}: its directory does not exist; create it or fix the path"),
                    );
                } else if p.exists() {
                    if let Err(e) = std::fs::read_to_string(p) {
                        src.report(span, at(k), format!("{s}: cannot read it: {e}"));
                    }
                }
            }
            "server_key" => {
                if let Err(e) = s.parse::<crate::trust::PeerKey>() {
                    src.report(
                        span,
                        at(k),
                        format!(
                            "{e} (give the server's public key as `sessionkey pubkey` prints it)"
                        ),
                    );
                }
            }
            k if READABLE_FILES.contains(&k) => {
                if let Err(e) = std::fs::File::open(&file) {
                    src.report(
                        span,
                        at(k),
                        format!("{s}: cannot read it: {e}; fix the path or its permissions"),
                    );
                }
            }
            _ => {}
        }
    }
}

/// A key as TOML spells it: bare (`listen`), or quoted when it is empty or has other
/// characters than letters, digits, `_` and `-` (a field named "" is shown as `""`).
pub(crate) fn key_name(key: &str) -> String {
    let bare = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if !key.is_empty() && key.chars().all(bare) {
        key.to_string()
    } else {
        format!("{key:?}")
    }
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

fn other_role(role: &str) -> &'static str {
    if role == "server" {
        "client"
    } else {
        "server"
    }
}

/// `HOST:PORT` with a port in 1..=65535 (0 also for a listening address: any free port);
/// a listening address must be an IP address.
fn check_address(s: &str, listen: bool) -> Result<(), String> {
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!(
            "{s:?} has no port: write HOST:PORT, e.g. 127.0.0.1:8080"
        ));
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{s:?}: {port:?} is not a port (1 to 65535)"))?;
    if port == 0 && !listen {
        return Err(format!(
            "{s:?}: port 0 cannot be connected to; give the real port"
        ));
    }
    if host.is_empty() {
        return Err(format!(
            "{s:?} has no host: write e.g. 0.0.0.0:{port} or [::]:{port}"
        ));
    }
    if listen {
        let ip = host.trim_start_matches('[').trim_end_matches(']');
        if ip.parse::<std::net::IpAddr>().is_err() && host != "localhost" {
            return Err(format!(
                "{s:?}: listen on an IP address (0.0.0.0, [::], 127.0.0.1), not a name"
            ));
        }
    }
    Ok(())
}

/// A pre-shared key file: only its owner can read it, and it holds 32 bytes in base64.
fn check_psk(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("{shown}: cannot read it: {e}"))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{shown} is readable by group or others (mode {:04o}); fix it with: chmod 600 {shown}",
            meta.permissions().mode() & 0o7777
        ));
    }
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path).map_err(|e| format!("{shown}: cannot read it: {e}"))?,
    );
    match crate::psk::decode(&text) {
        Ok(_) => Ok(()),
        Err(_) => Err(format!(
            "{shown} is not 32 bytes in base64; make one with: head -c 32 /dev/urandom | base64 > {shown}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<(usize, String)> {
        tunnel_file(Path::new("t.toml"), text)
            .problems
            .into_iter()
            .map(|p| (p.line, p.field))
            .collect()
    }

    #[test]
    fn unknown_fields_are_reported_at_their_own_lines() {
        let text = "[[tunnel]]\nrole = \"client\"\nlisten = \"127.0.0.1:1\"\nserver = \"h:2\"\n\
                    colour = \"blue\"\ninsecure_anonymous = true\n\n[[tunnel]]\nrole = \"server\"\n\
                    listen = \"0.0.0.0:3\"\nto = \"h:4\"\nany_client = true\nserver_key = \"x\"\n";
        assert_eq!(
            problems(text),
            vec![
                (5, "tunnel[0].colour".into()),
                (13, "tunnel[1].server_key".into())
            ]
        );
    }

    /// Found by the `tunnel_config` fuzz target: an empty key made an empty field name.
    #[test]
    fn keys_that_are_not_bare_are_named_in_quotes() {
        let table = "[[tunnel]]\nrole = \"server\"\nlisten = \"0.0.0.0:3\"\nto = \"h:4\"\n";
        assert_eq!(
            problems(&format!("\"\" = 1\n{table}\"a b\" = 2\n")),
            vec![
                (1, "\"\"".to_string()),
                (6, "tunnel[0].\"a b\"".to_string())
            ]
        );
    }

    /// Found by the `tunnel_config` fuzz target: a file without tunnels returned early, its
    /// unknown top-level fields in name order.
    #[test]
    fn problems_are_in_line_order_in_a_file_without_tunnels() {
        let lines: Vec<usize> = problems("zeta = 1\nalpha = 2\n")
            .into_iter()
            .map(|(line, _)| line)
            .collect();
        assert_eq!(lines, [1, 1, 2]);
    }

    #[test]
    fn the_metrics_address_is_checked() {
        let table = "[[tunnel]]\nrole = \"server\"\nlisten = \"0.0.0.0:3\"\nto = \"h:4\"\n";
        assert_eq!(
            problems(&format!("metrics = \"127.0.0.1:9100\"\n{table}")),
            vec![]
        );
        assert_eq!(
            problems(&format!("metrics = \"nowhere\"\n{table}")),
            vec![(1, "metrics".to_string())]
        );
        assert_eq!(
            problems(&format!("metrics = 9100\n{table}")),
            vec![(1, "metrics".to_string())]
        );
    }

    #[test]
    fn a_clean_file_has_no_problems_and_its_tables() {
        let text = "[[tunnel]]\nrole = \"server\"\nlisten = \"0.0.0.0:3\"\nto = \"h:4\"\nany_client = true\n";
        let check = tunnel_file(Path::new("t.toml"), text);
        assert!(check.problems.is_empty(), "{:?}", check.problems);
        assert_eq!(check.clean.len(), 1);
        assert_eq!(check.clean[0].line, 2);
    }
}
