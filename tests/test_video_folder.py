import os

import numpy as np
import pytest
import torch
from PIL import Image

import data.video_folder as vf
from data.moving_mnist import MovingMNIST, save_gif
from data.video_folder import BAD_REASONS, FILTER_REASONS, VideoFolder, format_report, scan_folder


def write_clips(folder, n=3, frames=9):
    ds = MovingMNIST("val", num_frames=frames)
    for i in range(n):
        video, caption = ds[i]
        save_gif(str(folder / f"clip{i}.gif"), video)
        (folder / f"clip{i}.txt").write_text(caption + "\n")
    return ds


def test_roundtrip_through_gif_files(tmp_path):
    ds = write_clips(tmp_path)
    folder = VideoFolder(str(tmp_path), num_frames=9, size=64, channels=1, train=False)
    assert len(folder) == 3
    for i in range(3):
        video, caption = folder[i]
        original, text = ds[i]
        assert video.shape == (1, 9, 64, 64) and caption == text
        assert (video - original).abs().max() <= 1 / 127.5 + 1e-6  # only 8-bit quantisation


def test_resize_crop_pad_sample_and_rgb(tmp_path):
    write_clips(tmp_path, n=1, frames=5)
    short = VideoFolder(str(tmp_path), num_frames=8, size=32, channels=3)[0][0]
    assert short.shape == (3, 8, 32, 32)
    assert torch.equal(short[:, 4], short[:, 7])  # padded with the last frame
    assert torch.equal(short[0], short[1])        # grayscale source gives equal RGB channels
    long = VideoFolder(str(tmp_path), num_frames=3, size=64, train=True)[0][0]
    assert long.shape == (1, 3, 64, 64)


def test_unreadable_file_named(tmp_path):
    write_clips(tmp_path, n=1)
    (tmp_path / "broken.gif").write_bytes(b"GIF89a garbage")
    (tmp_path / "broken.txt").write_text("digit 1 is moving up and down")
    folder = VideoFolder(str(tmp_path), train=False)
    with pytest.raises(ValueError, match="broken.gif"):
        folder[0]
    (tmp_path / "clip0.txt").write_text("  \n")
    with pytest.raises(ValueError, match="clip0.txt"):
        folder.caption(1)


def test_empty_folder_named(tmp_path):
    (tmp_path / "lonely.gif").write_bytes(b"")
    with pytest.raises(ValueError, match=str(tmp_path)):
        VideoFolder(str(tmp_path))
    with pytest.raises(ValueError, match="does not exist"):
        VideoFolder(str(tmp_path / "nope"))


# ----------------------------------------------------------------------------- scan_folder
def write_frames(path, frames):
    """uint8 (T, H, W) grayscale frames as a GIF, written with PIL directly."""
    images = [Image.fromarray(f, "L") for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=125, loop=0)


def write_zoo(folder):
    """One clip of each kind; returns {reason: [gif names]} as scan_folder should drop them
    with min_motion=0.005, min_content=0.05, dedupe, min_caption_words=3, caption_regex="^digit",
    allow_upscale=False, pad_short=False, num_frames=9, size=64 (names sort so the duplicate comes after its original)."""
    ds = write_clips(folder, n=3)  # clip0..clip2: the good ones
    frame = ((ds[0][0][0, 0] + 1) * 127.5).round().byte().numpy()
    static = np.repeat(frame[None], 9, axis=0)
    static[1::2, 0, 0] ^= 1  # one pixel flickers by one grey level, else Pillow merges the frames into one
    dark = np.random.default_rng(0).integers(0, 11, size=(9, 64, 64)).astype(np.uint8)  # black + sensor noise
    write_frames(folder / "static.gif", static)
    write_frames(folder / "blank.gif", dark)
    (folder / "copy.gif").write_bytes((folder / "clip0.gif").read_bytes())  # "copy" sorts after "clip0"
    save_gif(str(folder / "short.gif"), ds[1][0][:, :4])                   # 4 frames < 9
    save_gif(str(folder / "small.gif"), ds[2][0][:, :, ::2, ::2])          # 32x32 source < 64
    for name in ("short", "small", "static", "blank"):
        (folder / f"{name}.txt").write_text("digit 1 is moving up and down\n")
    (folder / "copy.txt").write_text("digit 5 is moving left and right\n")
    save_gif(str(folder / "words.gif"), ds[3][0])  # own frames: a copy would be a "duplicate" first
    (folder / "words.txt").write_text("digit\n")
    save_gif(str(folder / "cat.gif"), ds[4][0])
    (folder / "cat.txt").write_text("a cat is moving up and down\n")
    (folder / "broken.gif").write_bytes(b"GIF89a garbage")
    (folder / "broken.txt").write_text("digit 1 is moving up and down\n")
    (folder / "nocap.gif").write_bytes((folder / "clip0.gif").read_bytes())  # copies: caption reasons come first
    (folder / "empty.gif").write_bytes((folder / "clip1.gif").read_bytes())
    (folder / "empty.txt").write_text("  \n")
    (folder / "latin1.gif").write_bytes((folder / "clip2.gif").read_bytes())
    (folder / "latin1.txt").write_bytes("digit 3 is moving caf\xe9".encode("latin-1"))
    (folder / "stray.txt").write_text("a caption without a video\n")  # ignored
    return {"unreadable": ["broken.gif"], "no caption": ["nocap.gif"], "empty caption": ["empty.gif"],
            "caption unreadable": ["latin1.gif"], "too short": ["short.gif"], "too small": ["small.gif"],
            "static": ["static.gif"], "blank": ["blank.gif"], "duplicate": ["copy.gif"],
            "short caption": ["words.gif"], "caption mismatch": ["cat.gif"]}


