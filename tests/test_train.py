"""train.py and sample.py end to end on toy shapes: stages, objectives, DDP, resume, errors."""
import dataclasses
import importlib
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

import sample
import train
from data import checkpoint, config, schedule

diffusion = importlib.import_module("03_diffusion")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# bf16 autocast where the CPU has it; on one without (AVX2 only), emulated bf16 would only slow the suite down
TOY = {
    "dtype": "bf16" if config.native_bf16(torch.device("cpu")) else "fp32",
    "data": {"frames": 5, "size": 32, "max_digits": 1},
    "vae": {"channels": [16, 32], "patch": 4, "latent_channels": 4, "frames": 5, "batch_size": 2, "steps": 4,
            "warmup": 1, "ckpt_every": 2, "sample_every": 4, "val_frames": 9},
    "dit": {"dim": 32, "depth": 2, "heads": 2, "text_depth": 1, "videos": 32, "batch_size": 8, "steps": 6,
            "warmup": 2, "ckpt_every": 3, "sample_every": 6, "sample_steps": 2,
            "prompts": ["digit 1 is moving up and down"]},
}


def toy_config(tmp, **sections):
    """A toy YAML in `tmp` (out_dir = tmp), TOY updated section by section."""
    cfg = {k: dict(v) if isinstance(v, dict) else v for k, v in TOY.items()}
    for name, update in sections.items():
        cfg[name] = {**cfg[name], **update} if isinstance(update, dict) else update
    cfg["out_dir"] = str(tmp)
    path = os.path.join(tmp, "toy.yaml")
    os.makedirs(tmp, exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path


@pytest.fixture(scope="module")
def vae_ckpt(tmp_path_factory):
    """One toy VAE, trained once and shared by the DiT tests."""
    out = tmp_path_factory.mktemp("vae")
    train.main(["--config", toy_config(out), "--stage", "vae"])
    return str(out / "vae.pt")


def metrics(out, stage):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["stage"] == stage and "loss" in r]


def test_vae_stage_writes_checkpoint_metrics_and_gif(vae_ckpt):
    out = os.path.dirname(vae_ckpt)
    ckpt = train.load_checkpoint(vae_ckpt, "vae")
    assert ckpt["step"] == TOY["vae"]["steps"] and ckpt["config"]["vae"]["channels"] == [16, 32]
    assert 0 < ckpt["model"]["scaling_factor"].item() < 1e3  # measured at the end
    losses = [r["loss"] for r in metrics(out, "vae")]
    assert len(losses) == TOY["vae"]["steps"] and all(math.isfinite(x) for x in losses)
    assert os.path.isfile(os.path.join(out, "samples", "vae_000004.gif"))
    assert yaml.safe_load(open(os.path.join(out, "config.yaml")))["vae"]["steps"] == 4


@pytest.mark.parametrize("objective", ["ddpm", "flow", "pyramid"])
def test_dit_stage_and_sample_py(objective, vae_ckpt, tmp_path):
    train.main(["--config", toy_config(tmp_path), "--stage", "dit", f"--dit.vae_ckpt={vae_ckpt}",
                f"--dit.objective={objective}"])
    ckpt = train.load_checkpoint(str(tmp_path / "dit.pt"), "dit")
    assert ckpt["step"] == 6 and ckpt["config"]["dit"]["objective"] == objective
    assert all(math.isfinite(r["loss"]) for r in metrics(tmp_path, "dit"))
    assert os.path.isfile(tmp_path / "samples" / "dit_000006.gif")

    out = tmp_path / "gifs"
    prompt = "digit 1 is moving up and down"
    argv = ["--ckpt", str(tmp_path / "dit.pt"), "--prompt", prompt, "--n", "2", "--steps", "2", "--out", str(out)]
    sample.main(argv)
    assert sorted(os.listdir(out)) == ["contact_sheet.png", "digit_1_is_moving_up_and_down_0.gif",
                                       "digit_1_is_moving_up_and_down_0.txt", "digit_1_is_moving_up_and_down_1.gif",
                                       "digit_1_is_moving_up_and_down_1.txt"]
    assert open(out / "digit_1_is_moving_up_and_down_1.txt").read().strip() == prompt
    first = open(out / "digit_1_is_moving_up_and_down_0.gif", "rb").read()
    sample.main(argv)  # same seed, same video
    assert open(out / "digit_1_is_moving_up_and_down_0.gif", "rb").read() == first
    knobs = {"ddpm": ["--sampler", "ddpm"], "flow": ["--solver", "heun", "--shift", "2"], "pyramid": []}[objective]
    sample.main(argv + ["--cfg-rescale", "0.7"] + knobs)  # the sampler options of 03 and 04 run end to end
    assert open(out / "digit_1_is_moving_up_and_down_0.gif", "rb").read() != first


