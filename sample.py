"""sample.py: prompts in, GIFs out; and the model building that train.py shares.

    python sample.py --ckpt data/pretrained/tiny.pt --prompt "digit 3 is moving up and down"
    python sample.py --ckpt runs/tiny/dit.pt --prompt "digit 7 is moving left and right" --n 4 --steps 50 --cfg 8
    python sample.py --ckpt runs/tiny/dit.pt --prompts prompts.txt     # one prompt a line, batched
    python sample.py --ckpt runs/tiny/dit.pt --export data/pretrained/tiny.pt   # slim bf16 weights to share
    python sample.py --ckpt runs/i2v/dit.pt --prompt "digit 7 is moving left and right" --image first.png
    python sample.py --ckpt runs/pyramid/dit.pt --prompt "digit 3 is moving up and down" --frames 33
    python sample.py --ckpt runs/tiny/dit.pt --prompt "digit 3 is moving up and down" --negative "left and right"
    python sample.py --ckpt runs/tiny/dit.pt --control runs/control/control.pt --path "32,18 32,46" --prompt ...
    python sample.py --ckpt data/pretrained/tiny.pt --video in.gif --inpaint 16,16,48,48 --prompt ...   # 09_control

For each prompt p and sample i it writes `<out>/<slug>_<i>.gif` and `<slug>_<i>.txt`
(the exact prompt: the video-folder format data/video_folder.py reads), and one
`contact_sheet.png` with a row per prompt. Everything else (objective, latent
size, VAE, tokenizer, default guidance and time shift) comes from the checkpoint;
the EMA weights are used. The same seed gives the same videos.

--image starts every video from a picture of the trained size (png, jpg, or a gif's first frame): any
pyramid checkpoint takes it as the first frame of its history (05); a flow or ddpm one must have been
trained with dit.i2v (CogVideoX-I2V's image input, 02 and 03). --frames beyond the trained length continues
the video autoregressively with the same checkpoints (sample_latents says how).
"""
import argparse
import importlib
import os
import re
from collections import Counter

import torch

from data.checkpoint import load_checkpoint, save_checkpoint
from data.config import ArgumentParser, autocast, check_dtype, config_from_dict, pick_device
from data.moving_mnist import contact_sheet, save_gif
from data.tokenizer import Tokenizer
from data.video_folder import first_frame

vae_lib = importlib.import_module("01_vae")
dit_lib = importlib.import_module("02_dit")
diffusion = importlib.import_module("03_diffusion")
flow = importlib.import_module("04_flow")
pyramid = importlib.import_module("05_pyramid")


# ----------------------------------------------------------------------------- runtime
# ----------------------------------------------------------------------------- models from a config dict
# The config dicts are data/config.py's Config, as saved in checkpoints (config_from_dict fills today's defaults).
def build_vae(config):
    v = config["vae"]
    return vae_lib.CausalVAE(in_channels=config["data"]["channels"], channels=v["channels"], patch=v["patch"],
                             latent_channels=v["latent_channels"], time_compression=v["time_compression"],
                             layers_per_block=v["layers_per_block"], time_compress_at=v["time_compress_at"],
                             time_expand_at=v["time_expand_at"], norm=v["norm"], bottleneck=v["bottleneck"],
                             fsq_levels=v["fsq_levels"])


def load_vae(ckpt, device):
    vae = build_vae(config_from_dict(ckpt["config"]))
    vae.load_state_dict(ckpt["model"])
    return vae.to(device).eval().requires_grad_(False)


def build_dit(d, vocab_size, latent_channels):
    return dit_lib.DiT(in_channels=latent_channels, dim=d["dim"], depth=d["depth"], heads=d["heads"],
                       vocab_size=vocab_size, max_text_len=d["text_len"], text_depth=d["text_depth"],
                       patch=d["patch"], patch_t=d["patch_t"], attention=d["attention"],
                       checkpointing=d["checkpointing"], image_channels=latent_channels if d["i2v"] else 0,
                       guidance_embed=d["guidance_embed"],
                       **(dict(arch="hunyuan", double_depth=None if d["double_depth"] < 0 else d["double_depth"])
                          if d["arch"] == "hunyuan" else {}))


