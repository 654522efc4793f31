"""09_control.py: the box-path ControlNet starts as the base model, boxes land on the latent grid, paths parse,
masked sampling keeps what is known, the canvas widens; the paraphrase grammar; sample.py's and bench.py's flags."""
import importlib
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import bench
import sample
import train
from data import config as config_lib
from data.judge import DigitCNN
from data.loading import video_dataset
from data.moving_mnist import HELD_OUT, PHRASINGS, SEEN, MovingMNIST, caption, clause, misspell
from dit_helpers import caption as toy_caption
from dit_helpers import make
from test_train import toy_config

ctl = importlib.import_module("09_control")
PROMPT = "digit 1 is moving up and down"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A toy flow run (VAE + DiT, 5 frames of 32x32: latents (4, 3, 4, 4)), and a ControlNet trained on it."""
    out = tmp_path_factory.mktemp("control")
    config = toy_config(out / "base")
    train.main(["--config", config])
    ctl.train_control(["--config", config, f"--control.base={out / 'base' / 'dit.pt'}", f"--out_dir={out / 'ctl'}",
                       "--control.steps=3", "--control.batch_size=4", "--control.blocks=1"])
    return out


@pytest.mark.parametrize("arch", ["cogvideox", "hunyuan"])
def test_the_controlled_model_starts_as_the_base_model_bit_for_bit(arch):
    base = make(arch)
    net = ctl.ControlNet(base, blocks=2, channels=2)
    controlled = ctl.ControlledDiT(base, net)
    x, t, (ids, mask) = torch.randn(2, 4, 3, 4, 4), torch.tensor([10.0, 900.0]), toy_caption([3, 6])
    control = torch.rand(2, 2, 3, 4, 4)
    with torch.no_grad():
        expected = base(x, t, ids, mask)
        assert torch.equal(controlled(x, t, ids, mask, control=control), expected)
        assert torch.equal(controlled(x, t, ids, mask), expected)  # no control: the base model
    controlled(x, t, ids, mask, control=control).square().mean().backward()  # only the branch learns
    assert all(p.grad is None for p in base.parameters()) and all(p.grad.any() for p in net.z_out.parameters())
    with torch.no_grad():
        for p in net.parameters():  # a trained branch moves the output
            p.add_(0.05 * torch.randn_like(p))
        assert not torch.allclose(controlled(x, t, ids, mask, control=control), expected, atol=1e-4)
        assert torch.equal(base(x, t, ids, mask), expected)
    assert not any(b._forward_hooks or b._forward_pre_hooks for b in base.blocks)  # the hooks lived for one call


def test_boxes_land_on_the_latent_grid_as_the_share_of_each_cell():
    # two pixel frames per latent frame after the first (tc = 2), 8x8 pixels a cell, one digit moving right
    b = torch.tensor([[[[10.0, 4, 38, 32], [13.0, 4, 41, 32], [16.0, 4, 44, 32]]]])  # (1, 1, 3, 4)
    control = ctl.control_of(b, (8, 8), tc=2, s=8, channels=2)                 # (1, 2, 2, 8, 8)
    assert control.shape == (1, 2, 2, 8, 8) and not control[:, 1].any()      # the absent second digit: zeros
    pixels = torch.zeros(3, 64, 64)  # the same boxes drawn in pixels, then averaged over each cell and frame group
    for f, (left, top, right, bottom) in enumerate(b[0, 0].long().tolist()):
        pixels[f, top:bottom, left:right] = 1
    pooled = torch.nn.functional.avg_pool2d(pixels, 8)                        # (3, 8, 8)
    torch.testing.assert_close(control[0, 0], torch.stack([pooled[0], pooled[1:].mean(0)]))
    assert control[0, 0, 0].sum() * 64 == 28 * 28                            # every pixel of the box counted once
    half = ctl.control_of(torch.tensor([[[[4.5, 0.0, 32.5, 28.0]]]]), (8, 8), 2, 8, 1)[0, 0, 0]
    assert half[0, 0] == pytest.approx(3.5 / 8) and half[0, 4] == pytest.approx(0.5 / 8)  # edges inside a cell


def test_a_path_is_key_frame_centres_interpolated_and_a_bad_one_is_a_one_line_error():
    b = ctl.parse_path("14,20 50,20 50,44", frames=9, size=64)               # (1, 9, 4): left, top, right, bottom
    centre = (b[0, :, :2] + b[0, :, 2:]) / 2
    assert b.shape == (1, 9, 4) and torch.all(b[0, :, 2:] - b[0, :, :2] == 28)
    assert centre[0].tolist() == [14, 20] and centre[4].tolist() == [50, 20] and centre[8].tolist() == [50, 44]
    assert centre[2].tolist() == [32, 20] and centre[6].tolist() == [50, 32]  # halfway between key frames
    assert torch.all(ctl.parse_path("30,30", 5, 64)[0, :, 0] == 16)           # one key frame: it stands still
    for bad, match in (("14,20 oops", "takes box centres"), ("", "takes box centres"), ("1,2,3", "takes box centres"),
                       ("10,30", r"must lie in \[14, 50\]")):
        with pytest.raises(ValueError, match=match):
            ctl.parse_path(bad, 9, 64)
    with pytest.raises(SystemExit, match=r"^error: .*--control takes --path or --boxes"):
        sample.main(["--ckpt", "x.pt", "--prompt", PROMPT, "--path", "20,20"])


@pytest.mark.parametrize("objective,knob", [("flow", "euler"), ("flow", "heun"), ("ddpm", "ddim"), ("ddpm", "ddpm")])
def test_masked_sampling_keeps_the_known_latents_and_shows_them_at_the_current_noise(objective, knob):
    knobs = {"objective": objective, "flow_solver" if objective == "flow" else "ddpm_sampler": knob}
    obj = sample.build_objective(config_lib.config_from_dict({"dit": knobs})["dit"])
    known, seen = torch.randn(2, 4, 3, 4, 4), []
    keep = torch.zeros(1, 1, 3, 4, 4, dtype=torch.bool)
    keep[..., :2] = True                                                     # the left half of every frame

    def model(x, t, label):  # records what it is shown; any prediction will do
        seen.append((x.clone(), t.clone()))
        return 0.3 * x + label.view(-1, 1, 1, 1, 1)
    cond, uncond = dict(label=torch.ones(2)), dict(label=torch.zeros(2))
    z = ctl.masked_sample(obj, model, known.shape, cond, uncond, known, keep, torch.Generator().manual_seed(0),
                          steps=4, cfg=3.0)
    assert torch.equal(z[:, :, :, :, :2], known[:, :, :, :, :2]) and not torch.equal(z, known)
    eps = []
    for x, t in seen:  # the known half of each input is the known latents noised to t, with one eps for every step
        assert len(x) == 4 and torch.equal(x[:2, ..., :2], x[2:, ..., :2])  # guidance: [cond; uncond], alike
        if objective == "flow":  # x_t = (1 - t) z + t eps
            s = t[0] / 1000
            eps.append((x[:2, ..., :2] - (1 - s) * known[..., :2]) / s)
        else:  # x_t = sqrt(a_t) z + sqrt(1 - a_t) eps
            a = obj.alphas_cumprod[int(t[0])]
            eps.append((x[:2, ..., :2] - a.sqrt() * known[..., :2]) / (1 - a).sqrt())
    assert len(eps) >= 4 and all(torch.allclose(e, eps[0], atol=1e-3) for e in eps)


def test_outpainting_widens_the_latent_grid_and_the_dit_runs_on_it():
    vae = sample.build_vae(config_lib.config_from_dict({"vae": {"channels": [16, 16], "latent_channels": 4}}))
    video = torch.rand(2, 1, 9, 32, 32) * 2 - 1
    wide, known, z, keep = ctl.known_latents(vae.eval(), video, "cpu", "fp32", outpaint=16)
    assert wide.shape == (2, 1, 9, 32, 64) and known.shape == (1, 1, 9, 32, 64) and z.shape == (2, 4, 5, 4, 8)
    assert keep.shape == (1, 1, 5, 4, 8) and keep[..., 2:6].all() and not keep[..., [0, 1, 6, 7]].any()
    assert torch.equal(wide[..., 16:48], video) and torch.all(wide[..., :16] == -1)
    _, _, _, keep = ctl.known_latents(vae, video, "cpu", "fp32", interpolate=True)  # frames 0, 7-8: latents 0, 4
    assert keep[:, :, [0, 4]].all() and not keep[:, :, 1:4].any()
    _, _, _, keep = ctl.known_latents(vae, video, "cpu", "fp32", inpaint=(9, 0, 16, 32))  # in latent column 1 only
    assert not keep[..., 1].any() and keep[..., [0, 2, 3]].all()
    dit = make()  # RoPE sees offsets only: any grid of whole patches runs
    ids, mask = toy_caption([3, 6])
    assert dit(torch.randn(2, 4, 3, 4, 8), torch.tensor([1.0, 2.0]), ids, mask).shape == (2, 4, 3, 4, 8)


def test_paraphrases_are_deterministic_split_and_canonical_when_off():
    assert set(SEEN).isdisjoint(HELD_OUT) and sorted(SEEN + HELD_OUT) == list(range(len(PHRASINGS)))
    assert 0 in SEEN and len(HELD_OUT) >= 30
    seen_words = {w for k in SEEN for axis in (0, 1) for w in clause(3, axis, k).split()}
    assert all(w in seen_words for k in HELD_OUT for axis in (0, 1) for w in clause(3, axis, k).split())
    plain, again, worded = (MovingMNIST("train", 5, 200, paraphrase=p) for p in (0.0, 1.0, 1.0))
    for i in range(200):
        (video, text), (video_p, text_p) = plain[i], worded[i]
        assert text == caption(plain.recipe(i)) and torch.equal(video, video_p)  # the recipes do not move
        assert text_p == again[i][1] and len(text_p.split()) <= 15               # deterministic, short enough
    assert len({worded[i][1].split(" ")[0] for i in range(200)}) > 3
    assert {worded.phrasing(i, 1) for i in range(200)} <= set(SEEN)
    assert misspell(PROMPT, 3) == misspell(PROMPT, 3) != PROMPT and sorted(misspell(PROMPT, 3)) == sorted(PROMPT)
    cfg = config_lib.Config()
    assert video_dataset(cfg, "train", 5, 10).paraphrase == 0.0
    config_lib.merge(cfg, {"data": {"paraphrase": 0.5}}, "test")
    assert video_dataset(cfg, "train", 5, 10).paraphrase == 0.5


def test_a_run_with_data_paraphrase_trains_on_reworded_captions(run, tmp_path):
    train.main(["--config", toy_config(tmp_path, dit={"steps": 1, "sample_every": 100}), "--stage", "dit",
                f"--dit.vae_ckpt={run / 'base' / 'vae.pt'}", "--data.paraphrase=1.0"])
    captions = torch.load(tmp_path / "latents.pt", weights_only=True)["captions"]
    ds = MovingMNIST("train", 5, len(captions), size=32, max_digits=1)
    assert sum(text != caption(ds.recipe(i)) for i, text in enumerate(captions)) > len(captions) // 2
    assert sample.load(str(tmp_path / "dit.pt"), torch.device("cpu"))[4]["data"]["paraphrase"] == 1.0


def test_control_trains_and_sample_py_follows_a_path(run, tmp_path):
    ckpt = train.load_checkpoint(str(run / "ctl" / "control.pt"), "control")
    assert ckpt["blocks"] == 1 and ckpt["channels"] == 1 and ckpt["step"] == 3
    with open(run / "ctl" / "metrics.jsonl") as f:
        assert len([r for r in map(json.loads, f) if r["stage"] == "control"]) == 3
    base = ["--ckpt", str(run / "base" / "dit.pt"), "--prompt", PROMPT, "--n", "2", "--steps", "2"]
    sample.main(base + ["--control", str(run / "ctl" / "control.pt"), "--path", "16,16 16,16", "--out", str(tmp_path)])
    assert os.path.isfile(tmp_path / "digit_1_is_moving_up_and_down_1.gif")
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps([[[2, 2, 30, 30]]] * 5))
    sample.main(base + ["--control", str(run / "ctl" / "control.pt"), "--boxes", str(boxes), "--out", str(tmp_path)])
    boxes.write_text(json.dumps([[[2, 2, 30, 30]]] * 4))
    with pytest.raises(SystemExit, match=r"^error: --boxes .* must list 5 frames"):
        sample.main(base + ["--control", str(run / "ctl" / "control.pt"), "--boxes", str(boxes)])
    train.save_checkpoint(str(tmp_path / "other.pt"), ckpt | {"base_fingerprint": "another DiT's"})
    with pytest.raises(SystemExit, match="^error: .* was trained on another DiT"):
        sample.main(base + ["--control", str(tmp_path / "other.pt"), "--path", "16,16"])


def test_sample_py_edits_a_video_in_three_ways(run, tmp_path):
    base = ["--ckpt", str(run / "base" / "dit.pt"), "--prompt", PROMPT, "--n", "1", "--steps", "2"]
    clip, _ = MovingMNIST("val", 5, 1, size=32, max_digits=1)[0]
    sample.save_gif(str(tmp_path / "in.gif"), clip)
    for i, name in ((0, "first.png"), (4, "last.png")):
        Image.fromarray(((clip[0, i] + 1) * 127.5).round().byte().numpy(), "L").save(tmp_path / name)
    for name, flags in (("inpaint", ["--video", str(tmp_path / "in.gif"), "--inpaint", "8,8,24,24"]),
                        ("interpolate", ["--interpolate", str(tmp_path / "first.png"), str(tmp_path / "last.png")]),
                        ("outpaint", ["--video", str(tmp_path / "in.gif"), "--outpaint", "16"])):
        sample.main(base + flags + ["--out", str(tmp_path / name)])
        gif = Image.open(tmp_path / name / "digit_1_is_moving_up_and_down_0.gif")
        assert gif.size == ((64, 32) if name == "outpaint" else (32, 32)) and gif.n_frames >= 2
    for flags, match in ((["--video", str(tmp_path / "in.gif"), "--outpaint", "4"], "--outpaint 4: give a multiple"),
                         (["--video", str(tmp_path / "in.gif"), "--inpaint", "8,8,4"], "--inpaint takes a pixel box"),
                         (["--inpaint", "8,8,24,24"], "edit a --video"), (["--negative", " "], "--negative is empty"),
                         (["--control", "c.pt", "--inpaint", "1,1,2,2"], "not allowed with argument"),
                         (["--interpolate", "a.png", "b.png", "--frames", "9"], "no --image or --frames")):
        with pytest.raises(SystemExit, match=f"^error: .*{match}"):
            sample.main(base + flags)
    sample.main(base + ["--negative", "digit 1 is moving left and right", "--out", str(tmp_path / "neg")])


def test_bench_control_writes_its_three_reports(run, tmp_path, monkeypatch):
    """The three parts run end to end (with an untrained judge: the figures themselves come from real runs)."""
    monkeypatch.setattr(ctl, "load_judge", lambda path: (DigitCNN().eval(), {}))
    flags = ["--ckpt", str(run / "base" / "dit.pt"), "--steps", "1", "--videos", "2", "--n", "1",
             "--out", str(tmp_path)]
    bench.main(["control", "path", "--control", str(run / "ctl" / "control.pt"), *flags])
    bench.main(["control", "edit", *flags])
    bench.main(["control", "prompts", *flags])
    rows = {part: json.load(open(tmp_path / f"control_{part}.json"))["rows"] for part in ("path", "edit", "prompts")}
    assert set(rows["path"]) == {"controlled", "base model, no path", "real validation videos"}
    assert set(rows["edit"]) == set(ctl.USES) and all(np.isfinite(r["kept_psnr"]) for r in rows["edit"].values())
    assert {"canonical grammar", "misspelled", "guidance 1", "negative: the other axis"} <= set(rows["prompts"])
    assert any(row.startswith("seen: ") for row in rows["prompts"]) and any("held out: " in r for r in rows["prompts"])
    with pytest.raises(SystemExit, match="^error: control needs .* a --control checkpoint"):
        bench.main(["control", "path", *flags])
