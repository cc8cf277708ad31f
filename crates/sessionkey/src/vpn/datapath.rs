//! The two data threads, one per direction, so both cores work:
//!
//! - **outbound**: TUN read (with offloads: up to 64 KiB of TCP segments in one read, split
//!   into packets by tun-rs) -> route by destination -> seal in place -> gather runs for UDP
//!   GSO -> send;
//! - **inbound**: UDP receive (recvmmsg, each message possibly GRO-coalesced) -> find the
//!   session by receiver index -> open in place -> check the inner source against the peer's
//!   allowed IPs -> TUN write (coalesced again by tun-rs where offloads are on). Handshake
//!   messages are parsed and their mac1 checked where they lie in the receive buffer
//!   ([`prescreen`]); only those that pass are copied into the handshake thread's bounded
//!   queue. Cookie replies are opened here (one AEAD open, no public-key work).
//!
//! Both threads arm peers' timers as they seal and open; when a deadline comes nearer than
//! the handshake thread's, they wake it ([`TimerWake`](super::device::TimerWake)). When the
//! first packet under a responder's new session confirms it, the inbound thread sends the
//! packets kept for that peer at once.
//!
//! Buffers are allocated once per thread; nothing is allocated per packet, except a copy
//! of a packet kept while its peer's handshake runs.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::{Duration, Instant};

use quinn_udp::RecvMeta;
use sessionkey_proto::record::datagram::{peek_receiver_index, HEADER_LEN};
use sessionkey_proto::vpn::message::{self, Message};
use sessionkey_proto::vpn::{packet_destination, prescreen, Prescreen, SealError};
use tun_rs::GROTable;

use super::device::{Device, PeerState, Table, MAX_STAGED};
use super::tun::{BATCH, VNET_HDR_LEN};
use super::udp::GsoBatch;

/// Tag length of every suite.
const TAG_LEN: usize = 16;
/// Handshake messages waiting at most; more are dropped (and count toward load).
pub(crate) const HANDSHAKE_QUEUE: usize = 1024;

/// Work for the handshake thread.
pub(crate) enum Job {
    /// A handshake message (initiation or response, mac1 checked) from `from`.
    Message {
        /// The datagram.
        bytes: Vec<u8>,
        /// Its source.
        from: SocketAddr,
    },
    /// A peer wants a handshake or a keepalive; look at the peers now.
    Wake,
}

/// The largest packet a slot holds: header, an inner packet of the MTU (at least 1500 for
/// safety), tag.
pub(crate) fn slot_len(mtu: u16) -> usize {
    HEADER_LEN + usize::from(mtu).max(1500) + TAG_LEN
}

/// TUN -> UDP. Returns when the device stops.
pub(crate) fn outbound(dev: &Device, hs: &SyncSender<Job>) -> io::Result<()> {
    let slot = slot_len(dev.mtu);
    let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; slot]).collect();
    let mut sizes = vec![0usize; BATCH];
    let mut original = vec![0u8; VNET_HDR_LEN + 65_536];
    let mut batch = GsoBatch::new(dev.udp.max_gso_segments(), slot);
    let mut errors = 0u32;
    while !dev.stopping() {
        let n = match dev.tun.recv_multiple_intr(
            &mut original,
            &mut bufs,
            &mut sizes,
            HEADER_LEN,
            &dev.tun_interrupt,
        ) {
            Ok(n) => {
                errors = 0;
                n
            }
            Err(e) if dev.stopping() => {
                tracing::debug!("TUN read ended: {e}");
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // A malformed offload header is one bad packet; a dead device repeats.
                errors += 1;
                tracing::debug!("TUN read failed: {e}");
                if errors > 1000 || e.raw_os_error() == Some(nix::libc::EBADFD) {
                    return Err(e);
                }
                continue;
            }
        };
        let now = Instant::now();
        let mut wake = false;
        let table = dev.table();
        for (buf, &len) in bufs.iter_mut().zip(&sizes).take(n) {
            if HEADER_LEN + len + TAG_LEN > buf.len() {
                continue;
            }
            let Some((peer, slot)) = packet_destination(&buf[HEADER_LEN..HEADER_LEN + len])
                .and_then(|dst| table.route(dst))
                .and_then(|id| Some((id, table.peer(id)?)))
            else {
                dev.count(&dev.counters.no_route);
                continue;
            };
            let mut st = slot.lock();
            let sealed = st
                .peer
                .seal(now, &mut buf[..HEADER_LEN + len + TAG_LEN], len);
            wake |= st.peer.wants_initiation() || st.peer.wants_keepalive();
            if let Some(t) = st.peer.poll_timeout() {
                wake |= dev.timers.arm(t);
            }
            match sealed {
                Ok((packet_len, to)) => {
                    drop(st);
                    batch.push(&dev.udp, to, &buf[..packet_len]);
                }
                Err(SealError::NoSession) => {
                    if st.staged.len() < MAX_STAGED {
                        st.staged
                            .push_back(buf[HEADER_LEN..HEADER_LEN + len].to_vec());
                    } else {
                        dev.count(&dev.counters.staged_dropped);
                    }
                    wake = true;
                }
                Err(SealError::NoEndpoint) => dev.count(&dev.counters.no_endpoint),
                Err(e) => tracing::debug!("cannot seal for peer {}: {e}", peer + 1),
            }
        }
        batch.flush(&dev.udp);
        if wake {
            let _ = hs.try_send(Job::Wake);
        }
    }
    Ok(())
}

