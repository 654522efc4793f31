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
checkpointing, and DiT.parallel, where 06_parallel.py's Ulysses attention splits the tokens over processes.

    python 02_dit.py [--arch hunyuan]   # overfits 8 captioned random latents with a flow-matching loss, prints
                                        # the loss curve, samples them back -> runs/demo/dit_samples.png
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
    """Linear(SiLU(emb)) -> n D-vectors (shifts, scales, gates), zero-initialised: adaLN-Zero (DiT), so every
    gate starts at 0 and every block as the identity."""
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


def attend(q, k, v, attn_mask=None, rope=None, n_text=0, frames=1, axis="full", parallel=None):
    """Rotate q and k (B, heads, S, head_dim) by rope, attend, merge the heads -> (B, S, D). Every block's
    attention goes through here. parallel: 06_parallel's Ulysses, when the sequence is split over ranks."""
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
        self.q_norm = qk_norm(dim // heads, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = qk_norm(dim // heads, eps=1e-6) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def heads_of(self, x):
        """x (B, S, D) -> q, k, v (B, heads, S, head_dim), q and k normalized."""
        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4).unbind(0)
        return self.q_norm(q), self.k_norm(k), v

    def forward(self, x, attn_mask=None, rope=None, n_text=0, frames=1, parallel=None):
        """x (B, S, D); attn_mask bool (B, 1, S or 1, S), True = may attend; rope angles (S, head_dim/2).
        Factorized attention also needs n_text (the caption comes first) and the number of video frames."""
        return self.proj(attend(*self.heads_of(x), attn_mask, rope, n_text, frames, self.axis, parallel))  # (B, S, D)


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

    def forward(self, text, video, emb, rope=None, attn_mask=None, frames=1, parallel=None):
        """text (B, L, D), video (B, N, D), emb (B, D) timestep embedding -> updated (text, video).
        rope, attn_mask and frames are for the joint sequence [text; video] (see Attention)."""
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

    def forward(self, text, video, emb, rope=None, attn_mask=None, parallel=None):
        """As DualStreamBlock's, so that both archs run one loop of blocks: text and video are joined here and
        split again after the block (a copy of x per block, small beside linear1)."""
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

    def __init__(self, dim, heads, mlp_ratio=4):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim), mlp(dim, mlp_ratio)

    def forward(self, x, attn_mask):
        x = x + self.attn(self.norm1(x), attn_mask)
        return x + self.mlp(self.norm2(x))


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
        if not mask.any(dim=1).all():
            raise ValueError("a caption mask is all False, so its queries have nothing to attend to; "
                             "the null caption is all PAD with mask True at position 0")
        x = self.tok(ids) + self.pos[:ids.shape[1]]                         # (B, L, dim)
        for layer in self.layers:
            x = layer(x, mask[:, None, None, :])                            # keys (B, 1, 1, L) that may be attended
        return self.norm(x)


class RefinerLayer(nn.Module):
    """A layer of HunyuanVideo's token refiner (its IndividualTokenRefinerBlock): pre-LN, no qk-norm, a SiLU MLP,
    and each update gated from the refiner's conditioning c, x += gate * f(LN(x)), the gates zero-initialised."""

    def __init__(self, dim, heads, mlp_ratio=4):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), Attention(dim, heads, qk_norm=None)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), mlp(dim, mlp_ratio, nn.SiLU)
        self.adaLN = modulation(dim, 2)

    def forward(self, x, attn_mask, c):
        gate_a, gate_m = self.adaLN(c)[:, None].chunk(2, dim=-1)            # (B, 1, D) each
        x = x + gate_a * self.attn(self.norm1(x), attn_mask)
        return x + gate_m * self.mlp(self.norm2(x))


