"""Generator quality, issue 3's Done-means -> benchmarks/results/generator_eval.md.

For held-out Open-i reports (the test split mini-cxr's training holds out), one image per report is generated
(seed --seed + i, the sampling defaults: DPM-Solver++, 25 steps, guidance as `sample` sets it) and the finding
classifier judges it. The report's present findings (parsed; negated and hedged ones left out) are the truth,
mapped to the classifier's labels with its own `label_name`:
- recall per finding kind: the kind counts as found when any of its labels (either side) is predicted; macro
  recall over the kinds with at least --min-kind-reports test reports (target >= 0.80);
- normal reports (no present finding): the rate of images with any predicted label (target <= 0.15);
- side: for each lateralised kind whose findings all state a side (right, left or bilateral), among the images
  where the kind was found, the fraction whose predicted sides equal the stated ones (target >= 0.80).
A label is predicted when its probability is >= 0.5: the classifier defines no decision threshold of its own.
The same scores for the phantoms rendered from the same reports (seed --seed + i) stand beside them: what the
classifier itself recovers from the images the generator was trained to imitate (its ceiling here).

Fréchet distance on the classifier's penultimate features (scipy.linalg.sqrtm): generated images against those
phantoms, next to the VAE reconstructions of the phantoms (encode to the posterior mode, decode: the floor a
perfect latent model would reach) and to phantoms of the same reports with other seeds (the finite-sample
distance of two draws from the phantom world itself). With fewer images than feature dimensions the covariance
estimates are rank-deficient and the distance is biased upwards; compare rows of equal N only.

A model whose MODEL_CARD.md records no training run, or a classifier whose config.json records none, gets its
figures labelled as a pipeline check; they say nothing about the generator.

Usage:
    python benchmarks/generator_eval.py [--model DIR] [--classifier DIR] [--n N] [--steps 25] [--seed 0]
        [--device cpu|cuda] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import shlex
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch.nn import functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from localization_eval import untrained  # noqa: E402
from verify_speed import machine_line  # noqa: E402

from medsign_forensics.diffusion import DiffusionModel, load_model, sample  # noqa: E402
from medsign_forensics.diffusion.configs import DataConfig  # noqa: E402
from medsign_forensics.diffusion.sampling import DEFAULT_GUIDANCE, DEFAULT_STEPS, SampleOutput, decode  # noqa: E402
from medsign_forensics.errors import MedsignError  # noqa: E402
from medsign_forensics.fileio import write_text  # noqa: E402
from medsign_forensics.imageio import BT601_LUMA  # noqa: E402
from medsign_forensics.phantom import SIZES, render_report  # noqa: E402
from medsign_forensics.phantom.classifier import (  # noqa: E402
    DEFAULT_CLASSIFIER_DIR,
    LABEL_INDEX,
    extract_features,
    label_name,
    load_classifier,
    predict,
    read_classifier_config,
)
from medsign_forensics.reports import (  # noqa: E402
    Finding,
    FindingKind,
    Side,
    load_reports,
    parse_report,
    split_reports,
)

TARGET_REPORTS = 200
TARGET_MACRO_RECALL = 0.80
TARGET_NORMAL_RATE = 0.15
TARGET_SIDE = 0.80
MIN_KIND_REPORTS = 20
#: The classifier module defines no decision threshold (``decode_labels`` defaults to 0.5), so 0.5 it is.
THRESHOLD = 0.5
OTHER_SEED_OFFSET = 1_000_000
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
        raise ValueError(f"{len(findings)} reports but {len(probabilities)} probability rows")
    scores = FindingScores()
    for report_findings, row in zip(findings, probabilities):
        predicted = np.asarray(row) >= threshold
        kinds = {finding.kind for finding in report_findings}
        if not kinds:
            scores.normal_reports += 1
            scores.normal_flagged += bool(predicted.any())
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


# --- Fréchet distance ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frechet:
    """A Fréchet distance and how its matrix square root behaved (``offset``: eps*I had to be added to both
    covariances because sqrtm of their product was not finite; ``max_imag``: the imaginary part dropped)."""

    distance: float
    n_a: int
    n_b: int
    offset: bool
    max_imag: float


def frechet_distance(a: np.ndarray, b: np.ndarray, *, eps: float = 1e-6) -> Frechet:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between two feature sets (N, D), N >= 2 each."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two (N >= 2, D) feature sets of equal D, got {a.shape} and {b.shape}")
    a, b = a.astype(np.float64), b.astype(np.float64)
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root = scipy.linalg.sqrtm(cov_a @ cov_b)
    offset = not np.isfinite(root).all()
    if offset:
        shift = np.eye(cov_a.shape[0]) * eps
        root = scipy.linalg.sqrtm((cov_a + shift) @ (cov_b + shift))
    max_imag = float(np.abs(np.imag(root)).max())
    root = np.real(root)
    diff = mu_a - mu_b
    distance = float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(root))
    return Frechet(distance=distance, n_a=len(a), n_b=len(b), offset=offset, max_imag=max_imag)


# --- images --------------------------------------------------------------------------------------------------


def _grey(images: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [0, 1] -> (B, H, W) float32: greyscale passes through, RGB goes through BT.601 luma."""
    images = images.float().cpu()
    if images.shape[1] == 3:
        images = torch.tensordot(torch.tensor(BT601_LUMA), images, dims=([0], [1]))[:, None]
    if images.shape[1] != 1:
        raise ValueError(f"expected 1 or 3 image channels, got {images.shape[1]}")
    return images[:, 0].numpy().astype(np.float32)


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W) -> (N, size, size), area when shrinking (as the classifier resizes), bilinear when growing."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    tensor = torch.from_numpy(images)[:, None]
    mode = "area" if images.shape[-1] > size else "bilinear"
    return F.interpolate(tensor, size=(size, size), mode=mode)[:, 0].clamp(0, 1).numpy()


