"""Image-to-video and longer videos: 03's image_condition, 05's first= and window=, sample.py's --image and --frames,
on tiny randomly initialised checkpoints written straight to tmp_path (no training)."""
import dataclasses
import importlib

import pytest
import torch
from PIL import Image

import sample
from data.config import Config
from data.moving_mnist import save_gif
from data.tokenizer import Tokenizer

diffusion = importlib.import_module("03_diffusion")
PROMPT = "digit 1 is moving up and down"
CPU = torch.device("cpu")


def write_checkpoint(path, objective, i2v=False, frames=9):
    """A dit.pt as train.py writes it, data/config.py's defaults made tiny: 32x32 gray frames, VAE time
    compression 2 and space 8 (4x4 latents of 4 channels, (frames + 1) / 2 latent frames), a two-block DiT
    perturbed away from adaLN-Zero so its output depends on its inputs."""
    cfg = dataclasses.asdict(Config())
    cfg["dtype"] = "fp32"
    cfg["data"].update(frames=frames, size=32, channels=1)
    cfg["vae"].update(channels=[16, 32], patch=4, latent_channels=4, time_compression=2)
    cfg["dit"].update(objective=objective, i2v=i2v, dim=32, depth=2, heads=2, text_depth=1, text_len=8,
                      sample_cfg=3.0)
    torch.manual_seed(0)
    tokenizer = Tokenizer.train([PROMPT, "digit 7 is moving left and right"])
    vae = sample.build_vae(cfg)
    model = sample.build_dit(cfg["dit"], tokenizer.vocab_size, 4)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(std=0.3)
    torch.save(dict(kind="dit", step=0, config=cfg, tokenizer=tokenizer.state_dict(), vocab_size=tokenizer.vocab_size,
                    latent_shape=[4, 1 + (frames - 1) // 2, 4, 4], ema=model.state_dict(), vae=vae.state_dict(),
                    vae_config=cfg), path)
    return str(path)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    return {name: write_checkpoint(root / f"{name}.pt", objective, i2v)
            for name, objective, i2v in [("flow_i2v", "flow", True), ("ddpm_i2v", "ddpm", True),
                                         ("pyramid", "pyramid", False), ("flow", "flow", False)]}


def png(path, size=(32, 32), mode="L", colour=False, seed=0):
    """Random pixels (height, width) = size, gray (equal channels) unless colour, saved in PIL mode `mode`."""
    shape = (*size, 3 if colour else 1)
    pixels = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed))
    Image.fromarray(pixels.expand(-1, -1, 3).byte().numpy(), "RGB").convert(mode).save(path)
    return str(path)


def args(ckpt, *flags):
    return sample.parser().parse_args(["--ckpt", ckpt, "--prompt", PROMPT, "--steps", "2", "--device", "cpu",
                                       "--dtype", "fp32", *flags])


def captions(n, tokenizer):
    ids, mask = tokenizer.encode([PROMPT] * n, 8)
    null_ids, null_mask = diffusion.null_caption(n, 8)
    return dict(ids=ids, mask=mask), dict(ids=null_ids, mask=null_mask)


def test_image_condition_is_the_noised_first_frame_dropped_per_sample():
    x0 = torch.randn(64, 4, 3, 4, 4)
    kept = diffusion.image_condition(x0, 0.0, generator=torch.Generator().manual_seed(0))
    assert kept.shape == (64, 4, 1, 4, 4)
    sigma = (kept - x0[:, :, :1]).flatten(1).std(1)  # per sample: exp(N(-3, 0.5)), about 0.05
    assert 0.005 < sigma.min() and sigma.max() < 0.4 and 0.03 < sigma.median() < 0.08
    assert not diffusion.image_condition(x0, 1.0).any()
    half = diffusion.image_condition(x0, 0.5, generator=torch.Generator().manual_seed(0))
    dropped = ~half.flatten(1).any(1)
    assert 10 < dropped.sum() < 54
    assert torch.equal(half[~dropped], kept[~dropped])  # the same draws: dropout zeroes whole samples, nothing else
    with pytest.raises(ValueError, match="image dropout"):
        diffusion.image_condition(x0, 1.5)


