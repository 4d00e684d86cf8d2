"""Encoding, signing and validation of wire envelopes."""

import os

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pnet import wire
from p2pnet.wire.envelope import _signed_part

SIGNER = wire.Signer(b"\x07" * 32)
CARD = wire.ModelCard("e1", "smollm2-135m", "ab" * 32, "Q4_1", 2048, ("general", "geography"),
                      250.0, 80.5, 0.1, 0, 2, "xllamacpp", 0)

SAMPLES = [
    wire.Announce(addrs=("/ip4/127.0.0.1/tcp/4001",), cards=(CARD,), validator=True, height=7),
    wire.Broadcast(text="hello", sent_ns=123, pad=b"\0" * 10),
    wire.RpcError("busy", "full"),
    wire.Ack(),
    wire.Query(os.urandom(16), "general", 1_000, (wire.SealedPrompt(SIGNER.peer_id, "e1", b"box"),)),
    wire.Answer(os.urandom(16), "e1", "ok", b"box", b"\1" * 32, 10, 20, 300),
    wire.Cancel(os.urandom(16)),
    wire.Rating(b"\2" * 32, SIGNER.peer_id, "e1", "general", b"\3" * 32, 0.75),
    wire.Vote("chain", 1, 3, 0, b"\4" * 32, SIGNER.peer_id, b"s" * 64),
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: m.KIND)
def test_roundtrip_and_signature(message):
    raw = SIGNER.seal(message)
    env = wire.open_envelope(raw)
    assert env.message == message
    assert env.sender == SIGNER.peer_id
    assert env.kind == message.KIND
    assert wire.peer_id_str(env.sender).startswith("12D3KooW")


def test_encoding_is_canonical():
    a = wire.Announce(addrs=("/ip4/1.2.3.4/tcp/1",), cards=(CARD,))
    b = wire.Announce(addrs=("/ip4/1.2.3.4/tcp/1",), cards=(CARD,))
    assert a.pack() == b.pack() and a.digest() == b.digest()
    assert wire.Announce.unpack(a.pack()) == a


def test_peer_id_text_roundtrip_matches_libp2p():
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.id import ID

    kp = create_new_key_pair(b"\x07" * 32)
    assert wire.peer_id_str(SIGNER.peer_id) == ID.from_pubkey(kp.public_key).to_base58()
    assert wire.peer_id_bytes(wire.peer_id_str(SIGNER.peer_id)) == SIGNER.peer_id


def test_tampered_body_fails_signature():
    raw = SIGNER.seal(wire.Broadcast("pay 1"))
    obj = msgpack.unpackb(raw, raw=False)
    obj[5][0] = "pay 9"
    with pytest.raises(wire.WireError) as exc:
        wire.open_envelope(msgpack.packb(obj, use_bin_type=True))
    assert exc.value.reason == wire.BAD_SIGNATURE


def test_forged_sender_fails_signature():
    other = wire.Signer(b"\x08" * 32)
    obj = msgpack.unpackb(SIGNER.seal(wire.Broadcast("x")), raw=False)
    obj[2] = other.peer_id
    with pytest.raises(wire.WireError) as exc:
        wire.open_envelope(msgpack.packb(obj, use_bin_type=True))
    assert exc.value.reason == wire.BAD_SIGNATURE


def test_oversized_is_rejected_before_parsing():
    raw = SIGNER.seal(wire.Broadcast("x" * 2000))
    with pytest.raises(wire.WireError) as exc:
        wire.open_envelope(raw, max_bytes=1000)
    assert exc.value.reason == wire.OVERSIZED


def _resign(kind, body):
    """A validly signed envelope with arbitrary kind/body (a hostile peer can do this)."""
    seq, ts = SIGNER.next_seq(), 1
    sig = SIGNER.sign_bytes(_signed_part(kind, SIGNER.peer_id, seq, ts, body))
    return wire.packb([wire.WIRE_VERSION, kind, SIGNER.peer_id, seq, ts, body, sig])


def test_unknown_type_and_schema_violations():
    with pytest.raises(wire.WireError) as exc:
        wire.open_envelope(_resign("no_such_kind", []))
    assert exc.value.reason == wire.UNKNOWN_TYPE
    with pytest.raises(wire.WireError) as exc:
        wire.open_envelope(_resign("broadcast", [123]))  # text must be str
    assert exc.value.reason == wire.SCHEMA
    with pytest.raises(wire.WireError) as exc:
        wire.open_envelope(_resign("rating", [b"x" * 32, SIGNER.peer_id, "e", "d", b"y" * 32, 7.0]))
    assert exc.value.reason == wire.SCHEMA  # score outside [0, 1]
    with pytest.raises(wire.WireError) as exc:
        wire.open_envelope(_resign("broadcast", ["a", True]))  # bool is not an int
    assert exc.value.reason == wire.SCHEMA
    for confidence in (1.5, -0.1, float("nan"), "high"):
        with pytest.raises(wire.WireError) as exc:
            wire.AnswerBody.unpack(wire.packb(["Paris.", "stop", confidence]))
        assert exc.value.reason == wire.SCHEMA


def test_an_answer_body_without_a_confidence_still_decodes():
    """Bodies from experts that report none (or from before the field) decode
    with confidence None; one that reports it keeps it."""
    assert wire.AnswerBody.unpack(wire.packb(["Paris.", "stop"])).confidence is None
    body = wire.AnswerBody("Paris.", "stop", 0.8125)
    assert wire.AnswerBody.unpack(body.pack()) == body


