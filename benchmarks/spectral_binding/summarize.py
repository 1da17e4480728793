import json, numpy as np, sys
d = json.load(open(sys.argv[1] if len(sys.argv) > 1 else "/tmp/study14/results.json"))
lines = [f"# Study 14: phase binding vs copy attacks (N={d['N']} hosts, {d['N']} targets, partner mode {d.get('mode', 'secret')})", ""]
for scheme, r in d["schemes"].items():
    gen = r["genuine"]
    # threshold: among attributed genuine images, keep >= 99% under each attack
    thr = min(np.percentile([x["C"] for x in rows if x["att"]], 1) for rows in gen.values() if any(x["att"] for x in rows))
    lines += [f"## {scheme}: PSNR {np.mean(r['psnr']):.2f} dB (min {np.min(r['psnr']):.2f}); "
              f"cancel energy share {np.mean(r.get('cancel_frac', [0])):.3f}; coherence threshold C >= {thr:.3f}", "",
              "| set | n | attributed (bits+pilot) | C mean [p1, p50] | attributed AND C>=thr | PSNR vs target |",
              "|---|---|---|---|---|---|"]
    for name, rows in gen.items():
        c = np.array([x["C"] for x in rows]); att = np.array([x["att"] for x in rows])
        both = att & (c >= thr)
        lines.append(f"| genuine, {name} | {len(rows)} | {att.mean():.2f} | {c.mean():.2f} [{np.percentile(c,1):.2f}, {np.median(c):.2f}] | {both.mean():.2f} | - |")
    for name, f in r["forgery"].items():
        rows = f["rows"]
        c = np.array([x["C"] for x in rows]); att = np.array([x["att"] for x in rows])
        both = att & (c >= thr)
        ps = f"{np.mean(f['psnr']):.1f}" if f["psnr"] else "-"
        lines.append(f"| {name} | {len(rows)} | {att.sum()}/{len(rows)} | {c.mean():.2f} [{np.percentile(c,1):.2f}, {np.median(c):.2f}] | {both.sum()}/{len(rows)} | {ps} |")
    if "learning" in r: lines.append(f"learning forger: fraction of carrying bins whose secret partner was recovered, by M: {r['learning']}")
    lines.append("")
print("\n".join(lines))
