"""Control and editing on a frozen DiT (course module 5): a path of boxes the digit follows; inpainting,
interpolation and outpainting without training.

1. Box-path control: ControlNet (Zhang et al. 2023) scaled down to a DiT, as PixArt-delta does. Moving MNIST knows
   every digit's 28x28 box in every frame. The boxes go onto the latent grid as the share of each latent cell
   they cover (an edge inside a cell still says where it lies), one channel per digit in caption order, and are
   patchified like the latents. A trainable copy of the DiT's first k blocks reads video tokens + Z_in(control),
   and copy block i feeds block i of the frozen DiT: video_i += Z_out_i(copy_i). Z_in and each Z_out are zero-
   initialised Linears (ControlNet's "zero convolutions"), so at step 0 the model is exactly the base model.
2. Masked sampling (RePaint, Lugmayr et al. 2022): before each step the known latents z are put back at the
   current noise level, x_t = (1 - t) z + t eps (flow, 04) or sqrt(a_t) z + sqrt(1 - a_t) eps (DDPM's
   q(x_t | x0), 03), and the model fills the rest around them; at t = 0 they are z. One function fills a box in
   every frame (inpainting), the frames between a first and a last (interpolation), or a wider canvas
   (outpainting): nothing in the DiT is tied to the grid's size (tokens are patches, 3D RoPE sees only offsets),
   but offsets beyond the trained 4x4 tokens were never trained, so the wider, the further from training.
3. The figures of `python bench.py control`: path error, kept-region PSNR, phrasings, guidance, negative prompts.

    python 09_control.py      # inpaints, interpolates, outpaints 2 validation videos with data/pretrained/tiny.pt:
                              #   kept-region PSNR beside the VAE's, runs/demo/09_control.gif (about 15 s)
    python 09_control.py train --config tiny.yaml --control.base=runs/tiny/dit.pt --out_dir=runs/control
    python sample.py --ckpt runs/tiny/dit.pt --control runs/control/control.pt --path "32,18 32,46" --prompt ...
"""
import copy
import dataclasses
import datetime
import json
import math
import os
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import sample
import train
from data.config import Config, check_dtype, merge, parse_args, pick_device
from data.judge import AXES, PROMPTS, load_judge, locate, parse_prompt, read_videos
from data.loading import video_dataset
from data.moving_mnist import DIGIT, HELD_OUT, SEEN, MovingMNIST, boxes, clause, misspell, save_gif, video_grid
from data.video_folder import first_frame, read_gif

dit_lib, diffusion, flow, pyramid = sample.dit_lib, sample.diffusion, sample.flow, sample.pyramid


# ----------------------------------------------------------------------------- boxes onto the latent grid
def parse_path(text, frames, size):
    """'x0,y0 x1,y1 ...', the digit's box centre in pixels (x right, y down) at key frames spread evenly over the
    frames, linear in between -> boxes (1, frames, 4) of the 28x28 digit as (left, top, right, bottom)."""
    try:
        keys = np.array([[float(v) for v in point.split(",")] for point in text.split()])  # (K, 2)
    except ValueError:
        keys = np.zeros(0)
    if keys.ndim != 2 or keys.shape[1] != 2:
        raise ValueError(f'--path takes box centres "x0,y0 x1,y1 ..." in pixels, e.g. "32,18 32,46"; got {text!r}')
    if keys.min() < DIGIT / 2 or keys.max() > size - DIGIT / 2:
        raise ValueError(f"--path {text!r}: a centre must lie in [{DIGIT // 2}, {size - DIGIT // 2}], so that the "
                         f"{DIGIT}x{DIGIT} box stays inside the {size}x{size} frame")
    at, key_at = np.linspace(0, 1, frames), np.linspace(0, 1, len(keys))   # places along the path
    centre = np.stack([np.interp(at, key_at, keys[:, i]) for i in range(2)], -1)  # (T, 2)
    return torch.tensor(np.concatenate([centre - DIGIT / 2, centre + DIGIT / 2], -1), dtype=torch.float32)[None]


