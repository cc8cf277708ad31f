//! `record_stream`: bytes arriving on a stream [`Session`], before and after the handshake.
//!
//! Input: a mode byte, then the mode's own bytes.
//!
//! - mode % 4 == 0: a fresh server (permissive policy) reads the rest as its wire, in chunks.
//! - mode % 4 == 1: a client that sent its hello reads the rest as the responder's frames.
//! - mode % 4 == 2: an established server (classical NN) reads the rest as records.
//! - mode % 4 == 3: a script on an established pair: the client seals genuine records (data,
//!   key updates, pings, re-handshakes, close) onto a wire that the script mutates (bit
//!   flips, truncation, length prefixes, replays, raw bytes) and delivers to the server in
//!   chunks; the server's answers go to the client. So the fuzzer gets past the AEAD with
//!   genuine records and then mutates their framing.
//!
//! Bits 2-3 of the mode pick the suite; in script mode bit 4 makes the pair hybrid.
//! Besides "never panics", the harness checks that a server never delivers bytes the client
//! did not seal, in order (the delivered data is always a prefix of the sealed data), and
//! the promises of [`Session::read`] (see [`crate::receive`]).

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sessionkey_proto::handshake::Header;
use sessionkey_proto::noise::Pattern;
use sessionkey_proto::record::{MAX_BODY, MAX_FRAME};
use sessionkey_proto::session::{Session, SessionConfig};

use crate::{drain_events, header_from_byte, initiator, receive, responder, transmit, FixedRng};
use crate::{Input, SUITES};

/// Script operations (the byte is taken modulo the count).
pub mod op {
    /// Client seals data: a length byte (>= 0xf0: (b - 0xef) * 4096 bytes), then the bytes.
    pub const DATA: u8 = 0;
    /// Client: key update.
    pub const KEY_UPDATE: u8 = 1;
    /// Client: ping.
    pub const PING: u8 = 2;
    /// Client: re-handshake request.
    pub const REHANDSHAKE: u8 = 3;
    /// Client: close.
    pub const CLOSE: u8 = 4;
    /// XOR the wire byte at u16 position (mod length) with a byte.
    pub const FLIP: u8 = 5;
    /// Truncate the wire at u16 position (mod length + 1).
    pub const TRUNCATE: u8 = 6;
    /// Overwrite the length prefix of frame (byte index) with a u16.
    pub const SET_LEN: u8 = 7;
    /// Append raw bytes: a length byte, then the bytes.
    pub const RAW: u8 = 8;
    /// Deliver the wire to the server in chunks of (byte) bytes (0: all at once); its answers
    /// go to the client, whose answers start the next wire.
    pub const DELIVER: u8 = 9;
    /// Append a copy of frame (byte index): a replay.
    pub const REPLAY: u8 = 10;
    /// Advance the clock by (byte) seconds and handle timeouts on both sides.
    pub const ADVANCE: u8 = 11;
    /// The server (byte % 4): updates keys, pings, re-handshakes or closes; the client reads.
    pub const SERVER: u8 = 12;
    /// Drop (byte) bytes from the front of the wire.
    pub const DROP_FRONT: u8 = 13;
    /// Number of operations.
    pub const COUNT: u8 = 14;
}

/// Run one input.
pub fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    let mode = inp.u8();
    let suite = SUITES[usize::from(mode >> 2 & 3) % SUITES.len()];
    match mode % 4 {
        0 => fresh_server(&mut inp),
        1 => client_after_hello(&mut inp),
        2 => established_raw(&mut inp, suite),
        _ => script(&mut inp, suite, mode & 0x10 != 0),
    }
}

/// Feed `wire` into `session` in chunks of `chunk` bytes (0: all at once), processing frames
/// after each; the session's own frames are sent after each chunk and returned.
fn feed(
    session: &mut Session,
    now: Instant,
    wire: &[u8],
    chunk: usize,
    delivered: &mut Vec<u8>,
) -> Vec<u8> {
    let chunk = if chunk == 0 { wire.len().max(1) } else { chunk };
    let mut inbox = Vec::new();
    let (mut answers, mut frames) = (Vec::new(), Vec::new());
    for piece in wire.chunks(chunk) {
        inbox.extend_from_slice(piece);
        let ok = receive(session, now, &mut inbox, delivered);
        transmit(session, now, &mut answers, &mut frames);
        if !ok {
            break;
        }
    }
    answers
}

