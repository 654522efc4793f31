"""Augmentation that keeps the caption true (course topic 2.4): data.augment: [reverse, shift]; [flip], the lesson.

An augmented clip trains under its source's caption, so a transform is allowed only where that caption stays
true of the result:
- reverse plays the clip backwards: a digit bouncing along an axis, played backwards, bounces along the same
  axis, so `digit 3 is moving up and down` is still what it shows;
- shift moves the whole clip by up to SHIFT pixels (one offset for every frame, as a camera would), never so far
  that ink leaves the frame: the same digits on the same axes;
- flip mirrors it left to right, and that one is false: the axis survives, but a mirrored 3 is not a 3, while the
  caption still says `digit 3`. It is here to measure that harm once (train.py warns when it is on).

How it meets the latent cache (train.py encodes every training video once, then trains on the latents): a fresh
random draw every epoch, as image pipelines do, would be encoded once and frozen anyway. So the copies are made
explicit: with data.augment on, item 2j of the training set is source video j, and item 2j + 1 one fixed augmented
copy of it, each named transform applied with probability 1/2 (at least one), drawn from (seed, j); a resumed
run, or another stage, sees the same copies. dit.videos counts sources and copies alike, so an augmented run of
dit.videos=4000 encodes 2000 videos and 2000 copies: compare it with none at 2000 videos (the same sources, each
seen twice as often) to see what the copies are worth, and with none at 4000 to see what real videos are worth.
A video folder of F clips gives 2F items. The VAE stage, when it runs, trains on the same pairs; validation
videos and captioned images are never augmented.

    ds = Augmented(MovingMNIST("train", num_frames=9, length=2000), ["reverse", "shift"], seed=0)   # 4000 items
"""
import numpy as np
import torch
from torch.utils.data import Dataset

AUGMENTATIONS = ("reverse", "shift", "flip")  # the names data.augment takes
SHIFT = 4                                     # pixels, at most, in each direction


def reverse(video):
    """Frames in reverse order: (C, T, H, W) -> (C, T, H, W)."""
    return video.flip(1)


def flip(video):
    """Mirror left to right: the axis of motion survives, the digit's shape does not."""
    return video.flip(-1)


def shift(video, rng, most=SHIFT):
    """Move every frame by one offset (dy, dx) of at most `most` pixels, drawn from rng, but never so far that
    ink (any pixel brighter than the clip's darkest) leaves the frame; the uncovered edge takes the darkest value,
    Moving MNIST's black. A clip without a uniform background (a natural one) has ink everywhere and stays put."""
    _, _, h, w = video.shape
    dark = video.min()
    ink = (video > dark + 1e-3).flatten(0, 1).any(0)                                 # (H, W): ink in any frame
    if not ink.any():
        return video
    rows, cols = ink.any(1).nonzero()[:, 0], ink.any(0).nonzero()[:, 0]
    # room above, below, left and right of the ink over the whole clip, at most `most`
    dy = int(rng.integers(-min(most, rows[0].item()), min(most, h - 1 - rows[-1].item()) + 1))
    dx = int(rng.integers(-min(most, cols[0].item()), min(most, w - 1 - cols[-1].item()) + 1))
    out = torch.full_like(video, dark.item())
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        video[..., max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def augment(video, names, rng):
    """video (C, T, H, W) through each named transform with probability 1/2, at least one, in AUGMENTATIONS order."""
    on = rng.random(len(names)) < 0.5
    if not on.any():  # a copy equal to its source would only repeat it
        on[rng.integers(len(names))] = True
    chosen = {name for name, o in zip(names, on) if o}
    for name in AUGMENTATIONS:
        if name in chosen:
            video = shift(video, rng) if name == "shift" else reverse(video) if name == "reverse" else flip(video)
    return video


class Augmented(Dataset):
    """Source video j of `base` as item 2j, its augmented copy as item 2j + 1, both under j's caption."""

    def __init__(self, base, names, seed, length=None):
        bad = [n for n in names if n not in AUGMENTATIONS]
        if bad or not names:
            raise ValueError(f"augmentations must be some of {AUGMENTATIONS}, got {list(names)}")
        self.base, self.names, self.seed = base, list(names), seed
        self.length = min(length or 2 * len(base), 2 * len(base))

    def __len__(self):
        return self.length

    def caption(self, i):  # without decoding the video, where the base can (a video folder)
        j = i // 2
        return self.base.caption(j) if hasattr(self.base, "caption") else self.base[j][1]

    def __getitem__(self, i):
        if not 0 <= i < self.length:
            raise IndexError(f"item {i} out of range for {self.length}")
        video, text = self.base[i // 2]
        if i % 2:  # the copy's draw depends on the seed and the source only: the same in every run and stage
            video = augment(video, self.names, np.random.default_rng([34, self.seed, i // 2]))
        return video, text
