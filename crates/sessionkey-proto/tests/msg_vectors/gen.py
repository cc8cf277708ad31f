#!/usr/bin/env python3
"""Independent implementation of sessionkey's messaging key schedule and formats
(docs/MESSAGING.md), written from the document, not from the Rust code. It writes
vectors.json beside this file; tests/msg_vectors.rs checks the Rust code against it byte
for byte.

    pip install cryptography    # 46 or later: ML-KEM-768 from a seed
    python3 gen.py

Inputs are derived from fixed labels, except the ML-KEM encapsulations: `cryptography`
offers no deterministic encapsulation, so each run draws a fresh ciphertext and shared
secret and records them as vector inputs (the recipient's KEM key comes from a recorded
64-byte seed, so the Rust test decapsulates the recorded ciphertext itself). Regenerating
therefore changes the conversation vectors; the other groups stay the same.
"""

import hashlib
import hmac
import json
import os
import struct

import cryptography
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

# --- constants (docs/MESSAGING.md) ---------------------------------------------------

PQXDH_INFO = b"sessionkey-msg-v1 PQXDH X25519 SHA-256 ML-KEM-768"
ROOT_INFO = b"sessionkey-msg-v1 root ratchet"
MESSAGE_INFO = b"sessionkey-msg-v1 message key"
AD_LABEL = b"sessionkey-msg-v1 associated data"
IDENTITY_LABEL = b"sessionkey-msg-v1 identity binding"
PREKEY_LABEL = b"sessionkey-msg-v1 prekey"

T_ED25519_IDENTITY = 0x01
T_X25519_IDENTITY = 0x02
T_SIGNED_PREKEY = 0x03
T_ONE_TIME_PREKEY = 0x04
T_KEM_ONE_TIME = 0x05
T_KEM_LAST_RESORT = 0x06
T_BASE_KEY = 0x07
T_RATCHET_KEY = 0x08
T_KEM_CIPHERTEXT = 0x09

HEADER_VERSION = 0x01
PREAMBLE_VERSION = 0x01
BUNDLE_VERSION = 0x01
ENVELOPE_INITIAL = 0x01
ENVELOPE_RATCHET = 0x02

# suite id -> (name, key length, AEAD class)
SUITES = {
    1: ("aes-128-gcm", 16, AESGCM),
    2: ("aes-256-gcm", 32, AESGCM),
    3: ("chacha20-poly1305", 32, ChaCha20Poly1305),
}


def det(label, n=32):
    """Fixed pseudo-random bytes for a label (vector inputs only)."""
    out = b""
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(b"sessionkey msg vectors %d %s" % (counter, label.encode())).digest()
        counter += 1
    return out[:n]


def u32(n):
    return struct.pack(">I", n)


def hkdf(salt, ikm, info, length):
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def hmac256(key, data):
    return hmac.new(key, data, hashlib.sha256).digest()


def x_pub(secret):
    k = x25519.X25519PrivateKey.from_private_bytes(secret)
    return k.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def x_dh(secret, public):
    k = x25519.X25519PrivateKey.from_private_bytes(secret)
    return k.exchange(x25519.X25519PublicKey.from_public_bytes(public))


# --- key schedule ----------------------------------------------------------------------


def pqxdh_sk(dh1, dh2, dh3, dh4, ss):
    ikm = b"\xff" * 32 + dh1 + dh2 + dh3 + (dh4 or b"") + ss
    return hkdf(b"\x00" * 32, ikm, PQXDH_INFO, 32)


def kdf_rk(rk, dh_out):
    okm = hkdf(rk, dh_out, ROOT_INFO, 64)
    return okm[:32], okm[32:]


def kdf_ck(ck):
    return hmac256(ck, b"\x02"), hmac256(ck, b"\x01")  # (next chain key, message key)


def message_key_material(mk, suite):
    _, key_len, _ = SUITES[suite]
    okm = hkdf(b"\x00" * 32, mk, MESSAGE_INFO + bytes([suite]), key_len + 12)
    return okm[:key_len], okm[key_len:]


def header_bytes(suite, ratchet_pub, pn, n):
    return bytes([HEADER_VERSION, suite, T_RATCHET_KEY]) + ratchet_pub + u32(pn) + u32(n)


def seal(mk, suite, aad, plaintext):
    key, nonce = message_key_material(mk, suite)
    return SUITES[suite][2](key).encrypt(nonce, plaintext, aad)


def open_(mk, suite, aad, ciphertext):
    key, nonce = message_key_material(mk, suite)
    return SUITES[suite][2](key).decrypt(nonce, ciphertext, aad)


