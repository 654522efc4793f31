"""Run train.py's main under torchrun, recording what test_train.py checks across ranks.

Each rank keeps a handle on its own DiT and on the timesteps that explicit uniform sampling
drew for it, then writes both to OUT/rank{r}.pt once training is done.
"""
import os
import sys

import torch

import train

rank = int(os.environ["RANK"])
models, timesteps = [], []

build_dit = train.build_dit
train.build_dit = lambda *a, **k: models.append(build_dit(*a, **k)) or models[-1]

draw = train.diffusion.explicit_uniform_timesteps
train.diffusion.explicit_uniform_timesteps = lambda *a, **k: timesteps.append(draw(*a, **k)) or timesteps[-1]

train.main(sys.argv[1:])
cfg, _ = train.parse_args(sys.argv[1:])
params = {name: p.detach().clone() for name, p in models[-1].named_parameters()}  # [0]: check_config's
torch.save({"params": params, "timesteps": timesteps}, os.path.join(cfg.out_dir, f"rank{rank}.pt"))
