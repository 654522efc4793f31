"""Text encoder + transformer: the denoisers of CogVideoX (Yang et al. 2024) and HunyuanVideo (Kong et al. 2024),
at toy size.

The latent video (B, C, T, H, W) is cut into 2x2 patches (1 or 2 latent frames deep), one token each, and
the caption is encoded by a small transformer trained from scratch (CogVideoX uses a frozen T5-XXL,
HunyuanVideo a multimodal LLM). Both go into one sequence [text; video] that full 3D attention mixes, in
one of two architectures (arch=):
- "cogvideox", expert blocks: text and video tokens share every weight except the adaLN modulation, where
  each modality gets its own shift/scale/gate from the conditioning vector.
- "hunyuan": dual-stream blocks, where text and video have all their own weights and meet only in the
  joint attention, then single-stream blocks over the joined sequence, with attention and MLP side by side
  (FLUX's design); the caption is first refined by a small transformer conditioned on the timestep.
The conditioning vector is the timestep plus a pooled caption (HunyuanVideo's idea, in both), and optionally
a guidance scale (HunyuanVideo's distilled model). 3D RoPE tells video tokens where they are in (t, h, w);
qk-norm keeps the attention logits bounded.

For later files: `attention="factorized"` (spatial then temporal attention, the design CogVideoX argues
against), `history=` and `causal=True` for Pyramid Flow's autoregressive temporal pyramid (05), activation
checkpointing, and `sp_group=` for Ulysses sequence parallelism (ulysses_attention) across processes.

    python 02_dit.py [--arch hunyuan]   # overfits 8 captioned random latents with a flow-matching loss, prints
                                        # the loss curve, samples them back -> runs/demo/dit_samples.png
"""
import argparse
import math
import os
import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from PIL import Image
from torch.utils.checkpoint import checkpoint


def modulate(x, shift, scale):
    return x * (1 + scale) + shift


