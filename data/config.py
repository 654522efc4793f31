"""The configuration of train.py: every option with its default and a comment, read from a YAML file and
--section.key=value flags (parse_args), the checks that run before any work (check_config), and the device and
dtype the options name.

    cfg, args = parse_args(["--config", "tiny.yaml", "--dit.steps=500"])
    check_config(cfg, args, world=1)    # a mistake is one line, `error: ...`, before anything is built

train.py trains what this describes; sample.py rebuilds the models from the copy saved in each checkpoint
(config_from_dict: the saved values over today's defaults).
"""
import argparse
import dataclasses
import difflib
import os
import shutil
import sys
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import yaml

from data import schedule
from data.augment import AUGMENTATIONS

# ----------------------------------------------------------------------------- runtime: the device and dtype

class ArgumentParser(argparse.ArgumentParser):
    """argparse with a user's mistake as one `error: ...` line (argparse prints its usage first); train.py and
    bench.py use it too."""

    def error(self, message):
        raise SystemExit(f"error: {message} (see {self.prog} --help)")


def pick_device(name="auto", local_rank=0):
    """auto: CUDA, then Apple's MPS, then the CPU."""
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise SystemExit("error: device 'cuda' was asked for, but this torch sees no CUDA GPU; use auto or cpu")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    if name == "mps" or (name == "auto" and torch.backends.mps.is_available()):
        if not torch.backends.mps.is_available():
            raise SystemExit("error: device 'mps' was asked for, but this torch sees no Apple GPU; use auto or cpu")
        return torch.device("mps")
    return torch.device("cpu")


def native_bf16(device):
    """bf16 matmuls in hardware: any CUDA or MPS device, or a CPU with AVX512-BF16 or AMX."""
    if device.type != "cpu":
        return True
    return getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)() or \
        getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()


def check_dtype(device, dtype):
    """fp16 needs a GPU; bf16 on a CPU without bf16 instructions (AVX512-BF16 or AMX) is emulated in software,
    and then fp32 is the faster choice by far."""
    if dtype == "fp16" and device.type == "cpu":
        raise SystemExit("error: dtype fp16 needs a GPU; use bf16 (fast on CPUs with AVX512-BF16/AMX) or fp32")
    if dtype == "bf16" and not native_bf16(device):
        print("warning: this CPU has no native bf16 (no AVX512-BF16 or AMX), so bf16 autocast is emulated "
              "and can be many times slower than fp32: pass --dtype=fp32", file=sys.stderr)


def autocast(device, dtype):
    """bf16 autocast runs on CPU and GPU alike; backward is called outside this context."""
    if dtype == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if dtype == "bf16" else torch.float16)


def compiles(d, device):
    """dit.compile: true, false, or auto: compile where it was measured to pay (docs/speed.md), on CUDA or on a
    CPU with native bf16 (AVX512-BF16, AMX) and a C++ compiler for inductor; on an AVX2-only CPU in fp32,
    compiling a step's shapes took minutes of a 15-minute run. FSDP and sequence parallelism run eagerly."""
    if d.compile != "auto":
        return d.compile == "true"
    if d.fsdp or d.sequence_parallel > 1:
        return False
    return device.type == "cuda" or (device.type == "cpu" and native_bf16(device) and shutil.which("c++") is not None)


# ----------------------------------------------------------------------------- the options
# Defaults live here; a YAML file overrides them, then --section.key=value flags.

@dataclass
class DataConfig:
    dataset: str = "moving_mnist"   # moving_mnist, or a folder of name.gif + name.txt pairs
    mnist_images: str = ""          # empty: the MNIST test set shipped in data/mnist/
    mnist_labels: str = ""
    frames: int = 17
    size: int = 64
    channels: int = 1
    max_digits: int = 2
    workers: int = 0                 # DataLoader processes; Moving MNIST renders ~8800 videos/s in the main one
    # a video folder is scanned once before training (cached in OUT/scan.json); what it drops is listed in
    # OUT/dropped.txt. on_bad: skip broken clips (unreadable, uncaptioned, ...) or stop with an error.
    on_bad: str = "skip"             # skip | error
    pad_short: bool = True           # clips shorter than the training frames: pad with the last frame, or drop
    allow_upscale: bool = True       # clips smaller than data.size: upscale, or drop
    # data filtering (HunyuanVideo's pipeline, course module 2.4); each 0 / false / "" is off
    min_motion: float = 0.0          # drop near-static clips: mean |frame t+1 - frame t|, pixels in [0, 1]
    min_content: float = 0.0         # drop near-blank clips: pixel standard deviation over the clip
    dedupe: bool = False             # drop clips whose decoded frames equal an earlier clip's
    min_caption_words: int = 0       # drop captions with fewer words
    caption_regex: str = ""          # drop captions this regular expression does not find a match in
    paraphrase: float = 0.0          # share of Moving MNIST captions re-worded (data/moving_mnist.py's grammar)
    # augmentation that keeps the caption true (data/augment.py): each training video followed by one fixed copy,
    # reversed and/or shifted; flip (a mirrored 3 is not a 3) is there to measure the harm. [] = off
    augment: list[str] = field(default_factory=list)


