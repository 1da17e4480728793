"""Probe: fine-tune the VAE with a lesion-weighted loss; do its reconstructions bring granulomas back?

Usage: vae_finetune.py MODE STEPS W N LR THREADS [BALANCE [TEXTURE [EVERY [ANCHOR]]]]. MODE "decoder" trains the decoder alone on the
original encoder's latents (the latent space the U-Net knows stays); "full" trains encoder and decoder, sampling
the posterior, with the stage-A KL term. BALANCE "pixels" (default) weighs every lesion pixel alike and centres
crops on a random lesion pixel; "lesions" weighs each connected lesion as a whole alike (a pixel counts 1/area of
its lesion) and centres crops on a random lesion, so a 5-pixel granuloma counts as much as a consolidation. TEXTURE "fft"
(default) matches the spectrum's magnitude, which pays for detail wherever it is; "highpass" matches the error's
high-pass (the error minus its Gaussian blur) in place, so a missing dot and a made-up one cost the same;
"peaks" keeps "fft" and adds, at the lesion weight W, the mean over 8 x 8 cells of the largest error more than
4 pixels from any lesion, so a made-up finding costs what a missed lesion does. EVERY:
score the reconstructions every EVERY steps too. ANCHOR (full mode): weight of the squared
distance of the posterior mean to the original encoder's latents outside the latent cells a lesion touches, so
the U-Net's latent space stays where it was except around lesions; each score also reports the latents' drift. The two modes were first run as two scripts (vae_decoder_finetune.py with 2
threads, vae_finetune.py with 1) and merged afterwards; each mode computes what its script did. Environment:
VAE_CHECKPOINT (a `medsign base train --stage vae` checkpoint.pt) and VAE_RECIPE (its recipe) start from that VAE
instead of the shipped one (full mode: the cached latents of the shipped VAE are then unused)."""
import os, sys, time, json
import numpy as np, torch
from kornia.filters import gaussian_blur2d
from kornia.losses import ssim_loss
from medsign_forensics.diffusion import load_model
from medsign_forensics.evaluate.generator import render_phantoms, reconstruct, score, present_findings, THRESHOLD
from medsign_forensics.phantom import render_report
from medsign_forensics.phantom.classifier import DEFAULT_CLASSIFIER_DIR, load_classifier, predict
from medsign_forensics.reports import load_reports, split_reports
from medsign_forensics.diffusion.configs import DataConfig
from common import held_out_texts, summary
from scipy.ndimage import binary_dilation
mode, steps, weight, n_train, lr = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
balance = sys.argv[7] if len(sys.argv) > 7 else "pixels"
texture = sys.argv[8] if len(sys.argv) > 8 else "fft"
assert texture in ("fft", "highpass", "peaks"), texture
anchor = float(sys.argv[10]) if len(sys.argv) > 10 else 0.0
assert mode in ("decoder", "full"), mode
assert balance in ("pixels", "lesions"), balance
torch.set_num_threads(int(sys.argv[6]))
model = load_model(None)
if os.environ.get("VAE_CHECKPOINT"):  # a stage-A checkpoint (VAE_RECIPE: its recipe) in place of the shipped VAE
    from medsign_forensics.diffusion.configs import build_vae, load_config
    model.pipeline.vae = build_vae(load_config(os.environ["VAE_RECIPE"]))
    model.pipeline.vae.load_state_dict(torch.load(os.environ["VAE_CHECKPOINT"], weights_only=False)["trainer"]["vae"])
vae = model.vae
clf = load_classifier(DEFAULT_CLASSIFIER_DIR)
d = DataConfig()
train, _ = split_reports(load_reports(d.corpus), test_fraction=d.test_fraction, seed=d.split_seed)
texts = held_out_texts()
findings = [present_findings(t) for t in texts]
ph = render_phantoms(texts, seed=0, size=256)
import copy
original = copy.deepcopy(vae).eval()
@torch.no_grad()
def drift():
    """RMS change of the posterior means of the first 64 scored phantoms, in units of the original latents' std."""
    x = torch.from_numpy(ph[:64])[:, None] * 2 - 1
    new, old = vae.encode(x).latent_dist.mean, original.encode(x).latent_dist.mean
    return float((new - old).pow(2).mean().sqrt() / old.std())
def evaluate(tag):
    rec = reconstruct(model, ph, batch=8)
    s = score(findings, predict(clf, rec), threshold=THRESHOLD)
    print(json.dumps({"tag": tag, **summary(s),
                      "latent_drift": drift()}), flush=True)
rng = np.random.default_rng(0)
pos = [r.text for r in train if present_findings(r.text)]
neg = [r.text for r in train if not present_findings(r.text)]
chosen = list(rng.choice(pos, int(n_train * 0.8), replace=False)) + list(rng.choice(neg, n_train - int(n_train * 0.8), replace=False))
imgs, masks = [], []
t0 = time.time()
for i, text in enumerate(chosen if not os.path.exists("/tmp/generator_levers_data.pt") else []):
    st, _ = render_report(text, seed=5_000_000 + i, size=256)
    imgs.append(st.image.astype(np.float32)); masks.append(binary_dilation(st.lesion_mask, iterations=2))
