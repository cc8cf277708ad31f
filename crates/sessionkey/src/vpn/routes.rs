//! Routes and hooks, as wg-quick does them (docs/VPN.md, "Routing and hooks"): a route
//! through the interface for each peer's allowed IPs (`routes = "auto"`), in the main table
//! or `table`, and the `pre_up`, `post_up`, `pre_down` and `post_down` commands with `%i`
//! for the interface name.
//!
//! Routes are set with iproute2's `ip`, as wg-quick does. The kernel deletes a device's
//! routes with the device, so they go when the interface goes; the ones added here are
//! also deleted explicitly at down and when `vpn set` or `vpn syncconf` change the peers.

use std::collections::BTreeSet;
use std::process::Command;

use sessionkey_proto::vpn::Cidr;

use super::VpnError;

/// Where the routes go.
#[derive(Debug, Clone)]
pub(crate) struct RoutePolicy {
    /// The interface.
    pub(crate) name: String,
    /// The table (`None`: main).
    pub(crate) table: Option<String>,
    /// The interface's own prefixes: the kernel routes those already.
    pub(crate) own: Vec<Cidr>,
}

impl RoutePolicy {
    /// The prefixes to route for these allowed IPs: each network once, without the
    /// interface's own prefixes and without /0. A default route through the tunnel would
    /// also carry the tunnel's own UDP packets to the peer; route 0.0.0.0/0 with policy
    /// routing by hand (`table`, `fwmark` and `ip rule`), as wg-quick's special case does.
    pub(crate) fn wanted<'a>(&self, allowed: impl IntoIterator<Item = &'a Cidr>) -> BTreeSet<Cidr> {
        allowed
            .into_iter()
            .map(Cidr::network)
            .filter(|net| {
                if net.prefix() == 0 {
                    tracing::warn!(
                        "{}: no automatic route for {net}: it would carry the tunnel's own \
                         packets; set table and fwmark and add the rules by hand",
                        self.name
                    );
                    return false;
                }
                !self.own.iter().any(|o| o.network() == *net)
            })
            .collect()
    }

    fn ip_route(&self, verb: &str, net: &Cidr) -> Result<(), String> {
        let family = if net.addr().is_ipv4() { "-4" } else { "-6" };
        let net_text = net.to_string();
        let mut args = vec![
            family,
            "route",
            verb,
            net_text.as_str(),
            "dev",
            self.name.as_str(),
        ];
        if let Some(t) = &self.table {
            args.extend(["table", t.as_str()]);
        }
        let out = Command::new("ip")
            .args(&args)
            .output()
            .map_err(|e| format!("cannot run `ip {}`: {e} (install iproute2)", args.join(" ")))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "`ip {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Add a route for each of `nets`; returns those added. A route that exists already
    /// (the same prefix through another way) is left alone, with a warning, and is not
    /// deleted later.
    pub(crate) fn add(&self, nets: &BTreeSet<Cidr>) -> Result<BTreeSet<Cidr>, VpnError> {
        let mut added = BTreeSet::new();
        for net in nets {
            match self.ip_route("add", net) {
                Ok(()) => {
                    added.insert(*net);
                }
                Err(e) if e.contains("File exists") => {
                    tracing::warn!(
                        "{}: a route for {net} exists already; left as it is",
                        self.name
                    );
                }
                Err(e) => {
                    self.delete(&added);
                    return Err(VpnError::Route(e));
                }
            }
        }
        if !added.is_empty() {
            tracing::info!(
                "{}: routes through the interface{}: {}",
                self.name,
                self.table
                    .as_ref()
                    .map(|t| format!(" (table {t})"))
                    .unwrap_or_default(),
                added
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        Ok(added)
    }

    /// Delete the routes `nets` (best effort: the kernel deletes them with the interface).
    pub(crate) fn delete(&self, nets: &BTreeSet<Cidr>) {
        for net in nets {
            if let Err(e) = self.ip_route("del", net) {
                tracing::debug!("{}: {e}", self.name);
            }
        }
    }
}

/// Run the commands of hook `stage` with `sh -c`, `%i` replaced by the interface `name`;
/// stops at the first that fails.
pub(crate) fn run_hooks(
    stage: &'static str,
    commands: &[String],
    name: &str,
) -> Result<(), VpnError> {
    for command in commands {
        let command = command.replace("%i", name);
        tracing::info!("{name}: {stage}: {command}");
        let status = Command::new("sh").arg("-c").arg(&command).status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => {
                return Err(VpnError::Hook {
                    stage,
                    command,
                    detail: format!("exited with {s}"),
                })
            }
            Err(e) => {
                return Err(VpnError::Hook {
                    stage,
                    command,
                    detail: format!("cannot run sh: {e}"),
                })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wanted_skips_own_prefixes_default_routes_and_duplicates() {
        let c = |s: &str| s.parse::<Cidr>().unwrap();
        let policy = RoutePolicy {
            name: "skt0".into(),
            table: None,
            own: vec![c("10.8.0.1/24")],
        };
        let allowed = [
            c("10.8.0.2/32"),
            c("10.8.0.0/24"),
            c("192.168.20.1/24"),
            c("192.168.20.0/24"),
            c("0.0.0.0/0"),
            c("fd00::/64"),
        ];
        let got: Vec<String> = policy
            .wanted(&allowed)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(got, ["10.8.0.2/32", "192.168.20.0/24", "fd00::/64"]);
    }

    #[test]
    fn hooks_substitute_the_interface_name_and_stop_at_a_failure() {
        let dir = std::env::temp_dir().join(format!("sk-hooks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("out");
        let cmds = vec![
            format!("echo up %i >> {}", out.display()),
            "false".to_string(),
            format!("echo never >> {}", out.display()),
        ];
        let err = run_hooks("post_up", &cmds, "skt0").unwrap_err();
        assert!(err.to_string().contains("post_up"), "{err}");
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "up skt0\n");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
