"""The localization map A_loc against phantom ground truth, and what capturing it costs during generation.

For phantoms rendered from reports, whose lesion masks are exact, the map of each drawn finding kind is read from
the model by inversion (:func:`medsign_forensics.localization.capture_image`) from the words serving that kind,
and scored (:func:`score_maps`):

- pointing game (the map's maximum inside the kind's mask) and IoU of (map > 0.5) with the mask, per finding
  kind, for three maps (:data:`VARIANTS`): A_avg (no CAS, min-max scaled, i.e. no AAS), A_avg + AAS (no CAS)
  and CAS + AAS (MedSign);
- next to fixed prior maps that ignore the image and the attention (:func:`build_priors`): the mean lesion mask
  over other phantoms (one map for every kind), and the mean mask of the same kind. A prior's salient region
  for IoU is its top 30% of pixels (the area AAS keeps above 0.5);
- the report-level A_loc (all words, pixel-wise maximum) against the union of the report's masks (IoU).

AAS is monotone, so A_avg and A_avg + AAS always share their maximum and their pointing game; they differ in IoU.
:func:`measure_overhead` times sampling with the capture installed (and capture + map building) against plain
sampling. ``benchmarks/localization_eval.py`` runs all three and writes the results file.
"""

from __future__ import annotations

import statistics
import time
import tracemalloc
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from medsign_forensics.diffusion import DiffusionModel
from medsign_forensics.diffusion.conditioning import sample_reports
from medsign_forensics.errors import DatasetError
from medsign_forensics.localization import (
    CrossAttentionCapture,
    MapOptions,
    capture_image,
    iou,
    peak_distance,
    pointing_game,
)
from medsign_forensics.localization.generation import generate_with_maps
from medsign_forensics.localization.maps import localize_captured
from medsign_forensics.phantom import render_report
from medsign_forensics.reports import FindingKind, Report, parse_report
from medsign_forensics.reports.words import medical_words, word_tokens

#: Phantoms behind the prior maps: seed + PRIOR_SEED_OFFSET + i, disjoint from the scored ones.
PRIOR_SEED_OFFSET = 1_000_000
VARIANTS = {
    "A_avg": MapOptions(cas=False, aas=False),
    "A_avg+AAS": MapOptions(cas=False, aas=True),
    "CAS+AAS": MapOptions(cas=True, aas=True),
}
PRIORS = ("prior (all lesions)", "prior (same kind)")


@dataclass
class Scores:
    """Per (kind, method) hits, peak distances (px) and IoUs; ``no_word`` counts findings whose kind reached the
    model in no word (their distance is NaN: there is no map)."""

    hits: dict[tuple[str, str], list[bool]] = field(default_factory=lambda: defaultdict(list))
    distances: dict[tuple[str, str], list[float]] = field(default_factory=lambda: defaultdict(list))
    ious: dict[tuple[str, str], list[float]] = field(default_factory=lambda: defaultdict(list))
    no_word: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    report_iou: list[float] = field(default_factory=list)

    def add(self, kind: str, method: str, a_map: np.ndarray, mask: np.ndarray, *, threshold: float = 0.5) -> None:
        self.hits[(kind, method)].append(pointing_game(a_map, mask))
        self.distances[(kind, method)].append(peak_distance(a_map, mask))
        self.ious[(kind, method)].append(iou(a_map, mask, threshold=threshold))


def has_present_finding(report: Report) -> bool:
    """Whether the report asserts a finding (not negated, not hedged): only those draw a lesion to score."""
    return any(finding.present for finding in parse_report(report.text))


def kind_masks(study: object) -> dict[FindingKind, np.ndarray]:
    """The union of a rendered study's lesion masks per finding kind (kinds whose masks are empty left out)."""
    masks: dict[FindingKind, np.ndarray] = {}
    for finding, mask in study.masks:  # type: ignore[attr-defined]
        if mask.any():
            masks[finding.kind] = masks.get(finding.kind, np.zeros_like(mask)) | mask
    return masks


def build_priors(
    reports: Sequence[Report], *, seed: int, size: int
) -> tuple[np.ndarray, dict[FindingKind, np.ndarray], int]:
    """Mean union lesion mask over the reports' phantoms, the mean mask per kind (over phantoms showing it), and
    the number of phantoms with a lesion."""
    total = np.zeros((size, size), np.float64)
    per_kind: dict[FindingKind, np.ndarray] = {}
    counts: dict[FindingKind, int] = defaultdict(int)
    studies = 0
    for index, report in enumerate(reports):
        study, _ = render_report(report.text, seed=seed + PRIOR_SEED_OFFSET + index, size=size)
        masks = kind_masks(study)
        if not masks:
            continue
        studies += 1
        total += study.lesion_mask
        for kind, mask in masks.items():
            per_kind[kind] = per_kind.get(kind, np.zeros((size, size), np.float64)) + mask
            counts[kind] += 1
    if not studies:
        raise DatasetError("no report rendered a lesion; cannot build the prior map")
    return total / studies, {kind: value / counts[kind] for kind, value in per_kind.items()}, studies


