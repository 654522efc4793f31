"""01_vae.py: a causal 3D convolutional VAE (CogVideoX, HunyuanVideo).

A video VAE compresses pixels (B, C, T, H, W) into latents (B, c, 1 + (T - 1) / tc, H / s, W / s)
that the diffusion transformer of 02_dit.py learns to generate. Four ideas:

1. Causal in time. Every 3D conv pads time at the front only, by repeating the first frame,
   so output frame t sees input frames <= t. Frame 0 gets a latent of its own, so an image
   is a 1-frame video and 1 + tc*k frames map to 1 + k latent frames (CogVideoX: tc = 4).
2. Per-frame normalisation. GroupNorm over (T, H, W) mixes the future into the past: the VAEs of
   CogVideoX and HunyuanVideo both normalise over the clip, so neither is strictly causal and a
   chunked encode differs from the single pass. Normalising each frame on its own makes both exact.
3. Chunks with a conv cache. Each causal conv keeps the last frames of its input for the next
   chunk (ChunkCache), so a long video streams through in pieces and matches the single pass;
   06_parallel.py runs the pieces at once, one per rank (context parallelism).
4. Shortcuts around every change of shape (DC-AE, Chen et al. 2025): average when going down,
   repeat when going up, so the convs only learn a residual. DC-AE needs them to train at
   high compression; here they are what lets a CPU budget of a few thousand steps suffice.

Options, the designs the course compares (the defaults are the above): where time is compressed and expanded
(time_compress_at, time_expand_at; CogVideoX changes time in the first levels of encoder and decoder,
HunyuanVideo in the last of each); norm="clip", GroupNorm over the clip as both papers ship it; bottleneck="fsq",
finite scalar quantization (Mentzer et al. 2023) in place of the Gaussian.

    python 01_vae.py    # trains a small VAE on Moving MNIST on CPU, prints PSNR, writes a GIF
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange


class CausalConv3d(nn.Module):
    """Conv3d padded causally in time (repeating frame 0) and with zeros in space. With a `cache` (ChunkCache, or
    06_parallel's ContextParallel) it streams: a piece after the first is front-padded with the last k_t - s_t padded
    input frames of the piece before, the frames a single pass would see, so the joined outputs equal it."""

    def __init__(self, cin, cout, kernel=3, stride=1):
        super().__init__()
        kt, kh, kw = (kernel,) * 3 if isinstance(kernel, int) else kernel
        st, sh, sw = (stride,) * 3 if isinstance(stride, int) else stride
        self.front = kt - 1   # frames of padding at the start of the video
        self.keep = kt - st   # frames the next piece needs from this one
        self.conv = nn.Conv3d(cin, cout, (kt, kh, kw), stride=(st, sh, sw), padding=(0, kh // 2, kw // 2))

    def forward(self, x, cache=None):  # x: (B, C, T, H, W)
        front = x[:, :, :1].expand(-1, -1, self.front, -1, -1)  # start of the video: repeat frame 0
        if cache is not None:
            front = cache.front(self, front)  # unless a piece came before: its last `keep` frames
        x = torch.cat([front, x], dim=2)
        if cache is not None:
            cache.keep(self, x[:, :, x.shape[2] - self.keep:])
        return self.conv(x)


class ChunkCache:
    """The causal convs' cache protocol, for one video streamed in chunks by one process: front(conv, first) gives the
    frames before this chunk (`first`, frame 0 repeated, at the start), keep(conv, tail) stores a conv's last input
    frames for the next chunk, starts_video(conv) says if frame 0 is in this chunk (for the up- and downsamplers).
    06_parallel.ContextParallel answers the same three calls with the previous rank's frames instead."""

    def __init__(self):
        self.tails = {}

    def front(self, conv, first):
        return self.tails.get(conv, first)

    def keep(self, conv, tail):
        self.tails[conv] = tail

    def starts_video(self, conv):
        return conv not in self.tails


class FrameNorm(nn.GroupNorm):
    """GroupNorm over (C / groups, H, W) of each frame: the statistics never mix frames."""

    def forward(self, x):  # x: (B, C, T, H, W)
        b = x.shape[0]
        x = super().forward(rearrange(x, "b c t h w -> (b t) c h w"))
        return rearrange(x, "(b t) c h w -> b c t h w", b=b)


class ResBlock(nn.Module):
    def __init__(self, cin, cout, norm=FrameNorm, groups=8):
        super().__init__()
        self.norm1, self.conv1 = norm(groups, cin), CausalConv3d(cin, cout)
        self.norm2, self.conv2 = norm(groups, cout), CausalConv3d(cout, cout)
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, cache=None):
        h = self.conv1(F.silu(self.norm1(x)), cache)
        h = self.conv2(F.silu(self.norm2(h)), cache)
        return self.skip(x) + h


