"""From captured cross-attention to the pathology localization map A_loc (MedSign section 2.2.1, eq. 1).

Per token s: F~_s = the layer maps upsampled bilinearly to image size and aggregated over layers, heads and
time steps. Each layer's running sum is divided by (its heads x captured steps) before the layers are
averaged, so F~_s is a mean attention probability. This is the paper's sum up to one constant factor when
every layer has the same number of heads (SD 1.x), keeps U-Nets with different head counts per level from being
dominated by the widest level, and does not matter downstream because AAS starts with a z-score. No
normalisation across tokens is done at all (each token's map is used on its own), so the start, end and padding
tokens, which absorb most of the softmax mass, never enter any statistic.

Per word p with tokens s_1..s_n:
- A_avg = mean of F~_{s_i};
- CAS chooses s* = the token whose map has the fewest dense clusters (:func:`count_clusters`) and A* = F~_{s*};
- AAS: z-score, sigmoid, min-max over the whole map, tau = 0.7 quantile, A_loc = sigmoid(A* - tau).

Switches (the paper's ablations, Table 2): without CAS, A_avg takes A*'s place in eq. 1; without AAS,
A_loc = min-max(A*), with no z-score, sigmoid or threshold.

Several medical words: the report's map is the pixel-wise MAXIMUM of the words' A_loc maps, so every word keeps
its own salient region at full strength (a mean would halve a region named by only one of two words).

A report with no medical word (a normal report) gets a map of ZEROS. A_loc weights the pathology-preservation
loss L_pre = E[||(I_w - I_o) * A_loc||^2]; zeros mean that loss protects nothing in a normal image, which is
the point: there is no pathology to keep the watermark away from. (A constant sigmoid(-tau) would instead
impose a uniform penalty that no pathology justifies, and tau is undefined without a map.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import DBSCAN

from medsign_forensics.localization.capture import CapturedAttention
from medsign_forensics.reports.words import MedicalWord, WordTokens


@dataclass(frozen=True)
class MapOptions:
    """How A_loc is made. Defaults are the paper's method; ``cas``/``aas`` off give its ablations.

    CAS points: the token map is area-averaged onto a grid of at most ``cluster_grid`` cells on its longer side
    (aspect kept) and the cells strictly above its ``cluster_quantile`` quantile are the high-attention points.
    DBSCAN runs with scikit-learn's defaults (eps=0.5, min_samples=5), as the paper says, on cell coordinates
    divided by ``cluster_unit`` = 3: eps then reaches a cell's 8 neighbours (distance <= sqrt 2 cells) and no
    further, and a core cell needs 4 of its 8 neighbours high. On raw pixel coordinates those defaults would
    make every pixel its own neighbourhood-less point (spacing 1 > eps 0.5) and no cluster would ever form.
    """

    cas: bool = True
    aas: bool = True
    tau_quantile: float = 0.7
    cluster_quantile: float = 0.9
    cluster_grid: int = 64
    cluster_unit: float = 3.0
    dbscan_eps: float = 0.5
    dbscan_min_samples: int = 5


@dataclass(frozen=True)
class ClusterCount:
    """CAS statistics of one token map: dense clusters among its high-attention points, and the noise share."""

    clusters: int
    noise_fraction: float


@dataclass(frozen=True)
class WordMap:
    """The maps of one medical word. ``chosen`` indexes ``tokens.positions`` (None when CAS is off)."""

    tokens: WordTokens
    a_avg: np.ndarray
    a_star: np.ndarray
    a_loc: np.ndarray
    chosen: int | None
    cluster_counts: tuple[ClusterCount, ...]


def token_maps(
    captured: CapturedAttention, positions: Sequence[int], image_size: tuple[int, int], *, item: int = 0
) -> torch.Tensor:
    """F~_s for the given token positions: (n, H, W) float32, mean over layers of per-layer mean attention."""
    if not positions:
        raise ValueError("token_maps needs at least one token position")
    if not 0 <= item < captured.batch:
        raise ValueError(f"batch item {item} is outside the captured batch of {captured.batch}")
    index = torch.as_tensor(list(positions), dtype=torch.long)
    total = None
    for layer in captured.layers.values():
        grid = layer.sums[item].index_select(0, index.to(layer.sums.device)).float()
        grid = grid / (layer.heads * captured.steps)
        upsampled = F.interpolate(grid[None], size=image_size, mode="bilinear", align_corners=False)[0]
        total = upsampled if total is None else total + upsampled
    assert total is not None
    return (total / len(captured.layers)).cpu()


def minmax(values: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] over the whole map; a constant map becomes all zeros (it has no salient region)."""
    low, high = float(values.min()), float(values.max())
    if high - low <= 0:
        return np.zeros_like(values, dtype=np.float32)
    return ((values - low) / (high - low)).astype(np.float32)


def adaptive_scaling(a_star: np.ndarray, *, tau_quantile: float = 0.7) -> np.ndarray:
    """AAS and eq. 1: z-score, sigmoid, global min-max, tau = quantile, sigmoid(A - tau). Range [s(-1), s(1)]."""
    a_star = np.asarray(a_star, dtype=np.float64)
    std = a_star.std()
    z = (a_star - a_star.mean()) / std if std > 0 else np.zeros_like(a_star)
    scaled = minmax(1.0 / (1.0 + np.exp(-z))).astype(np.float64)
    tau = np.quantile(scaled, tau_quantile)
    return (1.0 / (1.0 + np.exp(-(scaled - tau)))).astype(np.float32)