def test_per_query_messages_ignore_a_newer_versions_trailing_fields():
    """A newer node may append defaulted fields to a message about one query or
    one announcement: older nodes read the fields they know. Ledger and
    consensus messages must match exactly (every validator reads them alike)."""
    body = wire.AnswerBody.unpack(wire.packb(["Paris.", "stop", 0.5, [], "a future field", [1, 2]]))
    assert body == wire.AnswerBody("Paris.", "stop", 0.5)
    env = wire.open_envelope(_resign("cancel", [b"\5" * 16, 42]))
    assert env.message == wire.Cancel(b"\5" * 16)
    announce = SAMPLES[0].to_obj()
    announce[1][0].append("a future card field")  # nested: the card inside the announcement
    assert wire.open_envelope(_resign("announce", announce + [True])).message == SAMPLES[0]
    with pytest.raises(wire.WireError) as exc:  # the known fields are still checked
        wire.AnswerBody.unpack(wire.packb(["Paris.", "stop", 7.0, "x"]))
    assert exc.value.reason == wire.SCHEMA
    rating = SAMPLES[7].to_obj()
    for kind, fields in (("rating", rating + [1]), ("vote", SAMPLES[8].to_obj() + ["x"])):
        with pytest.raises(wire.WireError) as exc:
            wire.open_envelope(_resign(kind, fields))
        assert exc.value.reason == wire.SCHEMA and "fields, expected" in exc.value.detail
    assert {k for k, tp in wire.KINDS.items() if tp.EXTENSIBLE} == {"announce", "query", "answer", "answer_chunk",
                                                                   "cancel"}
    assert not any(tp.EXTENSIBLE for tp in (wire.BlockHeader, wire.CommitSig, wire.Commit))


def test_replay_and_staleness():
    guard = wire.ReplayGuard(window=4, max_staleness_ms=1000)
    envs = [wire.open_envelope(SIGNER.seal(wire.Broadcast(str(i)), ts_ms=10_000)) for i in range(20)]
    assert not guard.has_seen(SIGNER.peer_id, envs[5].seq)
    guard.check(envs[5], 10_000)
    assert guard.has_seen(SIGNER.peer_id, envs[5].seq) and not guard.has_seen(SIGNER.peer_id, envs[6].seq)
    with pytest.raises(wire.WireError) as exc:
        guard.check(envs[5], 10_000)
    assert exc.value.reason == wire.REPLAYED
    guard.check(envs[3], 10_000)  # out of order, fewer than `window` later ones seen: fine
    for env in envs[10:16]:
        guard.check(env, 10_000)
    with pytest.raises(wire.WireError) as exc:
        guard.check(envs[4], 10_000)  # more than `window` later ones came first
    assert exc.value.reason == wire.REPLAYED
    with pytest.raises(wire.WireError) as exc:
        guard.check(wire.open_envelope(SIGNER.seal(wire.Broadcast("late"), ts_ms=1)), 10_000)
    assert exc.value.reason == wire.STALE


def test_replay_guard_is_bounded():
    guard = wire.ReplayGuard(max_senders=3)
    for i in range(10):
        s = wire.Signer(bytes([i + 1]) * 32)
        env = wire.open_envelope(s.seal(wire.Broadcast("x")))
        guard.check(env, env.ts_ms)
    assert len(guard._senders) == 3


def test_seq_grows_across_signers_of_the_same_key():
    """A restarted node (a new Signer on the same key) keeps seq increasing."""
    a = wire.Signer(b"\x09" * 32)
    last = wire.open_envelope(a.seal(wire.Broadcast("x"))).seq
    b = wire.Signer(b"\x09" * 32)
    assert wire.open_envelope(b.seal(wire.Broadcast("y"))).seq > last


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_random_bytes_only_raise_wire_error(data):
    with pytest.raises(wire.WireError):
        wire.open_envelope(data)


VALID = [SIGNER.seal(m) for m in SAMPLES]


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(VALID), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8))
def test_mutated_envelopes_never_decode_to_a_different_message(raw, flips):
    data = bytearray(raw)
    for pos, value in flips:
        data[pos % len(data)] = value
    data = bytes(data)
    try:
        env = wire.open_envelope(data)
    except wire.WireError:
        return
    # A mutation may only survive if it left the signed content intact
    # (msgpack has more than one encoding of some values).
    assert env.message == wire.open_envelope(raw).message


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=20)
                    | st.binary(max_size=20), lambda c: st.lists(c, max_size=6), max_leaves=30),
       st.sampled_from(sorted(wire.KINDS)))
def test_signed_junk_bodies_raise_only_wire_error(body, kind):
    """A peer can sign anything; the schema check must turn junk into WireError."""
    body = body if isinstance(body, list) else [body]
    try:
        wire.open_envelope(_resign(kind, body))
    except wire.WireError:
        pass


def test_an_envelope_of_the_wrong_field_type_says_which_field():
    """A js peer's msgpack packed a large seq as a float: the error names it."""
    data = msgpack.packb([wire.WIRE_VERSION, "broadcast", b"x" * 38, 1.5, 1, [], b"s" * 64], use_bin_type=True)
    with pytest.raises(wire.WireError) as info:
        wire.open_envelope(data)
    assert info.value.reason == wire.MALFORMED
    assert "envelope field seq is float, not int" in str(info.value)
