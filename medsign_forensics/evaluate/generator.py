"""Generator quality (issue 3's done-means): do generated images show the findings of their reports?

For each report one image is generated (seed ``seed + i``) and the finding classifier judges it. The report's
present findings (parsed; negated and hedged ones left out) are the truth, mapped to the classifier's labels with
its own ``label_name``:

- recall per finding kind: the kind counts as found when any of its labels (either side) is predicted;
- normal reports (no present finding): the rate of images with any predicted label;
- side: for each lateralised kind whose findings all state a side (right, left or bilateral), among the images
  where the kind was found, the fraction whose predicted sides equal the stated ones; also over short held-out
  left/right prompts (:func:`sided_prompts`), since the held-out reports state a side for few found findings.

The same scores for the phantoms rendered from the same reports (seed ``seed + i``) stand beside them: what the
classifier itself recovers from the images the generator was trained to imitate; and for the VAE reconstructions
of those phantoms: what survives the latent space, the ceiling of any generator that decodes with this VAE.
Fréchet distances on the classifier's penultimate features compare generated images, VAE reconstructions of the
phantoms (the floor a perfect latent model would reach) and phantoms of other seeds (the finite-sample distance of
the phantom world itself) with the phantoms. ``benchmarks/generator_eval.py`` runs this and writes the results file.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

from medsign_forensics.diffusion import DiffusionModel, sample
from medsign_forensics.diffusion.conditioning import model_layouts
from medsign_forensics.diffusion.layout import LayoutGuidance
from medsign_forensics.diffusion.sampling import SampleOutput, decode
from medsign_forensics.errors import InputError
from medsign_forensics.evaluate.metrics import Frechet, frechet_distance
from medsign_forensics.imageio import BT601_LUMA
from medsign_forensics.phantom import SIZES, render_report
from medsign_forensics.phantom.classifier import (
    LABEL_INDEX,
    LABELS,
    FindingClassifier,
    extract_features,
    label_name,
    predict,
)
from medsign_forensics.reports import Finding, FindingKind, Side, parse_report
from medsign_forensics.training.progress import ProgressFn, notify

#: The classifier module defines no decision threshold (``decode_labels`` defaults to 0.5), so 0.5 it is.
THRESHOLD = 0.5
#: Phantoms of the same reports drawn with other seeds: seed + OTHER_SEED_OFFSET + i.
OTHER_SEED_OFFSET = 1_000_000
#: Layouts of the reports for a model with a layout adapter: seed + LAYOUT_SEED_OFFSET + i.
LAYOUT_SEED_OFFSET = 2_000_000
_PAIRED_SIDES = (Side.RIGHT, Side.LEFT)


# --- scoring ------------------------------------------------------------------------------------------------


def present_findings(text: str) -> tuple[Finding, ...]:
    """The findings a report asserts (not negated, not hedged): what a faithful image must show."""
    return tuple(finding for finding in parse_report(text) if finding.present)


def kind_label_indices(kind: FindingKind) -> list[int]:
    """Indices of every classifier label of ``kind`` (both sides for lateralised kinds)."""
    if not kind.lateralised:
        return [LABEL_INDEX[label_name(kind)]]
    return [LABEL_INDEX[label_name(kind, side)] for side in _PAIRED_SIDES]


def stated_sides(findings: Sequence[Finding], kind: FindingKind) -> frozenset[Side] | None:
    """The patient sides the report gives for ``kind`` (bilateral = both), or None when the kind has no side or
    any of its findings leaves the side unspecified (then the generator may draw it on either side)."""
    if not kind.lateralised:
        return None
    sides: set[Side] = set()
    for finding in findings:
        if finding.kind is not kind:
            continue
        if finding.side is Side.BILATERAL:
            sides.update(_PAIRED_SIDES)
        elif finding.side in _PAIRED_SIDES:
            sides.add(finding.side)
        else:
            return None
    return frozenset(sides) or None


@dataclass
class FindingScores:
    """Counts per finding kind (value strings) and over normal reports, for one set of images."""

    reports: Counter[str] = field(default_factory=Counter)
    found: Counter[str] = field(default_factory=Counter)
    sided_found: Counter[str] = field(default_factory=Counter)  # found, and the report states every side
    side_correct: Counter[str] = field(default_factory=Counter)
    normal_reports: int = 0
    normal_flagged: int = 0
    normal_labels: Counter[str] = field(default_factory=Counter)  # labels predicted on normal reports' images

    def recall(self, kind: str) -> float | None:
        return self.found[kind] / self.reports[kind] if self.reports[kind] else None

    def macro_kinds(self, min_reports: int) -> list[str]:
        return sorted(kind for kind, count in self.reports.items() if count >= min_reports)

    def macro_recall(self, min_reports: int) -> float | None:
        kinds = self.macro_kinds(min_reports)
        return float(np.mean([self.recall(kind) for kind in kinds])) if kinds else None

    def normal_rate(self) -> float | None:
        return self.normal_flagged / self.normal_reports if self.normal_reports else None

    def side_rate(self, kind: str | None = None) -> float | None:
        total = sum(self.sided_found.values()) if kind is None else self.sided_found[kind]
        correct = sum(self.side_correct.values()) if kind is None else self.side_correct[kind]
        return correct / total if total else None


def score(findings: Sequence[Sequence[Finding]], probabilities: np.ndarray, *, threshold: float) -> FindingScores:
    """Compare each image's predicted labels (probability >= ``threshold``) with its report's findings."""
    if len(findings) != len(probabilities):
        raise InputError(f"{len(findings)} reports but {len(probabilities)} probability rows")
    scores = FindingScores()
    for report_findings, row in zip(findings, probabilities):
        predicted = np.asarray(row) >= threshold
        kinds = {finding.kind for finding in report_findings}
        if not kinds:
            scores.normal_reports += 1
            scores.normal_flagged += bool(predicted.any())
            scores.normal_labels.update(LABELS[index] for index in np.flatnonzero(predicted))
            continue
        for kind in kinds:
            name = kind.value
            scores.reports[name] += 1
            found = bool(predicted[kind_label_indices(kind)].any())
            scores.found[name] += found
            sides = stated_sides(report_findings, kind)
            if found and sides is not None:
                drawn = {side for side in _PAIRED_SIDES if predicted[LABEL_INDEX[label_name(kind, side)]]}
                scores.sided_found[name] += 1
                scores.side_correct[name] += drawn == sides
    return scores


# --- prompts that state a side -------------------------------------------------------------------------------

#: Short reports of one lateralised finding each ({side} is "right" or "left"), written here and so in no
#: training report's wording: held-out left/right prompts for the side criterion, whose Open-i test reports state
#: a side for too few found findings to measure it.
SIDED_TEMPLATES = (
    "{Side} lower lobe consolidation.",
    "{Side} upper lobe airspace opacity.",
    "Large {side} pleural effusion.",
    "Moderate {side} pleural effusion.",
    "{Side} lower lobe atelectasis.",
    "Large {side} pneumothorax.",
    "{Side} upper lobe mass.",
    "{Side} upper lobe nodule.",
)


def sided_prompts(count: int) -> list[str]:
    """``count`` prompts cycling through :data:`SIDED_TEMPLATES`, right and left in turn."""
    prompts = []
    for index in range(count):
        template = SIDED_TEMPLATES[(index // 2) % len(SIDED_TEMPLATES)]
        side = ("right", "left")[index % 2]
        prompts.append(template.format(side=side, Side=side.capitalize()))
    return prompts


# --- images --------------------------------------------------------------------------------------------------


def _grey(images: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [0, 1] -> (B, H, W) float32: greyscale passes through, RGB goes through BT.601 luma."""
    images = images.float().cpu()
    if images.shape[1] == 3:
        images = torch.tensordot(torch.tensor(BT601_LUMA), images, dims=([0], [1]))[:, None]
    if images.shape[1] != 1:
        raise InputError(f"expected 1 or 3 image channels, got {images.shape[1]}")
    return images[:, 0].numpy().astype(np.float32)


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W) -> (N, size, size), area when shrinking (as the classifier resizes), bilinear when growing."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    tensor = torch.from_numpy(images)[:, None]
    mode = "area" if images.shape[-1] > size else "bilinear"
    return F.interpolate(tensor, size=(size, size), mode=mode)[:, 0].clamp(0, 1).numpy()


