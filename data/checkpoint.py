"""Files that must never be half-written: checkpoints, latent caches, the tokenizer, the judge.

    save_checkpoint(path, state)           # torch.save to path.tmp, fsync, then rename over path
    ckpt = load_checkpoint(path, "dit")    # the dict train.py wrote, or `error: ...` naming the file

A rename is atomic, so a crash or a full disk mid-write leaves the previous file as it was.
"""
import os

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