fn fresh_server(inp: &mut Input<'_>) {
    let now = Instant::now();
    let flags = inp.u8();
    let chunk = usize::from(inp.u8());
    let config = SessionConfig {
        max_record_len: if flags & 1 != 0 { 2048 } else { MAX_BODY },
        ..SessionConfig::default()
    };
    let mut server = Session::server(
        now,
        Arc::new(responder(flags & 2 != 0)),
        config,
        Box::new(FixedRng::new(2)),
    );
    let mut delivered = Vec::new();
    feed(&mut server, now, inp.rest(), chunk, &mut delivered);
    assert!(
        delivered.is_empty(),
        "a server delivered data nobody sealed"
    );
    let _ = server.handle_eof(now);
    server.handle_timeout(now + Duration::from_secs(3600));
    drain_events(&mut server);
}

fn client_after_hello(inp: &mut Input<'_>) {
    let now = Instant::now();
    let header = header_from_byte(inp.u8());
    let chunk = usize::from(inp.u8());
    let Ok(init) = initiator(header, 1) else {
        return;
    };
    let mut client = Session::client(
        now,
        init,
        SessionConfig::default(),
        Box::new(FixedRng::new(3)),
    );
    let (mut hello, mut frames) = (Vec::new(), Vec::new());
    transmit(&mut client, now, &mut hello, &mut frames);
    let mut delivered = Vec::new();
    feed(&mut client, now, inp.rest(), chunk, &mut delivered);
    assert!(
        delivered.is_empty(),
        "a client delivered data nobody sealed"
    );
    let _ = client.handle_eof(now);
    drain_events(&mut client);
}

/// An established pair, classical NN unless `hybrid`.
pub struct Pair {
    /// The clock.
    pub now: Instant,
    /// The initiator.
    pub client: Session,
    /// The responder.
    pub server: Session,
}

impl Pair {
    /// Handshake in memory; panics if it does not complete.
    pub fn established(
        suite: sessionkey_proto::suite::Suite,
        hybrid: bool,
        client_config: SessionConfig,
        server_config: SessionConfig,
    ) -> Self {
        let now = Instant::now();
        let header = Header {
            pattern: Pattern::NN,
            suite,
            hybrid,
            psk: false,
        };
        let init = initiator(header, 1).expect("initiator");
        let mut client = Session::client(now, init, client_config, Box::new(FixedRng::new(3)));
        let mut server = Session::server(
            now,
            Arc::new(responder(false)),
            server_config,
            Box::new(FixedRng::new(4)),
        );
        for _ in 0..4 {
            let (mut c2s, mut s2c, mut frames) = (Vec::new(), Vec::new(), Vec::new());
            transmit(&mut client, now, &mut c2s, &mut frames);
            receive(&mut server, now, &mut c2s, &mut Vec::new());
            transmit(&mut server, now, &mut s2c, &mut frames);
            receive(&mut client, now, &mut s2c, &mut Vec::new());
        }
        assert!(client.is_established() && server.is_established());
        Self {
            now,
            client,
            server,
        }
    }
}

fn established_raw(inp: &mut Input<'_>, suite: sessionkey_proto::suite::Suite) {
    let flags = inp.u8();
    let chunk = usize::from(inp.u8());
    let server_config = SessionConfig {
        max_record_len: [MAX_BODY, 64, 100, 1024][usize::from(flags & 3)],
        idle_timeout: (flags & 4 != 0).then(|| Duration::from_secs(5)),
        ..SessionConfig::default()
    };
    let mut pair = Pair::established(suite, false, SessionConfig::default(), server_config);
    let now = pair.now;
    let mut delivered = Vec::new();
    feed(&mut pair.server, now, inp.rest(), chunk, &mut delivered);
    assert!(
        delivered.is_empty(),
        "a server delivered data nobody sealed"
    );
    let _ = pair.server.handle_eof(now);
    drain_events(&mut pair.server);
}

/// The script's wire: bytes, and where the genuine frames were put.
#[derive(Default)]
struct Wire {
    bytes: Vec<u8>,
    frames: Vec<Range<usize>>,
}