def generate_images(
    model: DiffusionModel, texts: Sequence[str], *, seed: int, steps: int, guidance: float, batch: int,
    progress: ProgressFn | None = None, task: str = "generating", layouts: torch.Tensor | None = None,
    layout_guidance: LayoutGuidance | str = LayoutGuidance.EMPTY,
) -> tuple[np.ndarray, list[float]]:
    """One greyscale image per report (seed ``seed + i``; ``layouts[i]`` for the layout adapter when given) and
    the wall seconds per image of each batch (a layout's rendering not included)."""
    images, per_image = [], []
    for start in range(0, len(texts), batch):
        chunk = list(texts[start : start + batch])
        began = time.perf_counter()
        result = sample(
            model, chunk, seed=[seed + start + i for i in range(len(chunk))], steps=steps, guidance_scale=guidance,
            output=SampleOutput.IMAGES, layout=None if layouts is None else layouts[start : start + len(chunk)],
            layout_guidance=layout_guidance,
        )
        per_image.append((time.perf_counter() - began) / len(chunk))
        if result.images is None:
            raise InputError("the sampler returned no images")  # SampleOutput.IMAGES always decodes
        images.append(_grey(result.images))
        notify(progress, task, start + len(chunk), len(texts))
    return np.concatenate(images), per_image


