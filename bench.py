"""Benchmarks that fill the README's results table and docs/.

    python bench.py quality                      # the judge's ceiling: real validation videos
    python bench.py quality --ckpt OUT/dit.pt    # + generated videos for the 20 one- and 20 two-digit prompts
    python bench.py speed [--config tiny.yaml]   # throughput, GFLOP/s against the matmul peak, memory
    python bench.py compare --run OUT            # ddpm vs flow vs pyramid at equal wall time on OUT's latents
    python bench.py compare --run OUT --variant a='--dit.depth=4' --variant b='--dit.depth=8'   # any variants
    python bench.py compare --vae-minutes 4 --variant kl= --variant fsq='--vae.bottleneck=fsq'  # VAE designs
    python bench.py control path --ckpt OUT/dit.pt --control C.pt  # also edit, prompts: 09_control.py's figures
    python bench.py latency --ckpt OUT/dit.pt --steps 8 4 2 1   # seconds per video at batch 1, and in the studio
    python bench.py scaling --run OUT [--quick]  # 10_scaling.py: DiTs of 5 sizes on OUT's latents, L(C), N_opt(C)

quality: a judge that knows nothing of the generator, in data/judge.py. A small CNN, trained on the shipped
MNIST digits 0-7999 (validated on 8000-9999) and cached in runs/bench/judge.pt, reads the digit in every
frame; the motion axis comes from the digit's trajectory. Over the 20 single-digit prompts x N samples it
reports digit, axis and both-correct accuracy, frame consistency, and a Frechet distance between judge
features of the scored videos and of real validation videos for the same prompts (FID's formula, Heusel
et al. 2017, with the judge in place of Inception); over 20 two-digit prompts, both digits and their axes.

speed: a training step of the config's VAE and DiT (fp32, bf16 autocast) against the matmul peak of the
same run, VAE inference in one pass and in chunks, each objective's step and sampling time, pyramid token
counts, and diffusers' CogVideoX modules at matched sizes when installed -> runs/bench/speed.json.
compare (the three objectives by default): variants of a recipe, each the run's train.py flags plus its own,
trained for the same wall time (train.py's --budget_minutes) on a finished run's cached latents, or each
on its own VAE trained first (--vae-minutes), then scored by quality() -> runs/bench/<command>.json.
control: 09_control.py's figures (box-path error, masked-sampling edits, phrasings) -> control_<part>.json.
"""
import dataclasses
import datetime
import importlib
import json
import os
import platform
import shutil
import sys
import time

import torch
import torch.nn.functional as F
from einops import rearrange
from torch.utils.flop_counter import FlopCounterMode

import sample
import train
from data import schedule
from data.config import native_bf16
from data.judge import PROMPTS, judge, load_judge, print_quality, quality, read_videos, real_videos

vae_lib, parallel = sample.vae_lib, train.parallel
peak_mib = parallel.peak_mib
dit_flops = importlib.import_module("10_scaling").dit_flops  # matmul FLOPs of one forward, counted by hand

# ----------------------------------------------------------------------------- quality
def load_generator(ckpt, *sample_flags):
    """generate_fn(prompts, seed) -> videos (N, 1, T, 64, 64), and reconstruct_fn(videos) -> videos, from a checkpoint.

    Sampling goes through sample.py with its flags (e.g. "--cfg", "4"), its defaults otherwise, so the
    table scores exactly what `python sample.py --ckpt CKPT FLAGS` writes."""
    generate_fn, vae, config = sample.sampler(sample.parser().parse_args(["--ckpt", ckpt, *sample_flags]))
    device = vae.scaling_factor.device

    @torch.no_grad()
    def reconstruct_fn(videos):  # the VAE's ceiling: no video this VAE decodes can score above it
        with sample.autocast(device, config["dtype"]):
            return torch.cat([vae.decode(vae.encode(v.to(device)).mode()).float().cpu() for v in videos.split(32)])

    return generate_fn, reconstruct_fn


