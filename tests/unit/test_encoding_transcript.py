"""Canonical encoding and the Fiat–Shamir transcript (TSSHOCK α-shuffle)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusion_prime.protocol.encoding import Decoder, Encoder
from fusion_prime.protocol.errors import InvalidInput
from fusion_prime.protocol.transcript import Transcript

# A transcript item is (label, kind, value); kind picks the append method.
item = st.one_of(
    st.tuples(st.text(max_size=6), st.just("int"), st.integers(min_value=-(2**80), max_value=2**80)),
    st.tuples(st.text(max_size=6), st.just("bytes"), st.binary(max_size=12)),
    st.tuples(
        st.text(max_size=6), st.just("ints"), st.lists(st.integers(min_value=-(2**40), max_value=2**40), max_size=4)
    ),
)


def _absorb(items: list[tuple[str, str, object]]) -> bytes:
    tr = Transcript("test")
    for label, kind, value in items:
        if kind == "int":
            tr.append_int(label, value)  # type: ignore[arg-type]
        elif kind == "bytes":
            tr.append_bytes(label, value)  # type: ignore[arg-type]
        else:
            tr.append_ints(label, value)  # type: ignore[arg-type]
    return tr.challenge_bytes("c", 32)


@settings(max_examples=400)
@given(st.lists(item, max_size=5), st.lists(item, max_size=5))
def test_transcript_is_injective(a: list, b: list) -> None:
    if a != b:
        assert _absorb(a) != _absorb(b)
    else:
        assert _absorb(a) == _absorb(b)


@given(st.binary(min_size=2, max_size=16), st.integers(min_value=1, max_value=15))
def test_splitting_bytes_differently_changes_the_challenge(data: bytes, cut: int) -> None:
    cut = cut % len(data) or 1
    one = _absorb([("x", "bytes", data)])
    two = _absorb([("x", "bytes", data[:cut]), ("x", "bytes", data[cut:])])
    assert one != two


@given(st.integers(min_value=1, max_value=2**64))
def test_sign_and_leading_zeros_matter(v: int) -> None:
    assert _absorb([("v", "int", v)]) != _absorb([("v", "int", -v)])
    assert _absorb([("v", "bytes", v.to_bytes(9, "big"))]) != _absorb([("v", "bytes", v.to_bytes(10, "big"))])
    # (12, 3) vs (1, 23): the classic concatenation collision
    assert _absorb([("a", "int", 12), ("a", "int", 3)]) != _absorb([("a", "int", 1), ("a", "int", 23)])


def test_repeated_challenges_are_distinct_and_deterministic() -> None:
    a, b = Transcript("t"), Transcript("t")
    bits_a = [a.challenge_pm("e", 128) for _ in range(50)]
    bits_b = [b.challenge_pm("e", 128) for _ in range(50)]
    assert bits_a == bits_b
    assert len(set(bits_a)) == 50
    units = Transcript("t").challenge_units("y", 2**127 - 1, 100)
    assert len(set(units)) == 100
    assert all(-(2**128) <= e <= 2**128 for e in bits_a)


def test_challenge_range_is_symmetric() -> None:
    tr = Transcript("range")
    draws = [tr.challenge_pm("e", 3) for _ in range(4000)]
    assert set(draws) == set(range(-8, 9))


@given(st.lists(st.integers(min_value=-(2**300), max_value=2**300), max_size=5), st.binary(max_size=40))
def test_encoding_round_trips(values: list[int], blob: bytes) -> None:
    data = Encoder().ints(values).bytes(blob).uint(abs(sum(values))).finish()
    dec = Decoder(data)
    assert dec.ints() == values
    assert dec.bytes() == blob
    assert dec.uint() == abs(sum(values))
    dec.finish()


def test_decoder_rejects_non_canonical_and_truncated() -> None:
    good = Encoder().uint(5).finish()
    with pytest.raises(InvalidInput, match="leading zero"):
        Decoder(good[:4] + b"\x02" + b"\x00\x05").uint()
    with pytest.raises(InvalidInput, match="negative zero"):
        Decoder(b"\x03\x00\x00\x00\x01\x01").int()
    with pytest.raises(InvalidInput, match="trailing"):
        d = Decoder(good + b"\x00")
        d.uint()
        d.finish()
    with pytest.raises(InvalidInput, match="truncated"):
        Decoder(good[:-1]).uint()
    with pytest.raises(InvalidInput, match="expected field type"):
        Decoder(good).int()
    with pytest.raises(InvalidInput, match="exceeds"):
        Decoder(Encoder().uint(2**70).finish()).uint(64)


# lists carry their element type (issue 11, item 6) ------------------------------------------------
def test_empty_int_list_and_empty_point_list_hash_differently() -> None:
    from fusion_prime.protocol.curve import Point

    ints = Transcript("test").append_ints("xs", []).challenge_bytes("c")
    points = Transcript("test").append_points("xs", []).challenge_bytes("c")
    assert ints != points
    assert ints == Transcript("test").append_ints("xs", ()).challenge_bytes("c")
    assert points == Transcript("test").append_points("xs", iter([])).challenge_bytes("c")
    # and non-empty lists of either type still differ from the other type's empty list
    assert Transcript("test").append_points("xs", [Point.generator()]).challenge_bytes("c") != points


def _absorb_typed(items: list[tuple[str, str, object]]) -> bytes:
    tr = Transcript("test")
    for label, kind, value in items:
        if kind == "points":
            tr.append_points(label, value)  # type: ignore[arg-type]
        elif kind == "point":
            tr.append_point(label, value)  # type: ignore[arg-type]
        elif kind == "ints":
            tr.append_ints(label, value)  # type: ignore[arg-type]
        else:
            tr.append_bytes(label, value)  # type: ignore[arg-type]
    return tr.challenge_bytes("c", 32)


def _point(k: int):  # type: ignore[no-untyped-def]
    from fusion_prime.protocol.curve import Point

    return Point.base_mul(k)


typed_item = st.one_of(
    st.tuples(st.sampled_from(["", "a"]), st.just("ints"), st.lists(st.integers(1, 5), max_size=2)),
    st.tuples(st.sampled_from(["", "a"]), st.just("points"), st.lists(st.integers(1, 5).map(_point), max_size=2)),
    st.tuples(st.sampled_from(["", "a"]), st.just("point"), st.integers(1, 5).map(_point)),
    st.tuples(st.sampled_from(["", "a"]), st.just("bytes"), st.binary(max_size=4)),
)


@settings(max_examples=300)
@given(st.lists(typed_item, max_size=3), st.lists(typed_item, max_size=3))
def test_transcript_is_injective_across_list_types(a: list, b: list) -> None:
    """Equal (label, type, value) sequences hash alike, and any difference - including only the
    element type of an empty list - changes the hash."""
    if a != b:
        assert _absorb_typed(a) != _absorb_typed(b)
    else:
        assert _absorb_typed(a) == _absorb_typed(b)
