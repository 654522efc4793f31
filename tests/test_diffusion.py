import importlib

import pytest
import torch
import torch.nn as nn

from data.tokenizer import PAD

diffusion = importlib.import_module("03_diffusion")
GaussianDiffusion = diffusion.GaussianDiffusion
T = 1000


def point_mass_oracle(d, c):
    """The exact v-prediction when every x0 equals c: eps = (x_t - sqrt(a) c) / sqrt(1 - a)."""
    def model(x_t, t):
        a = d.alphas_cumprod.double()[t.long()].view(-1, *[1] * (x_t.dim() - 1))
        eps = (x_t.double() - a.sqrt() * c) / (1 - a).sqrt()
        return diffusion.v_target(c, eps, a).float()
    return model


def gaussian_oracle(d, mu, s):
    """E[v | x_t] for x0 ~ N(mu, s^2) per coordinate: linear in x_t, no division by sqrt(1 - a)."""
    def model(x_t, t):
        a = d.alphas_cumprod.double()[t.long()].view(-1, *[1] * (x_t.dim() - 1))
        r = (x_t.double() - a.sqrt() * mu) / (a * s ** 2 + 1 - a)  # (x_t - E x_t) / Var x_t
        x0, eps = mu + a.sqrt() * s ** 2 * r, (1 - a).sqrt() * r
        return diffusion.v_target(x0, eps, a).float()
    return model


def test_zero_terminal_snr_schedule():
    a = GaussianDiffusion().alphas_cumprod
    assert a.shape == (T,) and a.dtype == torch.float32
    assert a[-1].item() == 0.0  # exactly: the last training step is pure noise
    assert torch.all(a[1:] < a[:-1])
    plain = diffusion.scaled_linear_alphas_cumprod(zero_terminal_snr=False)
    assert plain[-1].sqrt().item() == pytest.approx(0.0683, abs=1e-4)  # Stable Diffusion's signal leak (Lin et al.)
    assert a[0].item() == pytest.approx(plain[0].item(), rel=1e-6)  # the rescale keeps the first step
    betas = 1 - plain / torch.cat([torch.ones(1, dtype=plain.dtype), plain[:-1]])
    assert torch.allclose(betas, torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, T, dtype=torch.float64) ** 2,
                          rtol=1e-9, atol=0)


def test_snr_shift_divides_snr_by_s():
    base = diffusion.scaled_linear_alphas_cumprod(zero_terminal_snr=False)
    assert torch.equal(diffusion.scaled_linear_alphas_cumprod(snr_shift=1.0, zero_terminal_snr=False), base)
    for s in (0.5, 3.0):
        shifted = diffusion.scaled_linear_alphas_cumprod(snr_shift=s, zero_terminal_snr=False)
        assert torch.allclose(shifted, base / (s + (1 - s) * base), rtol=1e-12, atol=0)
        assert torch.allclose(shifted / (1 - shifted), base / (1 - base) / s, rtol=1e-9, atol=0)
    # CogVideoX order: shift, then rescale to zero terminal SNR
    cog = GaussianDiffusion(snr_shift=3.0).alphas_cumprod
    assert cog[-1].item() == 0.0
    assert cog[0].item() == pytest.approx(diffusion.scaled_linear_alphas_cumprod(snr_shift=3.0)[0].item(), rel=1e-6)


def test_x0_and_eps_recovered_from_v_at_every_step():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, T, 3, generator=g, dtype=torch.float64)
    a = GaussianDiffusion().alphas_cumprod.double()[:, None]  # (T, 1): every step, the last one a = 0
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    v = diffusion.v_target(x0, eps, a)
    x0_hat, eps_hat = diffusion.x0_eps_from_v(x_t, v, a)
    assert torch.allclose(x0_hat, x0, rtol=0, atol=1e-12) and torch.allclose(eps_hat, eps, rtol=0, atol=1e-12)
    # at the zero-SNR step the inverse is exact bit for bit: x0 = -v, eps = x_t (= the noise)
    assert torch.equal(x0_hat[-1], -v[-1]) and torch.equal(eps_hat[-1], x_t[-1]) and torch.equal(x_t[-1], eps[-1])


