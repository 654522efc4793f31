"""train.py: one command from pixels to prompts, on one CPU or many GPUs.

    torchrun --standalone --nproc_per_node=1 train.py --config tiny.yaml      # VAE, then DiT
    torchrun --standalone --nproc_per_node=2 train.py --config tiny.yaml --stage dit
    python train.py --config tiny.yaml --dit.objective=pyramid --out_dir=runs/pyramid
    python train.py --config tiny.yaml --resume                               # continue exactly

Stage `vae` trains the causal VAE of 01_vae.py on videos and writes OUT/vae.pt.
Stage `dit` encodes the videos once with the frozen VAE (cached in OUT/latents.pt),
trains the BPE tokenizer on the captions, then trains the text encoder and the
transformer of 02_dit.py with one of three objectives (03 ddpm, 04 flow, 05 pyramid)
and writes OUT/dit.pt, which sample.py turns into GIFs.

Data parallel under torchrun (and 06_parallel.py's other modes), mixed precision, AdamW, EMA weights
for sampling, checkpoints that resume bit-exactly; every option and its check: data/config.py.
"""
import copy
import dataclasses
import gc
import importlib
import json
import math
import os
import signal
import time
import warnings
from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml

try:
    import resource  # the peak memory that metrics.jsonl logs: Unix only
except ImportError:
    resource = None
from tqdm import tqdm

from data import schedule
from data.checkpoint import fingerprint, load_checkpoint, resume_rng, rng_state, save_checkpoint
from data.config import autocast, check_config, check_dtype, compiles, parse_args, pick_device
from data.loading import batches, check_folder, data_position, scan, video_dataset
from data.moving_mnist import save_gif, video_grid
from data.tokenizer import Tokenizer
from sample import build_dit, build_objective, build_vae, generate, load_vae

vae_lib = importlib.import_module("01_vae")
diffusion = importlib.import_module("03_diffusion")
parallel = importlib.import_module("06_parallel")


# ----------------------------------------------------------------------------- exact resume, clean stops
STOP = {"signal": None}  # set by SIGINT (Ctrl-C) or SIGTERM: the training loop saves at its current step, then exits


def request_stop(signum, frame):
    STOP["signal"] = signal.Signals(signum).name


def stop_requested(device):
    """True on every rank once any rank was signalled, so all save the same step and leave together."""
    return parallel.mean_over_ranks(float(STOP["signal"] is not None), device) > 0


def stop_here(step, path, logger):
    logger.bar.close()
    raise SystemExit(f"stopped by {STOP['signal'] or 'a signal'} after step {step + 1}: checkpoint {path} saved; "
                     "continue with --resume")


def check_finite(loss, step, path, logger):
    """A NaN or inf loss stops the run before anything is saved, so the last good checkpoint survives."""
    if not math.isfinite(loss):
        logger.bar.close()
        kept = f"the last good checkpoint is {path}" if os.path.isfile(path) else "no checkpoint was written yet"
        raise SystemExit(f"loss is {loss} at step {step + 1}: stopping; {kept}. "
                         "Try a lower learning rate, or dtype fp32 to rule out precision.")


# ----------------------------------------------------------------------------- one optimiser step
def train_step(model, opt, scaler, loss_fn, micro_batches, device, dtype, clip):
    """Gradient accumulation over micro-batches; DDP all-reduces only on the last one (no_sync). Each
    micro-batch's mean loss weighs by its samples, so micro-batches of different shapes (data/schedule.py's
    buckets) give the mean over every sample of the step."""
    opt.zero_grad(set_to_none=True)
    sizes = [(m[0] if isinstance(m, (tuple, list)) else m).shape[0] for m in micro_batches]
    total, logs = 0.0, {}
    for i, micro in enumerate(micro_batches):
        last, weight = i == len(micro_batches) - 1, sizes[i] / sum(sizes)
        sync = nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast(device, dtype):
                loss, micro_logs = loss_fn(model, micro)
            scaler.scale(loss * weight).backward()  # outside autocast, as the AMP docs ask
        total += loss.item() * weight
        for k, v in micro_logs.items():
            logs[k] = logs.get(k, 0.0) + v * weight
    scaler.unscale_(opt)    # clip the true gradients, not the fp16-scaled ones
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    scaler.step(opt)        # skipped by the scaler if fp16 gradients overflowed
    scaler.update()
    return total, {**logs, "grad_norm": grad_norm.item()}


