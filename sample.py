"""sample.py: prompts in, GIFs out.

    python sample.py --ckpt runs/tiny/dit.pt --prompt "digit 3 is moving up and down" --n 4 --steps 50 --cfg 8 --seed 0 --out samples/
    python sample.py --ckpt runs/tiny/dit.pt --prompts prompts.txt     # one prompt a line, batched

For each prompt p and sample i it writes `<out>/<slug>_<i>.gif` and `<slug>_<i>.txt`
(the exact prompt: the video-folder format data/video_folder.py reads), and one
`contact_sheet.png` with a row per prompt. Everything else (objective, latent
size, VAE, tokenizer) comes from the checkpoint; the EMA weights are used.
The same seed gives the same videos.
"""
import argparse
import os
import re
from collections import Counter

import torch
from PIL import Image, ImageDraw

from data.moving_mnist import save_gif
from data.tokenizer import Tokenizer
from train import DiTConfig, build_dit, build_objective, generate, load_checkpoint, load_vae


def load(path, device):
    """(model, objective, vae, tokenizer, config, latent_shape) rebuilt from a dit.pt checkpoint."""
    ckpt = load_checkpoint(path, "dit")
    config = ckpt["config"]
    model = build_dit(config["dit"], ckpt["vocab_size"], ckpt["latent_shape"][0])
    model.load_state_dict(ckpt["ema"])
    vae = load_vae({"config": ckpt["vae_config"], "model": ckpt["vae"]}, device)
    tokenizer = Tokenizer.from_state_dict(ckpt["tokenizer"])
    return model.to(device).eval(), build_objective(config["dit"]), vae, tokenizer, config, ckpt["latent_shape"]


def slug(prompt):
    return re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")[:80] or "prompt"


def contact_sheet(videos, prompts, n, frames=5, label_width=230):
    """A PNG: one row per prompt, n samples side by side, each shown as `frames` evenly spaced frames."""
    _, _, t, h, w = videos.shape
    picks = torch.linspace(0, t - 1, min(frames, t)).round().long()
    cell = len(picks) * w + 6
    sheet = Image.new("L", (label_width + n * cell, len(prompts) * (h + 4)), 0)
    draw = ImageDraw.Draw(sheet)
    for row, prompt in enumerate(prompts):
        draw.text((4, row * (h + 4) + h // 2 - 6), prompt, fill=255)
        for i in range(n):
            video = videos[row * n + i, :, picks]  # (C, F, H, W)
            strip = ((video.mean(0) + 1) * 127.5).round().byte()  # grayscale strip of frames
            strip = torch.cat(list(strip), dim=1).cpu().numpy()
            sheet.paste(Image.fromarray(strip, "L"), (label_width + i * cell, row * (h + 4)))
    return sheet


def parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="a dit.pt written by train.py")
    p.add_argument("--prompt", action="append", default=[], help="a caption; repeat for several")
    p.add_argument("--prompts", help="a text file, one prompt a line")
    p.add_argument("--n", type=int, default=4, help="samples per prompt")
    p.add_argument("--steps", type=int, default=50, help="sampling steps (per stage for the pyramid objective)")
    p.add_argument("--cfg", type=float, default=DiTConfig.sample_cfg,
                   help="classifier-free guidance scale; 1 turns it off (default %(default)s, train.py's dit.sample_cfg)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="samples")
    p.add_argument("--batch", type=int, default=64, help="videos generated at once")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p


def main(argv=None):
    p = parser()
    args = p.parse_args(argv)

    prompts = list(args.prompt)
    if args.prompts:
        with open(args.prompts) as f:
            prompts += [line.strip() for line in f if line.strip()]
    if not prompts:
        p.error("give at least one --prompt or a --prompts file")
    if args.n < 1 or args.steps < 1:
        p.error("--n and --steps must be at least 1")
    device = torch.device(args.device)
    model, objective, vae, tokenizer, config, latent_shape = load(args.ckpt, device)
    tokenizer.encode(prompts, config["dit"]["text_len"])  # fail (or warn about unseen words) before any work

    jobs = [prompt for prompt in prompts for _ in range(args.n)]
    videos = []
    for start in range(0, len(jobs), args.batch):
        videos.append(generate(model, objective, vae, tokenizer, jobs[start:start + args.batch], latent_shape,
                               config["dit"]["text_len"], args.steps, args.cfg, args.seed + start,
                               device, config["dtype"], progress=True).cpu())
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
