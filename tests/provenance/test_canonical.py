from __future__ import annotations

import pytest

from medsign_forensics.errors import InputError
from medsign_forensics.provenance.canonical import canonical_json, from_base64, parse_canonical, to_base64


def test_canonical_form_sorts_keys_drops_whitespace_and_escapes_non_ascii() -> None:
    data = canonical_json({"b": [1, True, None], "a": {"z": "é", "y": "x"}})
    assert data == b'{"a":{"y":"x","z":"\\u00e9"},"b":[1,true,null]}'
    assert parse_canonical(data) == {"a": {"y": "x", "z": "é"}, "b": [1, True, None]}


@pytest.mark.parametrize("value", [{"x": 1.5}, {"x": float("nan")}, {1: "a"}, {"x": b"bytes"}])
def test_values_without_one_canonical_form_are_refused(value: object) -> None:
    with pytest.raises(InputError):
        canonical_json(value)


@pytest.mark.parametrize("data", [
    b'{"b":1,"a":2}',  # unsorted
    b'{"a": 1}',  # whitespace
    b'{"a":1,"a":2}',  # duplicate key
    b'{"a":"\xc3\xa9"}',  # raw non-ASCII
    b'[1,2]',  # not an object
    b'{"a":1.0}',  # float
])
def test_non_canonical_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(InputError):
        parse_canonical(data)


def test_base64_round_trip_and_strictness() -> None:
    assert from_base64(to_base64(b"\x00\xff" * 10)) == b"\x00\xff" * 10
    with pytest.raises(InputError, match="signature is not valid base64"):
        from_base64("not base64!", "signature")
