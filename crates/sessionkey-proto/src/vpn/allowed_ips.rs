//! Cryptokey routing (WireGuard paper section 2): a longest-prefix-match table from
//! networks to peers, and the addresses of an IP packet.
//!
//! Outbound, a packet goes to the peer whose allowed networks hold its destination.
//! Inbound, a packet that authenticated as peer P is delivered only if its inner source is
//! in P's networks: a peer cannot speak for addresses it was not given.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IP network: an address and a prefix length (`10.0.0.0/24`, `fd00::/64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a network text did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}; expected ADDRESS/PREFIX such as 10.0.0.0/24 or fd00::/64")]
pub struct ParseCidrError(&'static str);

impl Cidr {
    /// A network; fails if `prefix` is longer than the address.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, ParseCidrError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(ParseCidrError("prefix longer than the address"));
        }
        Ok(Self { addr, prefix })
    }

    /// The address as written (host bits kept: an interface address is one).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The network: the address with its host bits cleared.
    pub fn network(&self) -> Self {
        let addr = match self.addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(mask4(u32::from(a), self.prefix))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(mask6(u128::from(a), self.prefix))),
        };
        Self {
            addr,
            prefix: self.prefix,
        }
    }

    /// Whether `ip` is in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                mask4(u32::from(n), self.prefix) == mask4(u32::from(a), self.prefix)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                mask6(u128::from(n), self.prefix) == mask6(u128::from(a), self.prefix)
            }
            _ => false,
        }
    }
}

fn mask4(a: u32, prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        a & (u32::MAX << (32 - u32::from(prefix.min(32))))
    }
}

fn mask6(a: u128, prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        a & (u128::MAX << (128 - u32::from(prefix.min(128))))
    }
}

impl FromStr for Cidr {
    type Err = ParseCidrError;

    /// `ADDRESS/PREFIX`, or a bare address (a /32 or /128).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (
                a,
                Some(
                    p.parse::<u8>()
                        .map_err(|_| ParseCidrError("the prefix length is not a number"))?,
                ),
            ),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| ParseCidrError("not an IP address"))?;
        let prefix = prefix.unwrap_or(if addr.is_ipv4() { 32 } else { 128 });
        Self::new(addr, prefix)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A longest-prefix-match table from networks to values (peers).
///
/// One hash map per prefix length in use, searched from the longest: a lookup costs one
/// hash probe per distinct prefix length (usually one or two), and allocates nothing.
#[derive(Debug, Clone)]
pub struct AllowedIps<T> {
    v4: Vec<(u8, HashMap<u32, T>)>,
    v6: Vec<(u8, HashMap<u128, T>)>,
}

impl<T> Default for AllowedIps<T> {
    fn default() -> Self {
        Self {
            v4: Vec::new(),
            v6: Vec::new(),
        }
    }
}

impl<T> AllowedIps<T> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Route `net` (host bits ignored) to `value`; returns the value it replaces, if the
    /// same network was routed before.
    pub fn insert(&mut self, net: Cidr, value: T) -> Option<T> {
        let net = net.network();
        match net.addr {
            IpAddr::V4(a) => insert_len(&mut self.v4, net.prefix, u32::from(a), value),
            IpAddr::V6(a) => insert_len(&mut self.v6, net.prefix, u128::from(a), value),
        }
    }

    /// The value of the longest network holding `ip`.
    pub fn get(&self, ip: IpAddr) -> Option<&T> {
        match ip {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4
                    .iter()
                    .find_map(|(len, map)| map.get(&mask4(a, *len)))
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6
                    .iter()
                    .find_map(|(len, map)| map.get(&mask6(a, *len)))
            }
        }
    }

    /// Whether no network is routed.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Whether `packet`, opened from `peer`, may be delivered (cryptokey routing, inbound):
    /// its inner source must route back to `peer` (longest prefix), so a peer cannot speak
    /// for addresses given to another. A packet too short to carry a source is refused.
    /// The I/O layer calls this after every open; keepalives (empty) never reach it.
    pub fn inbound_allowed(&self, packet: &[u8], peer: &T) -> bool
    where
        T: PartialEq,
    {
        packet_source(packet).and_then(|s| self.get(s)) == Some(peer)
    }
}

fn insert_len<K: std::hash::Hash + Eq, T>(
    table: &mut Vec<(u8, HashMap<K, T>)>,
    prefix: u8,
    key: K,
    value: T,
) -> Option<T> {
    let pos = match table.binary_search_by(|(len, _)| prefix.cmp(len)) {
        Ok(pos) => pos,
        Err(pos) => {
            table.insert(pos, (prefix, HashMap::new()));
            pos
        }
    };
    table[pos].1.insert(key, value)
}

/// The source address of an IPv4 or IPv6 packet, if it is long enough to have one.
pub fn packet_source(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => {
            let b: [u8; 4] = packet[12..16].try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(b)))
        }
        6 if packet.len() >= 40 => {
            let b: [u8; 16] = packet[8..24].try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

/// The destination address of an IPv4 or IPv6 packet, if it is long enough to have one.
pub fn packet_destination(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => {
            let b: [u8; 4] = packet[16..20].try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(b)))
        }
        6 if packet.len() >= 40 => {
            let b: [u8; 16] = packet[24..40].try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}
