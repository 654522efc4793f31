"""Captioned Moving MNIST (after Sync-DRAW, Mittal et al. 2017).

Each video shows one or two 28x28 MNIST digits bouncing off the walls of a
64x64 frame, each along one axis, with a caption in a fixed grammar:

    digit 3 is moving up and down
    digit 3 is moving up and down and digit 7 is moving left and right

Video i of a split with a given seed is always the same video: its recipe
(which digits, where, how fast) is drawn from a generator seeded by
(seed, split, i), so nothing is stored and any frame count can be rendered.
Train and validation draw from disjoint digit images: the first 80% of the
MNIST file (test-set indices 0-7999) and the last 20% (8000-9999).

still=True gives captioned images for joint image + video training: one frame,
from recipes of their own (not the videos' first frames), captioned with the
digits alone, `digit 3` or `digit 3 and digit 7`, since a still shows no motion.

paraphrase=p re-words a share p of the captions with the paraphrase grammar below
(`the digit 3 bounces vertically`, `3 moving up and down`; course module 5, prompt
engineering), some of whose phrasings are kept for testing only; boxes(sprites) gives
each digit's 28x28 box in every frame, the control signal of 09_control.py.

    python data/moving_mnist.py    # writes moving_mnist.gif, prints videos/s
"""
import gzip
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

MNIST_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mnist")
AXES = ("up and down", "left and right")  # axis 0 moves the row (y), axis 1 the column (x)
SPLITS = ("train", "val")
DIGIT = 28


def read_idx(path):
    """Read an IDX file (the MNIST format), gzipped or not, into a numpy array."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"cannot read IDX file {path}: {e}") from e
    # header: two zero bytes, a type code (0x08 = uint8), the number of dims, then each dim as big-endian int32
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not a uint8 IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but the file holds {body.size} values")
    return body.reshape(shape)


def load_mnist(images=None, labels=None):
    """MNIST digits (N, 28, 28) uint8 and labels (N,). Defaults to the test set shipped in data/mnist/."""
    images = images or os.path.join(MNIST_DIR, "t10k-images-idx3-ubyte.gz")
    labels = labels or os.path.join(MNIST_DIR, "t10k-labels-idx1-ubyte.gz")
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3 or x.shape[1:] != (DIGIT, DIGIT) or y.shape != (len(x),):
        raise ValueError(f"expected images (N, 28, 28) and labels (N,), got {x.shape} from {images} and {y.shape} "
                         f"from {labels}")
    return x, y


@dataclass
class Sprite:
    """One digit of a video: which MNIST image, its label, its axis and its path."""
    image: int         # index into the MNIST file
    label: int
    axis: int          # 0: up and down, 1: left and right
    row: np.ndarray    # (T,) top-left corner per frame
    col: np.ndarray    # (T,)


def bounce(start, velocity, num_frames, limit):
    """Positions of a point moving at constant speed in [0, limit] and reflecting off both ends."""
    p = start + velocity * np.arange(num_frames)   # unfolded straight-line path
    p = np.mod(p, 2 * limit)                       # fold it into one period of the triangle wave
    return np.where(p > limit, 2 * limit - p, p)


def boxes(sprites):
    """Each digit's box in every frame, (digits, T, 4) float as (left, top, right, bottom) in pixels: pixel
    (row r, column c) covers [c, c + 1) x [r, r + 1), so a digit at top-left (row, col) fills [col, col + 28)."""
    return np.stack([np.stack([s.col, s.row, s.col + DIGIT, s.row + DIGIT], -1) for s in sprites]).astype(np.float32)


# ----------------------------------------------------------------------------- other ways to say a caption
# A phrasing is (order, subject, verb, axis wording): "{s} {v} {a}" with "the digit {d}", "bounces", and the
# wording 1 of the clip's axis is "the digit 3 bounces vertically". Phrasing 0 is the canonical grammar above.
SUBJECTS = ("digit {d}", "the digit {d}", "a {d}", "the number {d}", "{d}")
VERBS = ("is moving", "moves", "is bouncing", "bounces", "slides", "goes", "moving")
AXIS_WORDS = (("up and down", "vertically", "down and up"), ("left and right", "horizontally", "side to side"))
ORDERS = ("{s} {v} {a}", "{s} {a}", "{a} {v} {s}")   # the third only with a verb that inverts: "up and down goes a 3"
PHRASINGS = [(o, s, v, a) for o in range(3) for s in range(len(SUBJECTS))
             for v in ((None,) if o == 1 else range(len(VERBS)) if o == 0 else (1, 3, 4, 5)) for a in range(3)]
# The split: a phrasing is test-only when its subject and axis wording were never paired in training,
# s + a = 2 (mod 3) ("the digit 3 bounces vertically", "a 7 slides left and right"). Every word, verb and
# order still occurs in training, so the held-out ones test composition, not unknown words.
HELD_OUT = [k for k, (o, s, v, a) in enumerate(PHRASINGS) if (s + a) % 3 == 2]
SEEN = [k for k in range(len(PHRASINGS)) if k not in HELD_OUT]


def clause(label, axis, phrasing=0):
    """One digit's words in phrasing k: clause(3, 0) is 'digit 3 is moving up and down'."""
    o, s, v, a = PHRASINGS[phrasing]
    return ORDERS[o].format(s=SUBJECTS[s].format(d=label), v=VERBS[v] if v is not None else "",
                            a=AXIS_WORDS[axis][a])