def test_compiled_dit_stage_matches_eager(vae_ckpt, tmp_path):
    """--dit.compile=true trains the same model: same losses (to fp32 reordering), plain checkpoint keys."""
    runs = {}
    for mode in ("eager", "compiled"):
        out = tmp_path / mode
        train.main(["--config", toy_config(out, dtype="fp32", dit={"steps": 3, "sample_every": 3}), "--stage", "dit",
                    f"--dit.vae_ckpt={vae_ckpt}", f"--dit.compile={mode == 'compiled'}"])
        runs[mode] = [r["loss"] for r in metrics(out, "dit")], train.load_checkpoint(str(out / "dit.pt"), "dit")
    (eager, a), (compiled, b) = runs["eager"], runs["compiled"]
    assert compiled == pytest.approx(eager, rel=1e-4)
    assert a["model"].keys() == b["model"].keys()  # no "_orig_mod." prefix: sample.py loads either
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, rtol=1e-3, atol=1e-5)


def test_sample_py_keeps_repeated_prompts_apart(vae_ckpt, tmp_path):
    train.main(["--config", toy_config(tmp_path, dit={"steps": 1, "sample_every": 100}), "--stage", "dit",
                f"--dit.vae_ckpt={vae_ckpt}"])
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("digit 1 is moving up and down\ndigit 1 is moving up and down\n")
    sample.main(["--ckpt", str(tmp_path / "dit.pt"), "--prompts", str(prompts), "--n", "1", "--steps", "1",
                 "--out", str(tmp_path / "gifs")])
    assert len([f for f in os.listdir(tmp_path / "gifs") if f.endswith(".gif")]) == 2
    slim = str(tmp_path / "slim.pt")  # the way data/pretrained/tiny.pt is made: bf16 weights, sampled like dit.pt
    sample.main(["--ckpt", str(tmp_path / "dit.pt"), "--export", slim])
    assert os.path.getsize(slim) < os.path.getsize(tmp_path / "dit.pt") / 2
    sample.main(["--ckpt", slim, "--prompt", "digit 1 is moving up and down", "--n", "1", "--steps", "1",
                 "--out", str(tmp_path / "slim")])
    assert os.path.isfile(tmp_path / "slim" / "digit_1_is_moving_up_and_down_0.gif")


def test_shipped_weights_load_and_generate():
    """data/pretrained/tiny.pt, the weights README's first command samples from: small, and it generates."""
    path = os.path.join(ROOT, "data", "pretrained", "tiny.pt")
    assert os.path.getsize(path) < 15 * 2 ** 20
    cpu = torch.device("cpu")
    model, objective, vae, tokenizer, config, latent_shape = sample.load(path, cpu)
    videos = sample.generate(model, objective, vae, tokenizer, ["digit 3 is moving up and down"], latent_shape,
                             config["dit"]["text_len"], 2, 8.0, 0, cpu, "fp32")
    assert videos.shape == (1, 1, config["data"]["frames"], 64, 64) and torch.isfinite(videos).all()


