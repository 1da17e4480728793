"""Localization map A_loc against ground truth -> benchmarks/results/localization_eval.md.

For phantoms rendered from HELD-OUT Open-i reports (the test split mini-cxr's training holds out), whose lesion
masks are exact, the map of each drawn finding kind is read from the model by inversion (the phantom's latent
noised to --timesteps, one denoising step conditioned on the report, cross-attention captured; see
medsign_forensics.localization.inversion) from the words serving that kind, and scored:
- pointing game (the map's maximum inside the kind's mask) and IoU of (map > 0.5) with the mask, per finding
  kind, for three maps: A_avg (no CAS, min-max scaled, i.e. no AAS), A_avg + AAS (no CAS) and CAS + AAS (MedSign);
- next to fixed prior maps that ignore the image and the attention: the mean lesion mask over training-split
  phantoms (one map for every kind), and the mean mask of the same kind. A prior's "salient region" for IoU is
  its top 30% of pixels (the area AAS keeps above 0.5);
- the report-level A_loc (all words, pixel-wise maximum) against the union of the report's masks (IoU).
Then, with the generation path, the capture overhead: median wall time of sampling with the capture installed
(and of capture + map building) over plain sampling, same reports and seeds; and memory: the capture's running
sums, numpy's peak during map building (tracemalloc), CUDA peak allocated with and without capture (on GPU),
and the process's peak RSS.

Note: AAS is monotone, so A_avg and A_avg + AAS always share their maximum and their pointing game; they
differ in IoU.

A model whose MODEL_CARD.md records no training run (no "## Training run" section: random weights) gets its
figures labelled as a pipeline check; they say nothing about localization.

The scoring and timing are medsign_forensics.evaluate.localization (tested there); this script picks the reports,
runs them and writes the results file.

Usage:
    python benchmarks/localization_eval.py [--model DIR] [--n N] [--device cpu|cuda] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep: CPU time then counts work only

import numpy as np  # noqa: E402
import torch  # noqa: E402

from medsign_forensics.diffusion import DiffusionModel, load_model  # noqa: E402
from medsign_forensics.diffusion.configs import CAPTION_FORMS, DataConfig  # noqa: E402
from medsign_forensics.diffusion.export import is_untrained  # noqa: E402
from medsign_forensics.diffusion.sampling import DEFAULT_GUIDANCE, DEFAULT_STEPS  # noqa: E402
from medsign_forensics.evaluate.localization import (  # noqa: E402
    PRIORS,
    VARIANTS,
    Overhead,
    Scores,
    build_priors,
    has_present_finding,
    measure_overhead,
    score_maps,
)
from medsign_forensics.fileio import write_text  # noqa: E402
from medsign_forensics.localization import DEFAULT_TIMESTEPS  # noqa: E402
from medsign_forensics.reports import load_reports, split_reports  # noqa: E402
from medsign_forensics.reports.prompt import prompt_function
from medsign_forensics.reports.words import medical_words, word_tokens  # noqa: E402
from medsign_forensics.training.environment import machine_line  # noqa: E402

TARGET_POINTING = 0.80
TARGET_OVERHEAD = 0.30


def _rate(values: list[bool]) -> str:
    return f"{np.mean(values):.3f}" if values else "—"


def _mean(values: list[float]) -> str:
    return f"{np.mean(values):.3f}" if values else "—"


def _median(values: list[float]) -> str:
    """The median with NaN (no map, or a flat one) ranked as infinitely far."""
    if not values:
        return "—"
    middle = float(np.median(np.nan_to_num(np.asarray(values, dtype=np.float64), nan=np.inf)))
    return "inf" if np.isinf(middle) else f"{middle:.1f}"


def _mib(value: int | None) -> str:
    return "—" if value is None else f"{value / 2**20:.1f} MiB"


def _kind_table(
    values: dict[tuple[str, str], list[float]], kinds: list[str], methods: tuple[str, ...],
    summary: Callable[[list[float]], str],
) -> list[str]:
    """A per-kind table of one score, one column per method, then the row over every finding."""
    lines = ["| kind | n | " + " | ".join(methods) + " |", "| --- | --- | " + " | ".join("---" for _ in methods) + " |"]
    for kind in kinds:
        n = len(values[(kind, methods[0])])
        lines.append(f"| {kind} | {n} | " + " | ".join(summary(values[(kind, m)]) for m in methods) + " |")
    pooled = {m: [v for kind in kinds for v in values[(kind, m)]] for m in methods}
    lines.append(f"| **all** | {len(pooled[methods[0]])} | " + " | ".join(summary(pooled[m]) for m in methods) + " |")
    return lines


def render_markdown(
    *, args: argparse.Namespace, model: DiffusionModel, scores: Scores, evaluated: int, prior_studies: int,
    overhead: Overhead, machine: str, command: str,
) -> str:
    kinds = sorted({kind for kind, _ in scores.hits})
    methods = (*VARIANTS, *PRIORS)
    lines = [
        "# Localization map A_loc against phantom ground truth",
        "",
    ]
    if is_untrained(model.path):
        lines += [
            "**PIPELINE CHECK ON AN UNTRAINED (RANDOM-WEIGHT) MODEL: these figures say nothing about localization.**",
            "",
        ]
    lines += [
        f"- Date: {dt.date.today().isoformat()}; machine: {machine}.",
        f"- Command: `{command}`",
        f"- Model: {model.name} ({model.path}), weights SHA-256 `{model.weights_sha256}`, device {model.device}, "
        f"dtype {model.dtype}.",
        f"- Prompts: {CAPTION_FORMS[args.prompts]}.",
        f"- Data: {evaluated} phantoms (seeds {args.seed}+i) rendered from held-out {args.reports} reports (test "
        f"split: fraction {args.test_fraction}, split seed {args.split_seed}) with at least one drawn finding; "
        f"priors from {prior_studies} training-split phantoms.",
        f"- Maps by inversion at timesteps {list(args.timesteps)}, one denoising step each, noise seed {args.seed}+i.",
        "",
        f"## Pointing game per finding kind (target >= {TARGET_POINTING:.2f} over localised findings)",
        "",
        "| kind | n | " + " | ".join(methods) + " | no word |",
        "| --- | --- | " + " | ".join("---" for _ in methods) + " | --- |",
    ]
    for kind in kinds:
        n = len(scores.hits[(kind, methods[0])])
        row = " | ".join(_rate(scores.hits[(kind, method)]) for method in methods)
        lines.append(f"| {kind} | {n} | {row} | {scores.no_word.get(kind, 0)} |")
    all_hits = {method: [h for kind in kinds for h in scores.hits[(kind, method)]] for method in methods}
    total = len(all_hits[methods[0]])
    lines.append(
        f"| **all** | {total} | " + " | ".join(_rate(all_hits[m]) for m in methods)
        + f" | {sum(scores.no_word.values())} |"
    )
    lines += [
        "",
        "## Distance from the map's peak to the mask, median pixels per finding kind",
        "",
        "A miss next to a tiny lesion (a few pixels; the maps come from 32 x 32 attention, 8 pixels a cell) is a",
        "resolution limit; a miss far away means the map never found the lesion. Findings without a map count as",
        "infinitely far.",
        "",
        *_kind_table(scores.distances, kinds, methods, _median),
        "",
        "## IoU of (map > 0.5) with the mask, per finding kind (priors: their top 30% of pixels)",
        "",
        *_kind_table(scores.ious, kinds, methods, _mean),
        "",
        f"Report-level A_loc (CAS+AAS, all words, pixel-wise max) vs the union of the report's masks: mean IoU "
        f"{_mean(scores.report_iou)} over {len(scores.report_iou)} reports.",
        "",
        f"## Capture overhead and memory (generation, {args.steps} steps, guidance {args.guidance}, "
        f"{args.overhead_n} reports, median)",
        "",
        "| time | plain sampling | with capture | capture + maps | capture overhead | capture + maps overhead |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| wall | {overhead.plain_s:.3f} s | {overhead.capture_s:.3f} s | {overhead.capture_and_maps_s:.3f} s | "
        f"{overhead.capture_s / overhead.plain_s - 1:+.1%} | "
        f"{overhead.capture_and_maps_s / overhead.plain_s - 1:+.1%} |",
        f"| process CPU | {overhead.plain_cpu_s:.3f} s | {overhead.capture_cpu_s:.3f} s | — | "
        f"{overhead.capture_cpu_s / overhead.plain_cpu_s - 1:+.1%} | — |",
        "",
        f"Target: capture overhead <= {TARGET_OVERHEAD:.0%}. Memory: capture running sums "
        f"{_mib(overhead.capture_state_bytes)}; numpy peak while building maps (tracemalloc) "
        f"{_mib(overhead.maps_traced_peak_bytes)}; CUDA peak allocated plain {_mib(overhead.cuda_peak_plain)}, with "
        f"capture {_mib(overhead.cuda_peak_capture)}; process peak RSS "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    defaults = DataConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped mini-cxr)")
    parser.add_argument("--reports", default=defaults.corpus, help="report corpus (default: open-i)")
    parser.add_argument("--test-fraction", type=float, default=defaults.test_fraction)
    parser.add_argument("--split-seed", type=int, default=defaults.split_seed)
    parser.add_argument("--n", type=int, default=None, help="at most N held-out reports with findings (default: all)")
    parser.add_argument("--prior-n", type=int, default=300, help="training reports rendered for the prior maps")
    parser.add_argument("--overhead-n", type=int, default=5, help="reports timed for the capture overhead")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timesteps", type=lambda s: tuple(int(v) for v in s.split(",")), default=DEFAULT_TIMESTEPS,
                        help="noise timesteps of the inversion (default: the map's, DEFAULT_TIMESTEPS)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    parser.add_argument("--size", type=int, default=256, help="phantom render size (256 or 512)")
    parser.add_argument("--prompts", choices=CAPTION_FORMS, default=None,
                        help="prompt form: the report as written, or its findings prompt (default: the form the model "
                             "folder names)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (CPU runs)")
    parser.add_argument("--machine", default=None, help="machine description (default: detected)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/localization_eval.md"))
    args = parser.parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)

    model = load_model(args.model, device=args.device)
    args.prompts = args.prompts or model.prompt_form
    train, test = split_reports(load_reports(args.reports), test_fraction=args.test_fraction, seed=args.split_seed)
    held_out = [report for report in test if has_present_finding(report)][: args.n]
    prior_reports = [report for report in train if has_present_finding(report)][: args.prior_n]
    if not held_out or not prior_reports:
        raise SystemExit("no held-out or training report with a present finding; check --reports and the split")
    prior, kind_prior, prior_studies = build_priors(prior_reports, seed=args.seed, size=args.size)
    as_prompt = prompt_function(args.prompts)
    scores, evaluated = score_maps(
        model, held_out, prior=prior, kind_prior=kind_prior, seed=args.seed, size=args.size, timesteps=args.timesteps,
        prompt=as_prompt,
    )
    texts = [as_prompt(r.text) for r in held_out]
    with_words = [text for text in texts if word_tokens(model.tokenizer, text, medical_words(text))[0]]
    overhead = measure_overhead(
        model, with_words[: args.overhead_n], seed=args.seed, steps=args.steps, guidance=args.guidance
    )
    machine = args.machine or machine_line(model.device)
    parts = [sys.argv[0], *(argv if argv is not None else sys.argv[1:])]
    command = "python " + " ".join(shlex.quote(part) for part in parts)
    markdown = render_markdown(
        args=args, model=model, scores=scores, evaluated=evaluated, prior_studies=prior_studies,
        overhead=overhead, machine=machine, command=command,
    )
    write_text(args.out, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