def _cluster_grid(values: np.ndarray, cells: int) -> np.ndarray:
    height, width = values.shape
    scale = min(1.0, cells / max(height, width))
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    tensor = torch.as_tensor(values, dtype=torch.float32)[None, None]
    return F.adaptive_avg_pool2d(tensor, size)[0, 0].numpy()


def count_clusters(token_map: np.ndarray, options: MapOptions = MapOptions()) -> ClusterCount:
    """The number of dense clusters DBSCAN finds among the token map's high-attention cells."""
    grid = _cluster_grid(np.asarray(token_map, dtype=np.float32), options.cluster_grid)
    threshold = np.quantile(grid, options.cluster_quantile)
    points = np.argwhere(grid > threshold).astype(np.float64) / options.cluster_unit
    if len(points) == 0:
        return ClusterCount(clusters=0, noise_fraction=1.0)
    labels = DBSCAN(eps=options.dbscan_eps, min_samples=options.dbscan_min_samples).fit_predict(points)
    clusters = len(set(labels.tolist()) - {-1})
    return ClusterCount(clusters=clusters, noise_fraction=float(np.mean(labels == -1)))


def select_token(counts: Sequence[ClusterCount]) -> int:
    """CAS: the index of the token with the fewest clusters.

    A map with NO cluster is all scattered noise, the least localised of all, so it ranks after every map with at
    least one. Ties go to the smaller share of high-attention points left as noise (the more compact map), then
    to the earlier token.
    """
    if not counts:
        raise ValueError("select_token needs at least one token")

    def key(index: int) -> tuple[float, float, int]:
        count = counts[index]
        return (count.clusters if count.clusters > 0 else float("inf"), count.noise_fraction, index)

    return min(range(len(counts)), key=key)


def word_map(tokens: WordTokens, maps: torch.Tensor | np.ndarray, options: MapOptions = MapOptions()) -> WordMap:
    """A_avg, A* and A_loc of one word from its tokens' maps (n, H, W)."""
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3 or maps.shape[0] != len(tokens.positions):
        raise ValueError(f"expected one map per token ({len(tokens.positions)}), got an array of shape {maps.shape}")
    a_avg = maps.mean(axis=0)
    if options.cas:
        counts = tuple(count_clusters(token_map, options) for token_map in maps)
        chosen: int | None = select_token(counts)
        a_star = maps[chosen]
    else:
        counts, chosen, a_star = (), None, a_avg
    a_loc = adaptive_scaling(a_star, tau_quantile=options.tau_quantile) if options.aas else minmax(a_star)
    return WordMap(tokens=tokens, a_avg=a_avg, a_star=a_star, a_loc=a_loc, chosen=chosen, cluster_counts=counts)


def combine(word_maps: Sequence[WordMap], image_size: tuple[int, int]) -> np.ndarray:
    """The report's A_loc: pixel-wise maximum over its words; all zeros when it has none (a normal report)."""
    if not word_maps:
        return np.zeros(image_size, dtype=np.float32)
    return np.max(np.stack([word.a_loc for word in word_maps]), axis=0).astype(np.float32)


@dataclass(frozen=True)
class Localization:
    """A report's localization map A_loc (H, W) float32, the per-word maps behind it and the words truncated away."""

    a_loc: np.ndarray
    words: tuple[WordMap, ...]
    dropped: tuple[MedicalWord, ...]
    options: MapOptions

    @property
    def normal(self) -> bool:
        """True when no medical word reached the model, so the map is all zeros."""
        return not self.words


def localize_captured(
    captured: CapturedAttention | None,
    words: Sequence[WordTokens],
    image_size: tuple[int, int],
    *,
    dropped: Sequence[MedicalWord] = (),
    item: int = 0,
    options: MapOptions = MapOptions(),
) -> Localization:
    """Build every word's maps from one capture and combine them into the report's A_loc."""
    return localize_variants(captured, words, image_size, dropped=dropped, item=item, variants=(options,))[0]


def localize_variants(
    captured: CapturedAttention | None,
    words: Sequence[WordTokens],
    image_size: tuple[int, int],
    *,
    dropped: Sequence[MedicalWord] = (),
    item: int = 0,
    variants: Sequence[MapOptions],
) -> tuple[Localization, ...]:
    """One Localization per entry of ``variants`` from one capture.

    Each word's token maps are computed once and shared, since the variants (the paper's ablations) differ
    only in what CAS and AAS do with them.
    """
    if words and captured is None:
        raise ValueError("medical words were given but no attention was captured")
    per_token = (  # no attention captured: no words either (checked above)
        [token_maps(captured, tokens.positions, image_size, item=item) for tokens in words]
        if captured is not None
        else []
    )
    localizations = []
    for options in variants:
        maps = tuple(word_map(tokens, found, options) for tokens, found in zip(words, per_token))
        localizations.append(
            Localization(a_loc=combine(maps, image_size), words=maps, dropped=tuple(dropped), options=options)
        )
    return tuple(localizations)