def run_quality(args):
    start = time.perf_counter()
    model, info = load_judge(os.path.join(args.out, "judge.pt"), retrain=args.retrain)
    print(f"judge: {info['path']} (trained in {info['train_s']} s): MNIST digits 8000-9999 "
          f"val accuracy {info['val_acc']:.4f} clean, {info['val_acc_degraded']:.4f} degraded")
    generate_fn = reconstruct_fn = None
    made = []  # (prompts, generated videos), for --tail's rows
    if args.ckpt:  # load_generator's, with --i2v's images
        flags = [f for name in ("steps", "cfg", "cfg_rescale", "shift", "solver", "sampler", "dtype", "length")
                 if getattr(args, name) is not None for f in ("--" + name.replace("_", "-"), str(getattr(args, name)))]
        sample_fn, reconstruct_fn = load_generator(args.ckpt, *[f.replace("--length", "--frames") for f in flags])

        def generate(prompts, seed):
            # --i2v: each prompt's first frame from a validation video that no other row of the table uses
            images = real_videos(prompts, 1, skip=2 * args.n + seed - args.seed) if args.i2v else None
            made.append((prompts, sample_fn(prompts, seed, images=images).float().cpu()))
            return made[-1][1]
        generate_fn = generate
    one_digit_model = args.ckpt and sample.load_checkpoint(args.ckpt, "dit")["config"]["data"]["max_digits"] == 1
    rows = quality(generate_fn, args.n, args.frames, args.seed, model, reconstruct_fn, two_digits=not one_digit_model)
    if args.tail and made:  # a longer video's last frames against its first, trained-length ones (#22)
        videos, prompts = torch.cat([v for p, v in made if p == PROMPTS]), PROMPTS * args.n
        head = sample.load_checkpoint(args.ckpt, "dit")["config"]["data"]["frames"]
        for name, clip in ((f"generated, frames 1-{head}", videos[:, :, :head]),
                           (f"generated, last {args.tail}", videos[:, :, -args.tail:])):
            reference = read_videos(model, real_videos(prompts, clip.shape[2]))["features"]
            rows[name] = judge(clip, prompts, model, reference)
    print_quality(rows, info)
    report = dict(command=args.command_line, date=datetime.date.today().isoformat(), machine=machine(),
                  judge={k: v for k, v in info.items() if k != "path"}, n_per_prompt=args.n, seed=args.seed, rows=rows)
    write_report(report, os.path.join(args.out, "quality.json"), start)


def write_report(report, path, begin):
    """Add the seconds since begin to the report, write it as JSON and say where."""
    report["seconds"] = round(time.perf_counter() - begin, 1)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    print(f"\nwrote {path} ({report['seconds']} s in all)")


# ----------------------------------------------------------------------------- speed
PRECISIONS = ("fp32", "bf16")  # sample.autocast's names: fp32 runs without autocast, bf16 under bf16 autocast
OBJECTIVES = ("ddpm", "flow", "pyramid")


