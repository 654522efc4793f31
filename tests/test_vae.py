import importlib

import pytest
import torch

from data.moving_mnist import MovingMNIST

vae_lib = importlib.import_module("01_vae")

TINY = dict(channels=[8, 8, 16], latent_channels=4, patch=2)  # 4x time, 8x space, like the default
TWO_LEVELS = dict(channels=[16, 16], latent_channels=4, patch=4, time_compression=2)  # the tiny.yaml layout


@pytest.fixture(scope="module", params=[TINY, TWO_LEVELS], ids=["4x8x8", "2x8x8"])
def vae(request):
    torch.manual_seed(0)
    return vae_lib.CausalVAE(**request.param).eval()


def test_shapes(vae):
    tc = vae.time_compression
    assert vae.space_compression == 8 and vae.latent_channels == 4
    for frames in (1, 5, 17):
        latents = 1 + (frames - 1) // tc
        x = torch.randn(2, 1, frames, 32, 16)
        posterior = vae.encode(x)
        assert posterior.mean.shape == posterior.logvar.shape == (2, 4, latents, 4, 2)
        assert posterior.sample().shape == posterior.mode().shape == (2, 4, latents, 4, 2)
        assert vae.decode(posterior.mode()).shape == x.shape


def test_bad_input_is_rejected_with_a_message(vae):
    allowed = r"1, 5, 9, 13, 17" if vae.time_compression == 4 else r"1, 3, 5, 7, 9"
    with pytest.raises(ValueError, match=rf"1 \+ {vae.time_compression}k frames \({allowed}, ...\), got 16"):
        vae.encode(torch.randn(1, 1, 16, 32, 32))
    with pytest.raises(ValueError, match="divisible by the spatial compression 8"):
        vae.encode(torch.randn(1, 1, 5, 36, 32))
    with pytest.raises(ValueError, match="divisible by the spatial compression 8"):
        vae.encode(torch.randn(1, 1, 5, 32, 31))
    with pytest.raises(ValueError, match=r"expected a video \(B, 1, T, H, W\)"):
        vae.encode(torch.randn(1, 5, 32, 32))
    with pytest.raises(ValueError, match="chunk is a number of latent frames"):
        vae.encode(torch.randn(1, 1, 5, 32, 32), chunk=0)
    with pytest.raises(ValueError, match=r"expected latents \(B, 4, t, h, w\)"):
        vae.decode(torch.randn(1, 3, 2, 4, 4))
    with pytest.raises(ValueError, match="power of two"):
        vae_lib.CausalVAE(channels=[8, 8], time_compression=4)
    with pytest.raises(ValueError, match="channels\\[-1\\] by latent_channels"):
        vae_lib.CausalVAE(channels=[8, 12], latent_channels=8, time_compression=2)


@torch.no_grad()
def test_encoder_and_decoder_are_causal(vae):
    tc = vae.time_compression
    x = torch.randn(1, 1, 17, 16, 16)
    z = vae.encode(x).mean
    for t in range(0, 16, tc):  # latent j sees frames <= tc * j
        changed = x.clone()
        changed[:, :, t + 1:] = torch.randn_like(changed[:, :, t + 1:])
        z2 = vae.encode(changed).mean
        assert torch.equal(z2[:, :, :t // tc + 1], z[:, :, :t // tc + 1])
        assert not torch.equal(z2, z)
    y = vae.decode(z)
    for j in range(z.shape[2] - 1):  # frame t is decoded from latents <= ceil(t / tc)
        changed = z.clone()
        changed[:, :, j + 1:] = torch.randn_like(changed[:, :, j + 1:])
        y2 = vae.decode(changed)
        assert torch.equal(y2[:, :, :tc * j + 1], y[:, :, :tc * j + 1])
        assert not torch.equal(y2, y)


@torch.no_grad()
@pytest.mark.parametrize("frames", [1, 5, 17, 33])  # 1 and 5: a chunk longer than the video
def test_chunked_equals_single_pass(vae, frames):
    x = torch.randn(2, 1, frames, 16, 16)
    z = vae.encode(x).mean
    y = vae.decode(z)
    for chunk in (1, 2, 3):
        torch.testing.assert_close(vae.encode(x, chunk=chunk).mean, z, rtol=0, atol=1e-5)
        torch.testing.assert_close(vae.decode(z, chunk=chunk), y, rtol=0, atol=1e-5)


def test_posterior_kl_and_sampling():
    mean, logvar = torch.zeros(2, 4, 3, 2, 2), torch.zeros(2, 4, 3, 2, 2)
    posterior = vae_lib.DiagonalGaussian(mean, logvar)
    assert torch.equal(posterior.kl(), torch.zeros(2))
    a = posterior.sample(torch.Generator().manual_seed(1))
    b = posterior.sample(torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.std() > 0.5
    shifted = vae_lib.DiagonalGaussian(mean + 1.0, logvar)
    torch.testing.assert_close(shifted.kl(), torch.full((2,), 0.5 * mean[0].numel()))


def test_scaling_factor_gives_unit_std_and_is_saved(vae):
    videos = torch.randn(4, 1, 5, 16, 16)
    s = vae_lib.measure_scaling_factor(vae, [videos[:2], videos[2:]])
    z = vae.encode(videos).mode() * s
    assert abs(z.std().item() - 1.0) < 1e-4
    assert "scaling_factor" in vae.state_dict()


@pytest.fixture(scope="module")
def batch():
    data = MovingMNIST("train", num_frames=5, length=2, size=32, max_digits=1)
    return torch.stack([data[i][0] for i in range(2)])  # (2, 1, 5, 32, 32)


def test_a_few_steps_lower_the_loss(batch):
    torch.manual_seed(0)
    vae = vae_lib.CausalVAE(**TINY)
    loss_fn = vae_lib.VAELoss(l1_weight=0.5, l2_weight=1.0, fg_weight=4.0, kl_weight=1e-6)
    opt = torch.optim.Adam(vae.parameters(), lr=2e-3)
    losses = []
    for step in range(15):
        recon, posterior = vae(batch, generator=torch.Generator().manual_seed(step))
        loss, logs = loss_fn(batch, recon, posterior, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_gan_path_runs_after_disc_start(batch):
    torch.manual_seed(0)
    vae = vae_lib.CausalVAE(**TINY)
    loss_fn = vae_lib.VAELoss(gan_weight=0.5, disc_start=2)
    recon, posterior = vae(batch)
    loss, logs = loss_fn(batch, recon, posterior, step=1, last_layer=vae.last_layer)
    assert "gan" not in logs and loss_fn.disc_loss(batch, recon, step=1) is None
    loss, logs = loss_fn(batch, recon, posterior, step=2, last_layer=vae.last_layer)
    d_loss = loss_fn.disc_loss(batch, recon, step=2)
    assert torch.isfinite(loss) and torch.isfinite(d_loss) and logs["gan_lambda"] >= 0
    loss.backward()
    d_loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in vae.parameters())
    assert all(torch.isfinite(p.grad).all() for p in loss_fn.disc.parameters())
