"""02_dit.py: text encoder + transformer, the denoisers of CogVideoX (Yang et al. 2024) and HunyuanVideo (Kong et
al. 2024) at toy size.

The latent video (B, C, T, H, W) is cut into 2x2 patches, one token each; a small transformer trained from scratch
encodes the caption (CogVideoX: a frozen T5-XXL; HunyuanVideo: a multimodal LLM). Full 3D attention mixes the
sequence [text; video] in one of two architectures: arch="cogvideox", expert blocks (text and video share every
weight but their adaLN modulation); arch="hunyuan", a token refiner, then dual-stream blocks (text and video with
all their own weights, meeting only in the joint attention) and single-stream ones (attention and MLP side by
side, FLUX). The conditioning vector is the timestep plus a pooled caption, and optionally a guidance scale (07).
3D RoPE places video tokens in (t, h, w); qk-norm bounds the attention logits. For later files: factorized
attention (the design CogVideoX argues against), history= and causal=True for Pyramid Flow's temporal pyramid (05),
activation checkpointing, and DiT.parallel, where 06_parallel.py splits the tokens over processes.

    python 02_dit.py [--arch hunyuan]   # overfits 8 captioned random latents, samples them back (a PNG)
"""
import argparse
import math
import os
import time

import torch
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
    """Linear(SiLU(emb)) -> n D-vectors (shifts, scales, gates), zero-initialised: DiT's adaLN-Zero, x += 0 at first."""
    linear = nn.Linear(dim, n * dim)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    return nn.Sequential(nn.SiLU(), linear)


def mlp(dim, ratio, act=nn.GELU):
    # exact (erf) GELU, not CogVideoX's tanh approximation: in bf16 on a CPU its kernel is 2x faster
    return nn.Sequential(nn.Linear(dim, ratio * dim), act(), nn.Linear(ratio * dim, dim))


def patchify(x, p, pt):
    """Latents (B, C, T, H, W) -> tokens (B, T/pt * H/p * W/p, C*pt*p*p) in (t, h, w) order."""
    T, H, W = x.shape[2:]
    if T % pt or H % p or W % p:
        raise ValueError(f"latent (T, H, W) = {(T, H, W)} is not divisible by the patch (pt, p, p) = {(pt, p, p)}")
    return rearrange(x, "b c (t pt) (h ph) (w pw) -> b (t h w) (c pt ph pw)", pt=pt, ph=p, pw=p)


class RoPE3D(nn.Module):
    """3D rotary position embedding (RoFormer, Su et al. 2021): of each head's head_dim/2 channel pairs, some rotate
    with the frame t, some with the row h, the rest with the column w: 1/4, 3/8, 3/8 (CogVideoX 5B), or 1/8 for t and
    the rest halved, h taking an odd one (HunyuanVideo's 16:56:56 of 128; 2:8:6 at 16). q.k then depends on the
    offset alone. Positions are floats, so a coarser frame can be laid onto the grid (frame_positions)."""

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

    def forward(self, pos):  # (N, 3) float (t, h, w) -> rotation angles (N, head_dim/2)
        return pos[:, self.axis] * self.freqs


def apply_rope(x, angles):
    """Rotate each channel pair (x_2i, x_2i+1) of x (..., N, head_dim) by angles (N, head_dim/2): as a complex number
    x_2i + i x_2i+1, one multiplication by e^(i angle). In fp32: torch has no bf16 complex type."""
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))         # (..., N, head_dim/2) complex
    rotated = pairs * torch.polar(torch.ones_like(angles), angles)
    return torch.view_as_real(rotated).flatten(-2).type_as(x)


def frame_positions(t, rows, cols, grid_rows, grid_cols, device=None):
    """RoPE positions (rows*cols, 3) of a latent frame's tokens at time t; a coarser frame stretched onto the grid,
    i -> (i + 0.5) grid_rows / rows - 0.5 (Pyramid Flow): each token at the centre of what it covers."""
    h = (torch.arange(rows, device=device) + 0.5) * (grid_rows / rows) - 0.5
    w = (torch.arange(cols, device=device) + 0.5) * (grid_cols / cols) - 0.5
    h, w = torch.meshgrid(h, w, indexing="ij")
    return torch.stack([torch.full_like(h, t), h, w], dim=-1).flatten(0, 1)