def build_objective(d):
    """03's DDPM, 04's rectified flow or 05's pyramidal flow, with every knob those files teach."""
    if d["objective"] == "ddpm":
        return diffusion.GaussianDiffusion(snr_shift=d["snr_shift"], sampler=d["ddpm_sampler"])
    if d["objective"] == "flow":
        return flow.RectifiedFlow(t_sampling=d["t_sampling"], shift=d["flow_shift"],
                                  sample_shift=d["sample_shift"] or None, solver=d["flow_solver"])
    return pyramid.PyramidFlow(stages=d["pyramid_stages"], stage_ratios=d["pyramid_stage_ratios"] or None,
                               history_noise=d["history_noise"], shift=d["pyramid_shift"])


def check_request(model, objective, vae, latent_shape, frames=None, image=False):
    """A ValueError in the user's words unless this model can make `frames` pixel frames (None: the trained
    length), starting from a given first frame if `image`."""
    tc, T = vae.time_compression, latent_shape[1]
    trained = 1 + tc * (T - 1)
    if frames is not None and (frames < 1 or (frames - 1) % tc):
        raise ValueError(f"--frames must be 1 + {tc}k for this checkpoint's VAE (it was trained on {trained}; "
                         f"{1 + 2 * tc * (T - 1)} is twice as long), got {frames}")
    longer = frames is not None and frames > trained
    if (image or longer) and not isinstance(objective, pyramid.PyramidFlow) and not getattr(model, "image_channels", 0):
        asked = "an --image" if image else f"--frames {frames} (more than its {trained})"
        raise ValueError(f"this checkpoint was trained without dit.i2v, so it cannot take {asked}; "
                         "train with --dit.i2v=true or use a pyramid checkpoint")


def sample_latents(model, objective, shape, trained, cond, uncond=None, first=None, **sampling):
    """Latents of `shape` (B, C, L, h, w) from a model trained on `trained` latent frames, for any length L.
    first: the given first latent frame (B, C, 1, h, w) to start from, or None. sampling: the objective's
    sample() options (steps, cfg, cfg_rescale, generator, progress)."""
    if isinstance(objective, pyramid.PyramidFlow):
        # frame by frame; the image is the first history frame, and the window keeps the history as long as
        # training's longest (05 says what that does to RoPE)
        return objective.sample(model, shape, cond, uncond, first=first, window=max(trained - 1, 1), **sampling)
    # A full-sequence model (flow, ddpm) makes windows of the trained length, so every RoPE position is one
    # training saw. Each window after the first is given the last latent frame of the one before as its image
    # (dit.i2v) and overlaps it by that frame, which is not repeated in the output. Only that one frame carries
    # over, not the motion: each window infers speed and direction anew, so a digit may turn at a seam. And
    # that frame stands for tc pixel frames, where training's image was always the causal VAE's first latent,
    # of one: a mismatch that the noise augmentation of image_condition (03) helps the model to tolerate.
    B, C, L, h, w = shape
    parts, made, last = [], 0, first
    while made < L:
        image = {} if last is None else dict(image=last)
        z = objective.sample(model, (B, C, trained, h, w), {**cond, **image},
                             None if uncond is None else {**uncond, **image}, **sampling)
        if last is not None:
            # The model was trained to reproduce its image as frame 0 (through the augmentation noise), so its
            # own frame 0 is that image plus the model's error: put the exact latent back, and the first
            # output frame is the image up to the VAE's reconstruction error.
            z[:, :, :1] = last
        parts.append(z if not parts else z[:, :, 1:])
        made += parts[-1].shape[2]
        last = z[:, :, -1:]
    return torch.cat(parts, dim=2)[:, :, :L]  # (B, C, L, h, w)


