"""Your own clips: a folder of `name.gif` + `name.txt` pairs (sample.py writes the same format).

Frames are resized (shorter side to `size`) and centre-cropped to size x size.
A clip longer than `num_frames` gives a window of consecutive frames (a random
start in training, the first frames otherwise); a shorter one is padded by
repeating its last frame, so every item has exactly `num_frames` frames.

    ds = VideoFolder("my_clips/", num_frames=17, size=64, channels=1)
    video, caption = ds[0]    # float [C, T, size, size] in [-1, 1], str
"""
import os
import random

import numpy as np
import torch
from PIL import Image, ImageSequence
from torch.utils.data import Dataset


def read_gif(path, size, channels):
    """All frames of a GIF as uint8 (T, size, size, C); raises ValueError naming the file if unreadable."""
    mode = {1: "L", 3: "RGB"}[channels]
    try:
        with Image.open(path) as im:
            frames, durations = [], []
            for frame in ImageSequence.Iterator(im):
                durations.append(frame.info.get("duration", 0))
                frame = frame.convert(mode)  # decodes palettes and frame disposal into a full image
                scale = size / min(frame.size)
                w, h = max(size, round(frame.width * scale)), max(size, round(frame.height * scale))
                frame = frame.resize((w, h), Image.BICUBIC)
                left, top = (w - size) // 2, (h - size) // 2
                frames.append(np.asarray(frame.crop((left, top, left + size, top + size))))
    except (OSError, ValueError, SyntaxError) as e:  # PIL raises all three on broken files
        raise ValueError(f"cannot read video {path}: {e}") from e
    if not frames:
        raise ValueError(f"video {path} has no frames")
    # GIF writers (Pillow too) merge identical consecutive frames into one longer frame;
    # repeat each frame by its duration in units of the shortest one to get them back.
    base = min((d for d in durations if d > 0), default=0)
    repeats = [max(1, round(d / base)) if base else 1 for d in durations]
    video = np.repeat(np.stack(frames), repeats, axis=0)
    return video[..., None] if channels == 1 else video


class VideoFolder(Dataset):
    def __init__(self, root, num_frames=17, size=64, channels=1, train=True):
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
        if not os.path.isdir(root):
            raise ValueError(f"video folder {root} does not exist")
        names = sorted(f[:-4] for f in os.listdir(root) if f.lower().endswith(".gif"))
        self.pairs = [(os.path.join(root, n + ".gif"), os.path.join(root, n + ".txt"))
                      for n in names if os.path.isfile(os.path.join(root, n + ".txt"))]
        if not self.pairs:
            raise ValueError(f"no name.gif + name.txt pairs in video folder {root}")
        self.num_frames, self.size, self.channels, self.train = num_frames, size, channels, train

    def __len__(self):
        return len(self.pairs)

    def captions(self):
        return [self.caption(i) for i in range(len(self))]

    def caption(self, i):
        path = self.pairs[i][1]
        try:
            with open(path, encoding="utf-8") as f:
                text = " ".join(f.read().split())
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read caption {path}: {e}") from e
        if not text:
            raise ValueError(f"caption file {path} is empty")
        return text

    def __getitem__(self, i):
        video = read_gif(self.pairs[i][0], self.size, self.channels)  # (T, H, W, C)
        extra = len(video) - self.num_frames
        if extra > 0:
            start = random.randint(0, extra) if self.train else 0
            video = video[start:start + self.num_frames]
        elif extra < 0:
            video = np.concatenate([video, np.repeat(video[-1:], -extra, axis=0)])
        video = torch.from_numpy(np.ascontiguousarray(video)).permute(3, 0, 1, 2)  # (C, T, H, W)
        return video.float().div(127.5).sub(1.0), self.caption(i)