def render_phantoms(
    texts: Sequence[str], *, seed: int, size: int, progress: ProgressFn | None = None, task: str = "rendering phantoms"
) -> np.ndarray:
    """Phantoms of the reports (seed ``seed + i``) at ``size`` (rendered at the nearest renderer size)."""
    render_size = size if size in SIZES else min(SIZES)
    images = []
    for index, text in enumerate(texts):
        study, _ = render_report(text, seed=seed + index, size=render_size)
        images.append(study.image)
        notify(progress, task, index + 1, len(texts))
    return _resize(np.stack(images).astype(np.float32), size)


@torch.no_grad()
def reconstruct(
    model: DiffusionModel, phantoms: np.ndarray, *, batch: int, progress: ProgressFn | None = None,
    task: str = "VAE reconstructions",
) -> np.ndarray:
    """Encode each phantom to the VAE posterior's mode and decode it: what the VAE alone keeps of the image."""
    parameter = next(model.vae.parameters())
    out = []
    for start in range(0, len(phantoms), batch):
        chunk = torch.from_numpy(phantoms[start : start + batch])[:, None]
        if model.image_channels == 3:
            chunk = chunk.repeat(1, 3, 1, 1)
        latents = model.vae.encode((chunk * 2 - 1).to(parameter.device, parameter.dtype)).latent_dist.mode()
        out.append(_grey(decode(model, latents)))
        notify(progress, task, start + len(chunk), len(phantoms))
    return np.concatenate(out)


# --- the whole measurement -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GeneratorResults:
    """Scores of the generated images and of the phantoms of the same reports, and the Fréchet distances."""

    n: int
    generated: FindingScores
    phantoms: FindingScores
    reconstructed: FindingScores  # the ceiling of any generator decoding with this VAE
    fd_generated: Frechet
    fd_reconstructed: Frechet
    fd_other_seeds: Frechet
    feature_dim: int
    wall_s: float
    per_image_s: list[float]
    sided: FindingScores | None = None
    sided_phantoms: FindingScores | None = None