@torch.no_grad()
def generate(model, objective, vae, tokenizer, prompts, latent_shape, text_len, steps, cfg_scale, seed,
             device, dtype, cfg_rescale=0.0, progress=False, *, images=None, frames=None, negative=None,
             preview=None):
    """Videos [N, C, T, H, W] in [-1, 1] for N prompts; the same seed gives the same videos.

    images: first frames (N, C, 1, H, W) in [-1, 1] to start from (image-to-video), or None. frames: pixel
    frames to make, 1 + tc k for the VAE's time compression tc (None: the trained length); longer videos are
    continued autoregressively (sample_latents). negative: a caption per prompt for guidance's unconditional
    branch (a negative prompt) instead of the null caption. preview(i, n, x0_hat): the objective's, after
    each of its steps, with its estimate of the clean latents (scaled as the DiT sees them)."""
    check_request(model, objective, vae, latent_shape, frames, images is not None)
    C, T, h, w = latent_shape
    length = T if frames is None else 1 + (frames - 1) // vae.time_compression  # latent frames
    size = (vae.in_channels, 1, h * vae.space_compression, w * vae.space_compression)
    if images is not None and tuple(images.shape) != (len(prompts), *size):
        raise ValueError(f"images must be first frames {(len(prompts), *size)} in [-1, 1], got {tuple(images.shape)}")
    cond = dict(zip(("ids", "mask"), (t.to(device) for t in tokenizer.encode(prompts, text_len))))
    uncond = dict(zip(("ids", "mask"), diffusion.null_caption(len(prompts), text_len, device) if negative is None
                      else (t.to(device) for t in tokenizer.encode(negative, text_len))))
    if model.g_embed is not None:  # guidance-distilled (07): the scale is an input, one forward a step
        cond["guidance"], cfg_scale, uncond = torch.full((len(prompts),), float(cfg_scale), device=device), 1.0, None
    generator = torch.Generator(device).manual_seed(seed)
    with autocast(device, dtype):
        # a 1-frame video: the causal VAE gives frame 0 a latent of its own, as in the training videos
        first = None if images is None else vae.encode(images.to(device)).mode().float() * vae.scaling_factor
        z = sample_latents(model, objective, (len(prompts), C, length, h, w), T, cond, uncond, first, steps=steps,
                           cfg=cfg_scale, cfg_rescale=cfg_rescale, generator=generator, progress=progress,
                           preview=preview)
        # longer than trained: decode in pieces of the trained length, which the causal VAE streams exactly
        videos = vae.decode(z.float() / vae.scaling_factor, chunk=T if length > T else None)
    return videos.float().clamp(-1, 1)


def load(path, device, **overrides):
    """(model, objective, vae, tokenizer, config, latent_shape) from a dit.pt checkpoint (or the shipped
    data/pretrained/tiny.pt); overrides replace dit.* settings of the objective, e.g. sample_shift=2.0."""
    ckpt = load_checkpoint(path, "dit")
    config = config_from_dict(ckpt["config"])
    config["dit"] |= {k: v for k, v in overrides.items() if v is not None}
    model = build_dit(config["dit"], ckpt["vocab_size"], ckpt["latent_shape"][0])
    model.load_state_dict(ckpt["ema"])  # copies cast, so the bf16 weights of data/pretrained/ load into fp32
    vae = load_vae({"config": ckpt["vae_config"], "model": ckpt["vae"]}, device)
    tokenizer = Tokenizer.from_state_dict(ckpt["tokenizer"])
    return model.to(device).eval(), build_objective(config["dit"]), vae, tokenizer, config, ckpt["latent_shape"]


def export(path, out):
    """A copy of a dit.pt to share, as data/pretrained/tiny.pt is made: the EMA DiT and the VAE with their weights
    in bf16 (scalars such as the VAE's scaling factor stay fp32), the tokenizer and the config; no optimizer
    state, training weights or RNG. About a quarter of the dit.pt; load() reads it like any dit.pt."""
    ckpt = load_checkpoint(path, "dit")
    slim = {k: ckpt[k] for k in ("kind", "step", "config", "tokenizer", "vocab_size", "latent_shape", "vae_config")}
    for part in ("ema", "vae"):
        slim[part] = {k: v.bfloat16() if v.is_floating_point() and v.numel() > 1 else v for k, v in ckpt[part].items()}
    save_checkpoint(out, slim)
    print(f"wrote {out} ({os.path.getsize(out) / 2 ** 20:.1f} MiB) from {path}, step {ckpt['step']}")


# ----------------------------------------------------------------------------- output
def slug(prompt):
    return re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")[:80] or "prompt"


