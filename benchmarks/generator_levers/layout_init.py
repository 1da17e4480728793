"""Probe for issue 15: VAE ceiling, guidance, layout-initialised sampling (SDEdit from the report's phantom)."""
import sys, time, json
import numpy as np, torch
from diffusers import StableDiffusionImg2ImgPipeline
from medsign_forensics.diffusion import load_model
from medsign_forensics.diffusion.sampling import decode
from medsign_forensics.evaluate.generator import (render_phantoms, reconstruct, score, present_findings, generate_images, _grey, THRESHOLD)
from medsign_forensics.phantom.classifier import DEFAULT_CLASSIFIER_DIR, load_classifier, predict
from common import held_out_texts, summary
torch.set_num_threads(2)
model_dir = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] != "-" else None
n = int(sys.argv[2]) if len(sys.argv) > 2 else 200
settings = sys.argv[3].split(",") if len(sys.argv) > 3 else ["recon", "img2img:0.7:4", "img2img:0.85:4", "t2i:8"]
model = load_model(model_dir)
clf = load_classifier(DEFAULT_CLASSIFIER_DIR)
texts = held_out_texts(n)
findings = [present_findings(t) for t in texts]
ph = render_phantoms(texts, seed=0, size=model.image_size)
def report(name, imgs, secs):
    s = score(findings, predict(clf, imgs), threshold=THRESHOLD)
    print(json.dumps({"setting": name, **summary(s), "s_per_img": secs}), flush=True)
report("phantoms", ph, 0)
i2i = StableDiffusionImg2ImgPipeline(**model.pipeline.components)
i2i.set_progress_bar_config(disable=True)
for setting in settings:
    t0 = time.perf_counter()
    parts = setting.split(":")
    if parts[0] == "recon":
        imgs = reconstruct(model, ph, batch=8)
    elif parts[0] == "t2i":
        imgs, _ = generate_images(model, texts, seed=0, steps=25, guidance=float(parts[1]), batch=8)
    else:
        strength, g = float(parts[1]), float(parts[2])
        out = []
        for start in range(0, n, 8):
            chunk = torch.from_numpy(ph[start:start+8])[:, None]
            if model.image_channels == 3: chunk = chunk.repeat(1, 3, 1, 1)
            with torch.no_grad():
                lat = model.vae.encode(chunk * 2 - 1).latent_dist.mode() * model.vae.config.scaling_factor
                gens = [torch.Generator("cpu").manual_seed(start + i) for i in range(len(chunk))]
                res = i2i(prompt=texts[start:start+8], image=lat, strength=strength, num_inference_steps=25,
                          guidance_scale=g, generator=gens, output_type="latent")
                out.append(_grey(decode(model, res.images / model.vae.config.scaling_factor)))
        imgs = np.concatenate(out)
    report(setting, imgs, (time.perf_counter() - t0) / n)
    np.save(f"/tmp/generator_levers_{setting.replace(':','_')}.npy", imgs[:16])
