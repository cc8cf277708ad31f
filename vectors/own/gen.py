#!/usr/bin/env python3
"""A second implementation of sessionkey's key schedules, written from docs/PROTOCOL.md and
docs/VPN.md alone (not from the Rust code): the header and its use as the Noise prologue,
the protocol names, the classical Noise IK, XX and IKpsk2 handshakes (SHA-256, X25519,
AESGCM or ChaChaPoly), the initial traffic secrets, record keys and nonces, the key-update
ratchet, re-handshake chaining with its two static terms, fingerprints, the VPN's traffic
secrets, prologue, mac1, mac2, cookie and cookie reply.

    pip install cryptography    # any recent version
    python3 vectors/own/gen.py            # writes vectors/own/schedule.json
    python3 vectors/own/gen.py --check    # CI: fails if the committed file differs

Every input is fixed (derived from labels), so the output is the same on every run and CI
diffs it against the committed file. The Rust test
crates/sessionkey-proto/src/own_vectors.rs checks every value against it. ML-KEM is not
used: `cryptography` has no deterministic encapsulation, so hybrid re-handshakes take `ss`,
`ek` and `ct` as opaque input bytes (the schedule treats them as bytes), and the hybrid
Noise handshakes are covered by the published Noise vectors (vectors/noise) and by
crates/sessionkey-proto/tests/msg_vectors (the messaging schedules, from
docs/MESSAGING.md, by the same method).
"""

import hashlib
import hmac
import json
import os
import struct
import sys

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schedule.json")


def det(label, n=32):
    """Fixed pseudo-random bytes for a label (inputs only)."""
    out = b""
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(b"sessionkey own vectors %d %s" % (counter, label.encode())).digest()
        counter += 1
    return out[:n]


def sha256(*parts):
    return hashlib.sha256(b"".join(parts)).digest()


def hkdf_expand(prk, label, n):
    return HKDFExpand(algorithm=hashes.SHA256(), length=n, info=label).derive(prk)


def hkdf_extract(salt, ikm):
    # RFC 5869: PRK = HMAC-Hash(salt, IKM)
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def x(b):
    return b.hex()


# --- PROTOCOL.md section 3: header and protocol names ------------------------------------

MAGIC = b"SKEY"
PATTERNS = {"NN": 1, "NK": 2, "XX": 3, "IK": 4, "KK": 5}
SUITES = {
    # id: (name, key length, Noise cipher, AEAD)
    1: ("aes-128-gcm", 16, "AESGCM", AESGCM),
    2: ("aes-256-gcm", 32, "AESGCM", AESGCM),
    3: ("chacha20-poly1305", 32, "ChaChaPoly", ChaCha20Poly1305),
}


def header(pattern, suite, hybrid, psk):
    flags = (1 if hybrid else 0) | (2 if psk else 0)
    return MAGIC + bytes([1, PATTERNS[pattern], suite, flags])


def protocol_name(pattern, suite, hybrid, psk):
    mods = []
    if hybrid:
        mods.append("hfs")
    if psk:
        # the psk goes at the end of the last message: psk2 for IK, psk3 for XX
        mods.append("psk%d" % {"IK": 2, "XX": 3, "NK": 2, "NN": 2, "KK": 2}[pattern])
    dh = "25519+MLKEM768" if hybrid else "25519"
    return "Noise_%s%s_%s_%s_SHA256" % (pattern, "+".join(mods), dh, SUITES[suite][2])


# --- Noise (revision 34), classical, SHA-256 ----------------------------------------------


def noise_hkdf(ck, ikm, n):
    temp = hmac.new(ck, ikm, hashlib.sha256).digest()
    outs, prev = [], b""
    for i in range(1, n + 1):
        prev = hmac.new(temp, prev + bytes([i]), hashlib.sha256).digest()
        outs.append(prev)
    return outs


