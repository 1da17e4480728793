"""Render an evaluation (the JSON content of :func:`medsign_forensics.evaluate.harness.evaluate`) as Markdown."""

from __future__ import annotations

from typing import Any

SHORT = {
    "none": "None",
    "brightness_x2": "Brt",
    "crop_center_area0.5": "Crp",
    "jpeg_q50": "JPG",
    "rotate_25": "Rot",
    "resize_edge0.7": "Res",
}

DEFINITIONS = """\
- Images: greyscale, quantised to 8 bits before anything is measured. Watermarked images of in-generation methods
  are D_w(x0); originals are D_o(x0) of the SAME latents x0; post-generation baselines are embedded into the
  originals. Every method sees the same held-out reports, seeds and latents.
- PSNR: 10 log10(1 / MSE), data range 1, mean of per-image values (identical images, PSNR = inf, are left out
  and counted). SSIM: Gaussian window 11 x 11, sigma 1.5, K1 0.01, K2 0.03, data range 1, valid region
  (kornia.metrics.ssim with padding="valid"; the definition of scikit-image's gaussian_weights=True,
  use_sample_covariance=False).
- Attacks (exact forms of the attack library): None; Brt = brightness x2 (clipped); Crp = centre crop keeping
  50 % of the AREA; JPG = Pillow JPEG quality 50; Rot = 25 degrees, black corners, same size; Res = each edge
  resized to 70 % (bicubic). Baseline decoders need 256 x 256 pixels: smaller attacked images are resized back.
- Bit accuracy: matching bits / key length, mean over images. Avg = mean over the six conditions.
- Detection: an image is detected when at least M of its k bits match the key, M the smallest count whose
  Binomial(k, 1/2) tail is at most the target false-positive rate. TPR = detected watermarked images / N.
  Measured FPR = detected UNWATERMARKED images / N (originals D_o(x0), no attack; real radiographs read at
  their own size).
- Diagnostic consistency (Table 2): the finding classifier's probability of each finding kind is the maximum
  over its right and left labels; the table gives |P(I_w) - P(I_o)| x 100 (percentage points), averaged over
  ALL N evaluated images, for every finding kind that at least one of the N reports asserts (present, not
  negated or hedged; the count is in the header). Avg = mean over those kinds.
- Lesion regions: A_loc > 0.5 of the MedSign localization map of the image's own report (about the top 30 % of
  a report's attention; normal reports have no map and are left out). Mean |I_w - I_o| in 8-bit grey levels
  inside vs outside, averaged over the images that have both regions.
"""


def _num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + [""]


