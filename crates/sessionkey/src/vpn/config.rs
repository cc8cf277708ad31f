//! The VPN configuration file (docs/VPN.md): TOML in WireGuard's shape, parsed into
//! validated types. Every mistake is reported with the file, the line and the field.
//!
//! ```toml
//! [interface]
//! private_key_file = "/etc/sessionkey/site-a.key"   # written by `sessionkey keygen`
//! address = ["10.8.0.1/24"]
//! listen_port = 51820
//! # user = "nobody"    # who the VPN becomes once set up; "root" keeps root
//!
//! [[peer]]
//! public_key = "sessionkey-x25519 m3Lq...="
//! endpoint = "198.51.100.2:51820"
//! allowed_ips = ["10.8.0.2/32"]
//! ```

use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use sessionkey_proto::keys::{read_private_key, Identity, Psk, PublicKey};
use sessionkey_proto::suite::Suite;
use sessionkey_proto::vpn::Cidr;
use toml::Spanned;
use zeroize::Zeroizing;

use crate::psk::PskTextError;

/// The default inner MTU: a 1500-byte path minus the VPN's overhead over IPv6 (80).
pub const DEFAULT_MTU: u16 = 1420;
/// The default UDP port.
pub const DEFAULT_PORT: u16 = 51820;

/// A configuration mistake, located.
#[derive(Debug, thiserror::Error)]
#[error("{}:{line}: {field}: {message}", path.display())]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// The line (1-based; 0 when the file could not be read).
    pub line: usize,
    /// The field (`interface.address`, `peer[2].endpoint`), or `file`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// A validated VPN configuration.
#[derive(Debug)]
pub struct VpnConfig {
    /// The interface name (default: the file name without `.toml`).
    pub name: String,
    /// This side's identity.
    pub identity: Arc<Identity>,
    /// Addresses of the TUN interface, with their prefix lengths.
    pub addresses: Vec<Cidr>,
    /// The UDP port to listen on.
    pub listen_port: u16,
    /// The TUN interface's MTU.
    pub mtu: u16,
    /// Whether handshakes this side starts are hybrid; when false, classical handshakes from
    /// peers are accepted too.
    pub hybrid: bool,
    /// The record suite this side offers.
    pub suite: Suite,
    /// The re-handshake interval (default 120 s).
    pub rekey_interval: Duration,
    /// Whether to use TUN offloads and UDP GSO/GRO (default true).
    pub offload: bool,
    /// Whether to add a route through the interface for each peer's allowed IPs (`routes =
    /// "auto"`, the default, as wg-quick) or none (`"off"`).
    pub routes: bool,
    /// The routing table for those routes (`table`: a number or a name from
    /// /etc/iproute2/rt_tables; default the main table).
    pub table: Option<String>,
    /// The firewall mark of the VPN's own UDP packets (`fwmark`), for policy routing.
    pub fwmark: Option<u32>,
    /// Commands run by `sh -c` around bringing the interface up and down, `%i` replaced by
    /// the interface name (wg-quick's PreUp, PostUp, PreDown, PostDown).
    pub hooks: Hooks,
    /// The user `vpn up` becomes once the interface, its routes and the sockets exist
    /// (`user`, default `nobody`); `root` keeps root.
    pub user: String,
    /// The peers.
    pub peers: Vec<PeerEntry>,
}

/// The `pre_up`, `post_up`, `pre_down` and `post_down` commands, in order.
#[derive(Debug, Default, Clone)]
pub struct Hooks {
    /// Before the interface is created; a failure stops `vpn up`.
    pub pre_up: Vec<String>,
    /// After the interface, its addresses and routes exist; a failure stops `vpn up`.
    pub post_up: Vec<String>,
    /// Before the interface is removed.
    pub pre_down: Vec<String>,
    /// After the interface is removed.
    pub post_down: Vec<String>,
}

