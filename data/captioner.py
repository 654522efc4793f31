"""A tiny video captioner: a clip in, its caption in the training grammar out (course topic 2.4, captioning).

CogVideoX trained a video captioner because the captions that come with web videos were too poor to learn from;
HunyuanVideo recaptions its data with its own model, in stages. Here the grammar is Moving MNIST's
(`digit 3 is moving up and down`, or two such joined by `and`), and the captioner reads a clip in three steps:

1. where: each frame's one or two digits are located (data/judge.py's locate_two: the heaviest 28x28 window of
   ink, then the next) and the detections are linked into tracks over the frames (judge.track);
2. what: a reader CNN (judge.DigitCNN's architecture, with weights of its own) reads the digit at every
   detection, and a track's digit is the class of highest mean probability over the frames it is seen in;
3. how: a track's axis is the coordinate its centre moves along (judge.trajectory).

It reads pixels, not VAE latents: it then captions a folder before any VAE exists (one that read latents would
have to be retrained with every VAE), and a digit's shape and its path are plain in pixels. Only the reading is
learned, from 28x28 crops: a whole-clip 3D CNN learning digits, axes and where they are from clip-level labels
alone named 2% of the clips right after the 150 CPU-seconds in which this reader reaches 99% of its crops. The
reader trains on crops of real training frames, the other digit's strokes included, so it reads a digit half
covered by another, which the judge (trained on lone digits made to look generated) never saw.

Clips it is unsure of are listed in unsure.tsv, not captioned: no digit found, a digit that stands still, one
digit whose ink changes from frame to frame (a lone digit's never does: a second one hides behind it), or a
caption of probability below the threshold (the product of each digit's mean probability). After 1000 steps
(150 s on one busy core) it named the digits and axes of 97.6% of 1000 validation clips of 9 frames (one digit
99.4%, two 95.8%: two digits moving in step, overlapped in every frame, are what it gets wrong), was unsure of
5.3% at the threshold 0.6, and 98.8% of the captions it wrote were right.

    python data/captioner.py train                          # train (or load) runs/bench/captioner.pt, validate it
    python data/captioner.py export runs/cap/true --n 8000 --frames 9                  # Moving MNIST as a folder
    python data/captioner.py export runs/cap/noisy --n 8000 --frames 9 --noise 0.3     # 30% wrong captions
    python data/captioner.py caption my_clips/              # name.txt beside every name.gif without one
    python data/captioner.py caption runs/cap/recaptioned --recaption                  # replace every sure one
    python data/captioner.py score runs/cap/recaptioned --truth runs/cap/true          # captions that agree
"""
import os
import re
import sys
import time
from collections import namedtuple

import numpy as np
import torch

if __package__ in (None, ""):  # run as `python data/captioner.py`: the repository root holds the `data` package
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data import judge  # noqa: E402
from data.checkpoint import save_atomic  # noqa: E402
from data.config import ArgumentParser  # noqa: E402
from data.moving_mnist import AXES, MovingMNIST, caption, save_gif  # noqa: E402
from data.video_folder import read_gif  # noqa: E402

Fact = namedtuple("Fact", "label axis")  # one digit of a caption; moving_mnist.caption() writes a list of them
THRESHOLD = 0.6   # captions of lower probability are listed as unsure (on validation clips: see `train`)
MIN_SEEN = 0.2    # a track seen in a fifth of the frames is a digit: two can overlap for most of a clip, while a
                  # lone digit leaves a spurious second detection in 1 frame of 300 (judge.locate_two)
INK_CHANGE = 0.02  # a lone digit's total ink is the same in every frame; two digits' changes where they overlap
JITTER = 2        # pixels: training crops are moved this far at most, as a located centre may sit off a digit's