@dataclass
class VAEConfig:
    channels: list[int] = field(default_factory=lambda: [64, 128])
    patch: int = 4                   # pixel-unshuffle stem: space compression = patch * 2^(len(channels) - 1)
    latent_channels: int = 16
    time_compression: int = 2
    layers_per_block: int = 1
    l1_weight: float = 0.0
    l2_weight: float = 1.0
    fg_weight: float = 0.0
    kl_weight: float = 1e-6
    gan_weight: float = 0.0          # 0 switches the discriminator off
    disc_start: int = 0
    frames: int = 9                  # training clip length (causal and convolutional: any 1 + k * tc works later)
    batch_size: int = 2
    grad_accum: int = 1
    lr: float = 1e-3
    warmup: int = 50
    steps: int = 4000
    ckpt_every: int = 500
    sample_every: int = 1000
    val_frames: int = 17             # validation PSNR is measured on 17-frame videos
    context_parallel: int = 1        # latent cache: N ranks per video, each encoding a piece of its time axis (01)
    # the designs the course compares (01): where time is compressed, the norm, the bottleneck
    time_compress_at: str = "last"   # encoder: last, in its deepest levels (HunyuanVideo) | first (CogVideoX)
    time_expand_at: str = "first"    # decoder: first, its lowest resolutions (CogVideoX) | last (HunyuanVideo)
    norm: str = "frame"              # frame: per-frame GroupNorm, exactly causal | clip: over the clip (both papers)
    bottleneck: str = "kl"           # kl: Gaussian + KL | fsq: finite scalar quantization (Mentzer et al. 2023)
    fsq_levels: list[int] = field(default_factory=lambda: [5])  # fsq: levels per latent channel (one: all alike)
    images: float = 0.0              # share of steps on images, batch_size x frames of them (Pyramid Flow's VAE)

    @property
    def space_compression(self):     # 01's CausalVAE.space_compression, known before the model is built
        return self.patch * 2 ** (len(self.channels) - 1)


@dataclass
class Phase:
    """One phase of progressive training (data/schedule.py); 0, [] or -1 take the dit/data value."""
    steps: int = 0
    frames: list[int] = field(default_factory=list)  # several: clips of each length in every batch (frame pack)
    size: int = 0                    # pixels; lower than data.size: the videos are downsampled before encoding
    batch_size: int = 0              # videos of the longest length: the token budget of one step
    images: float = -1.0             # share of the token budget spent on images; -1 = dit.images