class Downsample(nn.Module):
    """Halve H and W, and T too if `time`: a strided causal conv (HunyuanVideo) plus an average. In time the
    shortcut averages [x0], [x1, x2], [x3, x4], ... (CogVideoX's downsampler: the first frame on its own,
    1 + 2k -> 1 + k); the conv, stride 2 over [x0, x0, x0, x1, x2, ...], sees [x0, x0, x0], [x0, x1, x2], ..."""

    def __init__(self, channels, time):
        super().__init__()
        self.time, self.conv = time, CausalConv3d(channels, channels, 3, stride=(2 if time else 1, 2, 2))

    def forward(self, x, cache=None):  # x: (B, C, T, H, W)
        at_start = cache is None or cache.starts_video(self.conv)
        skip = F.avg_pool3d(x, (1, 2, 2))
        if self.time:
            first, rest = (skip[:, :, :1], skip[:, :, 1:]) if at_start else (skip[:, :, :0], skip)
            skip = torch.cat([first, rest.unflatten(2, (-1, 2)).mean(3)], dim=2)
        return skip + self.conv(x, cache)  # (B, C, T', H/2, W/2)


class Upsample(nn.Module):
    """Double H and W, and T too if `time`: repeat (nearest), then add a conv of the result. In time every frame is
    repeated and the copy of frame 0 dropped, 1 + k -> 1 + 2k: latent frame 0 decodes to frame 0 alone (CogVideoX)."""

    def __init__(self, channels, time):
        super().__init__()
        self.time, self.conv = time, CausalConv3d(channels, channels, 3)

    def forward(self, x, cache=None):  # x: (B, C, T, H, W)
        at_start = cache is None or cache.starts_video(self.conv)
        x = F.interpolate(x, scale_factor=(2 if self.time else 1, 2, 2), mode="nearest")
        x = x[:, :, 1:] if self.time and at_start else x  # frame 0's copy dropped
        return x + self.conv(x, cache)  # (B, C, T', 2H, 2W)


def group_mean(x, channels):  # neighbouring channels averaged down to `channels`: DC-AE's shortcut
    return x.unflatten(1, (channels, -1)).mean(2)


