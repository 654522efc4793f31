"""06_parallel.py's modes on 2 CPU processes (gloo) against one process: the context-parallel VAE and Ulysses
sequence-parallel DiT (both archs) directly, and DDP, FSDP2 and both splits through train.py.

One torchrun launch (tests/parallel_worker.py) runs every case; the tests compare what each rank saved.
"""
import os
import re
import subprocess
import sys

import pytest
import torch

import parallel_worker as worker

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("parallel")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    # --standalone: torchrun picks a free port itself
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "tests", "parallel_worker.py"), str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=120)  # the workers' collectives time out after 60 s
    except subprocess.TimeoutExpired:
        proc.terminate()  # SIGTERM, not SIGKILL: torchrun then ends its workers (each in a session of its own)
        try:
            stdout, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        pytest.fail(f"the 2-process run timed out:\n{stdout[-2000:]}\n{stderr[-4000:]}")
    assert proc.returncode == 0, f"the 2-process run failed:\n{stdout[-2000:]}\n{stderr[-4000:]}"
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


@pytest.mark.parametrize("name", list(worker.VAES))
@torch.no_grad()
def test_context_parallel_vae_equals_single_pass(ranks, name):
    vae = worker.make_vae(name)
    x, z = worker.vae_inputs(vae)
    mean, decoded = vae.encode(x).mean, vae.decode(z)
    tc = vae.time_compression
    # 17 frames = 1 + tc*k: rank 0 holds frame 0 and tc*k/2 frames, rank 1 the other tc*k/2
    assert [r[name]["frames"] for r in ranks] == [9, 8]
    assert [r[name]["latents"] for r in ranks] == [1 + 8 // tc, 8 // tc]
    assert [r[name]["decode_latents"] for r in ranks] == [1 + 8 // tc, 8 // tc]
    for r in ranks:  # every rank gathered the whole result
        torch.testing.assert_close(r[name]["mean"], mean, rtol=0, atol=1e-5)
        torch.testing.assert_close(r[name]["decoded"], decoded, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", list(worker.DITS))
def test_ulysses_dit_equals_single_process(ranks, name):
    model = worker.make_dit(name)
    args, history, weight = worker.dit_inputs(name)
    out = model(*args, history=history)
    (out * weight).sum().backward()
    for r in ranks:  # every rank returns the whole prediction
        torch.testing.assert_close(r[name]["out"], out.detach(), rtol=0, atol=1e-5)
    # Every rank computed the same loss L from the same output. Through the collectives' backward, rank r gets
    # the gradient of the sum of the W losses with respect to its own copy of the weights: W times its share
    # of dL/dw for the split work (its video shard, its heads), all of it for work repeated with only its own
    # loss downstream (the final layer). Either way the mean over ranks is dL/dw, what DDP's averaging computes.
    for n, p in model.named_parameters():
        grads = [r[name]["grads"][n] for r in ranks]
        # fp32 sums in another order: gradients of size ~100 (random weights, no adaLN-Zero) round at ~1e-5
        atol = max(1e-5, 1e-6 * p.grad.abs().max().item())
        torch.testing.assert_close(sum(grads) / len(grads), p.grad, rtol=1e-5, atol=atol,
                                   msg=lambda m: f"{n}: {m}")
    # and one rank's gradient alone is not it: the relation is a real one
    block_weight = "blocks.0.video.attn.qkv.weight" if "hunyuan" in name else "blocks.0.attn.qkv.weight"
    assert not torch.allclose(ranks[0][name]["grads"][block_weight], model.get_parameter(block_weight).grad)


def test_heads_not_divisible_by_the_world_size_is_an_error(ranks):
    for r in ranks:
        assert "3 heads over the 2 ranks" in r["heads_error"] and "divisible by the world size" in r["heads_error"]


# ----------------------------------------------------------------------------- train.py's modes
@pytest.fixture(scope="module")
def modes(tmp_path_factory):
    """One torchrun launch, 2 ranks: DDP, FSDP2, FSDP2 interrupted and resumed, context + sequence parallel;
    and the same toy run in this process, the single-process reference."""
    import test_train
    import train
    out = tmp_path_factory.mktemp("modes")
    vae_out = out / "vae"
    train.main(["--config", test_train.toy_config(vae_out), "--stage", "vae"])
    config = test_train.toy_config(out / "cfg", dtype="fp32", dit={"steps": 4, "ckpt_every": 4, "sample_every": 4})
    train.main(["--config", config, "--stage", "dit", f"--dit.vae_ckpt={vae_out / 'vae.pt'}",
                f"--out_dir={out / 'single'}"])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "tests", "modes_worker.py"), str(out), config, str(vae_out / "vae.pt")]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return {mode: train.load_checkpoint(str(out / mode / "dit.pt"), "dit")
            for mode in ("single", "ddp", "fsdp", "resumed", "parallel")}, out


def assert_same(a, b, exact=False):
    for name, tensor in a.items():
        if exact:
            assert torch.equal(tensor, b[name]), name
        else:  # the same sums in another order: float rounding only
            torch.testing.assert_close(b[name], tensor, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")


def test_fsdp_step_equals_ddp_step(modes):
    ckpts, _ = modes
    assert ckpts["fsdp"]["step"] == ckpts["ddp"]["step"] == 4
    # whole weights, plain names: sample.py loads it
    assert ckpts["fsdp"]["model"].keys() == ckpts["ddp"]["model"].keys()
    assert_same(ckpts["ddp"]["model"], ckpts["fsdp"]["model"])
    assert_same(ckpts["ddp"]["ema"], ckpts["fsdp"]["ema"])


def test_resume_of_a_sharded_run_is_exact(modes):
    ckpts, _ = modes
    assert ckpts["resumed"]["step"] == 4
    for part in ("model", "ema"):
        assert_same(ckpts["fsdp"][part], ckpts["resumed"][part], exact=True)


def test_context_and_sequence_parallel_run_equals_one_process(modes):
    """2 ranks that each hold half of every video's frames (VAE) and half of its tokens (DiT) train what one
    process trains: the same latent cache, the same weights."""
    ckpts, out = modes
    single, parallel = (torch.load(out / mode / "latents.pt") for mode in ("single", "parallel"))
    torch.testing.assert_close(parallel["latents"].float(), single["latents"].float(), rtol=0, atol=2e-3)
    assert parallel["captions"] == single["captions"]
    assert_same(ckpts["single"]["model"], ckpts["parallel"]["model"])


# ----------------------------------------------------------------------------- 06_parallel.py's demo
def test_the_demo_prints_each_mode_equal_to_one_process_and_its_memory():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "06_parallel.py")]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]
    lines = [line for line in result.stdout.splitlines() if line[:2] in ("1.", "2.", "3.", "4.")]
    assert len(lines) == 4, result.stdout
    for line in lines:  # each mode gives what one process gives, to float rounding
        assert float(line.split("to one process ")[1].split(";")[0]) < 1e-4, line
    assert "model state 14.6 MiB" in lines[1] and "model state 29.2 MiB" in lines[0]  # FSDP2 holds half
    mine, whole = (float(x) for x in re.findall(r"encode \+ decode (\d+) MiB \(one process: (\d+) MiB\)", lines[3])[0])
    assert mine < 0.75 * whole  # a rank holds about half the video's activations
