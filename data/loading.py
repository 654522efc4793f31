"""From files to batches, for train.py: the datasets, the video-folder scan, and a resumable batch order.

    ds = video_dataset(cfg, "train", frames=9, length=8000)   # Moving MNIST, or a scanned video folder
    data = batches(ds, batch_size=32, rank=0, world=1, seed=0, start_step=0)
    x, captions = next(data)

A video folder is scanned once before training (data/video_folder.py's scan_folder, cached in
OUT/scan.json), so a broken clip stops the run in its first minute rather than hours in, and the
data filters of the config (course module 2.4) apply before the first batch.
"""
import os
import re

import torch
from torch.utils.data import DataLoader, DistributedSampler

from data.augment import Augmented
from data.moving_mnist import MovingMNIST
from data.video_folder import BAD_REASONS, VideoFolder, format_report, scan_folder


def scan(cfg, progress=False):
    """The kept clips of a video folder and the scan's report; decoded once, then read from OUT/scan.json."""
    d = cfg.data
    try:
        return scan_folder(d.dataset, max(d.frames, cfg.vae.frames), d.size, d.channels, d.min_motion, d.min_content,
                           d.dedupe, d.min_caption_words, d.caption_regex, d.pad_short, d.allow_upscale,
                           cache=os.path.join(cfg.out_dir, "scan.json"), progress=progress)
    except (ValueError, re.error) as e:
        raise SystemExit(f"error: {e}") from None


def check_folder(cfg):
    """Scan a video folder before any work: print what was kept and dropped, list the drops in OUT/dropped.txt,
    and stop if data.on_bad is error and a clip is broken."""
    pairs, report = scan(cfg, progress=True)
    print(format_report(report, cfg.data.dataset))
    with open(os.path.join(cfg.out_dir, "dropped.txt"), "w") as f:
        f.writelines(f"{name}\t{reason}\t{report['details'][name]}\n"
                     for reason, names in report["dropped"].items() for name in names)
    bad = sum(len(report["dropped"][r]) for r in BAD_REASONS)
    if bad and cfg.data.on_bad == "error":
        raise SystemExit(f"error: {bad} broken clip(s) in {cfg.data.dataset} (listed in "
                         f"{os.path.join(cfg.out_dir, 'dropped.txt')}); fix them, or set data.on_bad=skip")


def video_dataset(cfg, split, frames, length, images=False):
    """(video (C, T, H, W), caption) pairs; images=True: captioned images as 1-frame videos (C, 1, H, W).
    With data.augment, training videos come in pairs, a source and its augmented copy (data/augment.py)."""
    d = cfg.data
    augment = bool(d.augment) and split == "train" and not images
    if d.dataset == "moving_mnist":  # augmenting: half the length in sources, each followed by its copy
        ds = MovingMNIST(split, num_frames=frames, length=(length + 1) // 2 if augment else length, seed=cfg.seed,
                         size=d.size, still=images, max_digits=d.max_digits, images=d.mnist_images or None,
                         labels=d.mnist_labels or None, paraphrase=d.paraphrase)
    else:
        try:
            ds = VideoFolder(d.dataset, num_frames=frames, size=d.size, channels=d.channels, train=split == "train",
                             pairs=scan(cfg)[0], images=images)
        except ValueError as e:  # e.g. images asked for and the folder holds none
            raise SystemExit(f"error: {e}") from None
    return Augmented(ds, d.augment, cfg.seed, length) if augment else ds


def batches(dataset, batch_size, rank, world, seed, start_step, workers=0):
    """Endless batches in a fixed order that depends only on the seed and the step.

    The epoch and the position inside it follow from the step, so a resumed run
    skips exactly the batches it has already seen and continues in the same order.
    """
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
    per_epoch = len(sampler) // batch_size
    if per_epoch == 0:
        raise SystemExit(f"error: {len(dataset)} examples are too few for a batch of {batch_size} on each of "
                         f"{world} rank(s): lower the batch size or add data")
    epoch, skip = divmod(start_step, per_epoch)
    while True:
        sampler.set_epoch(epoch)
        order = list(sampler)[skip * batch_size:per_epoch * batch_size]
        # an own generator for the workers' seeds: the global RNG (training noise) is left untouched
        seeds = torch.Generator().manual_seed(seed + epoch)
        yield from DataLoader(dataset, batch_size, sampler=order, num_workers=workers, drop_last=True, generator=seeds)
        epoch, skip = epoch + 1, 0


def data_position(step, n, batch_size):
    epoch, batch = divmod(step, max(1, n // batch_size))
    return {"epoch": epoch, "batch": batch}