def evaluate_generator(
    model: DiffusionModel, classifier: FindingClassifier, texts: Sequence[str], *, seed: int, steps: int,
    guidance: float, batch: int, threshold: float = THRESHOLD, progress: ProgressFn | None = None,
    sided: int = 0, prompt: Callable[[str], str] | None = None, layout: bool = False,
    layout_guidance: LayoutGuidance | str = LayoutGuidance.EMPTY,
) -> GeneratorResults:
    """Generate, render and reconstruct for ``texts`` (two or more reports), judge every set with ``classifier``
    and compare their features (see the module docstring). ``sided`` > 0 also generates and renders that many
    :func:`sided_prompts` (seeds ``seed + i`` too) and scores them alone. ``prompt`` turns each report into the
    model's prompt (e.g. :func:`~medsign_forensics.reports.prompt.findings_prompt` for a model trained on
    findings prompts); the report itself stays the truth and is what the phantoms are rendered from. ``layout``
    samples a model with a layout adapter from each report's layout (:func:`model_layouts`), drawn with seeds
    ``seed + LAYOUT_SEED_OFFSET + i``, so that no layout is the scored phantom's own placement;
    ``layout_guidance`` as in :func:`~medsign_forensics.diffusion.sample`."""
    if len(texts) < 2:
        raise InputError(f"the generator evaluation needs at least 2 reports, got {len(texts)}")
    started = time.perf_counter()
    size = model.image_size
    as_prompt = prompt or (lambda text: text)

    def layouts(reports: Sequence[str]) -> torch.Tensor | None:
        if not layout:
            return None
        return model_layouts(model, reports, [seed + LAYOUT_SEED_OFFSET + i for i in range(len(reports))])

    generated, per_image = generate_images(
        model, [as_prompt(text) for text in texts], seed=seed, steps=steps, guidance=guidance, batch=batch,
        progress=progress, layouts=layouts(texts), layout_guidance=layout_guidance,
    )
    phantoms = render_phantoms(texts, seed=seed, size=size, progress=progress)
    others = render_phantoms(texts, seed=seed + OTHER_SEED_OFFSET, size=size, progress=progress,
                             task="rendering phantoms, other seeds")
    reconstructed = reconstruct(model, phantoms, batch=batch, progress=progress)
    sets = {"generated": generated, "phantoms": phantoms, "others": others, "reconstructed": reconstructed}
    probabilities = {name: predict(classifier, sets[name]) for name in ("generated", "phantoms", "reconstructed")}
    notify(progress, "classifier", 2, 2 + len(sets))
    features = {}
    for done, (name, images) in enumerate(sets.items(), start=3):
        features[name] = extract_features(classifier, images)
        notify(progress, "classifier", done, 2 + len(sets))
    findings = [present_findings(text) for text in texts]
    sided_scores: tuple[FindingScores | None, FindingScores | None] = (None, None)
    if sided:
        prompts = sided_prompts(sided)
        drawn, _ = generate_images(model, [as_prompt(text) for text in prompts], seed=seed, steps=steps,
                                   guidance=guidance, batch=batch, progress=progress,
                                   task="generating, left/right prompts", layouts=layouts(prompts),
                                   layout_guidance=layout_guidance)
        rendered = render_phantoms(prompts, seed=seed, size=size, progress=progress,
                                   task="rendering phantoms, left/right prompts")
        truth = [present_findings(text) for text in prompts]
        sided_scores = tuple(  # type: ignore[assignment]
            score(truth, predict(classifier, images), threshold=threshold) for images in (drawn, rendered)
        )
    return GeneratorResults(
        n=len(texts),
        generated=score(findings, probabilities["generated"], threshold=threshold),
        phantoms=score(findings, probabilities["phantoms"], threshold=threshold),
        reconstructed=score(findings, probabilities["reconstructed"], threshold=threshold),
        fd_generated=frechet_distance(features["generated"], features["phantoms"]),
        fd_reconstructed=frechet_distance(features["reconstructed"], features["phantoms"]),
        fd_other_seeds=frechet_distance(features["others"], features["phantoms"]),
        feature_dim=features["phantoms"].shape[1],
        wall_s=time.perf_counter() - started,
        per_image_s=per_image,
        sided=sided_scores[0],
        sided_phantoms=sided_scores[1],
    )
