"""Rectified flow matching, the objective of HunyuanVideo (and SD3, Flux, Pyramidal Flow).

Flow matching (Lipman et al. 2023) with the straight path of rectified flow (Liu et al. 2023) joins
data and noise by a line,

    x_t = (1 - t) x0 + t eps,   t in [0, 1], t = 1 pure noise,

and trains the network to predict its velocity dx_t/dt = eps - x0 with a plain MSE loss. Sampling
integrates dx/dt = v(x_t, t) from t = 1 back to t = 0 with Euler (or Heun) steps. Beside DDPM
(03_diffusion.py) there is no schedule table and no division, and t = 1 is pure noise by construction:
the zero terminal SNR that 03 has to enforce.

Two knobs from SD3 (Esser et al. 2024), both used by HunyuanVideo:
- t sampling: uniform, or logit-normal (t = sigmoid(m + s n), n ~ N(0, 1)), which trains the middle t
  more, where predicting the velocity is hardest;
- timestep shift s: t' = s t / (1 + (s - 1) t) moves every t toward noise. The signal-to-noise ratio
  ((1 - t) / t)^2 becomes SNR / s^2, the flow counterpart of 03's SNR shift. Large latents (videos, high
  resolution) keep their content at higher noise, so they need s > 1 (HunyuanVideo: 7 at 720p).
The model receives 1000 t, the scale of DDPM's step index, so one timestep embedding fits both objectives.

    python 04_flow.py   # flow vs 03's DDPM on a 2-D toy: prints the distance (MMD) of samples to held-out
                        # data at 5-50 sampling steps, writes runs/demo/flow_vs_diffusion.png (about a minute)
"""
import importlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageDraw
from tqdm import tqdm

diffusion = importlib.import_module("03_diffusion")  # the DDPM this file is compared with (demo)
# classifier-free guidance, with Lin et al.'s rescale: the same for a velocity as for 03's v-prediction
guided_prediction, device_of = diffusion.guided_prediction, diffusion.device_of


def shift_time(t, shift):
    """t' = s t / (1 + (s - 1) t): s = 1 is the identity, s > 1 spends more steps near noise (t = 1)."""
    return shift * t / (1 + (shift - 1) * t)


class RectifiedFlow(nn.Module):
    """Rectified flow: loss(...) trains any model(x_t, 1000 t, **cond), sample(...) draws x0.

    An nn.Module without parameters or buffers, so train.py can .to(device) any objective alike.
    rank / world_size stratify t over the global batch as 03's explicit uniform sampling does.
    """

    def __init__(self, t_sampling="uniform", shift=1.0, solver="euler", logit_mean=0.0, logit_std=1.0,
                 sample_shift=None):
        super().__init__()
        if t_sampling not in ("uniform", "logit_normal"):
            raise ValueError(f"t_sampling must be 'uniform' or 'logit_normal', got {t_sampling!r}")
        if shift <= 0 or (sample_shift is not None and sample_shift <= 0):
            raise ValueError(f"shift and sample_shift must be > 0, got {shift} and {sample_shift}")
        if solver not in ("euler", "heun"):
            raise ValueError(f"solver must be 'euler' or 'heun', got {solver!r}")
        self.t_sampling, self.shift, self.solver = t_sampling, shift, solver
        # the sampler's grid may be shifted differently from training's t (None: the same shift for both)
        self.sample_shift = shift if sample_shift is None else sample_shift
        self.logit_mean, self.logit_std = logit_mean, logit_std

    def sample_t(self, batch, rank=0, world_size=1, generator=None, device=None):
        """Training times t in [0, 1] (B,) for this rank's slice of the global batch of n = world_size * batch.

        Sample i draws u uniformly from [i / n, (i + 1) / n), the stratification of 03's explicit uniform
        sampling; the inverse CDF of the logit-normal maps the strata onto that density, and the shift
        applies the same warp as the sampler's grid, so training sees the noise levels sampling visits.
        """
        i = diffusion.global_index(batch, rank, world_size, device)
        u = (i + torch.rand(batch, generator=generator, device=device)) / (world_size * batch)
        if self.t_sampling == "logit_normal":
            # sigmoid(m + s Phi^-1(u)), Phi^-1(u) = sqrt(2) erfinv(2u - 1): logit-normal for uniform u
            u = torch.sigmoid(self.logit_mean + self.logit_std * math.sqrt(2) * torch.erfinv(2 * u - 1))
        return shift_time(u, self.shift)

    def loss(self, model, x0, cond, rank=0, world_size=1, generator=None):
        """||v_hat(x_t, t) - (eps - x0)||^2 for x0 (B, ...) (Liu et al. 2023; minRF)."""
        t = self.sample_t(x0.shape[0], rank, world_size, generator, x0.device)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        t_ = t.view(-1, *[1] * (x0.dim() - 1)).to(x0.dtype)  # (B, 1, ...)
        x_t = (1 - t_) * x0 + t_ * eps
        pred = model(x_t, 1000 * t, **cond)
        return F.mse_loss(pred.float(), (eps - x0).float())

    @torch.no_grad()
    def sample(self, model, shape, cond, uncond=None, steps=50, cfg=1.0, cfg_rescale=0.0, generator=None,
               progress=False, preview=None):
        """Integrate dx/dt = v from t = 1 (noise) to t = 0 on the shifted grid; returns x0 (shape).
        preview(i, steps, x0_hat): after step i, the clean sample the velocity points at, x0 = x_t - t v.

        Heun (Karras et al. 2022) averages the velocities at both ends of a step, second order for one
        more model call per step; its last step, ending at t = 0, is a plain Euler step, as in EDM,
        so Heun makes 2 * steps - 1 model calls.
        """
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        device = device_of(cond)
        x = torch.randn(shape, generator=generator, device=device)

        def velocity(x, t):
            t_batch = torch.full((shape[0],), 1000 * t, device=device)
            return guided_prediction(model, x, t_batch, cond, uncond, cfg, cfg_rescale).float()

        ts = shift_time(torch.linspace(1, 0, steps + 1, dtype=torch.float64), self.sample_shift).tolist()
        for i, (t, t_next) in enumerate(tqdm(list(zip(ts[:-1], ts[1:])), desc="flow", disable=not progress)):
            v = velocity(x, t)
            if preview is not None:
                preview(i, steps, x - t * v)
            if self.solver == "heun" and t_next > 0:
                v = (v + velocity(x + (t_next - t) * v, t_next)) / 2
            x = x + (t_next - t) * v
        return x