fn script(inp: &mut Input<'_>, suite: sessionkey_proto::suite::Suite, hybrid: bool) {
    let flags = inp.u8();
    let client_config = SessionConfig {
        key_update_records: if flags & 1 != 0 {
            u64::from(flags >> 5) + 1
        } else {
            1 << 20
        },
        ..SessionConfig::default()
    };
    let max_record_len = if hybrid {
        [MAX_BODY, 1300, 2048, 4096]
    } else {
        [MAX_BODY, 64, 100, 1024]
    }[usize::from(flags >> 1 & 3)];
    let server_config = SessionConfig {
        max_record_len,
        idle_timeout: (flags & 8 != 0).then(|| Duration::from_secs(5)),
        max_lifetime: (flags & 16 != 0).then(|| Duration::from_secs(30)),
        ..SessionConfig::default()
    };
    let Pair {
        mut now,
        mut client,
        mut server,
    } = Pair::established(suite, hybrid, client_config, server_config);

    let mut wire = Wire::default();
    let mut sealed = Vec::new();
    let mut delivered = Vec::new();
    let mut out = vec![0u8; MAX_FRAME];
    let mut client_inbox = Vec::new();

    for _ in 0..64 {
        if inp.is_empty() {
            break;
        }
        match inp.u8() % op::COUNT {
            op::DATA => {
                let b = inp.u8();
                let len = if b >= 0xf0 {
                    usize::from(b - 0xef) * 4096
                } else {
                    usize::from(b)
                };
                let data = inp.bytes_padded(len);
                let mut rest = &data[..];
                while !rest.is_empty() {
                    let Ok((consumed, n)) = client.seal_data(now, rest, &mut out) else {
                        break;
                    };
                    wire.frames.push(wire.bytes.len()..wire.bytes.len() + n);
                    wire.bytes.extend_from_slice(&out[..n]);
                    sealed.extend_from_slice(&rest[..consumed]);
                    rest = &rest[consumed..];
                }
                drain_events(&mut client);
            }
            code @ (op::KEY_UPDATE | op::PING | op::REHANDSHAKE | op::CLOSE) => {
                match code {
                    op::KEY_UPDATE => client.update_keys(),
                    op::PING => client.ping(),
                    op::REHANDSHAKE => client.rehandshake(),
                    _ => client.close(),
                }
                transmit(&mut client, now, &mut wire.bytes, &mut wire.frames);
            }
            op::FLIP => {
                let pos = usize::from(inp.u16());
                let x = inp.u8();
                if !wire.bytes.is_empty() {
                    let len = wire.bytes.len();
                    wire.bytes[pos % len] ^= x;
                }
            }
            op::TRUNCATE => {
                let pos = usize::from(inp.u16()) % (wire.bytes.len() + 1);
                wire.bytes.truncate(pos);
            }
            op::SET_LEN => {
                let idx = usize::from(inp.u8());
                let v = inp.u16().to_be_bytes();
                if let Some(f) = wire.frames.get(idx % wire.frames.len().max(1)) {
                    if let Some(p) = wire.bytes.get_mut(f.start..f.start + 2) {
                        p.copy_from_slice(&v);
                    }
                }
            }
            op::RAW => {
                let n = usize::from(inp.u8());
                wire.bytes.extend_from_slice(inp.bytes(n));
            }
            op::DELIVER => {
                let chunk = usize::from(inp.u8());
                let bytes = std::mem::take(&mut wire.bytes);
                wire.frames.clear();
                let answers = feed(&mut server, now, &bytes, chunk, &mut delivered);
                check_prefix(&sealed, &delivered);
                client_inbox.extend_from_slice(&answers);
                receive(&mut client, now, &mut client_inbox, &mut Vec::new());
                transmit(&mut client, now, &mut wire.bytes, &mut wire.frames);
            }
            op::REPLAY => {
                let idx = usize::from(inp.u8());
                if let Some(f) = wire.frames.get(idx % wire.frames.len().max(1)).cloned() {
                    if let Some(copy) = wire.bytes.get(f).map(<[u8]>::to_vec) {
                        wire.frames
                            .push(wire.bytes.len()..wire.bytes.len() + copy.len());
                        wire.bytes.extend_from_slice(&copy);
                    }
                }
            }
            op::ADVANCE => {
                now += Duration::from_secs(u64::from(inp.u8()));
                client.handle_timeout(now);
                server.handle_timeout(now);
                transmit(&mut client, now, &mut wire.bytes, &mut wire.frames);
                let (mut s2c, mut frames) = (Vec::new(), Vec::new());
                transmit(&mut server, now, &mut s2c, &mut frames);
                client_inbox.extend_from_slice(&s2c);
                receive(&mut client, now, &mut client_inbox, &mut Vec::new());
            }
            op::SERVER => {
                match inp.u8() % 4 {
                    0 => server.update_keys(),
                    1 => server.ping(),
                    2 => server.rehandshake(),
                    _ => server.close(),
                }
                let (mut s2c, mut frames) = (Vec::new(), Vec::new());
                transmit(&mut server, now, &mut s2c, &mut frames);
                client_inbox.extend_from_slice(&s2c);
                receive(&mut client, now, &mut client_inbox, &mut Vec::new());
                transmit(&mut client, now, &mut wire.bytes, &mut wire.frames);
            }
            _ => {
                let n = usize::from(inp.u8()).min(wire.bytes.len());
                wire.bytes.drain(..n);
            }
        }
    }

    // Whatever is still on the wire arrives, then the stream ends.
    let bytes = std::mem::take(&mut wire.bytes);
    feed(&mut server, now, &bytes, 0, &mut delivered);
    check_prefix(&sealed, &delivered);
    let clean = server.handle_eof(now).is_ok();
    if clean {
        assert!(
            server.is_peer_closed(),
            "end of stream accepted as clean without the peer's close"
        );
    }
    drain_events(&mut server);
    let _ = server.info();
}

