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
    allow_upscale=False, pad_short=False, num_frames=9, size=64 (names sort so the duplicate comes
    after its original)."""
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
    monkeypatch.setattr(vf, "read_gif",
                        lambda path, *a, **k: calls.append(os.path.basename(path)) or real(path, *a, **k))
    cache = str(out / "scan.json")

    def scan(**k):
        return scan_folder(str(root), 9, 64, 1, pad_short=False, cache=cache, progress=False, **k)

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
    with pytest.raises(ValueError, match=r"no usable clips \(no .gif or image files\)"):
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


# ----------------------------------------------------------------------------- images
def write_image(path, pixels, caption="digit 1 is moving up and down"):
    """uint8 (H, W) or (H, W, 3) pixels as a PNG or JPEG (by the suffix), and its caption unless None."""
    Image.fromarray(pixels).save(path)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption + "\n")


def noise(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_images_are_scanned_kept_and_served_as_one_frame(tmp_path):
    ds = write_clips(tmp_path, n=2)
    frame = ((ds[0][0][0, 0] + 1) * 127.5).round().byte().numpy()  # 64 x 64 already: no resampling
    write_image(tmp_path / "still.png", frame, "digit 7 stands still")
    write_image(tmp_path / "clip0.PNG", frame, caption=None)  # beside clip0.gif: its own entry, same caption
    pairs, report = scan_folder(str(tmp_path), 9, 64, 1, progress=False)
    assert [os.path.basename(m) for m, _ in pairs] == ["clip0.PNG", "clip0.gif", "clip1.gif", "still.png"]
    assert report["kept"] == report["total"] == 4 and pairs[0][1] == pairs[1][1] == str(tmp_path / "clip0.txt")

    images = VideoFolder(str(tmp_path), num_frames=9, size=64, channels=1, train=False, pairs=pairs, images=True)
    assert [os.path.basename(m) for m, _ in images.pairs] == ["clip0.PNG", "still.png"]
    video, caption = images[1]
    assert video.shape == (1, 1, 64, 64) and caption == "digit 7 stands still"
    assert torch.equal(video[0, 0], torch.from_numpy(frame).float().div(127.5).sub(1.0))  # PNG is lossless
    assert images[0][1] == ds[0][1]
    clips = VideoFolder(str(tmp_path), num_frames=9, size=64, channels=1, train=False, pairs=pairs)
    assert [os.path.basename(m) for m, _ in clips.pairs] == ["clip0.gif", "clip1.gif"]
    assert clips[1][0].shape == (1, 9, 64, 64)
    # without pairs: the same kinds from the listing; an RGB image at another size
    assert VideoFolder(str(tmp_path), images=True).pairs == images.pairs
    assert VideoFolder(str(tmp_path)).pairs == clips.pairs
    rgb = VideoFolder(str(tmp_path), num_frames=9, size=32, channels=3, images=True)[1][0]
    assert rgb.shape == (3, 1, 32, 32) and rgb.min() >= -1 and rgb.max() <= 1


def test_scan_filters_images_like_clips_except_motion_and_length(tmp_path):
    write_clips(tmp_path, n=1)                                     # clip0.gif moves far less than 0.5
    write_image(tmp_path / "photo.png", noise((64, 80)))
    write_image(tmp_path / "photo2.jpg", noise((64, 64, 3), seed=1))
    write_image(tmp_path / "black.png", np.zeros((64, 64), np.uint8))
    write_image(tmp_path / "small.jpeg", noise((32, 48), seed=2))  # shorter side 32 < 64
    write_image(tmp_path / "cat.png", noise((64, 64), seed=3), "a cat sitting still")
    (tmp_path / "zcopy.png").write_bytes((tmp_path / "photo.png").read_bytes())  # "zcopy" sorts after "photo"
    (tmp_path / "zcopy.txt").write_text("digit 2 is moving up and down\n")
    (tmp_path / "nocap.png").write_bytes((tmp_path / "photo2.jpg").read_bytes())
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "broken.txt").write_text("digit 1 is moving up and down\n")
    pairs, report = scan_folder(str(tmp_path), 9, 64, 1, min_motion=0.5, min_content=0.05, dedupe=True,
                                caption_regex="^digit", pad_short=False, allow_upscale=False, progress=False)
    assert {r: n for r, n in report["dropped"].items() if n} == {
        "unreadable": ["broken.png"], "no caption": ["nocap.png"], "too small": ["small.jpeg"],
        "static": ["clip0.gif"], "blank": ["black.png"], "duplicate": ["zcopy.png"], "caption mismatch": ["cat.png"]}
    assert [os.path.basename(m) for m, _ in pairs] == ["photo.png", "photo2.jpg"]  # 1 frame: neither static nor short
    assert "cannot read image" in report["details"]["broken.png"] and "broken.png" in report["details"]["broken.png"]
    assert "kept 2 of 9 clips; dropped: 1 unreadable, 1 no caption" in format_report(report, str(tmp_path))


def test_read_image_resizes_crops_and_converts_like_a_gif_frame(tmp_path):
    assert [vf.is_image(p) for p in ("a.png", "b.JPEG", "c/d.Jpg", "e.gif", "f.txt", "png")] == \
        [True, True, True, False, False, False]
    red = np.zeros((20, 40, 3), np.uint8)
    red[..., 0] = 255
    Image.fromarray(red).save(tmp_path / "red.jpg", quality=95)
    gray = vf.read_image(str(tmp_path / "red.jpg"), 16, 1)
    assert gray.shape == (1, 16, 16, 1) and gray.dtype == np.uint8
    assert np.abs(gray.astype(int) - 76).max() <= 3  # luma of pure red: 0.299 * 255
    frame = noise((30, 50))
    Image.fromarray(frame).save(tmp_path / "f.png")
    write_frames(tmp_path / "f.gif", frame[None])
    for channels in (1, 3):  # the same pixels give the same frame, whichever file they came in
        image = vf.read_image(str(tmp_path / "f.png"), 16, channels)
        assert image.shape == (1, 16, 16, channels)
        assert np.array_equal(image, vf.read_gif(str(tmp_path / "f.gif"), 16, channels))
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="cannot read image .*bad.jpg"):
        vf.read_image(str(tmp_path / "bad.jpg"), 16, 1)


def test_missing_kind_named(tmp_path):
    write_image(tmp_path / "a.png", noise((16, 16)))
    write_image(tmp_path / "b.jpg", noise((16, 16, 3), seed=1))
    pairs, _ = scan_folder(str(tmp_path), 9, 16, 1, progress=False)  # images alone are usable
    for kept in (None, pairs):
        with pytest.raises(ValueError, match=f"no name.gif \\+ name.txt pairs in video folder {tmp_path}"):
            VideoFolder(str(tmp_path), pairs=kept)
        assert len(VideoFolder(str(tmp_path), size=16, pairs=kept, images=True)) == 2
    gifs = tmp_path / "gifs"
    gifs.mkdir()
    write_clips(gifs, n=1)
    with pytest.raises(ValueError, match=f"no name.png/.jpg \\+ name.txt image pairs in video folder {gifs}"):
        VideoFolder(str(gifs), images=True)


def test_scan_cache_skips_unchanged_images(tmp_path, monkeypatch):
    root, cache = tmp_path / "media", str(tmp_path / "run" / "scan.json")
    root.mkdir()
    write_clips(root, n=1)
    write_image(root / "a.png", noise((64, 64)))
    write_image(root / "b.jpg", noise((64, 64, 3), seed=1))
    (root / "broken.png").write_bytes(b"garbage")
    (root / "broken.txt").write_text("digit 1 is moving up and down\n")
    calls = []
    for name in ("read_gif", "read_image"):
        real = getattr(vf, name)
        monkeypatch.setattr(vf, name, lambda path, *a, real=real, **k: calls.append(os.path.basename(path))
                            or real(path, *a, **k))

    def scan():
        return scan_folder(str(root), 9, 64, 1, min_content=0.05, cache=cache, progress=False)

    first = scan()
    assert sorted(calls) == ["a.png", "b.jpg", "broken.png", "clip0.gif"]
    calls.clear()
    assert scan() == first and calls == []  # unchanged files, images and the broken one too, are not decoded
    write_image(root / "a.png", np.zeros((64, 64), np.uint8), caption=None)  # changed: decoded, now blank
    _, report = scan()
    assert calls == ["a.png"] and report["dropped"]["blank"] == ["a.png"]
    calls.clear()
    monkeypatch.setattr(vf, "CACHE_VERSION", vf.CACHE_VERSION + 1)  # another version: the cache does not apply
    scan()
    assert len(calls) == 4
