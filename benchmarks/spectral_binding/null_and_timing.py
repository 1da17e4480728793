import json, time, numpy as np
from common import *
from bound2 import Secret
from bound3 import embed_v3, coherence_v3
d = json.load(open("results_v3.json"))["schemes"]["v3 disc partners, q=0.1"]
pooled = [x["C"] for name, f in d["forgery"].items() if not name.startswith("learning") or "M=1 " in name for x in f["rows"]]
print(f"null (forgeries+unmarked, n={len(pooled)}): mean {np.mean(pooled):.4f} sd {np.std(pooled):.4f} (theory 1/sqrt(2*198) = {1/np.sqrt(396):.4f}); max {np.max(pooled):.3f}")
img = load_real(0, 1)[0]; key = np.random.default_rng(14).integers(0, 2, 48).astype(np.uint8); sec = Secret(777)
t = time.perf_counter(); m = embed_v3(img, key, CONFIG, sec, q=0.1); te = time.perf_counter() - t
t = time.perf_counter(); bits, rot, sc, pres = read(m); tr = time.perf_counter() - t
t = time.perf_counter(); c = coherence_v3(m, key, CONFIG, sec, rot, sc, q=0.1); tc = time.perf_counter() - t
print(f"timing (1 thread, numpy prototype): embed {te:.3f}s, existing read {tr:.3f}s, coherence {tc:.3f}s; C={c['C']:.3f}")