def parser():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="a dit.pt written by train.py, or data/pretrained/tiny.pt")
    p.add_argument("--prompt", action="append", default=[], help="a caption; repeat for several")
    p.add_argument("--prompts", help="a text file, one prompt a line")
    p.add_argument("--n", type=int, default=4, help="samples per prompt")
    p.add_argument("--steps", type=int, default=None,
                   help="sampling steps (per stage for the pyramid); default 50, a distilled checkpoint's own (07)")
    p.add_argument("--cfg", type=float, default=None,
                   help="classifier-free guidance scale; 1 turns it off (default: the checkpoint's dit.sample_cfg)")
    p.add_argument("--cfg-rescale", type=float, default=None,
                   help="guidance rescale phi in [0, 1] (Lin et al. 2023; 0.7 there), default: dit.sample_cfg_rescale")
    p.add_argument("--shift", type=float, default=None,
                   help="flow objective: sampling time shift (default: dit.sample_shift, else dit.flow_shift)")
    p.add_argument("--solver", choices=["euler", "heun"], default=None, help="flow objective: ODE solver")
    p.add_argument("--sampler", choices=["ddim", "ddpm"], default=None, help="ddpm objective: DDIM or ancestral DDPM")
    p.add_argument("--image", metavar="PATH",
                   help="start every video from this first frame (png, jpg, or a gif's first): a pyramid "
                        "checkpoint, or a flow/ddpm one trained with dit.i2v")
    p.add_argument("--frames", type=int, default=None,
                   help="pixel frames per video, 1 + (VAE time compression) k; longer than trained continues "
                        "autoregressively (pyramid, or flow/ddpm with dit.i2v). Default: the trained length")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="samples")
    p.add_argument("--batch", type=int, default=64, help="videos generated at once")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None, help="default: the checkpoint's")
    p.add_argument("--export", metavar="OUT", help="write a slim bf16 copy of --ckpt to OUT for sharing, and stop")
    p.add_argument("--negative", help="a caption for guidance's unconditional branch, not none: a negative prompt")
    edit = p.add_mutually_exclusive_group()  # 09_control.py: a box path, or one edit of a video by masked sampling
    edit.add_argument("--control", metavar="CKPT", help="a box-path control branch trained on --ckpt (09_control.py)")
    edit.add_argument("--inpaint", metavar="L,T,R,B", help="refill this box of --video's pixels in every frame")
    edit.add_argument("--interpolate", nargs=2, metavar=("FIRST", "LAST"), help="fill the frames between 2 images")
    edit.add_argument("--outpaint", type=int, metavar="PIXELS", help="widen --video by PIXELS on the left and right")
    p.add_argument("--video", metavar="GIF", help="the clip --inpaint or --outpaint edits (the checkpoint's frames)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--path", help='with --control: the digit\'s box centre "x0,y0 x1,y1 ..." in pixels, at key '
                                      "frames spread evenly over the video")
    where.add_argument("--boxes", metavar="JSON",
                       help="with --control: per frame, a [left, top, right, bottom] box per digit of the prompt")
    return p


