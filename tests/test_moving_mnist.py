import re

import numpy as np
import pytest
import torch

from data.moving_mnist import MovingMNIST, bounce, load_mnist, read_idx

GRAMMAR = re.compile(r"^digit \d is moving (up and down|left and right)"
                     r"( and digit \d is moving (up and down|left and right))?$")


@pytest.fixture(scope="module")
def train():
    return MovingMNIST("train", num_frames=17, length=400)


def test_shapes_range_and_grammar(train):
    for i in range(50):
        video, caption = train[i]
        assert video.shape == (1, 17, 64, 64) and video.dtype == torch.float32
        assert video.min() >= -1 and video.max() <= 1 and video.max() > 0.9
        assert GRAMMAR.match(caption), caption
    assert {len(train.recipe(i)) for i in range(100)} == {1, 2}


def test_caption_names_the_drawn_digit(train):
    _, labels = load_mnist()
    for i in range(100):
        sprites = train.recipe(i)
        spoken = [int(d) for d in re.findall(r"digit (\d)", train[i][1])]
        assert spoken == [int(labels[s.image]) for s in sprites]


def test_single_digit_moves_along_the_captioned_axis_only():
    ds = MovingMNIST("val", num_frames=17, max_digits=1, length=200)
    ys, xs = np.mgrid[0:64, 0:64]
    for i in range(200):
        video, caption = ds[i]
        mass = (video[0] + 1).numpy()  # (T, H, W), background 0
        total = mass.sum(axis=(1, 2))
        row = (mass * ys).sum(axis=(1, 2)) / total
        col = (mass * xs).sum(axis=(1, 2)) / total
        moving, still = (row, col) if "up and down" in caption else (col, row)
        assert np.ptp(still) < 1e-3, (i, caption)
        assert np.ptp(moving) >= 2, (i, caption)


def test_bounce_stays_inside_and_reflects():
    p = bounce(30, 5, 40, 36)
    assert p.min() >= 0 and p.max() <= 36
    assert p[1] - p[0] == 5 and p[2] == 36 - 4  # 30 -> 35 -> hits 36 and comes back to 32
    assert np.all(np.abs(np.diff(p)) <= 5)


def test_deterministic_per_split_index_seed():
    a, b = MovingMNIST("train", num_frames=9), MovingMNIST("train", num_frames=9)
    assert torch.equal(a[7][0], b[7][0]) and a[7][1] == b[7][1]
    assert not torch.equal(a[7][0], a[8][0])
    other_seed = MovingMNIST("train", num_frames=9, seed=1)
    assert not torch.equal(a[7][0], other_seed[7][0])
    # a longer clip of the same video starts with the same frames
    long = MovingMNIST("train", num_frames=17)
    assert torch.equal(long[7][0][:, :9], a[7][0])


def test_train_and_val_use_disjoint_digit_images():
    train, val = MovingMNIST("train", length=3000), MovingMNIST("val", length=3000)
    train_imgs = {s.image for i in range(len(train)) for s in train.recipe(i)}
    val_imgs = {s.image for i in range(len(val)) for s in val.recipe(i)}
    assert max(train_imgs) < 8000 <= min(val_imgs)
    assert not train_imgs & val_imgs


def test_any_frame_count():
    for t in (1, 2, 5, 33):
        assert MovingMNIST(num_frames=t)[0][0].shape == (1, t, 64, 64)


def test_bad_arguments_and_bad_files(tmp_path):
    with pytest.raises(ValueError, match="split"):
        MovingMNIST("test")
    bad = tmp_path / "bad.gz"
    bad.write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="bad.gz"):
        read_idx(str(bad))


def test_idx_reader_roundtrip(tmp_path):
    import gzip
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    path = tmp_path / "x-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(header + arr.tobytes())
    assert np.array_equal(read_idx(str(path)), arr)