def parse_caption(text):
    """'digit 3 is moving up and down and digit 7 ...' -> sorted [(3, 0), (7, 1)]; None outside the grammar."""
    m = re.fullmatch(f"{judge.MOTION}(?: and {judge.MOTION})?", " ".join(text.split()))
    if m is None:
        return None
    groups = [g for g in m.groups() if g is not None]
    return sorted((int(d), AXES.index(a)) for d, a in zip(groups[::2], groups[1::2]))


# ----------------------------------------------------------------------------- reading clips
@torch.no_grad()
def read_clips(model, videos, threshold=THRESHOLD):
    """Clips (N, 1, T, H, W) in [-1, 1], T >= 2 -> per clip (caption, confidence, why): why is "" when the clip
    is captioned and the reason it is unsure otherwise; caption is then the best guess, or "" for none."""
    n, _, t, h, w = videos.shape
    frames = videos[:, 0].reshape(n * t, h, w).float().clamp(-1, 1)
    centre, visible, _ = judge.locate_two(frames)                                   # (NT, 2, 2), (NT, 2)
    crops = torch.cat([judge.crop(frames, centre[:, 0]), judge.crop(frames, centre[:, 1])])  # (2NT, 1, 28, 28)
    probs = model.eval()(crops)[0].float().softmax(-1).view(2, n * t, 10).transpose(0, 1)  # (NT, 2, 10)
    centre, visible, probs = judge.track(centre.view(n, t, 2, 2), visible.view(n, t, 2), probs.reshape(n, t, 2, 10))
    seen = visible.float()                                                          # (N, T, 2)
    mean = (probs * seen[..., None]).sum(1) / seen.sum(1)[..., None].clamp(min=1)   # (N, 2, 10) over its frames
    axis = torch.stack([judge.trajectory(centre[:, :, k], visible[:, :, k])[0] for k in range(2)], 1)  # (N, 2)
    ink = ((videos[:, 0].float() + 1) / 2).sum((2, 3))                              # (N, T)
    ink_change = (ink.amax(1) - ink.amin(1)) / ink.mean(1).clamp(min=1e-6)          # (N,)
    out = []
    for i in range(n):
        tracks = [k for k in range(2) if seen[i, :, k].mean() >= MIN_SEEN]
        # in track order (the first frame's heavier digit first): either digit may lead, as in the dataset's captions
        facts = [(int(mean[i, k].argmax()), int(axis[i, k])) for k in tracks]
        confidence = float(np.prod([mean[i, k].max().item() for k in tracks])) if tracks else 0.0
        why = ("no digit found" if not tracks else
               "a digit stands still" if any(a == judge.NONE for _, a in facts) else
               "one digit, but its ink changes: a second may hide behind it"
               if len(tracks) == 1 and ink_change[i] > INK_CHANGE else
               f"confidence {confidence:.2f} < {threshold}" if confidence < threshold else "")
        guess = caption([Fact(d, a) for d, a in facts]) if facts and all(a != judge.NONE for _, a in facts) else ""
        out.append((guess, confidence, why))
    return out


def read_in_chunks(model, videos, threshold=THRESHOLD, chunk=64):
    """read_clips over chunks of clips: locate_two's buffers grow with the frames read at once."""
    return [r for part in videos.split(chunk) for r in read_clips(model, part, threshold)]


# ----------------------------------------------------------------------------- training the reader
def ink_centroids(digits):
    """Where locate() puts the centre of each MNIST digit (N, 28, 28) uint8: its ink centroid (N, 2), row and col."""
    ink = (torch.tensor(digits).float() / 255 - judge.INK_FLOOR).clamp(min=0)          # (N, 28, 28)
    i = torch.arange(judge.DIGIT).float()
    return torch.stack([(ink.sum(2) * i).sum(1), (ink.sum(1) * i).sum(1)], 1) / ink.sum((1, 2))[:, None]