def render_markdown(data: dict[str, Any]) -> str:
    methods = data["methods"]
    attacks = data["attacks"]
    dep = data["deployment"]
    config = data["config"]
    fpr = config["fpr"]
    lines = [
        "# MedSign evaluation",
        "",
        f"- Date: {data['created_at']}; {data['software']}; device {config['device']}; "
        f"wall time {data['wall_time_s']:.1f} s",
        f"- Base model: {data['base_model']['name']} ({data['base_model']['path']}, weights SHA-256 "
        f"{data['base_model']['weights_sha256'][:16]}...)",
        f"- Deployment: {dep['name']} ({dep['path']}), key {dep['key_hex']}, "
        + (
            f"provenance ID {dep['provenance_id']}"
            if dep["registered"]
            else "UNREGISTERED (explicit key, no provenance record)"
        ),
        f"- Reports: {data['reports']['items']} held-out reports of {data['reports']['source']} "
        f"({data['reports']['split']}); sampling {data['sampling']['steps']} steps, guidance "
        f"{data['sampling']['guidance_scale']}, seed {config['seed']}",
        "",
        "## Table 1: fidelity and robustness (bit accuracy)",
        "",
    ]
    header = ["Method", "Type", "k", "PSNR", "SSIM", *[SHORT.get(a, a) for a in attacks], "Avg"]
    rows = [
        [
            m["name"], m["kind"], str(m["bits"]), _num(m["psnr"]["mean"]), _num(m["ssim"]["mean"], 3),
            *[_num(m["bit_accuracy"][a]) for a in attacks], _num(m["bit_accuracy_avg"]),
        ]
        for m in methods
    ]
    lines += _table(header, rows)
    identical = [f"{m['name']}: {m['psnr']['excluded']}" for m in methods
                 if m["psnr"]["excluded"] and m.get("same_sample", True)]
    if identical:
        lines += [
            f"Images identical to their original (infinite PSNR, left out of the mean): {', '.join(identical)}.", ""
        ]

    lines += [f"## Detection: TPR at FPR {fpr:g}", ""]
    header = ["Method", "k", "M", *[SHORT.get(a, a) for a in attacks]]
    rows = [
        [
            m["name"], str(m["bits"]), str(m["detection"][attacks[0]]["threshold"]),
            *[_num(m["detection"][a]["rate"]) for a in attacks],
        ]
        for m in methods
    ]
    lines += _table(header, rows)
    split = [m["name"] for m in methods if m.get("layers", 1) > 1]
    if split:
        lines += [f"{', '.join(split)}: two layers read, each judged at FPR {fpr / 2:g} (Bonferroni).", ""]

    lines += [f"## Measured false positives (threshold for FPR {fpr:g})", ""]
    real = data.get("real_data")
    header = ["Method", "unwatermarked generated", "real radiographs"]
    rows = []
    for m in methods:
        generated = m["false_positives_generated"]
        real_row = "-" if real is None else _count(real["per_method"][m["name"]])
        rows.append([m["name"], _count(generated), real_row])
    lines += _table(header, rows)
    if real is not None:
        lines += [
            f"Real radiographs: {real['files']} files under {real['folder']}"
            + (f"; {len(real['unreadable'])} unreadable" if real["unreadable"] else "")
            + f"; post-generation baselines read at most {config['real_baseline_max']} of them.",
            "",
        ]

    kinds = data["finding_kinds"]["kinds"]
    support = data["finding_kinds"]["reports_asserting"]
    lines += ["## Table 2: diagnostic consistency (|confidence change|, percentage points)", ""]
    if data["classifier"].get("note"):
        lines += [data["classifier"]["note"], ""]
    elif not kinds:
        lines += ["No evaluated report asserts a finding, so there is no finding to score.", ""]
    else:
        header = ["Method", *[f"{k} (n={support[k]})" for k in kinds], "Avg", "AvgAcc", "PSNR"]
        rows = [
            [m["name"], *[_num(m["confidence"]["per_kind"][k]) for k in kinds], _num(m["confidence"]["avg"]),
             _num(m["bit_accuracy_avg"]), _num(m["psnr"]["mean"])]
            for m in methods
        ]
        lines += _table(header, rows)

    lines += ["## Change inside vs outside lesion regions (A_loc > 0.5), mean |I_w - I_o| in grey levels", ""]
    rows = []
    for m in methods:
        lesion = m["lesion"]
        inside = None if lesion["inside"] is None else lesion["inside"] * 255
        outside = None if lesion["outside"] is None else lesion["outside"] * 255
        ratio = None if not inside or outside in (None, 0) else inside / outside
        rows.append([m["name"], str(lesion["images"]), _num(inside, 3), _num(outside, 3), _num(ratio, 3)])
    lines += _table(["Method", "images", "inside", "outside", "inside / outside"], rows)

    ablations = [m for m in methods if m["role"] in ("medsign", "ablation", "stable-signature")]
    if len(ablations) > 1:
        lines += ["## Ablations", ""]
        rows = [
            [m["name"], _num(None if m["confidence"] is None else m["confidence"]["avg"]), _num(m["bit_accuracy_avg"]),
             _num(m["psnr"]["mean"])]
            for m in ablations
        ]
        lines += _table(["Method", "Avg confidence change (pp)", "AvgAcc", "PSNR"], rows)

    lines += [
        "## Figure",
        "",
        f"![Fig. 3]({data['figure']['file']})",
        "",
        "Rows: " + ", ".join(data["figure"]["rows"]) + ". Columns: the original with A_loc in red, then per method "
        "its watermarked image and |I_w - I_o| x 10.",
        "",
        "## Definitions",
        "",
        DEFINITIONS,
    ]
    if data["notes"]:
        lines += ["## Notes", "", *[f"- {note}" for note in data["notes"]], ""]
    timing = ", ".join(f"{m['name']} {m['seconds']:.1f} s" for m in methods)
    lines += [f"Scoring time per method: {timing}.", ""]
    return "\n".join(lines)


def _count(detection: dict[str, Any]) -> str:
    if detection["total"] == 0:
        return "-"
    return f"{detection['detected']}/{detection['total']} ({detection['rate']:.3g})"
