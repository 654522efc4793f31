"""What the DiT tests share: a small DiT of either arch with adaLN-Zero undone, padded captions, a tolerance."""
import importlib

import torch

dit = importlib.import_module("02_dit")

C, D, HEADS, L = 4, 32, 2, 6  # head_dim 16: RoPE gives t, h, w 2, 3, 3 channel pairs (hunyuan's split 1, 4, 3)


def make(arch="cogvideox", perturb=True, **kw):
    """depth 2 expert blocks, or depth 3 for hunyuan: one dual-stream block, then two single-stream blocks."""
    torch.manual_seed(0)
    model = dit.DiT(**{**dict(in_channels=C, dim=D, depth=3 if arch == "hunyuan" else 2, heads=HEADS, vocab_size=20,
                              max_text_len=L, text_depth=1, arch=arch), **kw}).eval()
    if perturb:  # undo adaLN-Zero (and zero LayerNorm biases): with zero gates and output most tests pass trivially
        with torch.no_grad():
            for p in model.parameters():
                if not p.any():
                    p.normal_(std=0.3)
    return model


def caption(lengths):
    mask = torch.arange(L)[None] < torch.tensor(lengths)[:, None]
    ids = torch.randint(2, 20, (len(lengths), L), generator=torch.Generator().manual_seed(1)) * mask
    return ids, mask


def changed(a, b):
    return not torch.allclose(a, b, atol=1e-4)
