"""06_parallel.py: one model on several processes (course topic 5.1): the batch split over ranks, the weights
sharded, a sequence split, a video split in time.

One device runs out of time (too few samples a second) or of memory (a model, a sequence or a video too big for
it). Four ways to spread the work over W processes, each exact: every rank ends with what one process would
compute, up to float rounding, which the demo below and tests/test_parallel.py check.

1. Data parallelism (DDP). Every rank holds the whole model and trains on its own slice of the batch; after
   backward, DDP all-reduces the gradients into their mean over the ranks, so every rank takes the step one
   process would take on the whole batch, and the weights stay identical without ever being sent.
2. Fully sharded data parallelism (FSDP2, torch's fully_shard; ZeRO-3 of Rajbhandari et al. 2020). Each rank keeps
   1/W of every weight, gradient and AdamW moment. A block's weights are all-gathered just before it runs and
   freed after, its gradients reduce-scattered, so the model's state per rank falls about W-fold.
3. Ulysses sequence parallelism (DeepSpeed-Ulysses, Jacobs et al. 2023; HunyuanVideo and Pyramid Flow use it).
   Each rank keeps 1/W of a sample's video tokens through every MLP and norm; around attention an all-to-all
   trades that for all tokens of 1/W of the heads. 02's DiT takes it through one hook, DiT.parallel.
4. Context parallelism for the VAE (CogVideoX). Each rank holds a consecutive piece of the time axis; before each
   causal conv a rank hands its last k_t - s_t frames to the next one. That is 01's cache protocol (front, keep,
   starts_video) answered by the previous rank instead of the previous chunk.

train.py uses all four (--dit.fsdp, --dit.sequence_parallel, --vae.context_parallel; DDP by default).

    torchrun --standalone --nproc_per_node=2 06_parallel.py   # each mode against one process: gap and memory
"""
import contextlib
import gc
import importlib
import inspect
import itertools
import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel as DDP

dit = importlib.import_module("02_dit")  # Ulysses attends with 02's attention()


# ----------------------------------------------------------------------------- process groups
def setup():
    """(rank, world_size, local_rank) under torchrun (RANK set), in a process group the caller made, or alone."""
    if "RANK" in os.environ and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
    return 0, 1, 0


def barrier():
    if dist.is_initialized():
        dist.barrier()


def mean_over_ranks(value, device):
    t = torch.tensor([value], dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t.item()


def gather_objects(obj):
    """Every rank's obj, in rank order (pickled through all_gather_object); [obj] alone."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def subgroups(n, rank, world):
    """(group, index, count): with n > 1, the ranks split into world / n groups of n consecutive ranks that work
    on the same samples (context or sequence parallel), and index / count number the groups, which is what data
    parallelism then sees; with n = 1, no group and every rank is its own."""
    if n == 1:
        return None, rank, world
    group, _ = dist.new_subgroups(group_size=n)
    return group, rank // n, world // n


@contextlib.contextmanager
def silent_fd(fd):
    """Discard what C++ code writes to a file descriptor: the profiler logs its own start and stop lines to
    stderr, past Python's sys.stderr, between the tables."""
    sys.stderr.flush()
    saved = os.dup(fd)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), fd)
    try:
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def peak_mib(fn, device):
    """Peak memory one call of fn allocates above what was held before (weights, inputs), in MiB. CUDA: the
    allocator's peak. CPU: the profiler's trace of every allocation and free summed in time order (its per-op
    tables fold allocations into ops, losing the order); never inside a timed call, as it slows fn down."""
    if device.type == "cuda":  # the allocator counts when kernels are queued: no need to wait for them
        held = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        return (torch.cuda.max_memory_allocated() - held) / 2 ** 20
    activities = [torch.profiler.ProfilerActivity.CPU]
    with silent_fd(2), torch.profiler.profile(activities=activities, profile_memory=True) as prof:
        fn()
    trace = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    return max(itertools.accumulate((n for _, n in trace), initial=0)) / 2 ** 20