Advance = Callable[[int], None]


def generate(
    model: DiffusionModel, texts: Sequence[str], *, seed: int, steps: int, guidance: float, batch: int,
    advance: Advance,
) -> tuple[np.ndarray, list[float]]:
    """One greyscale image per report (seed ``seed + i``) and the wall seconds per image of each batch."""
    images, per_image = [], []
    for start in range(0, len(texts), batch):
        chunk = list(texts[start : start + batch])
        began = time.perf_counter()
        result = sample(
            model, chunk, seed=[seed + start + i for i in range(len(chunk))], steps=steps, guidance_scale=guidance,
            output=SampleOutput.IMAGES,
        )
        per_image.append((time.perf_counter() - began) / len(chunk))
        images.append(_grey(result.images))
        advance(len(chunk))
    return np.concatenate(images), per_image


def render_phantoms(texts: Sequence[str], *, seed: int, size: int, advance: Advance) -> np.ndarray:
    """Phantoms of the reports (seed ``seed + i``) at the model's image size."""
    render_size = size if size in SIZES else min(SIZES)
    images = []
    for index, text in enumerate(texts):
        study, _ = render_report(text, seed=seed + index, size=render_size)
        images.append(study.image)
        advance(1)
    return _resize(np.stack(images).astype(np.float32), size)


@torch.no_grad()
def reconstruct(model: DiffusionModel, phantoms: np.ndarray, *, batch: int, advance: Advance) -> np.ndarray:
    """Encode each phantom to the VAE posterior's mode and decode it: what the VAE alone keeps of the image."""
    parameter = next(model.vae.parameters())
    out = []
    for start in range(0, len(phantoms), batch):
        chunk = torch.from_numpy(phantoms[start : start + batch])[:, None]
        if model.image_channels == 3:
            chunk = chunk.repeat(1, 3, 1, 1)
        latents = model.vae.encode((chunk * 2 - 1).to(parameter.device, parameter.dtype)).latent_dist.mode()
        out.append(_grey(decode(model, latents)))
        advance(len(chunk))
    return np.concatenate(out)


# --- report --------------------------------------------------------------------------------------------------


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _verdict(value: float | None, target: float, *, at_most: bool = False) -> str:
    if value is None:
        return "NOT met (nothing to measure)"
    return "met" if (value <= target if at_most else value >= target) else "NOT met"


def _with_n(value: float | None, n: int) -> str:
    return f"{_fmt(value)} ({n})"


@dataclass(frozen=True)
class Results:
    n: int
    generated: FindingScores
    phantoms: FindingScores
    fd_generated: Frechet
    fd_reconstructed: Frechet
    fd_other_seeds: Frechet
    feature_dim: int
    wall_s: float
    per_image_s: list[float]