# --- keys and encodings ----------------------------------------------------------------


class Device:
    def __init__(self, name):
        self.seed = det(name + " ed25519 seed")
        self.dh_secret = det(name + " x25519 identity")
        self.signing = ed25519.Ed25519PrivateKey.from_private_bytes(self.seed)
        self.sign_pub = self.signing.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.dh_pub = x_pub(self.dh_secret)
        keys = bytes([T_ED25519_IDENTITY]) + self.sign_pub + bytes([T_X25519_IDENTITY]) + self.dh_pub
        self.identity = keys + self.signing.sign(IDENTITY_LABEL + keys)
        assert len(self.identity) == 130

    def sign_prekey(self, key_id, key_type, key):
        return self.signing.sign(PREKEY_LABEL + u32(key_id) + bytes([key_type]) + key)


def associated_data(id_a, id_b, addr_a, addr_b, base_pub, kem_type, kem_pub, kem_ct):
    return (
        AD_LABEL + id_a + id_b
        + bytes([len(addr_a)]) + addr_a + bytes([len(addr_b)]) + addr_b
        + bytes([T_BASE_KEY]) + base_pub
        + bytes([kem_type]) + kem_pub + bytes([T_KEM_CIPHERTEXT]) + kem_ct
    )


# --- the Double Ratchet, spec section 3 ------------------------------------------------


class Ratchet:
    def __init__(self, suite, ad_hash):
        self.suite = suite
        self.ad_hash = ad_hash
        self.dhs = None  # secret bytes
        self.dhr = None
        self.rk = None
        self.cks = None
        self.ckr = None
        self.ns = self.nr = self.pn = 0
        self.skipped = {}

    @classmethod
    def alice(cls, suite, ad_hash, sk, bob_spk_pub, ratchet_secret):
        r = cls(suite, ad_hash)
        r.dhs = ratchet_secret
        r.dhr = bob_spk_pub
        r.rk, r.cks = kdf_rk(sk, x_dh(r.dhs, r.dhr))
        return r

    @classmethod
    def bob(cls, suite, ad_hash, sk, spk_secret):
        r = cls(suite, ad_hash)
        r.dhs = spk_secret
        r.rk = sk
        return r

    def encrypt(self, plaintext):
        self.cks, mk = kdf_ck(self.cks)
        header = header_bytes(self.suite, x_pub(self.dhs), self.pn, self.ns)
        self.ns += 1
        return header + seal(mk, self.suite, self.ad_hash + header, plaintext)

    def _skip(self, until):
        while self.ckr is not None and self.nr < until:
            self.ckr, mk = kdf_ck(self.ckr)
            self.skipped[(self.dhr, self.nr)] = mk
            self.nr += 1

    def decrypt(self, message, next_ratchet_secret):
        """Returns (plaintext, whether next_ratchet_secret was used)."""
        header, body = message[:43], message[43:]
        assert header[0] == HEADER_VERSION and header[1] == self.suite and header[2] == T_RATCHET_KEY
        dh = header[3:35]
        pn, n = struct.unpack(">II", header[35:43])
        aad = self.ad_hash + header
        if (dh, n) in self.skipped:
            return open_(self.skipped.pop((dh, n)), self.suite, aad, body), False
        stepped = False
        if dh != self.dhr:
            self._skip(pn)
            self.pn = self.ns
            self.ns = self.nr = 0
            self.dhr = dh
            self.rk, self.ckr = kdf_rk(self.rk, x_dh(self.dhs, self.dhr))
            self.dhs = next_ratchet_secret
            self.rk, self.cks = kdf_rk(self.rk, x_dh(self.dhs, self.dhr))
            stepped = True
        self._skip(n)
        self.ckr, mk = kdf_ck(self.ckr)
        self.nr += 1
        return open_(mk, self.suite, aad, body), stepped


# --- vector groups ---------------------------------------------------------------------