@dataclass
class DiTConfig:
    objective: str = "flow"          # ddpm | flow | pyramid
    vae_ckpt: str = ""               # the frozen VAE; empty: OUT/vae.pt from the vae stage
    arch: str = "cogvideox"          # cogvideox: expert blocks | hunyuan: dual- then single-stream blocks (02)
    dim: int = 256
    depth: int = 8
    double_depth: int = -1           # hunyuan: dual-stream blocks of the depth; -1 = depth // 3 (HunyuanVideo's 1:2)
    heads: int = 4
    text_depth: int = 2
    text_len: int = 16
    patch: int = 2                   # latent pixels per token side: smaller = more tokens, more compute per video
    patch_t: int = 1
    attention: str = "full"          # full | factorized
    checkpointing: bool = False
    sequence_parallel: int = 1       # N ranks per sample, each holding 1/N of the video tokens (Ulysses, 02)
    fsdp: bool = False               # shard weights, gradients and AdamW state over the ranks (FSDP2) instead of DDP
    vocab_size: int = 128            # BPE pieces asked for; a tiny corpus gives fewer
    videos: int = 8000               # training videos encoded once into the latent cache
    batch_size: int = 64
    grad_accum: int = 1
    lr: float = 5e-4
    warmup: int = 200
    steps: int = 2000
    compile: str = "false"           # torch.compile the training step: true | false | auto (where it pays, train.py)
    lr_decay: float = 1.0            # fraction of the steps (after warm-up) spent in the cosine decay; 0 = constant
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    sample_steps: int = 25
    sample_cfg: float = 8.0          # guidance of previews and sample.py's default: 8 scored best (docs/experiments.md)
    sample_cfg_rescale: float = 0.0  # guidance rescale phi (03, Lin et al. 2023: 0.7); 0 = plain CFG
    snr_shift: float = 1.0           # ddpm: CogVideoX's SNR shift of the noise schedule (03)
    ddpm_sampler: str = "ddim"       # ddpm: ddim | ddpm (ancestral, Ho et al. Algorithm 2) (03)
    t_sampling: str = "uniform"      # flow: uniform | logit_normal (SD3: more training near t = 0.5) (04)
    flow_shift: float = 1.0          # flow: time shift s of training's t, and of sampling unless sample_shift (04)
    sample_shift: float = 0.0        # flow: time shift of the sampling grid; 0 = flow_shift (04)
    flow_solver: str = "euler"       # flow: euler | heun, for previews and sample.py (04)
    pyramid_stages: int = 2          # pyramid: spatial stages K (05)
    pyramid_stage_ratios: list[float] = field(default_factory=list)  # pyramid: batch share per stage; [] = equal (05)
    pyramid_shift: float = 1.0       # pyramid: time shift of the stage windows; the official scripts train at 1 (05)
    history_noise: float = 1 / 3     # pyramid: history frames get sigma ~ U(0, history_noise) in training (05)
    guidance_embed: bool = False     # the guidance scale is an input (HunyuanVideo's distilled DiT; 07_distill.py)
    i2v: bool = False                # flow/ddpm: also learn image-to-video, the first latent frame as input (03)
    i2v_drop: float = 0.1            # i2v: the share of samples trained without the image (text-to-video)
    images: float = 0.0              # share of each step's token budget spent on captioned images (1 latent frame)
    phases: list[Phase] = field(default_factory=list)  # progressive training; [] = one phase of dit.steps
    ckpt_every: int = 500
    keep_checkpoints: bool = False   # also keep each checkpoint as OUT/dit_<step>.pt, for step curves
    sample_every: int = 500
    prompts: list[str] = field(default_factory=lambda: [
        "digit 0 is moving up and down", "digit 3 is moving left and right",
        "digit 7 is moving up and down", "digit 5 is moving left and right and digit 1 is moving up and down"])


@dataclass
class DistillConfig:
    """07_distill.py: a flow DiT's sampling made cheap in two fine-tuning stages, each skipped at 0 steps."""
    teacher: str = ""                # the dit.pt to distil (flow objective); its run's latents.pt beside it
    guidance_steps: int = 1500       # 1: guidance distillation (HunyuanVideo): one forward per step, not two
    guidance_min: float = 1.0        # the scales w it learns, drawn uniformly (HunyuanVideo: 1 to 8)
    guidance_max: float = 8.0
    reflow_pairs: int = 2048         # 2: reflow (Liu et al. 2022): noise -> sample pairs of the stage-1 model
    reflow_teacher_steps: int = 25   # Euler steps that make each pair's sample
    reflow_steps: int = 1000         # training steps on the straight paths between the pairs
    batch_size: int = 32             # both stages in 9 minutes on a 2-core AVX512-BF16 CPU (docs/experiments.md)
    lr: float = 3e-4
    sample_steps: int = 2            # what sample.py and the studio use for the distilled model by default


@dataclass
class ControlConfig:
    """09_control.py: a box-path control branch (ControlNet, scaled down) trained on a frozen flow or ddpm DiT."""
    base: str = ""                   # the frozen dit.pt; its run's latents.pt beside it
    blocks: int = 2                  # a trainable copy of the DiT's first k blocks, each feeding its block
    steps: int = 1500                # 0.4 s a step here (bf16, one busy core): 10 minutes
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 50
    ema_decay: float = 0.99
    caption_dropout: float = 0.1     # as dit.caption_dropout: guidance with the path still needs "no caption"