def test_resume_is_bitwise_identical(vae_ckpt, tmp_path, monkeypatch):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    args = ["--stage", "dit", f"--dit.vae_ckpt={vae_ckpt}"]
    train.main(["--config", toy_config(straight)] + args)

    save = train.save_checkpoint

    def crash_after_first_dit_checkpoint(path, state):
        save(path, state)
        if path.endswith("dit.pt"):
            raise KeyboardInterrupt("simulated crash after step 3")

    monkeypatch.setattr(train, "save_checkpoint", crash_after_first_dit_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train.main(["--config", toy_config(broken)] + args)
    monkeypatch.setattr(train, "save_checkpoint", save)
    assert train.load_checkpoint(str(broken / "dit.pt"), "dit")["step"] == 3
    with pytest.raises(SystemExit, match="--resume"):  # never silently overwrite a run
        train.main(["--config", toy_config(broken)] + args)
    train.main(["--config", toy_config(broken), "--resume"] + args)

    a, b = (train.load_checkpoint(str(d / "dit.pt"), "dit") for d in (straight, broken))
    assert b["step"] == 6
    assert_same_training_state(a, b)


def assert_same_training_state(a, b):
    """Two dit.pt checkpoints hold bitwise the same weights, EMA weights and AdamW moments."""
    for part in ("model", "ema"):
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), f"{part}.{name} differs after resume"
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        for key in sa:
            assert torch.equal(sa[key], sb[key]), f"optimizer state {key} differs after resume"


def test_two_process_ddp(vae_ckpt, tmp_path):
    """torchrun, 2 processes, gloo: same weights on both ranks; explicit uniform sampling splits [0, T)."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "tests", "ddp_worker.py"), "--config", toy_config(out), "--stage", "dit",
           f"--dit.vae_ckpt={vae_ckpt}", "--dit.objective=ddpm", "--dit.grad_accum=2"]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(out / f"rank{r}.pt") for r in range(2)]
    for name, p in ranks[0]["params"].items():
        assert torch.equal(p, ranks[1]["params"][name]), f"{name} differs between the ranks"
    assert len(ranks[0]["timesteps"]) == 6 * 2  # 6 steps x 2 micro-batches
    for t0, t1 in zip(ranks[0]["timesteps"], ranks[1]["timesteps"]):  # rank 0: [0, 500), rank 1: [500, 1000)
        assert t0.max() < 500 <= t1.min()
    assert train.load_checkpoint(str(out / "dit.pt"), "dit")["step"] == 6


def test_sigkill_leaves_a_loadable_checkpoint(tmp_path):
    config = toy_config(tmp_path, vae={"steps": 100000, "ckpt_every": 1, "sample_every": 100000})
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), "--config", config, "--stage", "vae"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = tmp_path / "vae.pt"
    deadline = time.time() + 120
    while not path.exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # let it checkpoint a few more times, then kill it at a random point
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert train.load_checkpoint(str(path), "vae")["step"] >= 1


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(SystemExit, match=r"unknown config key 'dit.lrr'.*did you mean 'dit.lr'"):
        train.parse_args(["--dit.lrr=1e-3"])
    with pytest.raises(SystemExit, match="'vae.steps' must be int"):
        train.parse_args(["--vae.steps=many"])
    with pytest.raises(SystemExit, match="'dit.objective' must be one of"):
        train.parse_args(["--dit.objective=gan"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("vae:\n  chanels: [8, 16]\n")
    with pytest.raises(SystemExit, match=r"'vae.chanels' in .*bad.yaml \(did you mean 'vae.channels'"):
        train.parse_args(["--config", str(bad)])
    cfg, _ = train.parse_args(["--config", os.path.join(ROOT, "tiny.yaml"), "--dit.steps=7", "--vae.lr=2e-4"])
    tiny = yaml.safe_load(open(os.path.join(ROOT, "tiny.yaml")))
    assert cfg.dit.steps == 7 and cfg.vae.lr == 2e-4 and cfg.data.frames == tiny["data"]["frames"]


def test_lr_schedule_warms_up_holds_then_decays():
    warm, total = 10, 110
    cosine = [schedule.lr_at(s, 1.0, warm, total) for s in range(total)]
    assert cosine[0] == 0.1 and cosine[warm - 1] == 1.0 == cosine[warm]
    assert all(a > b for a, b in zip(cosine[warm:], cosine[warm + 1:]))  # decays from the first step after warm-up
    assert 0.1 < cosine[-1] < 0.101  # the last step is one short of the floor
    assert all(schedule.lr_at(s, 1.0, warm, total, decay=0.0) == 1.0 for s in range(warm, total))
    # decay=0.5 holds the rate for the first half, then runs the whole cosine in the second
    wsd = [schedule.lr_at(s, 1.0, warm, total, decay=0.5) for s in range(total)]
    assert wsd[:60] == [schedule.lr_at(s, 1.0, warm, total, decay=0.0) for s in range(60)]
    assert wsd[60:] == [schedule.lr_at(s, 1.0, warm, 60) for s in range(warm, 60)]
    with pytest.raises(SystemExit, match=r"'dit.lr_decay' must be in \[0.0, 1.0\], got 1.5"):
        train.parse_args(["--dit.lr_decay=1.5"])


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(SystemExit, match=r"needs a trained VAE and found none at .*nowhere\.pt"):
        train.main(["--config", toy_config(tmp_path), "--stage", "dit", f"--dit.vae_ckpt={tmp_path}/nowhere.pt"])
    corrupt = tmp_path / "dit.pt"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(SystemExit, match="not a readable checkpoint"):
        train.load_checkpoint(str(corrupt), "dit")
    with pytest.raises(SystemExit, match="not a readable checkpoint"):
        sample.main(["--ckpt", str(corrupt), "--prompt", "digit 1 is moving up and down"])


def test_an_overlong_prompt_is_a_one_line_error():
    """The shipped weights' text encoder takes 16 tokens; a caption repeated twenty times is refused before any work."""
    shipped = os.path.join(ROOT, "data", "pretrained", "tiny.pt")
    with pytest.raises(SystemExit,
                       match=r"^error: prompt 'digit 3 is moving .*\.\.\.' is \d+ tokens, more than the 16"):
        sample.main(["--ckpt", shipped, "--prompt", " ".join(["digit 3 is moving up and down"] * 20)])