def train_captioner(steps=1000, frames_per_step=86, lr=3e-3, seed=0, log=print):
    """Train the reader; returns (model, losses). Every step renders fresh frames of training clips (MNIST digits
    0-7999) and reads each digit in them (about 128) from a crop at its ink centroid, moved up to JITTER pixels,
    whatever else shares its frame included. Seeds torch's global RNG."""
    ds = MovingMNIST("train", num_frames=1, length=steps * frames_per_step, seed=seed + 1)
    centroid = ink_centroids(ds.digits)

    def batch(step, g):
        frames, centres, labels = [], [], []
        for f in range(step * frames_per_step, (step + 1) * frames_per_step):
            sprites = ds.recipe(f)
            frame = torch.from_numpy(ds.render(sprites)[0]).float() / 127.5 - 1        # (64, 64)
            for s in sprites:  # each digit is a sample, read with whatever else is in its frame
                frames.append(frame)
                centres.append(torch.tensor([s.row[0], s.col[0]]).float() + centroid[s.image])
                labels.append(s.label)
        shift = torch.randint(-JITTER, JITTER + 1, (len(labels), 2), generator=g)
        return judge.crop(torch.stack(frames), torch.stack(centres), shift), torch.tensor(labels)  # (B, 1, 28, 28)
    return judge.fit_reader(batch, steps, lr, seed, "captioner", log, every=200)


def validate(model, n=1000, frames=9, seed=0, threshold=THRESHOLD):
    """How the captioner does on n validation clips (MNIST digits 8000-9999): accuracy of its best guesses,
    the share it is unsure of, and the accuracy of the captions it writes; also by one and two digits."""
    ds = MovingMNIST("val", num_frames=frames, length=n, seed=seed)
    videos = torch.stack([ds[i][0] for i in range(n)])
    truth = [parse_caption(ds[i][1]) for i in range(n)]
    read = read_in_chunks(model, videos, threshold)
    right = np.array([parse_caption(c) == t if c else False for (c, _, _), t in zip(read, truth)])
    sure, two = np.array([why == "" for _, _, why in read]), np.array([len(t) == 2 for t in truth])
    return dict(n=n, frames=frames, accuracy=right.mean(), unsure=1 - sure.mean(),
                accuracy_captioned=right[sure].mean() if sure.any() else 0.0,
                one_digit=right[~two].mean(), two_digits=right[two].mean(), threshold=threshold)


def load_captioner(path="runs/bench/captioner.pt", retrain=False, steps=1000, seed=0, log=print):
    """The captioner from its cache, trained (and cached) first if the file is missing, unreadable or for other
    settings. Returns (model, info) with info = dict(train_s, steps, seed, path)."""
    config = dict(steps=steps, seed=seed, width=16, features=64, jitter=JITTER, version=1)

    def fit():
        start = time.perf_counter()
        model, _ = train_captioner(steps=steps, seed=seed, log=log)
        return model, dict(train_s=round(time.perf_counter() - start, 1), steps=steps, seed=seed)
    model = judge.DigitCNN(config["width"], config["features"])
    return judge.load_or_train(path, config, model, fit, "captioner", retrain, log)


# ----------------------------------------------------------------------------- folders
def write_text(path, text):
    """A caption file written whole or not at all: a half-written caption would train as a real one."""
    save_atomic(path, lambda f: f.write((text + "\n").encode("utf-8")))


