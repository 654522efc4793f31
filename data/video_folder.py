"""Your own clips: a folder of `name.gif` + `name.txt` pairs (sample.py writes the same format).

Still images (`name.png`/`.jpg`/`.jpeg` + `name.txt`) in the same folder are 1-frame videos, for
joint image + video training as CogVideoX and HunyuanVideo do: a causal VAE encodes an image as one
latent frame, so images teach appearance from data far more plentiful than clips.
VideoFolder(..., images=True) serves them, (C, 1, size, size) each; the default serves the clips.

Frames are resized (shorter side to `size`) and centre-cropped to size x size.
A clip longer than `num_frames` gives a window of consecutive frames (a random
start in training, the first frames otherwise); a shorter one is padded by
repeating its last frame, so every item has exactly `num_frames` frames.

    ds = VideoFolder("my_clips/", num_frames=17, size=64, channels=1)
    video, caption = ds[0]    # float [C, T, size, size] in [-1, 1], str

`scan_folder` reads every clip once before training, so a broken file is found
in the first minute instead of when a batch reaches it hours in, and filters the
data the way large pipelines do (HunyuanVideo drops static clips, near-blank
clips, duplicates and poor captions before training on anything):

    pairs, report = scan_folder("my_clips/", 17, 64, 1, min_motion=0.01, dedupe=True,
                                cache="runs/x/scan.json")
    print(format_report(report, "my_clips/"))
    ds = VideoFolder("my_clips/", 17, 64, 1, pairs=pairs)
"""
import hashlib
import io
import json
import os
import random
import re

import numpy as np
import torch
from PIL import Image, ImageOps, ImageSequence
from torch.utils.data import Dataset
from tqdm import tqdm

# Why a clip is dropped, in the order they are tested (a clip gets the first that applies).
# BAD_REASONS are broken or unusable files: worth stopping for. FILTER_REASONS are
# deliberate data filtering, each off unless its setting asks for it.
BAD_REASONS = ("unreadable", "no caption", "empty caption", "caption unreadable", "too short", "too small")
FILTER_REASONS = ("static", "blank", "duplicate", "short caption", "caption mismatch")
REASONS = BAD_REASONS + FILTER_REASONS
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
CACHE_VERSION = 2  # bump when read_gif/read_image or the facts below change meaning: old caches are then ignored


def is_image(path):
    """True for a still image (.png, .jpg, .jpeg in any case), which is served as a 1-frame video."""
    return path.lower().endswith(IMAGE_EXTENSIONS)


def _fit(frame, size):
    """Shorter side resized to `size`, centre-cropped to size x size, as uint8 (H, W) or (H, W, C)."""
    scale = size / min(frame.size)
    w, h = max(size, round(frame.width * scale)), max(size, round(frame.height * scale))
    frame = frame.resize((w, h), Image.BICUBIC)
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(frame.crop((left, top, left + size, top + size)))


