from common import *
from bound2 import *
import json
hosts = load_real(0, 30)
key = np.random.default_rng(14).integers(0, 2, 48).astype(np.uint8)
sec = Secret(777)
res = {}
for q in (None, 0.05, 0.1, 0.2):
    marked = [STORE.exact(embed_v2(h, key, CONFIG, sec, q=q)) for h in hosts]
    row = {}
    for a in TABLE1_ATTACKS:
        cs = []
        for m in marked:
            x = a.exact(m); bits, rot, sc, pres = read(x)
            cs.append(coherence_v2(x, key, CONFIG, sec, rot, sc, q=q)["C"])
        row[a.name] = (round(float(np.mean(cs)), 3), round(float(np.percentile(cs, 3)), 3))
    res[str(q)] = row
    print(q, row, flush=True)
json.dump(res, open("qscan.json", "w"))