def render_markdown(
    *, args: argparse.Namespace, model: DiffusionModel, classifier_meta: dict, classifier_dir: Path, results: Results,
    machine: str, command: str, scheduler: str,
) -> str:
    gen, ref = results.generated, results.phantoms
    min_reports = args.min_kind_reports
    macro_kinds = gen.macro_kinds(min_reports)
    model_random = untrained(model)
    classifier_random = "train_config" not in classifier_meta
    lines = ["# Generator quality: findings recovered from generated images, and a Fréchet distance", ""]
    if model_random or classifier_random:
        which = " and ".join(
            name for name, flag in (("MODEL", model_random), ("CLASSIFIER", classifier_random)) if flag
        )
        lines += [
            f"**PIPELINE CHECK WITH AN UNTRAINED (RANDOM-WEIGHT) {which}: these figures say nothing about the "
            "generator.**",
            "",
        ]
    steps_line = classifier_meta.get("steps", "no training run recorded")
    lines += [
        f"- Date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}; machine: {machine}.",
        f"- Command: `{command}`",
        f"- Model: {model.name} ({model.path}), weights SHA-256 `{model.weights_sha256}`, device {model.device}, "
        f"dtype {model.dtype}, {model.image_size}x{model.image_size}.",
        f"- Classifier: {classifier_dir}, weights SHA-256 `{classifier_meta.get('weights_sha256')}` (training "
        f"steps: {steps_line}), {classifier_meta['config']['image_size']} px input, {results.feature_dim} "
        "penultimate features.",
        f"- Data: the first {results.n} held-out reports of {args.reports} (test split: fraction "
        f"{args.test_fraction}, split seed {args.split_seed}); findings from the report parser, negated and hedged "
        "ones left out.",
        f"- Sampling: {scheduler}, {args.steps} steps, guidance {args.guidance}, seed {args.seed}+i for report i, "
        f"batch {args.batch}; median {statistics.median(results.per_image_s):.3f} s per image over "
        f"{len(results.per_image_s)} batch(es). Phantoms: seed {args.seed}+i (other seeds: "
        f"{args.seed + OTHER_SEED_OFFSET}+i).",
        f"- Decision threshold: {THRESHOLD} on each label's probability (the classifier defines no threshold of "
        "its own).",
        f"- Wall time: {results.wall_s:.1f} s in all.",
        "",
        "## Done means",
        "",
        "| criterion | generated | phantoms of the same reports (reference) | target | verdict (generated) |",
        "| --- | --- | --- | --- | --- |",
        f"| held-out reports evaluated | {results.n} | {results.n} | >= {TARGET_REPORTS} | "
        f"{'met' if results.n >= TARGET_REPORTS else 'NOT met'} |",
        f"| macro recall over kinds with >= {min_reports} reports ({', '.join(macro_kinds) or 'none'}) | "
        f"{_fmt(gen.macro_recall(min_reports))} | {_fmt(ref.macro_recall(min_reports))} | "
        f">= {TARGET_MACRO_RECALL:.2f} | {_verdict(gen.macro_recall(min_reports), TARGET_MACRO_RECALL)} |",
        f"| normal reports with any predicted finding | {_with_n(gen.normal_rate(), gen.normal_reports)} | "
        f"{_with_n(ref.normal_rate(), ref.normal_reports)} | <= {TARGET_NORMAL_RATE:.2f} | "
        f"{_verdict(gen.normal_rate(), TARGET_NORMAL_RATE, at_most=True)} |",
        f"| lateralised findings on the stated side (of those found) | "
        f"{_with_n(gen.side_rate(), sum(gen.sided_found.values()))} | "
        f"{_with_n(ref.side_rate(), sum(ref.sided_found.values()))} | >= {TARGET_SIDE:.2f} | "
        f"{_verdict(gen.side_rate(), TARGET_SIDE)} |",
        "",
        "(n) = images the rate is over.",
        "",
        "## Per finding kind",
        "",
        "| kind | test reports | in macro | recall, generated | recall, phantoms | stated side, generated (n) | "
        "stated side, phantoms (n) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind in FindingKind:
        name = kind.value
        if not gen.reports[name]:
            continue
        side_gen = _with_n(gen.side_rate(name), gen.sided_found[name]) if kind.lateralised else "n/a"
        side_ref = _with_n(ref.side_rate(name), ref.sided_found[name]) if kind.lateralised else "n/a"
        lines.append(
            f"| {name} | {gen.reports[name]} | {'yes' if name in macro_kinds else 'no'} | {_fmt(gen.recall(name))} | "
            f"{_fmt(ref.recall(name))} | {side_gen} | {side_ref} |"
        )
    lines += [
        "",
        "A kind is found when any of its labels (either side) is predicted; its side is correct when the predicted "
        "sides equal the sides the report states (bilateral = both), over images where it was found and every "
        "finding of the kind states a side.",
        "",
        "## Fréchet distance on the classifier's penultimate features, against the phantoms of the same reports",
        "",
        "| images | N | Fréchet distance |",
        "| --- | --- | --- |",
    ]
    rows = (
        (f"generated (mini-cxr sampling, {args.steps} steps)", results.fd_generated),
        ("VAE reconstructions of the phantoms (floor)", results.fd_reconstructed),
        ("phantoms of the same reports, other seeds (finite-sample reference)", results.fd_other_seeds),
    )
    lines += [f"| {label} | {fd.n_a} | {fd.distance:.4g} |" for label, fd in rows]
    lines.append("")
    if results.n <= results.feature_dim:
        lines += [
            f"N = {results.n} images is not more than the {results.feature_dim} feature dimensions: the covariances "
            "are rank-deficient and the distance is a BIASED estimate (upwards); compare rows of equal N only.",
            "",
        ]
    notes = [
        f"{label}: eps*I added to both covariances (sqrtm not finite)" for label, fd in rows if fd.offset
    ] + [f"{label}: sqrtm imaginary part up to {fd.max_imag:.2g} dropped" for label, fd in rows if fd.max_imag > 1e-3]
    if notes:
        lines += ["Numerics: " + "; ".join(notes) + ".", ""]
    return "\n".join(lines)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()
    )


