"""Generator quality, issue 3's Done-means -> benchmarks/results/generator_eval.md.

For held-out Open-i reports (the test split mini-cxr's training holds out), one image per report is generated
(seed --seed + i, the sampling defaults: DPM-Solver++, 25 steps, guidance as `sample` sets it) and the finding
classifier judges it. The report's present findings (parsed; negated and hedged ones left out) are the truth,
mapped to the classifier's labels with its own `label_name`:
- recall per finding kind: the kind counts as found when any of its labels (either side) is predicted; macro
  recall over the kinds with at least --min-kind-reports test reports (target >= 0.70, issue 15);
- normal reports (no present finding): the rate of images with any predicted label (target <= 0.15);
- side: for each lateralised kind whose findings all state a side (right, left or bilateral), among the images
  where the kind was found, the fraction whose predicted sides equal the stated ones (target >= 0.85 over >= 50
  images: the held-out reports state a side for too few, so --sided short left/right prompts are added).
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

The measurement is medsign_forensics.evaluate.generator (tested there); this script picks the reports, runs it and
writes the results file against the targets above.

Usage:
    python benchmarks/generator_eval.py [--model DIR] [--classifier DIR] [--n N] [--steps 25] [--seed 0]
        [--device cpu|cuda] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import statistics
import sys
from pathlib import Path

import torch

from medsign_forensics.cli.progress import rich_progress
from medsign_forensics.diffusion import DiffusionModel, load_model
from medsign_forensics.diffusion.configs import CAPTION_FORMS, DataConfig
from medsign_forensics.diffusion.export import is_untrained
from medsign_forensics.diffusion.layout import LayoutGuidance
from medsign_forensics.diffusion.sampling import DEFAULT_GUIDANCE, DEFAULT_STEPS
from medsign_forensics.errors import MedsignError
from medsign_forensics.evaluate.generator import (
    LAYOUT_SEED_OFFSET,
    OTHER_SEED_OFFSET,
    THRESHOLD,
    FindingScores,
    GeneratorResults,
    evaluate_generator,
)
from medsign_forensics.fileio import write_text
from medsign_forensics.phantom.classifier import DEFAULT_CLASSIFIER_DIR, load_classifier, read_classifier_config
from medsign_forensics.reports import FindingKind, load_reports, split_reports
from medsign_forensics.reports.prompt import prompt_function
from medsign_forensics.training.environment import machine_line

REPO = Path(__file__).resolve().parents[1]
TARGET_REPORTS = 200
TARGET_MACRO_RECALL = 0.70
TARGET_NORMAL_RATE = 0.15
TARGET_SIDE = 0.85
TARGET_SIDED_IMAGES = 50
MIN_KIND_REPORTS = 20
LAYOUT_GUIDANCE_WORDS = {
    "off": "both halves of classifier-free guidance get the layout (diffusers' adapter pipeline), so guidance "
           "amplifies the text alone.",
    "empty": "the unconditional half of guidance gets no layout where the layout is empty (reports asserting no "
             "finding), so guidance amplifies their empty layout too; other reports as `off`.",
    "all": "the unconditional half of guidance gets no layout, so guidance amplifies the layout as well as the "
           "text.",
}


# --- report --------------------------------------------------------------------------------------------------


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _verdict(value: float | None, target: float, *, at_most: bool = False) -> str:
    if value is None:
        return "NOT met (nothing to measure)"
    return "met" if (value <= target if at_most else value >= target) else "NOT met"


def _with_n(value: float | None, n: int) -> str:
    return f"{_fmt(value)} ({n})"


def _labels(scores: FindingScores) -> str:
    return ", ".join(f"{label} {count}" for label, count in scores.normal_labels.most_common()) or "none"


def _sided_row(results: GeneratorResults) -> list[str]:
    """The side criterion over the held-out left/right prompts (needs >= TARGET_SIDED_IMAGES found images)."""
    if results.sided is None or results.sided_phantoms is None:
        return ["| lateralised findings on the stated side, left/right prompts | not run (--sided 0) | | | "
                f">= {TARGET_SIDE:.2f} over >= {TARGET_SIDED_IMAGES} | NOT measured |"]
    gen, ref = results.sided, results.sided_phantoms
    found = sum(gen.sided_found.values())
    rate = gen.side_rate()
    verdict = "NOT met (too few images found)" if found < TARGET_SIDED_IMAGES else _verdict(rate, TARGET_SIDE)
    prompts = sum(gen.reports.values())
    return [f"| lateralised findings on the stated side, {prompts} held-out left/right prompts | "
            f"{_with_n(rate, found)} | {_with_n(ref.side_rate(), sum(ref.sided_found.values()))} | — | "
            f">= {TARGET_SIDE:.2f} over >= {TARGET_SIDED_IMAGES} | {verdict} |"]


def render_markdown(
    *, args: argparse.Namespace, model: DiffusionModel, classifier_meta: dict, classifier_dir: Path,
    results: GeneratorResults, machine: str, command: str, scheduler: str,
) -> str:
    gen, ref, rec = results.generated, results.phantoms, results.reconstructed
    min_reports = args.min_kind_reports
    macro_kinds = gen.macro_kinds(min_reports)
    model_random = is_untrained(model.path)
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
        f"- Sampling: prompts = {CAPTION_FORMS[args.prompts]}; "
        f"{scheduler}, {args.steps} steps, guidance {args.guidance}, seed {args.seed}+i for report i, "
        f"batch {args.batch}; median {statistics.median(results.per_image_s):.3f} s per image over "
        f"{len(results.per_image_s)} batch(es). Phantoms: seed {args.seed}+i (other seeds: "
        f"{args.seed + OTHER_SEED_OFFSET}+i).",
        *([f"- Layout: each report's layout (the phantom renderer's placement of its findings, seed "
           f"{args.seed + LAYOUT_SEED_OFFSET}+i, never the scored phantom's own) fed to the model's layout adapter."]
          if args.layout else []),
        *([f"- Layout guidance `{args.layout_guidance}`: "
           + LAYOUT_GUIDANCE_WORDS[args.layout_guidance]] if args.layout else []),
        f"- Decision threshold: {THRESHOLD} on each label's probability (the classifier defines no threshold of "
        "its own).",
        f"- Wall time: {results.wall_s:.1f} s (generating, rendering, reconstructing and classifying).",
        "",
        "## Done means",
        "",
        "| criterion | generated | phantoms of the same reports (reference) | VAE reconstructions of those "
        "phantoms (ceiling) | target | verdict (generated) |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| held-out reports evaluated | {results.n} | {results.n} | {results.n} | >= {TARGET_REPORTS} | "
        f"{'met' if results.n >= TARGET_REPORTS else 'NOT met'} |",
        f"| macro recall over kinds with >= {min_reports} reports ({', '.join(macro_kinds) or 'none'}) | "
        f"{_fmt(gen.macro_recall(min_reports))} | {_fmt(ref.macro_recall(min_reports))} | "
        f"{_fmt(rec.macro_recall(min_reports))} | "
        f">= {TARGET_MACRO_RECALL:.2f} | {_verdict(gen.macro_recall(min_reports), TARGET_MACRO_RECALL)} |",
        f"| normal reports with any predicted finding | {_with_n(gen.normal_rate(), gen.normal_reports)} | "
        f"{_with_n(ref.normal_rate(), ref.normal_reports)} | {_with_n(rec.normal_rate(), rec.normal_reports)} | "
        f"<= {TARGET_NORMAL_RATE:.2f} | {_verdict(gen.normal_rate(), TARGET_NORMAL_RATE, at_most=True)} |",
        f"| lateralised findings on the stated side (of those found), held-out reports | "
        f"{_with_n(gen.side_rate(), sum(gen.sided_found.values()))} | "
        f"{_with_n(ref.side_rate(), sum(ref.sided_found.values()))} | "
        f"{_with_n(rec.side_rate(), sum(rec.sided_found.values()))} | (see the next row) | — |",
        *_sided_row(results),
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
        "False findings on normal reports, by label (images; one image can carry several): generated "
        + _labels(gen) + "; VAE reconstructions " + _labels(rec) + ".",
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
    parser.add_argument("--sided", type=int, default=120,
                        help="held-out left/right prompts generated for the side criterion (0: skip)")
    parser.add_argument("--min-kind-reports", type=int, default=MIN_KIND_REPORTS,
                        help="test reports a kind needs to count in the macro recall")
    parser.add_argument("--prompts", choices=CAPTION_FORMS, default=None,
                        help="prompt form: the report as written, or its findings prompt (default: the form the model "
                             "folder names, as medsign generate gives it)")
    parser.add_argument("--layout", action=argparse.BooleanOptionalAction, default=None,
                        help="sample from each report's layout too (default: when the model has a layout adapter)")
    parser.add_argument("--layout-guidance", choices=[policy.value for policy in LayoutGuidance],
                        default=LayoutGuidance.EMPTY.value,
                        help="with --layout: whose layout the unconditional half of guidance leaves out (default: "
                             "empty layouts, as medsign generate samples)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (CPU runs)")
    parser.add_argument("--machine", default=None, help="machine description (default: detected)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "generator_eval.md")
    args = parser.parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    model = load_model(args.model, device=args.device)
    args.prompts = args.prompts or model.prompt_form  # by default the model gets what `medsign generate` gives it
    args.layout = model.adapter is not None if args.layout is None else args.layout
    classifier = load_classifier(args.classifier, device=args.device)
    classifier_meta = read_classifier_config(args.classifier)
    _, test = split_reports(load_reports(args.reports), test_fraction=args.test_fraction, seed=args.split_seed)
    texts = [report.text for report in test[: args.n]]
    if len(texts) < 2:
        raise SystemExit("fewer than 2 held-out reports; check --reports, --test-fraction and --n")
    with rich_progress() as progress:
        results = evaluate_generator(model, classifier, texts, seed=args.seed, steps=args.steps,
                                     guidance=args.guidance, batch=args.batch, progress=progress, sided=args.sided,
                                     prompt=prompt_function(args.prompts), layout=args.layout,
                                     layout_guidance=args.layout_guidance)
    machine = args.machine or machine_line(model.device)
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