def caption_folder(root, model, threshold=THRESHOLD, recaption=False, chunk=64, log=print):
    """Write name.txt beside every name.gif of root that has none (recaption=True: beside every one, replacing
    the caption there), so the folder trains like any other (data/video_folder.py). Clips it is unsure of get
    no caption (recaptioning keeps theirs) and are listed in root/unsure.tsv: name, confidence, why, best guess.
    Returns dict(total, captioned, unsure, skipped)."""
    if not os.path.isdir(root):
        raise ValueError(f"video folder {root} does not exist")
    names = sorted(f for f in os.listdir(root) if f.lower().endswith(".gif"))
    todo = [f for f in names if recaption or not os.path.isfile(os.path.join(root, os.path.splitext(f)[0] + ".txt"))]
    captioned, unsure = 0, []
    for start in range(0, len(todo), chunk):
        by_length = {}  # clips of one length are read together
        for name in todo[start:start + chunk]:
            try:
                video = read_gif(os.path.join(root, name), 64, 1)                   # (T, 64, 64, 1) uint8
            except ValueError as e:
                unsure.append((name, 0.0, f"unreadable: {e}", ""))
                continue
            if len(video) < 2:
                unsure.append((name, 0.0, "one frame: no motion to read an axis from", ""))
                continue
            by_length.setdefault(len(video), []).append((name, torch.from_numpy(video[..., 0]).float() / 127.5 - 1))
        for clips in by_length.values():
            videos = torch.stack([v for _, v in clips])[:, None]                    # (n, 1, T, 64, 64)
            for (name, _), (text, confidence, why) in zip(clips, read_clips(model, videos, threshold)):
                if why:
                    unsure.append((name, confidence, why, text))
                else:
                    write_text(os.path.join(root, os.path.splitext(name)[0] + ".txt"), text)
                    captioned += 1
        if log and len(todo) > chunk:
            log(f"captioned {captioned}, unsure {len(unsure)} of {min(start + chunk, len(todo))} clips")
    with open(os.path.join(root, "unsure.tsv"), "w", encoding="utf-8") as f:
        f.writelines(f"{name}\t{c:.3f}\t{why}\t{text}\n" for name, c, why, text in unsure)
    return dict(total=len(names), captioned=captioned, unsure=len(unsure), skipped=len(names) - len(todo))


def corrupt(sprites, rng):
    """The caption of sprites with one fact wrong, as web captions are: one digit's label or its axis."""
    facts = [Fact(s.label, s.axis) for s in sprites]
    k = int(rng.integers(len(facts)))
    if rng.random() < 0.5:
        facts[k] = facts[k]._replace(label=(facts[k].label + int(rng.integers(1, 10))) % 10)  # another digit
    else:
        facts[k] = facts[k]._replace(axis=1 - facts[k].axis)
    return caption(facts)


def export(out, n, frames=17, noise=0.0, split="train", seed=0, max_digits=2):
    """The first n videos of MovingMNIST(split, seed) as out/00000.gif + 00000.txt, ... With noise p, exactly
    round(p n) of them, chosen by the seed, get a caption with one wrong digit or axis; out/corrupted.tsv lists
    them (name, written caption, true caption). The same arguments always write the same files."""
    if os.path.isdir(out) and any(f.lower().endswith(".gif") for f in os.listdir(out)):
        raise ValueError(f"{out} already holds clips: export into a new folder")
    if not 0 <= noise <= 1 or n < 1:
        raise ValueError(f"need n >= 1 and noise in [0, 1], got n={n}, noise={noise}")
    os.makedirs(out, exist_ok=True)
    ds = MovingMNIST(split, num_frames=frames, length=n, seed=seed, max_digits=max_digits)
    wrong = set(np.random.default_rng([seed, 34]).permutation(n)[:round(noise * n)].tolist())
    changed = []
    for i in range(n):
        video, text = ds[i]
        if i in wrong:
            changed.append((f"{i:05d}", corrupt(ds.recipe(i), np.random.default_rng([seed, 34, i])), text))
            text = changed[-1][1]
        save_gif(os.path.join(out, f"{i:05d}.gif"), video)
        write_text(os.path.join(out, f"{i:05d}.txt"), text)
    if noise:
        with open(os.path.join(out, "corrupted.tsv"), "w", encoding="utf-8") as f:
            f.writelines(f"{name}.gif\t{written}\t{true}\n" for name, written, true in changed)
    return len(changed)