def test_nan_loss_stops_and_names_the_checkpoint(tmp_path):
    cfg, _ = train.parse_args(["--config", toy_config(tmp_path)])
    logger = train.Logger(cfg, 0, "dit", 0, 10)
    with pytest.raises(SystemExit, match="loss is nan at step 5.*no checkpoint was written yet"):
        train.check_finite(float("nan"), 4, str(tmp_path / "dit.pt"), logger)


def test_config_reaches_every_objective_knob():
    """What 03, 04 and 05 teach is a config key: the objective train.py builds carries it."""
    def objective(*flags):
        cfg, _ = train.parse_args(list(flags))
        return train.build_objective(dataclasses.asdict(cfg.dit))
    ddpm = objective("--dit.objective=ddpm", "--dit.snr_shift=3", "--dit.ddpm_sampler=ddpm")
    assert ddpm.sampler == "ddpm"
    assert torch.equal(ddpm.alphas_cumprod, diffusion.GaussianDiffusion(snr_shift=3.0).alphas_cumprod)
    flow = objective("--dit.flow_shift=3", "--dit.flow_solver=heun")
    assert (flow.shift, flow.sample_shift, flow.solver) == (3.0, 3.0, "heun")  # sample_shift 0: the same as training
    assert objective("--dit.flow_shift=3", "--dit.sample_shift=2").sample_shift == 2.0
    pyramid = objective("--dit.objective=pyramid", "--dit.flow_shift=3", "--dit.pyramid_shift=2",
                        "--dit.pyramid_stage_ratios=[1, 3]", "--dit.history_noise=0.2")
    assert (pyramid.shift, pyramid.stage_ratios, pyramid.history_noise) == (2.0, [1.0, 3.0], 0.2)
    assert objective("--dit.objective=pyramid", "--dit.flow_shift=3").shift == 1.0  # its own shift, not flow's
    with pytest.raises(SystemExit, match="'dit.flow_solver' must be one of"):
        train.parse_args(["--dit.flow_solver=rk4"])
    with pytest.raises(SystemExit, match=r"'dit.sample_cfg_rescale' must be in \[0.0, 1.0\]"):
        train.parse_args(["--dit.sample_cfg_rescale=2"])


