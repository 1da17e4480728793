"""`medsign evaluate`: every method on the same held-out reports, seeds and latents, in one run.

Flow: load the deployments (MedSign, optionally Stable Signature mode and ablations; all must share one base
model) -> pick N held-out reports of the training corpus (the 10 % split, a seeded subset; sampling seeds
differ from training's) -> sample x0 and A_loc once with the frozen base model (a :class:`LatentCache`, reused
across runs) -> I_o = D_o(x0) and I_w = D_w(x0) per deployment, the baselines embedded into I_o -> the metrics of
:mod:`metrics` under the Table 1 attacks -> JSON, Markdown and the Fig. 3 PNG.

Diagnostic consistency (Table 2) needs the finding classifier (``--classifier`` or the installed default); when
none is installed the table is marked "not computed" with the reason, and everything else is still reported.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsign_forensics import __version__
from medsign_forensics.attacks.codec import quantise
from medsign_forensics.attacks.library import TABLE1_ATTACKS
from medsign_forensics.config import REPO_DIR
from medsign_forensics.configio import config_to_dict
from medsign_forensics.errors import InputError, ModelError
from medsign_forensics.evaluate.methods import (
    ABLATION_TITLES,
    BASELINE_TITLES,
    Method,
    MethodKind,
    Role,
    baseline_detector,
    baseline_key,
    build_baseline,
    extractor_detector,
)
from medsign_forensics.evaluate.metrics import kind_confidences
from medsign_forensics.evaluate.scoring import LESION_LEVEL, Context, real_false_positives, score_method
from medsign_forensics.localization.cache import DEFAULT_REPORTS, LatentCache, MapVariant, split_items
from medsign_forensics.provenance.records import utc_now
from medsign_forensics.training.progress import ProgressFn, notify
from medsign_forensics.watermark.deployment import EMBEDDED, Deployment, load_deployment


def default_real_data() -> Path | None:
    """``../shared/data`` beside the checkout (or MEDSIGN_SHARED_DATA) when it exists."""
    import os

    path = Path(os.environ.get("MEDSIGN_SHARED_DATA", REPO_DIR.parent / "shared" / "data"))
    return path if path.is_dir() else None


@dataclass(frozen=True)
class EvaluationConfig:
    """What one evaluation run measures and on how much data."""

    n: int = 50
    reports: str | None = None  # None: the MedSign deployment's training corpus
    seed: int = 0
    baselines: tuple[str, ...] = ("dwtdct", "rivagan")
    fpr: float = 1e-6
    real_data: Path | None = None
    real_max: int | None = None
    real_baseline_max: int = 20  # RivaGAN decodes a 600 px radiograph in seconds on a CPU
    figure_rows: int = 3
    batch: int = 8  # reports sampled together and images decoded together
    device: str = "cpu"
    latent: bool | None = None  # the latent layer's rows; None: when the deployment carries the layer

    def __post_init__(self) -> None:
        if self.n < 1:
            raise InputError(f"--n must be at least 1, got {self.n}")
        if not 0 < self.fpr < 1:
            raise InputError(f"the target false-positive rate must lie in (0, 1), got {self.fpr}")
        for name in self.baselines:
            if name not in BASELINE_TITLES:
                raise InputError(f"unknown baseline {name!r}; choose from {', '.join(BASELINE_TITLES)}")

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)


@dataclass
class EvaluationResult:
    """Where the outputs went and the full JSON content."""

    markdown: Path
    json: Path
    figure: Path | None
    data: dict[str, Any] = field(repr=False)


# --- loading -------------------------------------------------------------------------------------------------


def _load_model(deployment: Deployment, model_path: Path | None, device: str) -> Any:
    from medsign_forensics.diffusion import load_model

    recorded = deployment.base_model["path"]
    if model_path is None and recorded != EMBEDDED and not Path(recorded).is_dir():
        raise ModelError(
            f"the deployment's base model folder {recorded} is not here; pass --model with that model's folder",
            path=deployment.path,
        )
    path = model_path if model_path is not None else (None if recorded == EMBEDDED else Path(recorded))
    return load_model(path, device=device)


def _load_extractor(deployment: Deployment, override: Path | None, device: str, loaded: dict[str, Any]) -> Any:
    from medsign_forensics.watermark.extractor_io import extractor_manifest, load_extractor

    recorded = deployment.extractor
    path = override if override is not None else deployment.extractor_folder
    if recorded["sha256"] in loaded:
        return loaded[recorded["sha256"]]
    if not path.exists():
        raise ModelError(
            f"the deployment's extractor {path} is not here; pass --extractor with its folder", path=deployment.path
        )
    sha = extractor_manifest(path)["sha256"]
    if sha != recorded["sha256"]:
        raise ModelError(
            f"the extractor at {path} (SHA-256 {sha[:16]}...) is not the one deployment {deployment.name!r} was "
            f"trained against ({recorded['sha256'][:16]}...)",
            path=path,
        )
    loaded[sha] = load_extractor(path, device=device)
    return loaded[sha]


# --- images ----------------------------------------------------------------------------------------------------


def _grey_8bit(images: torch.Tensor) -> list[np.ndarray]:
    """(B, C, H, W) float in [0, 1] -> list of 8-bit-quantised grey (H, W) float32 (BT.601 for RGB)."""
    from medsign_forensics.watermark.hidden import rgb_to_grey

    grey = rgb_to_grey(images.float().cpu())[:, 0].numpy()
    return [quantise(image) for image in grey]


def _decode_all(model: Any, vae: Any, latents: torch.Tensor, batch: int) -> list[np.ndarray]:
    from medsign_forensics.diffusion.sampling import decode

    out: list[np.ndarray] = []
    with torch.no_grad():
        for start in range(0, len(latents), batch):
            out.extend(_grey_8bit(decode(model, latents[start : start + batch], vae=vae)))
    return out


def _asserted_kinds(items: Sequence[Any]) -> tuple[list[str], dict[str, int]]:
    """Finding kinds asserted (present, not negated or hedged) by at least one report, in FindingKind order."""
    from medsign_forensics.errors import ReportError
    from medsign_forensics.reports import FindingKind, parse_report

    support: dict[str, int] = {}
    for item in items:
        try:
            found = {f.kind.value for f in parse_report(item.text) if f.present}
        except ReportError:
            continue
        for kind in found:
            support[kind] = support.get(kind, 0) + 1
    kinds: list[str] = [kind.value for kind in FindingKind if kind.value in support]
    return kinds, support


# --- the run ------------------------------------------------------------------------------------------------------


def evaluate(
    config: EvaluationConfig,
    *,
    deployment: str | Path,
    out_dir: str | Path,
    stable_signature: str | Path | None = None,
    ablations: Sequence[str | Path] = (),
    model_path: str | Path | None = None,
    extractor: str | Path | None = None,
    classifier: str | Path | None = None,
    cache_dir: str | Path | None = None,
    progress: ProgressFn | None = None,
) -> EvaluationResult:
    """Evaluate a MedSign deployment (and the given comparisons); write ``evaluation.md``, ``evaluation.json``
    and ``fig3.png`` into ``out_dir``."""
    from medsign_forensics.evaluate.figure import figure3
    from medsign_forensics.evaluate.report import render_markdown
    from medsign_forensics.fileio import save_png, write_json, write_text

    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    main = load_deployment(deployment)
    comparisons: list[tuple[Role, Deployment]] = []
    if stable_signature is not None:
        comparisons.append((Role.STABLE_SIGNATURE, load_deployment(stable_signature)))
    comparisons += [(Role.ABLATION, load_deployment(path)) for path in ablations]
    for _, other in comparisons:
        if other.base_model["weights_sha256"] != main.base_model["weights_sha256"]:
            raise InputError(
                f"deployment {other.name!r} was tuned from another base model than {main.name!r}; "
                "only deployments of one base model can be compared on the same latents",
                path=other.path,
            )
    notes: list[str] = []
    if main.ablation != "none":
        notes.append(f"The main deployment {main.name!r} was trained with ablation {main.ablation!r}.")
    model = _load_model(main, None if model_path is None else Path(model_path), config.device)

    # The finding classifier (Table 2), if one is available.
    classifier_info: dict[str, Any] = {"path": None, "note": None}
    classifier_model = None
    try:
        from medsign_forensics.phantom.classifier import DEFAULT_CLASSIFIER_DIR, load_classifier, read_classifier_config

        folder = Path(classifier) if classifier is not None else DEFAULT_CLASSIFIER_DIR
        classifier_model = load_classifier(folder, device=config.device)
        classifier_info = {
            "path": str(folder), "sha256": read_classifier_config(folder).get("weights_sha256"), "note": None
        }
    except ModelError as error:
        if classifier is not None:
            raise
        classifier_info["note"] = (
            f"Table 2 not computed: no finding classifier is installed ({error}); pass --classifier DIR"
        )
        notes.append(classifier_info["note"])

    # Held-out reports and their latents, maps and original images (one cache for every run).
    source = config.reports or main.config.get("reports") or DEFAULT_REPORTS
    items = split_items(source, held_out=True, n=config.n, seed=config.seed)
    sample_steps = int(main.config.get("sample_steps", 25))
    guidance = float(main.config.get("guidance_scale", 4.0))
    reference = copy.deepcopy(model.vae).to(model.device).float().eval()
    cache = LatentCache(Path(cache_dir) if cache_dir is not None else out / "cache")
    data = cache.build(
        model, items, reference_vae=reference, steps=sample_steps, guidance_scale=guidance, batch=config.batch,
        progress=progress, task="sampling held-out reports",
    )
    originals = _grey_8bit(data.images.float())
    maps = data.maps[MapVariant.MEDSIGN].astype(np.float32) / 255.0
    kinds, support = _asserted_kinds(items)
    original_labels = original_kinds = None
    if classifier_model is not None:
        from medsign_forensics.phantom.classifier import LABELS, predict

        original_labels = predict(classifier_model, np.stack(originals))
        original_kinds = kind_confidences(original_labels, LABELS, kinds)

    ctx = Context(
        data=data, originals=originals, maps=maps, attacks=TABLE1_ATTACKS, fpr=config.fpr, seed=config.seed,
        classifier=classifier_model, kinds=kinds, original_kinds=original_kinds,
        original_labels=original_labels,
    )

    # The methods.
    extractors: dict[str, Any] = {}
    override = None if extractor is None else Path(extractor)
    methods: list[Method] = []
    for role, dep in [(Role.MEDSIGN, main), *comparisons]:
        vae = dep.watermarked_vae(model).to(model.device)
        title = "MedSign" if role is Role.MEDSIGN else ABLATION_TITLES.get(dep.ablation, dep.name)
        if role is Role.STABLE_SIGNATURE and dep.ablation != "stable-signature":
            notes.append(
                f"--stable-signature {dep.name!r} was trained with ablation {dep.ablation!r}, not 'stable-signature'."
            )
        if any(m.name == title for m in methods):
            title = f"{title} ({dep.name})"
        images = _decode_all(model, vae, data.latents, config.batch)
        methods.append(
            Method(
                name=title, kind=MethodKind.IN_GENERATION, role=role, key=dep.key, images=images,
                detector=extractor_detector(_load_extractor(dep, override, config.device, extractors)),
                source=str(dep.path),
            )
        )
        del vae
    if config.latent or (config.latent is None and main.has_latent):
        from medsign_forensics.evaluate.latent_rows import latent_methods

        medsign = methods[0]
        methods += latent_methods(model=model, main=main, items=data.items, decoder_detector=medsign.detector,
                                  extractor=_load_extractor(main, override, config.device, extractors),
                                  decode_all=_decode_all, steps=sample_steps, guidance=guidance,
                                  batch=config.batch, seed=config.seed, progress=progress)
        notes.append("Gaussian Shading rows: new samples of the same reports and seeds (the latent layer changes "
                     "the initial noise), so no pixel fidelity against the originals; Table 2 compares them with "
                     "the originals of the same reports and so includes the model's seed-to-seed variation.")
    for name in config.baselines:
        baseline = build_baseline(name, main.key)
        key = baseline_key(name, main.key)
        images = []
        for index, image in enumerate(originals):
            images.append(quantise(baseline.embed(image, key)))
            notify(progress, f"embedding {BASELINE_TITLES[name]}", index + 1, len(originals))
        methods.append(
            Method(
                name=BASELINE_TITLES[name], kind=MethodKind.POST_GENERATION, role=Role.BASELINE, key=key, images=images,
                detector=baseline_detector(baseline, originals[0].shape), source="invisible-watermark",
            )
        )

    results = [score_method(method, ctx, progress) for method in methods]
    real_folder = config.real_data
    real = None if real_folder is None else real_false_positives(
        methods, real_folder, fpr=config.fpr, limit=config.real_max, baseline_limit=config.real_baseline_max,
        progress=progress,
    )
    if real is None:
        notes.append("False positives on real radiographs not measured: no real-data folder was given or found.")

    figure_path = out / "fig3.png"
    by_role = {m.role: m for m in methods}
    panels = [(m.name, m.images) for m in (by_role.get(Role.STABLE_SIGNATURE), by_role[Role.MEDSIGN]) if m is not None]
    salient = (maps > LESION_LEVEL).mean(axis=(1, 2))
    rows = [int(i) for i in np.argsort(-salient, kind="stable") if salient[i] > 0]
    rows = rows[: config.figure_rows] or list(range(min(config.figure_rows, len(originals))))
    save_png(figure_path, figure3(originals, maps, panels, rows=rows))

    data_out: dict[str, Any] = {
        "format": "medsign-evaluation",
        "version": 1,
        "created_at": utc_now(),
        "software": f"medsign-forensics {__version__}",
        "config": config.to_dict(),
        "reports": {"source": source, "split": "held-out 10 % (split_reports, seed 0)", "items": len(items)},
        "sampling": {
            "steps": sample_steps, "guidance_scale": guidance, "seed_rule": "item_seed(report_id, seed + 1000003)"
        },
        "base_model": main.base_model,
        "deployment": {
            "path": str(main.path), "name": main.name, "key_hex": main.key_hex, "registered": main.registered,
            "provenance_id": main.provenance_id,
        },
        "comparisons": [
            {"role": role.value, "path": str(dep.path), "name": dep.name, "ablation": dep.ablation}
            for role, dep in comparisons
        ],
        "attacks": [a.name for a in TABLE1_ATTACKS],
        "classifier": classifier_info,
        "finding_kinds": {"kinds": kinds, "reports_asserting": support},
        "methods": results,
        "real_data": real,
        "figure": {"file": figure_path.name, "rows": [data.items[i].report_id for i in rows]},
        "notes": notes,
        "wall_time_s": None,
    }
    data_out["wall_time_s"] = round(time.perf_counter() - started, 3)
    json_path, md_path = out / "evaluation.json", out / "evaluation.md"
    write_json(json_path, data_out)
    write_text(md_path, render_markdown(data_out))
    return EvaluationResult(markdown=md_path, json=json_path, figure=figure_path, data=data_out)