def score(root, truth):
    """Captions of root against those of the folder truth, clip by clip (as sets of digit and axis):
    dict(n, agree, disagree, missing), where missing counts clips of truth that root has no caption for."""
    for folder in (root, truth):
        if not os.path.isdir(folder):
            raise ValueError(f"video folder {folder} does not exist")
    counts = dict(n=0, agree=0, disagree=0, missing=0)
    for name in sorted(f for f in os.listdir(truth) if f.endswith(".txt")):
        counts["n"] += 1
        path = os.path.join(root, name)
        if not os.path.isfile(path):
            counts["missing"] += 1
            continue
        with open(path, encoding="utf-8") as a, open(os.path.join(truth, name), encoding="utf-8") as b:
            same = parse_caption(a.read()) == parse_caption(b.read())
        counts["agree" if same else "disagree"] += 1
    return counts


def main(argv=None):
    p = ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    t = sub.add_parser("train", help="train (or load) the captioner and report it on validation clips")
    t.add_argument("--steps", type=int, default=1000)
    t.add_argument("--retrain", action="store_true", help="train afresh even if the checkpoint is cached")
    t.add_argument("--val", type=int, default=1000, help="validation clips to report on")
    t.add_argument("--frames", type=int, default=9, help="frames of the validation clips")
    c = sub.add_parser("caption", help="write name.txt beside each name.gif of a folder that has none")
    c.add_argument("folder")
    c.add_argument("--recaption", action="store_true", help="replace the captions already there (where sure)")
    e = sub.add_parser("export", help="Moving MNIST clips as a folder of name.gif + name.txt")
    e.add_argument("folder")
    e.add_argument("--n", type=int, default=8000)
    e.add_argument("--frames", type=int, default=17)
    e.add_argument("--noise", type=float, default=0.0, help="share of captions with a wrong digit or axis")
    e.add_argument("--split", choices=["train", "val"], default="train")
    e.add_argument("--seed", type=int, default=0, help="Moving MNIST's seed (train.py's seed: the same videos)")
    s = sub.add_parser("score", help="the share of a folder's captions that agree with another's")
    s.add_argument("folder")
    s.add_argument("--truth", required=True, help="the folder with the true captions")
    for q in (t, c):
        q.add_argument("--ckpt", default="runs/bench/captioner.pt")
        q.add_argument("--threshold", type=float, default=THRESHOLD, help="captions less probable are unsure")
    args = p.parse_args(argv)
    try:
        if args.command == "export":
            wrong = export(args.folder, args.n, args.frames, args.noise, args.split, args.seed)
            print(f"wrote {args.n} clips to {args.folder}" + (f", {wrong} with a wrong caption" if args.noise else ""))
        elif args.command == "score":
            r = score(args.folder, args.truth)
            print(f"{args.folder} against {args.truth}: {r['agree']} of {r['n']} captions agree "
                  f"({r['agree'] / max(1, r['n']):.1%}), {r['disagree']} disagree, {r['missing']} missing")
        else:
            if args.command == "caption" and not os.path.isdir(args.folder):  # before minutes of training
                raise ValueError(f"video folder {args.folder} does not exist")
            model, info = load_captioner(args.ckpt, getattr(args, "retrain", False), getattr(args, "steps", 1000))
            print(f"captioner {info['path']}: {info['steps']} steps in {info['train_s']} s")
            if args.command == "train":
                v = validate(model, args.val, args.frames, threshold=args.threshold)
                print(f"{v['n']} validation clips of {v['frames']} frames: digits and axes right in "
                      f"{v['accuracy']:.1%} (one digit {v['one_digit']:.1%}, two {v['two_digits']:.1%}); unsure of "
                      f"{v['unsure']:.1%}, right in {v['accuracy_captioned']:.1%} of the captions it writes "
                      f"(threshold {v['threshold']})")
            else:
                r = caption_folder(args.folder, model, args.threshold, args.recaption)
                print(f"{args.folder}: {r['captioned']} captioned, {r['unsure']} unsure (listed in "
                      f"{os.path.join(args.folder, 'unsure.tsv')}), {r['skipped']} already captioned, of {r['total']}")
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