/// UDP -> TUN. Returns when the device stops.
pub(crate) fn inbound(dev: &Device, hs: &SyncSender<Job>) -> io::Result<()> {
    let gro = dev.udp.gro_segments();
    let buf_len = if gro > 1 { 65_536 } else { slot_len(dev.mtu) };
    let mut storage: Vec<Vec<u8>> = (0..quinn_udp::BATCH_SIZE)
        .map(|_| vec![0u8; buf_len])
        .collect();
    let mut meta = vec![RecvMeta::default(); quinn_udp::BATCH_SIZE];
    // GRO coalescing in tun-rs appends segments to the first packet of a flow: room for 64 KiB.
    let mut tun_bufs: Vec<Vec<u8>> = (0..BATCH)
        .map(|_| Vec::with_capacity(VNET_HDR_LEN + 65_536))
        .collect();
    let mut gro_table = GROTable::default();
    let mut flush_buf = vec![0u8; slot_len(dev.mtu)];
    let mac1 = dev.mac1.clone();
    while !dev.stopping() {
        let n = {
            let mut iovs: Vec<IoSliceMut<'_>> =
                storage.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            dev.udp.recv(&mut iovs, &mut meta)?
        };
        if n == 0 {
            dev.udp.wait(false, Duration::from_millis(100))?;
            continue;
        }
        let now = Instant::now();
        let mut out = 0;
        let mut wake = false;
        let table = dev.table();
        for (buf, m) in storage.iter_mut().zip(&meta).take(n) {
            let stride = if m.stride == 0 { m.len } else { m.stride };
            for seg in buf[..m.len].chunks_mut(stride.max(1)) {
                match prescreen(&mac1, seg) {
                    Prescreen::Data => {}
                    Prescreen::Handshake => {
                        to_handshaker(dev, hs, seg, m.addr);
                        continue;
                    }
                    Prescreen::CookieReply { receiver_index } => {
                        cookie_reply(dev, &table, now, seg, receiver_index);
                        continue;
                    }
                    Prescreen::BadMac => {
                        dev.count(&dev.counters.bad_mac);
                        continue;
                    }
                    Prescreen::Malformed => {
                        dev.count(&dev.counters.malformed);
                        continue;
                    }
                }
                let Some((peer, slot)) = peek_receiver_index(seg)
                    .and_then(|i| dev.peer_of_index(i))
                    .and_then(|id| Some((id, table.peer(id)?)))
                else {
                    dev.count(&dev.counters.unknown_index);
                    continue;
                };
                let payload = {
                    let mut st = slot.lock();
                    let opened = st.peer.open(now, m.addr, seg);
                    if let Some(t) = st.peer.poll_timeout() {
                        wake |= dev.timers.arm(t);
                    }
                    wake |= st.peer.wants_initiation();
                    match opened {
                        Ok(p) => {
                            // A responder's session confirmed by this packet: what waited
                            // for it leaves now, not at the handshake thread's next pass.
                            if !st.staged.is_empty() {
                                flush_staged(dev, &mut st, now, &mut flush_buf);
                            }
                            p
                        }
                        Err(_) => {
                            dev.count(&dev.counters.rejected);
                            continue;
                        }
                    }
                };
                if payload.is_empty() {
                    continue; // a keepalive
                }
                // Cryptokey routing, inbound: the inner source must be this peer's.
                if !table.inbound_allowed(payload, peer) {
                    dev.count(&dev.counters.spoofed_source);
                    continue;
                }
                if out == tun_bufs.len() {
                    write_tun(dev, &mut gro_table, &mut tun_bufs[..out]);
                    out = 0;
                }
                let b = &mut tun_bufs[out];
                b.clear();
                b.resize(VNET_HDR_LEN, 0);
                b.extend_from_slice(payload);
                out += 1;
            }
        }
        if out > 0 {
            write_tun(dev, &mut gro_table, &mut tun_bufs[..out]);
        }
        if wake {
            let _ = hs.try_send(Job::Wake);
        }
    }
    Ok(())
}

