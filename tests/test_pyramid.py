import importlib
import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

pyramid = importlib.import_module("05_pyramid")
dit = importlib.import_module("02_dit")
rectified = importlib.import_module("04_flow")
PyramidFlow, block_noise, down, up = pyramid.PyramidFlow, pyramid.block_noise, pyramid.down, pyramid.up


def blocks(x):
    return rearrange(x, "b c t (h p) (w q) -> (b c t h w) (p q)", p=2, q=2)  # one row per 2x2 block


def caption(batch, length=4):
    return dict(ids=torch.randint(1, 16, (batch, length)), mask=torch.ones(batch, length, dtype=torch.bool))


class StandIn(torch.nn.Module):
    """The DiT's call signature at almost no cost: a 1x1x1 conv plus the history's mean; records every call."""

    def __init__(self, channels):
        super().__init__()
        self.proj = torch.nn.Conv3d(channels, channels, 1)
        self.calls = []

    def forward(self, x, t, ids, mask, history=(), causal=False):
        self.calls.append(dict(shape=tuple(x.shape), t=t.clone(), causal=causal,
                               history=[tuple(h.shape) for h in history]))
        context = sum(h.mean(dim=(2, 3, 4), keepdim=True) for h in history)  # (B, C, 1, 1, 1) or 0
        return self.proj(x) * (t / 1000).view(-1, 1, 1, 1, 1) + context


def tiny_dit(channels=4):
    return dit.DiT(channels, dim=32, depth=2, heads=2, vocab_size=16, max_text_len=4, text_depth=1)


# --- block noise and the pyramids -------------------------------------------------------------------

