"""The design options of 01_vae.CausalVAE the course compares: where time is compressed and expanded (CogVideoX:
the first levels of encoder and decoder, HunyuanVideo: the last), per-frame or whole-clip GroupNorm, and a
Gaussian or an FSQ bottleneck."""
import hashlib
import importlib
import itertools
import os

import pytest
import torch

vae_lib = importlib.import_module("01_vae")

# 2x time over 2 downsamplings, so "first" and "last" differ; 4x space (patch 1); 9 frames -> 5 latent frames
SMALL = dict(channels=[8, 8, 8], latent_channels=4, patch=1, time_compression=2)


def make(**options):
    torch.manual_seed(0)
    return vae_lib.CausalVAE(**SMALL, **options).eval()


def video(frames=9, batch=1, size=8):
    return torch.randn(batch, 1, frames, size, size, generator=torch.Generator().manual_seed(1))


# ----------------------------------------------------------------------------- the defaults are today's model

def key_digest(model):
    return hashlib.sha256(
        "\n".join(f"{k} {tuple(v.shape)}" for k, v in model.state_dict().items()).encode()).hexdigest()


# state_dict keys and shapes of CausalVAE() and of test_vae.py's TINY, from 01_vae.py before the options (3a14870)
OLD_KEYS = {"default": (dict(), 93, "5ec298fa9f6b532d0c65ac08254219317e535fc82e01f392f354bd02352132ae"),
            "tiny": (dict(channels=[8, 8, 16], latent_channels=4, patch=2), 89,
                     "b3c9bcf2b7e7331c6c96baa41d5eb4f6b5a0b9c563c44ca8d8bafa9445fcf045")}


@pytest.mark.parametrize("name", list(OLD_KEYS))
def test_default_state_dict_is_unchanged(name):
    kwargs, count, digest = OLD_KEYS[name]
    for model in (vae_lib.CausalVAE(**kwargs),
                  vae_lib.CausalVAE(**kwargs, time_compress_at="last", norm="frame", bottleneck="kl")):
        assert len(model.state_dict()) == count and key_digest(model) == digest, list(model.state_dict())


def test_the_shipped_checkpoint_loads_strictly():
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "pretrained", "tiny.pt")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    v = ckpt["vae_config"]["vae"]
    vae = vae_lib.CausalVAE(in_channels=ckpt["vae_config"]["data"]["channels"], channels=v["channels"],
                            latent_channels=v["latent_channels"], layers_per_block=v["layers_per_block"],
                            time_compression=v["time_compression"], patch=v["patch"])
    vae.load_state_dict(ckpt["vae"])  # strict: no key missing, none unexpected, every shape the same


def test_the_options_keep_the_weights_names():
    for option in (dict(norm="clip"), dict(time_compress_at="first"), dict(time_expand_at="last")):  # same weights
        assert key_digest(make(**option)) == key_digest(make())
    fsq = make(bottleneck="fsq").state_dict()  # the encoder's conv_out gives the latent alone, no log-variance
    assert fsq.keys() == make().state_dict().keys() and fsq["encoder.conv_out.conv.weight"].shape[0] == 4


def test_bad_options_are_rejected_with_a_message():
    for option, message in ((dict(time_compress_at="middle"),
                             "time_compress_at must be one of last, first, got 'middle'"),
                            (dict(norm="batch"), "norm must be one of frame, clip"),
                            (dict(bottleneck="vq"), "bottleneck must be one of kl, fsq"),
                            (dict(bottleneck="fsq", fsq_levels=[5, 5]), r"one per latent channel \(4\), got \[5, 5\]"),
                            (dict(bottleneck="fsq", fsq_levels=1), "levels >= 2")):
        with pytest.raises(ValueError, match=message):
            make(**option)


# ----------------------------------------------------------------------------- time_compress_at

