"""train.py's parallel modes under one torchrun launch of 2 ranks (gloo), each run into OUT/<mode>/:

    ddp       plain data parallel, the reference
    fsdp      dit.fsdp=true (FSDP2), the same run
    resumed   dit.fsdp=true stopped after step 2 as Ctrl-C would stop it, then --resume
    parallel  vae.context_parallel=2 for the latent cache and dit.sequence_parallel=2 (Ulysses) for the DiT

tests/test_parallel.py compares their checkpoints with each other and with a single-process run.
"""
import os
import sys

import torch.distributed as dist

import train

dist.init_process_group("gloo")  # one group for all the runs: train.main uses it and leaves it open

out, config = sys.argv[1], sys.argv[2]
base = ["--config", config, "--stage", "dit", f"--dit.vae_ckpt={sys.argv[3]}"]


def run(mode, *flags):
    train.main(base + [f"--out_dir={os.path.join(out, mode)}", *flags])


run("ddp")
run("fsdp", "--dit.fsdp=true")

update, calls = train.ema_update, []


def stop_after_step_2(*args):  # what SIGINT's handler does, on rank 0 only: the ranks agree on it
    update(*args)
    calls.append(1)
    if len(calls) == 2 and int(os.environ["RANK"]) == 0:
        train.STOP["signal"] = "SIGINT"


train.ema_update = stop_after_step_2
try:
    run("resumed", "--dit.fsdp=true")
except SystemExit as e:
    assert "after step 2" in str(e), e
train.ema_update = update
run("resumed", "--dit.fsdp=true", "--resume")
run("parallel", "--vae.context_parallel=2", "--dit.sequence_parallel=2")
