"""What the DiT trains on at each step, for train.py: the learning rate, progressive phases, the buckets of one
step, a time budget.

    phases = resolve_phases(cfg)                 # dit.phases with the data/dit defaults filled in
    plan = step_buckets(phases[0], cfg, ranks=1) # [Bucket(kind="video", frames=9, size=64, count=64), ...]
    phase, step_in_phase = phase_at(step, [p.steps for p in phases])
    lr = lr_at(step, base=3e-3, warmup=200, total=8000)   # warm-up, then cosine to a tenth

Progressive training (CogVideoX section 3.3, HunyuanVideo section 4.3): the run passes through phases, each
with its own clip length, resolution and batch: short or small clips first, where a step is cheap and the
model learns what a digit looks like, then the full clips, where it learns the motion. One learning-rate
schedule (warm-up, cosine) spans all phases.

Images with videos (all three papers): a captioned image is a 1-frame video, which the causal VAE encodes as
one latent frame, so the DiT trains on it unchanged. Moving MNIST's images are captioned `digit 3` (or
`digit 3 and digit 7`): what the digits are, with nothing about motion.

Mixing lengths and sizes in one step: buckets sized to a fixed token budget, not NaViT's packed sequences.
A step holds one dense micro-batch per shape (images, 5-frame clips, 9-frame clips, ...), and each bucket gets
as many samples as its share of the step's tokens buys, caption tokens counted, so a step costs about the same
whatever the mix (the linear layers' cost, which dominates at ~100 tokens; attention's grows faster). NaViT
(Dehghani et al. 2023) would pack several clips into one sequence with a block-diagonal attention mask; that
saves padding when every sample has its own shape (web video), but here every sample of a shape is alike, so
buckets waste nothing and keep the DiT's attention, RoPE and per-sample timestep exactly as 02 wrote them.
CogVideoX's released training code batches by bucket too. Each bucket draws its samples in its own fixed
order (data/loading.py batches), which depends only on the seed, the phase and the step: the same on every
rank and after a resume.

The time budget (--budget_minutes): each stage times a few of its own training steps at the start (the model
and the optimizer put back afterwards), then scales the steps of the config, every phase alike, so that
the stage ends by its deadline.
"""
import copy
import dataclasses
import math
import time
from dataclasses import dataclass

from data.checkpoint import rng_state, set_rng_state


def lr_at(step, base, warmup, total, decay=1.0):
    """Linear warm-up, hold, then cosine decay to a tenth of the base rate over the last `decay` of the steps.

    decay=1 is the classic warm-up + cosine; decay<1 is warmup-stable-decay (Hu et al. 2024, MiniCPM): the full
    rate is held until the decay starts, so a run can be lengthened from any checkpoint before it. On tiny.yaml,
    decay=0 (constant) scored 0.07 lower digit accuracy than decay=1 (docs/experiments.md).
    """
    if step < warmup:
        return base * (step + 1) / warmup
    decay_start = total - decay * (total - warmup)
    if step < decay_start:
        return base
    progress = (step - decay_start) / max(1, total - decay_start)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


@dataclass
class Bucket:
    kind: str    # "video" | "image"
    frames: int  # pixel frames; 1 for an image
    size: int    # pixels per side
    count: int   # samples per step, over all data-parallel ranks


UNSET = dict(steps=0, frames=[], size=0, batch_size=0, images=-1.0)  # a phase key left out: data's or dit's value


def resolve_phases(cfg):
    """dit.phases as dicts, with 0 / [] / -1 replaced by the data and dit values; no phases: one of dit.steps."""
    d = cfg.dit
    defaults = dict(steps=d.steps, frames=[cfg.data.frames], size=cfg.data.size, batch_size=d.batch_size,
                    images=d.images)
    out = []
    for p in d.phases or [None]:
        given = {} if p is None else {k: v for k, v in dataclasses.asdict(p).items() if v != UNSET[k]}
        phase = defaults | given
        out.append(phase | dict(frames=sorted(phase["frames"])))
    return out