def read_image(path, size, channels, return_size=False):
    """One still image as uint8 (1, size, size, C), the layout of read_gif; raises ValueError naming the file
    if unreadable. return_size=True also returns the source's (width, height), as read_gif does."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)  # phone photos are stored sideways, with the turn in EXIF
            source_size = im.size
            frame = _fit(im.convert({1: "L", 3: "RGB"}[channels]), size)  # convert decodes, so errors land here
    except (OSError, ValueError, SyntaxError) as e:  # PIL raises all three on broken files
        raise ValueError(f"cannot read image {path}: {e}") from e
    video = np.stack([frame])  # a writable copy: PIL's own array is read-only, and torch warns on those
    video = video[..., None] if channels == 1 else video
    return (video, source_size) if return_size else video


def read_gif(path, size, channels, return_size=False):
    """All frames of a GIF as uint8 (T, size, size, C); raises ValueError naming the file if unreadable.

    With return_size=True, returns (video, (width, height)) with the size of the source
    before resizing: the header has it, so knowing it costs nothing extra.
    """
    mode = {1: "L", 3: "RGB"}[channels]
    try:
        with Image.open(path) as im:
            source_size = im.size
            frames, durations = [], []
            for frame in ImageSequence.Iterator(im):
                durations.append(frame.info.get("duration", 0))
                frames.append(_fit(frame.convert(mode), size))  # convert decodes palettes and frame disposal
    except (OSError, ValueError, SyntaxError) as e:  # PIL raises all three on broken files
        raise ValueError(f"cannot read video {path}: {e}") from e
    if not frames:
        raise ValueError(f"video {path} has no frames")
    # GIF writers (Pillow too) merge identical consecutive frames into one longer frame;
    # repeat each frame by its duration in units of the shortest one to get them back.
    # (A clip whose frames are all identical is one frame: nothing says how long it was.)
    base = min((d for d in durations if d > 0), default=0)
    repeats = [max(1, round(d / base)) if base else 1 for d in durations]
    video = np.repeat(np.stack(frames), repeats, axis=0)
    video = video[..., None] if channels == 1 else video
    return (video, source_size) if return_size else video


# ----------------------------------------------------------------------------- scanning
def _stat(path):
    """[bytes, mtime_ns]: what the cache compares to decide that a file is unchanged (None if unstattable)."""
    try:
        st = os.stat(path)
    except OSError:  # a dangling symlink, say: read_gif then reports it as unreadable
        return None
    return [st.st_size, st.st_mtime_ns]


def _video_facts(path, size, channels):
    """Everything the filters need from one GIF or image, small enough to cache as JSON.

    Only facts that depend on the file (and size/channels) are stored, never a
    keep/drop decision: thresholds are applied afresh on every scan, so changing
    one needs no re-decode.
    """
    try:
        read = read_image if is_image(path) else read_gif
        video, (width, height) = read(path, size, channels, return_size=True)
    except ValueError as e:
        return {"error": str(e)}
    x = video.astype(np.float32) / 255  # pixels in [0, 1], so thresholds do not depend on bit depth
    motion = float(np.abs(np.diff(x, axis=0)).mean()) if len(x) > 1 else 0.0
    digest = hashlib.sha1(str(video.shape).encode() + video.tobytes()).hexdigest()
    return {"frames": len(video), "width": width, "height": height,
            "motion": motion, "std": float(x.std()), "sha1": digest}


def _caption_facts(path):
    """{"caption": text} or {"error": reason}; whitespace is normalised as VideoFolder.caption does."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except (OSError, UnicodeDecodeError):  # not UTF-8 (or not readable at all): the tokenizer needs text
        return {"error": "caption unreadable"}
    text = " ".join(text.split())
    return {"caption": text} if text else {"error": "empty caption"}


def _load_cache(cache, settings):
    """The cached per-file facts if the cache exists and was made with the same settings, else empty."""
    try:
        with open(cache, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):  # missing, truncated or not JSON: scan from scratch
        return {}, {}
    if not isinstance(data, dict) or data.get("settings") != settings:
        return {}, {}
    return data.get("videos", {}), data.get("captions", {})


def _save_cache(cache, settings, videos, captions):
    """Write atomically: an interrupted write leaves the old cache, never half a file."""
    os.makedirs(os.path.dirname(os.path.abspath(cache)), exist_ok=True)
    tmp = f"{cache}.tmp{os.getpid()}"  # one tmp per process, in case several ranks scan at once
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"settings": settings, "videos": videos, "captions": captions}, f)
    os.replace(tmp, cache)


def _counts(report):
    return ", ".join(f"{len(names)} {reason}" for reason, names in report["dropped"].items() if names)


