"""Progressive phases, images with videos and the time budget (data/schedule.py, train.py) on toy shapes.

The schedule's arithmetic (buckets, phases, scaling to a budget), the still Moving MNIST images, the config keys
and their one-line errors, a step of mixed shapes that weighs every sample alike, and end-to-end runs: VAE and
DiT trained on images and videos in phases, an exact resume inside a phase, a budget that sizes the steps.
"""
import dataclasses
import math
import os
import re
import warnings

import pytest
import torch

import sample
import train
from data import schedule
from data.config import DiTConfig, Phase, parse_args
from data.moving_mnist import MovingMNIST
from data.tokenizer import UNK, Tokenizer
from test_train import TOY, assert_same_training_state, ctrl_c_during_step, metrics, toy_config

CAPTION = re.compile(r"^digit \d( and digit \d)?$")
QUIET = {"ckpt_every": 10 ** 6, "sample_every": 10 ** 6}  # a checkpoint and a preview at the end only
FEW = {"videos": 16}  # latent caches of 16 videos: enough for every bucket of TOY's batch of 8


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Toy shapes gain nothing from intra-op threads: one thread for this module (every comparison in it runs
    under the same setting), the count put back after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def joint(tmp_path_factory):
    """One toy run of both stages, trained once: a VAE with image steps, then a DiT in two phases with images
    (size 16: a 2x2 latent, one token a frame). Its VAE serves the other DiT tests."""
    out = tmp_path_factory.mktemp("joint")
    train.main(["--config", toy_config(out, vae={"images": 0.5, "val_frames": 5}, dit=FEW | {"images": 0.3, "phases": [
        {"steps": 2, "size": 16, "frames": 3}, {"steps": 2, "frames": [3, 5]}]})])
    return out


@pytest.fixture(scope="module")
def vae_ckpt(joint):
    return str(joint / "vae.pt")


def tokens(bucket, cfg):
    return bucket.count * schedule.sample_tokens(bucket.frames, bucket.size, cfg)


# ----------------------------------------------------------------------------- data/schedule.py
def test_step_buckets_split_a_token_budget():
    cfg, _ = parse_args([])  # 17 frames at 64x64, space compression 8, dit.patch 2: 9 x 16 + 16 tokens a clip
    [phase] = schedule.resolve_phases(cfg)
    assert schedule.step_buckets(phase, cfg, ranks=1) == [schedule.Bucket("video", 17, 64, cfg.dit.batch_size)]

    cfg, _ = parse_args(["--dit.images=0.3", "--dit.grad_accum=2"])
    phase = schedule.resolve_phases(cfg)[0] | dict(frames=[5, 9, 17])
    ranks, unit = 2, 2 * 2
    buckets = schedule.step_buckets(phase, cfg, ranks)
    assert [(b.kind, b.frames, b.size) for b in buckets] == [("image", 1, 64), ("video", 5, 64), ("video", 9, 64),
                                                             ("video", 17, 64)]
    assert all(b.count >= unit and b.count % unit == 0 for b in buckets)
    budget = cfg.dit.batch_size * schedule.sample_tokens(17, 64, cfg)
    for b, share in zip(buckets, [0.3] + [0.7 / 3] * 3):  # each bucket's tokens: its share, to one unit of samples
        assert 0 <= share * budget - tokens(b, cfg) < unit * schedule.sample_tokens(b.frames, b.size, cfg)
    assert sum(tokens(b, cfg) for b in buckets) <= budget
    counts = [b.count for b in buckets[1:]]
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]  # shorter clips: more of them


def test_resolve_phases_fills_the_defaults():
    cfg, _ = parse_args(["--dit.images=0.2", "--dit.steps=9",
                         ("--dit.phases=[{steps: 2}, "
                          "{steps: 3, frames: [9, 5], size: 32, batch_size: 16, images: 0.0}]")])
    first, second = schedule.resolve_phases(cfg)
    assert first == dict(steps=2, frames=[cfg.data.frames], size=cfg.data.size, batch_size=cfg.dit.batch_size,
                         images=0.2)
    assert second == dict(steps=3, frames=[5, 9], size=32, batch_size=16, images=0.0)  # an explicit 0 stays 0
    assert schedule.shapes([first, second], cfg, ranks=1) == [("image", 1, 64), ("video", 5, 32), ("video", 9, 32),
                                                              ("video", 17, 64)]
    plain, _ = parse_args(["--dit.steps=9"])  # no phases: one of dit.steps
    assert schedule.resolve_phases(plain) == [dict(steps=9, frames=[17], size=64, batch_size=64, images=0.0)]
    assert schedule.shapes(schedule.resolve_phases(plain), plain, ranks=1) == [("video", 17, 64)]


