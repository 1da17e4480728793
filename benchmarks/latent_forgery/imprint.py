"""Attack 2 (imprinting, Mueller et al. 2024) and removal by the opposite-sign loss.

Forger: public code + weights + one genuine image g. z* = LatentReader(model, 10).noise(g) (no secret needed).
Optimise x (start = real image r) with Adam so that the DIFFERENTIABLE inversion of x (prepare's level map,
VAE encoder mean * scaling factor, 10 DDIM inverse steps, empty prompt) has sign(z) == sign(z*): hinge loss
mean(relu(margin - z * sign(z*))). Projection onto an L2 ball around r (PSNR >= target) and [0, 1].
Mode 'vae': cheaper, only matches the VAE encoder latent of g (MSE), no U-Net in the loop.
Then read quant(x) with the normal pipeline + the genuine secret.
"""

import argparse
import json

from common import *
from diffusers import DDIMInverseScheduler

from medsign_forensics.watermark.latent_reader import _CLIP, REFERENCE_LEVELS

p = argparse.ArgumentParser()
p.add_argument("--n", type=int, default=8)
p.add_argument("--start", type=int, default=0)
p.add_argument("--steps", type=int, default=150)
p.add_argument("--psnr", type=float, nargs="+", default=[40.0, 35.0])
p.add_argument("--mode", choices=["full", "vae"], default="full")
p.add_argument("--removal", action="store_true", help="genuine image, opposite-sign target")
p.add_argument("--lr", type=float, default=0.003)
p.add_argument("--margin", type=float, default=0.5)
p.add_argument("--check", type=int, default=25)
p.add_argument("--tag", default="")
p.add_argument(
    "--target", default="", help="npy sign pattern (consensus of several genuine images) instead of one image"
)
args = p.parse_args()

m = model()
mark = mark0()
rd = reader()
real, names = real_images()
gen, _ = genuine()
for mod in (m.vae, m.unet):
    mod.requires_grad_(False)
    mod.eval()
emb = rd.embedding
sched = DDIMInverseScheduler.from_config(m.scheduler.config)
sched.set_timesteps(10)
sf = m.vae.config.scaling_factor


def diff_prepare(x, valid):
    low, mid = torch.quantile(x.flatten(), torch.tensor([0.01, 0.5]))
    y = (x - low) / (mid - low) * (REFERENCE_LEVELS[1] - REFERENCE_LEVELS[0]) + REFERENCE_LEVELS[0]
    return torch.where(valid, y.clamp(0, 1), torch.full_like(y, REFERENCE_LEVELS[1]))


def encode(x, valid):
    y = diff_prepare(x, valid)[None, None] * 2 - 1
    y = y.repeat(1, m.image_channels, 1, 1)
    return m.vae.encode(y).latent_dist.mean * sf


def invert_diff(x, valid):
    lat = encode(x, valid)
    for t in sched.timesteps:
        lat = sched.step(m.unet(lat, t, encoder_hidden_states=emb).sample, t, lat).prev_sample
    return lat


results = []
for i in range(args.start, args.start + args.n):
    base = gen[i] if args.removal else real[i]
    src = gen[i]
    zstar, _, _ = rd.noise(src)
    target_sign = torch.sign(zstar)[None] * (-1 if args.removal else 1)
    if args.target:
        target_sign = torch.from_numpy(np.load(args.target)).float().reshape(target_sign.shape)
    valid = torch.from_numpy((base > _CLIP) & (base < 1 - _CLIP))
    if args.mode == "vae":
        with torch.no_grad():
            lat_target = encode(torch.from_numpy(quant(src)), torch.from_numpy((src > _CLIP) & (src < 1 - _CLIP)))
    r = torch.from_numpy(base.astype(np.float32))
    bits0 = read_bits(base, mark)
    for target_psnr in args.psnr:
        radius = float(np.sqrt(r.numel()) * 10 ** (-target_psnr / 20))
        delta = torch.zeros_like(r, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=args.lr)
        curve = []
        t0 = time.process_time()
        w0 = time.perf_counter()
        for step in range(1, args.steps + 1):
            for g in opt.param_groups:
                g["lr"] = args.lr * 0.5 * (1 + np.cos(np.pi * (step - 1) / args.steps))
            x = (r + delta).clamp(0, 1)
            if args.mode == "full":
                z = invert_diff(x, valid)
                loss = torch.relu(args.margin - z * target_sign).mean()
                agree = float((torch.sign(z) == target_sign).float().mean())
            else:
                lat = encode(x, valid)
                loss = ((lat - lat_target) ** 2).mean()
                agree = float("nan")
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                d = (r + delta).clamp(0, 1) - r
                nrm = float(d.norm())
                if nrm > radius:
                    d *= radius / nrm
                delta.copy_(d)
            if step % args.check == 0 or step == args.steps:
                cpu = time.process_time() - t0
                forged = quant((r + delta).detach().numpy())
                b = read_bits(forged, mark)
                t0 += time.process_time() - t0 - cpu  # do not count the secret read in attack time
                curve.append(
                    {"step": step, "loss": float(loss), "agree_proxy": agree, "bits": b, "psnr": psnr(forged, base)}
                )
                print(
                    f"img {i} psnr>={target_psnr} step {step} loss {float(loss):.4f} agree {agree:.3f} bits {b}",
                    flush=True,
                )
        cpu = time.process_time() - t0
        wall = time.perf_counter() - w0
        forged = quant((r + delta).detach().numpy())
        np.save(
            OUT
            / f"forged_{args.mode}{'_target' if args.target else ''}{'_rem' if args.removal else ''}_{i}_{int(target_psnr)}.npy",
            forged,
        )
        b = read_bits(forged, mark)
        results.append(
            {
                "image": i,
                "real": names[i],
                "target_psnr": target_psnr,
                "bits_before": bits0,
                "bits": b,
                "psnr": psnr(forged, base),
                "cpu_s": cpu,
                "wall_s": wall,
                "curve": curve,
                "n1": b >= T1,
                "n1000": b >= T1000,
            }
        )
        print(
            f"== img {i} psnr>={target_psnr}: bits {bits0} -> {b} psnr {psnr(forged, base):.2f} cpu {cpu:.0f}s wall {wall:.0f}s",
            flush=True,
        )
        json.dump(
            {"args": vars(args), "T1": T1, "T1000": T1000, "results": results},
            open(
                OUT
                / f"imprint_{args.mode}{'_target' if args.target else ''}{'_removal' if args.removal else ''}{args.tag}.json",
                "w",
            ),
            indent=1,
        )
