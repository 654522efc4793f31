"""Pyramidal flow matching: denoise coarse to fine in space, one latent frame at a time.

Pyramidal Flow Matching (Jin et al. 2024, arXiv 2410.05954; official code github.com/jy0205/Pyramid-Flow)
cuts the rectified flow of 04_flow.py into K stages. Early, noisy latents carry no fine detail, so the
noisiest part of the flow runs at low resolution: stage k works at 1/2^(K-1-k) of the full size on a window
of the noise level, and at each jump to the next stage the latent is upsampled and given a little fresh
noise. One model serves every stage; their disjoint timestep ranges tell it which one it is in.
Time is a second pyramid: the video is generated one latent frame after another, and the past frames the
model conditions on (its history) are kept at lower resolution the older they are. Given frames are history
like any other: an image as frame 0 makes image-to-video without extra training, and a sliding window of
history continues a video past the trained length (sample(first=..., window=...)).

Convention (as in 04_flow.py and the official code): sigma is the noise coefficient, x = sigma n + (1 - sigma) x0,
sigma = 1 is pure noise. Stage k runs sigma from s_k down to e_k; inside it a local ratio r runs from 1 to 0:
    x_r = r start_k + (1 - r) end_k,    target v = start_k - end_k.

Demo (token counts, renoising statistics, runs/demo/05_pyramid.png):  python 05_pyramid.py
"""
import importlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

shift_time = importlib.import_module("04_flow").shift_time  # the timestep shift of 04: s t / (1 + (s - 1) t)
guided_prediction = importlib.import_module("03_diffusion").guided_prediction  # CFG, with Lin et al.'s rescale

GAMMA = 1 / 3  # block-noise correlation: the largest valid value, and the one that makes every 2x2 block of n' sum to 0


def down(x, levels=1):
    """Average-pool every frame over 2^levels x 2^levels blocks: `levels` steps down the clean-latent pyramid.
    At exactly 1/2 scale this equals the official code's bilinear resize."""
    return F.avg_pool3d(x, kernel_size=(1, 2 ** levels, 2 ** levels))  # (B, C, T, H / 2^levels, W / 2^levels)


def up(x):
    """Nearest-neighbour 2x upsampling of every frame: each value becomes a 2x2 block."""
    return F.interpolate(x, scale_factor=(1, 2, 2), mode="nearest")  # (B, C, T, 2H, 2W)


def block_noise(z, gamma=GAMMA):
    """Turn standard normal z (B, C, T, H, W) into n' ~ N(0, (1 + g) I - g 11^T), independently per 2x2 block.

    P z = Up(AvgPool2(z)) replaces each block by its mean, so P = 11^T / 4 per block, and P and I - P are
    orthogonal projections. Hence n' = sqrt(1+g) (z - P z) + sqrt(1-3g) P z has covariance
    (1+g)(I - P) + (1-3g) P = (1+g) I - 4g P = (1+g) I - g 11^T. At g = 1/3 only z - P z is left: zero block sums.
    (The official code samples this singular covariance with MultivariateNormal, which newer torch rejects.)
    """
    if not 0 <= gamma <= 1 / 3:
        raise ValueError(f"block-noise gamma must lie in [0, 1/3] for a valid covariance, got {gamma}")
    pz = up(down(z))  # (B, C, T, H, W), block means
    return math.sqrt(1 + gamma) * (z - pz) + math.sqrt(1 - 3 * gamma) * pz


def history_stages(num_past, stage):
    """Stage (resolution) of each past frame, oldest first, while a frame is denoised at `stage`: the newest
    at that stage, each older one a stage lower, down to stage 0. For K = 3 at stage 2: [0, ..., 0, 1, 2],
    the paper's temporal pyramid (the same layout as the official code's training and sampling loops)."""
    return [max(stage - age, 0) for age in range(num_past - 1, -1, -1)]