# ----------------------------------------------------------------------------- 1. data parallelism, 2. FSDP2
def data_parallel(model):
    """DDP over the default group. Its buffers are not re-broadcast on every forward: the DiT's are constant
    RoPE tables, and the pyramid objective (05) makes a different number of forward calls on different ranks,
    where a broadcast per call would leave ranks waiting for each other forever."""
    no_sync_buffers = {"forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP).parameters
                       else "broadcast_buffers": False}  # renamed in newer torch
    return DDP(model, **no_sync_buffers)


def shard(model):
    """FSDP2: each block holds 1/W of its weights (all-gathered for its forward and backward), then the rest of
    the model; AdamW built on the sharded parameters keeps its moments sharded too."""
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    return model


WHOLE = StateDictOptions(full_state_dict=True, cpu_offload=True)  # unsharded, gathered on rank 0, plain keys


def whole_state(model, opt):
    """(weights, optimizer state) of a sharded model as one process would hold them, for a checkpoint that loads
    anywhere. Every rank must call it: the shards are gathered."""
    return get_model_state_dict(model, options=WHOLE), get_optimizer_state_dict(model, opt, options=WHOLE)


def load_whole_state(model, opt, weights, moments):
    """The inverse of whole_state: every rank takes its shard of the whole weights and moments."""
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, weights, options=options)
    set_optimizer_state_dict(model, opt, moments, options=options)


# ----------------------------------------------------------------------------- 3. Ulysses sequence parallelism
class AllToAll(torch.autograd.Function):
    """Cut x into W equal pieces along scatter_dim, send piece j to rank j of `group`, and concatenate the W
    pieces that arrive, in rank order, along gather_dim. Its gradient is the reverse all-to-all."""

    @staticmethod
    def forward(ctx, x, scatter_dim, gather_dim, group):
        ctx.dims, ctx.group = (gather_dim, scatter_dim), group
        pieces = [p.contiguous() for p in x.chunk(dist.get_world_size(group), scatter_dim)]
        received = [torch.empty_like(p) for p in pieces]
        dist.all_to_all(received, pieces, group=group)
        return torch.cat(received, gather_dim)

    @staticmethod
    def backward(ctx, grad):
        return AllToAll.apply(grad, *ctx.dims, ctx.group), None, None, None


def all_gather(x, dim, group):
    """Every rank's x, concatenated in rank order along dim: an all-to-all of W copies of x, so that autograd
    sums the W ranks' gradients of this x (gloo has no reduce-scatter, the usual backward of an all-gather)."""
    return AllToAll.apply(torch.cat([x] * dist.get_world_size(group), dim), dim, dim, group)