class Encoder(nn.Module):
    def __init__(self, in_channels, channels, latent_channels, layers_per_block, time_at, patch, norm, moments):
        super().__init__()
        self.patch, self.latent_channels = patch, latent_channels
        self.conv_in = CausalConv3d(in_channels * patch * patch, channels[0])
        self.blocks = nn.ModuleList()
        for i, ch in enumerate(channels):
            for j in range(layers_per_block):
                self.blocks.append(ResBlock(channels[max(i - 1, 0)] if j == 0 else ch, ch, norm))
            if i < len(channels) - 1:
                self.blocks.append(Downsample(ch, time=time_at[i]))
        self.mid = ResBlock(channels[-1], channels[-1], norm)
        # the mean, and the log-variance for KL
        self.norm_out, self.conv_out = norm(8, channels[-1]), CausalConv3d(channels[-1], moments * latent_channels)

    def forward(self, x, cache=None):  # x: (B, C, T, H, W)
        # patchify p x p pixels into channels (LTX-Video): the convs then run at H/p, far cheaper
        x = rearrange(x, "b c t (h p) (w q) -> b (c p q) t h w", p=self.patch, q=self.patch)
        x = self.conv_in(x, cache) + x.repeat_interleave(self.conv_in.conv.out_channels // x.shape[1], dim=1)
        for block in self.blocks:
            x = block(x, cache)
        x = self.mid(x, cache)                                     # (B, ch, t, h, w)
        moments, c = self.conv_out(F.silu(self.norm_out(x)), cache), self.latent_channels
        return torch.cat([moments[:, :c] + group_mean(x, c), moments[:, c:]], dim=1)  # the mean with a shortcut


class Decoder(nn.Module):
    def __init__(self, out_channels, channels, latent_channels, layers_per_block, time_up, patch, norm):
        super().__init__()
        self.patch, self.out_channels = patch, out_channels
        self.conv_in, self.mid = CausalConv3d(latent_channels, channels[-1]), ResBlock(channels[-1], channels[-1], norm)
        self.blocks, n = nn.ModuleList(), len(channels) - 1
        for i in reversed(range(len(channels))):
            for j in range(layers_per_block):
                self.blocks.append(ResBlock(channels[min(i + 1, n)] if j == 0 else channels[i], channels[i], norm))
            if i > 0:  # upsampling n - i of n, counted from the lowest resolution
                self.blocks.append(Upsample(channels[i], time=time_up[n - i]))
        self.norm_out, self.conv_out = norm(8, channels[0]), CausalConv3d(channels[0], out_channels * patch * patch)

    def forward(self, z, cache=None):  # z: (B, c, t, h, w)
        # shortcuts: the latent channels repeated up to the width, the width averaged down to patch pixels
        x = self.conv_in(z, cache) + z.repeat_interleave(self.conv_in.conv.out_channels // z.shape[1], dim=1)
        x = self.mid(x, cache)
        for block in self.blocks:
            x = block(x, cache)
        x = self.conv_out(F.silu(self.norm_out(x)), cache) + group_mean(x, self.out_channels * self.patch ** 2)
        return rearrange(x, "b (c p q) t h w -> b c t (h p) (w q)", p=self.patch, q=self.patch)


class DiagonalGaussian:
    """The posterior q(z | x) = N(mean, diag(exp(logvar))) (Kingma & Welling 2014)."""

    def __init__(self, mean, logvar):
        self.mean, self.logvar = mean, logvar.clamp(-30.0, 20.0)

    def sample(self, generator=None):
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + torch.exp(0.5 * self.logvar) * noise

    def mode(self):
        return self.mean

    def kl(self):  # KL(q || N(0, I)) summed over (c, t, h, w): one number per video, shape (B,)
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar).flatten(1).sum(1)


class FSQ:
    """Finite scalar quantization (Mentzer et al. 2023): channel i of z is bounded to L_i levels and rounded. The
    codebook is the grid itself, prod(L_i) points: nothing to learn and no unused entries to die, as in VQ-VAE's.
    Each latent position is one token of it, what an autoregressive video model would predict."""

    def __init__(self, levels):
        self.levels, self.codebook_size = list(levels), math.prod(levels)

    def grid(self, device):  # (L - 1) / 2 per channel, and 1/2 for an even L, whose grid is the half-integers
        half = (torch.tensor(self.levels, device=device).view(-1, 1, 1, 1) - 1) / 2
        return half, half % 1

    def __call__(self, z):  # z: (B, c, t, h, w) -> the same, each channel on L values from -1 to 1
        half, offset = self.grid(z.device)
        y = half * torch.tanh(z)  # rounds to L values symmetric about 0: -2..2 for L = 5, -1.5..1.5 for L = 4
        return ((y + offset).round() - offset + (y - y.detach())) / half  # straight-through: dy/dz passes the round

    def codes(self, z):  # a latent, or any (B, c, t, h, w) -> the integer codes in [0, L - 1] of the nearest point
        half, offset = self.grid(z.device)
        return ((z.clamp(-1, 1) * half + offset).round() - offset + half).long()

    def dequantize(self, codes):  # the inverse of codes() on the grid
        half, _ = self.grid(codes.device)
        return (codes - half) / half


class Quantized(DiagonalGaussian):
    """FSQ's posterior, a point mass: sample() = mode(), and no KL term, as the rounding already bounds
    the information (log2 prod(L_i) bits per latent position) that the KL term of a Gaussian prices."""

    def __init__(self, z):
        self.mean = z

    def sample(self, generator=None):
        return self.mean

    def kl(self):
        return self.mean.new_zeros(self.mean.shape[0])


class CausalVAE(nn.Module):
    """Causal 3D VAE: space compression patch * 2^(len(channels) - 1), time compression a power of two done in
    log2(time_compression) of the levels (which: the options, module docstring)."""

    def __init__(self, in_channels=1, channels=(32, 64, 128), latent_channels=16, layers_per_block=1,
                 time_compression=4, patch=2, time_compress_at="last", time_expand_at="first", norm="frame",
                 bottleneck="kl", fsq_levels=5):
        super().__init__()
        options = dict(time_compress_at=(time_compress_at, "last first"), time_expand_at=(time_expand_at, "last first"),
                       norm=(norm, "frame clip"), bottleneck=(bottleneck, "kl fsq"))
        for name, (value, allowed) in options.items():
            if value not in allowed.split():
                raise ValueError(f"{name} must be one of {', '.join(allowed.split())}, got {value!r}")
        time_levels, n = int(math.log2(time_compression)), len(channels) - 1
        if 2 ** time_levels != time_compression or time_levels > n:
            raise ValueError(f"time_compression must be a power of two up to 2 ** (len(channels) - 1) = "
                             f"{2 ** n}, got {time_compression}")
        if channels[0] % (in_channels * patch * patch) or channels[-1] % latent_channels:
            need = f"channels[0] divisible by {patch ** 2 * in_channels} (patch^2 x in_channels)"
            raise ValueError(f"the shortcuts need {need}, channels[-1] by latent_channels = {latent_channels}; got "
                             f"{list(channels)}")
        levels = [fsq_levels] if isinstance(fsq_levels, int) else list(fsq_levels)
        levels = levels * latent_channels if len(levels) == 1 else levels
        if bottleneck == "fsq" and (len(levels) != latent_channels or min(levels) < 2):
            raise ValueError(f"fsq_levels takes one number of levels >= 2, or one per latent channel "
                             f"({latent_channels}), got {fsq_levels}")
        self.in_channels, self.latent_channels, self.time_compression = in_channels, latent_channels, time_compression
        self.space_compression = patch * 2 ** (len(channels) - 1)
        # Where time changes, counted from the encoder's full resolution and the decoder's lowest: CogVideoX
        # (first, first), HunyuanVideo (last, last); the default (last, first) changes time at the lowest
        # resolution on both sides. With as many time levels as levels (tiny.yaml) all four are one network.
        time_down = [i < time_levels if time_compress_at == "first" else i >= n - time_levels for i in range(n)]
        time_up = [j < time_levels if time_expand_at == "first" else j >= n - time_levels for j in range(n)]
        norm_layer = FrameNorm if norm == "frame" else nn.GroupNorm  # over (C/groups, T, H, W); the weights named alike
        self.fsq = FSQ(levels) if bottleneck == "fsq" else None
        self.encoder = Encoder(in_channels, channels, latent_channels, layers_per_block, time_down, patch, norm_layer,
                               moments=2 if self.fsq is None else 1)
        self.decoder = Decoder(in_channels, channels, latent_channels, layers_per_block, time_up, patch, norm_layer)
        self.register_buffer("scaling_factor", torch.tensor(1.0))  # 1 / the latents' std after training (LDM)

    def check_video(self, x, first=True):  # first: the piece holds frame 0 (a whole video does)
        tc, s = self.time_compression, self.space_compression
        if x.ndim != 5 or x.shape[1] != self.in_channels or x.shape[3] % s or x.shape[4] % s:
            raise ValueError(f"expected a video (B, {self.in_channels}, T, H, W) with H and W divisible by the "
                             f"spatial compression {s}, got shape {tuple(x.shape)}")
        if first and (x.shape[2] - 1) % tc:
            raise ValueError(f"this VAE takes 1 + {tc}k frames ({', '.join(str(1 + tc * k) for k in range(5))}, "
                             f"...), got {x.shape[2]}")
        if not first and (x.shape[2] % tc or x.shape[2] == 0):  # a piece after the first has no frame 0
            raise ValueError(f"a piece after the first takes {tc}k frames, k >= 1, got {x.shape[2]}")

    def encode(self, x, chunk=None, cache=None):
        """x (B, C, 1 + tc*k, H, W) in [-1, 1] -> posterior over (B, c, 1 + k, H/s, W/s): a DiagonalGaussian, or
        for bottleneck="fsq" a Quantized one. chunk (latent frames): stream the video in pieces of chunk * tc frames
        (the first also gets frame 0) through a ChunkCache: the same result in the memory of a chunk. cache: x is one
        piece of a longer video, cache holds what came before (a ChunkCache, or 06_parallel's ContextParallel,
        another rank's piece). With norm="clip" both run, approximately: each piece has its own statistics."""
        self.check_video(x, first=cache is None or cache.starts_video(self.encoder.conv_in))
        if chunk is None:
            moments = self.encoder(x, cache)
        elif chunk < 1:
            raise ValueError(f"chunk is a number of latent frames >= 1, got {chunk}")
        else:
            n, cache = chunk * self.time_compression, ChunkCache()
            pieces = [x[:, :, :1 + n]] + [p for p in x[:, :, 1 + n:].split(n, dim=2) if p.shape[2]]
            moments = torch.cat([self.encoder(piece, cache) for piece in pieces], dim=2)
        moments = moments.float()  # (B, 2c, t, h, w): mean and log-variance; (B, c, t, h, w) for FSQ
        return DiagonalGaussian(*moments.chunk(2, dim=1)) if self.fsq is None else Quantized(self.fsq(moments))

    def decode(self, z, chunk=None, cache=None):
        """z (B, c, 1 + k, h, w) -> video (B, C, 1 + tc*k, h*s, w*s); chunk and cache as in encode. An FSQ
        latent is first snapped to the grid (a DiT's output is not on it), as the decoder saw nothing else."""
        if z.ndim != 5 or z.shape[1] != self.latent_channels:
            raise ValueError(f"expected latents (B, {self.latent_channels}, t, h, w), got shape {tuple(z.shape)}")
        if self.fsq is not None:
            z = self.fsq.dequantize(self.fsq.codes(z)).to(z.dtype)
        if chunk is None:
            return self.decoder(z, cache)
        cache = ChunkCache()
        return torch.cat([self.decoder(piece, cache) for piece in z.split(chunk, dim=2)], dim=2)

    def forward(self, x, generator=None):  # training: the decoder itself, as FSQ's sample is on its grid already
        posterior = self.encode(x)
        return self.decoder(posterior.sample(generator)), posterior

    @property
    def last_layer(self):  # the decoder's last weight, where VAELoss weighs the GAN gradient against the recon one
        return self.decoder.conv_out.conv.weight


# ----------------------------------------------------------------------------- losses
class Discriminator3D(nn.Module):
    """A 3D PatchGAN: one real/fake logit per space-time patch (pix2pix, in 3D)."""

    def __init__(self, in_channels=1, channels=(32, 64, 128)):
        super().__init__()
        layers, cin = [], in_channels
        for i, ch in enumerate(channels):
            layers.append(nn.Conv3d(cin, ch, 3, stride=2, padding=1))
            if i > 0:
                layers.append(nn.GroupNorm(8, ch))
            layers.append(nn.LeakyReLU(0.2))
            cin = ch
        layers.append(nn.Conv3d(cin, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)  # (B, 1, t, h, w) logits


class VAELoss(nn.Module):
    """Reconstruction + kl_weight * KL, plus an adaptive hinge GAN term from disc_start on. Reconstruction:
    l1_weight |x - x_hat| + l2_weight (x - x_hat)^2 per pixel, digit pixels weighed 1 + fg_weight (Moving MNIST is
    96% black: L1 alone settles on black frames). The GAN term's backward also leaves gradients on the
    discriminator's weights: zero them before its own step."""

    def __init__(self, l1_weight=0.0, l2_weight=1.0, fg_weight=0.0, kl_weight=1e-6, gan_weight=0.0, disc_start=0,
                 in_channels=1):
        super().__init__()
        self.l1_weight, self.l2_weight, self.fg_weight, self.kl_weight = l1_weight, l2_weight, fg_weight, kl_weight
        self.gan_weight, self.disc_start = gan_weight, disc_start
        self.disc = Discriminator3D(in_channels) if gan_weight > 0 else None

    def adaptive_weight(self, rec, gan, last_layer):
        """lambda = |grad rec| / |grad gan| at the decoder's last layer (VQGAN, Esser et al. 2021)."""
        g_rec = torch.autograd.grad(rec, last_layer, retain_graph=True)[0]
        g_gan = torch.autograd.grad(gan, last_layer, retain_graph=True)[0]
        return (g_rec.norm() / (g_gan.norm() + 1e-4)).clamp(0.0, 1e4).detach()

    def forward(self, x, recon, posterior, step, last_layer=None):
        x, recon = x.float(), recon.float()
        weight = 1.0 + self.fg_weight * (x + 1.0) / 2.0  # 1 on black, 1 + fg_weight on white
        rec = (weight * (self.l1_weight * (recon - x).abs() + self.l2_weight * (recon - x).pow(2))).mean()
        # KL summed over the latents and divided by the pixels: kl_weight means what it does in LDM
        kl = posterior.kl().mean() / x[0].numel()
        loss, logs = rec + self.kl_weight * kl, {"rec": rec.item(), "kl": kl.item()}
        if self.disc is not None and step >= self.disc_start:
            gan = -self.disc(recon).mean()
            grads = torch.is_grad_enabled() and last_layer is not None
            lam = self.adaptive_weight(rec, gan, last_layer) if grads else torch.tensor(1.0)
            loss = loss + self.gan_weight * lam * gan
            logs.update(gan=gan.item(), gan_lambda=lam.item())
        logs["loss"] = loss.item()
        return loss, logs

    def disc_loss(self, x, recon, step, disc=None):
        """Hinge loss for the discriminator's own optimizer, None before disc_start; disc: e.g. its DDP wrapper."""
        if self.disc is None or step < self.disc_start:
            return None
        disc = self.disc if disc is None else disc
        real, fake = disc(x.float()), disc(recon.detach().float())
        return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()


@torch.no_grad()
def measure_scaling_factor(vae, videos):
    """1 / std of the latent means of `videos` (one batch or a list of batches)."""
    videos = [videos] if torch.is_tensor(videos) else videos
    z = torch.cat([vae.encode(v).mode().flatten() for v in videos])
    return 1.0 / z.std().item()


def psnr(x, y):
    """PSNR in dB per video of two videos in [-1, 1], measured on [0, 1] pixels: shape (B,)."""
    mse = ((x.float().clamp(-1, 1) - y.float().clamp(-1, 1)) / 2).pow(2).flatten(1).mean(1)
    return -10 * torch.log10(mse)


# ----------------------------------------------------------------------------- demo
if __name__ == "__main__":
    import os
    import time

    from data.config import native_bf16
    from data.moving_mnist import MovingMNIST, save_gif
    from data.schedule import lr_at

    torch.manual_seed(0)
    # bf16 autocast where the CPU has it in hardware (AVX512-BF16, AMX): 1200 steps in about 2 minutes (4000 reach ~28
    # dB); emulated bf16 is far slower than fp32, so elsewhere fp32 and fewer steps
    bf16 = native_bf16(torch.device("cpu"))
    steps, batch, lr = 1200 if bf16 else 400, 2, 1e-3
    vae, loss_fn = CausalVAE(channels=(64, 128), latent_channels=16, patch=4, time_compression=2), VAELoss()
    opt, start = torch.optim.AdamW(vae.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0), time.time()
    # 9-frame training clips: causal and convolutional, the VAE then runs on any 1 + 2k frames
    train, val = MovingMNIST("train", num_frames=9, length=steps * batch), MovingMNIST("val", num_frames=17, length=16)
    print(f"{sum(p.numel() for p in vae.parameters()) / 1e6:.2f}M parameters, "
          f"{vae.time_compression}x time and {vae.space_compression}x space compression")
    for step in range(steps):
        x = torch.stack([train[step * batch + i][0] for i in range(batch)])  # (B, 1, 9, 64, 64)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, lr, 50, steps)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, logs = loss_fn(x, *vae(x), step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step:4d}  loss {logs['loss']:.4f}  {time.time() - start:.0f}s")
    x = torch.stack([val[i][0] for i in range(len(val))])  # (16, 1, 17, 64, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        recon = vae.eval().decode(vae.encode(x).mode()).float()
    print(f"validation PSNR {psnr(x, recon).mean():.2f} dB on 17-frame videos (all-black frames: "
          f"{psnr(x, torch.full_like(x, -1.0)).mean():.2f} dB)")
    tokens = (1 + 16 // vae.time_compression) * (64 // vae.space_compression) ** 2  # latent positions of a video
    print(f"as FSQ tokens (5 levels a channel) a 17-frame video is {tokens} of a codebook of {5 ** 16:,}")
    os.makedirs("runs/demo", exist_ok=True)
    save_gif("runs/demo/vae.gif", torch.cat([torch.cat([x[i], recon[i]], dim=-1) for i in range(4)], dim=-2))
    print("wrote runs/demo/vae.gif (left: original, right: reconstruction)")
