"""Benchmark ``signing``: what a COSE_Sign1 Ed25519 signature costs a real update, against a session MAC.

Updates are real: the digits MLP and the HAR 1D-CNN after one local epoch
(bench/codec.py's deltas), top-k at 1% density with int8 values, encoded by
the real compressor and codec. For each, in one run:

- bytes: the unsigned update, the same update in ``wire.sign``'s COSE_Sign1
  (8-byte key id), and in a COSE_Mac0 layout with a 16-byte tag (the same
  8-byte id naming the session), counted from real bytes;
- CPU (process time, the fastest of several batches) per call: signing
  (``wire.sign``) and verifying (``wire.open_envelope``) alone; each end's
  whole path unsigned and signed, in alternating batches (the device's
  ``wire.encode`` against encode-and-sign, the gateway's ``wire.decode``
  against decode with a verifier); and the
  MAC alternative: HMAC-SHA256 truncated to 16 bytes, or Poly1305 keyed per
  message (ChaCha20-Poly1305 with the message as associated data, nonce from
  a counter: Poly1305 alone must never reuse a key), plus the handshake that
  alternative needs once per session (an ephemeral X25519 exchange signed
  with the device's Ed25519 key, and HKDF);
- ratios against the unsigned baseline of the same run.

Device and gateway run on this machine here; a Raspberry Pi is slower by a
factor this benchmark does not measure.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.metadata
import os
import time
from collections.abc import Callable
from typing import Any

import cbor2

from bench.common import print_table, write_result
from edge_runtime import wire
from edge_runtime.wire.cbor import dumps, loads

DENSITY = 0.01
TAG_BYTES = 16
MAC0_TAG = 17  # COSE_Mac0 (RFC 9052 6.2)
HMAC_ALG = 5  # HMAC 256/256's id stands in: RFC 9053 registers no 128-bit truncation; one byte either way
CHACHA_POLY_ALG = 24  # ChaCha20/Poly1305 (RFC 9053 4.3)
HEADER_PARTIAL_IV = 6

GUARANTEES = {
    "ed25519_per_message": (
        "origin authentication and integrity of every message, checkable by anyone holding the device's public "
        "key (the gateway, a parent gateway, an auditor): third-party verifiable, so non-repudiation; no shared "
        "secret, no key agreement, no session state; a stored or relayed message verifies later as it is"
    ),
    "signed_handshake_then_mac": (
        "origin authentication and integrity to the gateway only: the gateway holds the same session key and "
        "could have made any tag, so no third party can verify and there is no non-repudiation; needs key "
        "agreement (an ephemeral X25519 exchange signed with the device key), session state on both ends, a "
        "new handshake after any restart, and cannot cover what is fixed before the handshake (the MQTT last "
        "will) or what many receivers check (a manifest)"
    ),
}


def verdict(updates: dict[str, dict[str, Any]], handshake_us: float) -> str:
    """Whether tinyfed needs the stronger property, with this run's numbers."""
    head = updates["mlp"]
    bytes_saved = head["signature_overhead_bytes"] - head["mac_overhead_bytes"]
    cpu_saved = head["sign_us"] + head["verify_us"] - head["hmac_tag_us"] - head["hmac_check_us"]
    return (
        "tinyfed: the gateway alone verifies updates, so for updates a MAC's guarantee would do; but manifests "
        "go to every device and the bridge, and a death is the MQTT will fixed at CONNECT, before any handshake, "
        f"so those need signatures anyway. Per digits update the MAC would save {bytes_saved} B of "
        f"{head['unsigned_bytes']} and {cpu_saved:.0f} us of CPU (both ends), for a {handshake_us:.0f} us handshake "
        "per session and session state at both ends: recommended, per-message signatures for updates too."
    )


def real_update(arch: str) -> tuple[bytes, dict[int, int]]:
    """One device's update at 1% density as the agent encodes it, and the model's tensor sizes."""
    from bench.codec import real_deltas
    from edge_runtime.compress import CompressionConfig, Compressor

    deltas, samples = real_deltas(arch)
    tensors = Compressor(CompressionConfig(density=DENSITY)).compress(deltas).tensors
    update = wire.Update(bytes(range(16)), "device-0001", 1, bytes(32), samples, tensors)
    return wire.encode(update), {t: d.size for t, d in deltas.items()}