def test_time_changes_where_each_paper_puts_it():
    x = video(batch=2, size=16)

    def time(blocks, kind):  # which of the Downsample or Upsample blocks also resample time, in running order
        return [b.time for b in blocks if isinstance(b, kind)]

    # encoder: Downsample 0 works at full resolution, 1 at half; decoder: Upsample 0 at the lowest resolution
    cogvideox, hunyuan = make(time_compress_at="first", time_expand_at="first"), make(time_compress_at="last",
                                                                                     time_expand_at="last")
    assert time(cogvideox.encoder.blocks, vae_lib.Downsample) == [True, False]
    assert time(cogvideox.decoder.blocks, vae_lib.Upsample) == [True, False]
    assert time(hunyuan.encoder.blocks, vae_lib.Downsample) == [False, True]
    assert time(hunyuan.decoder.blocks, vae_lib.Upsample) == [False, True]
    default = make()  # time changes at the lowest resolution on both sides: the decoder mirrors the encoder
    assert time(default.encoder.blocks, vae_lib.Downsample) == [False, True]
    assert time(default.decoder.blocks, vae_lib.Upsample) == [True, False]
    with torch.no_grad():
        for vae in (cogvideox, hunyuan, default, make(time_compress_at="first", time_expand_at="last")):
            z = vae.encode(x).mode()
            assert z.shape == (2, 4, 5, 4, 4) and vae.decode(z).shape == x.shape


def test_config_says_when_the_placements_are_one_network(tmp_path):
    from data.config import check_config, parse_args
    # tiny.yaml's VAE has one level, which changes time: first and last are the same network there
    for flag in ("--vae.time_compress_at=first", "--vae.time_expand_at=last"):
        cfg, args = parse_args(["--config", "tiny.yaml", f"--out_dir={tmp_path}", flag])
        with pytest.raises(SystemExit, match="builds the same network as"):
            check_config(cfg, args, world=1)
    cfg, args = parse_args(["--config", "tiny.yaml", f"--out_dir={tmp_path}", "--vae.time_compress_at=first",
                            "--vae.channels=[32,64,128]", "--vae.patch=2"])
    check_config(cfg, args, world=1)  # two levels, one of which changes time: a real choice


# ----------------------------------------------------------------------------- causality: FrameNorm vs GroupNorm