/// A validated peer.
pub struct PeerEntry {
    /// Its static public key.
    pub public_key: PublicKey,
    /// Where to reach it, if known.
    pub endpoint: Option<SocketAddr>,
    /// The endpoint as written when it is a DNS name (`vpn.example.com:51820`): resolved
    /// again when handshakes with the peer keep failing.
    pub endpoint_host: Option<String>,
    /// The networks it may send from and that are routed to it.
    pub allowed_ips: Vec<Cidr>,
    /// The pre-shared key, if any.
    pub psk: Option<Psk>,
    /// The file it was read from (for `vpn syncconf`, which passes it on).
    pub psk_file: Option<PathBuf>,
    /// The persistent keepalive interval, if any.
    pub persistent_keepalive: Option<Duration>,
}

impl std::fmt::Debug for PeerEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerEntry")
            .field("public_key", &self.public_key.fingerprint())
            .field("endpoint", &self.endpoint)
            .field("allowed_ips", &self.allowed_ips)
            .field("psk", &self.psk.is_some())
            .field("persistent_keepalive", &self.persistent_keepalive)
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    interface: Spanned<RawInterface>,
    #[serde(default)]
    peer: Vec<Spanned<RawPeer>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInterface {
    name: Option<Spanned<String>>,
    private_key_file: Spanned<String>,
    #[serde(default)]
    address: Vec<Spanned<String>>,
    listen_port: Option<Spanned<u16>>,
    mtu: Option<Spanned<u16>>,
    hybrid: Option<bool>,
    suite: Option<Spanned<String>>,
    rekey_interval: Option<Spanned<f64>>,
    offload: Option<bool>,
    routes: Option<Spanned<String>>,
    table: Option<Spanned<toml::Value>>,
    fwmark: Option<Spanned<i64>>,
    user: Option<Spanned<String>>,
    pre_up: Option<OneOrMany>,
    post_up: Option<OneOrMany>,
    pre_down: Option<OneOrMany>,
    post_down: Option<OneOrMany>,
}

/// A command or a list of commands.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(v: Option<Self>) -> Vec<String> {
        match v {
            None => Vec::new(),
            Some(Self::One(s)) => vec![s],
            Some(Self::Many(v)) => v,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    public_key: Spanned<String>,
    endpoint: Option<Spanned<String>>,
    #[serde(default)]
    allowed_ips: Vec<Spanned<String>>,
    preshared_key_file: Option<Spanned<String>>,
    persistent_keepalive: Option<Spanned<u64>>,
}

struct Source<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .bytes()
            .filter(|b| *b == b'\n')
            .count()
            + 1
    }

    fn err(&self, span: Range<usize>, field: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: self.path.to_path_buf(),
            line: self.line_of(span.start),
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// A path in the file, relative to the file's directory.
    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.path.parent().unwrap_or_else(|| Path::new(".")).join(p)
        }
    }
}

/// The field a TOML error is about: the last key name before the error on its line.
fn field_of_toml_error(message: &str) -> String {
    // toml's messages name unknown fields as "unknown field `x`" and missing ones as
    // "missing field `x`".
    message
        .split('`')
        .nth(1)
        .map(crate::check::key_name)
        .unwrap_or_else(|| "syntax".to_string())
}

/// A VPN file validated as text, without reading a file or resolving a name: everything
/// [`VpnConfig`] holds but the private key, the pre-shared keys and the addresses of endpoints
/// given as names, which [`resolve`](Self::resolve) reads and looks up.
#[derive(Debug)]
pub struct VpnConfigText {
    path: PathBuf,
    /// The interface name (default: the file name without `.toml`).
    pub name: String,
    /// The private key file, relative paths taken from the configuration file's directory.
    pub private_key_file: PathBuf,
    private_key_line: usize,
    /// Addresses of the TUN interface, with their prefix lengths.
    pub addresses: Vec<Cidr>,
    /// The UDP port to listen on.
    pub listen_port: u16,
    /// The TUN interface's MTU.
    pub mtu: u16,
    /// As [`VpnConfig::hybrid`].
    pub hybrid: bool,
    /// The record suite this side offers.
    pub suite: Suite,
    /// The re-handshake interval.
    pub rekey_interval: Duration,
    /// As [`VpnConfig::offload`].
    pub offload: bool,
    /// As [`VpnConfig::routes`].
    pub routes: bool,
    /// As [`VpnConfig::table`].
    pub table: Option<String>,
    /// As [`VpnConfig::fwmark`].
    pub fwmark: Option<u32>,
    /// As [`VpnConfig::hooks`].
    pub hooks: Hooks,
    /// As [`VpnConfig::user`].
    pub user: String,
    /// The peers.
    pub peers: Vec<PeerText>,
}