@pytest.mark.parametrize("local,world", [(8, 1), (4, 2), (20, 2), (125, 8)])
def test_explicit_uniform_sampling_one_t_per_interval(local, world):
    n = local * world  # divides T here, so interval i is exactly the steps [i T / n, (i + 1) T / n)
    per_rank = [diffusion.explicit_uniform_timesteps(local, T, rank, world, torch.Generator().manual_seed(rank))
                for rank in range(world)]
    t = torch.cat(per_rank)
    assert t.dtype == torch.long and t.min() >= 0 and t.max() < T
    assert torch.equal(t * n // T, torch.arange(n))  # global sample i lies in interval i
    intervals = [set((r * n // T).tolist()) for r in per_rank]
    assert sum(len(s) for s in intervals) == n and set().union(*intervals) == set(range(n))  # disjoint, covering


def test_explicit_uniform_sampling_when_n_does_not_divide_t():
    for n in (3, 7, 2000):  # 2000 > T: several samples share a step, still in order
        t = diffusion.explicit_uniform_timesteps(n, T, generator=torch.Generator().manual_seed(n))
        i = torch.arange(n)
        assert torch.all(t * n < (i + 1) * T) and torch.all((t + 1) * n > i * T)  # t overlaps interval i
    # every step equally likely over the global batch, here T = 10 steps and n = 3 samples
    g = torch.Generator().manual_seed(0)
    t = torch.cat([diffusion.explicit_uniform_timesteps(3, 10, generator=g) for _ in range(10000)])
    assert torch.allclose(torch.bincount(t, minlength=10) / len(t), torch.full((10,), 0.1), atol=0.01)


def test_loss_is_algorithm_1_with_v_target_and_per_rank_timesteps():
    d = GaussianDiffusion()
    x0 = torch.randn(4, 2, 3, 4, 4)  # video latents (B, C, T, H, W)
    seen = []

    def spy(x_t, t, ids, mask):
        seen.append((x_t, t))
        return torch.zeros_like(x_t)
    cond = dict(ids=torch.ones(4, 5, dtype=torch.long), mask=torch.ones(4, 5, dtype=torch.bool))
    for rank in (0, 1):
        loss = d.loss(spy, x0, cond, rank=rank, world_size=2, generator=torch.Generator().manual_seed(rank))
        g = torch.Generator().manual_seed(rank)  # replay the draws: t, then eps
        t = diffusion.explicit_uniform_timesteps(4, T, rank, 2, g)
        eps = torch.randn(x0.shape, generator=g)
        a = d.alphas_cumprod[t].view(-1, 1, 1, 1, 1)
        assert torch.equal(seen[-1][1], t.float())
        assert torch.allclose(seen[-1][0], a.sqrt() * x0 + (1 - a).sqrt() * eps, atol=1e-6)
        assert loss.shape == () and loss.item() == pytest.approx(diffusion.v_target(x0, eps, a).pow(2).mean().item(),
                                                                 rel=1e-5)
    assert torch.equal(torch.cat([t for _, t in seen]).long() * 8 // T, torch.arange(8))


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_samplers_land_on_a_point_mass_with_the_oracle(sampler):
    d = GaussianDiffusion(sampler=sampler)
    c = torch.tensor([[1.5, -0.5, 0.25]], dtype=torch.float64)
    for steps in (1, 7, 50):
        x = d.sample(point_mass_oracle(d, c), (64, 3), {}, steps=steps, generator=torch.Generator().manual_seed(0))
        assert x.shape == (64, 3) and torch.allclose(x, c.float().expand(64, 3), atol=1e-5), steps


def test_ddim_with_the_oracle_transports_gaussian_noise_onto_gaussian_data():
    d = GaussianDiffusion()
    x_T = torch.randn(4096, 2, generator=torch.Generator().manual_seed(0))
    # DDIM follows the probability-flow ODE, which maps N(0, 1) onto N(mu, s^2) by x0 = mu + s x_T. Each
    # jump holds (x0_hat, eps_hat) fixed, so it is first order: the first jump, from the zero-SNR step where
    # x0_hat is just mu, loses the most variance. Measured max errors (s = 0.5): 0.13 at 50 steps, 0.04 at
    # 200, 0.0095 at 1000; the tolerances below are those x 1.5.
    errors = {}
    for s in (1.0, 0.5):
        for steps, tol in ((50, 0.2), (200, 0.06), (1000, 0.015)):
            x = d.sample(gaussian_oracle(d, 2.0, s), (4096, 2), {}, steps=steps,
                         generator=torch.Generator().manual_seed(0))
            errors[s, steps] = (x - (2.0 + s * x_T)).abs().max().item()
            assert errors[s, steps] < tol, (s, steps, errors[s, steps])
    assert errors[0.5, 200] < errors[0.5, 50] / 2.5 and errors[0.5, 1000] < errors[0.5, 200] / 2.5


def test_ancestral_ddpm_with_the_oracle_matches_gaussian_moments():
    d = GaussianDiffusion(sampler="ddpm")
    x = d.sample(gaussian_oracle(d, 2.0, 0.5), (8192, 2), {}, steps=1000, generator=torch.Generator().manual_seed(0))
    # 16384 values: the sample mean and std scatter by about 0.004 (measured: 1.996, 0.496)
    assert x.mean().item() == pytest.approx(2.0, abs=0.015) and x.std().item() == pytest.approx(0.5, abs=0.015)


def test_trailing_grid_starts_at_the_pure_noise_step():
    d = GaussianDiffusion()
    seen = []
    d.sample(lambda x, t: seen.append(t[0].item()) or torch.zeros_like(x), (2, 3), {}, steps=10)
    assert seen == [999.0, 899.0, 799.0, 699.0, 599.0, 499.0, 399.0, 299.0, 199.0, 99.0]


def test_cfg_is_one_batched_forward_and_scale_1_is_conditional():
    calls = []

    def model(x, t, ids, mask):
        calls.append(x.shape[0])
        return x * ids[:, :1].float() + t[:, None]  # (B, 3)
    x, t = torch.randn(4, 3), torch.full((4,), 500.0)
    cond = dict(ids=torch.full((4, 2), 3), mask=torch.ones(4, 2, dtype=torch.bool))
    ids, mask = diffusion.null_caption(4, 2)
    uncond = dict(ids=ids, mask=mask)
    c, u = model(x, t, **cond), model(x, t, **uncond)
    calls.clear()
    assert torch.equal(diffusion.guided_prediction(model, x, t, cond, uncond, 1.0), c)
    assert torch.allclose(diffusion.guided_prediction(model, x, t, cond, uncond, 0.0), u)
    assert torch.allclose(diffusion.guided_prediction(model, x, t, cond, uncond, 4.0), u + 4 * (c - u))
    assert calls == [4, 8, 8]  # cfg 1: conditional only; otherwise one forward over [cond; uncond]
    d = GaussianDiffusion()
    with_uncond = d.sample(model, (4, 3), cond, uncond, steps=5, cfg=1.0, generator=torch.Generator().manual_seed(0))
    alone = d.sample(model, (4, 3), cond, steps=5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(with_uncond, alone)
    with pytest.raises(ValueError, match="uncond"):
        d.sample(model, (4, 3), cond, steps=5, cfg=3.0)


def test_null_caption_and_caption_dropout():
    ids, mask = diffusion.null_caption(3, 6)
    assert ids.shape == mask.shape == (3, 6) and ids.dtype == torch.long and mask.dtype == torch.bool
    assert torch.all(ids == PAD) and torch.equal(mask, torch.arange(6).expand(3, 6) == 0)
    real_ids, real_mask = torch.randint(2, 50, (256, 6)), torch.ones(256, 6, dtype=torch.bool)
    kept = diffusion.drop_captions(real_ids, real_mask, 0.0)
    assert torch.equal(kept[0], real_ids) and torch.equal(kept[1], real_mask)
    all_null = diffusion.drop_captions(real_ids, real_mask, 1.0)
    assert torch.all(all_null[0] == PAD) and torch.all(all_null[1].sum(1) == 1)
    new_ids, new_mask = diffusion.drop_captions(real_ids, real_mask, 0.25, torch.Generator().manual_seed(0))
    dropped = (new_ids == PAD).all(1)
    assert 0.15 < dropped.float().mean() < 0.35
    assert torch.equal(new_ids[~dropped], real_ids[~dropped]) and torch.all(new_mask[dropped].sum(1) == 1)
    assert torch.all(real_ids >= 2)  # inputs untouched
    with pytest.raises(ValueError, match="dropout"):
        diffusion.drop_captions(real_ids, real_mask, 1.5)


def test_training_lowers_the_loss():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 2))
    net = lambda x_t, t: model(torch.cat([x_t, t[:, None] / T], dim=1))  # noqa: E731
    d, opt = GaussianDiffusion(), torch.optim.Adam(model.parameters(), lr=3e-3)

    def data(n, g):  # two blobs, std 0.1, at (+-1, 0)
        sign = 2 * torch.randint(2, (n, 1), generator=g) - 1
        return 0.1 * torch.randn(n, 2, generator=g) + sign * torch.tensor([[1.0, 0.0]])

    def held_out_loss():
        x0 = data(4096, torch.Generator().manual_seed(1))
        with torch.no_grad():
            return d.loss(net, x0, {}, generator=torch.Generator().manual_seed(2)).item()
    before, g = held_out_loss(), torch.Generator().manual_seed(0)
    for _ in range(300):
        loss = d.loss(net, data(256, g), {}, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = held_out_loss()
    assert after < 0.8 * before, (before, after)  # measured 0.69 -> 0.49


def test_bad_arguments():
    with pytest.raises(ValueError, match="sampler"):
        GaussianDiffusion(sampler="euler")
    with pytest.raises(ValueError, match="snr_shift"):
        GaussianDiffusion(snr_shift=0.0)
    with pytest.raises(ValueError, match="beta"):
        GaussianDiffusion(beta_start=0.02, beta_end=0.01)
    with pytest.raises(ValueError, match="steps"):
        GaussianDiffusion().sample(lambda x, t: x, (2, 2), {}, steps=T + 1)
    with pytest.raises(ValueError, match="rank"):
        GaussianDiffusion().loss(lambda x, t: x, torch.zeros(2, 2), {}, rank=2, world_size=2)


def test_guidance_rescale_matches_the_conditional_std_per_sample():
    """Lin et al. 2023, section 3.4: phi = 1 gives each sample the std of its conditional prediction, phi = 0 is
    plain CFG, and values between mix the two linearly."""
    torch.manual_seed(0)
    pred_c = torch.randn(3, 4, 5) * torch.tensor([0.5, 1.0, 2.0])[:, None, None]
    pred_u = torch.randn(3, 4, 5)
    guided = pred_u + 7.5 * (pred_c - pred_u)
    assert diffusion.rescale_guidance(guided, pred_c, 0.0) is guided
    full = diffusion.rescale_guidance(guided, pred_c, 1.0)
    torch.testing.assert_close(full.std(dim=(1, 2)), pred_c.std(dim=(1, 2)))
    torch.testing.assert_close(diffusion.rescale_guidance(guided, pred_c, 0.7), 0.7 * full + 0.3 * guided)

    def model(x, t, ids, mask):
        return x * (1 + ids[:, :1].float())
    x, t = torch.randn(2, 6), torch.zeros(2)
    cond = dict(ids=torch.full((2, 1), 3), mask=torch.ones(2, 1, dtype=torch.bool))
    uncond = dict(zip(("ids", "mask"), diffusion.null_caption(2, 1)))
    out = diffusion.guided_prediction(model, x, t, cond, uncond, 5.0, rescale=1.0)
    torch.testing.assert_close(out.std(dim=1), model(x, t, **cond).std(dim=1))