class Cipher:
    def __init__(self, cipher):
        self.cipher = cipher
        self.k = None
        self.n = 0

    def nonce(self):
        if self.cipher == "AESGCM":
            return b"\0" * 4 + struct.pack(">Q", self.n)
        return b"\0" * 4 + struct.pack("<Q", self.n)

    def aead(self):
        return AESGCM(self.k) if self.cipher == "AESGCM" else ChaCha20Poly1305(self.k)

    def encrypt(self, ad, p):
        if self.k is None:
            return p
        c = self.aead().encrypt(self.nonce(), p, ad)
        self.n += 1
        return c

    def decrypt(self, ad, c):
        if self.k is None:
            return c
        p = self.aead().decrypt(self.nonce(), c, ad)
        self.n += 1
        return p


class Symmetric:
    def __init__(self, name, cipher):
        name = name.encode()
        self.h = name + b"\0" * (32 - len(name)) if len(name) <= 32 else sha256(name)
        self.ck = self.h
        self.c = Cipher(cipher)
        self.cipher = cipher

    def mix_hash(self, d):
        self.h = sha256(self.h, d)

    def mix_key(self, ikm):
        self.ck, k = noise_hkdf(self.ck, ikm, 2)
        self.c.k, self.c.n = k, 0

    def mix_key_and_hash(self, ikm):
        self.ck, th, k = noise_hkdf(self.ck, ikm, 3)
        self.mix_hash(th)
        self.c.k, self.c.n = k, 0

    def encrypt_and_hash(self, p):
        c = self.c.encrypt(self.h, p)
        self.mix_hash(c)
        return c

    def decrypt_and_hash(self, c):
        p = self.c.decrypt(self.h, c)
        self.mix_hash(c)
        return p

    def split(self):
        return noise_hkdf(self.ck, b"", 2)


def pub(priv):
    return x25519.X25519PrivateKey.from_private_bytes(priv).public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw
    )


def dh(priv, public):
    return x25519.X25519PrivateKey.from_private_bytes(priv).exchange(
        x25519.X25519PublicKey.from_public_bytes(public)
    )


PATTERN_TOKENS = {
    "IK": (["rs"], [["e", "es", "s", "ss"], ["e", "ee", "se"]]),
    "XX": ([], [["e"], ["e", "ee", "s", "es"], ["s", "se"]]),
    "NN": ([], [["e"], ["e", "ee"]]),
}


def handshake(name, pattern, cipher, prologue, s_i, s_r, e_i, e_r, psk=None, payloads=None):
    """Run both sides of a classical handshake; returns the messages, h and Split()."""
    pre, msgs = PATTERN_TOKENS[pattern]
    msgs = [list(m) for m in msgs]
    if psk is not None:
        msgs[-1].append("psk")
    payloads = payloads or [b""] * len(msgs)
    sides = []
    for initiator in (True, False):
        st = Symmetric(name, cipher)
        st.mix_hash(prologue)
        if "rs" in pre:
            st.mix_hash(pub(s_r))
        sides.append(st)
    keys = {
        True: {"s": s_i, "e": e_i, "rs": pub(s_r) if s_r else None},
        False: {"s": s_r, "e": e_r, "rs": pub(s_i) if s_i and "rs" in pre and False else None},
    }
    # What each side knows about the other, as the messages reveal it.
    remote = {True: {"s": pub(s_r) if s_r else None, "e": None},
              False: {"s": None, "e": None}}
    wire = []
    for i, tokens in enumerate(msgs):
        writer = i % 2 == 0  # True: the initiator writes
        w, r = sides[0 if writer else 1], sides[1 if writer else 0]
        mine = keys[writer]
        msg = b""

        def dh_token(tok, side_is_initiator, st, me, them):
            # tok is e.g. "es": initiator's e with responder's s.
            a, b = tok[0], tok[1]
            if side_is_initiator:
                return dh(me[a], them[b])
            return dh(me[b], them[a])

        # writer side
        wrem = remote[writer]
        reader_rem = remote[not writer]
        for tok in tokens:
            if tok == "e":
                e_pub = pub(mine["e"])
                msg += e_pub
                w.mix_hash(e_pub)
                if psk is not None:
                    w.mix_key(e_pub)
            elif tok == "s":
                msg += w.encrypt_and_hash(pub(mine["s"]))
            elif tok == "psk":
                w.mix_key_and_hash(psk)
            else:
                w.mix_key(dh_token(tok, writer, w, mine, wrem))
        msg += w.encrypt_and_hash(payloads[i])
        # reader side
        them_keys = keys[not writer]
        rest = msg
        for tok in tokens:
            if tok == "e":
                e_pub, rest = rest[:32], rest[32:]
                reader_rem["e"] = e_pub
                r.mix_hash(e_pub)
                if psk is not None:
                    r.mix_key(e_pub)
            elif tok == "s":
                n = 48 if r.c.k is not None else 32
                reader_rem["s"], rest = r.decrypt_and_hash(rest[:n]), rest[n:]
            elif tok == "psk":
                r.mix_key_and_hash(psk)
            else:
                r.mix_key(dh_token(tok, not writer, r, them_keys, reader_rem))
        assert r.decrypt_and_hash(rest) == payloads[i]
        # the writer learns nothing new; record the writer's ephemeral for its own DH later
        wrem_e = None
        wire.append(msg)
        # writer knows the reader's keys as they were revealed before
        if writer:
            remote[True]["e"] = remote[True]["e"]
    assert sides[0].h == sides[1].h
    k1, k2 = sides[0].split()
    assert (k1, k2) == tuple(sides[1].split())
    return wire, sides[0].h, k1, k2