def pure_vectors():
    out = {"kdf_rk": [], "kdf_ck": [], "message_keys": [], "pqxdh_kdf": [], "header": []}
    for i in range(4):
        rk, dh = det("rk %d" % i), det("dh %d" % i)
        nrk, ck = kdf_rk(rk, dh)
        out["kdf_rk"].append({"rk": rk.hex(), "dh_output": dh.hex(), "next_rk": nrk.hex(), "ck": ck.hex()})
    for i in range(2):
        ck = det("ck %d" % i)
        steps = []
        c = ck
        for _ in range(5):
            c, mk = kdf_ck(c)
            steps.append({"mk": mk.hex(), "next_ck": c.hex()})
        out["kdf_ck"].append({"ck": ck.hex(), "steps": steps})
    for suite in SUITES:
        mk = det("mk %d" % suite)
        key, nonce = message_key_material(mk, suite)
        aad, pt = det("aad %d" % suite, 75), b"message key vector %d" % suite
        out["message_keys"].append({
            "mk": mk.hex(), "suite": suite, "key": key.hex(), "nonce": nonce.hex(),
            "aad": aad.hex(), "plaintext": pt.hex(), "ciphertext": seal(mk, suite, aad, pt).hex(),
        })
    for i, with_dh4 in enumerate([True, False]):
        d = [det("pqxdh %d dh%d" % (i, j)) for j in range(1, 5)]
        ss = det("pqxdh %d ss" % i)
        dh4 = d[3] if with_dh4 else None
        out["pqxdh_kdf"].append({
            "dh1": d[0].hex(), "dh2": d[1].hex(), "dh3": d[2].hex(),
            "dh4": dh4.hex() if dh4 else None, "kem_secret": ss.hex(),
            "root_key": pqxdh_sk(d[0], d[1], d[2], dh4, ss).hex(),
        })
    for suite, pn, n in [(2, 0, 0), (3, 7, 0x01020304), (1, 0xFFFFFFFF, 1)]:
        pub = x_pub(det("header key %d" % suite))
        out["header"].append({
            "suite": suite, "ratchet_key": pub.hex(), "previous_chain_len": pn, "n": n,
            "bytes": header_bytes(suite, pub, pn, n).hex(),
        })
    return out


def conversation(name, suite, one_time_count, use_one_time, last_resort, script):
    """A whole exchange. `script` is a list of ("send", who, text) and ("recv", who, i), where
    i counts the messages sent so far, from 0."""
    alice, bob = Device(name + " alice"), Device(name + " bob")
    addr_a, addr_b = b"alice@" + name.encode() + b"/1", b"bob@" + name.encode() + b"/7"
    spk_secret = det(name + " spk")
    spk_pub = x_pub(spk_secret)
    opk_secrets = [det(name + " opk %d" % i) for i in range(one_time_count)]
    kem_seed = det(name + " kem seed", 64)
    kem_key = mlkem.MLKEM768PrivateKey.from_seed_bytes(kem_seed)
    kem_pub = kem_key.public_key().public_bytes_raw()
    kem_type = T_KEM_LAST_RESORT if last_resort else T_KEM_ONE_TIME
    kem_ss, kem_ct = kem_key.public_key().encapsulate()
    assert kem_key.decapsulate(kem_ct) == kem_ss

    spk_id, kem_id = 1, 1
    opk_id = use_one_time  # 1-based index into the one-time prekeys, or None
    spk_enc = u32(spk_id) + bytes([T_SIGNED_PREKEY]) + spk_pub + bob.sign_prekey(spk_id, T_SIGNED_PREKEY, spk_pub)
    kem_enc = u32(kem_id) + bytes([kem_type]) + kem_pub + bob.sign_prekey(kem_id, kem_type, kem_pub)
    if opk_id:
        opk_secret = opk_secrets[opk_id - 1]
        opk_enc = b"\x01" + u32(opk_id) + bytes([T_ONE_TIME_PREKEY]) + x_pub(opk_secret)
    else:
        opk_secret = None
        opk_enc = b"\x00"
    bundle = bytes([BUNDLE_VERSION]) + bob.identity + spk_enc + opk_enc + kem_enc

    base_secret = det(name + " alice base key")
    base_pub = x_pub(base_secret)
    dh1 = x_dh(alice.dh_secret, spk_pub)
    dh2 = x_dh(base_secret, bob.dh_pub)
    dh3 = x_dh(base_secret, spk_pub)
    dh4 = x_dh(base_secret, x_pub(opk_secret)) if opk_secret else None
    # Bob's side of the same four agreements.
    assert dh1 == x_dh(spk_secret, alice.dh_pub) and dh2 == x_dh(bob.dh_secret, base_pub)
    assert dh3 == x_dh(spk_secret, base_pub)
    assert dh4 is None or dh4 == x_dh(opk_secret, base_pub)
    sk = pqxdh_sk(dh1, dh2, dh3, dh4, kem_ss)
    ad = associated_data(alice.identity, bob.identity, addr_a, addr_b, base_pub, kem_type, kem_pub, kem_ct)
    ad_hash = hashlib.sha256(ad).digest()
    preamble = (
        bytes([PREAMBLE_VERSION]) + alice.identity + bytes([T_BASE_KEY]) + base_pub
        + u32(spk_id) + (b"\x01" + u32(opk_id) if opk_id else b"\x00" + u32(0)) + u32(kem_id)
        + bytes([T_KEM_CIPHERTEXT]) + kem_ct
    )

    alice_rng = [det(name + " alice ratchet 0")]
    sides = {
        "alice": Ratchet.alice(suite, ad_hash, sk, spk_pub, alice_rng[0]),
        "bob": Ratchet.bob(suite, ad_hash, sk, spk_secret),
    }
    awaiting_reply = True
    rng_count = {"alice": 1, "bob": 0}
    sent, events = [], []
    for step in script:
        if step[0] == "send":
            _, who, text = step
            inner = sides[who].encrypt(text)
            if who == "alice" and awaiting_reply:
                env = bytes([ENVELOPE_INITIAL]) + preamble + inner
            else:
                env = bytes([ENVELOPE_RATCHET]) + inner
            sent.append((who, text, env, inner))
            events.append({"op": "send", "from": who, "plaintext": text.hex(), "envelope": env.hex()})
        else:
            _, who, index = step
            sender, text, env, inner = sent[index]
            assert sender != who
            fresh = det("%s %s ratchet %d" % (name, who, rng_count[who]))
            plaintext, stepped = sides[who].decrypt(inner, fresh)
            assert plaintext == text
            rng = b""
            if stepped:
                rng = fresh
                rng_count[who] += 1
            if who == "alice":
                awaiting_reply = False
            events.append({"op": "recv", "to": who, "message": index, "rng": rng.hex()})
    return {
        "name": name,
        "suite": suite,
        "alice": {"ed25519_seed": alice.seed.hex(), "x25519_identity": alice.dh_secret.hex(),
                  "identity": alice.identity.hex(), "address": addr_a.hex()},
        "bob": {"ed25519_seed": bob.seed.hex(), "x25519_identity": bob.dh_secret.hex(),
                "identity": bob.identity.hex(), "address": addr_b.hex(),
                "signed_prekey": spk_secret.hex(),
                "one_time_prekeys": [s.hex() for s in opk_secrets],
                "kem_seed": kem_seed.hex(), "kem_public": kem_pub.hex(),
                "kem_last_resort": last_resort},
        "bundle": bundle.hex(),
        "one_time_prekey_used": opk_id,
        "alice_base_key": base_secret.hex(),
        "alice_base_key_public": base_pub.hex(),
        "alice_first_ratchet_key": alice_rng[0].hex(),
        "kem_ciphertext": kem_ct.hex(),
        "kem_secret": kem_ss.hex(),
        "dh1": dh1.hex(), "dh2": dh2.hex(), "dh3": dh3.hex(), "dh4": dh4.hex() if dh4 else None,
        "root_key": sk.hex(),
        "associated_data": ad.hex(),
        "ad_hash": ad_hash.hex(),
        "preamble": preamble.hex(),
        "events": events,
    }


