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


def poisson_binomial_sf(matches: np.ndarray | int, q: np.ndarray) -> np.ndarray | float:
    """P(sum of independent Bernoulli(q_i) >= matches), for one key (q of shape (k,)) or many ((N, k)).

    The p-value when bits are not fair coins: exact dynamic programming over the k bits in float64. Every
    step only adds non-negative terms, so even tails near 1e-15 keep their relative precision.
    """
    q = np.asarray(q, dtype=np.float64)
    single = q.ndim == 1
    q2 = np.atleast_2d(q)
    if q2.ndim != 2 or q2.shape[1] < 1:
        raise InputError(f"match probabilities must have shape (k,) or (N, k) with k >= 1, got {q.shape}")
    if not np.all((q2 >= 0) & (q2 <= 1)):
        raise InputError("match probabilities must lie in [0, 1]; check the calibration's bit rates")
    n, k = q2.shape
    m = np.asarray(matches)
    if not np.issubdtype(m.dtype, np.integer):
        raise InputError(f"the number of matching bits must be an integer, got dtype {m.dtype}")
    m = np.broadcast_to(m, (n,)) if m.ndim == 0 else m
    if m.shape != (n,):
        raise InputError(f"expected {n} match counts for {n} keys, got shape {m.shape}")
    dist = np.zeros((n, k + 1))  # dist[:, j] = P(j of the bits seen so far agree)
    dist[:, 0] = 1.0
    for i in range(k):
        p = q2[:, i : i + 1]
        dist[:, 1 : i + 2] = dist[:, 1 : i + 2] * (1 - p) + dist[:, : i + 1] * p
        dist[:, 0] *= 1 - q2[:, i]
    tails = np.concatenate([np.cumsum(dist[:, ::-1], axis=1)[:, ::-1], np.zeros((n, 1))], axis=1)
    sf = np.clip(tails[np.arange(n), np.clip(m, 0, k + 1)], 0.0, 1.0)
    return float(sf[0]) if single and np.ndim(matches) == 0 else sf


def match_probabilities(keys: np.ndarray, rate_one_low: np.ndarray, rate_one_high: np.ndarray) -> np.ndarray:
    """Largest chance (N, k) that an unmarked image agrees with each key bit when the chance of reading a 1
    lies in [low, high]: ``high`` where the key bit is 1, ``1 - low`` where it is 0 (the worst case for us)."""
    keys = np.atleast_2d(np.asarray(keys))
    low = np.asarray(rate_one_low, dtype=np.float64).ravel()
    high = np.asarray(rate_one_high, dtype=np.float64).ravel()
    if keys.ndim != 2 or low.shape != high.shape or keys.shape[1] != low.size:
        raise InputError(
            f"keys of shape {keys.shape} need per-bit rates of length {keys.shape[-1]}, got {low.size} and {high.size}"
        )
    if not np.all((keys == 0) | (keys == 1)):
        raise InputError("keys must contain only 0 and 1 bits; check how the registry was decoded")
    if not np.all((low >= 0) & (low <= high) & (high <= 1)):
        raise InputError("per-bit rates need 0 <= low <= high <= 1; refit the null calibration")
    return np.where(keys == 1, high[None, :], 1.0 - low[None, :])