# --- PROTOCOL.md sections 6, 7, 10 --------------------------------------------------------


def traffic(k_i2r, k_r2i, h, labels=(b"sessionkey v1 traffic i2r", b"sessionkey v1 traffic r2i",
                                    b"sessionkey v1 rehandshake")):
    prk = hkdf_extract(h, k_i2r + k_r2i)
    return [hkdf_expand(prk, l, 32) for l in labels]


def record_keys(secret, key_len):
    return (hkdf_expand(secret, b"sessionkey v1 record key", key_len),
            hkdf_expand(secret, b"sessionkey v1 record iv", 12))


def nonce(iv, n):
    return bytes(a ^ b for a, b in zip(iv, b"\0\0\0\0" + struct.pack(">Q", n)))


def ratchet(secret):
    return hkdf_expand(secret, b"sessionkey v1 key update", 32)


def key_fingerprint(secret):
    return sha256(b"sessionkey v1 key fingerprint", secret)


def session_fingerprint(h):
    return sha256(b"sessionkey v1 session fingerprint", h)


def seal_record(suite, secret, n, content, rtype):
    """A stream record (section 9): length || AEAD(key, nonce(n), aad = length, content || type)."""
    key, iv = record_keys(secret, SUITES[suite][1])
    aead = SUITES[suite][3](key)
    length = struct.pack(">H", len(content) + 1 + 16)
    return length + aead.encrypt(nonce(iv, n), content + bytes([rtype]), length)


def rehandshake(salt, s_i, s_r, requester_is_initiator, e_q, e_p, ek=b"", ct=b"", ss=b""):
    """Section 10.2, from the requester's and the peer's ephemeral private keys."""
    request = pub(e_q) + ek
    reply = pub(e_p) + ct
    ee = dh(e_q, pub(e_p))
    # The handshake initiator's side in this exchange, and the responder's.
    e_init_side, e_resp_side = (e_q, e_p) if requester_is_initiator else (e_p, e_q)
    si = dh(s_i, pub(e_resp_side)) if s_i else b""
    sr = dh(s_r, pub(e_init_side)) if s_r else b""
    transcript = sha256(request, reply)
    prk = hkdf_extract(salt, ee + si + sr + ss + transcript)
    out = {
        "request": x(request), "reply": x(reply), "ee": x(ee), "si": x(si), "sr": x(sr),
        "transcript": x(transcript),
    }
    i2r, r2i, nxt = [hkdf_expand(prk, l, 32) for l in (
        b"sessionkey v1 traffic i2r", b"sessionkey v1 traffic r2i", b"sessionkey v1 rehandshake")]
    out.update({"traffic_i2r": x(i2r), "traffic_r2i": x(r2i), "next_salt": x(nxt)})
    return out


# --- the vectors --------------------------------------------------------------------------