@torch.no_grad()
@pytest.mark.parametrize("at", ["last", "first"])
def test_frame_norm_is_causal_and_clip_norm_leaks_the_future(at):
    x = video()
    for norm in ("frame", "clip"):
        vae = make(time_compress_at=at, norm=norm)
        z = vae.encode(x).mode()
        y = vae.decode(z)
        for t in range(0, 8, 2):  # latent j sees frames <= 2j: change the frames after 2j
            changed = x.clone()
            changed[:, :, t + 1:] = torch.randn_like(changed[:, :, t + 1:])
            z2 = vae.encode(changed).mode()
            # GroupNorm over (T, H, W): the statistics, hence every latent frame, move with the future frames
            assert torch.equal(z2[:, :, :t // 2 + 1], z[:, :, :t // 2 + 1]) == (norm == "frame")
        for j in range(4):  # frame t is decoded from latents <= ceil(t / 2)
            changed = z.clone()
            changed[:, :, j + 1:] = torch.randn_like(changed[:, :, j + 1:])
            assert torch.equal(vae.decode(changed)[:, :, :2 * j + 1], y[:, :, :2 * j + 1]) == (norm == "frame")


# ----------------------------------------------------------------------------- chunked encode/decode

@torch.no_grad()
@pytest.mark.parametrize("at,norm,bottleneck",
                         list(itertools.product(["last", "first"], ["frame", "clip"], ["kl", "fsq"])))
def test_chunked_equals_single_pass_where_the_design_allows(at, norm, bottleneck):
    vae, x = make(time_compress_at=at, norm=norm, bottleneck=bottleneck), video()
    z = vae.encode(x).mode()
    y = vae.decode(z)
    for chunk in (1, 3):
        gap = (vae.encode(x, chunk=chunk).mode() - z).abs().max().item()
        decode_gap = (vae.decode(z, chunk=chunk) - y).abs().max().item()
        if norm == "frame":
            assert gap <= 1e-5 and decode_gap <= 1e-5
        else:  # documented as approximate: each chunk normalised with its own statistics
            assert gap > 1e-3 and decode_gap > 1e-3


# ----------------------------------------------------------------------------- FSQ

LEVELS = [2, 3, 4, 5, 8]  # odd and even numbers of levels


def test_fsq_codes_are_integers_in_range_and_quantizing_twice_changes_nothing():
    fsq = vae_lib.FSQ(LEVELS)
    z = 3 * torch.randn(2, 5, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    zq = fsq(z)
    codes = fsq.codes(zq)
    assert codes.dtype == torch.long and zq.abs().max() <= 1
    for i, levels in enumerate(LEVELS):  # every level used, none beyond
        assert codes[:, i].unique().tolist() == list(range(levels))
        assert len(zq[:, i].unique()) == levels and torch.allclose(zq[:, i].unique(), torch.linspace(-1, 1, levels))
    # a quantized latent is on the grid already: snapping it to its nearest grid point returns it bit for bit
    assert torch.equal(fsq.dequantize(codes), zq) and torch.equal(fsq.codes(fsq.dequantize(codes)), codes)
    # anything else (a DiT's sample, say) goes to its nearest point, the edges included
    assert torch.equal(fsq.codes(zq + 0.1 * (torch.rand_like(zq) - 0.5)), codes)  # within half the finest step
    assert fsq.codes(torch.full((1, 5, 1, 1, 1), 7.0)).flatten().tolist() == [n - 1 for n in LEVELS]
    assert fsq.codes(torch.full((1, 5, 1, 1, 1), -7.0)).flatten().tolist() == [0] * 5


@torch.no_grad()
def test_fsq_latents_are_decoded_on_the_grid():
    """A DiT's sample lies between grid points; decode() snaps it to the nearest first, as the decoder never
    saw anything else (training decodes the quantized latent itself)."""
    vae = make(bottleneck="fsq")
    z = vae.encode(video()).mode()  # on the grid: 5 levels, a step of 0.5
    off = z + 0.2 * (torch.rand_like(z) - 0.5)  # within a quarter step of its grid point
    assert torch.equal(vae.decode(off), vae.decode(z)) and not torch.equal(vae.decoder(off), vae.decoder(z))


def test_fsq_gradient_passes_straight_through():
    z = torch.linspace(-4, 4, 5 * 9).view(1, 5, 9, 1, 1).requires_grad_()
    vae_lib.FSQ(LEVELS)(z).sum().backward()
    # d/dz of (L - 1)/2 tanh(z) / ((L - 1)/2): the round passes the gradient on unchanged, the bound's is 1 - tanh^2
    torch.testing.assert_close(z.grad, 1 - torch.tanh(z.detach()) ** 2)
    assert (z.grad > 0).all()


def test_fsq_vae_trains_with_the_same_loss_and_scaling_factor():
    vae, x = make(bottleneck="fsq"), video(batch=2, size=16).clamp(-1, 1)
    assert vae.fsq.levels == [5] * 4 and vae.fsq.codebook_size == 5 ** 4  # one number, broadcast
    assert make(bottleneck="fsq", fsq_levels=[8, 5, 5, 5]).fsq.codebook_size == 1000
    vae.train()
    recon, posterior = vae(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(posterior.sample(), posterior.mode()) and torch.equal(posterior.kl(), torch.zeros(2))
    z = posterior.mode()
    assert torch.equal(vae.fsq.dequantize(vae.fsq.codes(z)), z)  # the latents are on the grid
    loss, logs = vae_lib.VAELoss(kl_weight=1e-6)(x, recon, posterior, step=0, last_layer=vae.last_layer)
    assert logs["kl"] == 0.0
    loss.backward()  # straight through the rounding to the encoder
    assert vae.encoder.conv_in.conv.weight.grad.abs().sum() > 0
    s = vae_lib.measure_scaling_factor(vae, x)
    assert 0 < s < float("inf")
