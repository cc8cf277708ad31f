//! Shared set-up for the messaging tests: devices with prekeys, bundles, established sessions.
#![allow(dead_code)]

use sessionkey_proto::crypto::SystemRandom;
use sessionkey_proto::msg::{
    Address, Device, Envelope, KemPrekey, MsgError, OneTimePrekey, PrekeyBundle, Session,
    SignedPrekey, Timestamp, Trust,
};
use sessionkey_proto::suite::Suite;

/// The time the tests run at (the core never reads a clock).
pub(crate) const NOW: Timestamp = Timestamp::from_unix_secs(1_750_000_000);

pub(crate) fn addr(s: &str) -> Address {
    Address::new(s).unwrap()
}

/// A responder device with published prekeys.
pub(crate) struct Bob {
    pub(crate) device: Device,
    pub(crate) addr: Address,
    pub(crate) signed: SignedPrekey,
    pub(crate) one_time: Vec<OneTimePrekey>,
    pub(crate) kem: Vec<KemPrekey>,
    pub(crate) last_resort: KemPrekey,
}

impl Bob {
    pub(crate) fn new(one_time: usize, kem: usize) -> Self {
        let mut device = Device::generate(&mut SystemRandom).unwrap();
        let signed = device.new_signed_prekey(NOW, &mut SystemRandom).unwrap();
        let one_time = device
            .new_one_time_prekeys(one_time, &mut SystemRandom)
            .unwrap();
        let kem = device.new_kem_prekeys(kem, NOW).unwrap();
        let last_resort = device.new_last_resort_kem_prekey(NOW).unwrap();
        Self {
            device,
            addr: addr("bob/1"),
            signed,
            one_time,
            kem,
            last_resort,
        }
    }

    /// A bundle as the relay hands it out: one-time prekey `opk` if given, KEM prekey `kem` if
    /// given, else the last-resort one.
    pub(crate) fn bundle(&self, opk: Option<usize>, kem: Option<usize>) -> PrekeyBundle {
        PrekeyBundle {
            identity: *self.device.identity(),
            signed_prekey: self.signed,
            one_time_prekey: opk.map(|i| self.one_time[i]),
            kem_prekey: kem.map_or_else(|| self.last_resort.clone(), |i| self.kem[i].clone()),
        }
    }
}

pub(crate) struct Alice {
    pub(crate) device: Device,
    pub(crate) addr: Address,
}

impl Alice {
    pub(crate) fn new() -> Self {
        Self {
            device: Device::generate(&mut SystemRandom).unwrap(),
            addr: addr("alice/1"),
        }
    }

    pub(crate) fn initiate(&self, bob: &Bob, bundle: &PrekeyBundle, suite: Suite) -> Session {
        Session::initiate(
            &self.device,
            &self.addr,
            &bob.addr,
            bundle,
            Trust::OnFirstUse,
            suite,
            &mut SystemRandom,
        )
        .unwrap()
    }
}

pub(crate) fn initial(bytes: &[u8]) -> sessionkey_proto::msg::InitialMessage {
    match Envelope::parse(bytes).unwrap() {
        Envelope::Initial(i) => i,
        other => panic!("expected an initial message, got {other:?}"),
    }
}

/// Bob accepts the setup carried by `bytes`.
pub(crate) fn respond(
    bob: &mut Bob,
    alice: &Alice,
    bytes: &[u8],
) -> Result<(Session, Vec<u8>), MsgError> {
    let env = Envelope::parse(bytes)?;
    let Envelope::Initial(initial) = env else {
        return Err(MsgError::InvalidMessage("not an initial message"));
    };
    Session::respond(
        &mut bob.device,
        &bob.addr,
        &alice.addr,
        &initial,
        Trust::OnFirstUse,
        NOW,
        &mut SystemRandom,
    )
}

/// Parse and decrypt at `now`.
pub(crate) fn deliver_at(
    session: &mut Session,
    bytes: &[u8],
    now: Timestamp,
) -> Result<Vec<u8>, MsgError> {
    session.decrypt(&Envelope::parse(bytes)?, now, &mut SystemRandom)
}

pub(crate) fn deliver(session: &mut Session, bytes: &[u8]) -> Result<Vec<u8>, MsgError> {
    deliver_at(session, bytes, NOW)
}

/// A session both sides have used: Alice wrote, Bob answered, Alice read the answer.
pub(crate) fn established(suite: Suite) -> (Session, Session) {
    let mut bob = Bob::new(1, 1);
    let alice = Alice::new();
    let mut a = alice.initiate(&bob, &bob.bundle(Some(0), Some(0)), suite);
    let first = a.encrypt(b"hello").unwrap();
    let (mut b, text) = respond(&mut bob, &alice, &first).unwrap();
    assert_eq!(text, b"hello");
    let reply = b.encrypt(b"hi").unwrap();
    assert_eq!(deliver(&mut a, &reply).unwrap(), b"hi");
    (a, b)
}