def test_phase_at_and_scale_steps():
    steps = [3, 2]
    assert [schedule.phase_at(s, steps) for s in range(5)] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    with pytest.raises(ValueError, match="beyond the schedule's 5 steps"):
        schedule.phase_at(5, steps)
    steps, seconds_per_step = [300, 100, 50], [0.02, 0.05, 0.11]  # 16.5 s as configured
    for seconds in (7.3, 40.0, 100.0):
        planned = schedule.scale_steps(steps, seconds_per_step, seconds)
        assert sum(n * t for n, t in zip(planned, seconds_per_step)) <= seconds
        k = seconds / 16.5
        assert all(abs(p - n * k) < 1 for p, n in zip(planned, steps))  # the proportions of the config


# ----------------------------------------------------------------------------- data/moving_mnist.py
def test_still_moving_mnist_is_a_captioned_image():
    still = MovingMNIST("train", num_frames=9, size=64, still=True)
    videos = MovingMNIST("train", num_frames=9, size=64)
    for i in range(3):
        image, caption = still[i]
        assert image.shape == (1, 1, 64, 64) and CAPTION.match(caption), caption
        again = MovingMNIST("train", num_frames=9, size=64, still=True)[i]
        assert torch.equal(again[0], image) and again[1] == caption
        assert not torch.equal(videos[i][0][:, :1], image)  # its own recipe, not the video's first frame


# ----------------------------------------------------------------------------- data/config.py
def test_phases_parse_from_yaml_and_flags(tmp_path):
    config = toy_config(tmp_path, dit={"phases": [{"steps": 2, "size": 16, "frames": 3}, {"steps": 4}]})
    cfg, args = parse_args(["--config", config])
    assert cfg.dit.phases == [Phase(steps=2, frames=[3], size=16), Phase(steps=4)]
    train.check_config(cfg, args, world=1)  # a valid schedule passes
    cfg, _ = parse_args(["--config", config, '--dit.phases=[{"steps":2,"frames":3}]'])  # a flag replaces them
    assert len(cfg.dit.phases) == 1 and cfg.dit.phases[0].steps == 2 and cfg.dit.phases[0].frames == [3]


@pytest.mark.parametrize("flags, world, message", [
    (["--dit.phases=[{frames: 3}]"], 1, r"dit.phases\[0\] needs steps >= 1"),
    (["--dit.phases=[{steps: 2, frames: 4}]"], 1, r"dit.phases\[0\].frames=4: clips take 1 \+ 2k frames"),
    (["--dit.phases=[{steps: 2}, {steps: 2, frames: [3, 7]}]"], 1,
     r"dit.phases\[1\].frames=7: .*at most data.frames=5"),
    (["--dit.phases=[{steps: 2, size: 12}]"], 1,
     r"dit.phases\[0\].size=12 must be at most data.size=32, divisible by the VAE's space compression 8"),
    (["--dit.phases=[{steps: 2, size: 64}]"], 1, r"dit.phases\[0\].size=64 must be at most data.size=32"),
    (["--dit.phases=[{steps: 2, images: 0.95}]"], 1, r"dit.phases\[0\].images=0.95 must be in \[0, 0.9\]"),
    (["--dit.phases=[{steps: 2, images: -0.5}]"], 1, r"dit.phases\[0\].images=-0.5 must be in \[0, 0.9\]"),
    (["--dit.images=0.95"], 1, r"'dit.images' must be in \[0.0, 0.9\]"),
    (["--dit.sequence_parallel=2", "--dit.phases=[{steps: 2}]"], 2,
     "dit.phases and dit.images mix shapes in a step, which dit.sequence_parallel does not split"),
    (["--dit.sequence_parallel=2", "--dit.images=0.3"], 2, "dit.sequence_parallel does not split"),
    (["--budget_minutes=1", "--dit.fsdp=true"], 1, "budget_minutes times the run .* set dit.fsdp=false"),
    (["--dit.phases=[{steps: 2, frame: 3}]"], 1,
     r"unknown config key 'dit.phases\[0\].frame'.*did you mean 'dit.phases\[0\].frames'"),
])
def test_schedule_errors_are_one_line(flags, world, message, tmp_path):
    with pytest.raises(SystemExit) as stop:
        cfg, args = train.parse_args(["--config", toy_config(tmp_path)] + flags)
        train.check_config(cfg, args, world)
    text = str(stop.value)
    assert text.startswith("error: ") and "\n" not in text
    assert re.search(message, text), text


