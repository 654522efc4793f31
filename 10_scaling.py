"""10_scaling.py: scaling laws of the latent DiT (course topic 2.5): loss against compute, and the size that
compute should buy.

Kaplan et al. 2020 trained language models of many sizes and found the loss along the best of them, against
training compute C, falls as a power law, L(C) = a C^-b; Hoffmann et al. 2022 (Chinchilla) asked which size N is
best for each C and found N_opt(C) = k C^c with c near 1/2: parameters and data should grow alike.
HunyuanVideo (Kong et al. 2024) fitted both, first for its image model, then for video starting from it,
before choosing 13B parameters. The recipe, at the size of a CPU:

1. DiTs of several widths and depths train on the cached latents of one VAE (a run's latents.pt), each for
   the same wall-clock share, and their loss on held-out videos is measured at log-spaced steps;
2. compute counts matmul FLOPs as bench.py speed does: 3 forwards a step (backward computes the gradients of
   both the inputs and the weights), full attention, dit_flops below;
3. the frontier is the lower envelope of all (C, loss) points, and L(C) = a C^-b, with a floor L_inf added
   only where it predicts left-out frontier points better (an irreducible loss, the data's own entropy);
4. at each compute the loss of every size is interpolated, a parabola in log N through the best size and its
   neighbours gives N_opt (Chinchilla's IsoFLOP profiles), and N_opt(C) = k C^c is fitted through those;
5. each exponent comes with a leave-one-size-out (jackknife) standard error: the fit again without each size.

The held-out loss is the flow-matching loss of 04 on the last `heldout` videos of the cache (never trained on),
each at the same five times t and the same noise in every evaluation, so sizes and steps compare exactly.
The learning rate is constant after warm-up, so every point of a curve is a model trained to that compute, the
way Kaplan et al. read their curves (Hoffmann et al. showed that decaying it to each budget lowers the loss
and favours more data: that would take a run per point).

    python 10_scaling.py --run runs/tiny        # the quick form: 4 small DiTs, 3 minutes -> runs/bench/scaling_quick/
    python bench.py scaling --run runs/tiny     # the exercise: 5 DiTs, 25 minutes on 2 cores -> runs/bench/scaling/
Each writes scaling.json (every curve, the fits, the papers' exponents beside ours) and scaling.png.
"""
import argparse
import dataclasses
import json
import math
import os
import time

import numpy as np
import torch
from PIL import Image, ImageDraw

import train
from data import schedule
from data.checkpoint import load_checkpoint
from data.config import autocast, native_bf16, parse_args, pick_device
from data.tokenizer import Tokenizer
from sample import build_dit, build_objective, load_vae

# (dim, depth, heads): head_dim 16 or 32, as 02's 3D RoPE needs a multiple of 16
FULL = ((32, 2, 2), (64, 3, 2), (96, 4, 3), (128, 6, 4), (192, 8, 6))
QUICK = ((16, 1, 1), (32, 1, 2), (32, 2, 2), (48, 2, 3))
HELDOUT_T = (0.1, 0.3, 0.5, 0.7, 0.9)  # the times t at which held-out videos are scored
# What the papers report, for the table beside ours: N_opt ~ C^c, D_opt ~ C^(1-c) when C ~ N D; L(C) ~ C^-b.
# HunyuanVideo: arXiv 2412.03603 section 4.1, its T2X(I) and T2X(V) fits (a = b1, b = b2 there).
REFERENCES = {
    "Kaplan et al. 2020 (language)": dict(N_opt=0.73, L=0.050),
    "Hoffmann et al. 2022, Chinchilla (language)": dict(N_opt=0.50, D_opt=0.50),
    "HunyuanVideo 2024, image model": dict(N_opt=0.5634, D_opt=0.4325),
    "HunyuanVideo 2024, video model": dict(N_opt=0.3618, D_opt=0.6289),
}