def seconds(fn, device, reps, reduce=min, warmup=True):
    """Wall seconds of reps calls of fn, reduced (default: the best, as on a shared machine noise only adds)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None  # CUDA runs asynchronously
    if warmup:
        fn()  # the first call allocates, picks kernels and fills caches
    times = []
    for _ in range(reps):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return reduce(times)


def backward_step(model, loss_fn, device, precision, optimizers=()):
    """fn() running one training step: loss_fn() under autocast, backward, the optimizers' updates if given
    (speed leaves them out: they cost the same whatever the model computes), then the gradients dropped."""

    def step():
        with sample.autocast(device, precision):
            loss = loss_fn()
        loss.backward()  # outside autocast, as in train.py
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
    return step


def params(module):
    return sum(p.numel() for p in module.parameters())


def dit_inputs(cfg, vae, batch, device):
    """The config's DiT and random training inputs (x0, t, ids, mask) for latents of the config's videos:
    (latent channels, 1 + (frames - 1) / tc, size / s, size / s)."""
    s = cfg.data.size // vae.space_compression
    x0 = torch.randn(batch, cfg.vae.latent_channels, 1 + (cfg.data.frames - 1) // vae.time_compression, s, s,
                     device=device)
    ids = torch.randint(2, cfg.dit.vocab_size, (batch, cfg.dit.text_len), device=device)
    model = sample.build_dit(dataclasses.asdict(cfg.dit), cfg.dit.vocab_size, x0.shape[1]).to(device)
    return model, x0, 1000 * torch.rand(batch, device=device), ids, torch.ones_like(ids, dtype=torch.bool)


def table(title, rows):
    """Print rows {name: {column: value}} under a title; a missing value prints blank."""
    def cell(v):
        if isinstance(v, float):
            return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
        return f"{v:,}" if isinstance(v, int) else str(v)
    columns = list(dict.fromkeys(c for r in rows.values() for c in r))
    lines = [[""] + [c.replace("_per_", "/").replace("_", " ") for c in columns]]
    lines += [[name] + [cell(r[c]) if c in r else "" for c in columns] for name, r in rows.items()]
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns) + 1)]
    print(f"\n{title}")
    for line in lines:
        print(line[0].ljust(widths[0]) + "".join(x.rjust(w + 2) for x, w in zip(line[1:], widths[1:])))


def diffusers_steps(cfg, x, model, x0, t, device):
    """diffusers' CogVideoX VAE and transformer at our sizes: {name: (module, loss_fn)} for backward_step.

    Matched: widths, depth, heads, latent channels, patch, compression, token count, the expert adaLN (two
    norms of 6 D-vectors, our 12) and RoPE (ours, as cos/sin tables). Not matched exactly. VAE: no pixel-
    unshuffle stem, so it gets the video unshuffled into patch^2 channels to run at our resolutions; two
    mid ResNets to our one, one more per decoder level, decoder norms conditioned on z, GroupNorms over
    all frames (ours: per frame); it always streams 8 frames / 2 latent frames through a conv cache. DiT:
    it reads precomputed text embeddings (CogVideoX: T5) where ours runs its text encoder (text_depth
    layers over text_len tokens, in our time); no padding mask; timestep features dim wide, ours 256."""
    import diffusers
    v, d, c = cfg.vae, cfg.dit, cfg.data.channels * cfg.vae.patch ** 2
    vae = diffusers.AutoencoderKLCogVideoX(
        in_channels=c, out_channels=c, down_block_types=("CogVideoXDownBlock3D",) * len(v.channels),
        up_block_types=("CogVideoXUpBlock3D",) * len(v.channels), block_out_channels=tuple(v.channels),
        latent_channels=v.latent_channels, layers_per_block=v.layers_per_block, norm_num_groups=8,
        temporal_compression_ratio=v.time_compression).to(device)
    x = rearrange(x, "b c t (h p) (w q) -> b (c p q) t h w", p=v.patch, q=v.patch)
    B, C, T, H, W = x0.shape
    p, pt = model.patch, model.patch_t
    dit = diffusers.CogVideoXTransformer3DModel(
        num_attention_heads=d.heads, attention_head_dim=d.dim // d.heads, in_channels=C, out_channels=C,
        time_embed_dim=d.dim, text_embed_dim=d.dim, num_layers=d.depth, patch_size=p,
        patch_size_t=None if pt == 1 else pt, max_text_seq_length=d.text_len,
        use_rotary_positional_embeddings=True).to(device)
    pos = torch.cat([sample.dit_lib.frame_positions(f, H // p, W // p, H // p, W // p, device) for f in range(T // pt)])
    angles = model.rope(pos).repeat_interleave(2, -1)  # (N, head_dim): both rotate interleaved channel pairs
    rope, text = (angles.cos(), angles.sin()), torch.randn(B, d.text_len, d.dim, device=device)
    frames_first = x0.transpose(1, 2)  # their transformer takes (B, T, C, H, W)
    return {"VAE": (vae, lambda: F.mse_loss(vae(x, sample_posterior=True).sample.float(), x)),
            "DiT": (dit, lambda: dit(frames_first, text, t, image_rotary_emb=rope).sample.float().square().mean())}


def run_speed(args):
    begin = time.perf_counter()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg, _ = train.parse_args(["--config", args.config, *args.overrides])
    torch.manual_seed(0)
    report = dict(command=args.command_line, date=datetime.date.today().isoformat(), machine=machine(),
                  device=str(device), config=args.config, reps=args.reps)

    # bf16 where the hardware has it: an emulated bf16 matmul on an AVX2-only CPU takes minutes, not seconds
    precisions = PRECISIONS if native_bf16(device) else ("fp32",)
    fast = report["fast_precision"] = precisions[-1]
    if fast == "fp32":
        print("this CPU has no native bf16 (AVX512-BF16 or AMX): timing fp32 only")

    def figures(module, loss_fn, precision, **counts):  # one training step: seconds, throughputs, peak memory
        step = backward_step(module, loss_fn, device, precision)
        s = seconds(step, device, args.reps)
        return dict(step_s=s, **{f"{k}_per_s": n / s for k, n in counts.items()}, peak_MiB=peak_mib(step, device))

    # ---- the yardstick: a big square matmul, about the best any model here can reach
    n = args.matmul or (8192 if device.type == "cuda" else 2048)
    peak = report["matmul_gflops"] = {}
    for p in precisions:
        a, b = (torch.randn(n, n, device=device, dtype=torch.float32 if p == "fp32" else torch.bfloat16) for _ in "ab")
        peak[p] = 2 * n ** 3 / seconds(lambda: a @ b, device, args.reps) / 1e9
    table(f"matmul peak, {n} x {n} x {n}", {p: {"GFLOP/s": g} for p, g in peak.items()})

    # ---- VAE: one training step (MSE reconstruction through the sampled latent) on the config's clips
    vae = sample.build_vae(dataclasses.asdict(cfg)).to(device)
    b, t, size = args.batch or cfg.vae.batch_size, cfg.vae.frames, cfg.data.size
    x = torch.rand(b, cfg.data.channels, t, size, size, device=device) * 2 - 1
    report["vae"] = dict(params=params(vae), batch=b, frames=t, size=size)
    rows = report["vae_train"] = {p: figures(vae, lambda: F.mse_loss(vae(x)[0].float(), x), p, videos=b, frames=b * t)
                                  for p in precisions}
    table(f"VAE training step: {params(vae) / 1e6:.2f}M parameters, batch {b} x {t} x {size} x {size}", rows)

    # ---- VAE inference: encode + decode of one video, in one pass or streamed in chunks of latent frames
    rows = report["vae_inference"] = {}
    for frames in args.vae_frames:
        video = torch.rand(1, cfg.data.channels, frames, size, size, device=device) * 2 - 1
        for chunk in (None, args.chunk):
            @torch.no_grad()
            def codec(video=video, chunk=chunk):
                with sample.autocast(device, fast):
                    vae.decode(vae.encode(video, chunk).mode(), chunk)
            s = seconds(codec, device, args.reps)
            rows[f"{frames} frames, " + (f"chunks of {chunk}" if chunk else "one pass")] = dict(
                s=s, frames_per_s=frames / s, peak_MiB=peak_mib(codec, device))
    table(f"VAE encode + decode of one video, {fast}", rows)

    # ---- DiT: one training step on latents of the config's videos, against the analytic FLOP count
    d, b = cfg.dit, args.batch or cfg.dit.batch_size
    model, x0, t, ids, mask = dit_inputs(cfg, vae, b, device)
    (C, T, H, W), p, pt, L = x0.shape[1:], model.patch, model.patch_t, d.text_len
    n_video = T // pt * (H // p) * (W // p)
    flops = 3 * b * dit_flops(d.dim, d.depth, d.text_depth, L, n_video, C * pt * p * p)
    if d.arch != "cogvideox":  # no hand count of HunyuanVideo's blocks: torch's, which matches dit_flops (tests)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x0, t, ids, mask)
        flops = 3 * counter.get_total_flops()
    report["dit"] = dict(params=params(model), batch=b, latent=[C, T, H, W], tokens=L + n_video,
                         gflop_per_step=flops / 1e9)
    rows = report["dit_train"] = {}
    for prec in precisions:  # any scalar of the output will do: backward costs the same
        r = figures(model, lambda: model(x0, t, ids, mask).float().square().mean(), prec,
                    samples=b, tokens=b * (L + n_video))
        gflops, mem = flops / r["step_s"] / 1e9, r.pop("peak_MiB")  # memory stays the last column
        rows[prec] = dict(r, GFLOP_per_s=gflops, pct_of_peak=100 * gflops / peak[prec], peak_MiB=mem)
    table(f"DiT training step: {params(model) / 1e6:.2f}M parameters, batch {b}, latents {C}x{T}x{H}x{W}, "
          f"{L} + {n_video} tokens, {flops / 1e9:.3g} GFLOP", rows)
    if device.type == "cpu":  # why 02_dit.attention is written out on a CPU: the same step through PyTorch's kernel
        dit_module = sys.modules[type(model).__module__]
        written_out = dit_module.attention
        dit_module.attention = lambda q, k, v, attn_mask=None: F.scaled_dot_product_attention(q, k, v, attn_mask)
        sdpa = figures(model, lambda: model(x0, t, ids, mask).float().square().mean(), fast)["step_s"]
        dit_module.attention = written_out
        rows = report["attention"] = {"02_dit.attention": dict(step_s=rows[fast]["step_s"]),
                                      "F.scaled_dot_product_attention": dict(step_s=sdpa)}
        table(f"the same DiT training step, {fast}, by attention kernel", rows)

    # ---- objectives: the same DiT trained and sampled through each (pyramid: sample_steps per stage)
    n = min(20, b)  # sampling batch: the quality table samples its 20 prompts at once
    null_ids, null_mask = sample.diffusion.null_caption(n, L, device)
    rows = report["objectives"] = {}
    for name in OBJECTIVES:
        objective = sample.build_objective(dataclasses.asdict(d) | {"objective": name})

        def draw(steps):
            with sample.autocast(device, fast):
                objective.sample(model, (n, C, T, H, W), dict(ids=ids[:n], mask=mask[:n]),
                                 uncond=dict(ids=null_ids, mask=null_mask), steps=steps, cfg=d.sample_cfg)
        rows[name] = figures(model, lambda: objective.loss(model, x0, dict(ids=ids, mask=mask)), fast, samples=b)
        draw(1)  # the warm-up at one step: a whole sampling run is long
        rows[name]["sample_s_per_video"] = seconds(lambda: draw(d.sample_steps), device, 1, warmup=False) / n
    table(f"objectives, {fast}: training step at batch {b}; sampling, {d.sample_steps} steps with guidance, "
          f"batch {n}", rows)

    # ---- pyramid: video tokens per transformer call (text left out), against the full sequence
    rows = report["pyramid_tokens"] = {}
    sizes = {f"{args.config}: {T}x{H}x{W}, K={d.pyramid_stages}": (T, H, W, d.pyramid_stages, p),
             "CogVideoX 49x480x720: 13x60x90, K=3": (13, 60, 90, 3, 2)}
    for name, (t_, h_, w_, k_, p_) in sizes.items():
        per_stage, per_step, full = sample.pyramid.token_counts(t_, h_, w_, k_, p_)
        rows[name] = dict(per_frame_by_stage=str(per_stage), longest_call=per_step[-1][-1],
                          mean_call=sum(map(sum, per_step)) / (t_ * k_), full_sequence=full,
                          full_over_longest=full / per_step[-1][-1])
    table(f"pyramid tokens per call, patch {p} (CogVideoX: 2)", rows)

    # ---- diffusers' CogVideoX modules at matched sizes, the same steps in the same run
    try:
        import diffusers  # optional: not in requirements.txt
    except ImportError:
        report["diffusers"] = None
        print("\ndiffusers is not installed: the comparison with its CogVideoX modules was skipped")
    else:
        if cfg.dit.arch != "cogvideox" or cfg.vae.bottleneck != "kl":  # its CogVideoX modules match only ours
            report["diffusers"] = None
            print("\nthe comparison with diffusers' CogVideoX modules needs dit.arch cogvideox and vae.bottleneck kl")
            return write_report(report, os.path.join(args.out, "speed.json"), begin)
        rows = report["diffusers"] = {}
        for name, (module, loss_fn) in diffusers_steps(cfg, x, model, x0, t, device).items():
            ours, mine = (vae, report["vae_train"]) if name == "VAE" else (model, report["dit_train"])
            for prec in precisions:
                theirs = figures(module, loss_fn, prec)
                rows[f"{name} {prec}"] = dict(
                    params_ours=params(ours), params_theirs=params(module), ours_s=mine[prec]["step_s"],
                    theirs_s=theirs["step_s"], speed_ours_over_theirs=theirs["step_s"] / mine[prec]["step_s"],
                    peak_MiB_ours=mine[prec]["peak_MiB"], peak_MiB_theirs=theirs["peak_MiB"])
        table(f"training step against diffusers {diffusers.__version__} CogVideoX at matched sizes "
              "(speed ours/theirs > 1: ours is faster)", rows)
    write_report(report, os.path.join(args.out, "speed.json"), begin)


# ----------------------------------------------------------------------------- compare
def vae_figures(cfg, vae, device, out, reps=3):
    """The VAE design table's columns (#23): validation PSNR on 17-frame videos, encode + decode seconds of one,
    causality (the largest change of any latent frame but the last when only the last video frame changes: 0
    for a causal VAE) and the gap between chunked encode (1 latent frame per chunk) and the single pass."""
    psnr, _ = train.validate_vae(cfg, vae, device, os.path.join(out, "vae_val.gif"))
    x = train.vae_samples(cfg, "val", cfg.vae.val_frames, 4, device)
    with torch.no_grad():
        z = vae.encode(x).mode()
        later = x.clone()
        later[:, :, -1] = torch.rand_like(later[:, :, -1]) * 2 - 1
        leak = (vae.encode(later).mode() - z)[:, :, :-1].abs().max().item()
        try:
            chunk_gap = (vae.encode(x, chunk=1).mode() - z).abs().max().item()
        except ValueError:  # a design that refuses chunks says why in its error
            chunk_gap = float("nan")
        codec_s = seconds(lambda: vae.decode(vae.encode(x[:1]).mode()), device, reps)
    return dict(val_psnr=psnr, codec_s=codec_s, causal_leak=leak, chunk_gap=chunk_gap)


def run_compare(args):
    """Variants of a recipe, each trained for the same wall time and judged: by default the three objectives on
    a finished run's latents (--run); with --vae-minutes, each variant trains its own VAE first (VAE designs)."""
    begin, run, name_of = time.perf_counter(), args.run_dir, args.command
    variants = {}
    for v in args.variant or [f"{o}=--dit.objective={o}" for o in args.objectives]:
        if "=" not in v:
            raise SystemExit(f"error: --variant {v!r}: expected NAME=FLAGS, e.g. hunyuan='--dit.arch=hunyuan'")
        name, flags = v.split("=", 1)
        variants[name] = args.flags.split() + flags.split()
    if args.vae_minutes:
        config = args.config
    else:
        if not run:
            raise SystemExit("error: give --run OUT (a finished run whose latents the variants share), "
                             "or --vae-minutes M to train each variant's own VAE")
        for f in ("config.yaml", "vae.pt", "latents.pt", "tokenizer.json"):
            if not os.path.isfile(os.path.join(run, f)):
                raise SystemExit(f"error: {run} is not a finished run: {f} is missing (train.py writes it)")
        config = os.path.join(run, "config.yaml")  # the run's resolved config: the latent cache's key will match
    judge_model, info = load_judge(os.path.join(args.out, "judge.pt"))
    vae_ckpt = sample.load_checkpoint(os.path.join(run, "vae.pt"), "vae") if run else None
    run_vae = train.fingerprint(vae_ckpt["model"]) if run else None
    if run:  # every latent shape a variant trains on (data/schedule.py), encoded into the run once, first:
        for flags in variants.values():  # the budgeted minutes are then training alone
            cfg, _ = train.parse_args(["--config", config, *flags, f"--out_dir={run}"])
            vae = sample.load_vae(vae_ckpt, sample.pick_device(cfg.device))
            for shape in schedule.shapes(schedule.resolve_phases(cfg), cfg, ranks=1):
                train.cached_latents(cfg, vae, vae_ckpt, 0, 1, vae.scaling_factor.device, *shape)
    rows, judged = {}, {}
    for name, flags in variants.items():
        cfg, _ = train.parse_args(["--config", config, *flags])
        device = sample.pick_device(cfg.device)
        out = os.path.join(args.out, name_of, name)
        ckpt = os.path.join(out, "dit.pt")
        if run and os.path.isfile(ckpt) and train.fingerprint(sample.load_checkpoint(ckpt, "dit")["vae"]) != run_vae:
            print(f"{ckpt} was trained on another run's latents (its VAE differs from {run}'s): training it afresh")
            shutil.rmtree(out)
        if os.path.isfile(ckpt):
            print(f"{ckpt} exists: scoring it as it is (delete {out} to train it afresh)")
        else:
            os.makedirs(out, exist_ok=True)
            # train.py's budget sizes the steps from a probe of its own steps, phases and mixed batches included;
            # eager (no compile minutes); checkpoints and GIFs only at the end
            budget = args.vae_minutes + args.minutes
            if args.vae_minutes:
                stage = ["--stage", "all", f"--budget_vae={args.vae_minutes / budget}", "--vae.ckpt_every=1000000",
                         "--vae.sample_every=1000000"]
            else:
                for f in os.listdir(run):
                    if f.startswith("latents") and f.endswith(".pt") or f == "tokenizer.json":
                        shutil.copy(os.path.join(run, f), out)
                stage = ["--stage", "dit", f"--dit.vae_ckpt={os.path.join(run, 'vae.pt')}"]
            # the variant's flags last: one may move the VAE / DiT split, e.g. --budget_vae=0.2
            train.main(["--config", config, *stage, f"--budget_minutes={budget}", f"--out_dir={out}",
                        "--dit.ckpt_every=1000000", "--dit.sample_every=1000000", "--dit.compile=false", *flags])
        with open(os.path.join(out, "metrics.jsonl")) as f:
            records = [json.loads(line) for line in f]
        row = {}
        for stage_name in ("vae", "dit") if args.vae_minutes else ("dit",):
            log = [r for r in records if r.get("stage") == stage_name and "step_s" in r]
            log = log[max(i for i, r in enumerate(log) if r["step"] == 1):]  # the last run only
            prefix = "vae_" if stage_name == "vae" else ""
            row |= {f"{prefix}steps": len(log), f"{prefix}train_minutes": sum(r["step_s"] for r in log) / 60}
        generate_fn, reconstruct_fn = load_generator(ckpt)
        q = quality(generate_fn, n_per_prompt=args.n, model=judge_model, two_digits=cfg.data.max_digits > 1,
                    reconstruct_fn=reconstruct_fn if args.vae_minutes else None)
        g = judged[name] = q["generated"]
        row |= dict(digit=g["digit"], axis=g["axis"], both=g["both"], two_digits=g.get("two", {}).get("digits"),
                    fd=g["fd"], sample_s_per_video=g["generate_s"] / g["n"])
        if args.vae_minutes:
            vae = sample.load_vae(sample.load_checkpoint(os.path.join(out, "vae.pt"), "vae"), device)
            row |= dict(recon_digit=q["vae"]["digit"], **vae_figures(cfg, vae, device, out))
        rows[name] = row
    rows["real val (judge ceiling)"] = {c: q["real"][c] for c in ("digit", "axis", "both")} | dict(
        two_digits=q["real"]["two"]["digits"], fd=q["real"]["fd"])
    what = f"each variant's VAE {args.vae_minutes} min, then its DiT" if args.vae_minutes else "variants"
    table(f"{what} trained {args.minutes} min each on {run or 'its own VAE'}'s latents; {args.n} samples x 20 one- "
          "and 20 two-digit prompts, sampled and decoded with sample.py's defaults", rows)
    write_report(dict(command=args.command_line, date=datetime.date.today().isoformat(), machine=machine(), run=run,
                      minutes=args.minutes, vae_minutes=args.vae_minutes, variants=variants, n_per_prompt=args.n,
                      judge={k: v for k, v in info.items() if k != "path"}, rows=rows, judged=judged),
                 os.path.join(args.out, f"{name_of}.json"), begin)


