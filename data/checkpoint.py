"""Files that must never be half-written (checkpoints, latent caches, the tokenizer, the judge), and what a
checkpoint holds besides weights so that a resumed run continues exactly as if never stopped.

    save_checkpoint(path, state)           # torch.save to path.tmp, fsync, then rename over path
    ckpt = load_checkpoint(path, "dit")    # the dict train.py wrote, or `error: ...` naming the file
    state = rng_state(); set_rng_state(state)    # every generator a training step draws from

A rename is atomic, so a crash or a full disk mid-write leaves the previous file as it was.
"""
import hashlib
import os
import random
import sys

import numpy as np
import torch


def save_atomic(path, write):
    """write(f) into path.tmp (a binary file), flush it to disk, then rename it over path."""
    tmp = path + ".tmp"
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:  # a full disk, say: the rename never happens, so the last good file is untouched
        if os.path.exists(tmp):
            os.remove(tmp)
        kept = f"the previous {path} is intact" if os.path.isfile(path) else "nothing was written"
        raise SystemExit(f"error: could not write {path} ({e}); {kept}") from None
    os.replace(tmp, path)


def save_checkpoint(path, state):
    save_atomic(path, lambda f: torch.save(state, f))


def load_checkpoint(path, kind):
    """A checkpoint dict written by train.py, or a one-line error naming the file and what is wrong."""
    if not os.path.isfile(path):
        raise SystemExit(f"error: no {kind} checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle garbage, wrong file: all the same to the user
        raise SystemExit(f"error: {path} is not a readable checkpoint (corrupt or truncated?): "
                         f"{str(e).splitlines()[0][:200]}") from None
    if not isinstance(ckpt, dict) or ckpt.get("kind") != kind:
        raise SystemExit(f"error: {path} is not a {kind} checkpoint of this project")
    return ckpt


def rng_state():
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def resume_rng(ckpt, rank, world):
    """Every rank's RNG as the checkpoint saved it (all ranks' states: parallel.gather_objects(rng_state()));
    returns the step to resume at."""
    states = ckpt["rng"]
    if len(states) == world:
        set_rng_state(states[rank])
    else:  # the data order still resumes; only the noise differs from an uninterrupted run
        print(f"[rank {rank}] checkpoint was written by {len(states)} rank(s), this run has {world}: "
              "resuming with fresh random noise", file=sys.stderr)
        torch.manual_seed(ckpt["step"] * 1000 + rank)
    return ckpt["step"]


def fingerprint(state_dict):
    """A content hash of weights, so the latent cache is rebuilt exactly when the VAE changed."""
    h = hashlib.sha1()
    for k, t in state_dict.items():
        h.update(k.encode())
        h.update(t.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