# ----------------------------------------------------------------------------- compute
def dit_flops(dim, depth, text_depth, n_text, n_video, patch_dim, mlp_ratio=4):
    """Matmul FLOPs (multiply-add = 2) of one forward pass per sample, full attention. Per layer over S tokens:
    QKV + out-projection + MLP 2 * (4 + 2 r) * S * D^2, scores q.k and the weighted sum of v 4 * S^2 * D;
    each block's adaLN 2 * D * 12 D; plus patch embedding, final layer, timestep and pooled-caption MLPs. A step
    of training costs about 3 forwards: backward computes the gradients of both the inputs and the weights."""
    S, D, r = n_text + n_video, dim, mlp_ratio
    block = 2 * (4 + 2 * r) * S * D * D + 4 * S * S * D + 2 * D * 12 * D
    text = 2 * (4 + 2 * r) * n_text * D * D + 4 * n_text * n_text * D
    rest = 2 * 2 * n_video * patch_dim * D + 2 * D * 2 * D + 2 * 256 * D + 2 * D * D + 2 * 2 * D * D
    return depth * block + text_depth * text + rest


# ----------------------------------------------------------------------------- the latents of one VAE
def load_run(run, device):
    """(latents (N, C, T, H, W) float, captions, tokenizer, config) of a run: its latents.pt, or, for a run with
    only a VAE (OUT/vae.pt), the latents encoded now with train.py's cache (and a tokenizer trained on them)."""
    latents_path, config_path = os.path.join(run, "latents.pt"), os.path.join(run, "config.yaml")
    cfg, _ = parse_args(["--config", config_path] if os.path.isfile(config_path) else [])
    if not os.path.isfile(latents_path):
        if not os.path.isfile(os.path.join(run, "vae.pt")):
            raise SystemExit(f"error: {run} has no latents.pt (train.py's dit stage writes it) and no vae.pt to "
                             "encode them with: give --run a trained run")
        cfg.out_dir = run
        vae_ckpt = load_checkpoint(os.path.join(run, "vae.pt"), "vae")
        train.cached_latents(cfg, load_vae(vae_ckpt, device), vae_ckpt, 0, 1, device)
    data = torch.load(latents_path, weights_only=True)
    tok_path = os.path.join(run, "tokenizer.json")
    if not os.path.isfile(tok_path):
        Tokenizer.train(data["captions"], cfg.dit.vocab_size).save(tok_path)
    return data["latents"].float(), data["captions"], Tokenizer.load(tok_path), cfg


def split_heldout(latents, captions, tokenizer, text_len, heldout):
    """The last `heldout` videos are never trained on: ((x0, ids, mask) to train on, the same held out)."""
    if len(latents) < 2 * heldout:
        raise SystemExit(f"error: {len(latents)} cached videos are too few to hold out {heldout}: lower --heldout")
    ids, mask = tokenizer.encode(captions, text_len)
    return (latents[:-heldout], ids[:-heldout], mask[:-heldout]), (latents[-heldout:], ids[-heldout:], mask[-heldout:])


@torch.no_grad()
def heldout_loss(model, held, eps, device, dtype, batch=128):
    """04's flow-matching loss ||v(x_t, t) - (eps - x0)||^2 of held-out videos at each t of HELDOUT_T, with the
    noise eps (len(HELDOUT_T), N, C, T, H, W) fixed: the same samples for every size and step."""
    model.eval()
    x0, ids, mask = held
    total = 0.0
    for k, t in enumerate(HELDOUT_T):
        for i in range(0, len(x0), batch):
            x, e = x0[i:i + batch].to(device), eps[k, i:i + batch].to(device)
            tt = torch.full((len(x),), t, device=device)
            with autocast(device, dtype):
                pred = model((1 - t) * x + t * e, 1000 * tt, ids[i:i + batch].to(device), mask[i:i + batch].to(device))
            total += (pred.float() - (e - x)).square().mean((1, 2, 3, 4)).sum().item()
    model.train()
    return total / (len(HELDOUT_T) * len(x0))