# ----------------------------------------------------------------------------------------------
# Demo: flow matching vs DDPM (03) on a 2-D toy, the same MLP, data, seed and step budget.
timestep_embedding = importlib.import_module("02_dit").timestep_embedding  # sinusoidal features of t

def eight_gaussians(n, generator=None):
    """Points (n, 2) from 8 Gaussians (std 0.1) on a circle of radius 1.5; label (n,) = mode index % 2,
    so each class is itself 4 modes and sampling must still choose among them."""
    mode = torch.randint(8, (n,), generator=generator)
    angle = mode * (2 * math.pi / 8)
    centres = 1.5 * torch.stack([angle.cos(), angle.sin()], dim=1)  # (n, 2)
    return centres + 0.1 * torch.randn(n, 2, generator=generator), mode % 2


NULL_LABEL = 2  # the "no label" input for classifier-free guidance (classes are 0 and 1)


class ToyMLP(nn.Module):
    """model(x_t, t, label) for 2-D points: t on the 0..1000 scale, label in 0 .. NULL_LABEL."""

    def __init__(self, dim=128):
        super().__init__()
        # x gets a projection of its own, added to the embeddings: concatenated to them, its 2 numbers
        # were drowned out by 128 and DDPM's training stalled at low noise, where x matters most.
        self.x_proj = nn.Linear(2, dim)
        self.label_emb = nn.Embedding(NULL_LABEL + 1, dim)
        self.net = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim), nn.SiLU(),
                                 nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, 2))
        self.dim = dim

    def forward(self, x, t, label):
        emb = timestep_embedding(t, self.dim, max_period=1000) + self.label_emb(label)  # (B, dim), t as in 02's DiT
        return self.net(self.x_proj(x) + emb)  # (B, 2)


def mmd2(x, y, bandwidths=(0.05, 0.2, 1.0)):
    """Squared maximum mean discrepancy (Gretton et al. 2012), unbiased, between point sets (N, D), with
    a sum of RBF kernels: 0.05 sees the width of a mode, 0.2 its position, 1.0 the ring. About 0 when x
    and y come from the same distribution (it can dip below 0), positive otherwise."""
    def kernel_sum(a, b):  # sum over all pairs of k(a_i, b_j), in row blocks to keep memory small
        total = 0.0
        for block in a.split(500):
            d2 = torch.cdist(block, b).square()  # (500, len(b))
            total += sum(torch.exp(-d2 / (2 * h * h)).sum().item() for h in bandwidths)
        return total
    n, m, k0 = len(x), len(y), len(bandwidths)  # k(a, a) = k0: the diagonal the unbiased estimate leaves out
    within = (kernel_sum(x, x) - n * k0) / (n * (n - 1)) + (kernel_sum(y, y) - m * k0) / (m * (m - 1))
    return within - 2 * kernel_sum(x, y) / (n * m)


