"""Canonical JSON: the exact bytes every signature in the toolkit is computed over.

A signature is only checkable if signer and verifier serialise the same document to the same bytes, so the
form is fixed here, once:

* UTF-8 encoding of ASCII-only text: every non-ASCII character is written as a ``\\uXXXX`` escape (JSON's own
  escapes, surrogate pairs above U+FFFF), so the bytes survive any text channel unchanged, including a DICOM
  text element under any character set;
* object keys sorted by code point, at every depth;
* no whitespace at all: ``,`` between items and ``:`` between key and value;
* values are strings, integers, booleans, null, arrays and objects only. Floats are refused because their
  decimal form is not unique across languages; NaN and infinities are not JSON.

In Python this is ``json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
allow_nan=False).encode("ascii")`` after :func:`check_canonical_value` has refused anything outside that set.
A verifier must check the signature over the stored bytes first and parse them second; :func:`parse_canonical`
also refuses bytes that are not in canonical form, so one document has exactly one signed representation.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from medsign_forensics.errors import InputError


def check_canonical_value(value: Any, where: str = "$") -> None:
    """Raise InputError for anything canonical JSON cannot represent unambiguously."""
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, int):
        return
    if isinstance(value, float):
        raise InputError(f"canonical JSON cannot hold the float {value!r} at {where}; use an integer or a string")
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            check_canonical_value(item, f"{where}[{index}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InputError(f"canonical JSON object keys must be strings; found {key!r} at {where}")
            check_canonical_value(item, f"{where}.{key}")
        return
    raise InputError(f"canonical JSON cannot hold a {type(value).__name__} at {where}")


def canonical_json(value: Any) -> bytes:
    """Serialise ``value`` to its one canonical byte form (see the module docstring)."""
    check_canonical_value(value)
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return text.encode("ascii")


def parse_canonical(data: bytes, what: str = "document") -> dict[str, Any]:
    """Parse canonical JSON bytes holding an object; refuse anything that is not in canonical form."""
    try:
        value = json.loads(data.decode("ascii"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"the {what} is not valid ASCII JSON: {error}") from None
    if not isinstance(value, dict):
        raise InputError(f"the {what} must be a JSON object, not {type(value).__name__}")
    try:
        again = canonical_json(value)
    except InputError as error:
        raise InputError(f"the {what} is not canonical JSON: {error}") from None
    if again != data:
        raise InputError(f"the {what} is not in canonical JSON form (sorted keys, no whitespace, ASCII)")
    return value


def sha256_hex(data: bytes) -> str:
    """Lower-case hex SHA-256, the digest format used in every record and statement."""
    return hashlib.sha256(data).hexdigest()


def to_base64(data: bytes) -> str:
    """Standard base64 with padding: how signatures, salts and nonces are written in JSON and SQLite."""
    return base64.b64encode(data).decode("ascii")


def from_base64(text: str, what: str = "value") -> bytes:
    """Strict inverse of :func:`to_base64`; anything else is an InputError naming ``what``."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, AttributeError):
        raise InputError(f"the {what} is not valid base64") from None