def read_boxes(path, frames, size, digits=2):
    """A JSON file: per frame, a [left, top, right, bottom] box in pixels per digit of the prompt -> (D, T, 4)."""
    try:
        with open(path) as f:
            b = torch.tensor(json.load(f), dtype=torch.float32)              # (T, D, 4)
    except (OSError, ValueError, TypeError, RuntimeError) as e:
        raise ValueError(f"cannot read --boxes {path}: {e}") from None
    if b.dim() != 3 or b.shape[0] != frames or b.shape[2] != 4 or not 1 <= b.shape[1] <= digits or \
            (b[..., 2:] <= b[..., :2]).any() or b.min() < 0 or b.max() > size:
        raise ValueError(f"--boxes {path} must list {frames} frames, each with 1 to {digits} boxes [left, top, right, "
                         f"bottom] (left < right, top < bottom, in [0, {size}]), one per digit of the prompt")
    return b.transpose(0, 1)


def coverage(lo, hi, cells, s):
    """Share of each cell [s j, s (j + 1)) that [lo, hi) covers: lo, hi (...) -> (..., cells) in [0, 1]."""
    edges = torch.arange(cells, device=lo.device) * s
    return (torch.minimum(hi[..., None], edges + s) - torch.maximum(lo[..., None], edges)).clamp(min=0) / s


def latent_frames(x, tc, reduce):
    """Pixel frames (B, C, 1 + tc k, ...) -> latent frames (B, C, 1 + k, ...): the causal VAE's frame 0 alone,
    then tc at a time (01), each group reduced by reduce(x, dim) (torch.mean, torch.amin)."""
    return torch.cat([x[:, :, :1], reduce(x[:, :, 1:].unflatten(2, (-1, tc)), 3)], dim=2)


def control_of(b, grid, tc, s, channels):
    """Boxes (B, D, T, 4) in pixels -> control (B, channels, 1 + (T - 1) / tc, h, w): channel d is the share of
    each latent cell covered by digit d's box, averaged over the cell's pixel frames; absent digits are 0."""
    rows, cols = coverage(b[..., 1], b[..., 3], grid[0], s), coverage(b[..., 0], b[..., 2], grid[1], s)  # (.., h|w)
    masks = rows[..., :, None] * cols[..., None, :]                          # (B, D, T, h, w)
    return F.pad(latent_frames(masks, tc, torch.mean), (0, 0, 0, 0, 0, 0, 0, channels - b.shape[1]))


# ----------------------------------------------------------------------------- the control branch
class ControlNet(nn.Module):
    """The trainable part: Z_in, a copy of the base DiT's first k blocks (its weights to start from), and one Z_out
    per copied block. forward(control, *inputs of the base's block 0) -> each fed block's residual (B, N, D)."""

    def __init__(self, base, blocks, channels):
        super().__init__()
        dim, self.patch, self.patch_t, self.channels = base.x_embed.out_features, base.patch, base.patch_t, channels
        self.blocks = copy.deepcopy(base.blocks[:blocks]).requires_grad_(True)
        self.z_in = nn.Linear(channels * base.patch_t * base.patch ** 2, dim)
        self.z_out = nn.ModuleList(nn.Linear(dim, dim) for _ in range(blocks))
        for p in [*self.z_in.parameters(), *self.z_out.parameters()]:  # zero: at step 0 every residual is 0
            nn.init.zeros_(p)

    def forward(self, control, text, video, emb, *rest, **kw):
        video = video + self.z_in(dit_lib.patchify(control.to(video.dtype), self.patch, self.patch_t))  # (B, N, D)
        residuals = []
        for block, z_out in zip(self.blocks, self.z_out):
            text, video = block(text, video, emb, *rest, **kw)
            residuals.append(z_out(video))
        return residuals


class ControlledDiT(nn.Module):
    """model(x, t, ids, mask, control=...): the frozen base DiT, the ControlNet's residuals added to the video tokens
    out of its first k blocks; control=None is the base model. Hooks for one call (a pre-hook on block 0 runs the
    ControlNet on its inputs, a hook on each fed block adds a residual) leave 02's forward as it is, for either arch."""

    def __init__(self, base, net):
        super().__init__()
        self.base, self.net = base.requires_grad_(False), net
        base.checkpointing = False  # a checkpointed block is recomputed in backward, after the hooks are gone

    g_embed = property(lambda self: self.base.g_embed)  # what sample.generate and check_request ask of a DiT
    image_channels = property(lambda self: self.base.image_channels)

    def forward(self, x, t, ids, mask, control=None, **kw):
        if control is None:
            return self.base(x, t, ids, mask, **kw)
        residuals = []
        hooks = [self.base.blocks[0].register_forward_pre_hook(
            lambda block, args, kwargs: residuals.extend(self.net(control, *args, **kwargs)), with_kwargs=True)]
        hooks += [block.register_forward_hook(lambda b, args, out, i=i: (out[0], out[1] + residuals[i]))
                  for i, block in enumerate(self.base.blocks[:len(self.net.z_out)])]
        try:
            return self.base(x, t, ids, mask, **kw)
        finally:
            for hook in hooks:
                hook.remove()