class Ulysses:
    """Ulysses sequence parallelism over the W ranks of `group`, as 02's DiT.parallel: every rank passes the DiT
    the same inputs and gets the whole prediction; in between, the blocks run on 1/W of the video tokens. The
    caption is short and every video query needs all of it, so every rank holds it whole. Every rank then
    computes the same loss, and the mean of the ranks' gradients is the single-process gradient (DDP's mean)."""

    def __init__(self, group):
        self.group, self.world, self.rank = group, dist.get_world_size(group), dist.get_rank(group)

    def split(self, video, rope, n_text):
        """This rank's consecutive 1/W of the video tokens (B, N/W, D) and the RoPE angles of [text; them]."""
        N = video.shape[1]
        if N % self.world:
            raise ValueError(f"sequence parallelism splits the {N} video tokens over {self.world} ranks: "
                             "they must be divisible by the world size")
        mine = slice(self.rank * N // self.world, (self.rank + 1) * N // self.world)
        return video[:, mine], torch.cat([rope[:n_text], rope[n_text:][mine]])

    def attention(self, q, k, v, attn_mask, n_text):
        """Full attention while this rank holds the caption and N/W video tokens: q, k, v (B, heads, L + N/W, hd).
        An all-to-all trades sequence shards for head shards, all N video tokens of heads/W heads; their caption
        part is cut from the local copy, which sending would only duplicate. After attention the reverse
        all-to-all gives back this rank's tokens with all heads, and an all-gather over heads the whole caption,
        which keeps it identical on every rank. attn_mask: the full sequence's."""
        heads = q.shape[1]
        if heads % self.world:
            raise ValueError(f"Ulysses attention splits the {heads} heads over the {self.world} ranks of the group: "
                             "heads must be divisible by the world size")
        mine = slice(self.rank * heads // self.world, (self.rank + 1) * heads // self.world)

        def full_sequence(z):  # (B, heads, L + N/W, hd) -> (B, heads/W, L + N, hd)
            return torch.cat([z[:, mine, :n_text], AllToAll.apply(z[:, :, n_text:], 1, 2, self.group)], dim=2)

        out = dit.attention(full_sequence(q), full_sequence(k), full_sequence(v), attn_mask)  # (B, heads/W, L + N, hd)
        text = all_gather(out[:, :, :n_text], 1, self.group)                # (B, heads, L, hd)
        return torch.cat([text, AllToAll.apply(out[:, :, n_text:], 2, 1, self.group)], dim=2)

    def gather(self, video):  # (B, N/W, D) -> (B, N, D) on every rank
        return all_gather(video, 1, self.group)


# ----------------------------------------------------------------------------- 4. context-parallel VAE
class ContextParallel:
    """01's cache protocol across ranks: each rank of `group` encodes or decodes one consecutive piece of the time
    axis at once. The halo is what the chunked path keeps, each causal conv's last k_t - s_t input frames, but it
    comes from rank r - 1 instead of from the chunk before. All ranks run the same layers in the same order, so
    the i-th send of rank r meets the i-th recv of rank r + 1, and rank 0 receives nothing: the chain cannot
    deadlock. Forward only (send and recv carry no gradient), which is all encoding data and decoding samples need.

        cp = ContextParallel()
        z = cp.gather(vae.encode(cp.split(video, vae.time_compression), cache=cp).mode())
    """

    def __init__(self, group=None):  # None: the default group, all ranks
        self.group, self.rank, self.world = group, dist.get_rank(group), dist.get_world_size(group)

    def starts_video(self, conv):  # only rank 0's piece holds frame 0
        return self.rank == 0

    def front(self, conv, first):  # the frames before this rank's piece: rank r - 1's tail of the same conv
        if torch.is_grad_enabled():
            raise ValueError("context-parallel encode/decode runs under torch.no_grad(): send and recv carry no "
                             "gradient")
        if self.rank == 0:
            return first
        front = first.new_empty(first.shape[:2] + (conv.keep,) + first.shape[3:])
        dist.recv(front, group_src=self.rank - 1, group=self.group)
        return front

    def keep(self, conv, tail):  # after the recv: a piece shorter than `keep` hands on received frames
        if self.rank < self.world - 1:
            dist.send(tail.contiguous(), group_dst=self.rank + 1, group=self.group)

    def split(self, x, tc):
        """This rank's piece of x (B, C, 1 + tc*k, H, W), cut on latent frames as chunked encode cuts: rank 0 gets
        1 + tc*k_0 frames, rank r > 0 tc*k_r, k_r >= 1. tc: vae.time_compression for videos, 1 for latents."""
        k, world = (x.shape[2] - 1) // tc, self.world
        if (x.shape[2] - 1) % tc or k < world - 1:
            raise ValueError(f"cannot cut {x.shape[2]} frames into 1 + {tc}k_0, {tc}k_1, ... frames with k_r >= 1 "
                             f"for {world} ranks")
        # k as even as it goes; rank 0 holds frame 0 on top of its share, so it gets the smaller one
        ks = [k // world + (r >= world - k % world) for r in range(world)]
        start = 0 if self.rank == 0 else 1 + tc * sum(ks[:self.rank])
        return x[:, :, start:1 + tc * sum(ks[:self.rank + 1])]

    def gather(self, piece):
        """Every rank's piece, joined in time. all_gather wants one shape: gather the lengths, pad, trim."""
        sizes = [torch.zeros(1, dtype=torch.long, device=piece.device) for _ in range(self.world)]
        dist.all_gather(sizes, torch.tensor([piece.shape[2]], device=piece.device), group=self.group)
        sizes = [int(n) for n in sizes]
        padded = F.pad(piece, (0, 0, 0, 0, 0, max(sizes) - piece.shape[2])).contiguous()
        pieces = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(pieces, padded, group=self.group)
        return torch.cat([p[:, :, :n] for p, n in zip(pieces, sizes)], dim=2)


# ----------------------------------------------------------------------------- demo
if __name__ == "__main__":
    import copy

    vae_lib = importlib.import_module("01_vae")
    rank, world, _ = setup()
    if world < 2:
        raise SystemExit("run me with torchrun --standalone --nproc_per_node=2 06_parallel.py")

    def report(mode, gap, holds):
        rows = gather_objects(holds)
        if rank == 0:
            print(f"{mode}: max |difference| to one process {gap:.1e}; per rank " + " / ".join(rows))

    torch.manual_seed(0)  # the same model and data on every rank: each rank also computes the one-process answer
    kwargs = dict(in_channels=4, dim=128, depth=4, heads=4, vocab_size=64, max_text_len=8, text_depth=1)
    model = dit.DiT(**kwargs)
    with torch.no_grad():  # undo adaLN-Zero, or the zero gates would leave most gradients exactly 0
        for p in model.parameters():
            if not p.any():
                p.normal_(std=0.1)
    x, t = torch.randn(8, 4, 4, 8, 8), torch.rand(8) * 1000
    ids, mask = torch.randint(2, 64, (8, 8)), torch.ones(8, 8, dtype=torch.bool)

    def train_step(m, part):  # one AdamW step of model m (wrapped or not) on the samples `part`
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
        m(x[part], t[part], ids[part], mask[part]).square().mean().backward()
        opt.step()
        return opt

    def gap_to(state):
        return max((state[k] - v).abs().max().item() for k, v in alone.items())

    single = copy.deepcopy(model)
    train_step(single, slice(None))  # one process, the whole batch
    alone = single.state_dict()
    mine = slice(rank * 8 // world, (rank + 1) * 8 // world)

    def state_mib(m):  # weights, gradients and AdamW's two moments that this rank holds, fp32
        return f"{4 * 4 * sum(getattr(p, 'to_local', lambda: p)().numel() for p in m.parameters()) / 2 ** 20:.1f} MiB"

    replica = copy.deepcopy(model)
    train_step(data_parallel(replica), mine)  # DDP averages the ranks' gradients before the step
    report("1. DDP, each rank half the batch", gap_to(replica.state_dict()), f"model state {state_mib(replica)}")

    sharded = shard(copy.deepcopy(model))
    whole, _ = whole_state(sharded, train_step(sharded, mine))
    report("2. FSDP2, each rank half the batch", gap_to(whole) if rank == 0 else 0.0,
           f"model state {state_mib(sharded)}")

    with torch.no_grad():
        reference = model(x, t, ids, mask)
        split = copy.deepcopy(model)
        split.parallel = Ulysses(dist.group.WORLD)
        report("3. Ulysses, the DiT's 64 video tokens split", (split(x, t, ids, mask) - reference).abs().max().item(),
               f"{64 // world} tokens in the blocks")

        # tiny.yaml's VAE on a video 8x its training clips: each rank holds about 1/W of the frames, and of the memory
        vae = vae_lib.CausalVAE(channels=(64, 128), latent_channels=16, patch=4, time_compression=2).eval()
        video, cp = torch.rand(1, 1, 65, 64, 64) * 2 - 1, ContextParallel()
        piece = cp.split(video, vae.time_compression)
        z = cp.gather(vae.encode(piece, cache=cp).mode())
        whole = peak_mib(lambda: vae.decode(vae.encode(video).mode()), torch.device("cpu"))
        mine = peak_mib(lambda: vae.decode(vae.encode(piece, cache=cp).mode(), cache=cp), torch.device("cpu"))
        report("4. context-parallel VAE, a 65-frame video", (z - vae.encode(video).mode()).abs().max().item(),
               f"{piece.shape[2]} frames, encode + decode {mine:.0f} MiB (one process: {whole:.0f} MiB)")
    # DDP's hooks, FSDP's mesh and Ulysses hold the gloo group: a group first freed while the interpreter shuts
    # down can abort the process (1 exit in 4 here), so free them, and their reference cycles, while it runs
    del replica, sharded, split
    gc.collect()
    dist.destroy_process_group()