def _batch_us(fn: Callable[[], Any], seconds: float) -> float:
    calls, t0 = 0, time.process_time()
    while True:
        fn()
        calls += 1
        elapsed = time.process_time() - t0
        if elapsed >= seconds:
            return elapsed / calls * 1e6


def cpu_us(fn: Callable[[], Any], seconds: float = 0.3, batches: int = 9) -> float:
    """Process-CPU microseconds per call in the least disturbed of ``batches`` batches.

    Process time leaves out other processes' turns on the cores, but a busy
    machine still slows a call through shared caches; the fastest batch is
    the closest to the call's own cost (timeit's reasoning for its minimum).
    """
    return min(_batch_us(fn, seconds / batches) for _ in range(batches))


def paired_us(baseline: Callable[[], Any], other: Callable[[], Any], seconds: float = 0.6) -> tuple[float, float]:
    """Both paths in alternating batches, so a ratio compares calls that ran under the same load."""
    a, b = [], []
    for _ in range(9):
        a.append(_batch_us(baseline, seconds / 18))
        b.append(_batch_us(other, seconds / 18))
    return min(a), min(b)


class Session:
    """The MAC alternative's per-session state: the key a signed handshake agreed, and a send counter."""

    def __init__(self, key: bytes, session_id: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

        self.key, self.session_id, self.counter = key, session_id, 0
        self.aead = ChaCha20Poly1305(key)

    def hmac_message(self, message: bytes) -> bytes:
        protected = dumps({1: HMAC_ALG})
        tag = hmac.new(self.key, dumps(["MAC0", protected, b"", message]), hashlib.sha256).digest()[:TAG_BYTES]
        return dumps(cbor2.CBORTag(MAC0_TAG, [protected, {4: self.session_id}, message, tag]))

    def hmac_check(self, data: bytes) -> bytes:
        protected, _, message, tag = cbor2.loads(data).value
        expected = hmac.new(self.key, dumps(["MAC0", protected, b"", message]), hashlib.sha256).digest()
        if not hmac.compare_digest(expected[:TAG_BYTES], tag):
            raise ValueError("tag does not verify")
        return bytes(message)

    def poly_message(self, message: bytes) -> bytes:
        self.counter += 1
        protected = dumps({1: CHACHA_POLY_ALG})
        nonce = self.counter.to_bytes(12, "big")
        tag = self.aead.encrypt(nonce, b"", dumps(["MAC0", protected, b"", message]))
        partial_iv = self.counter.to_bytes(max(1, (self.counter.bit_length() + 7) // 8), "big")
        unprotected = {4: self.session_id, HEADER_PARTIAL_IV: partial_iv}
        return dumps(cbor2.CBORTag(MAC0_TAG, [protected, unprotected, message, tag]))

    def poly_check(self, data: bytes) -> bytes:
        protected, unprotected, message, tag = cbor2.loads(data).value
        nonce = unprotected[HEADER_PARTIAL_IV].rjust(12, b"\0")
        self.aead.decrypt(nonce, tag, dumps(["MAC0", protected, b"", message]))  # raises InvalidTag
        return bytes(message)


class Handshake:
    """The MAC alternative's session set-up (SIGMA-like): each end signs an ephemeral X25519 key, both derive the key.

    Device: ephemeral key, sign its hello, verify the gateway's answer, agree,
    derive. Gateway: verify the hello, ephemeral key, agree, derive, sign the
    answer. Both signatures are needed: without the gateway's, the device
    cannot tell whose key it agreed with.
    """

    INFO = b"tinyfed session"

    def __init__(self, device: wire.Ed25519Signer, gateway: wire.Ed25519Signer) -> None:
        self.device, self.gateway = device, gateway
        self.device_keys = wire.Ed25519Verifier({device.key_id: device.public_key()})
        self.gateway_keys = wire.Ed25519Verifier({gateway.key_id: gateway.public_key()})

    @staticmethod
    def _ephemeral() -> tuple[Any, bytes]:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        key = X25519PrivateKey.generate()
        return key, key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @classmethod
    def _derive(cls, own: Any, peer_public: bytes, transcript: bytes) -> bytes:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        shared = own.exchange(X25519PublicKey.from_public_bytes(peer_public))
        return HKDF(hashes.SHA256(), 32, salt=hashlib.sha256(transcript).digest(), info=cls.INFO).derive(shared)

    # The handshake's payloads are CBOR byte strings, as every signed tinyfed payload is CBOR: raw key bytes
    # could start with a tag's head, which the envelope refuses (one key in eight did).
    def device_hello(self) -> tuple[Any, bytes]:
        key, public = self._ephemeral()
        return key, wire.sign(dumps(public), self.device)

    def gateway_answer(self, hello: bytes) -> tuple[bytes, bytes]:
        opened = wire.open_envelope(hello, wire.DEFAULT_LIMITS, self.device_keys, require_signature=True)
        device_public = bytes(loads(opened.payload, wire.DEFAULT_LIMITS))
        key, public = self._ephemeral()
        answer = wire.sign(dumps(device_public + public), self.gateway)
        return self._derive(key, device_public, device_public + public), answer

    def device_finish(self, key: Any, own_public: bytes, answer: bytes) -> bytes:
        opened = wire.open_envelope(answer, wire.DEFAULT_LIMITS, self.gateway_keys, require_signature=True)
        both = bytes(loads(opened.payload, wire.DEFAULT_LIMITS))
        if both[:32] != own_public:
            raise ValueError("the answer is to another hello")
        return self._derive(key, both[32:], both)

    def run(self) -> tuple[bytes, bytes]:
        """Both ends once; returns the two derived keys (equal)."""
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        key, hello = self.device_hello()
        gateway_key, answer = self.gateway_answer(hello)
        own_public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return self.device_finish(key, own_public, answer), gateway_key


def measure(arch: str, signer: wire.Ed25519Signer, verifier: wire.Ed25519Verifier) -> dict[str, Any]:
    encoded, spec = real_update(arch)
    signed = wire.sign(encoded, signer)
    session = Session(os.urandom(32), signer.key_id)
    with_hmac = session.hmac_message(encoded)
    with_poly = session.poly_message(encoded)
    assert wire.encode(wire.decode(signed, spec=spec, verifier=verifier, require_signature=True)) == encoded
    assert session.hmac_check(with_hmac) == encoded and session.poly_check(with_poly) == encoded
    update = wire.decode(encoded, spec=spec)
    out: dict[str, Any] = {
        "unsigned_bytes": len(encoded),
        "signed_bytes": len(signed),
        "key_id_bytes": len(signer.key_id),
        "mac_bytes": len(with_hmac),
        "poly1305_bytes": len(with_poly),
        "sign_us": cpu_us(lambda: wire.sign(encoded, signer)),
        "verify_us": cpu_us(lambda: wire.open_envelope(signed, wire.DEFAULT_LIMITS, verifier)),
        "hmac_tag_us": cpu_us(lambda: session.hmac_message(encoded)),
        "hmac_check_us": cpu_us(lambda: session.hmac_check(with_hmac)),
        "poly1305_tag_us": cpu_us(lambda: session.poly_message(encoded)),
        "poly1305_check_us": cpu_us(lambda: session.poly_check(with_poly)),
    }
    # The whole path at each end, unsigned against signed, measured side by side: the device encodes (and signs),
    # the gateway decodes (and verifies) against the model's tensor sizes.
    out["encode_us"], out["encode_sign_us"] = paired_us(
        lambda: wire.encode(update), lambda: wire.sign(wire.encode(update), signer)
    )
    out["decode_us"], out["verify_decode_us"] = paired_us(
        lambda: wire.decode(encoded, spec=spec),
        lambda: wire.decode(signed, spec=spec, verifier=verifier, require_signature=True),
    )
    out["signature_overhead_bytes"] = out["signed_bytes"] - out["unsigned_bytes"]
    out["mac_overhead_bytes"] = out["mac_bytes"] - out["unsigned_bytes"]
    out["poly1305_overhead_bytes"] = out["poly1305_bytes"] - out["unsigned_bytes"]
    return out


def handshake_cost(device: wire.Ed25519Signer) -> dict[str, float]:
    """CPU of one session set-up at each end (the MAC alternative pays it once per session, signatures never)."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    shake = Handshake(device, wire.Ed25519Signer.generate())
    device_key, gateway_key = shake.run()
    assert device_key == gateway_key
    key, hello = shake.device_hello()
    own_public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    _, answer = shake.gateway_answer(hello)
    device_us = cpu_us(shake.device_hello) + cpu_us(lambda: shake.device_finish(key, own_public, answer))
    return {"handshake_device_us": device_us, "handshake_gateway_us": cpu_us(lambda: shake.gateway_answer(hello))}


def libraries() -> dict[str, str]:
    import cryptography
    from cryptography.hazmat.backends.openssl.backend import backend

    return {
        "cryptography": cryptography.__version__,
        "openssl": backend.openssl_version_text(),
        "cbor2": importlib.metadata.version("cbor2"),
    }


def main(full: bool = False) -> dict[str, float]:
    from edge_runtime.data.sources import shared_data_dir

    load_before = os.getloadavg()[0]
    device = wire.Ed25519Signer.generate()  # kid: the 8-byte RFC 9679 thumbprint prefix
    verifier = wire.Ed25519Verifier({device.key_id: device.public_key()})
    archs = ["mlp"] + (["cnn1d"] if shared_data_dir() is not None else [])
    updates = {arch: measure(arch, device, verifier) for arch in archs}
    details: dict[str, Any] = {"density": DENSITY, "updates": updates}
    details.update(handshake_cost(device))
    details |= {
        "guarantees": GUARANTEES,
        "verdict": verdict(updates, details["handshake_device_us"] + details["handshake_gateway_us"]),
        "libraries": libraries(),
        "load_average_1min": [load_before, os.getloadavg()[0]],  # before and after: a shared machine's CPU is noisy
        "note": "CPU is process time on this machine for both ends; bytes are the real encodings",
    }
    figures: dict[str, float] = {}
    for arch, d in updates.items():
        figures[f"{arch}_unsigned_bytes"] = float(d["unsigned_bytes"])
        figures[f"{arch}_signed_bytes"] = float(d["signed_bytes"])
        figures[f"{arch}_signature_overhead_bytes"] = float(d["signature_overhead_bytes"])
        figures[f"{arch}_signed_bytes_ratio"] = d["signed_bytes"] / d["unsigned_bytes"]
        figures[f"{arch}_mac_bytes_ratio"] = d["mac_bytes"] / d["unsigned_bytes"]
        figures[f"{arch}_poly1305_bytes_ratio"] = d["poly1305_bytes"] / d["unsigned_bytes"]
        figures[f"{arch}_encode_us"] = d["encode_us"]
        figures[f"{arch}_sign_us"] = d["sign_us"]
        figures[f"{arch}_encode_sign_us"] = d["encode_sign_us"]
        figures[f"{arch}_encode_sign_cpu_ratio"] = d["encode_sign_us"] / d["encode_us"]
        figures[f"{arch}_decode_us"] = d["decode_us"]
        figures[f"{arch}_verify_us"] = d["verify_us"]
        figures[f"{arch}_verify_decode_us"] = d["verify_decode_us"]
        figures[f"{arch}_verify_decode_cpu_ratio"] = d["verify_decode_us"] / d["decode_us"]
        figures[f"{arch}_hmac_tag_us"] = d["hmac_tag_us"]
        figures[f"{arch}_hmac_check_us"] = d["hmac_check_us"]
        figures[f"{arch}_poly1305_tag_us"] = d["poly1305_tag_us"]
        figures[f"{arch}_poly1305_check_us"] = d["poly1305_check_us"]
    figures["handshake_device_us"] = details["handshake_device_us"]
    figures["handshake_gateway_us"] = details["handshake_gateway_us"]
    path = write_result("signing", figures, details)
    print_table("signing", figures)
    print("\nwhat each scheme guarantees:")
    for name, text in GUARANTEES.items():
        print(f"  {name}: {text}")
    print(f"  {details['verdict']}")
    print(f"  -> {path}")
    return figures


if __name__ == "__main__":
    main()
