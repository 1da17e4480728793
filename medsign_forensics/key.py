"""The k-bit key: its two forms (uint8 0/1 array in memory, hex on paper), match counts and binomial statistics.

A leaf: provenance (which issues and stores keys) and watermark (which embeds and reads them) both depend on
this module and never on each other for it.

Under "no watermark" a whitened extractor's bits are fair, independent coins, so the number M of bits that
match a fixed key is Binomial(k, 1/2) and the p-value of M matches is P(X >= M). That premise is measured, not
assumed (benchmarks/extractor_eval.py); where it fails, :mod:`medsign_forensics.watermark.calibration` replaces
the binomial by a Poisson-binomial null. Identification compares the extracted bits with N registered keys and
keeps the best match, so the chance that some key matches by luck grows with N: the family-wise correction is
Bonferroni by default (per-key level alpha/N; valid under any dependence) with Sidak (1 - (1 - alpha)^(1/N);
exact for independent keys) available.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np

from medsign_forensics.config import SUPPORTED_KEY_BITS
from medsign_forensics.errors import InputError, RegistryError

_HEX_DIGITS = "0123456789abcdef"
_NIBBLE = np.full(256, 255, dtype=np.uint8)  # ASCII code -> nibble value; 255 marks a non-hex character
for _value, _char in enumerate(_HEX_DIGITS):
    _NIBBLE[ord(_char)] = _NIBBLE[ord(_char.upper())] = _value
_SHIFTS = np.array([3, 2, 1, 0], dtype=np.uint8)
MAX_KEY_DRAWS = 10_000


class Correction(str, Enum):
    """How per-key p-values become one family-wise p-value over the N registered keys."""

    BONFERRONI = "bonferroni"  # min(1, N p): valid under any dependence between keys
    SIDAK = "sidak"  # 1 - (1 - p)^N: exact for independent keys, marginally less conservative


# -- the key and its hex form ----------------------------------------------------------------------------


def check_length(bits: int) -> None:
    """Refuse key lengths the registry and the extractors do not support."""
    if bits not in SUPPORTED_KEY_BITS:
        raise InputError(f"key length {bits} is not supported; use one of {SUPPORTED_KEY_BITS}")


def random_key(bits: int, rng: np.random.Generator) -> np.ndarray:
    """Draw a uniformly random key of ``bits`` bits."""
    check_length(bits)
    return rng.integers(0, 2, size=bits, dtype=np.uint8)


def bits_to_hex(key: np.ndarray) -> str:
    """Hex form of a key, most significant bit first; length must be a multiple of 4."""
    key = np.asarray(key, dtype=np.uint8).ravel()
    if key.size % 4 or np.any(key > 1):
        raise InputError("a key must be a sequence of 0/1 values whose length is a multiple of 4")
    nibbles = key.reshape(-1, 4) @ np.array([8, 4, 2, 1], dtype=np.int64)
    return "".join(_HEX_DIGITS[n] for n in nibbles)


def hex_matrix(hexes: Sequence[str], bits: int) -> np.ndarray:
    """(N, bits) uint8 0/1 matrix of N hex keys (inverse of :func:`bits_to_hex`), vectorised for a registry's
    worth of keys; every key must be hexadecimal and exactly ``bits`` long."""
    if bits < 1 or bits % 4:
        raise InputError(f"a hex key holds a multiple of 4 bits, not {bits}")
    text = "".join(hexes).encode("ascii", errors="replace")  # a non-ASCII character becomes '?', not hex
    if any(len(h) * 4 != bits for h in hexes):
        raise InputError(f"every key must be {bits // 4} hex digits ({bits} bits) long")
    nibbles = _NIBBLE[np.frombuffer(text, dtype=np.uint8)]
    if np.any(nibbles == 255):
        raise InputError("a key must consist of hexadecimal digits 0-9 and a-f only")
    return ((nibbles[:, None] >> _SHIFTS) & 1).astype(np.uint8).reshape(len(hexes), bits)


def hex_to_bits(text: str) -> np.ndarray:
    """The key written as ``text`` (hex, most significant bit first)."""
    text = text.strip()
    if not text:
        raise InputError("an empty string is not a hexadecimal key")
    try:
        return hex_matrix([text], 4 * len(text))[0]
    except InputError:
        raise InputError(f"{text!r} is not a hexadecimal key") from None


def match_counts(bits: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Number of agreeing positions along the last axis: one message (k,) against one key (k,) gives a 0-d
    count, against N keys (N, k) gives (N,), and N messages against one key likewise."""
    bits, keys = np.asarray(bits, dtype=np.uint8), np.asarray(keys, dtype=np.uint8)
    if bits.ndim == 0 or keys.ndim == 0 or bits.shape[-1] != keys.shape[-1]:
        raise InputError(f"cannot compare bits of shape {bits.shape} with keys of shape {keys.shape}; "
                         "a message and a key must have the same length")
    try:
        return np.count_nonzero(bits == keys, axis=-1)
    except ValueError:
        raise InputError(f"cannot pair bits of shape {bits.shape} with keys of shape {keys.shape}") from None


