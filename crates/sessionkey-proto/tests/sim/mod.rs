//! A virtual-clock pair of sessions joined by in-memory byte pipes.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use sessionkey_proto::crypto::SystemRandom;
use sessionkey_proto::handshake::{Header, Initiator, Policy, Responder};
use sessionkey_proto::keys::Identity;
use sessionkey_proto::noise::Pattern;
use sessionkey_proto::record::MAX_FRAME;
use sessionkey_proto::session::{Event, Received, Session, SessionConfig};
use sessionkey_proto::suite::Suite;
use sessionkey_proto::Error;

pub fn header(pattern: Pattern, suite: Suite, hybrid: bool) -> Header {
    Header {
        pattern,
        suite,
        hybrid,
        psk: false,
    }
}

/// One end: a session, the bytes it received but has not processed, what it delivered.
pub struct End {
    pub session: Session,
    pub inbox: Vec<u8>,
    pub delivered: Vec<u8>,
    pub events: Vec<Event>,
    pub error: Option<Error>,
}

impl End {
    fn new(session: Session) -> Self {
        Self {
            session,
            inbox: Vec::new(),
            delivered: Vec::new(),
            events: Vec::new(),
            error: None,
        }
    }

    /// Process every whole frame in the inbox.
    pub fn receive(&mut self, now: Instant) {
        loop {
            if self.error.is_some() {
                return;
            }
            match self.session.read(now, &mut self.inbox) {
                Ok(Received::Incomplete { .. }) => break,
                Ok(Received::Data { frame_len, content }) => {
                    self.delivered.extend_from_slice(&self.inbox[content]);
                    self.inbox.drain(..frame_len);
                }
                Ok(Received::Control { frame_len }) => {
                    self.inbox.drain(..frame_len);
                }
                Err(e) => self.error = Some(e),
            }
        }
        self.drain_events();
    }

    pub fn drain_events(&mut self) {
        while let Some(e) = self.session.poll_event() {
            self.events.push(e);
        }
    }
}

pub struct Pair {
    pub now: Instant,
    pub client: End,
    pub server: End,
}

impl Pair {
    pub fn new(header: Header, config: SessionConfig) -> Self {
        Self::with_configs(header, config.clone(), config)
    }

    /// A pair whose sides have their own rotation policies.
    pub fn with_configs(
        header: Header,
        config: SessionConfig,
        server_config: SessionConfig,
    ) -> Self {
        let now = Instant::now();
        let server_id = Arc::new(Identity::generate(&mut SystemRandom).unwrap());
        let client_id = Arc::new(Identity::generate(&mut SystemRandom).unwrap());
        let remote = header
            .pattern
            .responder_premessage()
            .then(|| *server_id.public_key());
        let local = header.pattern.initiator_has_static().then_some(client_id);
        let initiator = Initiator::new(header, local, remote, None).unwrap();
        let policy = Policy {
            require_hybrid: false,
            ..Policy::default()
        };
        let responder = Arc::new(Responder::new(policy, Some(server_id), None));
        let client = Session::client(now, initiator, config.clone(), Box::new(SystemRandom));
        let server = Session::server(now, responder, server_config, Box::new(SystemRandom));
        Self {
            now,
            client: End::new(client),
            server: End::new(server),
        }
    }

    /// Handshake and return the established pair.
    pub fn established(header: Header, config: SessionConfig) -> Self {
        let mut pair = Self::new(header, config);
        pair.pump();
        assert!(
            pair.client.session.is_established(),
            "{:?}",
            pair.client.error
        );
        assert!(
            pair.server.session.is_established(),
            "{:?}",
            pair.server.error
        );
        pair
    }

    /// All frames `from` wants to send, as one byte string.
    pub fn transmit(end: &mut End, now: Instant) -> Vec<u8> {
        let mut out = vec![0u8; MAX_FRAME];
        let mut wire = Vec::new();
        while let Ok(Some(n)) = end.session.poll_transmit(now, &mut out) {
            wire.extend_from_slice(&out[..n]);
        }
        end.drain_events();
        wire
    }

    /// Move bytes both ways until both sides are quiet.
    pub fn pump(&mut self) {
        for _ in 0..32 {
            let c2s = Self::transmit(&mut self.client, self.now);
            let s2c = Self::transmit(&mut self.server, self.now);
            if c2s.is_empty() && s2c.is_empty() {
                return;
            }
            self.server.inbox.extend_from_slice(&c2s);
            self.server.receive(self.now);
            self.client.inbox.extend_from_slice(&s2c);
            self.client.receive(self.now);
        }
        panic!("sessions did not go quiet");
    }

    /// Seal all of `data` on `end` into a wire byte string (control records included).
    pub fn send(end: &mut End, now: Instant, mut data: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; MAX_FRAME];
        let mut wire = Vec::new();
        while !data.is_empty() {
            let (consumed, n) = end.session.seal_data(now, data, &mut out).unwrap();
            wire.extend_from_slice(&out[..n]);
            data = &data[consumed..];
        }
        end.drain_events();
        wire
    }

    pub fn advance(&mut self, by: Duration) {
        self.now += by;
        for end in [&mut self.client, &mut self.server] {
            end.session.handle_timeout(self.now);
            end.drain_events();
        }
    }
}
