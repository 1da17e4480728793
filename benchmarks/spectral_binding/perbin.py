"""Per-bin phase errors and peak prominence, to try reliability-weighted coherence (v3, q=0.1)."""
from common import *
from bound3 import *
import study_forgeries as SF
hosts = load_real(0, 40); targets = load_real(100, 40)
key = np.random.default_rng(14).integers(0, 2, 48).astype(np.uint8)
sec = Secret(777); Q = 0.1
freqs_t, _ = on_frequencies(CONFIG, key); fc = freqs_t / 64; g1, g2 = sec.partners(freqs_t)
from medsign_forensics.watermark.spectral import log_power, _local, sample_spectrum
def perbin(x):
    bits, rot, sc, pres = read(x)
    att = attributed(bits, key, pres)[0]
    r, s = torch.tensor([rot]), torch.tensor([sc])
    tf = lambda f: transform(torch.from_numpy(f).float(), r, s)[0].double().numpy()
    xf = dft_weighted(x, hann(*x.shape), tf(fc))
    d = np.angle(xf) - np.angle(partner_values(x, tf(g1), sc, Q)) - np.angle(partner_values(x, tf(g2), sc, Q)) - theta_for(freqs_t, sec.theta)
    lp = _local(log_power(torch.from_numpy(x)[None].float()), 5)
    prom = sample_spectrum(lp, torch.from_numpy(tf(fc)).float()[None])[0].numpy()
    return att, np.cos(2 * d), prom
out = {}
marked = [STORE.exact(embed_v3(h, key, CONFIG, sec, q=Q)) for h in hosts]
for a in TABLE1_ATTACKS:
    out[a.name] = [perbin(a.exact(m)) for m in marked]
out["copy"] = [perbin(STORE.exact(SF.naive_copy(t.astype(np.float64), marked[i].astype(np.float64)))) for i, t in enumerate(targets)]
out["unmarked"] = [perbin(t) for t in targets]
import pickle; pickle.dump(out, open("perbin.pkl", "wb"))
for name, rows in out.items():
    for wname, wf in (("plain", lambda p: np.ones_like(p)), ("prom>1", lambda p: (p > 1.0).astype(float)),
                      ("w=clip(prom,0,3)", lambda p: np.clip(p, 0, 3))):
        cs = [float((wf(p) * c).sum() / max(wf(p).sum(), 1e-9)) for att, c, p in rows if att or name in ("copy", "unmarked")]
        print(f"{name:24s} {wname:18s} n={len(cs)} mean {np.mean(cs):.3f} p3 {np.percentile(cs,3):.3f} max {np.max(cs):.3f}")