def micro_batches(rows, device, grad_accum):
    """rows: (latents, ids, mask) of each bucket of a step -> grad_accum micro-batches per bucket, on device."""
    return [m for row in rows for m in zip(*(t.to(device).chunk(grad_accum) for t in (row[0].float(), *row[1:])))]


@torch.no_grad()
def ema_update(ema, model, decay):
    for e, p in zip(ema.parameters(), model.parameters()):
        p = p.full_tensor() if hasattr(p, "full_tensor") else p  # FSDP2 holds a shard: gather the whole weight
        e.lerp_(p.detach().float(), 1 - decay)


# ----------------------------------------------------------------------------- logging
class Logger:
    """Rank 0 alone writes: a tqdm bar, metrics as JSON lines, the resolved config."""

    def __init__(self, cfg, rank, stage, start, total):
        self.rank, self.stage = rank, stage
        self.path = os.path.join(cfg.out_dir, "metrics.jsonl")
        self.bar = tqdm(total=total, initial=start, desc=stage, disable=rank != 0, dynamic_ncols=True)
        self.last = time.perf_counter()

    def step(self, step, loss, logs):
        now = time.perf_counter()
        seconds, self.last = now - self.last, now
        if self.rank == 0:
            self.bar.set_postfix(loss=f"{loss:.4f}", step_s=f"{seconds:.2f}")
            self.bar.update(1)
            if resource is not None:  # this process's peak resident memory, MiB (ru_maxrss is KiB on Linux)
                logs = {**logs, "peak_rss_MiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
            self.write({**logs, "step": step + 1, "loss": loss, "step_s": round(seconds, 4)})

    def write(self, record):
        if self.rank == 0:
            with open(self.path, "a") as f:
                f.write(json.dumps({"stage": self.stage, **record}) + "\n")

    def print(self, message):
        if self.rank == 0:
            self.bar.write(message)


# ----------------------------------------------------------------------------- stage 1: VAE
def train_vae(cfg, rank, world, device, resume, deadline=None):
    """deadline (time.perf_counter()): a budgeted run's end of this stage; its steps are sized from a probe."""
    v = cfg.vae
    path = os.path.join(cfg.out_dir, "vae.pt")
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    vae = build_vae(dataclasses.asdict(cfg)).to(device)
    criterion = vae_lib.VAELoss(l1_weight=v.l1_weight, l2_weight=v.l2_weight, fg_weight=v.fg_weight,
                                kl_weight=v.kl_weight, gan_weight=v.gan_weight, disc_start=v.disc_start,
                                in_channels=cfg.data.channels).to(device)
    # fused: one kernel updates every parameter tensor, instead of a handful of kernels per tensor
    opt = torch.optim.AdamW(vae.parameters(), lr=v.lr, betas=(0.9, 0.99), weight_decay=0.0, fused=True)
    disc = criterion.disc
    opt_d = torch.optim.AdamW(disc.parameters(), lr=v.lr, betas=(0.5, 0.9), fused=True) if disc is not None else None
    scaler, scaler_d = (torch.amp.GradScaler(device.type, enabled=cfg.dtype == "fp16") for _ in range(2))
    start, total = 0, v.steps
    if resume and os.path.isfile(path):
        ckpt = load_checkpoint(path, "vae")
        if deadline is not None:  # a budgeted run keeps the step count its probe chose
            total = ckpt["planned_steps"]
        vae.load_state_dict(ckpt["model"])
        criterion.load_state_dict(ckpt["criterion"])
        opt.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        if opt_d is not None:
            opt_d.load_state_dict(ckpt["optimizer_d"])
            scaler_d.load_state_dict(ckpt["scaler_d"])
        start = resume_rng(ckpt, rank, world)
    else:
        torch.manual_seed(cfg.seed + rank)
    model = parallel.data_parallel(vae) if world > 1 else vae
    disc_model = parallel.data_parallel(disc) if world > 1 and disc is not None else disc

    per_rank, last_layer = v.batch_size // world, vae.last_layer

    def image_steps(step):  # steps before `step` that trained on images: every 1/v.images-th, spread evenly
        return math.floor(step * v.images)
    logger = Logger(cfg, rank, "vae", start, total)
    if deadline is not None and start == 0:  # time the VAE's step on one real batch, then size the stage
        x = vae_samples(cfg, "train", v.frames, per_rank, device)
        stateful = [vae, criterion, opt, scaler] + ([opt_d] if opt_d else [])
        def timed():
            train_step(model, opt, scaler, lambda m, b: criterion(b, *m(b), 0, last_layer), [x], device, cfg.dtype,
                       cfg.clip_grad)
        seconds = parallel.mean_over_ranks(schedule.probe(timed, stateful), device)
        [total] = schedule.budget_steps([total], [seconds], deadline, logger.print, "VAE")
        logger.bar.total, logger.last = total, time.perf_counter()
    train_set = video_dataset(cfg, "train", v.frames, length=max(total * v.batch_size, 1000))
    data = batches(train_set, per_rank, rank, world, cfg.seed, start - image_steps(start), cfg.data.workers)
    if v.images:  # Pyramid Flow trains its VAE on images and videos: an image step has the video step's pixels
        image_set = video_dataset(cfg, "train", 1, length=max(total * v.batch_size * v.frames, 1000), images=True)
        images = batches(image_set, per_rank * v.frames, rank, world, cfg.seed + 1, image_steps(start),
                         cfg.data.workers)
    logger.print(f"VAE: {sum(p.numel() for p in vae.parameters()) / 1e6:.2f}M parameters, "
                 f"{v.frames}-frame clips, batch {v.batch_size} on {world} rank(s)"
                 + (f"; {v.images:.0%} of the steps on {v.batch_size * v.frames} images" if v.images else ""))

    def state(step):
        return dict(kind="vae", step=step, config=dataclasses.asdict(cfg), model=vae.state_dict(),
                    criterion=criterion.state_dict(), optimizer=opt.state_dict(), scaler=scaler.state_dict(),
                    optimizer_d=opt_d.state_dict() if opt_d else None, scaler_d=scaler_d.state_dict(),
                    rng=parallel.gather_objects(rng_state()), planned_steps=total,
                    data_position=data_position(step, len(train_set), v.batch_size))

    for step in range(start, total):
        for group in opt.param_groups:
            group["lr"] = schedule.lr_at(step, v.lr, v.warmup, total)
        image_step = image_steps(step + 1) > image_steps(step)
        x = next(images if image_step else data)[0].to(device)  # (B, C, T, H, W); T = 1 on an image step
        recons = []

        def vae_loss(m, micro):
            recon, posterior = m(micro)
            recons.append(recon.detach())
            return criterion(micro, recon, posterior, step, last_layer)

        micro = list(x.chunk(v.grad_accum))
        loss, logs = train_step(model, opt, scaler, vae_loss, micro, device, cfg.dtype, cfg.clip_grad)
        if disc is not None and step >= v.disc_start:
            def disc_loss(m, pair):
                return criterion.disc_loss(pair[0], pair[1], step, m), {}
            logs["disc_loss"], _ = train_step(disc_model, opt_d, scaler_d, disc_loss, list(zip(micro, recons)),
                                              device, cfg.dtype, cfg.clip_grad)
        loss = parallel.mean_over_ranks(loss, device)
        check_finite(loss, step, path, logger)
        logger.step(step, loss, logs | ({"image_step": int(image_step)} if v.images else {}))
        done, stop = step + 1 == total, stop_requested(device)
        if (step + 1) % v.ckpt_every == 0 or done or stop:
            if done:  # the DiT sees latents * scaling_factor, of unit variance (Rombach et al. 2022)
                x = vae_samples(cfg, "train", v.frames, 64, device)
                vae.scaling_factor.fill_(vae_lib.measure_scaling_factor(vae, x))
            ckpt = state(step + 1)
            if rank == 0:
                save_checkpoint(path, ckpt)
        if stop:
            stop_here(step, path, logger)
        if rank == 0 and ((step + 1) % v.sample_every == 0 or done):
            gif = os.path.join(cfg.out_dir, "samples", f"vae_{step + 1:06d}.gif")
            psnr, black = validate_vae(cfg, vae, device, gif)
            logger.write(dict(step=step + 1, val_psnr=psnr))
            logger.print(f"step {step + 1}: validation PSNR {psnr:.2f} dB on {v.val_frames}-frame videos "
                         f"(all-black frames: {black:.2f} dB)")
    logger.bar.close()
    parallel.barrier()


def vae_samples(cfg, split, frames, n, device):
    """The first n videos of a split (fewer if a video folder holds fewer), (n, C, T, H, W) on device."""
    ds = video_dataset(cfg, split, frames, length=n)
    return torch.stack([ds[i][0] for i in range(min(n, len(ds)))]).to(device)


@torch.no_grad()
def validate_vae(cfg, vae, device, gif_path, n=32):
    """PSNR (01_vae.psnr, averaged over videos) of reconstructions of validation videos and of all-black
    frames, for scale; a GIF: originals above, reconstructions below."""
    vae.eval()
    x = vae_samples(cfg, "val", cfg.vae.val_frames, n, device)
    with autocast(device, cfg.dtype):
        recon = vae.decode(vae.encode(x).mode()).float().clamp(-1, 1)
    vae.train()
    os.makedirs(os.path.dirname(gif_path), exist_ok=True)
    save_gif(gif_path, video_grid(torch.cat([x[:8], recon[:8]]), columns=8))
    return vae_lib.psnr(x, recon).mean().item(), vae_lib.psnr(x, torch.full_like(x, -1)).mean().item()


# ----------------------------------------------------------------------------- stage 2: DiT
@torch.no_grad()
def cached_latents(cfg, vae, vae_ckpt, rank, world, device, kind="video", frames=None, size=None):
    """Encode the training videos once: (latents * scaling_factor, captions), from OUT/latents.pt if it matches.
    Each rank encodes every world-th video; the posterior mean is cached (the KL weight is tiny, so its spread
    is negligible). Another shape (kind "image", fewer frames, a lower size, rendered at data.size and
    area-downsampled) is cached in OUT/latents_<kind><frames>_<size>.pt."""
    d = cfg.dit
    frames, size = frames or cfg.data.frames, size or cfg.data.size
    default = (kind, frames, size) == ("video", cfg.data.frames, cfg.data.size)
    path = os.path.join(cfg.out_dir, "latents.pt" if default else f"latents_{kind}{frames}_{size}.pt")
    # a video folder's clips are part of the key: an edited clip or caption must not reuse stale latents
    folder = [] if cfg.data.dataset == "moving_mnist" else scan(cfg)[0]
    clips = [(f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for pair in folder for f in pair]
    key = dict(vae=fingerprint(vae_ckpt["model"]), videos=d.videos, frames=cfg.data.frames, seed=cfg.seed,
               data=dataclasses.asdict(cfg.data) | {"workers": None}, clips=clips)
    if not default:
        key |= dict(shape=[kind, frames, size])
    if os.path.isfile(path):
        cache = torch.load(path, weights_only=True)
        if cache["key"] == key:
            return cache["latents"], cache["captions"]
    parallel.barrier()  # nobody may still be reading an old cache when rank 0 replaces it
    ds = video_dataset(cfg, "train", frames, length=d.videos, images=kind == "image")
    n = min(d.videos, len(ds))  # a video folder may hold fewer clips than dit.videos
    cp = cfg.vae.context_parallel  # with cp > 1, the cp ranks of a group encode one video together, in pieces
    group, g, groups = parallel.subgroups(cp, rank, world)
    mine = list(range(g, n, groups))
    parts = []
    desc = "encode latents" if default else f"encode {kind}s, {frames} frame(s) at {size}x{size}"
    for i in tqdm(range(0, len(mine), 32), desc=desc, disable=rank != 0, dynamic_ncols=True):
        x = torch.stack([ds[j][0] for j in mine[i:i + 32]]).to(device)
        if size != x.shape[-1]:
            x = F.interpolate(x, size=(x.shape[2], size, size), mode="area")  # (B, C, T, size, size)
        with autocast(device, cfg.dtype):
            if group is None or not default:  # pieces of time are for the long default clips
                z = vae.encode(x).mode()
            else:
                pieces = parallel.ContextParallel(group)
                z = pieces.gather(vae.encode(pieces.split(x, vae.time_compression), cache=pieces).mode())
            parts.append((z.float() * vae.scaling_factor).half().cpu())
    mine_latents = torch.cat(parts)
    gathered = parallel.gather_objects(mine_latents)
    latents = torch.empty(n, *mine_latents.shape[1:], dtype=torch.half)
    for g in range(groups):  # every rank of a group holds its group's latents: take the first's
        latents[g::groups] = gathered[g * cp]
    captions = [ds.caption(i) if hasattr(ds, "caption") else ds[i][1] for i in range(n)]
    if rank == 0:
        save_checkpoint(path, dict(key=key, latents=latents, captions=captions))
    parallel.barrier()
    return latents, captions


def train_dit(cfg, rank, world, device, resume, deadline=None):
    """deadline (time.perf_counter()): a budgeted run's end; every phase's steps are sized from a probe."""
    d = cfg.dit
    path = os.path.join(cfg.out_dir, "dit.pt")
    vae_ckpt = load_checkpoint(d.vae_ckpt or os.path.join(cfg.out_dir, "vae.pt"), "vae")
    vae = load_vae(vae_ckpt, device)
    phases = schedule.resolve_phases(cfg)
    ranks = world // d.sequence_parallel  # data-parallel ranks: those of one sequence share their samples
    caches = {shape: cached_latents(cfg, vae, vae_ckpt, rank, world, device, *shape)
              for shape in schedule.shapes(phases, cfg, ranks)}  # (kind, frames, size) -> (latents, captions)

    tok_path = os.path.join(cfg.out_dir, "tokenizer.json")
    if rank == 0 and not (resume and os.path.isfile(tok_path)):
        Tokenizer.train([c for _, captions in caches.values() for c in captions], d.vocab_size).save(tok_path)
    parallel.barrier()
    tokenizer = Tokenizer.load(tok_path)
    datasets = {shape: torch.utils.data.TensorDataset(latents, *tokenizer.encode(captions, d.text_len))
                for shape, (latents, captions) in caches.items()}

    def latent_shape_of(phase):  # the phase's longest clips: what its previews sample
        return list(datasets[("video", phase["frames"][-1], phase["size"])].tensors[0].shape[1:])
    latent_shape = latent_shape_of(phases[-1])

    torch.manual_seed(cfg.seed)
    model = build_dit(dataclasses.asdict(d), tokenizer.vocab_size, latent_shape[0]).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)  # whole on every rank, FSDP or not; previews use it alone
    model = parallel.shard(model) if d.fsdp else model
    # a sequence-parallel group's ranks see the same samples and noise: to the data they are one, sp_rank of sp_world
    sp_group, sp_rank, sp_world = parallel.subgroups(d.sequence_parallel, rank, world)
    if sp_group is not None:
        model.parallel = parallel.Ulysses(sp_group)
    objective = build_objective(dataclasses.asdict(d))
    opt = torch.optim.AdamW(model.parameters(), lr=d.lr, betas=(0.9, 0.99), weight_decay=0.0, fused=not d.fsdp)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.dtype == "fp16")
    start, planned = 0, [p["steps"] for p in phases]
    if resume and os.path.isfile(path):
        ckpt = load_checkpoint(path, "dit")
        if ckpt["config"]["dit"]["fsdp"] != d.fsdp:  # the optimizer state is keyed differently
            raise SystemExit(f"error: {path} was trained with dit.fsdp={not d.fsdp}: resume with the same")
        planned = ckpt["planned_steps"] if deadline is not None else planned  # a budget keeps its probe's counts
        ema.load_state_dict(ckpt["ema"])
        if d.fsdp:
            parallel.load_whole_state(model, opt, ckpt["model"], ckpt["optimizer"])
        else:
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        start = resume_rng(ckpt, rank, world)
    else:
        torch.manual_seed(cfg.seed + sp_rank)
    # only the training step is compiled (previews call the EMA copy eagerly, so no batch size recompiles it);
    # inductor leaves RoPE's complex multiply to eager kernels, and says so
    warnings.filterwarnings("ignore", message="Torchinductor does not support code generation for complex")
    step_model = torch.compile(model) if compiles(d, device) else model
    step_model = parallel.data_parallel(step_model) if world > 1 and not d.fsdp else step_model

    def dit_loss(m, micro):
        x0, cond = micro[0], dict(zip(("ids", "mask"), diffusion.drop_captions(*micro[1:], d.caption_dropout)))
        if d.i2v:  # CogVideoX-I2V: the first latent frame, noise-augmented, as the image input (03); an image
            cond["image"] = diffusion.image_condition(x0, d.i2v_drop if x0.shape[2] > 1 else 1.0)  # has none
        return objective.loss(m, x0, cond, rank=sp_rank, world_size=sp_world), {}

    def buckets_of(p):
        return schedule.step_buckets(phases[p], cfg, ranks)
    logger = Logger(cfg, rank, "dit", start, sum(planned))
    if deadline is not None and start == 0:  # compiling happens in the probe's warm-up, inside the budget
        def timed(p):  # a whole step of phase p on its first samples: to the device, the optimizer step, the EMA
            rows = [datasets[(b.kind, b.frames, b.size)][:b.count // ranks] for b in buckets_of(p)]
            train_step(step_model, opt, scaler, dit_loss, micro_batches(rows, device, d.grad_accum), device,
                       cfg.dtype, cfg.clip_grad)
            ema_update(ema, model, d.ema_decay)
        seconds = [parallel.mean_over_ranks(schedule.probe(lambda: timed(p), [model, ema, opt, scaler]), device)
                   for p in range(len(phases))]
        planned = schedule.budget_steps(planned, seconds, deadline, logger.print, "DiT")
        logger.bar.total, logger.last = sum(planned), time.perf_counter()
    n_videos = len(datasets[("video", phases[-1]["frames"][-1], phases[-1]["size"])])
    logger.print(f"DiT: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, objective {d.objective}, "
                 f"latents {tuple(latent_shape)}, {n_videos} videos, vocab {tokenizer.vocab_size}")

    def state(step):  # under FSDP, whole_state gathers the shards: every rank must call it
        weights, moments = parallel.whole_state(model, opt) if d.fsdp else (model.state_dict(), opt.state_dict())
        # where the next step stands: (phase, step inside it); once all are done, (number of phases, 0)
        p, k = schedule.phase_at(step, planned) if step < sum(planned) else (len(planned), 0)
        return dict(kind="dit", step=step, config=dataclasses.asdict(cfg), model=weights,
                    ema=ema.state_dict(), optimizer=moments, scaler=scaler.state_dict(),
                    rng=parallel.gather_objects(rng_state()), data_position=dict(phase=p, step_in_phase=k),
                    planned_steps=planned, tokenizer=tokenizer.state_dict(), tokenizer_file=tok_path,
                    vocab_size=tokenizer.vocab_size, latent_shape=latent_shape, vae=vae_ckpt["model"],
                    vae_config=vae_ckpt["config"], scaling_factor=float(vae.scaling_factor))

    total, data = sum(planned), None
    for step in range(start, total):
        for group in opt.param_groups:
            group["lr"] = schedule.lr_at(step, d.lr, d.warmup, total, d.lr_decay)  # one schedule over every phase
        p, k = schedule.phase_at(step, planned)
        if data is None or k == 0:  # each bucket of the phase draws from its own cache, in its own fixed order
            data = [batches(datasets[(b.kind, b.frames, b.size)], b.count // ranks, sp_rank, sp_world,
                            cfg.seed + 1000 * p + i, k) for i, b in enumerate(buckets_of(p))]
            preview_shape = latent_shape_of(phases[p])
            if len(phases) > 1 or len(data) > 1:
                logger.print(f"phase {p + 1}/{len(phases)}, {planned[p]} steps: " + ", ".join(
                    f"{b.count} {b.kind}s of {b.frames} frame(s) at {b.size}x{b.size}" for b in buckets_of(p)))
        micro = micro_batches([next(bucket) for bucket in data], device, d.grad_accum)
        loss, logs = train_step(step_model, opt, scaler, dit_loss, micro, device, cfg.dtype, cfg.clip_grad)
        # warm the decay up: a plain 0.999 would still hold 13% of the random init after 2000 steps
        ema_update(ema, model, min(d.ema_decay, (1 + step) / (10 + step)))
        loss = parallel.mean_over_ranks(loss, device)
        check_finite(loss, step, path, logger)
        logger.step(step, loss, logs)
        done, stop = step + 1 == total, stop_requested(device)
        if (step + 1) % d.ckpt_every == 0 or done or stop:
            ckpt = state(step + 1)
            if rank == 0:
                save_checkpoint(path, ckpt)
                if d.keep_checkpoints and not stop:
                    save_checkpoint(os.path.join(cfg.out_dir, f"dit_{step + 1:06d}.pt"), ckpt)
        if stop:
            stop_here(step, path, logger)
        if rank == 0 and ((step + 1) % d.sample_every == 0 or done):
            videos = generate(ema, objective, vae, tokenizer, d.prompts, preview_shape, d.text_len,
                              d.sample_steps, d.sample_cfg, cfg.seed, device, cfg.dtype, d.sample_cfg_rescale)
            gif = os.path.join(cfg.out_dir, "samples", f"dit_{step + 1:06d}.gif")
            os.makedirs(os.path.dirname(gif), exist_ok=True)
            save_gif(gif, video_grid(videos, columns=len(d.prompts)))
            logger.print(f"step {step + 1}: samples of {len(d.prompts)} prompts in {gif}")
    logger.bar.close()
    parallel.barrier()


# ----------------------------------------------------------------------------- main
def main(argv=None):
    begin = time.perf_counter()
    cfg, args = parse_args(argv, description=__doc__)
    world = int(os.environ.get("WORLD_SIZE", 1))
    check_config(cfg, args, world)
    try:  # the models' own checks (widths, heads, RoPE, stages): seconds at most, before any data is read
        build_vae(dataclasses.asdict(cfg)), build_objective(dataclasses.asdict(cfg.dit))
        build_dit(dataclasses.asdict(cfg.dit), cfg.dit.vocab_size, cfg.vae.latent_channels)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    owned = not dist.is_initialized()  # a group made by the caller (tests/modes_worker.py) outlives this run
    rank, world, local = parallel.setup()
    device = pick_device(cfg.device, local)
    check_dtype(device, cfg.dtype)
    os.makedirs(cfg.out_dir, exist_ok=True)
    if rank == 0:
        text = yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)
        print(f"config ({world} rank(s), {device}, {cfg.dtype}):\n{text}")
        with open(os.path.join(cfg.out_dir, "config.yaml"), "w") as f:
            f.write(text)
        if cfg.data.dataset != "moving_mnist":
            check_folder(cfg)
    parallel.barrier()  # the other ranks read the scan from OUT/scan.json
    handlers = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    STOP["signal"] = None
    end = begin + 60 * cfg.budget_minutes if cfg.budget_minutes else None  # the whole run's deadline
    try:
        if args.stage in ("all", "vae"):  # a step count given on the command line is trained as given
            share = cfg.budget_vae if args.stage == "all" else 1.0
            deadline = None if "vae.steps" in args.given else end and begin + share * (end - begin)
            train_vae(cfg, rank, world, device, args.resume, deadline)
        if args.stage in ("all", "dit"):
            train_dit(cfg, rank, world, device, args.resume, None if "dit.steps" in args.given else end)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if owned and dist.is_initialized():
            gc.collect()  # DDP and FSDP hold the group: freed at interpreter exit, gloo can abort the process
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
