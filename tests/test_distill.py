"""07_distill.py: the guidance-distilled student starts as the teacher, learns the guided velocity in one pass a
step, and the reflowed one samples in a few; both write checkpoints that sample.py reads like any other."""
import importlib
import json
import os

import pytest
import torch

import sample
import train
from test_train import toy_config

distill = importlib.import_module("07_distill")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A toy teacher (VAE + flow DiT), then both distillation stages on it."""
    out = tmp_path_factory.mktemp("distill")
    config = toy_config(out / "teacher")
    train.main(["--config", config])
    distill.main(["--config", config, f"--distill.teacher={out / 'teacher' / 'dit.pt'}", f"--out_dir={out / 'student'}",
                  "--distill.guidance_steps=30", "--distill.reflow_pairs=32", "--distill.reflow_teacher_steps=4",
                  "--distill.reflow_steps=30", "--distill.batch_size=8", "--distill.lr=3e-3"])
    return out


def forward_batches(model):
    """Record the batch size of every forward pass of model."""
    sizes = []
    model.register_forward_pre_hook(lambda m, args: sizes.append(len(args[0])))
    return sizes


def test_the_student_starts_as_the_teachers_conditional_model(run):
    teacher, ckpt, latents, ids, mask = distill.load_teacher(str(run / "teacher" / "dit.pt"), torch.device("cpu"))
    student = distill.student_of(teacher, ckpt["config"]["dit"], ckpt["vocab_size"], torch.device("cpu"))
    x, t = latents[:2].float(), torch.tensor([100.0, 800.0])
    expected = teacher(x, t, ids[:2], mask[:2])
    for w in (1.0, 8.0):  # the guidance embedding's last layer is zero: w changes nothing yet
        assert torch.equal(student(x, t, ids[:2], mask[:2], guidance=torch.full((2,), w)), expected)


def test_both_stages_learn_and_write_checkpoints_sample_py_reads(run):
    with open(run / "student" / "metrics.jsonl") as f:
        logs = [json.loads(line) for line in f]
    for stage in ("guidance", "reflow"):
        losses = [r["loss"] for r in logs if r["stage"] == stage]
        assert len(losses) == 30 and sum(losses[-10:]) < sum(losses[:10]), (stage, losses)
    for name, steps in (("guidance.pt", 50), ("dit.pt", 2)):
        model, _, _, _, config, _ = sample.load(str(run / "student" / name), torch.device("cpu"))
        assert model.g_embed is not None and config["dit"]["guidance_embed"]
        assert config["distill"]["teacher"] and config["distill"]["sample_steps"] == steps
    teacher = sample.load(str(run / "teacher" / "dit.pt"), torch.device("cpu"))[4]["dit"]
    assert config["dit"]["sample_shift"] == (teacher["sample_shift"] or teacher["flow_shift"])  # its shifted grid


def test_distilled_sampling_is_one_pass_a_step(run, monkeypatch):
    """The teacher's guided step is one pass over [cond; uncond], twice the batch; the student's is the batch alone,
    and sample.py gives each distilled checkpoint its own steps by default: 50 after stage 1, 2 after reflow."""
    passes, steps, generate = {}, [], sample.generate
    monkeypatch.setattr(sample, "generate", lambda *a, **k: steps.append(a[7]) or generate(*a, **k))
    for name, ckpt in (("teacher", run / "teacher" / "dit.pt"), ("guided", run / "student" / "guidance.pt"),
                       ("student", run / "student" / "dit.pt")):
        model, objective, vae, tokenizer, config, shape = sample.load(str(ckpt), torch.device("cpu"))
        passes[name] = forward_batches(model)
        videos = generate(model, objective, vae, tokenizer, ["digit 1 is moving up and down"] * 3, shape,
                          config["dit"]["text_len"], 4, config["dit"]["sample_cfg"], 0, torch.device("cpu"), "fp32")
        assert torch.isfinite(videos).all()
        args = sample.parser().parse_args(["--ckpt", str(ckpt), "--prompt", "digit 1 is moving up and down"])
        sample.sampler(args)[0](["digit 1 is moving up and down"], seed=0)
    assert passes["teacher"][:4] == [6] * 4 and passes["guided"][:4] == passes["student"][:4] == [3] * 4
    assert steps == [50, 50, 2]


def test_bad_teachers_are_one_line_errors(run, tmp_path):
    with pytest.raises(SystemExit, match="give the flow DiT to distil"):
        distill.main([f"--out_dir={tmp_path}"])
    os.makedirs(tmp_path / "lone")
    lone = tmp_path / "lone" / "dit.pt"
    lone.write_bytes((run / "teacher" / "dit.pt").read_bytes())
    with pytest.raises(SystemExit, match="training latents .* are not beside it"):
        distill.main([f"--distill.teacher={lone}", f"--out_dir={tmp_path / 'out'}"])
    with pytest.raises(SystemExit, match="not an undistilled flow DiT"):
        distill.load_teacher(str(run / "student" / "dit.pt"), torch.device("cpu"))
