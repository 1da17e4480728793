"""Attack 1: copy attacks that need no model (residual copy, blend / low-frequency transplant) + removal by noise."""

import json

from common import *
from scipy import ndimage

real, names = real_images()
gen, _ = genuine()
mark = mark0()


def blur(x, s):
    return ndimage.gaussian_filter(x, s, mode="reflect")


def med(x, k):
    return ndimage.median_filter(x, size=k, mode="reflect")


attacks = {}
for nm, den in (
    ("gauss_s1", lambda g: blur(g, 1.0)),
    ("gauss_s2", lambda g: blur(g, 2.0)),
    ("median3", lambda g: med(g, 3)),
    ("median5", lambda g: med(g, 5)),
):
    for k in (1, 2):
        attacks[f"residual_{nm}_x{k}"] = lambda r, g, den=den, k=k: r + k * (g - den(g))
for a in (0.1, 0.2, 0.3):
    attacks[f"blend_a{a}"] = lambda r, g, a=a: (1 - a) * r + a * g
    attacks[f"lowfreq_s4_a{a}"] = lambda r, g, a=a: r + a * (blur(g, 4) - blur(r, 4))
res = {}
for name, f in attacks.items():
    bits, ps, secs = [], [], []
    for i in range(len(real)):
        t0 = time.process_time()
        forged = quant(f(real[i].astype(np.float64), gen[i].astype(np.float64)))
        secs.append(time.process_time() - t0)
        ps.append(psnr(forged, real[i]))
        bits.append(read_bits(forged, mark))
    bits = np.array(bits)
    res[name] = {
        "bits": bits.tolist(),
        "mean_bits": float(bits.mean()),
        "max_bits": int(bits.max()),
        "n1": int((bits >= T1).sum()),
        "n1000": int((bits >= T1000).sum()),
        "psnr": float(np.mean(ps)),
        "psnr_min": float(np.min(ps)),
        "s_per_forgery": float(np.mean(secs)),
    }
    print(
        f"{name:28s} mean {bits.mean():5.1f} max {bits.max():2d} N1 {res[name]['n1']:2d} N1000 {res[name]['n1000']:2d} PSNR {np.mean(ps):5.1f}",
        flush=True,
    )
# Removal by Gaussian noise on genuine images
rng = np.random.default_rng(1)
rem = {}
for s in (0.005, 0.01, 0.02):
    bits, ps = [], []
    for i in range(len(gen)):
        att = quant(gen[i] + rng.normal(0, s, gen[i].shape))
        ps.append(psnr(att, gen[i]))
        bits.append(read_bits(att, mark))
    bits = np.array(bits)
    rem[f"gauss_noise_{s}"] = {
        "bits": bits.tolist(),
        "mean_bits": float(bits.mean()),
        "min_bits": int(bits.min()),
        "n1": int((bits >= T1).sum()),
        "n1000": int((bits >= T1000).sum()),
        "psnr": float(np.mean(ps)),
    }
    print(
        f"removal noise {s}: mean {bits.mean():.1f} min {bits.min()} N1 {rem[f'gauss_noise_{s}']['n1']} N1000 {rem[f'gauss_noise_{s}']['n1000']} PSNR {np.mean(ps):.1f}",
        flush=True,
    )
json.dump({"T1": T1, "T1000": T1000, "forgery": res, "removal": rem}, open(OUT / "copy_attacks.json", "w"), indent=1)
