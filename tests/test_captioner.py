import os
import re

import numpy as np
import pytest
import torch

from data import captioner
from data.captioner import Fact, caption_folder, export, parse_caption, read_clips, score, train_captioner
from data.judge import MOTION
from data.moving_mnist import AXES, MovingMNIST, caption, save_gif


@pytest.fixture(scope="module")
def model():
    """A reader after a short training (150 steps of about 64 digits, some 15 s on one core): 98% of crops."""
    return train_captioner(steps=150, frames_per_step=43, log=None)[0]


def test_the_caption_grammar_is_moving_mnists():
    ds = MovingMNIST("train", num_frames=3, length=40)
    for i in range(40):
        sprites = ds.recipe(i)
        assert caption([Fact(s.label, s.axis) for s in sprites]) == ds[i][1]
        assert parse_caption(ds[i][1]) == sorted((s.label, s.axis) for s in sprites)
    assert parse_caption("digit 3") is None and parse_caption("digit 3 is moving sideways") is None


def test_a_short_training_reads_real_clips(model):
    ds = MovingMNIST("val", num_frames=9, length=24, max_digits=1)  # digits the reader never trained on
    read = read_clips(model, torch.stack([ds[i][0] for i in range(24)]))
    truth = [parse_caption(ds[i][1]) for i in range(24)]
    assert all(text and parse_caption(text)[0][1] == t[0][1] for (text, _, _), t in zip(read, truth))  # every axis
    assert sum(parse_caption(text) == t for (text, _, _), t in zip(read, truth)) >= 20
    assert all(0 <= confidence <= 1 for _, confidence, _ in read)


def test_no_digit_and_a_still_digit_are_unsure_not_guessed(model):
    blank = torch.full((1, 1, 9, 64, 64), -1.0)
    still = blank.clone()
    still[..., 10:38, 20:48] = torch.tensor(MovingMNIST("val").digits[8000]).float() / 127.5 - 1
    (_, _, why_blank), (_, _, why_still) = read_clips(model, torch.cat([blank, still]))
    assert why_blank == "no digit found" and why_still == "a digit stands still"


def test_caption_folder_writes_captions_lists_the_unsure_and_skips_the_captioned(model, tmp_path):
    root = str(tmp_path)
    export(root, 6, frames=9)
    for i in range(4):
        os.remove(os.path.join(root, f"{i:05d}.txt"))
    with open(os.path.join(root, "00004.txt"), "w") as f:
        f.write("keep me\n")
    with open(os.path.join(root, "broken.gif"), "wb") as f:
        f.write(b"not a gif")
    r = caption_folder(root, model, threshold=1.01, log=None)  # nothing is that sure: all listed, none written
    assert r == dict(total=7, captioned=0, unsure=5, skipped=2)
    assert not any(os.path.isfile(os.path.join(root, f"{i:05d}.txt")) for i in range(4))
    with open(os.path.join(root, "unsure.tsv")) as f:
        listed = [line.split("\t") for line in f]
    assert sorted(x[0] for x in listed) == ["00000.gif", "00001.gif", "00002.gif", "00003.gif", "broken.gif"]
    assert [x[2] for x in listed if x[0] == "broken.gif"][0].startswith("unreadable")
    assert all(x[2].startswith("confidence") and parse_caption(x[3]) for x in listed if x[0] != "broken.gif")
    r = caption_folder(root, model, threshold=0.0, log=None)
    assert r == dict(total=7, captioned=4, unsure=1, skipped=2)
    for i in range(4):
        with open(os.path.join(root, f"{i:05d}.txt")) as f:
            assert parse_caption(f.read()) is not None
    with open(os.path.join(root, "00004.txt")) as f:
        assert f.read() == "keep me\n"  # a caption already there is left alone...
    assert caption_folder(root, model, threshold=0.0, recaption=True, log=None)["captioned"] == 6
    with open(os.path.join(root, "00004.txt")) as f:
        assert parse_caption(f.read()) is not None  # ...unless recaptioning


def test_export_noise_corrupts_the_stated_share_with_one_wrong_fact_each(tmp_path):
    export(str(tmp_path / "a"), 40, frames=3, noise=0.25)
    export(str(tmp_path / "b"), 40, frames=3, noise=0.25)
    export(str(tmp_path / "true"), 40, frames=3)
    ds = MovingMNIST("train", num_frames=3, length=40)
    wrong = []
    for i in range(40):
        texts = [(tmp_path / x / f"{i:05d}.txt").read_text() for x in ("a", "b", "true")]
        assert texts[0] == texts[1] and texts[2].strip() == ds[i][1]  # deterministic; the truth is the dataset's
        if texts[0] != texts[2]:
            wrong.append(i)
            said = [(int(d), AXES.index(a)) for d, a in re.findall(MOTION, texts[0])]  # in the recipe's order
            true = [(s.label, s.axis) for s in ds.recipe(i)]
            assert parse_caption(texts[0]) is not None and len(said) == len(true)
            assert sum(a != b for p, q in zip(said, true) for a, b in zip(p, q)) == 1  # one digit or one axis
    assert len(wrong) == 10
    assert sorted(line.split("\t")[0] for line in (tmp_path / "a" / "corrupted.tsv").read_text().splitlines()) == \
        [f"{i:05d}.gif" for i in wrong]
    assert score(str(tmp_path / "a"), str(tmp_path / "true")) == dict(n=40, agree=30, disagree=10, missing=0)
    with pytest.raises(ValueError, match="already holds clips"):
        export(str(tmp_path / "a"), 5)


def test_command_line_errors_are_one_line(tmp_path):
    with pytest.raises(SystemExit, match="error: video folder .* does not exist"):
        captioner.main(["caption", str(tmp_path / "missing")])
    save_gif(str(tmp_path / "x.gif"), torch.zeros(1, 3, 64, 64))
    with pytest.raises(SystemExit, match="error: .* already holds clips"):
        captioner.main(["export", str(tmp_path), "--n", "2"])
    with pytest.raises(SystemExit, match="error: need n >= 1 and noise in"):
        captioner.main(["export", str(tmp_path / "new"), "--noise", "1.5"])
    assert np.isclose(captioner.THRESHOLD, 0.6)