@pytest.mark.parametrize("gamma", [1 / 3, 0.2])
def test_block_noise_covariance(gamma):
    z = torch.randn(8, 8, 1, 80, 80, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    n = block_noise(z, gamma)
    cov = torch.cov(blocks(n).T)  # (4, 4) over 102,400 blocks
    expected = (1 + gamma) * torch.eye(4, dtype=torch.float64) - gamma
    assert (cov - expected).abs().max() < 0.015
    if gamma == 1 / 3:
        assert blocks(n).sum(dim=1).abs().max() < 1e-12  # every block sums to zero
    with pytest.raises(ValueError, match="gamma"):
        block_noise(torch.randn(1, 1, 1, 2, 2), 0.5)


def test_noise_pyramid_keeps_unit_variance_and_pooling_is_bilinear():
    n = torch.randn(16, 16, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    for levels in (1, 2):
        assert abs((2 ** levels * down(n, levels)).var().item() - 1) < 0.02
    x = torch.randn(2, 3, 4, 8, 8, dtype=torch.float64)
    bilinear = F.interpolate(rearrange(x, "b c t h w -> (b t) c h w"), scale_factor=0.5, mode="bilinear")
    assert torch.allclose(down(x), rearrange(bilinear, "(b t) c h w -> b c t h w", b=2), atol=1e-12)
    assert torch.equal(down(up(x)), x)


# --- the scheduler: windows, corrected starts, timesteps ---------------------------------------------

def test_corrected_starts_and_jump_constants():
    flow = PyramidFlow(stages=3)
    assert flow.start_sigmas == pytest.approx([1, 0.8, 0.5], abs=1e-12)
    assert flow.end_sigmas == pytest.approx([2 / 3, 1 / 3, 0], abs=1e-12)
    for k in (1, 2):
        c = 1 - flow.end_sigmas[k - 1]  # signal coefficient where stage k-1 ended
        assert flow.start_sigmas[k] == pytest.approx(1 - flow.alphas[k] * c, abs=1e-9)
        a = 1 - flow.start_sigmas[k]  # the paper's s: signal coefficient at stage k's start
        assert flow.alphas[k] == pytest.approx((1 + a) / 2, abs=1e-12)
        assert flow.betas[k] == pytest.approx(math.sqrt(3) * (1 - a) / 2, abs=1e-12)
    assert flow.alphas[1:] == pytest.approx([0.6, 0.75]) and flow.betas[1:] == pytest.approx([0.6928, 0.4330], abs=1e-4)


@pytest.mark.parametrize("stages,shift", [(1, 1.0), (2, 1.0), (3, 1.0), (3, 3.0)])
def test_timestep_ranges_disjoint_and_monotone(stages, shift):
    flow = PyramidFlow(stages=stages, stage_ratios=[1] * stages, shift=shift)
    assert flow.t_hi[0] == pytest.approx(1000) and flow.t_lo[-1] == pytest.approx(0, abs=1e-9)
    for k in range(stages):
        assert flow.t_hi[k] > flow.t_lo[k]
        if k + 1 < stages:
            assert flow.t_lo[k] == flow.t_hi[k + 1]  # (t_lo, t_hi] windows tile [0, 1000] without overlap
    model, size = StandIn(2), 2 ** (stages - 1)
    flow.loss(model, torch.randn(6 * stages, 2, 2, 2 * size, 2 * size), caption(6 * stages))
    flow.sample(model, (1, 2, 2, 2 * size, 2 * size), caption(1), steps=3)
    seen = set()
    for call in model.calls:
        k = stages - 1 - int(math.log2(2 * size // call["shape"][-1]))  # the stage from the resolution
        seen.add(k)
        assert ((call["t"] > flow.t_lo[k]) & (call["t"] <= flow.t_hi[k] + 1e-3)).all()
    assert seen == set(range(stages))
    sampler_ts = [float(c["t"][0]) for c in model.calls[-3 * stages:]]  # the last frame, all stages
    assert all(a > b for a, b in zip(sampler_ts, sampler_ts[1:]))


# --- the properties of the notes ---------------------------------------------------------------------

def test_k1_is_plain_rectified_flow():
    flow, g = PyramidFlow(stages=1), torch.Generator().manual_seed(0)
    x, n = torch.randn(4, 3, 1, 8, 8, generator=g), torch.randn(4, 3, 1, 8, 8, generator=g)
    r = torch.rand(4, generator=g)
    x_r, t, v = flow.interpolate(x, n, r, 0)
    r_ = r.view(-1, 1, 1, 1, 1)
    assert torch.equal(x_r, (1 - r_) * x + r_ * n) and torch.equal(v, n - x)  # 04's x_t and target, bit for bit
    assert torch.allclose(t, 1000 * r)
    # and against 04's own loss: for the x_t it builds, the same timestep and the same target (sign and scale)
    seen = {}

    def record(x_t, t, **cond):
        seen.update(x_t=x_t, t=t)
        return torch.zeros_like(x_t)

    x64 = x.double()
    loss = rectified.RectifiedFlow().loss(record, x64, {}, generator=torch.Generator().manual_seed(1))
    s = (seen["t"] / 1000).double()
    eps = (seen["x_t"] - (1 - s.view(-1, 1, 1, 1, 1)) * x64) / s.view(-1, 1, 1, 1, 1)
    _, t, v = flow.interpolate(x64, eps, s, 0)
    assert torch.allclose(t.float(), seen["t"])
    assert v.square().mean().item() == pytest.approx(loss.item(), rel=1e-6)


@pytest.mark.parametrize("stages", [2, 3])
def test_renoised_latent_has_the_next_stage_start_statistics(stages):
    flow, g = PyramidFlow(stages=stages), torch.Generator().manual_seed(0)
    x = up(up(torch.randn(128, 2, 1, 8, 8, generator=g, dtype=torch.float64))) + 0.5  # smooth, nonzero mean
    for k in range(1, stages):
        x_k = down(x, stages - 1 - k)
        coarse = up(down(x_k))
        e, s = flow.end_sigmas[k - 1], flow.start_sigmas[k]
        prev_end = e * torch.randn(down(x_k).shape, generator=g, dtype=x.dtype) + (1 - e) * down(x_k)
        jumped = flow.renoise(prev_end, k, g)
        noise = jumped - (1 - s) * coarse  # the signal is exactly stage k's coarse start
        cov = torch.cov(blocks(noise).T)
        assert (cov.diag().sqrt() / s - 1).abs().max() < 0.01  # std s_k: the next stage's start
        assert (cov - cov.diag().diag()).abs().max() < 0.01  # isotropic: no block correlation left
        start = s * torch.randn(x_k.shape, generator=g, dtype=x.dtype) + (1 - s) * coarse
        assert jumped.std().item() == pytest.approx(start.std().item(), rel=0.01)


@pytest.mark.parametrize("steps", [3, 10])
def test_euler_with_the_oracle_velocity_lands_on_each_stage_end(steps):
    flow, g = PyramidFlow(stages=3), torch.Generator().manual_seed(0)
    x, n = (torch.randn(2, 3, 1, 16, 16, generator=g, dtype=torch.float64) for _ in range(2))
    for k in range(3):
        start = flow.interpolate(x, n, torch.ones(2, dtype=x.dtype), k)[0]
        end = flow.interpolate(x, n, torch.zeros(2, dtype=x.dtype), k)[0]
        ts = []

        def oracle(x_r, t, history, causal):
            ts.append(t)
            return start - end

        assert (flow.euler(oracle, start, k, {}, None, [], steps) - end).abs().max() < 1e-12
        assert len(ts) == steps and all(((t > flow.t_lo[k]) & (t <= flow.t_hi[k] + 1e-3)).all() for t in ts)


def test_history_layout_in_training_and_sampling():
    assert pyramid.history_stages(0, 2) == []
    assert pyramid.history_stages(1, 2) == [2]
    assert pyramid.history_stages(5, 2) == [0, 0, 0, 1, 2]
    assert pyramid.history_stages(3, 1) == [0, 0, 1]
    flow, model = PyramidFlow(stages=3), StandIn(2)
    flow.loss(model, torch.randn(9, 2, 4, 8, 8), caption(9), generator=torch.Generator().manual_seed(0))
    flow.sample(model, (1, 2, 4, 8, 8), caption(1), steps=1)
    for call in model.calls:
        assert call["causal"]
        side = call["shape"][-1]
        k = int(math.log2(side // 2))  # 2, 4, 8 -> stage 0, 1, 2
        expected = [(call["shape"][0], 2, 1, 2 ** (s + 1), 2 ** (s + 1))
                    for s in pyramid.history_stages(len(call["history"]), k)]
        assert call["history"] == expected  # oldest first, the newest at the current stage's resolution
    assert [len(c["history"]) for c in model.calls[-12:]] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]  # sampling


def test_batch_split_follows_the_ratios_over_the_global_batch():
    flow = PyramidFlow(stages=3, stage_ratios=(1, 2, 1))
    assert flow.batch_stages(8).tolist() == [0, 0, 1, 1, 1, 1, 2, 2]
    assert [flow.batch_stages(1, rank, 4).item() for rank in range(4)] == [0, 1, 1, 2]
    assert PyramidFlow(stages=2, stage_ratios=(0, 1)).batch_stages(3).tolist() == [1, 1, 1]


def test_token_counts():
    per_stage, per_step, full = pyramid.token_counts(31, 96, 160, stages=3)  # 768p, 31 latent frames
    assert per_stage == [240, 960, 3840] and full == 119_040
    assert per_step[-1][-1] == 3840 + 3840 + 960 + 28 * 240 == 15_360
    assert round(sum(map(sum, per_step)) / (31 * 3)) == 6_898
    per_stage, per_step, full = pyramid.token_counts(5, 8, 8, stages=2)  # tiny.yaml latents
    assert per_stage == [4, 16] and full == 80
    assert per_step == [[4, 16], [8, 32], [12, 36], [16, 40], [20, 44]]


# --- with the real DiT --------------------------------------------------------------------------------

def test_no_frame_attends_to_a_later_frame():
    torch.manual_seed(0)
    model, cond = tiny_dit().eval(), caption(2)
    for p in model.parameters():  # leave the zero-initialised gates random, so the test can see leaks
        torch.nn.init.normal_(p, std=0.2)
    x, t = torch.randn(2, 4, 3, 8, 8), torch.full((2,), 500.0)
    with torch.no_grad():
        out = model(x, t, **cond, causal=True)
        changed = x.clone()
        changed[:, :, 2] += 1
        assert torch.allclose(model(changed, t, **cond, causal=True)[:, :, :2], out[:, :, :2], atol=1e-5)
        # frame 0 sees only the text and itself
        assert torch.allclose(model(x[:, :, :1], t, **cond, causal=True), out[:, :, :1], atol=1e-5)
        # the call 05 makes: coarser history before the frame; the history does reach the frame
        history = [down(x[:, :, :1]), x[:, :, 1:2]]
        a = model(x[:, :, 2:], t, **cond, history=history, causal=True)
        b = model(x[:, :, 2:], t, **cond, history=[history[0] + 1, history[1]], causal=True)
        assert not torch.allclose(a, b)


@pytest.mark.parametrize("stage", [0, 1])
def test_one_training_step_at_each_stage(stage):
    torch.manual_seed(0)
    model = tiny_dit()
    flow = PyramidFlow(stages=2, stage_ratios=[int(k == stage) for k in range(2)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    loss = flow.loss(model, torch.randn(4, 4, 3, 8, 8), caption(4), generator=torch.Generator().manual_seed(0))
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and loss.item() > 0
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_loss_falls_when_fitting_one_batch():
    torch.manual_seed(0)
    model, flow = tiny_dit(), PyramidFlow(stages=2, history_noise=0.1)
    x0, cond = torch.randn(8, 4, 3, 8, 8), caption(8)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(40):
        loss = flow.loss(model, x0, cond, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) < 0.9 * sum(losses[:10])  # 0.80 -> 0.65 here: most of v is unpredictable noise early on


def test_autoregressive_sample_end_to_end():
    torch.manual_seed(0)
    model, flow = tiny_dit().eval(), PyramidFlow(stages=2)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    cond, uncond = caption(2), dict(ids=torch.zeros(2, 4, dtype=torch.long), mask=torch.ones(2, 4, dtype=torch.bool))

    def run(frames):
        return flow.sample(model, (2, 4, frames, 8, 8), cond, uncond, steps=2, cfg=3.0,
                           generator=torch.Generator().manual_seed(0))

    three, two = run(3), run(2)
    assert three.shape == (2, 4, 3, 8, 8) and torch.isfinite(three).all()
    assert torch.allclose(three[:, :, :2], two, atol=1e-5)  # a longer video does not change its earlier frames
    with pytest.raises(ValueError, match="uncond"):
        flow.sample(model, (2, 4, 1, 8, 8), cond, steps=1, cfg=3.0)


def test_cfg_mixes_one_batched_forward():
    flow = PyramidFlow(stages=1)
    calls = []

    def model(x, t, ids, mask, history, causal):  # predicts the caption's first id everywhere
        calls.append(len(x))
        return ids[:, :1, None, None, None].double().expand_as(x)

    cond, uncond = (dict(ids=torch.tensor([[i]]), mask=torch.ones(1, 1, dtype=torch.bool)) for i in (2, 0))
    x, history = torch.zeros(1, 1, 1, 2, 2, dtype=torch.float64), [torch.zeros(1, 1, 1, 1, 1)]
    v = flow.velocity(model, x, torch.ones(1), cond, uncond, history, cfg=3.0)
    assert calls == [2] and torch.allclose(v, torch.full_like(x, 0 + 3.0 * (2 - 0)))


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="stages"):
        PyramidFlow(stages=0)
    with pytest.raises(ValueError, match="stage_ratios"):
        PyramidFlow(stages=3, stage_ratios=(1, 1))
    with pytest.raises(ValueError, match="history_noise"):
        PyramidFlow(history_noise=1.5)
    with pytest.raises(ValueError, match="divisible"):
        PyramidFlow(stages=3).loss(StandIn(2), torch.randn(2, 2, 1, 6, 6), caption(2))
    with pytest.raises(ValueError, match="B, C, T, H, W"):
        PyramidFlow().sample(StandIn(2), (2, 8, 8), caption(2))