def token_counts(frames, height, width, stages, patch=2):
    """Video tokens per transformer call (text left out) for latents of (frames, height, width).

    Returns per_stage[k], the tokens of one frame at stage k; per_step[f][k], the sequence that denoises frame
    f at stage k (the frame plus its history); and the full-resolution full-sequence length. A grid that does
    not divide is padded up (CogVideoX's 60 x 90 latents)."""
    per_stage = []
    for k in range(stages):
        h, w = math.ceil(height / 2 ** (stages - 1 - k)), math.ceil(width / 2 ** (stages - 1 - k))
        per_stage.append(math.ceil(h / patch) * math.ceil(w / patch))
    per_step = [[per_stage[k] + sum(per_stage[s] for s in history_stages(f, k)) for k in range(stages)]
                for f in range(frames)]
    return per_stage, per_step, frames * per_stage[-1]


class PyramidFlow(nn.Module):
    """Spatial pyramid of K flow stages plus a temporal-pyramid history; the same loss() / sample() as 03 and 04.

    stages: K. The tiny config's latents are 8 x 8 (64 x 64 frames), so K = 2 there: stage 0 is 4 x 4,
        4 tokens a frame at patch 2. K = 3, the paper's choice for 96 x 160 latents, would leave stage 0 a
        2 x 2 latent, one token per frame, each value the average of a quarter of the frame: no layout left.
    stage_ratios: each stage's share of a training batch (default equal; the paper uses 1:2:1 for K = 3).
    history_noise: in training, every history frame gets sigma_c ~ U(0, history_noise) of noise, so the model
        learns to tolerate its own imperfect frames at inference (the paper's 1/3).
    shift: 04_flow.py's timestep shift, applied to the stage boundaries and the timestep axis as in the
        official scheduler (1 = none).
    An nn.Module without parameters or buffers, like 04's RectifiedFlow, so train.py treats all objectives alike.
    """

    def __init__(self, stages=2, stage_ratios=None, history_noise=1 / 3, shift=1.0):
        super().__init__()
        if not isinstance(stages, int) or stages < 1:
            raise ValueError(f"stages must be an int >= 1, got {stages!r}")
        ratios = [1.0] * stages if stage_ratios is None else [float(w) for w in stage_ratios]
        if len(ratios) != stages or min(ratios) < 0 or sum(ratios) <= 0:
            raise ValueError(f"stage_ratios must be {stages} non-negative numbers with a positive sum, "
                             f"got {stage_ratios}")
        if not 0 <= history_noise < 1:
            raise ValueError(f"history_noise must lie in [0, 1), got {history_noise}")
        if shift <= 0:
            raise ValueError(f"shift must be positive, got {shift}")
        self.stages, self.stage_ratios, self.history_noise, self.shift = stages, ratios, history_noise, shift

        # Nominal windows: K equal pieces of sigma from 1 to 0, then shifted. Stage k ends at e_k = bounds[k+1].
        bounds = [shift_time(1 - k / stages, shift) for k in range(stages + 1)]
        self.end_sigmas = bounds[1:]
        self.start_sigmas, self.alphas, self.betas = [], [], []
        for k in range(stages):
            # c: the signal coefficient where stage k-1 ended; renoise() derives alpha and beta from it. Stage 0
            # has c = 0 and starts from pure noise (s_0 = 1; alphas[0] and betas[0] go unused).
            c = 1 - bounds[k]
            alpha = 1 / (math.sqrt(1 + 1 / GAMMA) * (1 - c) + c)
            self.alphas.append(alpha)
            self.betas.append(alpha * (1 - c) / math.sqrt(GAMMA))
            self.start_sigmas.append(1 - alpha * c)  # corrected start: the sigma the jump really lands on
        # The timestep axis 1000 -> 0 is cut in proportion to each stage's sigma length s_k - e_k. Stage k owns
        # (t_lo[k], t_hi[k]] (r = 0 is never evaluated), so the ranges tile [0, 1000] without overlap.
        lengths = [s - e for s, e in zip(self.start_sigmas, self.end_sigmas)]
        cuts = [1000 * shift_time(1 - sum(lengths[:k]) / sum(lengths), shift) for k in range(stages + 1)]
        self.t_hi, self.t_lo = cuts[:-1], cuts[1:]

    def timestep(self, k, r):
        """Model timestep on the 0..1000 scale at local ratio r of stage k: t_hi at r = 1, t_lo as r -> 0."""
        return self.t_lo[k] + r * (self.t_hi[k] - self.t_lo[k])

    def check_shape(self, shape):
        if len(shape) != 5:
            raise ValueError(f"expected latents (B, C, T, H, W), got shape {tuple(shape)}")
        H, W = shape[-2:]
        if H % 2 ** (self.stages - 1) or W % 2 ** (self.stages - 1):
            raise ValueError(f"latent size {H}x{W} must be divisible by 2^(stages-1) = {2 ** (self.stages - 1)}")
        return tuple(shape)

    def interpolate(self, x, noise, r, k):
        """Training point of stage k from clean full-resolution latents x and noise (B, C, T, H, W) at local
        ratio r (B,) in [0, 1]. Returns (x_r, t, v) at stage k's resolution."""
        levels = self.stages - 1 - k
        # Clean pyramid: 2x2 average pooling. Noise pyramid: 2 x AvgPool2, since a mean of 4 iid unit
        # normals has variance 1/4, and doubling restores unit variance.
        x_k, n_k = down(x, levels), 2 ** levels * down(noise, levels)  # (B, C, T, h, w)
        s, e = self.start_sigmas[k], self.end_sigmas[k]
        # Both ends share n_k, so the path inside the stage is a straight line. The start holds only the coarse
        # picture, stage k-1's clean latent upsampled: exactly what the jump from stage k-1 delivers.
        start = n_k if k == 0 else s * n_k + (1 - s) * up(down(x_k))
        end = e * n_k + (1 - e) * x_k  # = x_k at the last stage (e = 0)
        r = r.view(-1, 1, 1, 1, 1)
        return r * start + (1 - r) * end, self.timestep(k, r.flatten()), start - end

    def batch_stages(self, batch, rank=0, world_size=1):
        """Stage of each local sample, fixed by its position in the global batch of world_size * batch samples
        (the official code assigns stages by position too), so the ratios hold even at one sample per rank."""
        w = torch.tensor(self.stage_ratios, dtype=torch.float64)
        ends = torch.round(world_size * batch * w.cumsum(0) / w.sum())  # (K,) global position where each share ends
        position = rank * batch + torch.arange(batch, dtype=torch.float64)
        return torch.searchsorted(ends, position, right=True)  # (batch,)

    def loss(self, model, x0, cond, rank=0, world_size=1, generator=None):
        """Pyramidal flow matching loss on clean latents x0 (B, C, T, H, W). Each sample trains one stage (set
        by its place in the global batch) on one target frame f (drawn per stage and step), with frames 0..f-1
        as history. Unweighted MSE on the target frame only, each sample weighted equally whatever its
        resolution (as in the official code). The model is called once per stage present in the local batch,
        so DDP ranks may make different numbers of calls: wrap the model with broadcast_buffers=False (the
        DiT's buffers are constants), as a buffer broadcast in every forward would deadlock."""
        B, C, T, H, W = self.check_shape(x0.shape)
        device, dtype = x0.device, x0.dtype
        stage = self.batch_stages(B, rank, world_size).to(device)
        total = torch.zeros((), device=device)
        for k in range(self.stages):
            idx = (stage == k).nonzero().flatten()
            if len(idx) == 0:
                continue
            x, b = x0[idx], len(idx)
            # One target frame per stage and step, so all sequences in this forward pass have equal length.
            f = int(torch.randint(T, (1,), generator=generator, device=device))
            noise = torch.randn((b, C, 1, H, W), generator=generator, device=device, dtype=dtype)
            r = 1 - torch.rand(b, generator=generator, device=device)  # (0, 1], float32 even for bf16 latents
            x_r, t, v = self.interpolate(x[:, :, f:f + 1], noise, r, k)  # (b, C, 1, h, w), (b,), (b, C, 1, h, w)
            # History: clean past frames, noised by one sigma_c ~ U(0, history_noise) per sample.
            sigma_c = self.history_noise * torch.rand(b, 1, 1, 1, 1, generator=generator, device=device)
            history = []
            for j, s in enumerate(history_stages(f, k)):
                h = down(x[:, :, j:j + 1], self.stages - 1 - s)  # (b, C, 1, h_j, w_j)
                eps = torch.randn(h.shape, generator=generator, device=device, dtype=dtype)
                history.append((1 - sigma_c) * h + sigma_c * eps)
            pred = model(x_r, t, **{key: value[idx] for key, value in cond.items()}, history=history, causal=True)
            total = total + ((pred.float() - v.float()) ** 2).mean(dim=(1, 2, 3, 4)).sum()
        return total / B

    def renoise(self, x, k, generator=None):
        """Jump from stage k-1 to stage k: x <- alpha Up(x) + beta n', with block noise n'.

        Stage k-1 ends at x = e n + c Down(x_k), e = 1 - c, n ~ N(0, I). Nearest upsampling copies every noise
        value into a 2x2 block: covariance e^2 11^T per block, which would show as blocky artefacts. Block
        noise with covariance (1+g) I - g 11^T cancels that correlation:
            Cov(alpha e Up(n) + beta n') = (alpha^2 e^2 - beta^2 g) 11^T + beta^2 (1+g) I,
        isotropic iff beta = alpha e / sqrt(g); the noise std is then alpha e sqrt(1 + 1/g). A point on the
        rectified-flow path has noise std + signal coefficient = 1:
            alpha e sqrt(1 + 1/g) + alpha c = 1  ->  alpha = 1 / (sqrt(1 + 1/g) (1 - c) + c).
        The result is stage k's training start, s_k n_k + (1 - s_k) Up(Down(x_k)) with s_k = 1 - alpha c.
        """
        x = up(x)  # (B, C, 1, 2h, 2w)
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return self.alphas[k] * x + self.betas[k] * block_noise(z)

    def velocity(self, model, x, t, cond, uncond, history, cfg=1.0, cfg_rescale=0.0):
        """Model velocity with classifier-free guidance (03's guided_prediction), in x's dtype (under autocast
        the model answers in bf16). The history frames go with both halves of the guided batch."""
        def with_history(x, t, **c):  # guided_prediction doubles the batch for cfg != 1: the history follows
            return model(x, t, **c, history=[h.repeat(len(x) // len(h), 1, 1, 1, 1) for h in history], causal=True)
        return guided_prediction(with_history, x, t, cond, uncond, cfg, cfg_rescale).to(x.dtype)

    def euler(self, model, x, k, cond, uncond, history, steps, cfg=1.0, cfg_rescale=0.0, preview=None):
        """Euler through stage k from its start (r = 1) to its end (r = 0): dx/dr = start - end = v.
        preview(end): after each step, the stage's end that the velocity points at, x_r - r v (the clean
        frame at the last stage, at this stage's resolution and noise e_k before it)."""
        for i in range(steps):
            r, r_next = 1 - i / steps, 1 - (i + 1) / steps
            t = torch.full((x.shape[0],), self.timestep(k, r), device=x.device)  # (B,)
            v = self.velocity(model, x, t, cond, uncond, history, cfg, cfg_rescale)
            if preview is not None:
                preview(x - r * v)
            x = x + (r_next - r) * v
        return x

    @torch.no_grad()
    def sample(self, model, shape, cond, uncond=None, steps=20, cfg=1.0, cfg_rescale=0.0, generator=None,
               progress=False, first=None, window=None, preview=None):
        """Generate latents of `shape` (B, C, T, H, W), one latent frame at a time, each coarse to fine with
        `steps` Euler steps per stage. The first frame has no history; frame f sees frames 0..f-1.

        first: given latent frames (B, C, k, H, W), kept as frames 0..k-1; only frames k..T-1 are generated.
            Image-to-video with the image's latent as frame 0, the history carrying it: no extra training
            (the official generate_i2v does the same).
        window: the most past frames a frame sees (None: all). Older frames are dropped from the history, so
            a video of any length costs the same per frame; sample.py passes the trained latent frames - 1.
        preview(i, n, x0_hat): after each of the n Euler steps, the video so far (B, C, T, H, W): the finished
            frames, the current frame's stage end (Euler's preview) upsampled, zeros for the frames to come.
        """
        B, C, T, H, W = self.check_shape(shape)
        if steps < 1:
            raise ValueError(f"steps (per stage) must be >= 1, got {steps}")
        if first is not None and (first.dim() != 5 or first.shape[:2] != (B, C) or first.shape[2] > T
                                  or first.shape[3:] != (H, W)):
            raise ValueError(f"first must be given latent frames (B={B}, C={C}, k<={T}, {H}, {W}), "
                             f"got {tuple(first.shape)}")
        if window is not None and window < 1:
            raise ValueError(f"window (history frames) must be >= 1, got {window}")
        device, levels = cond["ids"].device, self.stages - 1
        frames = [] if first is None else list(first.float().split(1, dim=2))  # finished frames, each (B, C, 1, H, W)
        made, total = [0], (T - len(frames)) * self.stages * steps

        def show(end):  # Euler's preview of the current frame -> the whole video so far, at full size
            up_to_full = F.interpolate(end, scale_factor=(1, H // end.shape[3], W // end.shape[4]), mode="nearest")
            later = end.new_zeros(B, C, T - len(frames) - 1, H, W)
            preview(made[0], total, torch.cat(frames + [up_to_full, later], dim=2))
            made[0] += 1
        for _ in tqdm(range(len(frames), T), desc="frames", disable=not progress):
            # RoPE: the DiT puts history frame j at time j and the new frame at len(past). Without a window, a
            # video longer than training takes t past the trained range: angles no training step produced, and
            # offsets to the oldest frames and to the caption (unrotated, as if at t = 0) that it never saw; only
            # offsets between nearby frames stay familiar. With the window the oldest frames are dropped and the
            # rest renumbered from 0, so every position and offset is a trained one. The cost: the memory of the
            # dropped frames, and the window's oldest frame is no longer the video's first (the causal VAE's
            # latent of one pixel frame), which training always put there.
            past = frames[-window:] if window else frames
            x = torch.randn((B, C, 1, H >> levels, W >> levels), generator=generator, device=device)  # stage 0 start
            for k in range(self.stages):
                if k > 0:
                    x = self.renoise(x, k, generator)
                history = [down(past[j], levels - s) for j, s in enumerate(history_stages(len(past), k))]
                x = self.euler(model, x, k, cond, uncond, history, steps, cfg, cfg_rescale, show if preview else None)
            frames.append(x)
        return torch.cat(frames, dim=2)  # (B, C, T, H, W)


if __name__ == "__main__":
    import os

    from einops import rearrange
    from PIL import Image

    from data.moving_mnist import MovingMNIST

    torch.manual_seed(0)
    os.makedirs("runs/demo", exist_ok=True)

    # 1. Tokens per transformer call: the temporal pyramid against full-resolution generation.
    sizes = {"tiny.yaml latents": (5, 8, 8, 2), "CogVideoX 49x480x720": (13, 60, 90, 3),
             "Pyramid Flow 768p, 31 frames": (31, 96, 160, 3)}
    for name, (T, H, W, K) in sizes.items():
        per_stage, per_step, full = token_counts(T, H, W, K)
        worst, mean = per_step[-1][-1], sum(map(sum, per_step)) / (T * K)
        full_ar = per_stage[-1] * (T + 1) / 2  # full-resolution autoregression, mean over frames
        print(f"{name}: latents {T}x{H}x{W}, K={K}, patch 2; tokens per frame by stage {per_stage}")
        print(f"  full-resolution full sequence {full:,}; pyramid's longest step {worst:,} ({full / worst:.2f}x fewer)")
        print(f"  mean step (equal steps per stage) {mean:,.0f} vs {full_ar:,.0f} for full-resolution "
              f"autoregression ({full_ar / mean:.2f}x fewer)")
        if T <= 5:
            for f, row in enumerate(per_step):
                print(f"  frame {f}: tokens by stage {row}")

    # 2. Renoising statistics at the paper's K = 3, on Moving MNIST frames used as 1-channel 64 x 64 latents.
    flow = PyramidFlow(stages=3)
    print(f"\nK=3 windows: start sigmas {[round(s, 4) for s in flow.start_sigmas]}, "
          f"ends {[round(e, 4) for e in flow.end_sigmas]}, timesteps {[round(t) for t in flow.t_hi]} -> 0")

    def blocks(x):  # one row per 2x2 block
        return rearrange(x, "b c t (h p) (w q) -> (b c t h w) (p q)", p=2, q=2)

    n = block_noise(torch.randn(64, 16, 1, 64, 64, dtype=torch.float64))
    cov = torch.cov(blocks(n).T)
    print(f"block noise: max |block sum| {blocks(n).sum(1).abs().max():.1e}, variance {cov.diag().mean():.4f} "
          f"(1), off-diagonal {(cov.sum() - cov.trace()) / 12:.4f} (-1/3)")
    dataset = MovingMNIST("train", num_frames=1, length=256, seed=0)
    video = torch.stack([dataset[i][0] for i in range(len(dataset))]).transpose(1, 2).double()  # (256, 1, 1, 64, 64)
    for k in (1, 2):
        x_k = down(video, flow.stages - 1 - k)
        coarse = up(down(x_k))  # stage k-1's clean latent, upsampled
        e = flow.end_sigmas[k - 1]
        jumped = flow.renoise(e * torch.randn_like(down(x_k)) + (1 - e) * down(x_k), k)
        s = flow.start_sigmas[k]
        start = s * torch.randn_like(x_k) + (1 - s) * coarse  # the training start of stage k
        noise_cov = torch.cov(blocks(jumped - (1 - s) * coarse).T)
        print(f"jump {k - 1}->{k}: alpha {flow.alphas[k]:.4f}, beta {flow.betas[k]:.4f}; noise std "
              f"{noise_cov.diag().mean().sqrt():.4f} vs s_k {s:.4f}; block covariance off-diagonal max "
              f"{(noise_cov - noise_cov.diag().diag()).abs().max():.4f} (upsampling alone: {e ** 2:.4f}); "
              f"std {jumped.std():.4f} vs training start {start.std():.4f}")

    # 3. The whole sampler driven by the exact velocity towards one known clip (a perfect model of a data set
    #    holding that clip alone): it must land on the clip. The picture shows each stage's start and midpoint.
    clip = MovingMNIST("train", num_frames=3, length=1, seed=1)[0][0][None].double()  # (1, 1, 3, 64, 64)
    snapshots = {}

    def oracle(x, t, ids, mask, history, causal):
        k = flow.stages - 1 - int(math.log2(clip.shape[-1] // x.shape[-1]))
        r = (float(t[0]) - flow.t_lo[k]) / (flow.t_hi[k] - flow.t_lo[k])
        x_k = down(clip[:, :, len(history):len(history) + 1], flow.stages - 1 - k)
        s, e = flow.start_sigmas[k], flow.end_sigmas[k]
        coarse = up(down(x_k)) if k > 0 else torch.zeros_like(x_k)
        # x = r start + (1 - r) end with start = s n + (1 - s) coarse, end = e n + (1 - e) x_k: solve for n.
        n = (x - r * (1 - s) * coarse - (1 - r) * (1 - e) * x_k) / (r * s + (1 - r) * e)
        snapshots[len(history), k, round(r, 3)] = x
        return (s - e) * n + (1 - s) * coarse - (1 - e) * x_k

    ids, mask = torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.bool)
    out = flow.sample(oracle, clip.shape, dict(ids=ids, mask=mask), steps=2)
    print(f"\noracle sampling, K=3, 2 steps per stage: max |sample - clip| = {(out - clip).abs().max():.1e}")
    rows = []
    for f in range(clip.shape[2]):
        tiles = [snapshots[f, k, r] for k in range(flow.stages) for r in (1.0, 0.5)] + [out[:, :, f:f + 1]]
        tiles = [F.interpolate(x[0, :, 0][None], size=(64, 64), mode="nearest")[0, 0] for x in tiles]
        rows.append(torch.cat(tiles, dim=1))  # (64, 64 * 7)
    picture = ((torch.cat(rows, dim=0).clamp(-1, 1) + 1) * 127.5).byte().numpy()
    Image.fromarray(picture).save("runs/demo/05_pyramid.png")
    print("rows: frames; columns: stage 0, 1, 2 at r = 1 and 0.5, then the result -> runs/demo/05_pyramid.png")