/// A peer validated as text (see [`VpnConfigText`]).
#[derive(Debug)]
pub struct PeerText {
    /// Its static public key.
    pub public_key: PublicKey,
    public_key_line: usize,
    /// Its endpoint as written: an address, or a name with a port.
    pub endpoint: Option<String>,
    endpoint_line: usize,
    /// The networks it may send from and that are routed to it.
    pub allowed_ips: Vec<Cidr>,
    /// The pre-shared key file, relative paths taken from the configuration file's directory.
    pub preshared_key_file: Option<PathBuf>,
    psk_line: usize,
    /// The persistent keepalive interval, if any.
    pub persistent_keepalive: Option<Duration>,
}

impl VpnConfig {
    /// Read and validate the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_path_buf(),
            line: 0,
            field: "file".into(),
            message: format!("cannot read it: {e}"),
        })?;
        Self::parse(path, &text)
    }

    /// Validate `text`, the contents of `path` (used in messages and to resolve key files):
    /// [`VpnConfigText::parse`], then [`VpnConfigText::resolve`], so a mistake in the text is
    /// reported before a missing file or an unknown name.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        VpnConfigText::parse(path, text)?.resolve()
    }
}

impl VpnConfigText {
    /// Validate `text`, the contents of `path` (named in errors; relative key file paths are
    /// taken from its directory), touching neither the file system nor DNS. Stops at the first
    /// mistake, located at its line and field.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let src = Source { path, text };
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(1, |s| src.line_of(s.start));
            let message = e.message().trim().to_string();
            ConfigError {
                path: path.to_path_buf(),
                line,
                field: field_of_toml_error(&message),
                message: format!(
                    "{message} (fields: interface.private_key_file, address, listen_port, mtu, \
                     hybrid, suite, rekey_interval, offload, name, routes, table, fwmark, user, \
                     pre_up, post_up, pre_down, post_down; peer.public_key, endpoint, \
                     allowed_ips, preshared_key_file, persistent_keepalive)"
                ),
            }
        })?;
        let iface_span = raw.interface.span();
        let iface = raw.interface.into_inner();

        let name = match iface.name {
            Some(n) => {
                let span = n.span();
                let n = n.into_inner();
                check_name(&n).map_err(|m| src.err(span, "interface.name", m))?;
                n
            }
            None => {
                let stem = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or("skvpn0")
                    .to_string();
                check_name(&stem).map_err(|m| {
                    src.err(
                        iface_span.clone(),
                        "interface.name",
                        format!("{m}; the file name is used when `name` is not set"),
                    )
                })?;
                stem
            }
        };

        let private_key_file = src.resolve(iface.private_key_file.get_ref());
        let private_key_line = src.line_of(iface.private_key_file.span().start);

        let mut addresses = Vec::new();
        for a in &iface.address {
            addresses.push(a.get_ref().parse::<Cidr>().map_err(|e| {
                src.err(
                    a.span(),
                    "interface.address",
                    format!("{:?}: {e}", a.get_ref()),
                )
            })?);
        }
        if addresses.is_empty() {
            return Err(src.err(
                iface_span,
                "interface.address",
                "missing: give the interface at least one address, e.g. address = [\"10.8.0.1/24\"]",
            ));
        }
        let mtu = match iface.mtu {
            Some(m) if !(576..=9000).contains(m.get_ref()) => {
                return Err(src.err(m.span(), "interface.mtu", "must be between 576 and 9000"))
            }
            Some(m) => m.into_inner(),
            None => DEFAULT_MTU,
        };
        let suite = match iface.suite {
            Some(s) => Suite::from_name(s.get_ref()).ok_or_else(|| {
                let names: Vec<&str> = Suite::ALL.iter().map(|s| s.name()).collect();
                src.err(
                    s.span(),
                    "interface.suite",
                    format!(
                        "unknown suite {:?}; choose one of: {}",
                        s.get_ref(),
                        names.join(", ")
                    ),
                )
            })?,
            None => Suite::default_for_this_cpu(),
        };
        let rekey_interval = match iface.rekey_interval {
            Some(r) => {
                let secs = *r.get_ref();
                if !(0.5..=3600.0).contains(&secs) {
                    return Err(src.err(
                        r.span(),
                        "interface.rekey_interval",
                        "seconds between handshakes must be between 0.5 and 3600 (default 120)",
                    ));
                }
                Duration::from_secs_f64(secs)
            }
            None => Duration::from_secs(120),
        };

        let mut peers = Vec::new();
        let mut seen_keys = std::collections::HashSet::new();
        for (i, p) in raw.peer.into_iter().enumerate() {
            let n = i + 1;
            let peer_span = p.span();
            let p = p.into_inner();
            let field = |f: &str| format!("peer[{n}].{f}");
            let public_key: PublicKey =
                p.public_key.get_ref().parse().map_err(|e| {
                    src.err(p.public_key.span(), &field("public_key"), format!("{e}"))
                })?;
            if !seen_keys.insert(public_key) {
                return Err(src.err(
                    p.public_key.span(),
                    &field("public_key"),
                    "the same peer is listed twice; merge the two [[peer]] sections",
                ));
            }
            if let Some(e) = &p.endpoint {
                check_endpoint(e.get_ref())
                    .map_err(|m| src.err(e.span(), &field("endpoint"), m))?;
            }
            let mut allowed_ips = Vec::new();
            for a in &p.allowed_ips {
                allowed_ips.push(a.get_ref().parse::<Cidr>().map_err(|e| {
                    src.err(
                        a.span(),
                        &field("allowed_ips"),
                        format!("{:?}: {e}", a.get_ref()),
                    )
                })?);
            }
            if allowed_ips.is_empty() {
                return Err(src.err(
                    peer_span,
                    &field("allowed_ips"),
                    "missing: list the networks this peer may use, e.g. allowed_ips = [\"10.8.0.2/32\"]",
                ));
            }
            let persistent_keepalive = match &p.persistent_keepalive {
                Some(k) if *k.get_ref() == 0 => None,
                Some(k) if *k.get_ref() > 3600 => {
                    return Err(src.err(
                        k.span(),
                        &field("persistent_keepalive"),
                        "seconds must be at most 3600 (0 or absent: off)",
                    ))
                }
                Some(k) => Some(Duration::from_secs(*k.get_ref())),
                None => None,
            };
            peers.push(PeerText {
                public_key,
                public_key_line: src.line_of(p.public_key.span().start),
                endpoint_line: p
                    .endpoint
                    .as_ref()
                    .map_or(0, |e| src.line_of(e.span().start)),
                endpoint: p.endpoint.map(Spanned::into_inner),
                allowed_ips,
                psk_line: p
                    .preshared_key_file
                    .as_ref()
                    .map_or(0, |f| src.line_of(f.span().start)),
                preshared_key_file: p.preshared_key_file.map(|f| src.resolve(f.get_ref())),
                persistent_keepalive,
            });
        }

        let routes = match &iface.routes {
            None => true,
            Some(r) => match r.get_ref().as_str() {
                "auto" => true,
                "off" => false,
                other => {
                    return Err(src.err(
                        r.span(),
                        "interface.routes",
                        format!("{other:?}: write \"auto\" (a route for each peer's allowed_ips) or \"off\""),
                    ))
                }
            },
        };
        let table = match &iface.table {
            None => None,
            Some(t) => Some(match t.get_ref() {
                toml::Value::Integer(n) if (1..=i64::from(u32::MAX)).contains(n) => n.to_string(),
                toml::Value::String(s)
                    if !s.is_empty()
                        && s.chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c)) =>
                {
                    s.clone()
                }
                _ => {
                    return Err(src.err(
                        t.span(),
                        "interface.table",
                        "a table number (1 to 4294967295) or a name from /etc/iproute2/rt_tables",
                    ))
                }
            }),
        };
        let fwmark = match &iface.fwmark {
            None => None,
            Some(m) if *m.get_ref() == 0 => None,
            Some(m) => Some(u32::try_from(*m.get_ref()).map_err(|_| {
                src.err(
                    m.span(),
                    "interface.fwmark",
                    "a mark from 1 to 4294967295 (0: none)",
                )
            })?),
        };
        let user = match &iface.user {
            None => "nobody".to_string(),
            Some(u) => {
                let name = u.get_ref();
                if name.is_empty()
                    || name.len() > 32
                    || !name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                {
                    return Err(src.err(
                        u.span(),
                        "interface.user",
                        format!("{name:?} is not a user name (\"root\" keeps root)"),
                    ));
                }
                name.clone()
            }
        };
        let hooks = Hooks {
            pre_up: OneOrMany::into_vec(iface.pre_up),
            post_up: OneOrMany::into_vec(iface.post_up),
            pre_down: OneOrMany::into_vec(iface.pre_down),
            post_down: OneOrMany::into_vec(iface.post_down),
        };

        Ok(Self {
            path: path.to_path_buf(),
            name,
            private_key_file,
            private_key_line,
            addresses,
            listen_port: iface.listen_port.map_or(DEFAULT_PORT, |p| p.into_inner()),
            mtu,
            hybrid: iface.hybrid.unwrap_or(true),
            suite,
            rekey_interval,
            offload: iface.offload.unwrap_or(true),
            routes,
            table,
            fwmark,
            hooks,
            user,
            peers,
        })
    }

    fn err(&self, line: usize, field: String, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: self.path.clone(),
            line,
            field,
            message: message.into(),
        }
    }

    /// Read the private key and the pre-shared keys, and resolve endpoints given as names:
    /// the configuration [`VpnConfig::parse`] returns. Stops at the first failure, located at
    /// the line of the field that names the file or the endpoint.
    pub fn resolve(self) -> Result<VpnConfig, ConfigError> {
        let identity = read_private_key(&self.private_key_file).map_err(|e| {
            self.err(
                self.private_key_line,
                "interface.private_key_file".into(),
                format!(
                    "{e} (make one with: sessionkey keygen -o {})",
                    self.private_key_file.display()
                ),
            )
        })?;
        let mut peers = Vec::with_capacity(self.peers.len());
        for (i, p) in self.peers.iter().enumerate() {
            let field = |f: &str| format!("peer[{}].{f}", i + 1);
            if p.public_key == *identity.public_key() {
                return Err(self.err(
                    p.public_key_line,
                    field("public_key"),
                    "this is the interface's own key; give the peer's public key",
                ));
            }
            let endpoint = match &p.endpoint {
                Some(e) => Some(
                    resolve_endpoint(e)
                        .map_err(|m| self.err(p.endpoint_line, field("endpoint"), m))?,
                ),
                None => None,
            };
            let psk = match &p.preshared_key_file {
                Some(f) => Some(
                    read_psk(f)
                        .map_err(|m| self.err(p.psk_line, field("preshared_key_file"), m))?,
                ),
                None => None,
            };
            peers.push(PeerEntry {
                public_key: p.public_key,
                endpoint,
                endpoint_host: p
                    .endpoint
                    .clone()
                    .filter(|e| e.parse::<SocketAddr>().is_err()),
                allowed_ips: p.allowed_ips.clone(),
                psk,
                psk_file: p.preshared_key_file.clone(),
                persistent_keepalive: p.persistent_keepalive,
            });
        }
        Ok(VpnConfig {
            name: self.name,
            identity: Arc::new(identity),
            addresses: self.addresses,
            listen_port: self.listen_port,
            mtu: self.mtu,
            hybrid: self.hybrid,
            suite: self.suite,
            rekey_interval: self.rekey_interval,
            offload: self.offload,
            routes: self.routes,
            table: self.table,
            fwmark: self.fwmark,
            hooks: self.hooks,
            user: self.user,
            peers,
        })
    }
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 15
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!(
            "{name:?} is not a valid interface name: 1 to 15 letters, digits, '-', '_' or '.'"
        ));
    }
    Ok(())
}