def draw_distant_key(existing: np.ndarray, bits: int, min_distance: int, rng: np.random.Generator) -> np.ndarray:
    """Rejection-sample a key at Hamming distance >= ``min_distance`` from every row of ``existing``."""
    for _ in range(MAX_KEY_DRAWS):
        key = random_key(bits, rng)
        if existing.shape[0] == 0 or bits - int(match_counts(key, existing).max()) >= min_distance:
            return key
    raise RegistryError(f"no {bits}-bit key at distance >= {min_distance} from the {existing.shape[0]} "
                        f"registered keys was found in {MAX_KEY_DRAWS} draws; the key space is crowded: use "
                        "longer keys or a policy with a smaller keys.min_hamming_distance")


# -- binomial statistics ---------------------------------------------------------------------------------


def _check(bits: int, fpr: float | None = None) -> None:
    if bits < 1:
        raise InputError(f"the number of bits must be positive, got {bits}")
    if fpr is not None and not 0 < fpr < 1:
        raise InputError(f"a false-positive rate must lie strictly between 0 and 1, got {fpr}")


def _tail(matches: int, bits: int) -> float:
    """P(Binomial(bits, 1/2) >= matches). scipy is imported here, not at module level, so that importing the
    key (every registry command does) stays cheap."""
    from scipy.stats import binom

    return float(binom.sf(matches - 1, bits, 0.5))


def p_value(matches: int, bits: int) -> float:
    """P(Binomial(bits, 1/2) >= matches): chance that an unwatermarked image matches a key this well."""
    _check(bits)
    if not 0 <= matches <= bits:
        raise InputError(f"{matches} matching bits is impossible for a {bits}-bit key")
    return _tail(matches, bits)


def threshold(bits: int, fpr: float) -> int:
    """Smallest M with P(X >= M) <= fpr; ``bits + 1`` when even all bits matching is not rare enough."""
    _check(bits, fpr)
    for m in range(bits + 1):
        if _tail(m, bits) <= fpr:
            return m
    return bits + 1


def per_key_fpr(global_fpr: float, n_keys: int, correction: Correction = Correction.BONFERRONI) -> float:
    """Per-key level that keeps the family-wise false-positive rate over ``n_keys`` at ``global_fpr``."""
    _check(1, global_fpr)
    if n_keys < 1:
        raise InputError(f"the number of registered keys must be at least 1, got {n_keys}")
    if Correction(correction) is Correction.BONFERRONI:
        return global_fpr / n_keys
    return -math.expm1(math.log1p(-global_fpr) / n_keys)


def family_p_value(p: float, n_keys: int, correction: Correction = Correction.BONFERRONI) -> float:
    """Family-wise p-value of the best of ``n_keys`` matches whose own p-value is ``p``."""
    if Correction(correction) is Correction.BONFERRONI:
        return min(1.0, p * n_keys)
    return -math.expm1(n_keys * math.log1p(-p)) if p < 1 else 1.0


def identification_threshold(
    bits: int, n_keys: int, global_fpr: float, correction: Correction = Correction.BONFERRONI
) -> int:
    """Matches needed to attribute an image to one of ``n_keys`` keys at family-wise rate ``global_fpr``."""
    return threshold(bits, per_key_fpr(global_fpr, n_keys, correction))


@dataclass(frozen=True)
class Identification:
    """Best-matching key among the registered ones and the evidence for it."""

    index: int
    matches: int
    bits: int
    p_value: float
    family_p_value: float
    threshold: int
    detected: bool


def identify(
    extracted: np.ndarray,
    keys: np.ndarray,
    global_fpr: float,
    correction: Correction = Correction.BONFERRONI,
) -> Identification:
    """Compare extracted bits (k,) with registered keys (N, k) under the binomial null; detected when the best
    match reaches the family-wise threshold."""
    extracted = np.asarray(extracted, dtype=np.uint8).ravel()
    keys = np.atleast_2d(np.asarray(keys, dtype=np.uint8))
    if keys.shape[0] == 0 or keys.shape[1] != extracted.size:
        raise InputError(f"cannot compare {extracted.size} extracted bits with keys of shape {keys.shape}")
    counts = match_counts(extracted, keys)
    best = int(np.argmax(counts))
    k, n = extracted.size, keys.shape[0]
    p = p_value(int(counts[best]), k)
    m_needed = identification_threshold(k, n, global_fpr, correction)
    return Identification(
        index=best,
        matches=int(counts[best]),
        bits=k,
        p_value=p,
        family_p_value=family_p_value(p, n, correction),
        threshold=m_needed,
        detected=bool(counts[best] >= m_needed),
    )
