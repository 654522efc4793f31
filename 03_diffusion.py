"""DDPM the CogVideoX way: v-prediction, zero terminal SNR, explicit uniform sampling, DDIM.

A diffusion model (DDPM, Ho et al. 2020, whose symbols this file uses) learns to undo the forward process

    q(x_t | x0) = N(sqrt(a_t) x0, (1 - a_t) I),   a_t = alpha_bar_t = prod_{s <= t} (1 - beta_s),

with t = 0 .. T-1 running from almost clean to pure noise. CogVideoX (Yang et al. 2024) trains it with:
- a scaled-linear beta schedule (Stable Diffusion's), optionally SNR-shifted, rescaled to zero terminal SNR
  (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps Are Flawed"): without the rescale
  the last training step still keeps sqrt(a_T) = 0.068 of the signal while sampling starts from pure
  noise, and the model never learns to make very dark or very bright frames;
- v-prediction (Salimans & Ho 2022): the network predicts v = sqrt(a) eps - sqrt(1 - a) x0, which at
  a = 0 is -x0, a useful target, where eps-prediction would be asked for the noise it is given;
- explicit uniform sampling: each global batch covers the T steps evenly, so the loss is less noisy;
- DDIM (Song et al. 2021) with trailing timestep spacing, which starts at the pure-noise step.
Classifier-free guidance (Ho & Salimans 2022) needs a "no caption" input; its helpers live here and
serve every objective, with Lin et al.'s guidance rescale, which zero terminal SNR needs at high guidance.
CogVideoX-I2V's first-frame input for training (image_condition) lives beside them: it is dropped the same way.

    python 03_diffusion.py    # prints and draws the noise schedules (runs/demo/schedules.png)
    python 04_flow.py         # trains this DDPM and 04's flow on a 2-D toy and compares them
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from data.tokenizer import PAD


def scaled_linear_alphas_cumprod(num_steps=1000, beta_start=0.00085, beta_end=0.012, snr_shift=1.0,
                                 zero_terminal_snr=True):
    """a_t = alpha_bar_t for t = 0 .. num_steps - 1, in float64."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_steps, dtype=torch.float64) ** 2
    a = torch.cumprod(1 - betas, dim=0)
    # SNR shift (CogVideoX): a / (s + (1 - s) a) turns SNR = a / (1 - a) into SNR / s at every step. A video
    # has many correlated pixels, so it keeps its content at noise levels that destroy an image: s > 1
    # spends more of training at high noise.
    a = a / (snr_shift + (1 - snr_shift) * a)
    if zero_terminal_snr:
        # Lin et al. 2023, Algorithm 1: shift sqrt(a_t) down so the last step is exactly 0, then scale so
        # the first step is unchanged. The last step becomes pure noise, beta_T = 1.
        sqrt_a = a.sqrt()
        sqrt_a = (sqrt_a - sqrt_a[-1]) * sqrt_a[0] / (sqrt_a[0] - sqrt_a[-1])
        a = sqrt_a ** 2
    return a


