"""Empirical null for the watermark p-value.

Why: :func:`medsign_forensics.key.p_value` assumes every extracted bit of an unwatermarked image is a
fair coin. Measurement says otherwise on some image families (phantoms, images from the base generator, heavy
JPEG): the rate of reading a 1 ranges from about 0.35 to 0.67 per bit, so a key that happens to agree with that
bias matches unmarked images more often than Binomial(k, 1/2) predicts, and its binomial p-values are too small.

What: :func:`fit_null` measures, per bit, the range [low, high] of the rate of reading a 1 over several sets of
unwatermarked images, and :class:`NullCalibration` turns it into p-values with a Poisson-binomial null.

What is conservative about it: for every bit it takes the rate that agrees with the key most often (``high``
where the key bit is 1, ``1 - low`` where it is 0) over the pooled sets and over every family whose bits are
measurably biased, widened by ``margin_sd`` standard errors of sampling, and never claims a bit is more reliable
than a fair coin (low <= 0.5 <= high). What it assumes: bits are independent given
the family. That can be checked on the calibration sets by comparing the distribution of best matches against
registered keys with the one this null predicts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from medsign_forensics.configio import config_from_dict, config_to_dict
from medsign_forensics.errors import InputError
from medsign_forensics.key import match_counts
from medsign_forensics.watermark.fairness import bit_mean_chi2
from medsign_forensics.watermark.stats import match_probabilities, poisson_binomial_sf

RATE_FLOOR = 0.01
RATE_CEIL = 0.99
_SET_FIELDS = ("name", "n", "mean_min", "mean_max", "chi2", "chi2_p")


def _bits(array: np.ndarray, what: str) -> np.ndarray:
    """``array`` as uint8 after checking that it holds only 0/1 values."""
    array = np.asarray(array)
    if array.size and not np.all((array == 0) | (array == 1)):
        raise InputError(f"{what} must contain only 0 and 1 bits; pass the extractor's hard decisions")
    return array.astype(np.uint8)


@dataclass(frozen=True)
class NullCalibration:
    """Per-bit range [low, high] of the chance that an unwatermarked image reads a 1, and where it came from."""

    bits: int
    rate_one_low: tuple[float, ...]
    rate_one_high: tuple[float, ...]
    sets: tuple[dict[str, Any], ...]
    margin_sd: float

    def __post_init__(self) -> None:
        if self.bits < 1:
            raise InputError(f"a calibration needs at least one bit, got {self.bits}")
        if len(self.rate_one_low) != self.bits or len(self.rate_one_high) != self.bits:
            raise InputError(
                f"a {self.bits}-bit calibration needs {self.bits} low and high rates, "
                f"got {len(self.rate_one_low)} and {len(self.rate_one_high)}"
            )
        low, high = np.asarray(self.rate_one_low, float), np.asarray(self.rate_one_high, float)
        if not np.all((low >= 0) & (low <= high) & (high <= 1)):
            raise InputError("per-bit rates need 0 <= low <= high <= 1; refit the null calibration")
        if any(set(entry) != set(_SET_FIELDS) for entry in self.sets):
            raise InputError(f"each calibration set needs exactly the fields {', '.join(_SET_FIELDS)}")

    @classmethod
    def fair(cls, bits: int) -> NullCalibration:
        """The binomial null (every bit a fair coin), for extractors that have no calibration."""
        return cls(bits=bits, rate_one_low=(0.5,) * bits, rate_one_high=(0.5,) * bits, sets=(), margin_sd=0.0)

    def p_values(self, extracted: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Matching bits M (N,) of ``extracted`` (k,) with each key of ``keys`` (N, k), and the calibrated
        p-value P(X >= M) per key under the most key-friendly null the calibration allows."""
        extracted = _bits(extracted, "extracted bits").ravel()
        keys = _bits(np.atleast_2d(keys), "keys")
        if extracted.size != self.bits or keys.ndim != 2 or keys.shape[1] != self.bits or keys.shape[0] == 0:
            raise InputError(
                f"a {self.bits}-bit calibration cannot compare {extracted.size} extracted bits with keys of "
                f"shape {keys.shape}; use the calibration fitted for this extractor"
            )
        matches = match_counts(extracted, keys)
        q = match_probabilities(keys, np.asarray(self.rate_one_low), np.asarray(self.rate_one_high))
        return matches, np.asarray(poisson_binomial_sf(matches, q))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; :meth:`from_dict` reads it back."""
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NullCalibration:
        """Strict inverse of :meth:`to_dict` (every field is required: none has a default)."""
        return config_from_dict(cls, data)


def _summary(name: str, bits: np.ndarray) -> dict[str, Any]:
    """Per-set evidence of bias: chi-square of the per-bit means against a fair coin (k degrees of freedom)."""
    means = bits.mean(axis=0)
    stat, p = bit_mean_chi2(bits)
    return {
        "name": name,
        "n": len(bits),
        "mean_min": float(means.min()),
        "mean_max": float(means.max()),
        "chi2": stat,
        "chi2_p": p,
    }


def fit_null(sets: Mapping[str, np.ndarray], *, margin_sd: float = 2.0, alpha: float = 0.01) -> NullCalibration:
    """Fit the per-bit null range from (n, k) bits read off UNWATERMARKED images, one array per image family.

    Per bit: the rate of the POOLED sets, plus and minus ``margin_sd`` standard errors; and every family whose
    per-bit means fail the fairness test (chi-square p < ``alpha``) widens the range to its own mean plus and
    minus ``margin_sd`` of its standard errors. A family that passes is represented by the pool: taking the
    extreme of several small families' noise on every bit at once would cost orders of magnitude of p-value for
    no demonstrated bias. The range always includes 0.5 and stays within [0.01, 0.99], so no bit is ever
    treated as more reliable than a fair coin, nor as certain.
    """
    if not sets:
        raise InputError("fit_null needs at least one set of bits from unwatermarked images")
    if not margin_sd >= 0:
        raise InputError(f"margin_sd must be a non-negative number of standard errors, got {margin_sd}")
    if not 0 < alpha < 1:
        raise InputError(f"alpha must lie in (0, 1), got {alpha}")
    arrays = {name: _bits(np.asarray(bits), f"bits of set {name!r}") for name, bits in sets.items()}
    widths = {a.shape[1] if a.ndim == 2 else None for a in arrays.values()}
    if len(widths) != 1 or None in widths or any(a.shape[0] == 0 for a in arrays.values()):
        shapes = ", ".join(f"{name}: {a.shape}" for name, a in arrays.items())
        raise InputError(f"every set must be a non-empty (n, k) array with the same k, got {shapes}")
    summaries = {name: _summary(name, a) for name, a in arrays.items()}
    pooled = np.concatenate(list(arrays.values()))
    biased = [a for name, a in arrays.items() if summaries[name]["chi2_p"] < alpha]
    lows, highs = [], []
    for a in [pooled, *biased]:
        mean, se = a.mean(axis=0), np.sqrt(0.25 / a.shape[0])
        lows.append(mean - margin_sd * se)
        highs.append(mean + margin_sd * se)
    low = np.clip(np.minimum(np.min(lows, axis=0), 0.5), RATE_FLOOR, RATE_CEIL)
    high = np.clip(np.maximum(np.max(highs, axis=0), 0.5), RATE_FLOOR, RATE_CEIL)
    return NullCalibration(
        bits=int(pooled.shape[1]),
        rate_one_low=tuple(float(v) for v in low),
        rate_one_high=tuple(float(v) for v in high),
        sets=tuple(summaries.values()),
        margin_sd=float(margin_sd),
    )