fn check_prefix(sealed: &[u8], delivered: &[u8]) {
    assert!(
        sealed.starts_with(delivered),
        "the server delivered {} bytes that are not a prefix of the {} bytes the client sealed",
        delivered.len(),
        sealed.len()
    );
}

/// Genuine seeds for this target: real hellos, a refusal, records, and scripts.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    use sessionkey_proto::crypto::SystemRandom;
    use sessionkey_proto::handshake::{Initiator, Refusal};
    use sessionkey_proto::keys::Psk;

    let mut seeds = Vec::new();
    // Mode 0: a framed hello, as a fresh server receives it.
    for (i, hb) in [0x02u8, 0x43, 0x14, 0x80].into_iter().enumerate() {
        let header = header_from_byte(hb);
        let init = Initiator::new(
            header,
            header
                .pattern
                .initiator_has_static()
                .then(crate::client_identity),
            header
                .pattern
                .responder_premessage()
                .then(|| *crate::server_identity().public_key()),
            header.psk.then(|| Psk::from_bytes(crate::PSK)),
        )
        .expect("initiator");
        let mut client = Session::client(
            Instant::now(),
            init,
            SessionConfig::default(),
            Box::new(SystemRandom),
        );
        let (mut wire, mut frames) = (Vec::new(), Vec::new());
        transmit(&mut client, Instant::now(), &mut wire, &mut frames);
        let flags = u8::from(header.psk) << 1;
        let mut seed = vec![0, flags, if i == 3 { 7 } else { 0 }];
        seed.extend_from_slice(&wire);
        seeds.push((format!("server-hello-{i}"), seed));
    }
    // Mode 1: a framed refusal, as the client receives it.
    let refusal = Refusal::HybridRequired.encode();
    let mut seed = vec![1, 0x03, 0, 0, refusal.len() as u8];
    seed.extend_from_slice(&refusal);
    seeds.push(("client-refusal".into(), seed));
    // Mode 2: record-shaped garbage.
    let mut seed = vec![2 | 2 << 2, 0, 0, 0, 22];
    seed.extend_from_slice(&[0x41; 22]);
    seeds.push(("established-record".into(), seed));

    // Mode 3: scripts.
    let hello = [op::DATA, 5, b'h', b'e', b'l', b'l', b'o'];
    let mut s = vec![3, 0];
    s.extend_from_slice(&hello);
    s.extend_from_slice(&[op::DELIVER, 0]);
    seeds.push(("script-data".into(), s));

    let mut s = vec![3 | 1 << 2, 0];
    s.extend_from_slice(&hello);
    s.extend_from_slice(&[op::KEY_UPDATE, op::PING]);
    s.extend_from_slice(&hello);
    s.extend_from_slice(&[op::REHANDSHAKE, op::DELIVER, 3]);
    s.extend_from_slice(&hello);
    s.extend_from_slice(&[op::CLOSE, op::DELIVER, 0]);
    seeds.push(("script-controls-close".into(), s));

    let mut s = vec![3 | 0x10, 0];
    s.extend_from_slice(&[op::REHANDSHAKE, op::DELIVER, 0, op::DELIVER, 0]);
    s.extend_from_slice(&hello);
    s.extend_from_slice(&[op::SERVER, 2, op::DELIVER, 0, op::CLOSE, op::DELIVER, 0]);
    seeds.push(("script-hybrid-rehandshake".into(), s));

    let mut s = vec![3 | 2 << 2, 1 | 2 << 5];
    for _ in 0..4 {
        s.extend_from_slice(&hello);
    }
    s.extend_from_slice(&[op::SET_LEN, 1, 0, 40, op::DELIVER, 1]);
    seeds.push(("script-auto-update-set-len".into(), s));

    let mut s = vec![3, 0];
    s.extend_from_slice(&hello);
    s.extend_from_slice(&[op::REPLAY, 0, op::FLIP, 0, 3, 1, op::DELIVER, 5]);
    seeds.push(("script-replay-flip".into(), s));

    let mut s = vec![3, 8 | 16];
    s.extend_from_slice(&[op::DATA, 0xf0]);
    s.extend_from_slice(&[0x61; 4096]);
    s.extend_from_slice(&[op::TRUNCATE, 0x10, 0]);
    s.extend_from_slice(&[op::RAW, 3, 1, 2, 3, op::ADVANCE, 6, op::DELIVER, 0]);
    seeds.push(("script-idle-truncate".into(), s));

    let mut s = vec![3, 0];
    s.extend_from_slice(&hello);
    s.extend_from_slice(&[op::SERVER, 3, op::DROP_FRONT, 2, op::DELIVER, 0]);
    seeds.push(("script-server-close-drop".into(), s));
    seeds
}