if imgs:
    imgs = torch.from_numpy(np.stack(imgs))[:, None]; masks = torch.from_numpy(np.stack(masks))[:, None].float()
    print("rendered", len(chosen), time.time() - t0, flush=True)
    with torch.no_grad():
        lat = torch.cat([vae.encode(imgs[i:i+16] * 2 - 1).latent_dist.mode() for i in range(0, len(imgs), 16)])
    torch.save((imgs, masks, lat), "/tmp/generator_levers_data.pt")
else:
    imgs, masks, lat = torch.load("/tmp/generator_levers_data.pt")
print("encoded", time.time() - t0, flush=True)
if balance == "lesions":
    from scipy.ndimage import label
    labelled = [label(masks[j, 0].numpy())[0] for j in range(len(masks))]
    sizes = [np.bincount(lab.ravel()) for lab in labelled]
    masks = torch.stack([torch.from_numpy(np.where(lab > 0, 1.0 / np.maximum(size[lab], 1), 0.0).astype(np.float32))
                         for lab, size in zip(labelled, sizes)])[:, None]
    centres = [[np.argwhere(lab == c) for c in range(1, lab.max() + 1)] for lab in labelled]
params = list(vae.parameters()) if mode == "full" else list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99))
evaluate_every = int(sys.argv[9]) if len(sys.argv) > 9 else steps
vae.train()
for step in range(steps):
    idx = rng.choice(len(imgs), 16, replace=False)
    xs, ms, ls = [], [], []
    for j in idx:
        if balance == "lesions":
            pixels = centres[j][rng.integers(len(centres[j]))] if centres[j] else np.zeros((0, 2), int)
            ys, xs_ = pixels[:, 0], pixels[:, 1]
        else:
            ys, xs_ = np.nonzero(masks[j, 0].numpy())
        if len(ys) and rng.random() < 0.7:
            k = rng.integers(len(ys)); cy, cx = ys[k] // 8 - 8 + rng.integers(-4, 5), xs_[k] // 8 - 8 + rng.integers(-4, 5)
        else:
            cy, cx = rng.integers(0, 17), rng.integers(0, 17)
        cy, cx = int(np.clip(cy, 0, 16)), int(np.clip(cx, 0, 16))
        ls.append(lat[j, :, cy:cy+16, cx:cx+16]); xs.append(imgs[j, :, cy*8:cy*8+128, cx*8:cx*8+128]); ms.append(masks[j, :, cy*8:cy*8+128, cx*8:cx*8+128])
    x = torch.stack(xs) * 2 - 1; m = torch.stack(ms)
    if mode == "full":
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
    else:
        recon = vae.decode(torch.stack(ls)).sample
    err = (recon - x).abs()
    l1 = err.mean()
    lesion = (err * m).sum() / m.sum().clamp(min=1)
    ssim = ssim_loss((recon + 1) / 2, (x + 1) / 2, window_size=7, max_val=1.0) * 2
    if texture in ("fft", "peaks"):
        freq = (torch.fft.rfft2(recon, norm="ortho").abs() - torch.fft.rfft2(x, norm="ortho").abs()).abs().mean()
        loss = l1 + 0.2 * ssim + 0.05 * freq + weight * lesion
        if texture == "peaks":  # a made-up finding is a local error peak away from every lesion: it costs as much
            outside = (torch.nn.functional.max_pool2d((m > 0).float(), 9, stride=1, padding=4) == 0).float()
            loss = loss + weight * torch.nn.functional.max_pool2d(err * outside, 8).mean()
    else:  # detail in place: a missing dot and a made-up one cost the same, wherever they are
        detail = (recon - x) - gaussian_blur2d(recon - x, (7, 7), (1.5, 1.5))
        loss = l1 + 0.2 * ssim + 4.0 * detail.abs().mean() + weight * lesion
    if mode == "full":
        loss = loss + 1e-6 * posterior.kl().mean() / x[0].numel()
        if anchor:  # keep the latent the U-Net knows, except in the cells a lesion touches
            free = torch.nn.functional.max_pool2d((m > 0).float(), 8)
            loss = loss + anchor * ((posterior.mean - torch.stack(ls)).pow(2) * (1 - free)).mean()
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(params, 1.0); opt.step()
    if step and step % evaluate_every == 0:
        vae.eval(); evaluate(f"step {step}"); vae.train()
    if step % 25 == 0:
        print(json.dumps({"step": step, "l1": l1.item(), "lesion": lesion.item(), "t": time.time() - t0}), flush=True)
vae.eval()
evaluate(f"{'full VAE' if mode == 'full' else 'decoder'} ft {steps} steps w={weight} balance={balance} texture={texture}")
torch.save(vae.state_dict(), f"/tmp/generator_levers_{mode}_{balance}{'' if texture == 'fft' else '_' + texture}"
           f"{f'_anchor{anchor:g}' if anchor else ''}.pt")