def block_causal_mask(n_text, frame_tokens, device=None):
    """Pyramid Flow's block-causal mask (S, S), True where query q may attend key k: iff frame(q) >= frame(k), the
    caption as frame 0 and video frame f (frame_tokens[f] tokens) as f + 1. No frame sees a later one."""
    sizes = torch.tensor([n_text, *frame_tokens], device=device)
    frame = torch.repeat_interleave(torch.arange(len(sizes), device=device), sizes)   # (S,)
    return frame[:, None] >= frame[None, :]


def attention(q, k, v, attn_mask=None):
    """softmax(q k^T / sqrt(head_dim)) v over the keys where attn_mask (broadcast to (B, heads, S, S)) is True. GPUs
    run PyTorch's fused kernel; on a CPU at ~100 tokens this written-out one, with the mask a -inf bias added inside
    the score matmul, trains tiny.yaml's DiT 3x faster than F.scaled_dot_product_attention (bench.py speed)."""
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
    """Attention within groups of video tokens: axis="space" groups them by frame, "time" by (h, w) position. A video
    query attends to the caption and its group, the caption to itself. q, k, v (B, heads, S, head_dim), text then
    video in (t, h, w) order; attn_mask (B, 1, 1, S). G groups of n tokens cost G n^2 scores instead of S^2."""
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


def attend(q, k, v, attn_mask=None, rope=None, n_text=0, frames=1, axis="full", parallel=None):
    """Rotate q, k (B, heads, S, head_dim) by rope, attend, merge heads -> (B, S, D); parallel: 06's Ulysses."""
    if rope is not None:
        q, k = apply_rope(q, rope), apply_rope(k, rope)
    if parallel is not None:
        out = parallel.attention(q, k, v, attn_mask, n_text)
    elif axis == "full":
        out = attention(q, k, v, attn_mask)                                 # (B, heads, S, head_dim)
    else:
        out = factorized_attention(q, k, v, attn_mask, n_text, frames, axis)
    return out.transpose(1, 2).flatten(2)


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm in fp32, as HunyuanVideo's (q, k arrive in bf16 under autocast; fp32 weights want fp32 inputs)."""

    def forward(self, x):
        return super().forward(x.float()).type_as(x)


class Attention(nn.Module):
    """Multi-head self-attention with qk-norm on queries and keys (LayerNorm in CogVideoX, RMSNorm in HunyuanVideo),
    which bounds the logits q.k / sqrt(head_dim) in low precision; axis="space" or "time" is factorized."""

    def __init__(self, dim, heads, axis="full", qk_norm=nn.LayerNorm):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.axis = heads, axis
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm, self.k_norm = (qk_norm(dim // heads, eps=1e-6) if qk_norm else nn.Identity() for _ in range(2))
        self.proj = nn.Linear(dim, dim)

    def heads_of(self, x):  # (B, S, D) -> q, k, v (B, heads, S, head_dim), q and k normalized
        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4).unbind(0)
        return self.q_norm(q), self.k_norm(k), v

    def forward(self, x, attn_mask=None, rope=None, n_text=0, frames=1, parallel=None):
        """x (B, S, D); attn_mask (B, 1, S or 1, S), True = may attend; rope (S, head_dim/2); n_text, frames for
        factorized attention."""
        return self.proj(attend(*self.heads_of(x), attn_mask, rope, n_text, frames, self.axis, parallel))  # (B, S, D)


class ExpertBlock(nn.Module):
    """CogVideoX's expert transformer block over [text; video]: norms, QKV, attention and MLP shared, the adaLN
    modulation per expert, 12 D-vectors from one Linear(SiLU(emb)): shift/scale/gate for attention and MLP, for text
    and for video, whose statistics differ. Each update is x += gate * f(modulate(LN(x), shift, scale))."""

    def __init__(self, dim, heads, mlp_ratio=4, axis="full"):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads, axis)
        self.norm2, self.mlp, self.adaLN = nn.LayerNorm(dim), mlp(dim, mlp_ratio), modulation(dim, 12)

    def forward(self, text, video, emb, rope=None, attn_mask=None, frames=1, parallel=None):
        """text (B, L, D), video (B, N, D), emb (B, D) -> updated (text, video); the rest as Attention's."""
        text_mod, video_mod = self.adaLN(emb)[:, None].chunk(2, dim=-1)      # (B, 1, 6D) each
        txt_shift_a, txt_scale_a, txt_gate_a, txt_shift_m, txt_scale_m, txt_gate_m = text_mod.chunk(6, dim=-1)
        vid_shift_a, vid_scale_a, vid_gate_a, vid_shift_m, vid_scale_m, vid_gate_m = video_mod.chunk(6, dim=-1)
        L = text.shape[1]
        h = torch.cat([modulate(self.norm1(text), txt_shift_a, txt_scale_a),
                       modulate(self.norm1(video), vid_shift_a, vid_scale_a)], dim=1)   # (B, L + N, D)
        h = self.attn(h, attn_mask, rope, L, frames, parallel)
        text, video = text + txt_gate_a * h[:, :L], video + vid_gate_a * h[:, L:]
        text = text + txt_gate_m * self.mlp(modulate(self.norm2(text), txt_shift_m, txt_scale_m))
        video = video + vid_gate_m * self.mlp(modulate(self.norm2(video), vid_shift_m, vid_scale_m))
        return text, video