def test_device_auto_and_bf16_warning(monkeypatch, capsys):
    assert config.pick_device("auto").type == ("cuda" if torch.cuda.is_available() else
                                               "mps" if torch.backends.mps.is_available() else "cpu")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    config.check_dtype(torch.device("cpu"), "bf16")
    assert "no native bf16" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="fp16 needs a GPU"):
        config.check_dtype(torch.device("cpu"), "fp16")


@pytest.mark.parametrize("flags, message", [
    (["--dit.lrr=1"], "unknown config key 'dit.lrr'"),
    (["--vae.steps=many"], "'vae.steps' must be int"),
    (["--dit.objective=gan"], "'dit.objective' must be one of"),
    (["--data.frames=6"], r"data.frames=6: the causal VAE .* takes 1 \+ 2k frames"),
    (["--data.size=36"], "data.size=36 must be divisible by the VAE's space compression 8"),
    (["--dit.batch_size=7", "--dit.grad_accum=2"], "dit.batch_size=7 must split evenly"),
    (["--dit.videos=4"], "dit.videos=4 is fewer than one batch"),
    (["--dit.heads=3"], "divisible"),
    (["--data.channels=3"], "Moving MNIST is grayscale"),
    (["--data.dataset=no/such/folder"], "no such folder"),
    (["--stage", "dit", "--dit.vae_ckpt=nowhere.pt"], "needs a trained VAE and found none at nowhere.pt"),
    (["--config", "missing.yaml"], "cannot read config file missing.yaml"),
    (["--dit.objective=pyramid", "--dit.pyramid_stages=3"], "latent must be divisible by 8"),
    (["--dit.objective=pyramid", "--dit.i2v=true"], "dit.i2v is for the flow and ddpm objectives"),
    (["--dit.arch=hunyuan", "--dit.attention=factorized"], "CogVideoX's ablation: arch 'cogvideox' only"),
    (["--vae.bottleneck=fsq", "--vae.fsq_levels=[5, 5]"], "fsq_levels takes one number of levels"),
    (["--vae.norm=batch"], "'vae.norm' must be one of"),
    (["--vae.time_compress_at=first"], "builds the same network as last: all 1 level"),  # the reviewed defects 1-4
    (["--dit.patch_t=2", "--dit.images=0.25"], r"an image \(dit.images\) is one latent frame"),
    (["--dit.patch_t=2", "--dit.objective=pyramid"], "the pyramid denoises one latent frame at a time"),
    (["--dit.i2v=true", "--vae.norm=clip"], "which vae.norm=clip computes from the later frames too"),
])
def test_user_errors_are_one_line_before_any_work(flags, message, tmp_path):
    with pytest.raises(SystemExit) as stop:
        train.main(["--config", toy_config(tmp_path)] + flags)
    text = str(stop.value)
    assert text.startswith("error: ") and "\n" not in text
    assert __import__("re").search(message, text), text
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "config.yaml").exists()  # nothing ran