def scan_folder(root, num_frames, size, channels, min_motion=0.0, min_content=0.0, dedupe=False,
                min_caption_words=0, caption_regex="", pad_short=True, allow_upscale=True, cache=None, progress=True):
    """Read every clip and image of `root` once; return (kept pairs, report).

    pairs: [(media_path, txt_path)] of the kept clips and images, sorted by file name, for
    VideoFolder(pairs=...), which picks the kind it serves.
    report: {"kept": int, "total": int, "dropped": {reason: [file names]} for every reason
    in REASONS order (empty lists included), "details": {file name: why, in words}}.

    Filters (each 0 / False / "" = off, the default, which keeps every readable, captioned clip,
    as VideoFolder alone would):
      min_motion         drop "static" clips: mean |frame t+1 - frame t| (pixels in [0, 1]) below it
      min_content        drop "blank" clips: pixel standard deviation over the clip below it
      dedupe             drop a "duplicate": decoded frames byte-identical to an earlier kept clip
      min_caption_words  drop a "short caption" with fewer words
      caption_regex      drop a "caption mismatch": re.search(caption_regex, caption) finds nothing
    pad_short=False drops clips with fewer than num_frames frames ("too short") instead of padding.
    Images go through the same checks except min_motion and pad_short (see below).
    allow_upscale=False drops a source whose shorter side is below `size` ("too small"): upscaling blurs.

    cache: a JSON file (in the run's out_dir, never the data folder) of per-file facts, reused
    for files whose size and mtime are unchanged, so a resume or a second stage does not decode again.
    Raises ValueError naming the folder and the reasons when no clip is kept.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    if not os.path.isdir(root):
        raise ValueError(f"video folder {root} does not exist")
    if cache and os.path.commonpath([os.path.realpath(cache), os.path.realpath(root)]) == os.path.realpath(root):
        raise ValueError(f"scan cache {cache} must not be written into the video folder {root}")
    pattern = re.compile(caption_regex) if caption_regex else None  # a bad regex fails here, before any decoding

    # The facts depend on the folder and on how frames are decoded; nothing else invalidates them.
    settings = {"version": CACHE_VERSION, "root": os.path.realpath(root), "size": size, "channels": channels}
    old_videos, old_captions = _load_cache(cache, settings) if cache else ({}, {})
    videos, captions = {}, {}  # rebuilt from scratch, so entries of deleted files drop out

    # stray .txt files are ignored; name.gif and name.png are two entries, sharing name.txt
    files = sorted(f for f in os.listdir(root) if f.lower().endswith(".gif") or is_image(f))
    report = {"kept": 0, "total": len(files), "dropped": {r: [] for r in REASONS}, "details": {}}
    pairs, seen = [], set()
    for name in tqdm(files, desc=f"scan {root}", disable=not progress or len(files) < 50):
        path = os.path.join(root, name)
        txt = os.path.splitext(name)[0] + ".txt"
        txt_path = os.path.join(root, txt)
        # A still has no motion and is never short (it is served as exactly one frame), so min_motion
        # and pad_short skip images; every other check applies to them as to clips.
        clip = not is_image(name)

        stat = _stat(path)
        facts = old_videos.get(name)
        if facts is None or stat is None or facts.get("stat") != stat:
            facts = dict(_video_facts(path, size, channels), stat=stat)
        videos[name] = facts
        cap = None
        if os.path.isfile(txt_path):
            stat = _stat(txt_path)
            cap = old_captions.get(txt)
            if cap is None or stat is None or cap.get("stat") != stat:
                cap = dict(_caption_facts(txt_path), stat=stat)
            captions[txt] = cap

        # The first reason that applies, in REASONS order; None keeps the clip.
        reason, why = None, None
        if "error" in facts:
            reason, why = "unreadable", facts["error"]
        elif cap is None:
            reason, why = "no caption", f"no {txt}"
        elif "error" in cap:
            reason, why = cap["error"], f"{txt}: {cap['error']}"
        elif clip and not pad_short and facts["frames"] < num_frames:
            reason, why = "too short", f"{facts['frames']} frames < {num_frames}"
        elif not allow_upscale and min(facts["width"], facts["height"]) < size:
            reason, why = "too small", f"source {facts['width']}x{facts['height']} < {size}"
        elif clip and min_motion and facts["motion"] < min_motion:
            reason, why = "static", f"motion {facts['motion']:.4g} < {min_motion}"
        elif min_content and facts["std"] < min_content:
            reason, why = "blank", f"pixel std {facts['std']:.4g} < {min_content}"
        elif dedupe and facts["sha1"] in seen:
            reason, why = "duplicate", "same frames as an earlier clip or image"
        elif min_caption_words and len(cap["caption"].split()) < min_caption_words:
            reason, why = "short caption", f"{len(cap['caption'].split())} words < {min_caption_words}"
        elif pattern and pattern.search(cap["caption"]) is None:
            reason, why = "caption mismatch", f"caption does not match {caption_regex!r}"

        if reason is None:
            pairs.append((path, txt_path))
            seen.add(facts["sha1"])  # only kept clips count as originals: a dropped copy keeps no one out
        else:
            report["dropped"][reason].append(name)
            report["details"][name] = why
    report["kept"] = len(pairs)

    if cache:
        _save_cache(cache, settings, videos, captions)
    if not pairs:
        raise ValueError(f"video folder {root}: no usable clips ({_counts(report) or 'no .gif or image files'})")
    return pairs, report


def format_report(report, root):
    """A few lines for the log: the counts per reason, then up to 3 example names each."""
    total = report.get("total", report["kept"] + sum(len(n) for n in report["dropped"].values()))
    lines = [f"video folder {root}: kept {report['kept']} of {total} clips; dropped: {_counts(report) or 'none'}"]
    for reason, names in report["dropped"].items():
        if names:
            lines.append(f"  {reason}: {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- one picture: a video's first frame
def first_frame(source, channels, height, width):
    """A picture as the first frame (1, channels, 1, height, width) in [-1, 1] that a checkpoint's VAE takes: gray
    (mode L) for 1 channel, RGB for 3, at its size. source: a path to a png, jpg or gif (its first frame), or such
    a file's bytes (08_serve.py's uploads). Anything else is a ValueError that says what to give instead."""
    if channels not in (1, 3):
        raise ValueError(f"this checkpoint's VAE takes {channels} channels, which no image file has")
    if isinstance(source, str) and not os.path.isfile(source):
        raise ValueError("no such file")
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)  # reads the header only
        image.seek(0)  # an animation's first frame
    except (OSError, ValueError, Image.DecompressionBombError) as e:  # PIL's "cannot identify" is an OSError
        raise ValueError(f"cannot read it as a png, jpg or gif ({e})") from None
    expected = f"a {height}x{width} (height x width) {'gray (mode L)' if channels == 1 else 'RGB'} image"
    if image.size != (width, height):  # checked before decoding: a huge upload is refused cheaply
        raise ValueError(f"it is {image.height}x{image.width}; this checkpoint makes {height}x{width} frames, "
                         f"so give {expected}")
    try:
        rgb = np.array(image.convert("RGB"))  # (H, W, 3) uint8; a truncated file fails here
    except (OSError, ValueError) as e:
        raise ValueError(f"it cannot be decoded ({e})") from None
    if channels == 1 and not (rgb == rgb[..., :1]).all():
        raise ValueError(f"it is in colour ({image.mode}), but this checkpoint's VAE takes 1 channel: give {expected}")
    pixels = torch.from_numpy(rgb[..., :1] if channels == 1 else rgb).float() / 127.5 - 1  # (H, W, C) in [-1, 1]
    return pixels.permute(2, 0, 1)[None, :, None]  # (1, C, 1, H, W)


# ----------------------------------------------------------------------------- dataset
class VideoFolder(Dataset):
    def __init__(self, root, num_frames=17, size=64, channels=1, train=True, pairs=None, images=False):
        """pairs: [(media_path, txt_path)] from scan_folder; None lists every pair in `root` unchecked.

        Serves one kind: the clips (images=False), or the images as 1-frame videos (images=True,
        num_frames then unused), so a batch never mixes lengths; joint training keeps one of each.
        """
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
        if not os.path.isdir(root):
            raise ValueError(f"video folder {root} does not exist")
        if pairs is None:  # sorted by stem first, so a folder of gifs keeps the order it always had
            files = sorted((f for f in os.listdir(root) if f.lower().endswith(".gif") or is_image(f)),
                           key=lambda f: (os.path.splitext(f)[0], f))
            pairs = [(os.path.join(root, f), os.path.join(root, os.path.splitext(f)[0] + ".txt")) for f in files]
            pairs = [(media, txt) for media, txt in pairs if os.path.isfile(txt)]
        self.pairs = [(media, txt) for media, txt in pairs if is_image(media) == images]
        if not self.pairs:
            raise ValueError(f"no name.png/.jpg + name.txt image pairs in video folder {root}" if images
                             else f"no name.gif + name.txt pairs in video folder {root}")
        self.num_frames, self.size, self.channels, self.train, self.images = num_frames, size, channels, train, images

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
        if self.images:
            video = read_image(self.pairs[i][0], self.size, self.channels)  # (1, H, W, C): never cut or padded
            return torch.from_numpy(video).permute(3, 0, 1, 2).float().div(127.5).sub(1.0), self.caption(i)
        video = read_gif(self.pairs[i][0], self.size, self.channels)  # (T, H, W, C)
        extra = len(video) - self.num_frames
        if extra > 0:
            start = random.randint(0, extra) if self.train else 0
            video = video[start:start + self.num_frames]
        elif extra < 0:
            video = np.concatenate([video, np.repeat(video[-1:], -extra, axis=0)])
        video = torch.from_numpy(np.ascontiguousarray(video)).permute(3, 0, 1, 2)  # (C, T, H, W)
        return video.float().div(127.5).sub(1.0), self.caption(i)