@dataclass
class Config:
    out_dir: str = "runs/tiny"
    seed: int = 0
    device: str = "auto"             # auto (cuda, then mps, then cpu) | cpu | cuda | mps
    dtype: str = "bf16"              # bf16 | fp16 | fp32
    clip_grad: float = 1.0
    # 0: the step counts of the config. M > 0: a timing probe at the start of each stage sizes its steps (and
    # each phase's) so that the whole run ends within M minutes on this machine; the counts go into the checkpoint
    budget_minutes: float = 0.0
    budget_vae: float = 0.3          # the VAE stage's share of budget_minutes when both stages run
    data: DataConfig = field(default_factory=DataConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    dit: DiTConfig = field(default_factory=DiTConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    control: ControlConfig = field(default_factory=ControlConfig)


CHOICES = {"dtype": ("bf16", "fp16", "fp32"), "device": ("auto", "cpu", "cuda", "mps"),
           "data.on_bad": ("skip", "error"),
           "vae.time_compress_at": ("last", "first"), "vae.time_expand_at": ("first", "last"),
           "vae.norm": ("frame", "clip"), "vae.bottleneck": ("kl", "fsq"),
           "dit.objective": ("ddpm", "flow", "pyramid"), "dit.arch": ("cogvideox", "hunyuan"),
           "dit.attention": ("full", "factorized"), "dit.t_sampling": ("uniform", "logit_normal"),
           "dit.ddpm_sampler": ("ddim", "ddpm"), "dit.flow_solver": ("euler", "heun"),
           "dit.compile": ("false", "true", "auto")}
RANGES = {"dit.lr_decay": (0.0, 1.0), "dit.images": (0.0, 0.9), "vae.images": (0.0, 0.9),
          "budget_minutes": (0.0, 1e6), "budget_vae": (0.01, 0.99), "dit.i2v_drop": (0.0, 1.0),
          "dit.sample_cfg_rescale": (0.0, 1.0), "dit.history_noise": (0.0, 0.99), "dit.caption_dropout": (0.0, 1.0),
          "dit.ema_decay": (0.0, 1.0), "data.paraphrase": (0.0, 1.0), "control.caption_dropout": (0.0, 1.0)}


def config_from_dict(saved):
    """A config dict saved in a checkpoint, checked and laid over today's defaults, as a dict like the saved one."""
    cfg = Config()
    try:
        merge(cfg, saved, "the checkpoint's config")
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    return dataclasses.asdict(cfg)


def coerce(key, value, kind):
    """value as type `kind`, or a ValueError that names the key."""
    if getattr(kind, "__origin__", None) is list:
        if not isinstance(value, list):  # frames: 9 where a list is expected means [9]
            value = [value]
        return [coerce(f"{key}[{i}]", v, kind.__args__[0]) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(kind):  # a phase: key: value pairs over the defaults
        if not isinstance(value, dict):
            raise ValueError(f"config key '{key}' needs key: value pairs, got {value!r}")
        section = kind()
        merge(section, value, "the config", key + ".")
        return section
    if kind is str and isinstance(value, bool) and key in CHOICES:  # dit.compile: true, false or auto
        value = str(value).lower()
    if kind is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise ValueError(f"config key '{key}' must be {kind.__name__}, got {value!r} ({type(value).__name__})")
    if key in CHOICES and value not in CHOICES[key]:
        raise ValueError(f"config key '{key}' must be one of {CHOICES[key]}, got {value!r}")
    if key in RANGES and not RANGES[key][0] <= value <= RANGES[key][1]:
        raise ValueError(f"config key '{key}' must be in [{RANGES[key][0]}, {RANGES[key][1]}], got {value!r}")
    return value


def merge(cfg, updates, source, prefix=""):
    """Write a (nested) dict of updates into the dataclass cfg, checking every key and type."""
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    for name, value in updates.items():
        key = prefix + name
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f" (known: {', '.join(fields)})"
            raise ValueError(f"unknown config key '{key}' in {source}{hint}")
        current = getattr(cfg, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"config key '{key}' in {source} is a section and needs key: value pairs")
            merge(current, value, source, key + ".")
        else:
            setattr(cfg, name, coerce(key, value, fields[name].type))


def parse_args(argv=None, description=None):
    """(Config, args) from --config and --section.key=value flags; a mistake is a one-line `error: ...`."""
    p = ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML file over the defaults, e.g. tiny.yaml")
    p.add_argument("--stage", default="all", choices=["all", "vae", "dit"])
    p.add_argument("--resume", action="store_true", help="continue from the checkpoints in out_dir")
    args, rest = p.parse_known_args(argv)
    args.given = set()  # the keys set on the command line: a budget never rescales a step count given there
    cfg = Config()
    try:
        if args.config:
            try:
                with open(args.config) as f:
                    text = yaml.safe_load(f) or {}
            except OSError as e:
                raise ValueError(f"cannot read config file {args.config}: {e.strerror}") from None
            except yaml.YAMLError as e:
                raise ValueError(f"config file {args.config} is not valid YAML: {str(e).splitlines()[0]}") from None
            if not isinstance(text, dict):
                raise ValueError(f"config file {args.config} must hold section: key: value pairs")
            merge(cfg, text, args.config)
        for flag in rest:  # --section.key=value, the value parsed as YAML (numbers, lists, true/false)
            if not flag.startswith("--") or "=" not in flag:
                raise ValueError(f"cannot parse argument {flag!r}: overrides look like --dit.lr=3e-4")
            key, value = flag[2:].split("=", 1)
            args.given.add(key)
            *sections, name = key.split(".")
            try:
                update = {name: yaml.safe_load(value)}
            except yaml.YAMLError:
                update = {name: value}  # a plain string, e.g. a regular expression
            for section in reversed(sections):
                update = {section: update}
            merge(cfg, update, "the command line")
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    return cfg, args


def check_phases(cfg, world, fail):
    """dit.phases and dit.images: every shape a phase trains on must suit the VAE, the DiT and the data."""
    d, v = cfg.dit, cfg.vae
    if (d.phases or d.images) and d.sequence_parallel > 1:
        fail("dit.phases and dit.images mix shapes in a step, which dit.sequence_parallel does not split: use one")
    space, tc = v.space_compression, v.time_compression
    grid = d.patch * 2 ** (d.pyramid_stages - 1 if d.objective == "pyramid" else 0)
    for i, phase in enumerate(schedule.resolve_phases(cfg)):
        key = f"dit.phases[{i}]" if d.phases else "dit"
        if d.phases and d.phases[i].steps < 1:
            fail(f"{key} needs steps >= 1 (each phase: steps, and optionally frames, size, batch_size, images)")
        for f in phase["frames"]:
            if f < 2 or (f - 1) % tc or f > cfg.data.frames:
                fail(f"{key}.frames={f}: clips take 1 + {tc}k frames (vae.time_compression={tc}), at least "
                     f"{1 + tc} and at most data.frames={cfg.data.frames}; images come from dit.images")
            if d.objective != "pyramid" and (1 + (f - 1) // tc) % d.patch_t:
                fail(f"{key}.frames={f}: {1 + (f - 1) // tc} latent frames are not divisible by dit.patch_t")
        size = phase["size"]
        if size > cfg.data.size or size % space or (size // space) % grid:
            fail(f"{key}.size={size} must be at most data.size={cfg.data.size}, divisible by the VAE's space "
                 f"compression {space}, and give a latent divisible by {grid}")
        if not 0 <= phase["images"] <= 0.9:
            fail(f"{key}.images={phase['images']} must be in [0, 0.9]: the share of the step's tokens for images")
        for b in schedule.step_buckets(phase, cfg, world // d.sequence_parallel):
            if b.count > d.videos:
                fail(f"{key}: a step takes {b.count} {b.kind}s of {b.frames} frame(s), more than dit.videos="
                     f"{d.videos} in the latent cache")


def check_config(cfg, args, world):
    """Everything that can be checked before work, each a one-line error naming the key and what it needs."""
    data, v, d = cfg.data, cfg.vae, cfg.dit

    def fail(message):
        raise SystemExit(f"error: {message}")
    tc = v.time_compression
    for key, frames in (("data.frames", data.frames), ("vae.frames", v.frames), ("vae.val_frames", v.val_frames)):
        if frames < 1 or (frames - 1) % tc:
            fail(f"{key}={frames}: the causal VAE with vae.time_compression={tc} takes 1 + {tc}k frames "
                 f"(1, {1 + tc}, {1 + 2 * tc}, ...)")
    space = v.space_compression
    if data.size % space:
        fail(f"data.size={data.size} must be divisible by the VAE's space compression {space} "
             f"(vae.patch x 2 per level after the first)")
    grid = d.patch * 2 ** (d.pyramid_stages - 1 if d.objective == "pyramid" else 0)
    if (data.size // space) % grid:
        fail(f"the {data.size // space}x{data.size // space} latent must be divisible by {grid}: dit.patch"
             + (" x 2^(dit.pyramid_stages - 1)" if d.objective == "pyramid" else ""))
    levels, time_levels = len(v.channels) - 1, tc.bit_length() - 1
    for key, value, default in (("time_compress_at", v.time_compress_at, "last"),
                                ("time_expand_at", v.time_expand_at, "first")):
        if value != default and time_levels == levels:
            fail(f"vae.{key}={value} builds the same network as {default}: all {levels} level(s) of vae.channels "
                 f"change time (vae.time_compression={tc}); where time changes is a choice with more levels")
    if d.patch_t > 1 and (d.objective == "pyramid" or any(p["images"] > 0 for p in schedule.resolve_phases(cfg))):
        fail(f"dit.patch_t={d.patch_t} cuts latent frames into pairs, but "
             + ("the pyramid denoises one latent frame at a time" if d.objective == "pyramid" else
                "an image (dit.images) is one latent frame") + ": use dit.patch_t=1")
    if d.objective != "pyramid" and (1 + (data.frames - 1) // tc) % d.patch_t:
        fail(f"{1 + (data.frames - 1) // tc} latent frames are not divisible by dit.patch_t={d.patch_t}")
    tokens = (1 + (data.frames - 1) // tc) // d.patch_t * (data.size // space // d.patch) ** 2
    if tokens % d.sequence_parallel:
        fail(f"{tokens} video tokens do not split over dit.sequence_parallel={d.sequence_parallel} ranks")
    for key, n in (("vae.context_parallel", v.context_parallel), ("dit.sequence_parallel", d.sequence_parallel)):
        if n < 1 or world % n:
            fail(f"{key}={n} must divide the {world} rank(s) of this run (torchrun --nproc_per_node)")
    sp = d.sequence_parallel
    if sp > 1 and (d.objective == "pyramid" or d.compile == "true" or d.fsdp or d.attention != "full" or d.heads % sp):
        fail(f"dit.sequence_parallel={sp} needs the flow or ddpm objective, full attention, dit.heads divisible "
             f"by {sp}, and neither dit.compile nor dit.fsdp")
    if d.i2v and d.objective == "pyramid":
        fail("dit.i2v is for the flow and ddpm objectives: the pyramid takes an image as its first history frame "
             "(sample.py --image) without it")
    if d.i2v and v.norm == "clip":  # CogVideoX encodes the image alone; the cache holds whole clips' latents
        fail("dit.i2v trains on each clip's first latent frame as the image, which vae.norm=clip computes from "
             "the later frames too, while sampling encodes the image alone: use vae.norm=frame")
    if d.fsdp and d.compile == "true":
        fail("dit.fsdp runs eagerly: set dit.compile=false")
    for key, section, ranks in (("vae", v, world), ("dit", d, world // sp)):  # ranks of one sequence share a batch
        if section.batch_size % (ranks * section.grad_accum):
            fail(f"{key}.batch_size={section.batch_size} must split evenly over {ranks} data-parallel rank(s) x "
                 f"{key}.grad_accum={section.grad_accum} micro-steps")
    if d.videos < d.batch_size:
        fail(f"dit.videos={d.videos} is fewer than one batch (dit.batch_size={d.batch_size})")
    check_phases(cfg, world, fail)
    if cfg.budget_minutes and d.fsdp:
        fail("budget_minutes times the run with a probe that puts the weights back, which FSDP's shards do not "
             "support: set dit.fsdp=false or budget_minutes=0")
    if data.paraphrase and data.dataset != "moving_mnist":
        fail("data.paraphrase re-words Moving MNIST's captions; a video folder's captions are its own: set it to 0")
    if any(a not in AUGMENTATIONS for a in data.augment):
        fail(f"data.augment={data.augment}: each must be one of {AUGMENTATIONS}")
    if "flip" in data.augment:
        print("warning: data.augment flip mirrors the digits while their captions still name them: a mirrored 3 "
              "trains as a 3 (it is there to measure that harm)", file=sys.stderr)
    if data.dataset == "moving_mnist" and data.channels != 1:
        fail(f"Moving MNIST is grayscale: data.channels must be 1, got {data.channels}")
    if data.dataset != "moving_mnist" and not os.path.isdir(data.dataset):
        fail(f"data.dataset={data.dataset!r}: no such folder (moving_mnist, or a folder of name.gif + name.txt)")
    vae_path = d.vae_ckpt or os.path.join(cfg.out_dir, "vae.pt")
    if args.stage == "dit" and not os.path.isfile(vae_path):
        fail(f"the dit stage needs a trained VAE and found none at {vae_path}: "
             "run `--stage vae` first (or the default `--stage all`)")
    for stage in ("vae", "dit"):
        existing = os.path.join(cfg.out_dir, f"{stage}.pt")
        if args.stage in ("all", stage) and os.path.isfile(existing) and not args.resume:
            fail(f"{existing} exists: pass --resume to continue it, or set --out_dir to start afresh")
