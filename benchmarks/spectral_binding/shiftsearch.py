"""Random-crop remedy test: verifier maximises C over disc-window centres (grid), threshold raised for the search."""
from common import *
from bound2 import Secret
from bound3 import embed_v3, dft_weighted, hann, _grid, RP
from bound import theta_for
import study_forgeries as SF
from medsign_forensics.watermark.spectral import on_frequencies, transform
hosts = load_real(0, 20); targets = load_real(100, 30)
key = np.random.default_rng(14).integers(0, 2, 48).astype(np.uint8); sec = Secret(777); Q = 0.1
freqs_t, _ = on_frequencies(CONFIG, key); fc = freqs_t / 64; g1, g2 = sec.partners(freqs_t)
SH = np.arange(-36, 37, 12)
def cmax(x):
    bits, rot, sc, pres = read(x); ok = attributed(bits, key, pres)[0]
    r, s = torch.tensor([rot]), torch.tensor([sc])
    tf = lambda f: transform(torch.from_numpy(f).float(), r, s)[0].double().numpy()
    aF = np.angle(dft_weighted(x, hann(*x.shape), tf(fc)))
    y, xx = _grid(*x.shape); best = -1
    for dy in SH * sc:
        for dx in SH * sc:
            rr = np.hypot(y[:, None] - dy, xx[None, :] - dx); R = RP * sc
            if abs(dy) + R > x.shape[0] / 2 + 1 or abs(dx) + R > x.shape[1] / 2 + 1:
                continue  # disc must lie inside the image
            w = np.where(rr < R, np.cos(np.pi * rr / (2 * R)) ** 2, 0.0)
            v = np.minimum(x, np.quantile(x[w > 0], Q))
            d = aF - np.angle(dft_weighted(v, w, tf(g1))) - np.angle(dft_weighted(v, w, tf(g2))) - theta_for(freqs_t, sec.theta)
            best = max(best, float(np.cos(2 * d).mean()))
    return ok, best
marked = [STORE.exact(embed_v3(h, key, CONFIG, sec, q=Q)) for h in hosts]
for name in ("none", "crop_random_area0.5", "crop_random_area0.8"):
    a = get_attack(name); rng = np.random.default_rng(3)
    res = [cmax(a.exact(m, rng)) for m in marked]
    print(name, "attributed & Cmax>=0.28:", sum(o and c >= 0.28 for o, c in res), "/", len(res), "Cmax mean", round(np.mean([c for o, c in res]), 3), flush=True)
null = [cmax(STORE.exact(SF.naive_copy(t.astype(np.float64), marked[i % 20].astype(np.float64))))[1] for i, t in enumerate(targets)]
print("naive copy null: Cmax mean", round(np.mean(null), 3), "sd", round(np.std(null), 3), "max", round(max(null), 3))
