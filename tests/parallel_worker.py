"""One rank of test_parallel.py: 06_parallel's context-parallel VAE and Ulysses DiT (both archs) over 2 processes
(gloo), saved to OUT.

    OMP_NUM_THREADS=1 python -m torch.distributed.run --standalone --nproc_per_node=2 tests/parallel_worker.py OUT

The builders below are shared with test_parallel.py, which runs the single-process references.
"""
import datetime
import importlib
import os
import sys

import torch
import torch.distributed as dist

vae_lib = importlib.import_module("01_vae")
dit = importlib.import_module("02_dit")
parallel = importlib.import_module("06_parallel")

VAES = {"4x": dict(channels=[8, 8, 16], latent_channels=4, patch=2),                      # two time downsamplings
        "2x": dict(channels=[8, 16], latent_channels=4, patch=2, time_compression=2)}      # one
DITS = {"full": dict(), "history+checkpointing": dict(checkpointing=True),
        "hunyuan": dict(arch="hunyuan", depth=3), "hunyuan, history+checkpointing": dict(arch="hunyuan", depth=3,
                                                                                        checkpointing=True)}
FRAMES = 17


def make_vae(name):
    torch.manual_seed(0)
    return vae_lib.CausalVAE(**VAES[name]).eval()


def vae_inputs(vae):
    """A video and, separately, latents to decode (1 + (FRAMES - 1) / tc frames)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, FRAMES, 16, 16, generator=g)
    side = 16 // vae.space_compression
    z = torch.randn(2, vae.latent_channels, 1 + (FRAMES - 1) // vae.time_compression, side, side, generator=g)
    return x, z


def make_dit(name="full", dim=32, heads=2):
    torch.manual_seed(0)
    model = dit.DiT(4, dim=dim, heads=heads, vocab_size=20, max_text_len=6, text_depth=1, **{"depth": 2, **DITS[name]})
    with torch.no_grad():  # undo adaLN-Zero, or the zero gates would make most gradients trivially 0
        for p in model.parameters():
            if not p.any():
                p.normal_(std=0.3)
    return model


def dit_inputs(name="full"):
    """Latents with 12 tokens (+ 4 history tokens): divisible by 2 ranks. The loss is a fixed weighting of out."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 3, 4, 4, generator=g)
    mask = torch.arange(6)[None] < torch.tensor([[3], [6]])                   # a padded caption and a full one
    ids = torch.randint(2, 20, (2, 6), generator=g) * mask
    history = [torch.randn(2, 4, 1, 4, 4, generator=g)] if "history" in name else None
    return (x, torch.tensor([10.0, 700.0]), ids, mask), history, torch.randn(x.shape, generator=g)


def main(out_dir):
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))  # a mismatched send fails, not hangs
    rank, result = dist.get_rank(), {}

    cp = parallel.ContextParallel()
    with torch.no_grad():
        for name in VAES:
            vae = make_vae(name)
            x, z = vae_inputs(vae)
            video_piece, latent_piece = cp.split(x, vae.time_compression), cp.split(z, 1)
            mean = vae.encode(video_piece, cache=cp).mean
            decoded = vae.decode(latent_piece, cache=cp)
            result[name] = dict(frames=video_piece.shape[2], latents=mean.shape[2],
                                decode_latents=latent_piece.shape[2],
                                mean=cp.gather(mean), decoded=cp.gather(decoded))

    for name in DITS:
        model = make_dit(name)
        model.parallel = parallel.Ulysses(dist.group.WORLD)
        args, history, weight = dit_inputs(name)
        out = model(*args, history=history)
        (out * weight).sum().backward()
        result[name] = dict(out=out.detach(), grads={n: p.grad for n, p in model.named_parameters()})

    try:
        args, _, _ = dit_inputs()
        model = make_dit(dim=48, heads=3)
        model.parallel = parallel.Ulysses(dist.group.WORLD)
        model(*args)
    except ValueError as e:
        result["heads_error"] = str(e)

    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