def main(argv: list[str] | None = None) -> int:
    defaults = DataConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped mini-cxr)")
    parser.add_argument("--classifier", type=Path, default=DEFAULT_CLASSIFIER_DIR, help="finding classifier folder")
    parser.add_argument("--reports", default=defaults.corpus, help="report corpus (default: open-i)")
    parser.add_argument("--test-fraction", type=float, default=defaults.test_fraction)
    parser.add_argument("--split-seed", type=int, default=defaults.split_seed)
    parser.add_argument("--n", type=int, default=None, help="the first N held-out reports (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    parser.add_argument("--batch", type=int, default=8, help="images per sampling / VAE batch")
    parser.add_argument("--min-kind-reports", type=int, default=MIN_KIND_REPORTS,
                        help="test reports a kind needs to count in the macro recall")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (CPU runs)")
    parser.add_argument("--machine", default=None, help="machine description (default: detected)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "generator_eval.md")
    args = parser.parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    started = time.perf_counter()

    model = load_model(args.model, device=args.device)
    classifier = load_classifier(args.classifier, device=args.device)
    classifier_meta = read_classifier_config(args.classifier)
    _, test = split_reports(load_reports(args.reports), test_fraction=args.test_fraction, seed=args.split_seed)
    cases = test[: args.n]
    if len(cases) < 2:
        raise SystemExit("fewer than 2 held-out reports; check --reports, --test-fraction and --n")
    texts = [report.text for report in cases]
    findings = [present_findings(text) for text in texts]
    size = model.image_size

    with _progress() as progress:
        def task(description: str) -> Advance:
            task_id = progress.add_task(description, total=len(texts))
            return lambda count: progress.advance(task_id, count)

        generated, per_image = generate(
            model, texts, seed=args.seed, steps=args.steps, guidance=args.guidance, batch=args.batch,
            advance=task("generating"),
        )
        phantoms = render_phantoms(texts, seed=args.seed, size=size, advance=task("rendering phantoms"))
        others = render_phantoms(
            texts, seed=args.seed + OTHER_SEED_OFFSET, size=size, advance=task("rendering phantoms, other seeds")
        )
        reconstructed = reconstruct(model, phantoms, batch=args.batch, advance=task("VAE reconstructions"))
        judged = progress.add_task("classifier", total=6)
        probabilities = {}
        for name, images in (("generated", generated), ("phantoms", phantoms)):
            probabilities[name] = predict(classifier, images)
            progress.advance(judged)
        features = {}
        for name, images in (
            ("generated", generated), ("phantoms", phantoms), ("others", others), ("reconstructed", reconstructed)
        ):
            features[name] = extract_features(classifier, images)
            progress.advance(judged)

    results = Results(
        n=len(texts),
        generated=score(findings, probabilities["generated"], threshold=THRESHOLD),
        phantoms=score(findings, probabilities["phantoms"], threshold=THRESHOLD),
        fd_generated=frechet_distance(features["generated"], features["phantoms"]),
        fd_reconstructed=frechet_distance(features["reconstructed"], features["phantoms"]),
        fd_other_seeds=frechet_distance(features["others"], features["phantoms"]),
        feature_dim=features["phantoms"].shape[1],
        wall_s=time.perf_counter() - started,
        per_image_s=per_image,
    )
    if args.machine:
        machine = args.machine
    elif model.device.type == "cuda":
        # machine_line describes the CPU VM; a GPU run names its GPU instead.
        gpu = torch.cuda.get_device_name(model.device)
        machine = f"{gpu}, python {platform.python_version()}, torch {torch.__version__}"
    else:
        machine = machine_line()
    parts = [sys.argv[0] if argv is None else "benchmarks/generator_eval.py", *(sys.argv[1:] if argv is None else argv)]
    command = "python " + " ".join(shlex.quote(part) for part in parts)
    markdown = render_markdown(
        args=args, model=model, classifier_meta=classifier_meta, classifier_dir=args.classifier, results=results,
        machine=machine, command=command, scheduler=type(model.scheduler).__name__,
    )
    write_text(args.out, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except MedsignError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(error.exit_code) from None