FILTERS = dict(min_motion=0.005, min_content=0.05, dedupe=True, min_caption_words=3, caption_regex="^digit",
               allow_upscale=False)


def test_scan_drops_each_kind_for_its_reason(tmp_path):
    expected = write_zoo(tmp_path)
    pairs, report = scan_folder(str(tmp_path), 9, 64, 1, pad_short=False, progress=False, **FILTERS)
    assert tuple(report["dropped"]) == BAD_REASONS + FILTER_REASONS  # every reason, in a stable order
    assert report["dropped"] == expected
    assert report["kept"] == 3 and report["total"] == 3 + len(expected)
    assert pairs == [(str(tmp_path / f"clip{i}.gif"), str(tmp_path / f"clip{i}.txt")) for i in range(3)]
    assert set(report["details"]) == {n for names in expected.values() for n in names}
    assert "cannot read video" in report["details"]["broken.gif"]


def test_scan_defaults_drop_only_broken_clips(tmp_path):
    expected = write_zoo(tmp_path)
    pairs, report = scan_folder(str(tmp_path), 9, 64, 1, progress=False)
    structural = ("unreadable", "no caption", "empty caption", "caption unreadable")
    assert report["dropped"] == {r: expected[r] if r in structural else [] for r in report["dropped"]}
    assert report["kept"] == 10  # short clips are padded, small ones upscaled; no filter is on
    # a truly static clip (Pillow merges it to one frame) and an all-black one, each with only its filter on
    frame = np.full((64, 64), 128, np.uint8)
    write_frames(tmp_path / "still.gif", np.repeat(frame[None], 9, axis=0))
    write_frames(tmp_path / "black.gif", np.zeros((9, 64, 64), np.uint8))
    (tmp_path / "still.txt").write_text("digit 1 is moving up and down")
    (tmp_path / "black.txt").write_text("digit 1 is moving up and down")
    _, report = scan_folder(str(tmp_path), 9, 64, 1, min_motion=0.005, progress=False)
    assert report["dropped"]["static"] == ["black.gif", "static.gif", "still.gif"]
    _, report = scan_folder(str(tmp_path), 9, 64, 1, min_content=0.05, progress=False)
    assert report["dropped"]["blank"] == ["black.gif", "blank.gif", "still.gif"]