# ----------------------------------------------------------------------------- one size
def train_size(size, d, data, held, eps, latent_channels, budget_s, evals, batch, device, dtype, seed, log):
    """Train the DiT of `size` for about budget_s seconds (its steps sized by a probe, evaluations included);
    its held-out loss after 1/2^(evals-1), ..., 1/2, 1 of the steps. Returns the run's record."""
    dim, depth, heads = size
    cfg = dict(d, dim=dim, depth=depth, heads=heads, text_depth=1, objective="flow", arch="cogvideox", attention="full",
               checkpointing=False, i2v=False, guidance_embed=False)  # what dit_flops counts
    torch.manual_seed(seed)
    model = build_dit(cfg, d["vocab_size"], latent_channels).to(device)
    objective = build_objective(cfg)
    lr = 2e-3 * math.sqrt(64 / dim)  # smaller steps for wider models: a common heuristic, not tuned per size
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    x0, ids, mask = data
    g = torch.Generator().manual_seed(seed)

    def loss_fn(m, micro):  # train.py's, without caption dropout: the held-out loss is the conditional one
        return objective.loss(m, micro[0], dict(ids=micro[1], mask=micro[2])), {}

    def step():
        pick = torch.randint(0, len(x0), (batch,), generator=g)
        micro = train.micro_batches([(x0[pick], ids[pick], mask[pick])], device, 1)
        return train.train_step(model, opt, scaler, loss_fn, micro, device, dtype, clip=1.0)[0]

    step_s = schedule.probe(step, [model, opt])  # weights, moments and RNG are put back afterwards
    begin = time.perf_counter()
    heldout_loss(model, held, eps, device, dtype)
    eval_s = time.perf_counter() - begin
    steps = max(2 ** (evals - 1), int((budget_s - evals * eval_s) / step_s))
    at = sorted({max(1, round(steps / 2 ** k)) for k in range(evals)})
    n_video = held[0].shape[2] // d["patch_t"] * (held[0].shape[3] // d["patch"]) * (held[0].shape[4] // d["patch"])
    patch_dim = latent_channels * d["patch_t"] * d["patch"] ** 2
    flops = 3 * batch * dit_flops(dim, depth, 1, d["text_len"], n_video, patch_dim)  # as bench.py speed counts
    params = sum(p.numel() for p in model.parameters())
    log(f"d{dim}x{depth}: {params / 1e6:.3f}M parameters, {flops / 1e9:.2f} GFLOP and {step_s:.3f} s a step "
        f"-> {steps} steps, lr {lr:.2g}")
    curve, begin, warmup = [], time.perf_counter(), min(100, steps // 10)
    for s in range(steps):
        for group in opt.param_groups:  # warm-up, then constant: each point of the curve is a finished model
            group["lr"] = schedule.lr_at(s, lr, warmup, steps, decay=0.0)
        loss = step()
        if not math.isfinite(loss):
            raise SystemExit(f"error: the loss of d{dim}x{depth} is {loss} at step {s + 1}: lower the learning rate")
        if s + 1 in at:
            curve.append(dict(step=s + 1, compute=flops * (s + 1), loss=heldout_loss(model, held, eps, device, dtype),
                              train_loss=loss))
            log(f"  step {s + 1}: held-out loss {curve[-1]['loss']:.4f} at {curve[-1]['compute']:.3g} FLOP")
    return dict(dim=dim, depth=depth, heads=heads, params=params, lr=lr, flops_per_step=flops, step_s=step_s,
                steps=steps, seconds=round(time.perf_counter() - begin, 1), curve=curve)


# ----------------------------------------------------------------------------- the fits
def line_fit(x, y):
    """Least squares y = p + q x -> (p, q)."""
    q, p = np.polyfit(np.asarray(x, float), np.asarray(y, float), 1)
    return p, q


def loss_fit(C, L, floor):
    """L = a C^-b (+ L_inf), least squares in log L: (a, b, L_inf). For each candidate floor, a and b are a line
    fit of log(L - L_inf) on log C; the floor is searched on a grid below min L, refined around its best point."""
    C, L = np.asarray(C, float), np.asarray(L, float)

    def at(inf):  # (squared error in log L, a, b, L_inf)
        p, q = line_fit(np.log(C), np.log(L - inf))
        return np.sum((np.log(L) - np.log(np.exp(p + q * np.log(C)) + inf)) ** 2), math.exp(p), -q, inf
    if not floor:
        return at(0.0)[1:]
    lo, hi = 0.0, 0.999 * L.min()
    for _ in range(4):
        grid = np.linspace(lo, hi, 40)
        best = min((at(inf) for inf in grid), key=lambda r: r[0])
        lo, hi = max(0.0, best[3] - (grid[1] - grid[0])), min(0.999 * L.min(), best[3] + (grid[1] - grid[0]))
    return best[1:]


def predict(fit, C):
    """a C^-b + L_inf of fit = (a, b, L_inf)."""
    a, b, inf = fit
    return a * np.asarray(C, float) ** -b + inf


def frontier(runs):
    """The lower envelope of every (compute, loss) point: those no cheaper point beats."""
    points = sorted((p["compute"], p["loss"]) for r in runs for p in r["curve"])
    out = []
    for c, loss in points:
        if not out or loss < out[-1][1]:
            out.append((c, loss))
    return out


def with_floor(C, L):
    """Does a floor help? Leave each frontier point out, fit the rest, predict it: the mean squared log error
    with and without L_inf; the floor stays only if it predicts better."""
    if len(C) < 4:
        return False, None
    errors = {}
    for floor in (False, True):
        errors[floor] = np.mean([(math.log(predict(loss_fit(np.delete(C, i), np.delete(L, i), floor), C[i]))
                                  - math.log(L[i])) ** 2 for i in range(len(C))])
    return bool(errors[True] < errors[False]), {"no floor": errors[False], "floor": errors[True]}


def optimal_sizes(runs, points=24):
    """(C, N_opt) where the sizes bracket the optimum: at each of `points` log-spaced computes, every size whose
    curve spans it gives its loss (interpolated in log-log); a parabola in log N through the best one and its two
    neighbours (all spanning C) puts N_opt at its vertex. Computes where the best is the smallest or largest
    size tried say only that N_opt lies beyond them, and are left out."""
    runs = sorted(runs, key=lambda r: r["params"])
    lo, hi = min(r["curve"][0]["compute"] for r in runs), max(r["curve"][-1]["compute"] for r in runs)
    out = []
    for C in np.exp(np.linspace(math.log(lo), math.log(hi), points)):
        loss = []
        for r in runs:
            logC, logL = np.log([p["compute"] for p in r["curve"]]), np.log([p["loss"] for p in r["curve"]])
            spans = logC[0] <= math.log(C) <= logC[-1]
            loss.append(math.exp(np.interp(math.log(C), logC, logL)) if spans else math.inf)
        i = int(np.argmin(loss))
        if 0 < i < len(runs) - 1 and math.isfinite(loss[i - 1]) and math.isfinite(loss[i + 1]):
            logN = np.log([runs[j]["params"] for j in (i - 1, i, i + 1)])
            a2, a1, _ = np.polyfit(logN, [loss[j] for j in (i - 1, i, i + 1)], 2)
            if a2 > 0:  # a minimum, and between the outer two sizes
                out.append((float(C), float(np.exp(np.clip(-a1 / (2 * a2), logN[0], logN[-1])))))
    return out


def fit(runs):
    """Both laws from these runs: dict(frontier, a, b, L_inf, floor, floor_loo, N_opt (its points), k, c)."""
    front = frontier(runs)
    C, L = np.array([c for c, _ in front]), np.array([loss for _, loss in front])
    floor, loo = with_floor(C, L)
    a, b, inf = loss_fit(C, L, floor) if len(C) >= 2 else (math.nan,) * 3
    opt = optimal_sizes(runs)
    k, c = (math.nan, math.nan)
    if len(opt) >= 2 and len({n for _, n in opt}) > 1:
        p, c = line_fit(np.log([x for x, _ in opt]), np.log([n for _, n in opt]))
        k = math.exp(p)
    return dict(frontier=front, a=a, b=b, L_inf=inf, floor=floor, floor_loo=loo, N_opt=opt, k=k, c=c)


def jackknife(runs):
    """Leave-one-size-out fits: the exponents b and c without each size in turn, their jackknife standard error
    sqrt((n - 1) / n * sum (x_i - mean)^2), and their range."""
    out = {}
    for key in ("b", "c"):
        values = [fit([r for r in runs if r is not left])[key] for left in runs]
        values = [v for v in values if math.isfinite(v)]
        n = len(values)
        se = math.sqrt((n - 1) / n * sum((v - np.mean(values)) ** 2 for v in values)) if n >= 2 else math.nan
        out[key] = dict(se=se, values=values, low=min(values, default=math.nan), high=max(values, default=math.nan))
    return out


# ----------------------------------------------------------------------------- the figure (PIL: no matplotlib)
COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def ticks(lo, hi):
    """Tick values between 10^lo and 10^hi: 1, 2, 5 x 10^e over several decades, evenly spaced in a narrow range."""
    if hi - lo > 1:
        return [m * 10.0 ** e for e in range(math.floor(lo), math.ceil(hi) + 1) for m in (1, 2, 5)
                if lo <= math.log10(m) + e <= hi]
    a, b = 10 ** lo, 10 ** hi
    step = 10 ** math.floor(math.log10(b - a))
    step /= 5 if (b - a) / step < 2 else 2 if (b - a) / step < 5 else 1
    return [k * step for k in range(math.ceil(a / step), math.floor(b / step) + 1)]


def panel(draw, box, xs, ys, xlabel, ylabel):
    """Log-log axes in box (left, top, right, bottom) spanning the values xs, ys: returns (x, y) -> pixel."""
    lx, ly = np.log10(xs), np.log10(ys)
    (x0, x1), (y0, y1) = (lx.min() - 0.1, lx.max() + 0.1), (ly.min() - 0.05, ly.max() + 0.05)
    left, top, right, bottom = box
    draw.rectangle(box, outline=(0, 0, 0))

    def to(x, y):
        return (left + (math.log10(x) - x0) / (x1 - x0) * (right - left),
                bottom - (math.log10(y) - y0) / (y1 - y0) * (bottom - top))
    for v in ticks(x0, x1):
        px, _ = to(v, 10 ** y0)
        draw.line([(px, bottom), (px, bottom - 4)], fill=(0, 0, 0))
        draw.text((px - 12, bottom + 4), f"{v:.3g}", fill=(0, 0, 0))
    for v in ticks(y0, y1):
        _, py = to(10 ** x0, v)
        draw.line([(left, py), (left + 4, py)], fill=(0, 0, 0))
        draw.text((left - 44, py - 6), f"{v:.3g}", fill=(0, 0, 0))
    draw.text(((left + right) // 2 - 40, bottom + 20), xlabel, fill=(0, 0, 0))
    draw.text((left, top - 16), ylabel, fill=(0, 0, 0))
    return to


def plot(runs, result, path):
    """Left: each size's held-out loss against compute, the frontier (black) and L(C); right: N_opt(C)."""
    image = Image.new("RGB", (1100, 480), "white")
    draw = ImageDraw.Draw(image)
    C = np.array([p["compute"] for r in runs for p in r["curve"]])
    L = np.array([p["loss"] for r in runs for p in r["curve"]])
    to = panel(draw, (70, 40, 560, 420), C, L, "training compute C (FLOP)", "held-out loss")
    for i, r in enumerate(runs):
        xy = [to(p["compute"], p["loss"]) for p in r["curve"]]
        draw.line(xy, fill=COLOURS[i % len(COLOURS)], width=2)
        for x, y in xy:
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=COLOURS[i % len(COLOURS)])
        draw.text((450, 50 + 14 * i), f"d{r['dim']}x{r['depth']}: {r['params'] / 1e6:.3f}M",
                  fill=COLOURS[i % len(COLOURS)])
    for c, loss in result["frontier"]:
        x, y = to(c, loss)
        draw.ellipse((x - 5, y - 5, x + 5, y + 5), outline=(0, 0, 0), width=2)
    if math.isfinite(result["b"]):
        grid = np.exp(np.linspace(math.log(C.min()), math.log(C.max()), 50))
        draw.line([to(c, v) for c, v in zip(grid, predict((result["a"], result["b"], result["L_inf"]), grid))],
                  fill=(0, 0, 0), width=1)
    draw.text((80, 8), f"L(C) = {result['a']:.3g} C^-{result['b']:.3f}" +
              (f" + {result['L_inf']:.3f}" if result["floor"] else "") + f"  (b = {result['b']:.3f} "
              f"+- {result['b_se']:.3f}, leave-one-size-out)", fill=(0, 0, 0))
    N = np.array([r["params"] for r in runs], float)
    opt = result["N_opt"]
    to = panel(draw, (660, 40, 1080, 420), np.concatenate([C, [c for c, _ in opt]]),
               np.concatenate([N, [n for _, n in opt]]), "training compute C (FLOP)", "parameters N")
    for i, n in enumerate(N):  # the sizes tried, as lines across the compute range
        draw.line([to(C.min(), n), to(C.max(), n)], fill=COLOURS[i % len(COLOURS)], width=1)
    for c, n in opt:
        x, y = to(c, n)
        draw.ellipse((x - 4, y - 4, x + 4, y + 4), fill=(0, 0, 0))
    title = "N_opt: the sizes tried do not bracket the optimum"
    if math.isfinite(result["c"]):
        cs = np.array([c for c, _ in opt])
        draw.line([to(c, result["k"] * c ** result["c"]) for c in (cs.min(), cs.max())], fill=(0, 0, 0), width=2)
        title = f"N_opt(C) = {result['k']:.3g} C^{result['c']:.3f}  (c = {result['c']:.3f} +- {result['c_se']:.3f})"
    draw.text((670, 8), title, fill=(0, 0, 0))
    image.save(path)


# ----------------------------------------------------------------------------- the exercise
def run_exercise(run, quick=False, minutes=None, out="runs/bench", sizes=None, heldout=None, evals=None, batch=32,
                 device="auto", seed=0, log=print):
    """Train every size on run's latents for an equal share of `minutes` (default 25; quick: QUICK's sizes in 3),
    fit both laws, write scaling.json and scaling.png into out/scaling (quick: out/scaling_quick); the report."""
    sizes, minutes = sizes or (QUICK if quick else FULL), minutes or (3.0 if quick else 25.0)
    heldout, evals = heldout or (128 if quick else 256), evals or (4 if quick else 6)
    out = os.path.join(out, "scaling_quick" if quick else "scaling")
    begin = time.perf_counter()
    device = pick_device(device)
    dtype = "bf16" if native_bf16(device) else "fp32"  # emulated bf16 is many times slower than fp32
    latents, captions, tokenizer, cfg = load_run(run, device)
    d = dict(dataclasses.asdict(cfg.dit), vocab_size=tokenizer.vocab_size)
    data, held = split_heldout(latents, captions, tokenizer, d["text_len"], heldout)
    eps = torch.randn((len(HELDOUT_T),) + tuple(held[0].shape), generator=torch.Generator().manual_seed(seed))
    log(f"{run}: {len(data[0])} videos to train on, {heldout} held out, latents {tuple(latents.shape[1:])}; "
        f"{len(sizes)} sizes, {minutes} minutes, {dtype}")
    share = 60 * minutes / len(sizes)
    runs = [train_size(s, d, data, held, eps, latents.shape[1], share, evals, batch, device, dtype, seed, log)
            for s in sizes]
    result = fit(runs)
    spread = jackknife(runs)
    result |= dict(b_se=spread["b"]["se"], b_loo=spread["b"]["values"], c_se=spread["c"]["se"],
                   c_loo=spread["c"]["values"], D_opt=1 - result["c"])
    os.makedirs(out, exist_ok=True)
    plot(runs, result, os.path.join(out, "scaling.png"))
    report = dict(run=run, minutes=minutes, batch=batch, heldout=heldout, heldout_t=HELDOUT_T, dtype=dtype,
                  sizes=runs, fit=result, references=REFERENCES, seconds=round(time.perf_counter() - begin, 1))
    with open(os.path.join(out, "scaling.json"), "w") as f:
        json.dump(report, f, indent=1, default=float)
    left_out = ", ".join(f"{v:.3f}" for v in spread["b"]["values"])
    log(f"\nL(C) = {result['a']:.3g} C^-{result['b']:.3f}" + (f" + {result['L_inf']:.4f}" if result["floor"] else "")
        + f": b = {result['b']:.3f} +- {result['b_se']:.3f} (leaving out each size in turn: {left_out})")
    log(f"N_opt(C) = {result['k']:.3g} C^{result['c']:.3f}: c = {result['c']:.3f} +- {result['c_se']:.3f} "
        f"({len(result['N_opt'])} computes where the sizes bracket the optimum); D_opt ~ C^{result['D_opt']:.3f}")
    for name, ref in REFERENCES.items():
        log(f"  {name}: " + ", ".join(f"{k} exponent {v}" for k, v in ref.items()))
    log(f"wrote {out}/scaling.json and scaling.png ({report['seconds']} s in all)")
    return report


def main(argv=None):
    p = argparse.ArgumentParser(description="Scaling laws of the latent DiT: the quick form unless --full.")
    p.add_argument("--run", default="runs/tiny", help="a run whose latents.pt (or vae.pt) the sizes train on")
    p.add_argument("--full", action="store_true", help=f"the exercise (bench.py scaling): sizes {FULL}, 25 minutes")
    p.add_argument("--minutes", type=float, default=None, help="wall time of all sizes (default 25; quick 3)")
    p.add_argument("--out", default="runs/bench", help="where scaling/ (quick: scaling_quick/) goes")
    args = p.parse_args(argv)
    run_exercise(args.run, not args.full, args.minutes, args.out)


if __name__ == "__main__":
    main()