def global_index(local_batch, rank, world_size, device=None):
    """Where this rank's samples sit in the global batch: rank r holds r * local_batch .. (r + 1) * local_batch - 1."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return rank * local_batch + torch.arange(local_batch, device=device)  # (local_batch,)


def explicit_uniform_timesteps(local_batch, num_steps, rank=0, world_size=1, generator=None, device=None):
    """Integer steps in [0, num_steps) for this rank's slice of the global batch.

    Explicit uniform sampling (CogVideoX): split [0, T) into n = world_size * local_batch equal intervals;
    sample i of the global batch draws uniformly from interval i. CogVideoX ties n to the ranks (one interval
    per rank); one interval per sample also works on one process. Each rank draws only its own slice, so no
    communication is needed.
    """
    n = world_size * local_batch
    i = global_index(local_batch, rank, world_size, device)
    # floor((i + u) T / n) with u uniform on the grid k / T, k = 0 .. T-1, in integer arithmetic so no
    # rounding can push a step into the next interval. Over the global batch every step has probability
    # exactly 1 / T, for any n (n need not divide T, and may exceed it).
    k = torch.randint(num_steps, (local_batch,), generator=generator, device=device)
    return (i * num_steps + k) // n  # (B,)


def v_target(x0, eps, a):
    """v = sqrt(a) eps - sqrt(1 - a) x0 (Salimans & Ho 2022, with their alpha = sqrt(a), sigma = sqrt(1 - a))."""
    return a ** 0.5 * eps - (1 - a) ** 0.5 * x0


def x0_eps_from_v(x_t, v, a):
    """Invert (x_t, v) -> (x0, eps), exact for every a in [0, 1].

    With c = sqrt(a), s = sqrt(1 - a) and c^2 + s^2 = 1, (x_t, v) = (c x0 + s eps, c eps - s x0) is a
    rotation of (x0, eps), so the inverse is the transposed rotation: no division anywhere. At the zero-SNR
    step (a = 0) this gives x0 = -v, all of it the model's work, and eps = x_t exactly whatever the model
    says, as it should be: x_T is the noise. The eps-prediction formulas, x0 = (x_t - s eps) / c and DDPM's
    Algorithm 2, divide by c or by sqrt(alpha_T) = 0 there, which is why Lin et al. pair zero terminal SNR
    with v-prediction.
    """
    return a ** 0.5 * x_t - (1 - a) ** 0.5 * v, (1 - a) ** 0.5 * x_t + a ** 0.5 * v


def rescale_guidance(guided, pred_c, phi):
    """Guidance rescale (Lin et al. 2023, section 3.4): a large cfg inflates the prediction's scale, and with
    zero terminal SNR that overexposes the frames. Rescale each sample's guided prediction to the standard
    deviation of the conditional one, then mix: phi * rescaled + (1 - phi) * guided (phi = 0.7 in the paper;
    0 is plain CFG). Applied to the model's output, v here and the velocity in 04 and 05, as diffusers does."""
    if phi == 0:
        return guided
    dims = list(range(1, guided.dim()))
    rescaled = guided * pred_c.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True).clamp_min(1e-8)
    return phi * rescaled + (1 - phi) * guided


def guided_prediction(model, x, t, cond, uncond, cfg, rescale=0.0):
    """Classifier-free guidance (Ho & Salimans 2022): pred_u + cfg (pred_c - pred_u), optionally rescaled.

    One forward over the batch [cond; uncond] rather than two calls, so the model sees one big batch.
    cfg == 1 is the conditional prediction alone, and skips the unconditional half. An input that guidance
    should leave alone goes into both halves unchanged, as CogVideoX's sample_video.py does with the I2V image:
    then pred_c - pred_u is the caption's effect alone.
    """
    if cfg == 1.0:
        return model(x, t, **cond)
    if uncond is None or uncond.keys() != cond.keys():
        raise ValueError(f"cfg={cfg} needs uncond with the same keys as cond ({sorted(cond)}), got "
                         f"{None if uncond is None else sorted(uncond)}")
    both = {k: torch.cat([cond[k], uncond[k]]) for k in cond}
    pred_c, pred_u = model(torch.cat([x, x]), torch.cat([t, t]), **both).chunk(2)
    return rescale_guidance(pred_u + cfg * (pred_c - pred_u), pred_c, rescale)


def device_of(cond):
    """Where the sampler puts its noise: the conditioning's device (cond["ids"] in train.py); CPU for none."""
    return next((c.device for c in cond.values() if torch.is_tensor(c)), torch.device("cpu"))


def null_caption(batch, max_len, device=None):
    """The caption of "no caption" for CFG: all PAD, with position 0 visible so no attention row is empty."""
    ids = torch.full((batch, max_len), PAD, dtype=torch.long, device=device)
    mask = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
    mask[:, 0] = True
    return ids, mask


def drop_captions(ids, mask, p, generator=None):
    """Replace each caption by the null caption with probability p (CogVideoX: p = 0.1), so one model
    learns both the conditional and the unconditional prediction that CFG mixes. Returns new tensors."""
    if not 0 <= p <= 1:
        raise ValueError(f"caption dropout p must be in [0, 1], got {p}")
    drop = torch.rand(ids.shape[0], generator=generator, device=ids.device) < p  # (B,)
    null_ids, null_mask = null_caption(ids.shape[0], ids.shape[1], ids.device)
    return torch.where(drop[:, None], null_ids, ids), torch.where(drop[:, None], null_mask, mask)


