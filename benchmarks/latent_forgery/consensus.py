"""The sign pattern s = key[layout] XOR keystream is the SAME for every image of a deployment. How well does a
forger recover it from k genuine images (majority of inverted signs), and can they then generate NEW images that
attribute (public model, arbitrary prompt, |N(0,1)| * s_hat)?"""

import json

from common import *

m = model()
mark = mark0()
rd = reader()
gen, ztrue = genuine()
s_true = np.sign(ztrue[0])
assert all((np.sign(z) == s_true).all() for z in ztrue)  # same pattern in every genuine image
zs = np.stack([rd.noise(g)[0].numpy() for g in gen])
single = [(np.sign(z) == s_true).mean() for z in zs]
res = {"single_image_sign_agreement": float(np.mean(single)), "single_min": float(np.min(single))}
for k in (1, 3, 5, 10):
    accs = []
    for start in range(10, 20 - k + 1, max(1, k)):
        est = np.sign(np.sign(zs[start : start + k]).sum(0) + 1e-3 * zs[start])
        accs.append((est == s_true).mean())
    res[f"consensus_k{k}"] = float(np.mean(accs))
print(res, flush=True)
np.save(OUT / "s_hat_k5.npy", np.sign(np.sign(zs[10:15]).sum(0) + 1e-3 * zs[10]))
np.save(OUT / "s_hat_k1.npy", np.sign(zs[10]))
# generation forgery: new images from the public model with the estimated pattern
from medsign_forensics.localization.cache import split_items

items = split_items("open-i", held_out=False, n=5, seed=1)
gen_bits = {}
for k in ("k1", "k5"):
    s_hat = torch.from_numpy(np.load(OUT / f"s_hat_{k}.npy")).float()
    bits = []
    for j, it in enumerate(items):
        z = torch.randn(s_hat.shape, generator=torch.Generator().manual_seed(10_000 + j)).abs() * s_hat
        r = sample(m, [it.text], seed=10_000 + j, latents=z[None], output="images")
        bits.append(read_bits(r.images[0].mean(0).numpy(), mark))
    gen_bits[k] = bits
    print(k, "new-image generation forgery bits", bits, flush=True)
res["generation_forgery_bits"] = gen_bits
json.dump(res, open(OUT / "consensus.json", "w"), indent=1)