# ----------------------------------------------------------------------------- masked sampling
def noised(objective, z, eps, t):
    """The forward process at the model's time input t (B,): flow x_t = (1 - t) z + t eps for t = t_in / 1000 (04),
    DDPM sqrt(a_t) z + sqrt(1 - a_t) eps at the integer step t (03)."""
    shape = (-1,) + (1,) * (z.dim() - 1)
    if isinstance(objective, flow.RectifiedFlow):
        return torch.lerp(z, eps, (t / 1000).view(shape))                   # (1 - t) z + t eps
    a = objective.alphas_cumprod.to(z.device)[t.round().long()].view(shape)
    return a.sqrt() * z + (1 - a).sqrt() * eps


@torch.no_grad()
def masked_sample(objective, model, shape, cond, uncond, known, keep, generator=None, **sampling):
    """RePaint for 03's and 04's samplers: latents of `shape` equal to `known` where keep (bool, broadcastable) is
    True, the model's elsewhere. One eps for all steps: the known region follows one path from noise to z, as a
    deterministic sampler's own state does. The sampler's state in the known region is never looked at."""
    if not isinstance(objective, (flow.RectifiedFlow, diffusion.GaussianDiffusion)):
        raise ValueError("control and editing take a flow or ddpm checkpoint; the pyramid (05) samples frame by frame")
    eps = torch.randn(shape, generator=generator, device=known.device)

    def known_model(x, t, **c):
        n = x.shape[0] // shape[0]  # guidance runs [cond; uncond] as one batch
        z, e, k = (v.repeat(n, 1, 1, 1, 1) for v in (known, eps, keep.expand(shape)))
        return model(torch.where(k, noised(objective, z, e, t), x), t, **c)
    z = objective.sample(known_model, shape, cond, uncond, generator=generator, **sampling)
    return torch.where(keep, known, z)  # the last put-back, at t = 0, is z itself


class Edit:
    """An objective for sample.generate: sample() adds the control to both halves of guidance (the path holds
    whatever the caption says) and, given known latents, samples around them. A batch of 1 serves every prompt."""

    def __init__(self, objective, control=None, known=None, keep=None):
        self.objective, self.control, self.known, self.keep = objective, control, known, keep

    def sample(self, model, shape, cond, uncond=None, **sampling):
        control, known = (v if v is None else v.expand(shape[0], *v.shape[1:]) for v in (self.control, self.known))
        if control is not None:
            cond, uncond = {**cond, "control": control}, uncond and {**uncond, "control": control}
        if known is None:
            return self.objective.sample(model, shape, cond, uncond, **sampling)
        return masked_sample(self.objective, model, shape, cond, uncond, known, self.keep, **sampling)


@torch.no_grad()
def known_latents(vae, video, device, dtype, inpaint=None, interpolate=False, outpaint=0):
    """The uses in pixels (inpaint (left, top, right, bottom) unknown in every frame; interpolate: frame 0 and the last
    tc, one latent frame, known; outpaint P: P black pixels added left and right) -> video (B, C, T, H, W') and known
    (1, 1, T, H, W') in pixels, z (B, C, L, h, w') and keep (1, 1, L, h, w'): a cell known if all its pixels are."""
    T, H, W = video.shape[2:]
    s, tc, video = vae.space_compression, vae.time_compression, F.pad(video, (outpaint, outpaint), value=-1.0)
    known = torch.ones(1, 1, T, H, W + 2 * outpaint, dtype=torch.bool)
    if inpaint:
        known[..., math.floor(inpaint[1]):math.ceil(inpaint[3]), math.floor(inpaint[0]):math.ceil(inpaint[2])] = False
    if interpolate:
        known[:, :, 1:T - tc] = False
    if outpaint:
        known[..., :outpaint] = known[..., W + outpaint:] = False
    with sample.autocast(device, dtype):
        z = vae.encode(video.to(device)).mode().float() * vae.scaling_factor
    cells = known.float().unflatten(-1, (-1, s)).unflatten(-3, (-1, s)).amin(-1).amin(-2)  # (1, 1, T, h, w')
    return video, known, z, latent_frames(cells, tc, torch.amin).bool().to(device)


