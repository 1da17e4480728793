import json, numpy as np, sys
from scipy.stats import binom
m = next(m for m in range(49) if binom.sf(m - 1, 48, 0.5) <= 1e-6)
print(f"bits rule: >= {m}/48 matching bits (binomial p <= 1e-6, 1 candidate) and pilot score >= 1.8")
lines = []
for path in sys.argv[1:]:
    d = json.load(open(path))
    for scheme, r in d["schemes"].items():
        lines.append(f"\n### {scheme} ({path}, N={d['N']})\n")
        ts = (0.10, 0.15, 0.20, 0.24, 0.30)
        lines.append("| set | attributed | " + " | ".join(f"attr. & C>={t}" for t in ts) + " | max C |")
        lines.append("|---|---|" + "---|" * len(ts) + "---|")
        def row(name, rows):
            att = np.array([x["att"] for x in rows]); c = np.array([x["C"] for x in rows])
            cells = [f"{(att & (c >= t)).sum()}/{len(rows)}" for t in ts]
            lines.append(f"| {name} | {att.sum()}/{len(rows)} | " + " | ".join(cells) + f" | {c.max():.3f} |")
        for name, rows in r["genuine"].items():
            row("genuine " + name, rows)
        pooled = []
        for name, f in r["forgery"].items():
            row(name, f["rows"])
            if not name.startswith("learning") or "M=1 " in name:
                pooled += f["rows"]
        row("POOLED non-learning forgeries + unmarked + M=1", pooled)
print("\n".join(lines))