def test_command_line_errors_print_one_line_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dit: [unclosed\n")
    for cmd in ([os.path.join(ROOT, "train.py"), "--config", str(bad)],
                [os.path.join(ROOT, "sample.py"), "--ckpt", str(tmp_path / "none.pt"), "--prompt", "digit 1"]):
        result = subprocess.run([sys.executable] + cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
        lines = result.stderr.strip().splitlines()
        assert result.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for argv, message in ((["--prompt", "  "], "a --prompt is empty"), (["--prompt", "x", "--n", "0"], "--n must be"),
                          (["--prompts", str(tmp_path / "nope.txt")], "cannot read --prompts file"),
                          (["--solver", "rk4"], "invalid choice: 'rk4'")):
        with pytest.raises(SystemExit, match=f"^error: .*{message}"):
            sample.main(["--ckpt", "whatever.pt"] + argv)
    import bench  # argparse's own errors too are one line, in all three commands
    for run, argv in ((train.parse_args, ["--stage", "both"]), (bench.main, ["quality", "--n", "0"]),
                      (bench.main, ["judge"])):
        with pytest.raises(SystemExit, match=r"^error: [^\n]*\(see \S+ --help\)$"):
            run(argv)


def test_video_folder_is_scanned_and_filtered_before_training(tmp_path, capsys):
    clips = tmp_path / "clips"
    clips.mkdir()
    from data.moving_mnist import MovingMNIST, save_gif
    ds = MovingMNIST("val", num_frames=5, size=32, max_digits=1)
    for i in range(4):
        save_gif(str(clips / f"c{i}.gif"), ds[i][0])
        (clips / f"c{i}.txt").write_text(ds[i][1])
    save_gif(str(clips / "still.gif"), ds[0][0][:, :1].repeat(1, 5, 1, 1))
    (clips / "still.txt").write_text(ds[0][1])
    (clips / "broken.gif").write_bytes(b"GIF89a nope")
    (clips / "broken.txt").write_text("digit 1 is moving up and down")
    (clips / "mute.gif").write_bytes((clips / "c0.gif").read_bytes())
    out = tmp_path / "run"
    config = toy_config(out, data={"dataset": str(clips), "min_motion": 0.001},
                        vae={"steps": 1, "ckpt_every": 1, "sample_every": 1, "val_frames": 5})
    train.main(["--config", config, "--stage", "vae"])
    printed = capsys.readouterr().out
    assert "kept 4 of 7 clips; dropped: 1 unreadable, 1 no caption, 1 static" in printed
    assert sorted(line.split("\t")[0] for line in (out / "dropped.txt").read_text().splitlines()) == \
        ["broken.gif", "mute.gif", "still.gif"]
    assert (out / "scan.json").exists() and not any(f.endswith(".json") for f in os.listdir(clips))
    with pytest.raises(SystemExit, match=r"error: 2 broken clip\(s\) in .*data.on_bad=skip"):
        train.main(["--config", config, "--stage", "vae", "--resume", "--data.on_bad=error"])


def ctrl_c_during_step(monkeypatch, n):
    """Send this process SIGINT (Ctrl-C) during step n, from train.ema_update; returns the real ema_update."""
    update, calls = train.ema_update, []

    def update_then_interrupt(*a):
        update(*a)
        calls.append(1)
        if len(calls) == n:
            os.kill(os.getpid(), signal.SIGINT)
    monkeypatch.setattr(train, "ema_update", update_then_interrupt)
    return update


def test_interrupt_saves_and_resume_matches_an_uninterrupted_run(vae_ckpt, tmp_path, monkeypatch):
    """Ctrl-C (SIGINT) mid-run: a checkpoint at the current step, a one-line exit; --resume ends bitwise where an
    uninterrupted run ends."""
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    args = ["--stage", "dit", f"--dit.vae_ckpt={vae_ckpt}", "--dit.ckpt_every=100"]
    train.main(["--config", toy_config(straight)] + args)
    handler = signal.getsignal(signal.SIGINT)
    update = ctrl_c_during_step(monkeypatch, 2)
    with pytest.raises(SystemExit, match="stopped by SIGINT after step 2.*--resume"):
        train.main(["--config", toy_config(broken)] + args)
    monkeypatch.setattr(train, "ema_update", update)
    assert signal.getsignal(signal.SIGINT) is handler  # put back
    assert train.load_checkpoint(str(broken / "dit.pt"), "dit")["step"] == 2
    train.main(["--config", toy_config(broken), "--resume"] + args)
    a, b = (train.load_checkpoint(str(d / "dit.pt"), "dit") for d in (straight, broken))
    for part in ("model", "ema"):
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), f"{part}.{name} differs after an interrupted run"


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    path = str(tmp_path / "dit.pt")
    checkpoint.save_checkpoint(path, {"kind": "dit", "step": 1})
    real = torch.save

    def disk_full(obj, f):
        real(obj, f)  # half a file on disk, then the error
        f.truncate(10)
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(SystemExit, match=r"could not write .*dit.pt .*No space left.*previous .*dit.pt is intact"):
        checkpoint.save_checkpoint(path, {"kind": "dit", "step": 2})
    monkeypatch.undo()
    assert train.load_checkpoint(path, "dit")["step"] == 1 and not os.path.exists(path + ".tmp")