# ----------------------------------------------------------------------------- train.train_step
def test_a_step_of_mixed_shapes_weighs_every_sample_alike():
    """Micro-batches of 3 images and 2 clips: the step's loss and gradient are the mean over the 5 samples."""
    d = dataclasses.asdict(DiTConfig()) | TOY["dit"]
    vocab, channels, length = 20, 4, d["text_len"]
    torch.manual_seed(0)
    model = sample.build_dit(d, vocab, channels)
    with torch.no_grad():  # off adaLN-Zero's init, where every prediction is 0
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    g = torch.Generator().manual_seed(1)

    def micro(n, frames):
        x_t = torch.randn(n, channels, frames, 4, 4, generator=g)
        t = 1000 * torch.rand(n, generator=g)
        mask = torch.arange(length) < torch.randint(1, length - 3, (n, 1), generator=g)  # padded captions
        ids = torch.randint(2, vocab, (n, length), generator=g) * mask
        return x_t, t, ids, mask, torch.randn(n, channels, frames, 4, 4, generator=g)

    def grad(p):  # the last block's text-only weights get none: their output is unused
        return torch.zeros_like(p) if p.grad is None else p.grad

    def loss_fn(m, batch):
        x_t, t, ids, mask, target = batch
        return ((m(x_t, t, ids, mask) - target) ** 2).mean(), {}
    micro_batches = [micro(3, 1), micro(2, 3)]
    alone, grads = [], []
    for batch in micro_batches:
        for i in range(batch[0].shape[0]):
            model.zero_grad()
            loss = loss_fn(model, tuple(a[i:i + 1] for a in batch))[0]
            loss.backward()
            alone.append(loss.item())
            grads.append([grad(p).clone() for p in model.parameters()])
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss, logs = train.train_step(model, opt, scaler, loss_fn, micro_batches, torch.device("cpu"), "fp32",
                                  clip=math.inf)
    assert loss == pytest.approx(sum(alone) / 5, rel=1e-5)
    assert math.isfinite(logs["grad_norm"])
    for p, *per_sample in zip(model.parameters(), *grads):
        torch.testing.assert_close(grad(p), torch.stack(per_sample).mean(0), rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- train.py end to end
def test_images_and_phases_end_to_end(joint):
    """Stage all: a VAE with image steps, then a DiT in two phases with images, sampled by sample.py."""
    assert [r["image_step"] for r in metrics(joint, "vae")] == [0, 1, 0, 1]
    assert sorted(f for f in os.listdir(joint) if f.startswith("latents")) == [
        "latents.pt", "latents_image1_16.pt", "latents_image1_32.pt", "latents_video3_16.pt", "latents_video3_32.pt"]
    images = torch.load(joint / "latents_image1_32.pt", weights_only=True)
    assert images["latents"].shape[1:] == (4, 1, 4, 4)  # one latent frame
    assert all(CAPTION.match(c) and "moving" not in c for c in images["captions"])
    assert torch.load(joint / "latents_video3_16.pt", weights_only=True)["latents"].shape[1:] == (4, 2, 2, 2)
    assert torch.load(joint / "latents_video3_32.pt", weights_only=True)["latents"].shape[1:] == (4, 2, 4, 4)

    ckpt = train.load_checkpoint(str(joint / "dit.pt"), "dit")
    assert ckpt["step"] == 4 and ckpt["planned_steps"] == [2, 2] and len(metrics(joint, "dit")) == 4
    assert all(math.isfinite(r["loss"]) for r in metrics(joint, "dit"))
    assert ckpt["latent_shape"] == [4, 3, 4, 4]  # the last phase's longest clips: 5 frames, 3 latent frames
    tokenizer = Tokenizer.from_state_dict(ckpt["tokenizer"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every word of an image caption was seen in training
        ids, mask = tokenizer.encode(images["captions"][0], DiTConfig().text_len)
    assert mask.any() and UNK not in ids[mask].tolist()

    out = joint / "gifs"
    sample.main(["--ckpt", str(joint / "dit.pt"), "--prompt", images["captions"][0], "--n", "1", "--steps", "2",
                 "--out", str(out)])
    assert any(f.endswith(".gif") for f in os.listdir(out))


def test_phase_boundary_and_resume_inside_a_phase_are_exact(vae_ckpt, tmp_path, monkeypatch):
    """Phases of 3 + 3 steps with images; Ctrl-C during step 5, then --resume: bitwise the uninterrupted run."""
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    dit = FEW | {"images": 0.3, "phases": [{"steps": 3, "frames": 3}, {"steps": 3}], "ckpt_every": 100}
    args = ["--stage", "dit", f"--dit.vae_ckpt={vae_ckpt}"]
    train.main(["--config", toy_config(straight, dit=dit)] + args)
    update = ctrl_c_during_step(monkeypatch, 5)
    with pytest.raises(SystemExit, match="stopped by SIGINT after step 5.*--resume"):
        train.main(["--config", toy_config(broken, dit=dit)] + args)
    monkeypatch.setattr(train, "ema_update", update)
    stopped = train.load_checkpoint(str(broken / "dit.pt"), "dit")
    # 5 steps done: the next is step 3 of phase 2 (0-based: phase 1, step_in_phase 2)
    assert stopped["step"] == 5 and stopped["data_position"] == {"phase": 1, "step_in_phase": 2}
    assert stopped["planned_steps"] == [3, 3]
    train.main(["--config", toy_config(broken, dit=dit), "--resume"] + args)

    a, b = (train.load_checkpoint(str(d / "dit.pt"), "dit") for d in (straight, broken))
    assert a["step"] == b["step"] == 6
    assert [r["loss"] for r in metrics(broken, "dit")] == [r["loss"] for r in metrics(straight, "dit")]
    assert_same_training_state(a, b)


def test_budget_sizes_the_steps_and_the_probe_leaves_no_trace(vae_ckpt, tmp_path):
    """--budget_minutes: the probe's step counts go into the checkpoint, the metrics have as many rows, the run
    after the probe is the unbudgeted run, and a resume keeps the counts."""
    args = ["--stage", "dit", f"--dit.vae_ckpt={vae_ckpt}"]
    out = tmp_path / "dit"
    train.main(["--config", toy_config(out, dit=QUIET | FEW), "--budget_minutes=0.05"] + args)
    ckpt = train.load_checkpoint(str(out / "dit.pt"), "dit")
    rows = metrics(out, "dit")
    assert len(ckpt["planned_steps"]) == 1 and sum(ckpt["planned_steps"]) == len(rows) == ckpt["step"]
    # the first losses (warm-up: their learning rates do not depend on the total) are those of an unbudgeted run
    n = min(3, len(rows))
    plain = tmp_path / "plain"
    train.main(["--config", toy_config(plain, dit=QUIET | FEW | {"steps": n})] + args)
    assert [r["loss"] for r in metrics(plain, "dit")] == [r["loss"] for r in rows[:n]]

    train.main(["--config", toy_config(out, dit=QUIET | FEW), "--resume", "--budget_minutes=5"] + args)
    again = train.load_checkpoint(str(out / "dit.pt"), "dit")
    assert again["planned_steps"] == ckpt["planned_steps"] and again["step"] == ckpt["step"]
    assert len(metrics(out, "dit")) == len(rows)  # nothing added

    vae_out = tmp_path / "vae"
    train.main(["--config", toy_config(vae_out, vae=QUIET | {"val_frames": 5}), "--stage", "vae",
                "--budget_minutes=0.03"])
    vae = train.load_checkpoint(str(vae_out / "vae.pt"), "vae")
    assert vae["planned_steps"] == len(metrics(vae_out, "vae")) == vae["step"]  # metrics(): the loss rows only


def test_i2v_with_images_gives_the_images_no_image_input(vae_ckpt, tmp_path, monkeypatch):
    real, seen = train.diffusion.image_condition, []

    def spy(x0, p_drop, *a, **k):
        image = real(x0, p_drop, *a, **k)
        seen.append((x0.shape[2], p_drop, bool((image == 0).all())))
        return image
    monkeypatch.setattr(train.diffusion, "image_condition", spy)
    train.main(["--config", toy_config(tmp_path, dit=FEW | QUIET | {"images": 0.3, "i2v": True, "steps": 2}),
                "--stage", "dit", f"--dit.vae_ckpt={vae_ckpt}"])
    losses = [r["loss"] for r in metrics(tmp_path, "dit")]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    images, videos = [s for s in seen if s[0] == 1], [s for s in seen if s[0] > 1]
    assert len(images) == len(videos) == 2  # one image and one video micro-batch a step
    assert all(p == 1.0 and zero for _, p, zero in images)
    assert all(p == DiTConfig().i2v_drop for _, p, _ in videos)


def test_the_token_budget_counts_caption_tokens():
    """An image is 16 video tokens and 16 caption tokens: a quarter of tiny.yaml's budget buys half the images
    that counting video tokens alone would (80 of them), so a step of images costs about what a step of clips does."""
    cfg, _ = parse_args(["--config", "tiny.yaml", "--dit.images=0.25"])
    image, clip = schedule.step_buckets(schedule.resolve_phases(cfg)[0], cfg, ranks=1)
    assert schedule.sample_tokens(1, 64, cfg) == 16 + 16 and schedule.sample_tokens(9, 64, cfg) == 80 + 16
    assert (image.count, clip.count) == (48, 48)  # 64 x 96 tokens: 0.25 -> 48 images, 0.75 -> 48 clips