class DualStreamBlock(nn.Module):
    """HunyuanVideo's dual-stream block (SD3's MM-DiT): text and video each have their own modulation, QKV, qk-norm,
    projection and MLP (1.5x an expert block's weights), meeting only in one attention over [text; video] (theirs
    is [video; text]: attention does not care, the masks and Ulysses here want the caption first)."""

    def __init__(self, dim, heads, mlp_ratio=4):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)  # no weights (adaLN's): both streams'
        self.text, self.video = (nn.ModuleDict(dict(attn=Attention(dim, heads, qk_norm=RMSNorm),
                                                    mlp=mlp(dim, mlp_ratio), adaLN=modulation(dim, 6)))
                                 for _ in range(2))

    def forward(self, text, video, emb, rope=None, attn_mask=None, parallel=None):
        """As ExpertBlock's (full attention only: factorized attention is CogVideoX's ablation)."""
        txt_shift_a, txt_scale_a, txt_gate_a, txt_shift_m, txt_scale_m, txt_gate_m = \
            self.text.adaLN(emb)[:, None].chunk(6, dim=-1)                  # (B, 1, D) each
        vid_shift_a, vid_scale_a, vid_gate_a, vid_shift_m, vid_scale_m, vid_gate_m = \
            self.video.adaLN(emb)[:, None].chunk(6, dim=-1)
        txt_qkv = self.text.attn.heads_of(modulate(self.norm(text), txt_shift_a, txt_scale_a))
        vid_qkv = self.video.attn.heads_of(modulate(self.norm(video), vid_shift_a, vid_scale_a))
        q, k, v = (torch.cat(pair, dim=2) for pair in zip(txt_qkv, vid_qkv))  # (B, heads, L + N, head_dim)
        L = text.shape[1]
        h = attend(q, k, v, attn_mask, rope, L, parallel=parallel)          # (B, L + N, D)
        text = text + txt_gate_a * self.text.attn.proj(h[:, :L])
        video = video + vid_gate_a * self.video.attn.proj(h[:, L:])
        text = text + txt_gate_m * self.text.mlp(modulate(self.norm(text), txt_shift_m, txt_scale_m))
        video = video + vid_gate_m * self.video.mlp(modulate(self.norm(video), vid_shift_m, vid_scale_m))
        return text, video


class SingleStreamBlock(nn.Module):
    """HunyuanVideo's single-stream block (FLUX; ViT-22B's parallel layers): one set of weights for x = [text; video],
    attention and MLP side by side. One Linear gives q, k, v and the MLP's h; x += gate W2 [attn(q, k, v); GELU(h)]."""

    def __init__(self, dim, heads, mlp_ratio=4):
        super().__init__()
        self.heads, self.widths = heads, (3 * dim, mlp_ratio * dim)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear1 = nn.Linear(dim, (3 + mlp_ratio) * dim)                # QKV and the MLP's first layer
        self.q_norm, self.k_norm = RMSNorm(dim // heads, eps=1e-6), RMSNorm(dim // heads, eps=1e-6)
        self.linear2 = nn.Linear((1 + mlp_ratio) * dim, dim)                # attention's and the MLP's output
        self.adaLN = modulation(dim, 3)

    def forward(self, text, video, emb, rope=None, attn_mask=None, parallel=None):
        """As DualStreamBlock's, so both archs run one loop of blocks: text and video joined here, split after."""
        L = text.shape[1]
        x = torch.cat([text, video], dim=1)                                 # (B, L + N, D)
        shift, scale, gate = self.adaLN(emb)[:, None].chunk(3, dim=-1)      # (B, 1, D) each
        qkv, h = self.linear1(modulate(self.norm(x), shift, scale)).split(self.widths, dim=-1)
        q, k, v = qkv.unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4).unbind(0)  # (B, heads, L + N, hd)
        attn = attend(self.q_norm(q), self.k_norm(k), v, attn_mask, rope, L, parallel=parallel)  # (B, L + N, D)
        x = x + gate * self.linear2(torch.cat([attn, F.gelu(h)], dim=-1))
        return x[:, :L], x[:, L:]