def read_prompts(args):
    """The prompts of --prompt and --prompts, and the options, checked before any model is built."""
    def fail(message):
        raise SystemExit(f"error: {message}")
    prompts = [" ".join(text.split()) for text in args.prompt]
    if args.prompts:
        try:
            with open(args.prompts, encoding="utf-8") as f:
                prompts += [line.strip() for line in f if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            fail(f"cannot read --prompts file {args.prompts}: {e}")
    if not prompts:
        fail("give at least one --prompt or a --prompts file")
    if any(not text for text in prompts):
        fail("a --prompt is empty: give the caption to generate, e.g. --prompt \"digit 3 is moving up and down\"")
    for name in ("n", "steps", "batch"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            fail(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.cfg_rescale is not None and not 0 <= args.cfg_rescale <= 1:
        fail(f"--cfg-rescale must be in [0, 1], got {args.cfg_rescale}")
    if args.shift is not None and args.shift <= 0:
        fail(f"--shift must be > 0, got {args.shift}")
    if args.frames is not None and args.frames < 1:
        fail(f"--frames must be at least 1, got {args.frames}")
    if args.image is not None and not os.path.isfile(args.image):  # its size and mode need the checkpoint
        fail(f"no --image file at {args.image}")
    if args.negative is not None and not args.negative.strip():
        fail("--negative is empty: give the caption guidance should steer away from")
    if bool(args.control) != bool(args.path or args.boxes):
        fail("--control takes --path or --boxes, and they take --control (the branch trained for them)")
    if bool(args.inpaint or args.outpaint is not None) != bool(args.video):
        fail("--inpaint and --outpaint edit a --video, and --video is for them")
    if (args.control or args.video or args.interpolate) and (args.image or args.frames):
        fail("control and editing make the trained length from text: no --image or --frames")
    return prompts


def image_frames(path, channels, height, width):
    """--image as the checkpoint's first frame (1, C, 1, H, W) in [-1, 1] (first_frame), or a one-line error."""
    try:
        return first_frame(path, channels, height, width)
    except ValueError as e:
        raise SystemExit(f"error: --image {path}: {e}") from None


def sampler(args, prompts=()):
    """generate_fn(prompts, seed, progress=False, images=None) -> videos, the VAE and the config, for parsed
    sample.py arguments: every setting from the flags, else from the checkpoint. images: first frames
    (len(prompts), C, 1, H, W) in [-1, 1] (default: --image's for every prompt, else none); the videos have
    --frames frames. bench.py quality scores what this returns. prompts: checked against the tokenizer first."""
    device = pick_device(args.device)
    model, objective, vae, tokenizer, config, latent_shape = load(
        args.ckpt, device, sample_shift=args.shift, flow_solver=args.solver, ddpm_sampler=args.sampler)
    d = config["dit"]
    dtype = args.dtype or config["dtype"]
    check_dtype(device, dtype)
    cfg = d["sample_cfg"] if args.cfg is None else args.cfg
    rescale = d["sample_cfg_rescale"] if args.cfg_rescale is None else args.cfg_rescale
    steps = args.steps if args.steps else config["distill"]["sample_steps"] if config["distill"]["teacher"] else 50
    try:  # what needs the checkpoint, before any generation
        check_request(model, objective, vae, latent_shape, args.frames, args.image is not None)
        tokenizer.encode(list(prompts), d["text_len"])  # too long, or empty; unseen words only warn
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    if args.control or args.video or args.interpolate:  # 09: the controlled DiT or masked sampling, then as usual
        model, objective, latent_shape = importlib.import_module("09_control").from_args(
            args, model, objective, vae, latent_shape, device, dtype)
    size = [n * vae.space_compression for n in latent_shape[2:]]
    image = None if args.image is None else image_frames(args.image, vae.in_channels, *size)  # (1, C, 1, H, W)

    def generate_fn(prompts, seed, progress=False, images=None):
        tokenizer.encode(prompts, d["text_len"])  # fail (or warn about unseen words) before any work
        if images is None and image is not None:
            images = image.expand(len(prompts), -1, -1, -1, -1)
        return generate(model, objective, vae, tokenizer, prompts, latent_shape, d["text_len"], steps, cfg, seed,
                        device, dtype, rescale, progress, images=images, frames=args.frames,
                        negative=None if args.negative is None else [args.negative] * len(prompts))
    return generate_fn, vae, config


def main(argv=None):
    args = parser().parse_args(argv)
    if args.export:
        return export(args.ckpt, args.export)
    prompts = read_prompts(args)
    generate_fn = sampler(args, prompts)[0]

    jobs = [prompt for prompt in prompts for _ in range(args.n)]
    videos = []
    for start in range(0, len(jobs), args.batch):
        videos.append(generate_fn(jobs[start:start + args.batch], args.seed + start, progress=True).cpu())
    videos = torch.cat(videos)

    os.makedirs(args.out, exist_ok=True)
    seen = Counter()  # a prompt given twice continues its numbering instead of overwriting
    for prompt, video in zip(jobs, videos):
        name = os.path.join(args.out, f"{slug(prompt)}_{seen[slug(prompt)]}")
        seen[slug(prompt)] += 1
        save_gif(name + ".gif", video)
        with open(name + ".txt", "w") as f:
            f.write(prompt + "\n")
    contact_sheet(videos, prompts, args.n).save(os.path.join(args.out, "contact_sheet.png"))
    print(f"wrote {len(jobs)} videos and contact_sheet.png to {args.out}/")


if __name__ == "__main__":
    main()