def image_condition(x0, p_drop, log_sigma_mean=-3.0, log_sigma_std=0.5, generator=None):
    """CogVideoX-I2V's image input for training, model(..., image=...): the first latent frame of x0
    (B, C, T, H, W), noise-augmented, and zeroed ("no image") with probability p_drop per sample, so that one
    model learns image-to-video and, where dropped, text-to-video. Returns (B, C, 1, H, W).

    Noise augmentation (THUDM/CogVideo sat/diffusion_video.py, add_noise_to_first_frame): image + sigma n with
    log sigma ~ N(-3, 0.5), so sigma is about 0.05. Always given the exact latent, the model could come to rely
    on its exactness; with a little noise it treats the image as evidence, and tolerates the frames it gets at
    sampling: an image from elsewhere, or its own generated frame when a long video is continued window by
    window (sample.py). CogVideoX noises pixels before its VAE; our latents are encoded once (train.py's
    cache), so the noise goes on the scaled latents, whose unit variance is comparable to the spread of pixels
    in [-1, 1]: sigma stays a small share of the signal. CogVideoX's dropout (noised_image_dropout, 0.05 in
    cogvideox_5b_i2v.yaml) zeroes a whole batch; here each sample draws its own, independently of
    drop_captions, so caption and image are each dropped, or both, or neither.
    """
    if not 0 <= p_drop <= 1:
        raise ValueError(f"image dropout p must be in [0, 1], got {p_drop}")
    B, shape = x0.shape[0], (-1, 1, 1, 1, 1)
    image = x0[:, :, :1]                                                                 # (B, C, 1, H, W)
    sigma = torch.exp(log_sigma_mean + log_sigma_std * torch.randn(B, generator=generator, device=x0.device))
    noise = torch.randn(image.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    keep = torch.rand(B, generator=generator, device=x0.device) >= p_drop                # (B,)
    return (image + sigma.view(shape).to(x0.dtype) * noise) * keep.view(shape).to(x0.dtype)


class GaussianDiffusion(nn.Module):
    """DDPM with v-prediction: loss(...) trains any model(x_t, t, **cond), sample(...) draws x0.

    An nn.Module only to carry the schedule as a buffer; .to(device) saves a small copy per training step.
    The model receives the integer step t = 0 .. T-1 as a float tensor (B,).
    """

    def __init__(self, num_steps=1000, beta_start=0.00085, beta_end=0.012, snr_shift=1.0,
                 zero_terminal_snr=True, sampler="ddim"):
        super().__init__()
        if num_steps < 2:
            raise ValueError(f"num_steps must be >= 2, got {num_steps}")
        if not 0 < beta_start < beta_end < 1:
            raise ValueError(f"need 0 < beta_start < beta_end < 1, got {beta_start}, {beta_end}")
        if snr_shift <= 0:
            raise ValueError(f"snr_shift must be > 0, got {snr_shift}")
        if sampler not in ("ddim", "ddpm"):
            raise ValueError(f"sampler must be 'ddim' or 'ddpm', got {sampler!r}")
        self.num_steps, self.sampler = num_steps, sampler
        a = scaled_linear_alphas_cumprod(num_steps, beta_start, beta_end, snr_shift, zero_terminal_snr)
        # float32, not float64, so the module can move to any device (MPS has no float64). Derived from the
        # arguments above, so not saved in state_dict.
        self.register_buffer("alphas_cumprod", a.float(), persistent=False)

    def loss(self, model, x0, cond, rank=0, world_size=1, generator=None):
        """Algorithm 1 (Ho et al. 2020) with v-prediction: ||v_hat(x_t, t) - v||^2 for x0 (B, ...)."""
        t = explicit_uniform_timesteps(x0.shape[0], self.num_steps, rank, world_size, generator, x0.device)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        # .to: a no-op once the module sits on x0's device, and no failure if nobody moved it there
        a = self.alphas_cumprod.to(x0.device)[t].view(-1, *[1] * (x0.dim() - 1)).to(x0.dtype)  # (B, 1, ...)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        pred = model(x_t, t.float(), **cond)
        return F.mse_loss(pred.float(), v_target(x0, eps, a).float())

    @torch.no_grad()
    def sample(self, model, shape, cond, uncond=None, steps=50, cfg=1.0, cfg_rescale=0.0, generator=None,
               progress=False, preview=None):
        """Draw x0 of the given shape from pure noise: DDIM (eta = 0) or ancestral DDPM (Algorithm 2).
        preview(i, steps, x0_hat): after step i, the model's current estimate of the clean sample.

        Both are one formula (Song et al. 2021, eq. 12) for a jump t -> s < t:
            x_s = sqrt(a_s) x0_hat + sqrt(1 - a_s - sigma^2) eps_hat + sigma z,
            sigma^2 = (1 - a_s) / (1 - a_t) (1 - a_t / a_s)   (DDPM)   or 0 (DDIM),
        where DDPM's sigma makes it a sample of the forward process' posterior q(x_s | x_t, x0 = x0_hat): the
        same as Algorithm 2 for s = t - 1, without its division by sqrt(alpha_t), which is 0 at t = T - 1.
        """
        if not 1 <= steps <= self.num_steps:
            raise ValueError(f"steps must be in [1, {self.num_steps}], got {steps}")
        device = device_of(cond)
        x = torch.randn(shape, generator=generator, device=device)
        # Trailing spacing (Lin et al. 2023, Sec. 3.3): the grid ends at T - 1, so sampling starts where
        # training put pure noise; "leading" spacing (0, 20, ..., 980 for 50 steps) never visits it.
        ts = ((torch.arange(steps, 0, -1) * self.num_steps / steps).round().long() - 1).tolist()
        a_table = self.alphas_cumprod.tolist()
        for i, t in enumerate(tqdm(ts, desc="ddpm" if self.sampler == "ddpm" else "ddim", disable=not progress)):
            a_t = a_table[t]
            a_s = a_table[ts[i + 1]] if i + 1 < steps else 1.0  # the last jump lands on clean data
            t_batch = torch.full((shape[0],), float(t), device=device)
            v = guided_prediction(model, x, t_batch, cond, uncond, cfg, cfg_rescale).float()
            x0, eps = x0_eps_from_v(x, v, a_t)
            if preview is not None:
                preview(i, steps, x0)
            sigma2 = (1 - a_s) / (1 - a_t) * (1 - a_t / a_s) if self.sampler == "ddpm" else 0.0
            x = a_s ** 0.5 * x0 + max(1 - a_s - sigma2, 0.0) ** 0.5 * eps
            if sigma2 > 0:
                x = x + sigma2 ** 0.5 * torch.randn(shape, generator=generator, device=device)
        return x


if __name__ == "__main__":
    import os

    from PIL import Image, ImageDraw

    schedules = {
        "scaled-linear (Stable Diffusion)": GaussianDiffusion(zero_terminal_snr=False),
        "+ zero terminal SNR (CogVideoX 5B)": GaussianDiffusion(),
        "+ SNR shift 3 (CogVideoX 2B)": GaussianDiffusion(snr_shift=3.0),
    }
    probe = (0, 250, 500, 750, 900, 999)
    print("log SNR = log(a / (1 - a)) at step t; sqrt(a_T) is the signal the last training step keeps")
    print(f"{'schedule':36s}" + "".join(f"{f't={t}':>9s}" for t in probe) + f"{'sqrt(a_T)':>11s}")
    curves = {}
    for name, d in schedules.items():
        a = d.alphas_cumprod.double()
        log_snr = (a / (1 - a)).log()  # -inf at the zero-SNR step
        curves[name] = log_snr.clamp(min=-16)
        print(f"{name:36s}" + "".join(f"{log_snr[t].item():9.2f}" for t in probe)
              + f"{a[-1].sqrt().item():11.4f}")
    trailing = ((torch.arange(10, 0, -1) * 1000 / 10).round().long() - 1).tolist()
    print(f"DDIM steps for 10-step sampling, trailing: {trailing} (leading would be {list(range(900, -1, -100))})")

    # log SNR against t, one coloured curve per schedule
    W, H, pad, lo, hi = 640, 360, 40, -16.0, 8.0
    img = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle([pad, pad, W - pad, H - pad], outline=(160, 160, 160))
    y_of = lambda v: pad + (hi - v) / (hi - lo) * (H - 2 * pad)  # noqa: E731
    for v in (-16, -8, 0, 8):
        draw.text((4, y_of(v) - 6), f"{v:+d}", fill="black")
    draw.text((pad, H - pad + 8), "t = 0", fill="black")
    draw.text((W - pad - 40, H - pad + 8), "t = 999", fill="black")
    draw.text((pad, 10), "log SNR(t); the zero-terminal-SNR curves drop to -inf at t = 999", fill="black")
    colours = [(120, 120, 120), (200, 40, 40), (40, 80, 200)]
    for k, ((name, curve), colour) in enumerate(zip(curves.items(), colours)):
        xs = [pad + t / 999 * (W - 2 * pad) for t in range(1000)]
        draw.line(list(zip(xs, [y_of(v) for v in curve.tolist()])), fill=colour, width=2)
        draw.text((pad + 10, H - pad - 60 + 16 * k), name, fill=colour)  # legend, bottom left
    os.makedirs("runs/demo", exist_ok=True)
    img.save("runs/demo/schedules.png")
    print("wrote runs/demo/schedules.png")