def stream_sessions():
    out = []
    s_i, s_r = det("static initiator"), det("static responder")
    for pattern, suite, psk in [("IK", 2, False), ("IK", 1, False), ("IK", 3, False),
                                ("XX", 2, False), ("IK", 2, True), ("XX", 3, True)]:
        tag = "%s %d %s" % (pattern, suite, psk)
        e_i, e_r = det("ephemeral initiator " + tag), det("ephemeral responder " + tag)
        hdr = header(pattern, suite, False, psk)
        name = protocol_name(pattern, suite, False, psk)
        psk_bytes = det("psk " + tag) if psk else None
        wire, h, k1, k2 = handshake(name, pattern, SUITES[suite][2], hdr, s_i, s_r, e_i, e_r,
                                    psk=psk_bytes)
        i2r, r2i, salt = traffic(k1, k2, h)
        v = {
            "pattern": pattern, "suite": suite, "psk": x(psk_bytes) if psk_bytes else None,
            "header": x(hdr), "protocol": name,
            "s_i": x(s_i), "s_r": x(s_r), "e_i": x(e_i), "e_r": x(e_r),
            "messages": [x(m) for m in wire], "h": x(h), "k_i2r": x(k1), "k_r2i": x(k2),
            "session_fingerprint": x(session_fingerprint(h)),
            "traffic_i2r": x(i2r), "traffic_r2i": x(r2i), "rehandshake_salt": x(salt),
        }
        # Epochs 0..2 of the i2r direction: secret, key, iv, fingerprint.
        epochs, secret = [], i2r
        for _ in range(3):
            key, iv = record_keys(secret, SUITES[suite][1])
            epochs.append({"secret": x(secret), "key": x(key), "iv": x(iv),
                           "fingerprint": x(key_fingerprint(secret))})
            secret = ratchet(secret)
        v["i2r_epochs"] = epochs
        # The first records: the initiator's key confirmation (type 8, section 9.1) for
        # two-message patterns, then data; the responder's first data record.
        first = seal_record(suite, i2r, 0, b"", 8) if pattern == "IK" else None
        v["initiator_key_confirmation"] = x(first) if first else None
        v["initiator_data_record_1"] = x(seal_record(suite, i2r, 1, b"hello", 1))
        v["responder_data_record_0"] = x(seal_record(suite, r2i, 0, b"world", 1))
        # Re-handshakes, chained: the initiator asks, then the responder, then hybrid
        # inputs (opaque ek, ct, ss).
        chain, salt_now = [], salt
        for n, (req_init, hybrid) in enumerate([(True, False), (False, False), (True, True)]):
            e_q, e_p = det("rehandshake requester %d %s" % (n, tag)), det(
                "rehandshake peer %d %s" % (n, tag))
            ek = det("ek %d" % n, 1184) if hybrid else b""
            ct = det("ct %d" % n, 1088) if hybrid else b""
            ss = det("ss %d" % n) if hybrid else b""
            r = rehandshake(salt_now, s_i, s_r, req_init, e_q, e_p, ek, ct, ss)
            r.update({"requester_is_initiator": req_init, "e_q": x(e_q), "e_p": x(e_p),
                      "ss": x(ss), "salt": x(salt_now)})
            chain.append(r)
            salt_now = bytes.fromhex(r["next_salt"])
        v["rehandshakes"] = chain
        out.append(v)
    return out


def anonymous_rehandshake():
    """NN: no static keys, so no static terms (section 10.2)."""
    salt = det("nn salt")
    e_q, e_p = det("nn requester"), det("nn peer")
    r = rehandshake(salt, None, None, True, e_q, e_p)
    r.update({"requester_is_initiator": True, "e_q": x(e_q), "e_p": x(e_p), "ss": "",
              "salt": x(salt)})
    return r


def public_key_fingerprints():
    out = []
    for n in range(3):
        k = pub(det("public key %d" % n))
        out.append({"public_key": x(k), "fingerprint": x(sha256(k))})
    return out


def nonces():
    iv = det("iv", 12)
    return {"iv": x(iv), "nonces": [[n, x(nonce(iv, n))] for n in
                                    (0, 1, 255, 2 ** 32 + 5, 2 ** 63 + 7, 2 ** 64 - 1)]}