/// Seal and send the packets kept for a peer while it had no session, as far as it has one
/// now; `buf` holds one sealed packet. Returns whether any is still waiting.
pub(crate) fn flush_staged(dev: &Device, st: &mut PeerState, now: Instant, buf: &mut [u8]) -> bool {
    while let Some(packet) = st.staged.pop_front() {
        let len = packet.len();
        if HEADER_LEN + len + TAG_LEN > buf.len() {
            dev.count(&dev.counters.staged_dropped);
            continue;
        }
        buf[HEADER_LEN..HEADER_LEN + len].copy_from_slice(&packet);
        match st
            .peer
            .seal(now, &mut buf[..HEADER_LEN + len + TAG_LEN], len)
        {
            Ok((n, to)) => dev.udp.send(to, &buf[..n], None),
            Err(SealError::NoSession) => {
                st.staged.push_front(packet);
                return true;
            }
            Err(_) => dev.count(&dev.counters.staged_dropped),
        }
    }
    false
}

/// A cookie reply, handled where it was received: the peer whose handshake it answers
/// opens it (one AEAD open); one for no index of ours, or that does not open, is dropped
/// and counted.
fn cookie_reply(dev: &Device, table: &Table, now: Instant, seg: &[u8], receiver_index: u32) {
    let Some((peer, slot)) = dev
        .peer_of_index(receiver_index)
        .and_then(|id| Some((id, table.peer(id)?)))
    else {
        dev.count(&dev.counters.cookie_refused);
        return;
    };
    let Ok(Message::CookieReply(c)) = message::parse(seg) else {
        dev.count(&dev.counters.malformed);
        return;
    };
    let result = slot.lock().peer.handle_cookie_reply(now, &c);
    match result {
        Ok(()) => tracing::debug!("cookie reply for peer {}: it is under load", peer + 1),
        Err(_) => dev.count(&dev.counters.cookie_refused),
    }
}

fn write_tun(dev: &Device, gro: &mut GROTable, bufs: &mut [Vec<u8>]) {
    if let Err(e) = dev.tun.send_multiple(gro, bufs, VNET_HDR_LEN) {
        tracing::debug!("TUN write failed: {e}");
    }
}

fn to_handshaker(dev: &Device, hs: &SyncSender<Job>, seg: &[u8], from: SocketAddr) {
    if dev.queued.load(Ordering::Relaxed) >= HANDSHAKE_QUEUE {
        dev.count(&dev.counters.handshake_queue_full);
        return;
    }
    let job = Job::Message {
        bytes: seg.to_vec(),
        from,
    };
    // Counted before it is sent, so the handshake thread never takes one off first.
    dev.queued.fetch_add(1, Ordering::Relaxed);
    if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = hs.try_send(job) {
        dev.queued.fetch_sub(1, Ordering::Relaxed);
        dev.count(&dev.counters.handshake_queue_full);
    }
}
