"""Are an extractor's bits on UNWATERMARKED images fair, independent coins?

Every binomial p-value (:mod:`medsign_forensics.key`) rests on that premise, and the null calibration
(:mod:`medsign_forensics.watermark.calibration`) widens the null where it fails, so the premise is measured with
one set of checks, shared by the calibration, the benchmarks that report it and the tests:

* the per-bit means against 0.5: squared z-scores summed and compared with chi-square(k)
  (:func:`bit_mean_chi2`), and the chance that fair coins would all lie within a +/- tolerance band at this n
  (:func:`fair_coin_pass_probability`), which says whether such a band can tell anything at all;
* the match counts against FIXED keys (as a registry holds them) against Binomial(k, 1/2), by a chi-square
  goodness-of-fit on binned counts (:func:`binned_chisquare`). Fixed keys, because against a freshly drawn
  random key the count is Binomial(k, 1/2) whatever the extractor outputs. Counts for different keys share
  images, so the pooled test is approximate; per-key tests are reported as the fraction with p < 0.05.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import binom, chi2, chisquare, norm

from medsign_forensics.errors import InputError
from medsign_forensics.key import match_counts


def bit_mean_chi2(bits: np.ndarray) -> tuple[float, float]:
    """Sum of the squared z-scores of the per-bit means of (n, k) bits against a fair coin, and its p-value
    under chi-square(k)."""
    n, k = bits.shape
    stat = float((((bits.mean(axis=0) - 0.5) / np.sqrt(0.25 / n)) ** 2).sum())
    return stat, float(chi2.sf(stat, k))


def fair_coin_pass_probability(n: int, k: int, tolerance: float = 0.05) -> float:
    """P(all k fair, independent coins' means over n images lie within 0.5 +/- tolerance), normal approximation.

    Small values mean the +/- tolerance bound cannot tell a fair extractor from a biased one at this n.
    """
    z = tolerance / np.sqrt(0.25 / n)
    return float((2 * norm.cdf(z) - 1) ** k)


def binned_chisquare(counts: np.ndarray, bits: int) -> tuple[float, float, int]:
    """Chi-square GOF of match counts vs Binomial(bits, 1/2), tails pooled until each bin expects >= 5:
    (statistic, p-value, number of bins)."""
    n = len(counts)
    observed = np.bincount(counts, minlength=bits + 1).astype(float)
    expected = binom.pmf(np.arange(bits + 1), bits, 0.5) * n
    edges = [0]
    acc = 0.0
    for m in range(bits + 1):  # grow bins left to right until each holds >= 5 expected
        acc += expected[m]
        if acc >= 5:
            edges.append(m + 1)
            acc = 0.0
    edges[-1] = bits + 1  # the remainder joins the last bin
    obs = np.array([observed[a:b].sum() for a, b in zip(edges[:-1], edges[1:])])
    exp = np.array([expected[a:b].sum() for a, b in zip(edges[:-1], edges[1:])])
    stat, p = chisquare(obs, exp * obs.sum() / exp.sum())
    return float(stat), float(p), len(obs)


def bit_fairness(bits_out: np.ndarray, n_keys: int, seed: int) -> dict[str, Any]:
    """Fair-coin statistics of (N, k) bits: per-bit means, their test, and match counts against ``n_keys``
    fixed keys drawn from ``seed``."""
    bits_out = np.asarray(bits_out)
    if bits_out.ndim != 2 or len(bits_out) < 2:
        raise InputError(f"fairness needs (N, k) bits from at least two images, got shape {bits_out.shape}")
    k = bits_out.shape[1]
    keys = np.random.default_rng(seed).integers(0, 2, size=(n_keys, k), dtype=np.uint8)
    counts = match_counts(bits_out[:, None, :], keys[None, :, :])  # (images, keys)
    stat, p, bins = binned_chisquare(counts.ravel(), k)
    per_key_p = [binned_chisquare(counts[:, j], k)[1] for j in range(n_keys)]
    bit_means = bits_out.mean(axis=0)
    corr = np.corrcoef(bits_out.T.astype(float)) if bits_out.std(axis=0).min() > 0 else None
    off_diag = None if corr is None else float(np.abs(corr[~np.eye(k, dtype=bool)]).mean())
    return {
        "images": len(bits_out),
        "bits": k,
        "bit_mean_min": float(bit_means.min()),
        "bit_mean_max": float(bit_means.max()),
        "worst_bit_deviation": float(np.abs(bit_means - 0.5).max()),
        "bits_within_0.05": int((np.abs(bit_means - 0.5) <= 0.05).sum()),
        "fair_coin_pass_probability": fair_coin_pass_probability(len(bits_out), k),
        "bit_mean_p": bit_mean_chi2(bits_out)[1],
        "mean_abs_bit_correlation": off_diag,
        "count_mean": float(counts.mean()),
        "count_var": float(counts.var()),
        "chi2": stat,
        "chi2_p": p,
        "chi2_bins": bins,
        "keys_p_below_0.05": float(np.mean(np.array(per_key_p) < 0.05)),
        "max_count": int(counts.max()),
    }