def train_toy(objective, steps=1500, batch=512, seed=0, drop=0.1):
    """The same model init, data stream and optimizer for any objective; labels dropped 10% for CFG."""
    torch.manual_seed(seed)
    model = ToyMLP()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    data_gen, noise_gen = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        x0, label = eight_gaussians(batch, data_gen)
        label = torch.where(torch.rand(batch, generator=data_gen) < drop, NULL_LABEL, label)
        loss = objective.loss(model, x0, dict(label=label), generator=noise_gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def scatter_panel(points, label, title, size=200, extent=2.4):
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    colours = [(200, 50, 50), (40, 90, 200)]
    for (x, y), c in zip(((points + extent) / (2 * extent) * size).tolist(), label.tolist()):
        draw.rectangle([x - 1, size - y - 1, x, size - y], fill=colours[c])  # y up
    draw.text((5, 4), title, fill="black")
    draw.rectangle([0, 0, size - 1, size - 1], outline=(180, 180, 180))
    return img


if __name__ == "__main__":
    import os
    import time

    STEPS = (5, 10, 25, 50)
    held_out, held_label = eight_gaussians(4000, torch.Generator().manual_seed(123))
    another, _ = eight_gaussians(4000, torch.Generator().manual_seed(456))

    begin = time.time()
    ddpm_model = train_toy(diffusion.GaussianDiffusion())
    flow_model = train_toy(RectifiedFlow())
    print(f"trained the same MLP with each objective, 1500 steps of 512 points, in {time.time() - begin:.0f} s")

    rows = {  # name: (objective, trained model, model calls for n steps)
        "DDPM v-pred, DDIM": (diffusion.GaussianDiffusion(sampler="ddim"), ddpm_model, lambda n: n),
        "DDPM v-pred, ancestral": (diffusion.GaussianDiffusion(sampler="ddpm"), ddpm_model, lambda n: n),
        "flow, Euler": (RectifiedFlow(solver="euler"), flow_model, lambda n: n),
        "flow, Heun": (RectifiedFlow(solver="heun"), flow_model, lambda n: 2 * n - 1),
    }
    cond = dict(label=held_label)  # samples get the held-out labels, so the class balance matches
    print(f"\n1000 x MMD^2 to {len(held_out)} held-out points (lower is better; "
          f"a second held-out set scores {1000 * mmd2(another, held_out):.2f})")
    print(f"{'objective, sampler':24s}" + "".join(f"{f'{n} steps':>10s}" for n in STEPS) + "   model calls")
    samples = {}
    for name, (objective, model, calls) in rows.items():
        scores = []
        for n in STEPS:
            x = objective.sample(model, held_out.shape, cond, steps=n, generator=torch.Generator().manual_seed(0))
            samples[name, n] = x
            scores.append(1000 * mmd2(x, held_out))
        print(f"{name:24s}" + "".join(f"{s:10.2f}" for s in scores) + "   " + "/".join(str(calls(n)) for n in STEPS))
    # Both samplers jump from the last grid point straight to the model's estimate of x0, which is a mean over
    # what that noise level still hides. DDPM's grid, uniform in the step index, stops much noisier than
    # flow's, so its jump averages over more than a mode's width (std 0.1): narrow modes, bridges between them.
    a = rows["DDPM v-pred, DDIM"][0].alphas_cumprod.double()
    print("noise/signal at the last grid point, sqrt(1 - a) / sqrt(a) and t / (1 - t):")
    last = [round(1000 / n) - 1 for n in STEPS]  # the trailing grid's last step: T / n - 1
    print(f"{'DDPM':24s}" + "".join(f"{((1 - a[t]) / a[t]).sqrt():10.3f}" for t in last))
    print(f"{'flow':24s}" + "".join(f"{(1 / n) / (1 - 1 / n):10.3f}" for n in STEPS) + "\n")

    # CFG: a sample follows its label when its nearest mode has the label's parity
    angle = torch.arange(8) * (2 * math.pi / 8)
    modes = 1.5 * torch.stack([angle.cos(), angle.sin()], dim=1)
    uncond = dict(label=torch.full_like(held_label, NULL_LABEL))
    for cfg in (1.0, 3.0):
        x = RectifiedFlow().sample(flow_model, held_out.shape, cond, uncond, steps=25, cfg=cfg,
                                   generator=torch.Generator().manual_seed(0))
        follows = (torch.cdist(x, modes).argmin(dim=1) % 2 == held_label).float().mean().item()
        print(f"flow, Euler, 25 steps, cfg {cfg:.0f}: {100 * follows:.1f}% of samples land on a mode of their class")

    names = ("DDPM v-pred, DDIM", "flow, Euler")
    grid = Image.new("RGB", (200 * (1 + len(STEPS)), 200 * len(names)), "white")
    for r, name in enumerate(names):
        grid.paste(scatter_panel(held_out, held_label, "held-out data"), (0, 200 * r))
        for c, n in enumerate(STEPS):
            grid.paste(scatter_panel(samples[name, n], held_label, f"{name}, {n} steps"), (200 * (c + 1), 200 * r))
    os.makedirs("runs/demo", exist_ok=True)
    grid.save("runs/demo/flow_vs_diffusion.png")
    print("wrote runs/demo/flow_vs_diffusion.png")
