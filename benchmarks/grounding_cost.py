"""Grounded cross-attention on the shipped mini-cxr: what a step costs, and which loss weights to use (issue 15).

-> benchmarks/results/grounding_cost.md

From the shipped weights (as ``medsign base train --init-from`` starts a fine-tune), on phantoms of Open-i training
reports that assert a finding (one render each, the recipe's caption variants, latents sampled from the VAE
posterior as stage B does):

1. Cost: seconds per stage-B step (batch 16, 2 torch threads) without and with grounding, median after a warm-up,
   wall and process CPU time (the machine is shared; CPU time is what contention spoils least).
2. Scale: at the shipped weights, the gradient norms of the denoising loss, L_token and L_pixel over the text
   encoder + U-Net parameters, median over batches, so the weights can be set as a share of the denoising gradient.
3. Choice: short fine-tunes from the shipped weights, the same batches, noise and timesteps for every weight
   setting, scored on held-out reports' phantoms at timesteps 200, 400 and 600 (the map's default until the fifth
   session): the share of a grounded token's attention inside its lesion (mean over layers, as L_token reads
   it), the A_avg pointing game on the latent grid (the word's tokens' captured maps averaged, its maximum inside
   the lesion), and the denoising MSE (v-prediction) on the same noised latents.

Usage:
    python benchmarks/grounding_cost.py [--reports 96] [--held-out 24] [--timing-steps 6] [--tune-steps 40]
        [--settings 0:0,1e-3:1e-3,...] [--out FILE]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep on the shared 2-core machine

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from medsign_forensics.attacks.codec import to_uint8  # noqa: E402
from medsign_forensics.diffusion import load_model  # noqa: E402
from medsign_forensics.diffusion.base_trainers import UNetTrainer  # noqa: E402
from medsign_forensics.diffusion.configs import GroundingConfig, MiniCxrConfig, load_config  # noqa: E402
from medsign_forensics.diffusion.data import encode_posteriors, load_source, render_seed  # noqa: E402
from medsign_forensics.diffusion.grounding import GroundingCapture, GroundingTargets  # noqa: E402
from medsign_forensics.diffusion.grounding_data import CaptionWords, GroundingData, MaskCache  # noqa: E402
from medsign_forensics.fileio import write_text  # noqa: E402
from medsign_forensics.localization import CrossAttentionCapture  # noqa: E402
from medsign_forensics.localization.maps import token_maps  # noqa: E402
from medsign_forensics.reports import parse_report  # noqa: E402
from medsign_forensics.training.environment import machine_line  # noqa: E402

RECIPE = Path(__file__).parent / "recipes" / "mini-cxr-grounded-cpu.json"
EVAL_TIMESTEPS = (200, 400, 600)
BATCH = 16


class Split:
    """Rendered phantoms of some reports: posterior latents, mask planes, caption variants, grounding data."""

    def __init__(self, config: MiniCxrConfig, model, split: str, count: int, seed: int) -> None:
        source = load_source(replace(config.data, max_reports=None), split=split)
        chosen = [i for i in range(len(source)) if any(f.present for f in parse_report(source.captions(i)[0]))]
        chosen = chosen[:count]
        cache = MaskCache(Path("."), count=1, size=config.image_size, grid=config.latent_size)
        images, planes, self.captions = [], [], []
        for index in chosen:
            render = render_seed(config.seed, index, 0)
            images.append(to_uint8(source.render(index, seed=render, size=config.image_size)))
            planes.append(cache.draw(source, index, render))
            self.captions.append(source.captions(index))
        self.posteriors = encode_posteriors(model.vae, np.stack(images), torch.device("cpu"))
        self.scaling = float(model.vae.config.scaling_factor)
        self.channels = config.vae.latent_channels
        words = CaptionWords(model.tokenizer, locations=True)
        self.data = GroundingData(np.stack(planes), words, grid=config.latent_size)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.captions)

    def batch(self, rows: np.ndarray, generator: torch.Generator) -> tuple[torch.Tensor, list[str], GroundingTargets]:
        mean = self.posteriors[rows, : self.channels].float()
        logvar = self.posteriors[rows, self.channels :].float()
        z = (mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=generator)) * self.scaling
        captions = [self.captions[r][int(self.rng.integers(len(self.captions[r])))] for r in rows]
        return z, captions, self.data.targets(rows.tolist(), captions)


def make_trainer(config: MiniCxrConfig, model, grounding: GroundingConfig) -> UNetTrainer:
    config = replace(config, unet_train=replace(config.unet_train, grounding=grounding))
    trainer = UNetTrainer(config, model.tokenizer, device=torch.device("cpu"))
    trainer.initialise_from(model.text_encoder, model.unet)
    return trainer


def timing(config, model, train: Split, steps: int) -> dict[str, tuple[float, float]]:
    rows = [np.arange(i * BATCH, (i + 1) * BATCH) % len(train) for i in range(steps + 1)]
    results = {}
    for label, grounding in (("ungrounded", GroundingConfig()), ("grounded", GroundingConfig(1e-3, 1e-3))):
        trainer = make_trainer(config, model, grounding)
        generator = torch.Generator().manual_seed(0)
        walls, cpus = [], []
        for i, batch_rows in enumerate(rows):
            z, captions, targets = train.batch(batch_rows, generator)
            start, start_cpu = time.perf_counter(), time.process_time()
            trainer.step(z, captions, generator, targets)
            if i:  # the first step is a warm-up
                walls.append(time.perf_counter() - start)
                cpus.append(time.process_time() - start_cpu)
        results[label] = (statistics.median(walls), statistics.median(cpus))
    return results


def gradient_norms(config, model, train: Split, batches: int) -> dict[str, float]:
    """Median gradient norm of each loss: the grounded losses' gradients are the differences of total-loss
    gradients with one weight set to 1 and the other to 0 (same batch, noise and timesteps)."""
    settings = {"denoising": GroundingConfig(), "token": GroundingConfig(1.0, 0.0), "pixel": GroundingConfig(0.0, 1.0)}
    trainers = {name: make_trainer(config, model, grounding) for name, grounding in settings.items()}
    norms: dict[str, list[float]] = {name: [] for name in settings}
    generator = torch.Generator().manual_seed(1)
    for i in range(batches):
        z, captions, targets = train.batch(np.arange(i * BATCH, (i + 1) * BATCH) % len(train), generator)
        seed = int(torch.randint(0, 2**31, (1,), generator=generator))
        grads = {}
        for name, trainer in trainers.items():
            loss, _ = trainer.loss(z, captions, torch.Generator().manual_seed(seed), targets)
            params = [p for m in trainer.modules.values() for p in m.parameters()]
            grads[name] = torch.autograd.grad(loss, params, allow_unused=True)

        def norm(parts) -> float:
            return float(torch.sqrt(sum((g.float() ** 2).sum() for g in parts if g is not None)))

        norms["denoising"].append(norm(grads["denoising"]))
        for name in ("token", "pixel"):
            pairs = zip(grads[name], grads["denoising"], strict=True)
            diff = [None if g is None else g - (d if d is not None else 0) for g, d in pairs]
            norms[name].append(norm(diff))
    return {name: statistics.median(values) for name, values in norms.items()}


@torch.no_grad()
def score(trainer: UNetTrainer, held: Split) -> dict[str, float]:
    """Inside share, A_avg pointing game and denoising MSE on the held-out phantoms at EVAL_TIMESTEPS."""
    generator = torch.Generator().manual_seed(123)
    held.rng = np.random.default_rng(7)
    rows = np.arange(len(held))
    z, captions, targets = held.batch(rows, generator)
    states = trainer.encode_captions(captions)
    inside, hits, mse = [], [], []
    for t in EVAL_TIMESTEPS:
        noise = torch.randn(z.shape, generator=generator)
        steps = torch.full((len(z),), t)
        noisy = trainer.scheduler.add_noise(z, noise, steps)
        with CrossAttentionCapture(trainer.unet, conditional_batch=len(z)) as capture:
            with GroundingCapture(trainer.unet, targets) as grounding:
                prediction = trainer.unet(noisy, steps, states).sample
        inside.append(grounding.losses().inside)
        mse.append(float(((prediction - trainer.scheduler.get_velocity(z, noise, steps)) ** 2).mean()))
        captured = capture.result()
        for item in range(len(z)):
            entries = (targets.items == item).nonzero().flatten()
            if not len(entries):
                continue
            words: dict[bytes, list[int]] = {}
            for e in entries.tolist():  # entries of one word share its mask
                words.setdefault(targets.masks[e].numpy().tobytes(), []).append(int(targets.positions[e]))
            for key, positions in words.items():
                mask = np.frombuffer(key, dtype=np.float32).reshape(targets.masks.shape[-2:])
                a_avg = token_maps(captured, positions, tuple(mask.shape), item=item).mean(0).numpy()
                hits.append(bool(mask.flat[int(a_avg.argmax())] > 0))
    return {"inside": float(np.mean(inside)), "pointing": float(np.mean(hits)), "words": len(hits) / 3,
            "mse": float(np.mean(mse))}


def fine_tune(config, model, train: Split, held: Split, grounding: GroundingConfig, steps: int) -> dict[str, float]:
    trainer = make_trainer(config, model, grounding)
    generator = torch.Generator().manual_seed(2)
    train.rng = np.random.default_rng(3)
    order = np.random.default_rng(4)
    start = time.perf_counter()
    for _ in range(steps):
        z, captions, targets = train.batch(order.choice(len(train), BATCH, replace=False), generator)
        trainer.step(z, captions, generator, targets)
    wall = time.perf_counter() - start
    return {**score(trainer, held), "wall_s": wall}  # the raw weights: an EMA barely moves in a few steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reports", type=int, default=96)
    parser.add_argument("--held-out", type=int, default=24)
    parser.add_argument("--timing-steps", type=int, default=6)
    parser.add_argument("--grad-batches", type=int, default=4)
    parser.add_argument("--tune-steps", type=int, default=40)
    parser.add_argument("--settings", default="0:0,1e-3:1e-3,1e-2:1e-2,1e-1:1e-2", help="token:pixel weights")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "grounding_cost.md")
    args = parser.parse_args()
    torch.set_num_threads(2)
    config = load_config(RECIPE)
    model = load_model()
    train, held = Split(config, model, "train", args.reports, 0), Split(config, model, "test", args.held_out, 1)
    print(f"{len(train)} training and {len(held)} held-out phantoms", flush=True)
    load = os.getloadavg()[0]
    costs = timing(config, model, train, args.timing_steps)
    print(costs, flush=True)
    norms = gradient_norms(config, model, train, args.grad_batches)
    print(norms, flush=True)
    start_score = score(make_trainer(config, model, GroundingConfig()), held)
    print("shipped", start_score, flush=True)
    tunes = {}
    for setting in filter(None, args.settings.split(",")):
        token, pixel = (float(v) for v in setting.split(":"))
        tunes[setting] = fine_tune(config, model, train, held, GroundingConfig(token, pixel), args.tune_steps)
        print(setting, tunes[setting], flush=True)
    lines = [
        "# Grounded cross-attention: cost per step and loss weights",
        "",
        f"`{shlex.join(['python', *sys.argv])}` ({dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()}; "
        f"{machine_line()}; 1-minute load average {load:.2f} at the start: the machine is shared).",
        "",
        f"From the shipped mini-cxr with the recipe `{RECIPE.name}`; {len(train)} training and {len(held)} held-out "
        "phantoms of reports asserting a finding. See the script's docstring for what each figure is.",
        "",
        "## Cost per stage-B step (batch 16, 2 threads, median)",
        "",
        "| | wall s/step | CPU s/step |",
        "| --- | --- | --- |",
        *(f"| {label} | {wall:.2f} | {cpu:.2f} |" for label, (wall, cpu) in costs.items()),
        "",
        f"Grounding costs {costs['grounded'][0] / costs['ungrounded'][0] - 1:+.0%} wall time per step.",
        "",
        "## Gradient norms at the shipped weights (median over batches)",
        "",
        "| denoising | L_token | L_pixel |",
        "| --- | --- | --- |",
        f"| {norms['denoising']:.4g} | {norms['token']:.4g} | {norms['pixel']:.4g} |",
        "",
        f"## Short fine-tunes ({args.tune_steps} steps each, raw weights; held-out, t = {EVAL_TIMESTEPS})",
        "",
        "| token:pixel weights | inside share | A_avg pointing | denoising MSE | wall s |",
        "| --- | --- | --- | --- | --- |",
        f"| shipped (no fine-tune) | {start_score['inside']:.3f} | {start_score['pointing']:.3f} | "
        f"{start_score['mse']:.4f} | — |",
        *(f"| {k} | {v['inside']:.3f} | {v['pointing']:.3f} | {v['mse']:.4f} | {v['wall_s']:.0f} |"
          for k, v in tunes.items()),
        "",
        f"{start_score['words']:.0f} grounded words scored per timestep.",
        "",
    ]
    write_text(args.out, "\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
