import importlib
import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

import bench
from data.moving_mnist import MovingMNIST
from data.tokenizer import Tokenizer

scaling = importlib.import_module("10_scaling")
dit_lib, flow = importlib.import_module("02_dit"), importlib.import_module("04_flow")


def chinchilla_runs(alpha, beta, noise=0.0, seed=0, E=1.0, A=300.0, B=300.0):
    """Runs of 9 sizes whose loss follows Hoffmann et al.'s L(N, D) = E + A N^-alpha + B D^-beta at C = 6 N D,
    each measured at 8 data sizes, times exp(noise * N(0, 1)). Its N_opt grows as C^(beta / (alpha + beta))."""
    rng, runs = np.random.default_rng(seed), []
    for i in range(9):
        N = 10 ** (3 + 0.25 * i)
        curve = [dict(compute=6 * N * D, loss=(E + A * N ** -alpha + B * D ** -beta) * math.exp(noise * rng.normal()))
                 for D in 1e3 * 2.0 ** np.arange(8)]
        runs.append(dict(params=N, dim=i, depth=1, curve=curve))
    return runs


def test_three_forwards_a_step_are_what_torch_counts_over_forward_and_backward():
    for dim, depth, heads in ((32, 2, 2), (64, 3, 2)):
        model = dit_lib.DiT(16, dim, depth, heads, vocab_size=64, max_text_len=16, text_depth=1)
        x, ids = torch.randn(4, 16, 5, 8, 8), torch.randint(2, 64, (4, 16))
        with FlopCounterMode(display=False) as counter:
            flow.RectifiedFlow().loss(model, x, dict(ids=ids, mask=torch.ones_like(ids, dtype=torch.bool))).backward()
        ours = 3 * 4 * scaling.dit_flops(dim, depth, 1, n_text=16, n_video=5 * 4 * 4, patch_dim=16 * 2 * 2)
        # backward skips the gradient of the inputs of the first layers: a little under 2 forwards
        assert 0.95 < counter.get_total_flops() / ours <= 1.0
    assert bench.dit_flops is scaling.dit_flops  # bench.py speed counts with the same function


def test_loss_fit_recovers_a_power_law_and_takes_a_floor_only_where_there_is_one():
    C = np.logspace(9, 13, 12)
    a, b, floor = scaling.loss_fit(C, 5 * C ** -0.2, floor=False)
    assert a == pytest.approx(5) and b == pytest.approx(0.2) and floor == 0
    assert scaling.with_floor(C, 5 * C ** -0.2)[0] is False  # a floor predicts left-out points no better
    L = 2 + 50 * C ** -0.3
    use, errors = scaling.with_floor(C, L)
    assert use and errors["floor"] < errors["no floor"]
    a, b, floor = scaling.loss_fit(C, L, floor=True)
    assert b == pytest.approx(0.3, abs=0.005) and floor == pytest.approx(2.0, abs=0.01)


def test_frontier_is_the_lower_envelope():
    runs = [dict(curve=[dict(compute=1, loss=5), dict(compute=4, loss=3), dict(compute=16, loss=2.9)]),
            dict(curve=[dict(compute=2, loss=6), dict(compute=8, loss=2.8), dict(compute=32, loss=1.5)])]
    assert scaling.frontier(runs) == [(1, 5), (4, 3), (8, 2.8), (32, 1.5)]  # (2, 6) and (16, 2.9) are beaten


@pytest.mark.parametrize("alpha, beta", [(0.34, 0.34), (0.3, 0.4)])
def test_optimal_size_and_its_leave_one_out_error_recover_the_exponent(alpha, beta):
    truth = beta / (alpha + beta)
    exact = scaling.fit(chinchilla_runs(alpha, beta))
    assert exact["c"] == pytest.approx(truth, abs=0.01) and len(exact["N_opt"]) >= 10
    noisy = chinchilla_runs(alpha, beta, noise=0.01)
    c, spread = scaling.fit(noisy)["c"], scaling.jackknife(noisy)["c"]
    assert 0 < spread["se"] < 0.1 and len(spread["values"]) == 9
    assert abs(c - truth) < 3 * spread["se"] + 0.01  # the interval holds the truth


def fake_run(path, n=96):
    """A run folder as train.py leaves it: latents.pt (latents that depend on the caption) and tokenizer.json."""
    ds = MovingMNIST("train", num_frames=1, length=n)
    captions = [ds[i][1] for i in range(n)]
    latents = 0.3 * torch.randn(n, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    latents += torch.tensor([int(c.split()[1]) / 5 for c in captions]).view(n, 1, 1, 1, 1)
    os.makedirs(path, exist_ok=True)
    torch.save(dict(key=None, latents=latents.half(), captions=captions), os.path.join(path, "latents.pt"))
    Tokenizer.train(captions, 128).save(os.path.join(path, "tokenizer.json"))


def test_quick_form_end_to_end_writes_the_curves_the_fits_and_the_figure(tmp_path):
    fake_run(tmp_path / "run")
    report = scaling.run_exercise(str(tmp_path / "run"), quick=True, minutes=0.1, out=str(tmp_path / "out"),
                                  sizes=((16, 1, 1), (32, 1, 2), (32, 2, 2)), heldout=16, evals=3, batch=8,
                                  device="cpu", log=lambda *a: None)
    folder = tmp_path / "out" / "scaling_quick"
    with open(folder / "scaling.json") as f:
        saved = json.load(f)
    assert saved["fit"]["frontier"] and math.isfinite(saved["fit"]["b"]) and len(saved["sizes"]) == 3
    for r in report["sizes"]:
        assert len(r["curve"]) == 3 and r["curve"][-1]["step"] == r["steps"]
        assert all(p["compute"] == r["flops_per_step"] * p["step"] and p["loss"] > 0 for p in r["curve"])
    assert Image.open(folder / "scaling.png").size == (1100, 480)
    assert set(saved["references"]) >= {"HunyuanVideo 2024, video model", "Hoffmann et al. 2022, Chinchilla (language)"}


def test_a_run_without_latents_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match=r"error: .* has no latents.pt .* and no vae.pt"):
        bench.main(["scaling", "--run", str(tmp_path), "--out", str(tmp_path / "out")])