def timestep_embedding(t, dim=256, max_period=10000):
    """Sinusoidal features of t (B,) on the 0..1000 scale, as for Transformer positions -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]                                 # (B, dim/2)
    return torch.cat([args.cos(), args.sin()], dim=-1)


def modulation(dim, n):
    """Linear(SiLU(emb)) -> n D-vectors (shifts, scales, gates), zero-initialised: adaLN-Zero (DiT), so every
    gate starts at 0 and every block as the identity."""
    linear = nn.Linear(dim, n * dim)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    return nn.Sequential(nn.SiLU(), linear)


def mlp(dim, ratio):
    # exact (erf) GELU, not CogVideoX's tanh approximation: in bf16 on a CPU its kernel is 2x faster
    return nn.Sequential(nn.Linear(dim, ratio * dim), nn.GELU(), nn.Linear(ratio * dim, dim))


def patchify(x, p, pt):
    """Latents (B, C, T, H, W) -> tokens (B, T/pt * H/p * W/p, C*pt*p*p) in (t, h, w) order."""
    T, H, W = x.shape[2:]
    if T % pt or H % p or W % p:
        raise ValueError(f"latent (T, H, W) = {(T, H, W)} is not divisible by the patch (pt, p, p) = {(pt, p, p)}")
    return rearrange(x, "b c (t pt) (h ph) (w pw) -> b (t h w) (c pt ph pw)", pt=pt, ph=p, pw=p)


def unpatchify(tokens, grid, p, pt):
    """Tokens (B, T'*H'*W', C*pt*p*p) on the token grid (T', H', W') -> latents (B, C, T'*pt, H'*p, W'*p)."""
    t, h, w = grid
    return rearrange(tokens, "b (t h w) (c pt ph pw) -> b c (t pt) (h ph) (w pw)", t=t, h=h, w=w, pt=pt, ph=p, pw=p)


class RoPE3D(nn.Module):
    """3D rotary position embedding (RoFormer, Su et al. 2021): of each head's head_dim/2 channel pairs, some
    rotate with the frame t, some with the row h, the rest with the column w. split="cogvideox" (CogVideoX
    5B): 1/4, 3/8, 3/8. split="hunyuan": HunyuanVideo's 16:56:56 channels of 128, scaled as 1/8 of the pairs
    for t and the rest halved between h and w, h taking an odd one: 4:14:14 at head_dim 32, 2:8:6 at 16.
    Rotating q and k by their own positions makes q.k depend only on the offset between them. Positions
    are floats, so a coarser frame can be laid onto the current grid (frame_positions)."""

    def __init__(self, head_dim, theta=10000.0, split="cogvideox"):
        super().__init__()
        if head_dim % 16:
            raise ValueError(f"3D RoPE splits head_dim into t, h, w parts of whole channel pairs, so it must be a "
                             f"multiple of 16, not {head_dim}")
        pairs = head_dim // 2
        t = {"cogvideox": pairs // 4, "hunyuan": pairs // 8}[split]
        dims = (2 * t, 2 * ((pairs - t + 1) // 2), 2 * ((pairs - t) // 2))     # channels for t, h, w
        freqs = torch.cat([theta ** (-torch.arange(0, d, 2) / d) for d in dims])      # (head_dim/2,)
        axis = torch.repeat_interleave(torch.arange(3), torch.tensor(dims) // 2)      # pair -> 0 (t), 1 (h), 2 (w)
        self.register_buffer("freqs", freqs, persistent=False)
        self.register_buffer("axis", axis, persistent=False)

    def forward(self, pos):
        """pos (N, 3) float (t, h, w) -> rotation angles (N, head_dim/2)."""
        return pos[:, self.axis] * self.freqs


def apply_rope(x, angles):
    """Rotate each channel pair (x_2i, x_2i+1) of x (..., N, head_dim) by angles (N, head_dim/2): as a complex
    number x_2i + i x_2i+1, the rotation is one multiplication by e^(i angle)."""
    # torch has no bf16 complex type, so the rotation runs in fp32
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))         # (..., N, head_dim/2) complex
    rotated = pairs * torch.polar(torch.ones_like(angles), angles)
    return torch.view_as_real(rotated).flatten(-2).type_as(x)


def frame_positions(t, rows, cols, grid_rows, grid_cols, device=None):
    """RoPE positions (rows*cols, 3) of one latent frame's tokens at temporal position t. A frame coarser than
    the current grid is stretched onto it, i -> (i + 0.5) * grid_rows / rows - 0.5 (Pyramid Flow, Flux
    variant), so each token sits at the centre of the region it covers; on the grid itself i -> i."""
    h = (torch.arange(rows, device=device) + 0.5) * (grid_rows / rows) - 0.5
    w = (torch.arange(cols, device=device) + 0.5) * (grid_cols / cols) - 0.5
    h, w = torch.meshgrid(h, w, indexing="ij")
    return torch.stack([torch.full_like(h, t), h, w], dim=-1).flatten(0, 1)


def block_causal_mask(n_text, frame_tokens, device=None):
    """Pyramid Flow's block-causal mask (S, S) bool, True where query q may attend key k: iff
    frame(q) >= frame(k), with the n_text caption tokens as frame 0 and video frame f (frame_tokens[f]
    tokens) as frame f + 1. So the caption sees only itself and no frame sees a later one."""
    sizes = torch.tensor([n_text, *frame_tokens], device=device)
    frame = torch.repeat_interleave(torch.arange(len(sizes), device=device), sizes)   # (S,)
    return frame[:, None] >= frame[None, :]


def attention(q, k, v, attn_mask=None):
    """softmax(q k^T / sqrt(head_dim)) v: each query attends to the keys where attn_mask is True.
    q, k, v (B, heads, S, head_dim); attn_mask bool, broadcastable to (B, heads, S, S), e.g. (B, 1, 1, S).
    GPUs run PyTorch's fused kernel (flash attention, which never stores the S x S scores). On a CPU at our
    ~100 tokens this written-out form is faster than any of PyTorch's kernels (docs/speed.md), and baddbmm
    adds the mask, as a bias of -inf (weight 0 after the softmax), inside the score matmul."""
    if q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    B, heads, _, head_dim = q.shape
    keep = torch.ones(1, 1, 1, 1, dtype=torch.bool, device=q.device) if attn_mask is None else attn_mask
    # a query that may see no key at all would get a softmax of NaNs: the masks here always leave it one
    bias = torch.where(keep, 0.0, float("-inf")).to(q.dtype)
    bias = bias.expand(B, heads, -1, -1).flatten(0, 1)                      # (B*heads, S or 1, S or 1)
    scores = torch.baddbmm(bias, q.flatten(0, 1), k.flatten(0, 1).transpose(1, 2), alpha=head_dim ** -0.5)
    return (scores.softmax(-1) @ v.flatten(0, 1)).unflatten(0, (B, heads))  # (B, heads, S, head_dim)


def factorized_attention(q, k, v, attn_mask, n_text, frames, axis):
    """Attention within groups of video tokens instead of over the whole sequence: axis="space" groups them
    by frame, axis="time" by (h, w) position. A video query attends to the caption and its own group; a
    caption query attends to the caption only, so the caption is updated once, not once per group.
    q, k, v: (B, heads, S, head_dim), n_text text tokens then video in (t, h, w) order; attn_mask
    (B, 1, 1, S) hides padded text keys. G groups of n tokens cost G * n^2 scores instead of S^2."""
    B, n = q.shape[0], (q.shape[2] - n_text) // frames                      # n tokens per frame
    G = frames if axis == "space" else n                                    # number of groups

    def group(z):  # video part (B, heads, frames*n, head_dim) -> (B*G, heads, group size, head_dim)
        z = z[:, :, n_text:].unflatten(2, (frames, n))                      # (B, heads, frames, n, head_dim)
        return z.movedim(2 if axis == "space" else 3, 1).flatten(0, 1)

    text_keep = attn_mask[..., :n_text]                                     # (B, 1, 1, L)
    text = attention(q[:, :, :n_text], k[:, :, :n_text], v[:, :, :n_text], text_keep)
    k_g = torch.cat([k[:, :, :n_text].repeat_interleave(G, 0), group(k)], dim=2)  # (B*G, heads, L + group, hd)
    v_g = torch.cat([v[:, :, :n_text].repeat_interleave(G, 0), group(v)], dim=2)
    keep = F.pad(text_keep, (0, k_g.shape[2] - n_text), value=True).repeat_interleave(G, 0)  # (B*G, 1, 1, L + group)
    video = attention(group(q), k_g, v_g, keep)                             # (B*G, heads, group size, hd)
    video = video.unflatten(0, (B, G)).movedim(1, 2 if axis == "space" else 3)  # (B, heads, frames, n, hd)
    return torch.cat([text, video.flatten(2, 3)], dim=2)                    # (B, heads, S, head_dim)


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


def ulysses_attention(q, k, v, attn_mask, group, n_text=0):
    """Ulysses sequence parallelism (DeepSpeed-Ulysses; HunyuanVideo, Pyramid Flow): full attention while each of
    the W ranks of `group` holds 1/W of the video tokens. q, k, v (B, heads, n_text + N/W, head_dim): the caption,
    which every rank holds whole (it is short, and every video query needs all of it), then this rank's N/W
    video tokens. An all-to-all trades sequence shards for head shards, all N video tokens of heads/W heads;
    their caption part is cut from the local copy, which sending would only duplicate. After attention, the
    reverse all-to-all gives back this rank's video tokens with all heads, and an all-gather over heads the
    whole caption output, which keeps the caption identical on every rank. attn_mask: the full sequence's."""
    world, rank, heads = dist.get_world_size(group), dist.get_rank(group), q.shape[1]
    if heads % world:
        raise ValueError(f"Ulysses attention splits the {heads} heads over the {world} ranks of the group: "
                         f"heads must be divisible by the world size")
    mine = slice(rank * heads // world, (rank + 1) * heads // world)

    def full_sequence(z):  # (B, heads, L + N/W, hd) -> (B, heads/W, L + N, hd)
        return torch.cat([z[:, mine, :n_text], AllToAll.apply(z[:, :, n_text:], 1, 2, group)], dim=2)

    out = attention(full_sequence(q), full_sequence(k), full_sequence(v), attn_mask)  # (B, heads/W, L + N, hd)
    text = all_gather(out[:, :, :n_text], 1, group)                         # (B, heads, L, hd)
    return torch.cat([text, AllToAll.apply(out[:, :, n_text:], 2, 1, group)], dim=2)  # (B, heads, L + N/W, hd)


def attend(q, k, v, attn_mask=None, rope=None, n_text=0, frames=1, group=None, axis="full"):
    """Rotate q and k (B, heads, S, head_dim) by rope, attend, merge the heads -> (B, S, D). The arguments are
    Attention's, which HunyuanVideo's blocks share with it."""
    if rope is not None:
        q, k = apply_rope(q, rope), apply_rope(k, rope)
    if group is not None:
        out = ulysses_attention(q, k, v, attn_mask, group, n_text)
    elif axis == "full":
        out = attention(q, k, v, attn_mask)                                 # (B, heads, S, head_dim)
    else:
        out = factorized_attention(q, k, v, attn_mask, n_text, frames, axis)
    return out.transpose(1, 2).flatten(2)


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm in fp32, as HunyuanVideo's: under bf16 autocast q and k arrive in bf16, and with fp32 weights
    torch's fused kernel would fall back to a slower one (with a warning)."""

    def forward(self, x):
        return super().forward(x.float()).type_as(x)


class Attention(nn.Module):
    """Multi-head self-attention with qk-norm over head_dim on queries and keys (LayerNorm in CogVideoX, RMSNorm
    in HunyuanVideo), which bounds the logits q.k / sqrt(head_dim) and keeps low-precision training stable.
    axis="full" attends over the whole sequence; "space" or "time" is factorized (see factorized_attention)."""

    def __init__(self, dim, heads, axis="full", qk_norm=nn.LayerNorm):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.axis = heads, axis
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = qk_norm(dim // heads, eps=1e-6)
        self.k_norm = qk_norm(dim // heads, eps=1e-6)
        self.proj = nn.Linear(dim, dim)

    def heads_of(self, x):
        """x (B, S, D) -> q, k, v (B, heads, S, head_dim), q and k normalized."""
        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4).unbind(0)
        return self.q_norm(q), self.k_norm(k), v

    def forward(self, x, attn_mask=None, rope=None, n_text=0, frames=1, group=None):
        """x (B, S, D); attn_mask bool (B, 1, S or 1, S), True = may attend; rope angles (S, head_dim/2).
        Factorized attention also needs n_text (the caption comes first) and the number of video frames.
        group: x holds the caption and this rank's video shard, rope its angles, attn_mask the full sequence's
        (ulysses_attention, full attention only)."""
        return self.proj(attend(*self.heads_of(x), attn_mask, rope, n_text, frames, group, self.axis))  # (B, S, D)


class ExpertBlock(nn.Module):
    """CogVideoX's expert transformer block over the sequence [text; video]. The two modalities share the
    norms, QKV, attention and MLP; only the adaLN modulation is per expert: one Linear(SiLU(emb)) gives
    12 D-vectors, shift/scale/gate for attention and for the MLP, once for text and once for video tokens,
    whose feature statistics differ. Each update is x += gate * f(modulate(LN(x), shift, scale))."""

    def __init__(self, dim, heads, mlp_ratio=4, axis="full"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, axis)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = mlp(dim, mlp_ratio)
        self.adaLN = modulation(dim, 12)

    def forward(self, text, video, emb, rope=None, attn_mask=None, frames=1, sp_group=None):
        """text (B, L, D), video (B, N, D), emb (B, D) timestep embedding -> updated (text, video).
        rope, attn_mask, frames and sp_group are for the joint sequence [text; video] (see Attention)."""
        text_mod, video_mod = self.adaLN(emb)[:, None].chunk(2, dim=-1)      # (B, 1, 6D) each
        txt_shift_a, txt_scale_a, txt_gate_a, txt_shift_m, txt_scale_m, txt_gate_m = text_mod.chunk(6, dim=-1)
        vid_shift_a, vid_scale_a, vid_gate_a, vid_shift_m, vid_scale_m, vid_gate_m = video_mod.chunk(6, dim=-1)
        L = text.shape[1]
        h = torch.cat([modulate(self.norm1(text), txt_shift_a, txt_scale_a),
                       modulate(self.norm1(video), vid_shift_a, vid_scale_a)], dim=1)   # (B, L + N, D)
        h = self.attn(h, attn_mask, rope, L, frames, sp_group)
        text, video = text + txt_gate_a * h[:, :L], video + vid_gate_a * h[:, L:]
        text = text + txt_gate_m * self.mlp(modulate(self.norm2(text), txt_shift_m, txt_scale_m))
        video = video + vid_gate_m * self.mlp(modulate(self.norm2(video), vid_shift_m, vid_scale_m))
        return text, video


class DualStreamBlock(nn.Module):
    """HunyuanVideo's dual-stream block (SD3's MM-DiT): text and video each have their own adaLN modulation, QKV,
    qk-norm, output projection and MLP (1.5x an expert block's weights), and meet only in one attention over
    [text; video] (HunyuanVideo's order is [video; text]: attention does not care, the masks and Ulysses here
    want the caption first). Each update is x += gate * f(modulate(LN(x), shift, scale)), as in ExpertBlock."""

    def __init__(self, dim, heads, mlp_ratio=4):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)  # no weights (adaLN's): both streams'
        self.text, self.video = (nn.ModuleDict(dict(attn=Attention(dim, heads, qk_norm=RMSNorm),
                                                    mlp=mlp(dim, mlp_ratio), adaLN=modulation(dim, 6)))
                                 for _ in range(2))

    def forward(self, text, video, emb, rope=None, attn_mask=None, frames=1, sp_group=None):
        """As ExpertBlock's; frames is unused (factorized attention is CogVideoX's ablation)."""
        txt_shift_a, txt_scale_a, txt_gate_a, txt_shift_m, txt_scale_m, txt_gate_m = \
            self.text.adaLN(emb)[:, None].chunk(6, dim=-1)                  # (B, 1, D) each
        vid_shift_a, vid_scale_a, vid_gate_a, vid_shift_m, vid_scale_m, vid_gate_m = \
            self.video.adaLN(emb)[:, None].chunk(6, dim=-1)
        txt_qkv = self.text.attn.heads_of(modulate(self.norm(text), txt_shift_a, txt_scale_a))
        vid_qkv = self.video.attn.heads_of(modulate(self.norm(video), vid_shift_a, vid_scale_a))
        q, k, v = (torch.cat(pair, dim=2) for pair in zip(txt_qkv, vid_qkv))  # (B, heads, L + N, head_dim)
        L = text.shape[1]
        h = attend(q, k, v, attn_mask, rope, L, group=sp_group)             # (B, L + N, D)
        text = text + txt_gate_a * self.text.attn.proj(h[:, :L])
        video = video + vid_gate_a * self.video.attn.proj(h[:, L:])
        text = text + txt_gate_m * self.text.mlp(modulate(self.norm(text), txt_shift_m, txt_scale_m))
        video = video + vid_gate_m * self.video.mlp(modulate(self.norm(video), vid_shift_m, vid_scale_m))
        return text, video


class SingleStreamBlock(nn.Module):
    """HunyuanVideo's single-stream block (FLUX; the parallel layers of ViT-22B): one set of weights for the
    joined sequence x = [text; video], attention and MLP side by side on the same modulated input. So one
    Linear gives q, k, v and the MLP's hidden layer h, and one maps [attn(q, k, v); GELU(h)] back:
    x += gate * W2 [attn; GELU(h)], with 0.6x an expert block's weights."""

    def __init__(self, dim, heads, mlp_ratio=4):
        super().__init__()
        self.heads, self.widths = heads, (3 * dim, mlp_ratio * dim)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear1 = nn.Linear(dim, (3 + mlp_ratio) * dim)                # QKV and the MLP's first layer
        self.q_norm = RMSNorm(dim // heads, eps=1e-6)
        self.k_norm = RMSNorm(dim // heads, eps=1e-6)
        self.linear2 = nn.Linear((1 + mlp_ratio) * dim, dim)                # attention's and the MLP's output
        self.adaLN = modulation(dim, 3)

    def forward(self, text, video, emb, rope=None, attn_mask=None, frames=1, sp_group=None):
        """As ExpertBlock's, so that both archs run one loop of blocks: text and video are joined here and split
        again after the block (a copy of x per block, small beside linear1)."""
        L = text.shape[1]
        x = torch.cat([text, video], dim=1)                                 # (B, L + N, D)
        shift, scale, gate = self.adaLN(emb)[:, None].chunk(3, dim=-1)      # (B, 1, D) each
        qkv, h = self.linear1(modulate(self.norm(x), shift, scale)).split(self.widths, dim=-1)
        q, k, v = qkv.unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4).unbind(0)  # (B, heads, L + N, hd)
        attn = attend(self.q_norm(q), self.k_norm(k), v, attn_mask, rope, L, group=sp_group)  # (B, L + N, D)
        x = x + gate * self.linear2(torch.cat([attn, F.gelu(h)], dim=-1))
        return x[:, :L], x[:, L:]


class TextLayer(nn.Module):
    """Pre-LN transformer layer (GPT-2): x += Attn(LN(x)); x += MLP(LN(x))."""

    def __init__(self, dim, heads, mlp_ratio=4):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim), mlp(dim, mlp_ratio)

    def forward(self, x, attn_mask):
        x = x + self.attn(self.norm1(x), attn_mask)
        return x + self.mlp(self.norm2(x))


class RefinerLayer(TextLayer):
    """A layer of HunyuanVideo's token refiner: a TextLayer whose updates x += gate * f(LN(x)) are gated from
    emb (timestep + pooled caption), the gates zero-initialised. HunyuanVideo refines a frozen MLLM's tokens
    for the DiT; here the refiner lets the caption tokens depend on the noise level."""

    def __init__(self, dim, heads, mlp_ratio=4):
        super().__init__(dim, heads, mlp_ratio)
        self.adaLN = modulation(dim, 2)

    def forward(self, x, attn_mask, emb):
        gate_a, gate_m = self.adaLN(emb)[:, None].chunk(2, dim=-1)          # (B, 1, D) each
        x = x + gate_a * self.attn(self.norm1(x), attn_mask)
        return x + gate_m * self.mlp(self.norm2(x))


class TextEncoder(nn.Module):
    """Caption encoder trained jointly with the DiT from scratch, in place of CogVideoX's frozen T5-XXL: token
    embedding + learned positions + pre-LN layers. Padded tokens are never attended to, so they cannot
    change the output at any real token."""

    def __init__(self, vocab_size, dim, depth, heads, max_len):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, dim)
        self.pos = nn.Parameter(torch.zeros(max_len, dim))
        nn.init.normal_(self.tok.weight, std=0.02)
        nn.init.normal_(self.pos, std=0.02)
        self.layers = nn.ModuleList(TextLayer(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids, mask):
        """ids (B, L) long, mask (B, L) bool True on real tokens -> (B, L, dim)."""
        if ids.dim() != 2 or ids.shape != mask.shape or ids.shape[1] > len(self.pos):
            raise ValueError(f"ids and mask must both be (B, L <= {len(self.pos)}), "
                             f"got {tuple(ids.shape)} and {tuple(mask.shape)}")
        if not mask.any(dim=1).all():
            raise ValueError("a caption mask is all False, so its queries have nothing to attend to; "
                             "the null caption is all PAD with mask True at position 0")
        x = self.tok(ids) + self.pos[:ids.shape[1]]                         # (B, L, dim)
        keep = mask[:, None, None, :]                                       # (B, 1, 1, L): keys that may be attended
        for layer in self.layers:
            x = layer(x, keep)
        return self.norm(x)


class DiT(nn.Module):
    """Latent video denoiser: pred = model(x_t, t, ids, mask) with pred of x_t's shape (the objective, 03-05,
    decides what pred means: v, velocity or noise). arch="cogvideox": depth expert blocks; attention="full" is
    CogVideoX's 3D attention over [text; video], "factorized" alternates spatial and temporal blocks (see
    factorized_attention). arch="hunyuan": the token refiner, then double_depth dual-stream and
    depth - double_depth single-stream blocks (full attention only). guidance_embed: forward takes the
    guidance scale too (HunyuanVideo's guidance-distilled model)."""

    def __init__(self, in_channels, dim, depth, heads, vocab_size, max_text_len, text_depth, patch=2, patch_t=1,
                 attention="full", mlp_ratio=4, checkpointing=False, image_channels=0, arch="cogvideox",
                 double_depth=None, guidance_embed=False):
        super().__init__()
        if attention not in ("full", "factorized"):
            raise ValueError(f"attention must be 'full' or 'factorized', got {attention!r}")
        if arch not in ("cogvideox", "hunyuan"):
            raise ValueError(f"arch must be 'cogvideox' or 'hunyuan', got {arch!r}")
        if arch == "hunyuan" and attention != "full":
            raise ValueError("attention='factorized' is CogVideoX's ablation: it needs arch='cogvideox'")
        if arch == "cogvideox" and double_depth is not None:
            raise ValueError("double_depth counts HunyuanVideo's dual-stream blocks: it needs arch='hunyuan'")
        # HunyuanVideo has 20 dual-stream then 40 single-stream blocks; by default the same 1:2 split, at least
        # one dual. Per block (mlp_ratio 4): expert 24 D^2 weights, dual 36, single 15, on average 22 with the
        # 1:2 split, plus 28 D^2 for the refiner: at equal dim and depth >= 6, within ~10% of CogVideoX's count
        double_depth = max(1, depth // 3) if double_depth is None else double_depth
        if arch == "hunyuan" and not 0 <= double_depth < depth:  # or the last dual block's text update is unused
            raise ValueError(f"double_depth must be in [0, depth = {depth}): at least one single-stream block "
                             f"follows the dual-stream ones, got {double_depth}")
        self.in_channels, self.patch, self.patch_t, self.arch = in_channels, patch, patch_t, arch
        self.attention, self.checkpointing, self.image_channels = attention, checkpointing, image_channels
        patch_dim = in_channels * patch_t * patch * patch
        self.text_encoder = TextEncoder(vocab_size, dim, text_depth, heads, max_text_len)
        # image_channels > 0: CogVideoX-I2V's image conditioning, the first frame's latent concatenated to x_t
        # along channels (zeros where no frame is given), so the patch embedding sees both
        self.x_embed = nn.Linear((in_channels + image_channels) * patch_t * patch * patch, dim)
        self.t_embed = nn.Sequential(nn.Linear(256, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.text_pool = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        if arch == "cogvideox":
            self.rope = RoPE3D(dim // heads)
            # factorized: spatial and temporal blocks alternate (Latte), each with exactly a full block's weights,
            # so the ablation changes only who attends to whom
            axes = ["full"] * depth if attention == "full" else [("space", "time")[i % 2] for i in range(depth)]
            self.blocks = nn.ModuleList(ExpertBlock(dim, heads, mlp_ratio, axis) for axis in axes)
            self.refiner = nn.ModuleList()
        else:
            self.rope = RoPE3D(dim // heads, theta=256.0, split="hunyuan")  # HunyuanVideo's theta
            self.blocks = nn.ModuleList([DualStreamBlock(dim, heads, mlp_ratio) for _ in range(double_depth)] +
                                        [SingleStreamBlock(dim, heads, mlp_ratio) for _ in range(depth - double_depth)])
            self.refiner = nn.ModuleList(RefinerLayer(dim, heads, mlp_ratio) for _ in range(2))  # 2, as HunyuanVideo
        self.final_norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.final_adaLN = modulation(dim, 2)
        self.final_linear = nn.Linear(dim, patch_dim)
        # adaLN-Zero (DiT): the prediction starts at exactly 0
        nn.init.zeros_(self.final_linear.weight)
        nn.init.zeros_(self.final_linear.bias)
        # HunyuanVideo's guidance distillation: the classifier-free guidance scale is an input, embedded like t
        self.g_embed = nn.Sequential(nn.Linear(256, dim), nn.SiLU(), nn.Linear(dim, dim)) if guidance_embed else None

    def forward(self, x, t, ids, mask, history=None, causal=False, sp_group=None, image=None, guidance=None):
        """x (B, C, T, H, W) latents; t (B,) timesteps on 0..1000; ids, mask (B, L) the caption.
        history: past latent frames, oldest first, each (B, C, 1, h_j, w_j) with h_j <= H, w_j <= W, put in the
        sequence [text; history; x] (Pyramid Flow's temporal pyramid); it implies causal=True, the
        block-causal mask by latent frame. Returns x's shape: the prediction at x's tokens only.
        sp_group: Ulysses sequence parallelism over this process group's W ranks. Every rank passes the same
        inputs and gets the whole prediction; in between, each runs the blocks on 1/W of the video tokens
        (the caption replicated, see ulysses_attention). Every rank then computes the same loss, and the
        mean of the ranks' gradients is the single-process gradient (what DDP's averaging does).
        image: with image_channels > 0, the latents of the first k <= T given frames (B, image_channels, k, H, W),
        zero-padded to T frames and concatenated to x (CogVideoX-I2V); None (no image) is all zeros.
        guidance: with guidance_embed, the guidance scale (B,) that the distilled model imitates (e.g. 6.0)."""
        history = list(history or [])
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be latents (B, {self.in_channels}, T, H, W), got {tuple(x.shape)}")
        B, C, T, H, W = x.shape
        if t.shape != (B,):
            raise ValueError(f"t must hold one timestep per sample, shape ({B},), got {tuple(t.shape)}")
        for j, h in enumerate(history):
            if h.dim() != 5 or h.shape[:3] != (B, C, 1) or h.shape[3] > H or h.shape[4] > W:
                raise ValueError(f"history[{j}] must be one latent frame (B={B}, C={C}, 1, h<={H}, w<={W}), "
                                 f"got {tuple(h.shape)}")
        if history and self.patch_t != 1:
            raise ValueError(f"history frames are single latent frames, so they need patch_t=1, not {self.patch_t}")
        if self.image_channels:
            if history:
                raise ValueError("image conditioning is for the flow and ddpm objectives; the pyramid's history "
                                 "already carries the given frames")
            if image is None:
                image = x.new_zeros(B, self.image_channels, 1, H, W)
            if image.dim() != 5 or image.shape[:2] != (B, self.image_channels) or image.shape[2] > T \
                    or image.shape[3:] != (H, W):
                raise ValueError(f"image must be the latents of the first frames (B={B}, {self.image_channels}, "
                                 f"k<={T}, {H}, {W}), got {tuple(image.shape)}")
            x_in = torch.cat([x, F.pad(image.to(x.dtype), (0, 0, 0, 0, 0, T - image.shape[2]))], dim=1)
        elif image is not None:
            raise ValueError("this DiT was built without image_channels: it cannot take an image")
        else:
            x_in = x
        if self.g_embed is not None and (guidance is None or guidance.shape != (B,)):
            raise ValueError(f"this DiT was built with guidance_embed: it needs guidance=, one scale per sample "
                             f"({B},), got {None if guidance is None else tuple(guidance.shape)}")
        if self.g_embed is None and guidance is not None:
            raise ValueError("this DiT was built without guidance_embed: it cannot take guidance")
        causal = causal or bool(history)
        if (causal or sp_group is not None) and self.attention != "full":
            raise ValueError("history, causal=True and sp_group need attention='full' "
                             "(factorized attention is for the CogVideoX ablation)")

        p, pt = self.patch, self.patch_t
        tokens = [patchify(h, p, 1) for h in history] + [patchify(x_in, p, pt)]  # (B, n_j, C*pt*p*p) each
        frames, rows, cols = T // pt, H // p, W // p
        # token grid of every frame in time order; frame j sits at RoPE time j, stretched onto x's grid
        grids = [(h.shape[3] // p, h.shape[4] // p) for h in history] + [(rows, cols)] * frames
        pos = torch.cat([frame_positions(j, h, w, rows, cols, x.device) for j, (h, w) in enumerate(grids)])  # (N, 3)

        text = self.text_encoder(ids, mask)                                 # (B, L, D)
        video = self.x_embed(torch.cat(tokens, dim=1))                      # (B, N, D), history then x
        # HunyuanVideo adds a pooled caption vector (CLIP-L's) to the timestep embedding: global guidance that
        # every adaLN sees, learned long before attention has found which text token names the digit
        pooled = (text * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # (B, D) mean of the real tokens
        emb = self.t_embed(timestep_embedding(t)) + self.text_pool(pooled)  # (B, D)
        for layer in self.refiner:  # hunyuan only: the caption re-read at this noise level, padding still hidden
            text = layer(text, mask[:, None, None, :], emb)
        if self.g_embed is not None:  # the scale w enters as HunyuanVideo's does, at 1000 w on the t scale
            emb = emb + self.g_embed(timestep_embedding(1000 * guidance))
        rope = F.pad(self.rope(pos), (0, 0, text.shape[1], 0))              # (S, head_dim/2): text angle 0, unrotated
        attn_mask = F.pad(mask, (0, video.shape[1]), value=True)[:, None, None, :]  # (B, 1, 1, S): padded text hidden
        if causal:
            frame_tokens = [h * w for h, w in grids]
            attn_mask = attn_mask & block_causal_mask(text.shape[1], frame_tokens, x.device)  # (B, 1, S, S)
        if sp_group is not None:  # keep this rank's consecutive 1/W of the video tokens, and their RoPE angles
            world, rank, N, L = dist.get_world_size(sp_group), dist.get_rank(sp_group), video.shape[1], text.shape[1]
            if N % world:
                raise ValueError(f"sequence parallelism splits the {N} video tokens over {world} ranks: "
                                 f"they must be divisible by the world size")
            mine = slice(rank * N // world, (rank + 1) * N // world)
            video, rope = video[:, mine], torch.cat([rope[:L], rope[L:][mine]])
        for block in self.blocks:
            if self.checkpointing and torch.is_grad_enabled():
                # keep only each block's inputs; recompute its activations in backward (memory for compute)
                text, video = checkpoint(block, text, video, emb, rope, attn_mask, frames, sp_group,
                                         use_reentrant=False)
            else:
                text, video = block(text, video, emb, rope, attn_mask, frames, sp_group)
        if sp_group is not None:  # every rank gets the whole sequence, and so returns the whole prediction
            video = all_gather(video, 1, sp_group)

        shift, scale = self.final_adaLN(emb)[:, None].chunk(2, dim=-1)      # (B, 1, D) each
        out = self.final_linear(modulate(self.final_norm(video[:, -frames * rows * cols:]), shift, scale))
        return unpatchify(out, (frames, rows, cols), p, pt)                 # (B, C, T, H, W)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Overfit 8 captioned random latents with the DiT, sample them back.")
    parser.add_argument("--arch", choices=["cogvideox", "hunyuan"], default="cogvideox")
    arch = parser.parse_args().arch
    n, C, T, H, W, L = 8, 4, 3, 8, 8, 8
    size = dict(in_channels=C, dim=128, depth=4, heads=4, vocab_size=32, max_text_len=L, text_depth=1)
    for name in ("cogvideox", "hunyuan"):  # at depth 4: 4 expert blocks; 1 dual-stream + 3 single-stream blocks
        print(f"{name} DiT: {sum(p.numel() for p in DiT(**size, arch=name).parameters()) / 1e6:.2f}M parameters"
              f"{'  <- training this one' if name == arch else ''}")
    torch.manual_seed(0)
    # 8 random "latents" (01's VAE makes real ones), each with its own random caption of 2..8 tokens
    x0 = torch.randn(n, C, T, H, W)
    mask = torch.arange(L)[None] < torch.randint(2, L + 1, (n, 1))          # (n, L)
    ids = torch.randint(2, 32, (n, L)) * mask                               # PAD (0) after each caption
    model = DiT(**size, arch=arch)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    # flow matching (04): x_s = (1 - s) x0 + s eps, regress the velocity eps - x0 at t = 1000 s
    start = time.time()
    for step in range(401):
        s = torch.rand(n)
        eps = torch.randn_like(x0)
        x_s = (1 - s[:, None, None, None, None]) * x0 + s[:, None, None, None, None] * eps
        loss = F.mse_loss(model(x_s, 1000 * s, ids, mask), eps - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0:
            print(f"step {step:3d}  loss {loss.item():.4f}  ({time.time() - start:.0f}s)")

    # Euler from noise (s = 1) to data (s = 0): caption i should bring back latent i
    model.eval()
    with torch.no_grad():
        z = torch.randn_like(x0)
        for k in range(20, 0, -1):
            z = z - model(z, torch.full((n,), 1000 * k / 20), ids, mask) / 20
    mse = torch.cdist(z.flatten(1), x0.flatten(1)) ** 2 / x0[0].numel()    # (sample, latent) mean squared error
    others = mse[~torch.eye(n, dtype=torch.bool)].mean()
    print(f"samples closest to their own caption's latent: {(mse.argmin(1) == torch.arange(n)).sum()}/{n}; "
          f"MSE to own latent {mse.diag().mean():.3f}, to the others {others:.3f}")
    # channel 0 of frame 0 of each latent, upscaled: targets above, samples below
    tiles = torch.cat([x0[:, 0, 0], z[:, 0, 0]], dim=1).clamp(-2.5, 2.5)   # (n, 2H, W)
    grid = ((tiles.permute(1, 0, 2).flatten(1) + 2.5) * 51).byte().numpy()  # (2H, n*W)
    os.makedirs("runs/demo", exist_ok=True)
    image = Image.fromarray(grid).resize((grid.shape[1] * 16, grid.shape[0] * 16), Image.NEAREST)
    image.save("runs/demo/dit_samples.png")
    print("wrote runs/demo/dit_samples.png")