def sample_tokens(frames, size, cfg):
    """The tokens one sample puts through the transformer: its video tokens, latent frames / patch_t x (latent
    side / patch)^2, and its caption's text_len, which an image (16 video tokens here) doubles."""
    v, d = cfg.vae, cfg.dit
    latent_frames = 1 + (frames - 1) // v.time_compression
    return max(1, latent_frames // d.patch_t) * (size // v.space_compression // d.patch) ** 2 + d.text_len


def step_buckets(phase, cfg, ranks):
    """The buckets of one step of a phase. The token budget is batch_size clips of the longest length; images
    get the `images` share of it, and the clip lengths split the rest equally. Each count is a multiple of
    ranks x grad_accum (every rank gets equal micro-batches), at least one such multiple."""
    unit = ranks * cfg.dit.grad_accum
    budget = phase["batch_size"] * sample_tokens(max(phase["frames"]), phase["size"], cfg)

    def count(share, frames):
        return max(unit, math.floor(share * budget / sample_tokens(frames, phase["size"], cfg) / unit) * unit)
    out = [Bucket("image", 1, phase["size"], count(phase["images"], 1))] if phase["images"] > 0 else []
    share = (1 - phase["images"]) / len(phase["frames"])
    return out + [Bucket("video", f, phase["size"], count(share, f)) for f in phase["frames"]]


def phase_at(step, steps):
    """(phase index, step inside it) of a global step, for phases of `steps` steps each."""
    for i, n in enumerate(steps):
        if step < n:
            return i, step
        step -= n
    raise ValueError(f"step beyond the schedule's {sum(steps)} steps")


def scale_steps(steps, seconds_per_step, seconds):
    """Step counts in the proportions of `steps` whose total time sum(n_i t_i) fits in `seconds` (at least one
    step each, so a budget too small for even that runs over)."""
    k = seconds / sum(n * t for n, t in zip(steps, seconds_per_step))
    return [max(1, math.floor(n * k)) for n in steps]


def shapes(phases, cfg, ranks):
    """Every (kind, frames, size) some phase trains on: the latent caches the run needs."""
    return sorted({(b.kind, b.frames, b.size) for p in phases for b in step_buckets(p, cfg, ranks)})


def probe(step_fn, stateful, n=3):
    """Seconds per training step, the mean of n steps after one warm-up (which compiles, if anything does),
    the same on every rank. The weights, optimizer moments and RNG are put back afterwards: the run then goes
    on exactly as if it had not been timed. train.py averages it over the ranks."""
    saved, rng = [copy.deepcopy(m.state_dict()) for m in stateful], rng_state()
    step_fn()
    begin = time.perf_counter()
    for _ in range(n):
        step_fn()
    seconds = (time.perf_counter() - begin) / n
    for m, state in zip(stateful, saved):
        m.load_state_dict(state)
    set_rng_state(rng)
    return seconds


def budget_steps(steps, seconds_per_step, deadline, logger, what):
    """Scale the planned steps to end by the deadline (a time.perf_counter() value). 15% of the time left is
    kept back: for checkpoints and previews, and because training steps ran up to 10-15% slower than the
    probe's on a shared 2-core CPU (docs/experiments.md; with 10% kept back, a 15-minute run took 15:04)."""
    left = 0.85 * (deadline - time.perf_counter())
    if left <= 0:
        logger(f"warning: budget_minutes left no time for the {what} stage (the probe, the latent cache or "
               "compiling took it all): one step per phase")
        return [1] * len(steps)
    planned = scale_steps(steps, seconds_per_step, left)
    logger(f"{what}: {', '.join(f'{s:.3f}' for s in seconds_per_step)} s per step in the probe -> "
           f"{' + '.join(map(str, planned))} steps to end in {left / 60:.1f} minutes")
    return planned