def top_fraction(values: np.ndarray, fraction: float = 0.3) -> float:
    """The threshold above which ``fraction`` of the pixels lie (a prior's salient region for IoU)."""
    return float(np.quantile(values, 1 - fraction))


def score_maps(
    model: DiffusionModel, reports: Sequence[Report], *, prior: np.ndarray, kind_prior: dict[FindingKind, np.ndarray],
    seed: int, size: int, timesteps: Sequence[int], prompt: Callable[[str], str] | None = None,
) -> tuple[Scores, int]:
    """Score every map variant and both priors on the phantoms of ``reports`` (seed ``seed + i``); also returns
    how many phantoms had a lesion to score. ``prompt`` turns a report into the model's prompt (the maps are read
    from that prompt's words; the phantom and its masks still come from the report)."""
    scores = Scores()
    evaluated = 0
    for index, report in enumerate(reports):
        study, _ = render_report(report.text, seed=seed + index, size=size)
        masks = kind_masks(study)
        if not masks:
            continue
        evaluated += 1
        text = report.text if prompt is None else prompt(report.text)
        attention = capture_image(model.pipeline, study.image, text, timesteps=timesteps, seed=seed + index)
        for kind, mask in masks.items():
            name = kind.value
            words = [w for w in attention.words if kind in w.word.kinds]
            for method, options in VARIANTS.items():
                if words:
                    scores.add(name, method, attention.localize(options, words=words).a_loc, mask)
                else:
                    scores.hits[(name, method)].append(False)
                    scores.distances[(name, method)].append(float("nan"))
                    scores.ious[(name, method)].append(0.0)
            if not words:
                scores.no_word[name] += 1
            scores.add(name, PRIORS[0], prior, mask, threshold=top_fraction(prior))
            own = kind_prior.get(kind, prior)
            scores.add(name, PRIORS[1], own, mask, threshold=top_fraction(own))
        union = np.logical_or.reduce(list(masks.values()))
        scores.report_iou.append(iou(attention.localize().a_loc, union))
    return scores, evaluated


@dataclass(frozen=True)
class Overhead:
    """Median wall and process-CPU seconds per report (CPU time is what contention on a shared machine spoils
    least; wall time is what a user waits), and the memory the capture and map building take."""

    plain_s: float
    capture_s: float
    capture_and_maps_s: float
    plain_cpu_s: float
    capture_cpu_s: float
    capture_state_bytes: int
    maps_traced_peak_bytes: int
    cuda_peak_plain: int | None
    cuda_peak_capture: int | None


def measure_overhead(
    model: DiffusionModel, texts: Sequence[str], *, seed: int, steps: int, guidance: float
) -> Overhead:
    """Median per-report wall times of plain sampling, sampling under capture, and capture + map building."""
    if not texts:
        raise DatasetError("no report to time the capture overhead with (none reaches the model in a medical word)")
    cuda = model.device.type == "cuda"
    sample_reports(model, texts[:1], seed=seed, steps=steps, guidance_scale=guidance)  # warm-up
    plain, captured, full, plain_cpu, captured_cpu = [], [], [], [], []
    state, traced = 0, 0
    peak_plain = peak_capture = 0
    for index, text in enumerate(texts):
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        start, start_cpu = time.perf_counter(), time.process_time()
        sample_reports(model, [text], seed=seed + index, steps=steps, guidance_scale=guidance)
        plain.append(time.perf_counter() - start)
        plain_cpu.append(time.process_time() - start_cpu)
        if cuda:
            peak_plain = max(peak_plain, torch.cuda.max_memory_allocated())
            torch.cuda.reset_peak_memory_stats()
        start, start_cpu = time.perf_counter(), time.process_time()
        with CrossAttentionCapture(model.unet, conditional_batch=1) as capture:
            sample_reports(model, [text], seed=seed + index, steps=steps, guidance_scale=guidance)
        captured.append(time.perf_counter() - start)
        captured_cpu.append(time.process_time() - start_cpu)
        if cuda:
            peak_capture = max(peak_capture, torch.cuda.max_memory_allocated())
        result = capture.result()
        state = max(state, sum(layer.sums.numel() * layer.sums.element_size() for layer in result.layers.values()))
        start = time.perf_counter()
        generate_with_maps(model, [text], seed=seed + index, steps=steps, guidance_scale=guidance)
        full.append(time.perf_counter() - start)
        words, dropped = word_tokens(model.tokenizer, text, medical_words(text))
        tracemalloc.start()
        localize_captured(result, words, (model.image_size, model.image_size), dropped=dropped)
        traced = max(traced, tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    return Overhead(
        plain_s=statistics.median(plain),
        capture_s=statistics.median(captured),
        capture_and_maps_s=statistics.median(full),
        plain_cpu_s=statistics.median(plain_cpu),
        capture_cpu_s=statistics.median(captured_cpu),
        capture_state_bytes=state,
        maps_traced_peak_bytes=traced,
        cuda_peak_plain=peak_plain if cuda else None,
        cuda_peak_capture=peak_capture if cuda else None,
    )
