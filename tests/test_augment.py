import numpy as np
import pytest
import torch

from data import config
from data.augment import SHIFT, Augmented, augment, shift
from data.loading import video_dataset
from data.moving_mnist import MovingMNIST


def shifted_by(original, moved):
    """The one (dy, dx) within SHIFT that turns every frame of original into moved (background -1), or None."""
    for dy in range(-SHIFT, SHIFT + 1):
        for dx in range(-SHIFT, SHIFT + 1):
            guess = torch.full_like(original, -1.0)
            h, w = original.shape[-2:]
            guess[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
                original[..., max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
            if torch.equal(guess, moved):
                return dy, dx
    return None


def test_reverse_keeps_the_caption_and_reverses_time_exactly():
    base = MovingMNIST("train", num_frames=9, length=10)
    ds = Augmented(base, ["reverse"], seed=0)
    assert len(ds) == 20
    for j in range(10):
        (source, text), (copy, copy_text) = ds[2 * j], ds[2 * j + 1]
        assert torch.equal(source, base[j][0]) and text == copy_text == base[j][1] == ds.caption(2 * j + 1)
        assert torch.equal(copy, source.flip(1))  # frame t of the copy is frame T - 1 - t of the source


def test_shift_moves_every_frame_alike_and_keeps_all_ink_inside():
    ds = MovingMNIST("train", num_frames=9, length=60)
    moved = 0
    for i in range(60):
        video = ds[i][0]
        out = shift(video, np.random.default_rng(i))
        offset = shifted_by(video, out)
        assert offset is not None                                      # one offset for the whole clip
        assert torch.equal(out.flatten().sort().values, video.flatten().sort().values)  # no ink left the frame
        moved += offset != (0, 0)
    assert moved > 40
    # a clip whose ink touches an edge is not moved towards it
    video = torch.full((1, 3, 64, 64), -1.0)
    video[:, :, 0:5, 30:34] = 1.0
    for seed in range(20):
        dy, _ = shifted_by(video, shift(video, np.random.default_rng(seed)))
        assert dy >= 0


def test_each_copy_is_fixed_by_the_seed_and_differs_from_its_source():
    base = MovingMNIST("train", num_frames=9, length=12)
    a, b = Augmented(base, ["reverse", "shift"], seed=0), Augmented(base, ["reverse", "shift"], seed=0)
    other = Augmented(base, ["reverse", "shift"], seed=1)
    assert all(torch.equal(a[i][0], b[i][0]) for i in range(24))
    assert any(not torch.equal(a[i][0], other[i][0]) for i in range(1, 24, 2))
    assert all(not torch.equal(a[2 * j][0], a[2 * j + 1][0]) for j in range(12))  # at least one transform each
    with pytest.raises(ValueError, match="augmentations must be some of"):
        Augmented(base, ["rotate"], seed=0)
    assert torch.equal(augment(base[0][0], ["flip"], np.random.default_rng(0)), base[0][0].flip(-1))


def test_off_is_the_dataset_of_today_and_on_pairs_sources_with_copies():
    cfg, _ = config.parse_args([])
    assert cfg.data.augment == []
    plain = video_dataset(cfg, "train", 9, length=8)
    assert type(plain) is MovingMNIST and len(plain) == 8
    cfg, _ = config.parse_args(["--data.augment=[reverse]"])
    paired = video_dataset(cfg, "train", 9, length=8)
    assert isinstance(paired, Augmented) and len(paired) == 8 and len(paired.base) == 4
    assert all(torch.equal(paired[2 * j][0], plain[j][0]) for j in range(4))  # the sources are today's videos
    assert type(video_dataset(cfg, "val", 9, length=8)) is MovingMNIST      # validation is never augmented
    assert type(video_dataset(cfg, "train", 1, length=8, images=True)) is MovingMNIST


def test_flip_is_allowed_with_a_warning_and_a_typo_is_a_one_line_error(capsys):
    args = type("Args", (), {"stage": "vae", "resume": False})()
    cfg, _ = config.parse_args(["--data.augment=[flip]", "--out_dir=/nonexistent/aug"])
    config.check_config(cfg, args, world=1)
    assert "mirrored 3 trains as a 3" in capsys.readouterr().err
    cfg, _ = config.parse_args(["--data.augment=[reverse, flop]"])
    with pytest.raises(SystemExit, match=r"error: data.augment=\['reverse', 'flop'\]: each must be one of"):
        config.check_config(cfg, args, world=1)
