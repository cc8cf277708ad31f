//! The VPN's sans-IO parts (docs/PROTOCOL.md section 12, docs/VPN.md): UDP handshake
//! messages, MAC1/MAC2 and cookies, handshake rate limiting, cryptokey routing, and the
//! per-peer state machine with its timers. No sockets, no clock, no OS randomness: the
//! tokio layer (`sessionkey::vpn`) moves the packets and passes the time in.
//!
//! How a datagram is handled, in order:
//!
//! 1. [`prescreen`], in the receiving thread and in place: [`message::parse`] classifies
//!    it by its type byte and checks its exact length, and a handshake message's `mac1` is
//!    checked; only one that passes is copied and queued for the handshake thread.
//! 2. Data (type 4): find the peer by the receiver index, [`Peer::open`], then check the
//!    inner source against that peer's networks ([`AllowedIps::inbound_allowed`]).
//! 3. Initiation (type 1): [`HandshakeGate::screen`] (mac1; under load mac2 or a cookie
//!    reply; a rate limit per address), only then [`handshake::read_initiation`] (the
//!    Diffie-Hellman work), find the peer by the static key it proves, and
//!    [`Peer::accept_initiation`] (replay and flood checks, the response).
//! 4. Response (type 2): the gate too, then the peer of the receiver index,
//!    [`Peer::handle_response`].
//! 5. Cookie reply (type 3): the peer of the receiver index, [`Peer::handle_cookie_reply`].
//!
//! Outbound: [`AllowedIps::get`] on the destination ([`packet_destination`]) gives the peer;
//! [`Peer::seal`] the packet.

pub mod allowed_ips;
pub mod cookie;
pub mod gate;
pub mod handshake;
pub mod message;
pub mod peer;
pub mod ratelimit;

pub use allowed_ips::{packet_destination, packet_source, AllowedIps, Cidr};
pub use cookie::Mac1Verifier;
pub use gate::{prescreen, HandshakeGate, Prescreen, Screen};
pub use message::{parse, Message, MAX_HANDSHAKE_LEN};
pub use peer::{Local, Peer, PeerConfig, PeerStats, PeerStatus, SealError, Timing};

/// Bytes the VPN adds to an inner packet: the datagram header and tag (32), plus UDP (8) and
/// IPv6 (40) outside. An inner MTU of 1420 fits a 1500-byte path (WireGuard's default).
pub const OVERHEAD_IPV6: usize = crate::record::datagram::OVERHEAD + 8 + 40;