# ----------------------------------------------------------------------------- training the branch
def load_control(path, base):
    """The ControlNet of a control.pt, for the base DiT it was trained on (else a one-line error)."""
    ckpt = sample.load_checkpoint(path, "control")
    if ckpt["base_fingerprint"] != train.fingerprint(base.state_dict()):
        raise SystemExit(f"error: {path} was trained on another DiT ({ckpt['config']['control']['base']}): give that "
                         "one as --ckpt")
    net = ControlNet(base, ckpt["blocks"], ckpt["channels"])
    net.load_state_dict(ckpt["net"])
    return net.to(next(base.parameters()).device).eval()


def train_control(argv):
    """The ControlNet on the base run's cached latents and its videos' boxes (recipe i is video i's), the base
    objective's loss, AdamW and an EMA as train.py's; writes OUT/control.pt."""
    cfg, _ = parse_args(argv, description="Train a box-path ControlNet on a frozen DiT (09_control.py).")
    c, path = cfg.control, os.path.join(cfg.out_dir, "control.pt")
    if not c.base:
        raise SystemExit("error: give the DiT to control: --control.base=runs/tiny/dit.pt")
    device, cache = pick_device(cfg.device), os.path.join(os.path.dirname(c.base), "latents.pt")
    check_dtype(device, cfg.dtype)
    os.makedirs(cfg.out_dir, exist_ok=True)
    model, objective, vae, tokenizer, config, latent_shape = sample.load(c.base, device)
    base_cfg = Config()
    merge(base_cfg, config, "the checkpoint's config")
    if isinstance(objective, pyramid.PyramidFlow) or base_cfg.data.dataset != "moving_mnist" or \
            not os.path.isfile(cache) or not 1 <= c.blocks <= len(model.blocks):
        raise SystemExit(f"error: the box path controls a flow or ddpm DiT trained on Moving MNIST (whose boxes it "
                         f"knows), its run's latents beside it ({cache}), 1 <= control.blocks <= {len(model.blocks)}")
    data = torch.load(cache, weights_only=True)
    latents, captions = data["latents"].to(device), data["captions"]
    ds = video_dataset(base_cfg, "train", base_cfg.data.frames, length=len(latents))  # video i is the cache's i
    digits = base_cfg.data.max_digits  # a missing digit is an empty box, which covers nothing
    every = torch.stack([F.pad(torch.from_numpy(boxes(r)), (0, 0, 0, 0, 0, digits - len(r)))
                         for r in map(ds.recipe, range(len(latents)))])     # (N, digits, T, 4)
    control = control_of(every, latent_shape[2:], vae.time_compression, vae.space_compression, digits).to(device)
    ids, mask = (t.to(device) for t in tokenizer.encode(captions, config["dit"]["text_len"]))

    torch.manual_seed(cfg.seed)
    net = ControlNet(model, c.blocks, digits).to(device)
    controlled, ema = ControlledDiT(model, net), copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=c.lr, betas=(0.9, 0.99), weight_decay=0.0)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.dtype == "fp16")
    logger = train.Logger(cfg, 0, "control", 0, c.steps)
    logger.print(f"ControlNet: {sum(p.numel() for p in net.parameters()) / 1e6:.2f}M parameters into {c.blocks} of "
                 f"{len(model.blocks)} blocks, {len(latents)} videos")

    def loss_fn(m, i):  # captions dropped as in training, so guidance keeps its unconditional prediction
        c_ids, c_mask = diffusion.drop_captions(ids[i], mask[i], c.caption_dropout)
        return objective.loss(m, latents[i].float(), dict(ids=c_ids, mask=c_mask, control=control[i])), {}
    for step in range(c.steps):
        for group in opt.param_groups:
            group["lr"] = train.schedule.lr_at(step, c.lr, c.warmup, c.steps)
        i = torch.randint(len(latents), (c.batch_size,), device=device)
        loss, logs = train.train_step(controlled, opt, scaler, loss_fn, [i], device, cfg.dtype, cfg.clip_grad)
        train.ema_update(ema, net, min(c.ema_decay, (1 + step) / (10 + step)))
        train.check_finite(loss, step, path, logger)
        logger.step(step, loss, logs)
    logger.bar.close()
    sample.save_checkpoint(path, dict(kind="control", step=c.steps, config=dataclasses.asdict(cfg), blocks=c.blocks,
                                      channels=digits, base_fingerprint=train.fingerprint(model.state_dict()),
                                      net=ema.state_dict()))
    print(f"wrote {path}")