class TextLayer(nn.Module):
    """Pre-LN transformer layer (GPT-2): x += Attn(LN(x)); x += MLP(LN(x))."""

    def __init__(self, dim, heads, mlp_ratio=4, qk_norm=nn.LayerNorm, act=nn.GELU, eps=1e-5):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=eps), Attention(dim, heads, qk_norm=qk_norm)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=eps), mlp(dim, mlp_ratio, act)

    def forward(self, x, attn_mask):
        x = x + self.attn(self.norm1(x), attn_mask)
        return x + self.mlp(self.norm2(x))


class TextEncoder(nn.Module):
    """Caption encoder trained with the DiT from scratch, in place of CogVideoX's frozen T5-XXL: token embedding,
    learned positions, pre-LN layers. Padded tokens are never attended to, so they change no real token's output."""

    def __init__(self, vocab_size, dim, depth, heads, max_len):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, dim)
        self.pos = nn.Parameter(torch.zeros(max_len, dim))
        nn.init.normal_(self.tok.weight, std=0.02)
        nn.init.normal_(self.pos, std=0.02)
        self.layers = nn.ModuleList(TextLayer(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids, mask):  # ids (B, L), mask (B, L) True on real tokens -> (B, L, dim)
        x = self.tok(ids) + self.pos[:ids.shape[1]]                         # (B, L, dim)
        for layer in self.layers:
            x = layer(x, mask[:, None, None, :])                            # keys (B, 1, 1, L) that may be attended
        return self.norm(x)


class TokenRefiner(nn.Module):
    """HunyuanVideo's token refiner (its SingleTokenRefiner): the caption re-read at this noise level before the DiT
    sees it. Its own conditioning c = t embedder(t) + context embedder(masked mean of its input tokens), an input
    projection, then two pre-LN layers without qk-norm and with a SiLU MLP, each update x += gate * f(LN(x)) gated
    from c (zero-initialised). HunyuanVideo refines a frozen MLLM's tokens, here the small text encoder's."""

    def __init__(self, dim, heads, mlp_ratio=4, depth=2):
        super().__init__()
        self.t_embed = nn.Sequential(nn.Linear(256, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.c_embed = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.proj_in = nn.Linear(dim, dim)
        self.layers = nn.ModuleList(TextLayer(dim, heads, mlp_ratio, None, nn.SiLU, 1e-6) for _ in range(depth))
        self.gates = nn.ModuleList(modulation(dim, 2) for _ in range(depth))

    def forward(self, text, mask, t):
        pooled = (text * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # (B, D) mean of the real tokens
        c, x, keep = self.t_embed(timestep_embedding(t)) + self.c_embed(pooled), self.proj_in(text), mask[:, None, None]
        for layer, gates in zip(self.layers, self.gates):
            gate_a, gate_m = gates(c)[:, None].chunk(2, dim=-1)              # (B, 1, D) each
            x = x + gate_a * layer.attn(layer.norm1(x), keep)
            x = x + gate_m * layer.mlp(layer.norm2(x))
        return x


class DiT(nn.Module):
    """Latent video denoiser: pred = model(x_t, t, ids, mask), x_t's shape (the objective, 03-05, says what it means).
    arch="cogvideox": depth expert blocks, attention "full" (3D) or "factorized" (spatial and temporal blocks
    alternate); arch="hunyuan": the token refiner, double_depth dual-stream, then single-stream blocks.
    guidance_embed: forward takes the guidance scale too (HunyuanVideo's distilled model, 07_distill.py)."""

    def __init__(self, in_channels, dim, depth, heads, vocab_size, max_text_len, text_depth, patch=2, patch_t=1,
                 attention="full", mlp_ratio=4, checkpointing=False, image_channels=0, arch="cogvideox",
                 double_depth=None, guidance_embed=False):
        super().__init__()
        if (attention, arch) not in (("full", "cogvideox"), ("factorized", "cogvideox"), ("full", "hunyuan")):
            raise ValueError(f"attention 'full' or 'factorized' (CogVideoX's ablation: arch 'cogvideox' only), arch "
                             f"'cogvideox' or 'hunyuan'; got attention={attention!r}, arch={arch!r}")
        # HunyuanVideo has 20 dual-stream then 40 single-stream blocks: by default the same 1:2 split. Per block: expert
        # 24 D^2 weights, dual 36, single 15 (22 on average), plus 31 D^2 for the refiner: within ~12% of CogVideoX's
        double_depth = max(1, depth // 3) if double_depth is None else double_depth
        if arch == "hunyuan" and not 0 <= double_depth < depth:  # or the last dual block's text update is unused
            raise ValueError(f"double_depth must be in [0, depth = {depth}): at least one single-stream block "
                             f"follows the dual-stream ones, got {double_depth}")
        self.in_channels, self.patch, self.patch_t, self.arch = in_channels, patch, patch_t, arch
        self.attention, self.checkpointing, self.image_channels = attention, checkpointing, image_channels
        self.parallel = None  # 06_parallel.Ulysses splits the video tokens over ranks when set
        self.text_encoder = TextEncoder(vocab_size, dim, text_depth, heads, max_text_len)
        self.x_embed = nn.Linear((in_channels + image_channels) * patch_t * patch * patch, dim)  # + I2V's frames
        self.t_embed = nn.Sequential(nn.Linear(256, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.text_pool = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.g_embed = nn.Sequential(nn.Linear(256, dim), nn.SiLU(), nn.Linear(dim, dim)) if guidance_embed else None
        if arch == "cogvideox":
            self.rope, self.refiner = RoPE3D(dim // heads), None
            # factorized: spatial and temporal blocks alternate (Latte), with a full block's weights each
            axes = ["full"] * depth if attention == "full" else [("space", "time")[i % 2] for i in range(depth)]
            self.blocks = nn.ModuleList(ExpertBlock(dim, heads, mlp_ratio, axis) for axis in axes)
        else:
            self.rope = RoPE3D(dim // heads, theta=256.0, split="hunyuan")  # HunyuanVideo's theta
            self.refiner = TokenRefiner(dim, heads, mlp_ratio)
            self.blocks = nn.ModuleList([DualStreamBlock(dim, heads, mlp_ratio) for _ in range(double_depth)] +
                                        [SingleStreamBlock(dim, heads, mlp_ratio) for _ in range(depth - double_depth)])
        self.final_norm, self.final_adaLN = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6), modulation(dim, 2)
        self.final_linear = nn.Linear(dim, in_channels * patch_t * patch * patch)  # zeroed (DiT): prediction 0 at first
        nn.init.zeros_(self.final_linear.weight)
        nn.init.zeros_(self.final_linear.bias)

    def forward(self, x, t, ids, mask, history=None, causal=False, image=None, guidance=None):
        """x (B, C, T, H, W) latents; t (B,) on 0..1000; ids, mask (B, L) the caption -> x's shape. history: past latent
        frames, oldest first, each (B, C, 1, h_j <= H, w_j <= W), in the sequence [text; history; x] with the
        block-causal mask (Pyramid Flow, 05; causal=True without them). image: the latents of the first k <= T given
        frames (B, image_channels, k, H, W) (CogVideoX-I2V). guidance: the scale w (B,) of a distilled DiT (07)."""
        history, (B, _, T, H, W) = list(history or []), x.shape
        if (guidance is None) != (self.g_embed is None) or (image is not None and not self.image_channels):
            raise ValueError(f"guidance= goes with guidance_embed=True and image= with image_channels > 0: this DiT "
                             f"has guidance_embed={self.g_embed is not None}, image_channels={self.image_channels}")
        if (causal or history) and self.attention != "full" or history and self.patch_t != 1:
            raise ValueError("history and causal=True need attention='full', and history patch_t=1 (a frame a token)")
        if self.image_channels:  # the given frames' latents, zero-padded to T frames; no image: zeros
            image = x.new_zeros(B, self.image_channels, 1, H, W) if image is None else image.to(x.dtype)
            x = torch.cat([x, F.pad(image, (0, 0, 0, 0, 0, T - image.shape[2]))], dim=1)
        p, pt = self.patch, self.patch_t
        tokens = [patchify(h, p, 1) for h in history] + [patchify(x, p, pt)]  # (B, n_j, C*pt*p*p) each
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
        if self.g_embed is not None:  # the scale w enters as HunyuanVideo's does, at 1000 w on the t scale
            emb = emb + self.g_embed(timestep_embedding(1000 * guidance))
        if self.refiner is not None:  # hunyuan: the caption re-read at this noise level, padding still hidden
            text = self.refiner(text, mask, t)
        rope = F.pad(self.rope(pos), (0, 0, text.shape[1], 0))              # (S, head_dim/2): text angle 0, unrotated
        attn_mask = F.pad(mask, (0, video.shape[1]), value=True)[:, None, None, :]  # (B, 1, 1, S): padded text hidden
        if causal or history:  # (B, 1, S, S)
            attn_mask = attn_mask & block_causal_mask(text.shape[1], [h * w for h, w in grids], x.device)
        if self.parallel is not None:  # 06_parallel.Ulysses: this rank keeps 1/W of the video tokens and their RoPE
            video, rope = self.parallel.split(video, rope, text.shape[1])
        for block in self.blocks:
            args = (text, video, emb, rope, attn_mask) + ((frames,) if self.arch == "cogvideox" else ())
            if self.checkpointing and torch.is_grad_enabled():  # keep its inputs only, recompute the rest in backward
                text, video = checkpoint(block, *args, parallel=self.parallel, use_reentrant=False)
            else:
                text, video = block(*args, parallel=self.parallel)
        if self.parallel is not None:  # every rank gets the whole sequence, and so returns the whole prediction
            video = self.parallel.gather(video)
        shift, scale = self.final_adaLN(emb)[:, None].chunk(2, dim=-1)      # (B, 1, D) each
        out = self.final_linear(modulate(self.final_norm(video[:, -frames * rows * cols:]), shift, scale))
        return rearrange(out, "b (t h w) (c pt ph pw) -> b c (t pt) (h ph) (w pw)", t=frames, h=rows, w=cols, pt=pt,
                         ph=p, pw=p)                                        # unpatchified: (B, C, T, H, W)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Overfit 8 captioned random latents with the DiT, sample them back.")
    parser.add_argument("--arch", choices=["cogvideox", "hunyuan"], default="cogvideox")
    arch, (n, C, T, H, W, L) = parser.parse_args().arch, (8, 4, 3, 8, 8, 8)
    torch.manual_seed(0)
    x0 = torch.randn(n, C, T, H, W)  # 8 random "latents" (01's VAE makes real ones), each with a caption of 2-8 tokens
    mask = torch.arange(L)[None] < torch.randint(2, L + 1, (n, 1))          # (n, L)
    ids = torch.randint(2, 32, (n, L)) * mask                               # PAD (0) after each caption
    model = DiT(C, dim=128, depth=4, heads=4, vocab_size=32, max_text_len=L, text_depth=1, arch=arch)
    print(f"{arch} DiT (4 expert blocks, or 1 dual- and 3 single-stream): "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    opt, start = torch.optim.AdamW(model.parameters(), lr=1e-3), time.time()
    for step in range(401):  # flow matching (04): x_s = (1 - s) x0 + s eps, regress the velocity eps - x0
        s, eps = torch.rand(n).view(n, 1, 1, 1, 1), torch.randn_like(x0)
        loss = F.mse_loss(model((1 - s) * x0 + s * eps, 1000 * s.flatten(), ids, mask), eps - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0:
            print(f"step {step:3d}  loss {loss.item():.4f}  ({time.time() - start:.0f}s)")
    with torch.no_grad():  # Euler from noise (s = 1) to data (s = 0): caption i should bring back latent i
        z = torch.randn_like(x0)
        for k in range(20, 0, -1):
            z = z - model.eval()(z, torch.full((n,), 1000 * k / 20), ids, mask) / 20
    mse = torch.cdist(z.flatten(1), x0.flatten(1)) ** 2 / x0[0].numel()    # (sample, latent) mean squared error
    print(f"samples closest to their own caption's latent: {(mse.argmin(1) == torch.arange(n)).sum()}/{n}; MSE to "
          f"own latent {mse.diag().mean():.3f}, to the others {mse[~torch.eye(n, dtype=torch.bool)].mean():.3f}")
    tiles = torch.cat([x0[:, 0, 0], z[:, 0, 0]], dim=1).clamp(-2.5, 2.5)   # (n, 2H, W): targets above, samples below
    grid = ((tiles.permute(1, 0, 2).flatten(1) + 2.5) * 51).byte().numpy()  # (2H, n*W)
    os.makedirs("runs/demo", exist_ok=True)
    image = Image.fromarray(grid).resize((grid.shape[1] * 16, grid.shape[0] * 16), Image.NEAREST)
    image.save("runs/demo/dit_samples.png")
    print("wrote runs/demo/dit_samples.png (channel 0 of frame 0: targets above, samples below)")
