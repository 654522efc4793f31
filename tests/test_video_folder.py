import pytest
import torch

from data.moving_mnist import MovingMNIST, save_gif
from data.video_folder import VideoFolder


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