# ----------------------------------------------------------------------------- latency
def run_latency(args):
    """One request at a time, as the studio's user makes them: seconds of compute for one video (batch 1,
    sample.generate, best and median of --reps), and 08_serve.py's time from the click (a POST) to the GIF over
    HTTP on this machine, previews off."""
    import threading
    import urllib.request
    begin, device = time.perf_counter(), sample.pick_device(args.device)
    model, objective, vae, tokenizer, config, shape = sample.load(args.ckpt, device)
    d, frames = config["dit"], 1 + vae.time_compression * (shape[1] - 1)
    server, worker = importlib.import_module("08_serve").make_server(args.ckpt, port=0, device=args.device)
    server.RequestHandlerClass.log_message = lambda *a: None  # the polls below would each print a line
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url, rows = "http://%s:%d" % server.server_address[:2], {}

    def click(n):  # POST /generate, then fetch the GIF: what the page waits for
        body = json.dumps(dict(prompt=PROMPTS[0], steps=n, seed=1, preview=False)).encode()
        job = json.loads(urllib.request.urlopen(urllib.request.Request(url + "/generate", body)).read())["id"]
        while urllib.request.urlopen(f"{url}/result/{job}").status != 200:
            time.sleep(0.005)
    try:
        steps = args.steps or [worker.info["steps"]]
        for n in steps:  # every direct timing before any request: the worker's idle threads spin for a while
            def video(k):
                sample.generate(model, objective, vae, tokenizer, [PROMPTS[0]], shape, d["text_len"], n,
                                d["sample_cfg"], k, device, config["dtype"], d["sample_cfg_rescale"])
            times = sorted(seconds(lambda: video(k), device, 1, warmup=k == 0) for k in range(args.reps))
            rows[f"{n} steps"] = dict(best_s=times[0], median_s=times[args.reps // 2], frames_per_s=frames / times[0])
        for n in steps:
            studio = sorted(seconds(lambda: click(n), device, 1, warmup=False) for _ in range(args.reps))
            rows[f"{n} steps"]["studio_median_s"] = studio[args.reps // 2]
    finally:
        server.shutdown(), worker.stop(), server.server_close()
    passes = "one pass a step" if model.g_embed is not None else "two passes a step (guidance)"
    table(f"one {frames}-frame video at a time, {args.ckpt}: {passes}, {torch.get_num_threads()} thread(s)", rows)
    write_report(dict(command=args.command_line, date=datetime.date.today().isoformat(), machine=machine(),
                      ckpt=args.ckpt, threads=torch.get_num_threads(), rows=rows),
                 os.path.join(args.out, "latency.json"), begin)


# ----------------------------------------------------------------------------- control and editing
def run_control(args):
    if args.videos < 1 or args.part == "path" and not args.control:
        raise SystemExit("error: control needs --videos >= 1, and `path` a --control checkpoint (see bench.py --help)")
    importlib.import_module("09_control").bench(args)


# ----------------------------------------------------------------------------- scaling laws
def run_scaling(args):
    """10_scaling.py's exercise on --run's latents -> OUT/scaling/ (--quick: OUT/scaling_quick/), JSON and PNG."""
    importlib.import_module("10_scaling").run_exercise(args.run_dir, args.quick, args.minutes, args.out)


# ----------------------------------------------------------------------------- command line
def machine():
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    return f"{platform.machine()} {platform.system()}, {device}, torch {torch.__version__}"


def main(argv=None):
    parser = sample.ArgumentParser(description="Benchmarks that fill the README's results table and docs/.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=sample.ArgumentParser)
    q = sub.add_parser("quality", help="judge generated videos (digit, axis, consistency, FD) beside real ones")
    q.add_argument("--ckpt", default="", help="DiT checkpoint to sample from; without it only real videos are scored")
    q.add_argument("--n", type=int, default=8, help="samples per prompt (20 one-digit, 20 two-digit prompts)")
    q.add_argument("--frames", type=int, default=17, help="frames of the real videos when no generator sets them")
    q.add_argument("--seed", type=int, default=0, help="generation seeds are seed .. seed + n - 1")
    q.add_argument("--steps", type=int, default=None, help="sampling steps (default: sample.py's)")
    q.add_argument("--cfg", type=float, default=None, help="guidance scale (default: sample.py's)")
    q.add_argument("--cfg-rescale", type=float, default=None, help="guidance rescale phi (sample.py's --cfg-rescale)")
    q.add_argument("--shift", type=float, default=None, help="flow: sampling time shift (sample.py's --shift)")
    q.add_argument("--solver", choices=["euler", "heun"], default=None, help="flow: ODE solver")
    q.add_argument("--sampler", choices=["ddim", "ddpm"], default=None, help="ddpm: DDIM or ancestral")
    q.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None, help="default: the checkpoint's")
    q.add_argument("--i2v", action="store_true",
                   help="image-to-video: each prompt starts from the first frame of a validation video")
    q.add_argument("--length", type=int, default=None, help="frames to generate (sample.py's --frames)")
    q.add_argument("--tail", type=int, default=0,
                   help="also judge the first trained-length frames and the last TAIL frames apart (with --length)")
    q.add_argument("--out", default="runs/bench", help="where judge.pt and quality.json go")
    q.add_argument("--retrain", action="store_true", help="retrain the judge even if judge.pt is cached")
    q.set_defaults(run=run_quality)
    c = sub.add_parser("control", help="09_control.py's figures: box-path control, masked-sampling edits, phrasings")
    c.add_argument("part", choices=["path", "edit", "prompts"],
                   help="path: the digit's distance to a box path, with and without the control branch; edit: "
                        "inpainting, interpolation, outpainting by masked sampling; prompts: phrasings (seen, held "
                        "out, misspelled), guidance scales and negative prompts")
    c.add_argument("--ckpt", required=True, help="a flow or ddpm DiT checkpoint")
    c.add_argument("--control", default="", help="path: the control.pt `09_control.py train` wrote for --ckpt")
    c.add_argument("--videos", type=int, default=100, help="path, edit: one-digit validation videos to follow, edit")
    c.add_argument("--n", type=int, default=8, help="prompts: samples of each of the 20 prompts, per row")
    c.add_argument("--steps", type=int, default=50, help="sampling steps (sample.py's default)")
    c.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the checkpoint's dit.sample_cfg)")
    c.add_argument("--seed", type=int, default=0, help="sample j of a row comes from seed + j")
    c.add_argument("--out", default="runs/bench", help="where judge.pt and control_<part>.json go")
    c.set_defaults(run=run_control)
    lat = sub.add_parser("latency", help="seconds per video at batch 1, directly and through 08_serve.py's studio")
    lat.add_argument("--ckpt", required=True, help="a dit.pt (a distilled one from 07_distill.py too)")
    lat.add_argument("--steps", type=int, nargs="+", default=None, help="default: the checkpoint's (50, or its own)")
    lat.add_argument("--reps", type=int, default=5, help="videos timed at each step count; the best and the median")
    lat.add_argument("--device", choices=["cpu", "auto"], default="cpu")
    lat.add_argument("--out", default="runs/bench", help="where latency.json goes")
    lat.set_defaults(run=run_latency)
    s = sub.add_parser("speed", help="throughput, GFLOP/s against the matmul peak, memory; diffusers beside ours")
    s.add_argument("--config", default="tiny.yaml", help="the VAE, DiT and shapes to time")
    s.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    s.add_argument("--out", default="runs/bench", help="where speed.json goes")
    s.add_argument("--reps", type=int, default=3, help="timed calls of each step after a warm-up; the best counts")
    s.add_argument("--batch", type=int, default=0, help="training batch of VAE and DiT (default: the config's)")
    s.add_argument("--frames", dest="vae_frames", type=int, nargs="+", default=[17, 65], help="VAE inference lengths")
    s.add_argument("--chunk", type=int, default=2, help="latent frames per chunk in chunked VAE inference")
    s.add_argument("--matmul", type=int, default=0, help="n of the n x n x n matmul (default: 8192 CUDA, 2048 CPU)")
    s.add_argument("overrides", nargs="*", help="config overrides after --, e.g. -- --dit.arch=hunyuan")
    s.set_defaults(run=run_speed)
    for command in ("compare",):
        o = sub.add_parser(command, help="variants (default: ddpm, flow, pyramid) trained for the same wall time, "
                                         "then judged")
        o.add_argument("--run", dest="run_dir", default="", help="a finished run whose VAE and latents all share")
        o.add_argument("--variant", action="append", metavar="NAME=FLAGS",
                       help="a variant and its train.py overrides, e.g. hunyuan='--dit.arch=hunyuan'; repeat")
        o.add_argument("--flags", default="",
                       help="train.py overrides of every variant, written --flags='--dtype=fp32 ...'")
        o.add_argument("--objectives", nargs="+", choices=OBJECTIVES, default=list(OBJECTIVES),
                       help="without --variant: one variant per objective")
        o.add_argument("--minutes", type=float, default=5.0, help="DiT training wall time of each variant")
        o.add_argument("--vae-minutes", type=float, default=0.0,
                       help="train each variant's own VAE this long first (VAE designs), from --config")
        o.add_argument("--config", default="tiny.yaml", help="with --vae-minutes: the recipe the variants change")
        o.add_argument("--n", type=int, default=8, help="samples per prompt (20 one-digit, 20 two-digit prompts)")
        o.add_argument("--out", default="runs/bench", help=f"where judge.pt, {command}/ and {command}.json go")
        o.set_defaults(run=run_compare)
    g = sub.add_parser("scaling", help="10_scaling.py: DiTs of 5 sizes on one run's latents; L(C), N_opt(C) fitted")
    g.add_argument("--run", dest="run_dir", default="runs/tiny", help="a run whose latents.pt (or vae.pt) all use")
    g.add_argument("--quick", action="store_true", help="4 small sizes in about 3 minutes (the tests' form)")
    g.add_argument("--minutes", type=float, default=None, help="wall time of all sizes (default 25; --quick 3)")
    g.add_argument("--out", default="runs/bench", help="where scaling/ (or scaling_quick/) goes")
    g.set_defaults(run=run_scaling)
    args = parser.parse_args(argv)
    args.command_line = "python bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if getattr(args, "n", 1) < 1 or getattr(args, "frames", 2) < 2:
        parser.error("--n must be at least 1 and --frames at least 2")
    args.run(args)


if __name__ == "__main__":
    main()