class TokenRefiner(nn.Module):
    """HunyuanVideo's token refiner (its SingleTokenRefiner), which re-reads the caption at this noise level before
    the DiT sees it. It has its own conditioning, c = t embedder(t) + context embedder(masked mean of its input
    tokens), an input projection, then two RefinerLayers. HunyuanVideo refines a frozen MLLM's tokens, here the
    small text encoder's."""

    def __init__(self, dim, heads, mlp_ratio=4, depth=2):
        super().__init__()
        self.t_embed = nn.Sequential(nn.Linear(256, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.c_embed = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.proj_in = nn.Linear(dim, dim)
        self.layers = nn.ModuleList(RefinerLayer(dim, heads, mlp_ratio) for _ in range(depth))

    def forward(self, text, mask, t):
        pooled = (text * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # (B, D) mean of the real tokens
        c = self.t_embed(timestep_embedding(t)) + self.c_embed(pooled)      # (B, D)
        x = self.proj_in(text)                                              # (B, L, D)
        for layer in self.layers:
            x = layer(x, mask[:, None, None, :], c)
        return x


class DiT(nn.Module):
    """Latent video denoiser: pred = model(x_t, t, ids, mask) with pred of x_t's shape (the objective, 03-05,
    decides what pred means: v, velocity or noise). arch="cogvideox": depth expert blocks; attention="full" is
    CogVideoX's 3D attention over [text; video], "factorized" alternates spatial and temporal blocks (see
    factorized_attention). arch="hunyuan": the token refiner, then double_depth dual-stream and
    depth - double_depth single-stream blocks (full attention only). guidance_embed: forward takes the
    guidance scale too (HunyuanVideo's guidance-distilled model, 07_distill.py)."""

    def __init__(self, in_channels, dim, depth, heads, vocab_size, max_text_len, text_depth, patch=2, patch_t=1,
                 attention="full", mlp_ratio=4, checkpointing=False, image_channels=0, arch="cogvideox",
                 double_depth=None, guidance_embed=False):
        super().__init__()
        if attention not in ("full", "factorized") or arch not in ("cogvideox", "hunyuan"):
            raise ValueError(f"attention must be 'full' or 'factorized' and arch 'cogvideox' or 'hunyuan', "
                             f"got {attention!r} and {arch!r}")
        if arch == "hunyuan" and attention != "full":
            raise ValueError("attention='factorized' is CogVideoX's ablation: it needs arch='cogvideox'")
        # HunyuanVideo has 20 dual-stream then 40 single-stream blocks; by default the same 1:2 split, at least
        # one dual. Per block (mlp_ratio 4): expert 24 D^2 weights, dual 36, single 15, on average 22 with the
        # 1:2 split, plus 31 D^2 for the refiner: at equal dim and depth >= 6, within ~10% of CogVideoX's count
        double_depth = max(1, depth // 3) if double_depth is None else double_depth
        if arch == "hunyuan" and not 0 <= double_depth < depth:  # or the last dual block's text update is unused
            raise ValueError(f"double_depth must be in [0, depth = {depth}): at least one single-stream block "
                             f"follows the dual-stream ones, got {double_depth}")
        self.in_channels, self.patch, self.patch_t, self.arch = in_channels, patch, patch_t, arch
        self.attention, self.checkpointing, self.image_channels = attention, checkpointing, image_channels
        self.parallel = None  # 06_parallel.Ulysses splits the video tokens over ranks when set
        self.text_encoder = TextEncoder(vocab_size, dim, text_depth, heads, max_text_len)
        # image_channels > 0: CogVideoX-I2V's image conditioning, the first frame's latent concatenated to x_t
        # along channels (zeros where no frame is given), so the patch embedding sees both
        self.x_embed = nn.Linear((in_channels + image_channels) * patch_t * patch * patch, dim)
        self.t_embed = nn.Sequential(nn.Linear(256, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.text_pool = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        # HunyuanVideo's guidance distillation: the guidance scale w is an input, embedded like t
        self.g_embed = nn.Sequential(nn.Linear(256, dim), nn.SiLU(), nn.Linear(dim, dim)) if guidance_embed else None
        if arch == "cogvideox":
            self.rope, self.refiner = RoPE3D(dim // heads), None
            # factorized: spatial and temporal blocks alternate (Latte), each with exactly a full block's weights,
            # so the ablation changes only who attends to whom
            axes = ["full"] * depth if attention == "full" else [("space", "time")[i % 2] for i in range(depth)]
            self.blocks = nn.ModuleList(ExpertBlock(dim, heads, mlp_ratio, axis) for axis in axes)
        else:
            self.rope = RoPE3D(dim // heads, theta=256.0, split="hunyuan")  # HunyuanVideo's theta
            self.refiner = TokenRefiner(dim, heads, mlp_ratio)
            self.blocks = nn.ModuleList([DualStreamBlock(dim, heads, mlp_ratio) for _ in range(double_depth)] +
                                        [SingleStreamBlock(dim, heads, mlp_ratio) for _ in range(depth - double_depth)])
        self.final_norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.final_adaLN = modulation(dim, 2)
        self.final_linear = nn.Linear(dim, in_channels * patch_t * patch * patch)
        # adaLN-Zero (DiT): the prediction starts at exactly 0
        nn.init.zeros_(self.final_linear.weight)
        nn.init.zeros_(self.final_linear.bias)

    def forward(self, x, t, ids, mask, history=None, causal=False, image=None, guidance=None):
        """x (B, C, T, H, W) latents; t (B,) timesteps on 0..1000; ids, mask (B, L) the caption.
        history: past latent frames, oldest first, each (B, C, 1, h_j, w_j) with h_j <= H, w_j <= W, put in the
        sequence [text; history; x] (Pyramid Flow's temporal pyramid); it implies causal=True, the
        block-causal mask by latent frame. Returns x's shape: the prediction at x's tokens only.
        image: with image_channels > 0, the latents of the first k <= T given frames (B, image_channels, k, H, W),
        zero-padded to T frames and concatenated to x (CogVideoX-I2V); None (no image) is all zeros.
        guidance: with guidance_embed, the guidance scale w (B,) that the distilled model imitates."""
        history, (B, _, T, H, W) = list(history or []), x.shape
        if (guidance is None) != (self.g_embed is None) or (image is not None and not self.image_channels):
            raise ValueError("guidance= goes with guidance_embed=True and image= with image_channels > 0: "
                             f"this DiT has guidance_embed={self.g_embed is not None}, "
                             f"image_channels={self.image_channels}")
        if (causal or history) and self.attention != "full" or history and self.patch_t != 1:
            raise ValueError("history and causal=True need attention='full', and history patch_t=1 (a frame a token)")
        if self.image_channels:
            image = x.new_zeros(B, self.image_channels, 1, H, W) if image is None else image.to(x.dtype)
            x_in = torch.cat([x, F.pad(image, (0, 0, 0, 0, 0, T - image.shape[2]))], dim=1)
        else:
            x_in = x

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
        if self.g_embed is not None:  # the scale w enters as HunyuanVideo's does, at 1000 w on the t scale
            emb = emb + self.g_embed(timestep_embedding(1000 * guidance))
        if self.refiner is not None:  # hunyuan: the caption re-read at this noise level, padding still hidden
            text = self.refiner(text, mask, t)
        rope = F.pad(self.rope(pos), (0, 0, text.shape[1], 0))              # (S, head_dim/2): text angle 0, unrotated
        attn_mask = F.pad(mask, (0, video.shape[1]), value=True)[:, None, None, :]  # (B, 1, 1, S): padded text hidden
        if causal or history:
            attn_mask = attn_mask & block_causal_mask(text.shape[1], [h * w for h, w in grids], x.device)  # (B, 1, S, S)
        if self.parallel is not None:  # 06_parallel.Ulysses: this rank keeps 1/W of the video tokens and their RoPE
            video, rope = self.parallel.split(video, rope, text.shape[1])
        for block in self.blocks:
            args = (text, video, emb, rope, attn_mask) + ((frames,) if self.arch == "cogvideox" else ())
            if self.checkpointing and torch.is_grad_enabled():
                # keep only each block's inputs; recompute its activations in backward (memory for compute)
                text, video = checkpoint(block, *args, parallel=self.parallel, use_reentrant=False)
            else:
                text, video = block(*args, parallel=self.parallel)
        if self.parallel is not None:  # every rank gets the whole sequence, and so returns the whole prediction
            video = self.parallel.gather(video)

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
    start = time.time()
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
    # channel 0 of frame 0 of each latent, upscaled: targets above, samples below
    tiles = torch.cat([x0[:, 0, 0], z[:, 0, 0]], dim=1).clamp(-2.5, 2.5)   # (n, 2H, W)
    grid = ((tiles.permute(1, 0, 2).flatten(1) + 2.5) * 51).byte().numpy()  # (2H, n*W)
    os.makedirs("runs/demo", exist_ok=True)
    image = Image.fromarray(grid).resize((grid.shape[1] * 16, grid.shape[0] * 16), Image.NEAREST)
    image.save("runs/demo/dit_samples.png")
    print("wrote runs/demo/dit_samples.png")
