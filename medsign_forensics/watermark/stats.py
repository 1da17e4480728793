"""The Poisson-binomial null: p-values when the extractor's bits on unwatermarked images are not fair coins.

The binomial statistics for fair bits live with the key (:mod:`medsign_forensics.key`); this is what
:mod:`medsign_forensics.watermark.calibration` puts in their place for an extractor whose per-bit rates it has
measured.
"""

from __future__ import annotations

import numpy as np

from medsign_forensics.errors import InputError


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