def test_scan_cache_skips_unchanged_files(tmp_path, monkeypatch):
    root, out = tmp_path / "clips", tmp_path / "run"
    root.mkdir()
    write_zoo(root)
    before = sorted(os.listdir(root))
    calls = []
    real = vf.read_gif
    monkeypatch.setattr(vf, "read_gif", lambda path, *a, **k: calls.append(os.path.basename(path)) or real(path, *a, **k))
    cache = str(out / "scan.json")
    scan = lambda **k: scan_folder(str(root), 9, 64, 1, pad_short=False, cache=cache, progress=False, **k)

    first = scan(**FILTERS)
    assert len(calls) == len([f for f in before if f.endswith(".gif")])  # each gif decoded once
    assert os.path.isfile(cache) and sorted(os.listdir(out)) == ["scan.json"]  # no tmp file left behind
    calls.clear()
    assert scan(**FILTERS) == first and calls == []  # unchanged files (the broken one too) are not decoded

    stat = os.stat(root / "clip1.gif")  # a new mtime alone is a change
    os.utime(root / "clip1.gif", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    (root / "clip2.gif").write_bytes((root / "small.gif").read_bytes())  # new size and content
    (root / "clip0.txt").write_text("\n")  # a caption change needs no decode
    _, report = scan(**FILTERS)
    assert sorted(calls) == ["clip1.gif", "clip2.gif"]
    assert "clip2.gif" in report["dropped"]["too small"] and "clip0.gif" in report["dropped"]["empty caption"]
    # clip0 no longer kept, so its byte-identical copy is the original now
    assert report["dropped"]["duplicate"] == [] and report["kept"] == 2

    calls.clear()
    _, report = scan(**dict(FILTERS, min_motion=0.03))  # new threshold: new result, no decoding
    assert calls == [] and "copy.gif" in report["dropped"]["static"] and report["kept"] == 1  # copy moves 0.021
    scan_folder(str(root), 9, 32, 1, cache=cache, progress=False)  # another size: the cache does not apply
    assert len(calls) == len([f for f in before if f.endswith(".gif")])
    assert sorted(os.listdir(root)) == before  # nothing written into the data folder
    with pytest.raises(ValueError, match="must not be written into the video folder"):
        scan_folder(str(root), 9, 64, 1, cache=str(root / "scan.json"), progress=False)


def test_scan_all_bad_names_folder_and_reasons(tmp_path, capsys):
    for i in range(3):
        (tmp_path / f"bad{i}.gif").write_bytes(b"GIF89a garbage")
        (tmp_path / f"bad{i}.txt").write_text("digit 1 is moving up and down")
    write_clips(tmp_path, n=2)
    (tmp_path / "clip0.txt").unlink()
    (tmp_path / "clip1.txt").write_text("")
    with pytest.raises(ValueError, match=f"video folder {tmp_path}: no usable clips "
                                         r"\(3 unreadable, 1 no caption, 1 empty caption\)"):
        scan_folder(str(tmp_path), 9, 64, 1)
    assert capsys.readouterr().err == ""  # a small folder scans without a progress bar
    for i in range(3, 50):
        (tmp_path / f"bad{i}.gif").write_bytes(b"GIF89a garbage")
    with pytest.raises(ValueError, match="50 unreadable, 1 no caption, 1 empty caption"):
        scan_folder(str(tmp_path), 9, 64, 1)
    assert f"scan {tmp_path}" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no usable clips \(no .gif files\)"):
        scan_folder(str(tmp_path / "empty"), 9, 64, 1)
    with pytest.raises(ValueError, match="does not exist"):
        scan_folder(str(tmp_path / "nope"), 9, 64, 1)


def test_video_folder_uses_scanned_pairs(tmp_path):
    write_zoo(tmp_path)
    pairs, _ = scan_folder(str(tmp_path), 9, 64, 1, pad_short=False, progress=False, **FILTERS)
    folder = VideoFolder(str(tmp_path), num_frames=9, size=64, channels=1, train=False, pairs=pairs)
    assert folder.pairs == pairs and len(folder) == 3
    ds = MovingMNIST("val", num_frames=9)
    for i in range(3):
        video, caption = folder[i]
        assert video.shape == (1, 9, 64, 64) and caption == ds[i][1]
    assert len(VideoFolder(str(tmp_path), num_frames=9)) == 13  # without pairs: every gif with a txt, as before


def test_format_report_counts_each_reason(tmp_path):
    write_zoo(tmp_path)
    for i in range(3, 8):
        (tmp_path / f"zbroken{i}.gif").write_bytes(b"GIF89a garbage")
    _, report = scan_folder(str(tmp_path), 9, 64, 1, pad_short=False, progress=False, **FILTERS)
    text = format_report(report, str(tmp_path))
    first = text.splitlines()[0]
    assert first.startswith(f"video folder {tmp_path}: kept 3 of 19 clips; dropped: 6 unreadable, 1 no caption")
    for reason, names in report["dropped"].items():
        assert f"{len(names)} {reason}" in first
    assert "  unreadable: broken.gif, zbroken3.gif, zbroken4.gif, ..." in text
    assert "  static: static.gif" in text
    assert format_report({"kept": 2, "dropped": {r: [] for r in report["dropped"]}}, "x") == \
        "video folder x: kept 2 of 2 clips; dropped: none"