def caption(sprites, still=False, phrasing=0):
    """The caption of a recipe, in the canonical grammar (phrasing 0) or phrasing k of PHRASINGS."""
    if still:
        return " and ".join(SUBJECTS[PHRASINGS[phrasing][1]].format(d=s.label) for s in sprites)
    return " and ".join(clause(s.label, s.axis, phrasing) for s in sprites)


def misspell(text, seed):
    """text with one typo, the same for the same seed: two neighbouring letters of one word (not a digit) swapped."""
    rng = np.random.default_rng(seed)
    words = text.split()
    i = int(rng.choice([j for j, w in enumerate(words) if len(w) >= 4]))
    k = int(rng.integers(1, len(words[i]) - 2))  # keep the first and last letters, as people's typos mostly do
    words[i] = words[i][:k] + words[i][k + 1] + words[i][k] + words[i][k + 2:]
    return " ".join(words)


class MovingMNIST(Dataset):
    """Returns (video float [1, T, size, size] in [-1, 1], caption str)."""

    def __init__(self, split="train", num_frames=17, length=10000, seed=0, size=64,
                 max_digits=2, p_two=0.5, speed=(2, 5), images=None, labels=None, still=False, paraphrase=0.0):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if not 0 <= paraphrase <= 1:
            raise ValueError(f"paraphrase is the share of re-worded captions, in [0, 1]; got {paraphrase}")
        if num_frames < 1 or size < DIGIT or max_digits not in (1, 2):
            raise ValueError(f"need num_frames >= 1, size >= {DIGIT} and max_digits 1 or 2; "
                             f"got num_frames={num_frames}, size={size}, max_digits={max_digits}")
        num_frames = 1 if still else num_frames
        self.split, self.num_frames, self.length, self.seed, self.size = split, num_frames, length, seed, size
        self.still, self.paraphrase = still, paraphrase
        self.max_digits, self.p_two, self.speed = max_digits, p_two, speed
        self.digits, self.labels = load_mnist(images, labels)
        cut = int(0.8 * len(self.digits))  # train/val digit images never overlap
        self.pool = np.arange(0, cut) if split == "train" else np.arange(cut, len(self.digits))

    def __len__(self):
        return self.length

    def recipe(self, i):
        """The sprites of video i: everything random about it, drawn from its own seeded generator."""
        rng = np.random.default_rng([self.seed, SPLITS.index(self.split), i] + [1] * self.still)
        n = 2 if self.max_digits == 2 and rng.random() < self.p_two else 1
        limit = self.size - DIGIT  # the top-left corner stays in [0, limit]
        sprites = []
        for _ in range(n):
            image = int(rng.choice(self.pool))
            axis = int(rng.integers(2))
            fixed, start = rng.integers(0, limit + 1, size=2)
            velocity = rng.integers(self.speed[0], self.speed[1] + 1) * rng.choice([-1, 1])
            moving = bounce(start, velocity, self.num_frames, limit)
            still = np.full(self.num_frames, fixed)
            row, col = (moving, still) if axis == 0 else (still, moving)
            sprites.append(Sprite(image, int(self.labels[image]), axis, row, col))
        return sprites

    def phrasing(self, i, digits):
        """Which phrasing video i's caption takes: 0 (canonical) unless paraphrased, from a generator of its own,
        so the recipes stay as they were. Two digits take only phrasings of at most 7 words a clause, so the
        caption is no longer than the canonical 15 words that dit.text_len = 16 was sized for."""
        if self.paraphrase == 0:
            return 0
        rng = np.random.default_rng([self.seed, SPLITS.index(self.split), i, 2 + self.still])
        if rng.random() >= self.paraphrase:
            return 0
        options = [k for k in SEEN if digits == 1 or len(clause(0, 0, k).split()) <= 7]
        return int(rng.choice(options))

    def render(self, sprites):
        """uint8 frames (T, size, size); overlapping digits combine by maximum."""
        video = np.zeros((self.num_frames, self.size, self.size), dtype=np.uint8)
        for s in sprites:
            digit = self.digits[s.image]
            for t, (r, c) in enumerate(zip(s.row, s.col)):
                window = video[t, r:r + DIGIT, c:c + DIGIT]
                np.maximum(window, digit, out=window)
        return video

    def __getitem__(self, i):
        if not 0 <= i < self.length:
            raise IndexError(f"video {i} out of range for a dataset of {self.length}")
        sprites = self.recipe(i)
        video = torch.from_numpy(self.render(sprites)).float().div_(127.5).sub_(1.0)
        return video.unsqueeze(0), caption(sprites, self.still, self.phrasing(i, len(sprites)))  # (1, T, H, W), str


