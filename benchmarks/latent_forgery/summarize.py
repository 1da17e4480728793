import glob
import json

import numpy as np

T1, T1000 = 41, 45
out = [
    "# study13: forging/removing the latent layer (Gaussian Shading) on mini-cxr",
    "",
    f"Thresholds: N=1 >= {T1}/48, N=1000 >= {T1000}/48 (family-wise 5e-7 = 1e-6 halved for two layers).",
    "",
]
b = json.load(open("baseline.json"))
out += [
    f"Baseline: genuine mean {np.mean(b['genuine_bits']):.1f} (min {min(b['genuine_bits'])}); real mean {np.mean(b['real_bits']):.1f} (max {max(b['real_bits'])})",
    "",
]
c = json.load(open("copy_attacks.json"))
out += [
    "## Copy attacks (20 real radiographs, real i + genuine i)",
    "",
    "| attack | N=1 | N=1000 | mean bits | max | PSNR vs real |",
    "|---|---|---|---|---|---|",
]
for k, v in c["forgery"].items():
    out.append(f"| {k} | {v['n1']}/20 | {v['n1000']}/20 | {v['mean_bits']:.1f} | {v['max_bits']} | {v['psnr']:.1f} |")
out += [
    "",
    "## Removal by Gaussian noise (20 genuine)",
    "",
    "| sigma | N=1 | N=1000 | mean bits | min | PSNR |",
    "|---|---|---|---|---|---|",
]
for k, v in c["removal"].items():
    out.append(f"| {k} | {v['n1']}/20 | {v['n1000']}/20 | {v['mean_bits']:.1f} | {v['min_bits']} | {v['psnr']:.1f} |")


def table(files, title):
    rs = [r for f in files for r in json.load(open(f))["results"]]
    if not rs:
        return []
    rows = [
        "",
        f"## {title}",
        "",
        "| target PSNR | images | N=1 | N=1000 | mean bits (before -> after) | min/max after | PSNR (8-bit) | CPU s/forgery |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in sorted({r["target_psnr"] for r in rs}, reverse=True):
        g = [r for r in rs if r["target_psnr"] == p]
        bits = np.array([r["bits"] for r in g])
        rows.append(
            f"| {p:g} | {len(g)} | {int((bits >= T1).sum())}/{len(g)} | {int((bits >= T1000).sum())}/{len(g)} | "
            f"{np.mean([r['bits_before'] for r in g]):.1f} -> {bits.mean():.1f} | {bits.min()}/{bits.max()} | "
            f"{np.mean([r['psnr'] for r in g]):.2f} | {np.mean([r['cpu_s'] for r in g]):.0f} |"
        )
    return rows


out += table(
    sorted(glob.glob("imprint_full_s?.json")),
    "Imprinting, full differentiable inversion (40 Adam steps, cosine lr 3e-3, hinge margin 0.5)",
)
out += table(
    sorted(glob.glob("imprint_full_s?_v1.json")), "Imprinting v1 (60 Adam steps, constant lr 3e-3; first run, 2 images)"
)
out += table(
    glob.glob("imprint_vae.json"), "Imprinting, VAE-encoder latent only (MSE to genuine's encoder latent, 30 steps)"
)
out += table(
    glob.glob("imprint_full_removal.json"),
    "Removal: imprinting loss with opposite sign on genuine images (20 steps); 'N=1' = still attributed",
)
out += table(
    glob.glob("imprint_full_target.json"),
    "Imprinting toward the consensus sign pattern of 5 OTHER genuine images (genuine 10-14), 40 steps",
)
cj = json.load(open("consensus.json"))
out += ["", "## Sign pattern shared by all images of a deployment", "", "```", json.dumps(cj), "```"]
open("REPORT.md", "w").write("\n".join(out) + "\n")
print("\n".join(out))