def main():
    s, r = "send", "recv"
    vectors = pure_vectors()
    vectors["conversations"] = [
        # One-time prekeys of both kinds; Bob reads the second message first (a skipped key),
        # then the DH ratchet turns three times with messages kept back across chains.
        conversation("one-time", 2, 3, 2, False, [
            (s, "alice", b"first"), (s, "alice", b"second"),
            (r, "bob", 1), (r, "bob", 0),
            (s, "bob", b"reply one"), (s, "bob", b"reply two"),
            (r, "alice", 3),
            (s, "alice", b"after the ratchet"), (s, "alice", b"kept back"),
            (r, "bob", 5), (r, "alice", 2),
            (s, "bob", b"third chain"), (r, "alice", 6), (r, "bob", 4),
        ]),
        # No one-time prekey, last-resort KEM prekey, ChaCha20-Poly1305; the empty message.
        conversation("last-resort", 3, 0, None, True, [
            (s, "alice", b""), (r, "bob", 0), (s, "bob", b"pong"), (r, "alice", 1),
            (s, "alice", b"x" * 300), (r, "bob", 2),
        ]),
        # AES-128-GCM and the smallest setup.
        conversation("aes128", 1, 1, 1, False, [(s, "alice", b"hello"), (r, "bob", 0)]),
    ]
    vectors["description"] = (
        "sessionkey messaging vectors from gen.py, an independent Python implementation "
        "(cryptography %s) of docs/MESSAGING.md" % cryptography.__version__
    )
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vectors.json")
    with open(path, "w") as f:
        json.dump(vectors, f, indent=1, sort_keys=True)
        f.write("\n")
    count = sum(len(v) for k, v in vectors.items() if isinstance(v, list))
    print("wrote %d vector cases to %s" % (count, path))


if __name__ == "__main__":
    main()