def save_gif(path, video, fps=8):
    """Write a video float [C, T, H, W] in [-1, 1] (C = 1 or 3) as a looping GIF."""
    frames = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte()
    frames = frames.permute(1, 2, 3, 0).cpu().numpy()  # (T, H, W, C)
    mode = "L" if frames.shape[-1] == 1 else "RGB"
    images = [Image.fromarray(f.squeeze(-1) if mode == "L" else f, mode) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)


def video_grid(videos, columns):
    """[N, C, T, H, W] -> one video [C, T, rows * H, columns * W] with a 2-pixel gap, for GIF previews."""
    n, c, t, h, w = videos.shape
    rows = math.ceil(n / columns)
    grid = videos.new_full((c, t, rows * (h + 2) - 2, columns * (w + 2) - 2), -1.0)
    for i, v in enumerate(videos):
        r, col = divmod(i, columns)
        grid[:, :, r * (h + 2):r * (h + 2) + h, col * (w + 2):col * (w + 2) + w] = v
    return grid


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


if __name__ == "__main__":
    import time
    ds = MovingMNIST("train", num_frames=17)
    start, n = time.perf_counter(), 2000
    for i in range(n):
        ds[i]
    rate = n / (time.perf_counter() - start)
    print(f"{rate:.0f} videos/s (17 frames, 64x64, one process)")
    row = torch.cat([ds[i][0] for i in range(4)], dim=-1)  # four videos side by side
    save_gif("moving_mnist.gif", row)
    for i in range(4):
        print(ds[i][1])
    print("wrote moving_mnist.gif")