# ----------------------------------------------------------------------------- sample.py's flags
def from_args(args, model, objective, vae, latent_shape, device, dtype):
    """(model, objective, latent shape) that sample.generate then samples as usual: with --control, the controlled
    DiT and the path as its input; with --inpaint, --interpolate or --outpaint, masked sampling around the known."""
    (_, L, h, w), tc, s = latent_shape, vae.time_compression, vae.space_compression
    T, H, W, pad = 1 + tc * (L - 1), h * s, w * s, args.outpaint or 0
    try:
        if isinstance(objective, pyramid.PyramidFlow):
            raise ValueError("control and editing take a flow or ddpm checkpoint; the pyramid (05) goes frame by frame")
        if args.control:
            net = load_control(args.control, model)
            b = parse_path(args.path, T, H) if args.path else read_boxes(args.boxes, T, H, net.channels)
            control = control_of(b[None].to(device), (h, w), tc, s, net.channels)
            return ControlledDiT(model, net), Edit(objective, control), latent_shape
        if args.interpolate:  # the last image repeated: the last latent frame then sees nothing else
            try:
                first, last = (first_frame(p, vae.in_channels, H, W) for p in args.interpolate)
            except ValueError as e:
                raise ValueError(f"--interpolate {' '.join(args.interpolate)}: {e}") from None
            video = torch.cat([first] + [last] * (T - 1), dim=2)               # (1, C, T, H, W)
        else:
            video = torch.from_numpy(read_gif(args.video, H, vae.in_channels)).permute(3, 0, 1, 2)[None] / 127.5 - 1
            if video.shape[2] != T:
                raise ValueError(f"--video {args.video} has {video.shape[2]} frames; this checkpoint makes {T}")
        if args.outpaint is not None and (pad < s or pad % s or (w + 2 * pad // s) % model.patch):
            raise ValueError(f"--outpaint {pad}: give a multiple of {s} pixels (the VAE's compression) that keeps the "
                             f"latent width a multiple of the patch {model.patch}, e.g. {s * model.patch}")
        box = args.inpaint and args.inpaint.split(",")
        if box and not (len(box) == 4 and all(v.strip().replace(".", "", 1).isdigit() for v in box) and
                        float(box[0]) < float(box[2]) and float(box[1]) < float(box[3])):
            raise ValueError(f"--inpaint takes a pixel box L,T,R,B with L < R, T < B, e.g. 16,16,48,48: {args.inpaint}")
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    _, _, z, keep = known_latents(vae, video.float(), device, dtype, box and [float(v) for v in box],
                                  bool(args.interpolate), pad)
    return model, Edit(objective, known=z, keep=keep), list(z.shape[1:])


# ----------------------------------------------------------------------------- measurements (bench.py control)
# aligned to the latent grid (8 pixels, latent frames), so the known pixels are exactly those of the kept latents
USES = {"inpaint 16,16,48,48": dict(inpaint=(16, 16, 48, 48)), "interpolate": dict(interpolate=True),
        "outpaint 16": dict(outpaint=16)}


def validation(n, vae, latent_shape):
    """n one-digit validation videos (n, 1, T, H, W), what they show [(digit, axis)] and their boxes (n, 1, T, 4)."""
    _, L, h, _ = latent_shape
    ds = MovingMNIST("val", 1 + vae.time_compression * (L - 1), n, size=h * vae.space_compression, max_digits=1)
    recipes = list(map(ds.recipe, range(n)))
    return (torch.stack([ds[i][0] for i in range(n)]), [(r[0].label, r[0].axis) for r in recipes],
            torch.stack([torch.from_numpy(boxes(r)) for r in recipes]))


def masked_psnr(x, y, where):
    """01's PSNR (on [0, 1] pixels, per video, then averaged) over the pixels where `where` is True."""
    se = ((x.float().clamp(-1, 1) - y.float().clamp(-1, 1)) / 2).pow(2) * where
    return (-10 * torch.log10(se.flatten(1).sum(1) / where.expand_as(se).flatten(1).sum(1))).mean().item()


def scores(judge_model, videos, meaning, b=None, shift=0):
    """The judge's digit and axis accuracy against meaning [(digit, axis)], and right (N, T): the frame shows the
    digit. With boxes b (N, 1, T, 4), shifted right by `shift` pixels, also error (N, T): the distance in pixels
    from each frame's digit (the judge's centroid) to its box centre, NaN where no digit shows."""
    n, _, T, H, W = videos.shape
    seen, truth = read_videos(judge_model, videos.float()), torch.tensor(meaning)  # truth (N, 2)
    row = {k: (seen[k] == truth[:, i]).float().mean().item() for i, k in enumerate(("digit", "axis"))}
    if b is None:
        return row, None, None
    centre, visible = locate(videos[:, 0].reshape(n * T, H, W).float().clamp(-1, 1))
    found = centre.view(n, T, 2).flip(-1) + 0.5                             # (N, T, (x, y)): pixel i spans [i, i + 1)
    error = (found - (b[:, 0, :, :2] + b[:, 0, :, 2:]) / 2 - torch.tensor([shift, 0])).norm(dim=-1)  # (N, T)
    error = error.masked_fill(~visible.view(n, T), float("nan"))
    row |= dict(path_error_px=error.nanmean().item(), within_4px=(error <= 4).float().mean().item())
    return row, error, seen["frame_class"] == truth[:, :1]


def edit_all(generate, objective, vae, real, device, dtype):
    """USES on the real videos -> {name: (input, known pixels, edited, the VAE's reconstruction of the input)}.
    generate(objective_of, latent shape): videos of the given objective_of(j, k) for samples j..k - 1."""
    done = {}
    for name, use in USES.items():
        video, known, z, keep = known_latents(vae, real, device, dtype, **use)
        with torch.no_grad(), sample.autocast(device, dtype):
            recon = vae.decode(z / vae.scaling_factor).float().cpu()
        edited = generate(lambda j, k, z=z, keep=keep: Edit(objective, known=z[j:k], keep=keep), list(z.shape[1:]))
        done[name] = video, known, edited, recon
    return done


def bench(args):
    """python bench.py control {path, edit, prompts}: prints the table, writes runs/bench/control_<part>.json."""
    import bench as b  # its table and report writer
    begin, device = time.perf_counter(), pick_device("auto")
    model, objective, vae, tokenizer, config, shape = sample.load(args.ckpt, device)
    dtype, text_len, cfg = config["dtype"], config["dit"]["text_len"], args.cfg or config["dit"]["sample_cfg"]
    check_dtype(device, dtype)
    judge_model, _ = load_judge(os.path.join(args.out, "judge.pt"))
    real, meaning, truth = validation(args.videos, vae, shape)
    prompts = [clause(d, a) for d, a in meaning]

    def make(prompts, m=model, objective_of=lambda j, k: objective, shape=shape, cfg=cfg, negative=None):
        with warnings.catch_warnings(action="ignore"):  # a phrasing's unseen words warn: the table says how they fare
            return torch.cat([sample.generate(m, objective_of(j, j + 32), vae, tokenizer, prompts[j:j + 32], shape,
                                              text_len, args.steps, cfg, args.seed + j, device, dtype,
                                              negative=negative and negative[j:j + 32]).cpu()
                              for j in range(0, len(prompts), 32)])     # batches of 32, sample j from seed + j
    if args.part == "path":  # the base model never sees the path: its distance is a random path's
        net = load_control(args.control, model)
        control = control_of(truth.to(device), shape[2:], vae.time_compression, vae.space_compression, net.channels)
        made = {"controlled": make(prompts, ControlledDiT(model, net), lambda j, k: Edit(objective, control[j:k])),
                "base model, no path": make(prompts), "real validation videos": real}
        rows = {name: scores(judge_model, v, meaning, truth)[0] for name, v in made.items()}
    elif args.part == "edit":  # filled: the frames whose true digit centre is unknown (outpainting: every frame)
        rows = {}
        for name, (video, known, out, recon) in edit_all(lambda objective_of, shape: make(
                prompts, objective_of=objective_of, shape=shape), objective, vae, real, device, dtype).items():
            pad = (video.shape[-1] - real.shape[-1]) // 2
            x, y = ((truth[:, 0, :, :2] + truth[:, 0, :, 2:]) / 2).long().unbind(-1)  # (N, T) each
            filled = ~known[0, 0, torch.arange(x.shape[1]), y, x + pad]
            filled |= ~filled.any()
            row, error, right = scores(judge_model, out, meaning, truth, pad)
            rows[name] = dict(kept_psnr=masked_psnr(out, video, known), vae_kept_psnr=masked_psnr(recon, video, known),
                              digit=row["digit"], filled_digit=right[filled].float().mean().item(),
                              filled_path_error_px=error[filled].nanmean().item())
    else:  # the words change; the meaning, which the judge checks, stays the canonical caption's
        rng, meaning = np.random.default_rng(args.seed), [parse_prompt(p) for p in PROMPTS * args.n]
        canonical = [clause(d, a) for d, a in meaning]

        def phrased(pool):  # of those the text encoder takes: a word it never saw may split into many tokens
            ok = [k for k in pool if max(len(tokenizer.sp.encode(clause(*m, k))) for m in meaning[:20]) <= text_len]
            return f"{len(ok)} phrasings", dict(prompts=[clause(d, a, rng.choice(ok)) for d, a in meaning])
        (seen, seen_run), (held, held_run) = phrased(SEEN[1:]), phrased(HELD_OUT)
        runs = {"canonical grammar": dict(prompts=canonical), f"seen: {seen}": seen_run, f"held out: {held}": held_run,
                "misspelled": dict(prompts=[misspell(p, i) for i, p in enumerate(canonical)])}
        runs |= {f"guidance {g:g}": dict(prompts=canonical, cfg=g) for g in (1.0, 2.0, 4.0, 12.0) if g != cfg}
        runs |= {f"negative: {what}": dict(prompts=canonical, negative=[f(d, a) for d, a in meaning]) for what, f in (
            ("the other axis", lambda d, a: clause(d, 1 - a)), ("the next digit", lambda d, a: clause((d + 1) % 10, a)),
            ("the other axis' words alone", lambda d, a: AXES[1 - a]))}
        rows = {name: scores(judge_model, make(**run), meaning)[0] for name, run in runs.items()}
    b.table(f"control {args.part}: {args.ckpt}, {args.steps} steps, guidance {cfg:g}", rows)
    b.write_report(dict(command=args.command_line, date=datetime.date.today().isoformat(), machine=b.machine(),
                        ckpt=args.ckpt, control=args.control, paraphrase=config["data"]["paraphrase"], steps=args.steps,
                        cfg=cfg, rows=rows), os.path.join(args.out, f"control_{args.part}.json"), begin)


def demo(ckpt="data/pretrained/tiny.pt", steps=25):
    device = torch.device("cpu")
    model, objective, vae, tokenizer, config, shape = sample.load(ckpt, device)
    real, meaning, _ = validation(2, vae, shape)
    columns = [F.pad(real, (16, 16), value=-1.0)]  # as wide as the outpainted videos
    for name, (video, known, out, recon) in edit_all(lambda objective_of, shape: sample.generate(
            model, objective_of(0, 2), vae, tokenizer, [clause(*m) for m in meaning], shape, config["dit"]["text_len"],
            steps, config["dit"]["sample_cfg"], 0, device, "fp32"), objective, vae, real, device, "fp32").items():
        kept, vae_kept = masked_psnr(out, video, known), masked_psnr(recon, video, known)
        print(f"{name:>20}: {1 - known.float().mean():4.0%} of the pixels filled; the kept ones {kept:.2f} dB from the "
              f"input, the VAE's reconstruction {vae_kept:.2f} dB")
        columns.append(F.pad(out, ((columns[0].shape[-1] - out.shape[-1]) // 2,) * 2, value=-1.0))
    os.makedirs("runs/demo", exist_ok=True)
    save_gif("runs/demo/09_control.gif", video_grid(torch.stack(columns, 1).flatten(0, 1), columns=len(columns)))
    print("wrote runs/demo/09_control.gif: per row a validation video, then inpainted, interpolated, outpainted")


if __name__ == "__main__":
    if sys.argv[1:2] == ["train"]:
        train_control(sys.argv[2:])
    elif sys.argv[1:2] == ["eval"]:
        import bench
        bench.main(["control", *sys.argv[2:]])
    else:
        demo()
