"""Detection statistics for k-bit keys.

Under "no watermark" a whitened extractor's bits are fair, independent coins, so the number M of bits that match
a fixed key is Binomial(k, 1/2) and the p-value of M matches is P(X >= M). That premise is measured, not
assumed (benchmarks/extractor_eval.py); everything here is exact binomial arithmetic on top of it.

Identification compares the extracted bits with N registered keys and keeps the best match, so the chance that
some key matches by luck grows with N. The family-wise correction is Bonferroni by default (per-key level
alpha/N; conservative, and what the anchors' figures use) with Sidak (1 - (1 - alpha)^(1/N); exact for
independent keys) available.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import numpy as np
from scipy.stats import binom

from medsign_forensics.errors import InputError


class Correction(str, Enum):
    """Family-wise correction for identification among N keys."""

    BONFERRONI = "bonferroni"
    SIDAK = "sidak"


def _check(bits: int, fpr: float | None = None) -> None:
    if bits < 1:
        raise InputError(f"the number of bits must be positive, got {bits}")
    if fpr is not None and not 0 < fpr < 1:
        raise InputError(f"a false-positive rate must lie strictly between 0 and 1, got {fpr}")


def p_value(matches: int, bits: int) -> float:
    """P(Binomial(bits, 1/2) >= matches): chance that an unwatermarked image matches a key this well."""
    _check(bits)
    if not 0 <= matches <= bits:
        raise InputError(f"{matches} matching bits is impossible for a {bits}-bit key")
    return float(binom.sf(matches - 1, bits, 0.5))


def threshold(bits: int, fpr: float) -> int:
    """Smallest M with P(X >= M) <= fpr; ``bits + 1`` when even all bits matching is not rare enough."""
    _check(bits, fpr)
    for m in range(bits + 1):
        if binom.sf(m - 1, bits, 0.5) <= fpr:
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
    """Compare extracted bits (k,) with registered keys (N, k); detected when the best match reaches the
    family-wise threshold."""
    extracted = np.asarray(extracted, dtype=np.uint8).ravel()
    keys = np.atleast_2d(np.asarray(keys, dtype=np.uint8))
    if keys.shape[0] == 0 or keys.shape[1] != extracted.size:
        raise InputError(f"cannot compare {extracted.size} extracted bits with keys of shape {keys.shape}")
    counts = (keys == extracted[None, :]).sum(axis=1)
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