def vpn():
    out = []
    s_i, s_r = det("vpn static initiator"), det("vpn static responder")
    for suite, psk in [(2, None), (3, det("vpn psk"))]:
        sender = 0x01020304
        first8 = bytes([1, suite, 0, 0]) + struct.pack(">I", sender)
        prologue = b"sessionkey v1 vpn" + first8
        cipher = SUITES[suite][2]
        name = "Noise_IKpsk2_25519_%s_SHA256" % cipher
        e_i, e_r = det("vpn e_i %d" % suite), det("vpn e_r %d" % suite)
        timestamp, epoch = 1_700_000_000_123_456_789, 7
        payloads = [struct.pack(">QB", timestamp, epoch), struct.pack(">II", 0x0a0b0c0d, sender)]
        wire, h, k1, k2 = handshake(name, "IK", cipher, prologue, s_i, s_r, e_i, e_r,
                                    psk=psk if psk else b"\0" * 32, payloads=payloads)
        i2r, r2i = traffic(k1, k2, h, labels=(b"sessionkey v1 vpn i2r", b"sessionkey v1 vpn r2i"))
        initiation = first8 + wire[0]
        mac1_key = sha256(b"sessionkey v1 vpn mac1", pub(s_r))
        mac1 = hmac.new(mac1_key, initiation, hashlib.sha256).digest()[:16]
        cookie_secret = det("vpn cookie secret %d" % suite)
        src = bytes([192, 0, 2, 1]) + struct.pack(">H", 51820)
        cookie = hmac.new(cookie_secret, src, hashlib.sha256).digest()[:16]
        mac2 = hmac.new(cookie, initiation + mac1, hashlib.sha256).digest()[:16]
        cookie_key = sha256(b"sessionkey v1 vpn cookie", pub(s_r))
        cookie_nonce = det("vpn cookie nonce %d" % suite, 12)
        sealed = AESGCM(cookie_key).encrypt(cookie_nonce, cookie, mac1)
        reply = bytes([3, 0, 0, 0]) + struct.pack(">I", sender) + cookie_nonce + sealed
        out.append({
            "suite": suite, "psk": x(psk) if psk else None, "protocol": name,
            "prologue": x(prologue), "s_i": x(s_i), "s_r": x(s_r), "e_i": x(e_i), "e_r": x(e_r),
            "timestamp": timestamp, "epoch": epoch, "payloads": [x(p) for p in payloads],
            "messages": [x(m) for m in wire], "h": x(h), "traffic_i2r": x(i2r),
            "traffic_r2i": x(r2i), "initiation_without_macs": x(initiation),
            "mac1_key": x(mac1_key), "mac1": x(mac1), "cookie_secret": x(cookie_secret),
            "source": "192.0.2.1:51820", "cookie": x(cookie), "mac2": x(mac2),
            "cookie_key": x(cookie_key), "cookie_reply": x(reply),
        })
    return out


def headers():
    out = []
    for pattern in ("IK", "XX", "NK", "NN"):
        for suite in (1, 2, 3):
            for hybrid in (False, True):
                for psk in (False, True):
                    out.append({"pattern": pattern, "suite": suite, "hybrid": hybrid, "psk": psk,
                                "header": x(header(pattern, suite, hybrid, psk)),
                                "protocol": protocol_name(pattern, suite, hybrid, psk)})
    return out


def main():
    doc = {
        "description": "sessionkey key schedules from docs/PROTOCOL.md and docs/VPN.md, computed "
                       "by vectors/own/gen.py (an independent Python implementation)",
        "headers": headers(),
        "stream_sessions": stream_sessions(),
        "anonymous_rehandshake": anonymous_rehandshake(),
        "public_key_fingerprints": public_key_fingerprints(),
        "nonces": nonces(),
        "vpn": vpn(),
    }
    text = json.dumps(doc, indent=1, sort_keys=True) + "\n"
    if "--check" in sys.argv[1:]:
        with open(OUT) as f:
            if f.read() != text:
                sys.exit("vectors/own/schedule.json differs from what gen.py computes from the "
                         "documents: run python3 vectors/own/gen.py and review the diff")
        print("vectors/own/schedule.json: matches gen.py")
        return
    with open(OUT, "w") as f:
        f.write(text)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