def test_guidance_gives_the_image_to_both_halves():
    seen = []

    def model(x, t, ids, mask, image):
        seen.append(image)
        return x + ids[:, :1, None, None, None] + image
    x, image = torch.zeros(2, 4, 3, 4, 4), torch.randn(2, 4, 1, 4, 4)
    cond = dict(ids=torch.ones(2, 3), mask=torch.ones(2, 3), image=image)
    uncond = dict(ids=torch.zeros(2, 3), mask=torch.ones(2, 3), image=image)
    pred = diffusion.guided_prediction(model, x, torch.zeros(2), cond, uncond, cfg=5.0)
    assert torch.equal(seen[0], torch.cat([image, image]))
    assert torch.allclose(pred, 5.0 + image)  # the guidance moves the caption's part only: 0 + 5 (1 - 0)
    with pytest.raises(ValueError, match="same keys"):
        diffusion.guided_prediction(model, x, torch.zeros(2), cond, dict(ids=uncond["ids"], mask=uncond["mask"]), 5.0)


@pytest.mark.parametrize("name", ["flow_i2v", "pyramid"])
def test_the_image_latent_conditions_the_video(ckpts, name):
    model, objective, vae, tokenizer, config, latent_shape = sample.load(ckpts[name], CPU)
    cond, uncond = captions(2, tokenizer)

    def latents(first, seed=0):
        return sample.sample_latents(model, objective, (2, *latent_shape), latent_shape[1], cond, uncond, first,
                                     steps=2, cfg=3.0, generator=torch.Generator().manual_seed(seed))
    a, b = torch.randn(2, 2, 4, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    za, zb, za_again = latents(a), latents(b), latents(a)
    assert torch.equal(za[:, :, :1], a) and torch.equal(zb[:, :, :1], b)  # kept exactly as frame 0
    assert not torch.allclose(za[:, :, 1:], zb[:, :, 1:], atol=1e-4)      # the generated frames see the image
    assert torch.equal(za, za_again)


@pytest.mark.parametrize("name", ["flow_i2v", "ddpm_i2v", "pyramid"])
def test_first_frame_is_the_image_up_to_the_vae(ckpts, name, tmp_path):
    generate_fn, vae, _ = sample.sampler(args(ckpts[name], "--image", png(tmp_path / "first.png")))
    image = sample.image_frames(str(tmp_path / "first.png"), 1, 32, 32)  # (1, 1, 1, 32, 32)
    video = generate_fn([PROMPT, PROMPT], seed=0)
    assert video.shape == (2, 1, 9, 32, 32)
    recon = vae.decode(vae.encode(image).mode()).clamp(-1, 1)  # what the VAE makes of the image alone
    assert torch.allclose(video[:, :, :1], recon.expand(2, -1, -1, -1, -1), atol=1e-5)
    other = generate_fn([PROMPT, PROMPT], seed=0, images=-image.expand(2, -1, -1, -1, -1))  # bench's argument
    assert not torch.allclose(other, video, atol=1e-3)
    assert torch.equal(generate_fn([PROMPT, PROMPT], seed=0), video)


def test_image_file_modes_and_gif_first_frame(tmp_path):
    gray = sample.image_frames(png(tmp_path / "gray.png"), 1, 32, 32)
    assert gray.shape == (1, 1, 1, 32, 32) and gray.min() >= -1 and gray.max() <= 1
    assert torch.equal(sample.image_frames(png(tmp_path / "as_rgb.png", mode="RGB", seed=0), 1, 32, 32),
                       sample.image_frames(png(tmp_path / "as_l.png", mode="L", seed=0), 1, 32, 32))
    save_gif(str(tmp_path / "clip.gif"), torch.cat([gray[0], -gray[0]], dim=1))  # (1, 2, 32, 32): 2 frames
    assert torch.allclose(sample.image_frames(str(tmp_path / "clip.gif"), 1, 32, 32), gray, atol=1 / 127.5)
    assert sample.image_frames(png(tmp_path / "rgb.png", mode="RGB", colour=True), 3, 32, 32).shape == (1, 3, 1, 32, 32)


def test_flow_windows_continue_from_the_last_latent_frame(ckpts):
    model, objective, vae, tokenizer, config, latent_shape = sample.load(ckpts["flow_i2v"], CPU)
    cond, uncond = captions(2, tokenizer)
    images = []

    def recording(x, t, **kw):
        images.append(kw.get("image"))
        return model(x, t, **kw)
    first = torch.randn(2, 4, 1, 4, 4)
    z = sample.sample_latents(recording, objective, (2, 4, 9, 4, 4), 5, cond, uncond, first, steps=2, cfg=3.0,
                              generator=torch.Generator().manual_seed(0))
    assert z.shape == (2, 4, 9, 4, 4) and len(images) == 4  # two windows of 5 latent frames, 2 steps each
    assert torch.equal(images[0][:2], first) and torch.equal(images[0][2:], first)  # cond and uncond alike
    assert torch.equal(images[2][:2], z[:, :, 4:5])  # window 2 starts from window 1's last frame, not repeated


def test_pyramid_history_is_a_window(ckpts):
    model, objective, vae, tokenizer, config, latent_shape = sample.load(ckpts["pyramid"], CPU)
    cond, uncond = captions(1, tokenizer)
    lengths = []

    def recording(x, t, **kw):
        lengths.append(len(kw["history"]))
        return model(x, t, **kw)
    z = sample.sample_latents(recording, objective, (1, 4, 9, 4, 4), 5, cond, uncond, steps=1, cfg=3.0)
    assert z.shape == (1, 4, 9, 4, 4)
    assert lengths == [min(f, 4) for f in range(9) for _ in range(2)]  # 2 stages a frame, at most 5 - 1 past frames
    with pytest.raises(ValueError, match="first must be"):
        objective.sample(model, (1, 4, 3, 4, 4), cond, first=torch.zeros(1, 4, 1, 2, 2))


@pytest.mark.parametrize("name,frames", [("pyramid", 33), ("flow_i2v", 33), ("flow_i2v", 17), ("ddpm_i2v", 17),
                                         ("pyramid", 5), ("flow", 5)])
def test_frames_sets_the_length(ckpts, name, frames):
    generate_fn = sample.sampler(args(ckpts[name], "--frames", str(frames), "--steps", "1"))[0]
    assert generate_fn([PROMPT], seed=0).shape == (1, 1, frames, 32, 32)


@pytest.mark.parametrize("name", ["pyramid", "flow_i2v"])
def test_cli_writes_long_gifs_from_an_image(ckpts, name, tmp_path):
    out = tmp_path / "out"
    sample.main(["--ckpt", ckpts[name], "--prompt", PROMPT, "--n", "2", "--steps", "1", "--frames", "33",
                 "--image", png(tmp_path / "first.png"), "--out", str(out), "--device", "cpu"])
    for i in range(2):
        with Image.open(out / f"digit_1_is_moving_up_and_down_{i}.gif") as gif:
            assert gif.n_frames == 33 and gif.size == (32, 32)
    assert (out / "contact_sheet.png").is_file()


def test_bad_requests_are_one_line_errors(ckpts, tmp_path):
    good = png(tmp_path / "good.png")
    (tmp_path / "garbage.png").write_bytes(b"not an image at all")
    cases = [  # (checkpoint, flags, words the error must hold)
        ("pyramid", ["--image", png(tmp_path / "small.png", size=(24, 40))], ["small.png", "24x40", "32x32"]),
        ("pyramid", ["--image", png(tmp_path / "rgb.png", mode="RGB", colour=True)], ["rgb.png", "gray", "32x32"]),
        ("pyramid", ["--image", str(tmp_path / "garbage.png")], ["garbage.png", "cannot read"]),
        ("pyramid", ["--image", str(tmp_path / "none.png")], ["none.png", "no --image"]),
        ("pyramid", ["--frames", "10"], ["--frames", "1 + 2k", "10"]),
        ("pyramid", ["--frames", "0"], ["--frames", "0"]),
        ("flow", ["--image", good], ["without dit.i2v", "--dit.i2v=true", "pyramid"]),
        ("flow", ["--frames", "33"], ["without dit.i2v", "--frames 33"]),
    ]
    for name, flags, words in cases:
        with pytest.raises(SystemExit) as e:
            sample.main(["--ckpt", ckpts[name], "--prompt", PROMPT, "--out", str(tmp_path / "out"), *flags])
        message = str(e.value)
        assert message.startswith("error: ") and "\n" not in message and all(w in message for w in words), message
    assert not (tmp_path / "out").exists()  # nothing generated
    generate_fn = sample.sampler(args(ckpts["flow_i2v"]))[0]
    with pytest.raises(ValueError, match=r"images must be first frames \(1, 1, 1, 32, 32\)"):
        generate_fn([PROMPT], 0, images=torch.zeros(1, 1, 1, 28, 28))