/// What can be checked of an endpoint without resolving it: an address, or a name with a
/// port.
fn check_endpoint(s: &str) -> Result<(), String> {
    if s.parse::<SocketAddr>().is_err() && !s.contains(':') {
        return Err(format!(
            "{s:?} has no port; write HOST:PORT, e.g. \"198.51.100.2:{DEFAULT_PORT}\""
        ));
    }
    Ok(())
}

fn resolve_endpoint(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    check_endpoint(s)?;
    s.to_socket_addrs()
        .map_err(|e| format!("cannot resolve {s:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{s:?} resolves to no address"))
}

/// A pre-shared key file: 32 random bytes in base64, mode 0600.
fn read_psk(path: &Path) -> Result<Psk, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{} is readable by group or others; fix it with: chmod 600 {}",
            path.display(),
            path.display()
        ));
    }
    let text = Zeroizing::new(
        std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?,
    );
    let key = crate::psk::decode(&text).map_err(|e| match e {
        PskTextError::NotBase64 => format!(
            "{} is not base64; make one with: (umask 077; head -c 32 /dev/urandom | base64 > FILE)",
            path.display()
        ),
        PskTextError::Length(_) => format!("{} must hold exactly 32 bytes", path.display()),
    })?;
    Ok(Psk::from_bytes(*key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sessionkey_proto::crypto::SystemRandom;
    use sessionkey_proto::keys::write_keypair;

    struct Dir(PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn setup(tag: &str) -> (Dir, String) {
        let dir = std::env::temp_dir().join(format!("sk-vpn-config-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let me = Identity::generate(&mut SystemRandom).unwrap();
        write_keypair(&dir.join("me.key"), &me, "me").unwrap();
        let peer = Identity::generate(&mut SystemRandom).unwrap();
        (Dir(dir), peer.public_key().to_line("peer"))
    }

    fn parse(dir: &Dir, text: &str) -> Result<VpnConfig, ConfigError> {
        VpnConfig::parse(&dir.0.join("wg-test.toml"), text)
    }

    #[test]
    fn a_complete_config_parses_with_defaults() {
        let (dir, peer) = setup("ok");
        let c = parse(
            &dir,
            &format!(
                "[interface]\nprivate_key_file = \"me.key\"\naddress = [\"10.8.0.1/24\", \"fd08::1/64\"]\n\n\
                 [[peer]]\npublic_key = \"{peer}\"\nendpoint = \"192.0.2.2:51820\"\n\
                 allowed_ips = [\"10.8.0.2/32\"]\npersistent_keepalive = 25\n"
            ),
        )
        .unwrap();
        assert_eq!(c.name, "wg-test");
        assert_eq!(
            (c.listen_port, c.mtu, c.hybrid, c.offload),
            (51820, 1420, true, true)
        );
        assert_eq!(c.rekey_interval, Duration::from_secs(120));
        assert_eq!(c.addresses.len(), 2);
        assert_eq!(
            c.peers[0].persistent_keepalive,
            Some(Duration::from_secs(25))
        );
        assert!(!format!("{c:?}").contains("psk: Some"));
        assert!(c.routes && c.table.is_none() && c.fwmark.is_none());
        assert!(c.hooks.post_up.is_empty());
        assert_eq!(c.peers[0].endpoint_host, None);
    }

    #[test]
    fn routing_fields_and_hooks_parse() {
        let (dir, peer) = setup("routing");
        let c = parse(
            &dir,
            &format!(
                "[interface]\nprivate_key_file = \"me.key\"\naddress = [\"10.8.0.1/24\"]\n\
                 routes = \"off\"\ntable = 1234\nfwmark = 51820\npre_up = \"true\"\n\
                 post_down = [\"echo %i\", \"true\"]\n\n\
                 [[peer]]\npublic_key = \"{peer}\"\nendpoint = \"localhost:51820\"\n\
                 allowed_ips = [\"10.8.0.2/32\"]\n"
            ),
        )
        .unwrap();
        assert!(!c.routes);
        assert_eq!(c.table.as_deref(), Some("1234"));
        assert_eq!(c.fwmark, Some(51820));
        assert_eq!(c.hooks.pre_up, ["true"]);
        assert_eq!(c.hooks.post_down, ["echo %i", "true"]);
        assert_eq!(c.peers[0].endpoint_host.as_deref(), Some("localhost:51820"));
        assert!(c.peers[0].endpoint.is_some());
    }

    #[test]
    fn the_text_step_reads_no_file_and_resolve_locates_what_it_reads() {
        let (dir, peer) = setup("text");
        let text = format!(
            "[interface]\nprivate_key_file = \"missing.key\"\naddress = [\"10.8.0.1/24\"]\n\n\
             [[peer]]\npublic_key = \"{peer}\"\nendpoint = \"vpn.example.invalid:51820\"\n\
             allowed_ips = [\"10.8.0.2/32\"]\npreshared_key_file = \"missing.psk\"\n"
        );
        let path = dir.0.join("wg-test.toml");
        let t = VpnConfigText::parse(&path, &text).unwrap();
        assert_eq!(t.private_key_file, dir.0.join("missing.key"));
        assert_eq!(
            t.peers[0].preshared_key_file,
            Some(dir.0.join("missing.psk"))
        );
        assert_eq!(
            t.peers[0].endpoint.as_deref(),
            Some("vpn.example.invalid:51820")
        );
        let e = t.resolve().unwrap_err();
        assert_eq!(
            (e.line, e.field.as_str()),
            (2, "interface.private_key_file")
        );
        // A mistake in the text is reported before the missing key file.
        let e = parse(&dir, &text.replace("10.8.0.2/32", "10.8.0.2/33")).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (8, "peer[1].allowed_ips"));
        // With the key there, the missing pre-shared key is next (an address endpoint: no
        // DNS).
        let text = text
            .replace("missing.key", "me.key")
            .replace("vpn.example.invalid", "192.0.2.2");
        let e = VpnConfigText::parse(&path, &text)
            .unwrap()
            .resolve()
            .unwrap_err();
        assert_eq!(
            (e.line, e.field.as_str()),
            (9, "peer[1].preshared_key_file")
        );
    }

    #[test]
    fn mistakes_name_line_and_field() {
        let (dir, peer) = setup("bad");
        let head = "[interface]\nprivate_key_file = \"me.key\"\naddress = [\"10.8.0.1/24\"]\n";
        let cases = [
            (format!("{head}mtu = 100\n"), 4, "interface.mtu"),
            (format!("{head}suite = \"des\"\n"), 4, "interface.suite"),
            (format!("{head}rekey_interval = 0.1\n"), 4, "interface.rekey_interval"),
            (
                format!("{head}\n[[peer]]\npublic_key = \"nope\"\nallowed_ips = [\"10.8.0.2/32\"]\n"),
                6,
                "peer[1].public_key",
            ),
            (
                format!("{head}\n[[peer]]\npublic_key = \"{peer}\"\nendpoint = \"192.0.2.2\"\nallowed_ips = [\"10.8.0.2/32\"]\n"),
                7,
                "peer[1].endpoint",
            ),
            (
                format!("{head}\n[[peer]]\npublic_key = \"{peer}\"\nallowed_ips = [\"10.8.0.300/32\"]\n"),
                7,
                "peer[1].allowed_ips",
            ),
            (
                "[interface]\nprivate_key_file = \"me.key\"\n".to_string(),
                1,
                "interface.address",
            ),
            (format!("{head}lisen_port = 5\n"), 4, "lisen_port"),
            // Found by the vpn_config fuzz target: an empty key made an empty field name.
            (format!("\"\" = 1\n{head}"), 1, "\"\""),
            (format!("{head}routes = \"yes\"\n"), 4, "interface.routes"),
            (format!("{head}table = \"a b\"\n"), 4, "interface.table"),
            (format!("{head}fwmark = -1\n"), 4, "interface.fwmark"),
            (
                "[interface]\nprivate_key_file = \"other.key\"\naddress = [\"10.8.0.1/24\"]\n".into(),
                2,
                "interface.private_key_file",
            ),
        ];
        for (text, line, field) in cases {
            let e = parse(&dir, &text).unwrap_err();
            assert_eq!((e.line, e.field.as_str()), (line, field), "{e}\n{text}");
            let shown = e.to_string();
            assert!(
                shown.contains(&format!("wg-test.toml:{line}: {field}: ")),
                "{shown}"
            );
        }
    }
}
