"""07_distill.py: a video in one network pass a step, then in a few steps: guidance distillation (HunyuanVideo)
and reflow (Liu et al. 2022) on a trained flow DiT.

tiny.yaml's flow DiT samples a video with 50 Euler steps, each with classifier-free guidance (03): a conditional
and an unconditional pass, a hundred forward passes in all. Two fine-tuning stages cut that:

1. Guidance distillation (Meng et al. 2023, its first stage; HunyuanVideo ships its model distilled so). A student
   initialised from the teacher takes the guidance scale w as an input, embedded like the timestep (02's
   DiT(guidance_embed=True)), and learns the teacher's guided velocity in one pass, at the x_t, t of training:
       min || s(x_t, t, c, w) - [v(x_t, t, 0) + w (v(x_t, t, c) - v(x_t, t, 0))] ||^2,   w ~ U[w_min, w_max].
   Half the forward passes: HunyuanVideo reports about 1.9x faster sampling from it.
2. Reflow (rectified flow, Liu et al. 2022; InstaFlow uses it, and one round is enough, Lee et al. 2024). The
   stage-1 model's ODE carries noise z to a sample x1 along curved paths, which is why Euler needs many steps.
   Trained on the straight line between each such pair instead, x_t = (1 - t) x1 + t z with target z - x1,
   the field's paths straighten, and 1-4 Euler steps should land near where 25 curved ones did. At this
   scale they do not yet: on 2048 pairs the reflowed student at 4 steps named the digit less often than the
   stage-1 model sampled at 4 steps (0.637 against 0.697, docs/experiments.md); InstaFlow reflows millions.

Why reflow, of the ways to few steps: progressive distillation (Salimans & Ho 2022) takes log2(50) rounds, each
halving the steps; shortcut models (Frans et al. 2025) condition on the step size and train from scratch. Reflow
is one round, 04's objective unchanged, and its pairs cost one sampling run of the stage-1 model (a minute here).

    python 07_distill.py --config tiny.yaml --distill.teacher=runs/tiny/dit.pt --out_dir=runs/distill
    python sample.py --ckpt runs/distill/dit.pt --prompt "digit 3 is moving up and down"   # 2 steps, 1 pass each
    python bench.py quality --ckpt runs/distill/guidance.pt     # stage 1 alone, at the teacher's 50 steps
"""
import copy
import dataclasses
import importlib
import os

import torch
import torch.nn.functional as F

import train
from data.checkpoint import load_checkpoint, save_checkpoint
from data.config import autocast, check_dtype, config_from_dict, parse_args, pick_device
from data.tokenizer import Tokenizer
from sample import build_dit, build_objective

diffusion = importlib.import_module("03_diffusion")


def load_teacher(path, device):
    """(teacher DiT (EMA weights, frozen), its checkpoint, tokenizer, latents and captions of its run)."""
    ckpt = load_checkpoint(path, "dit")
    ckpt["config"] = config_from_dict(ckpt["config"])  # today's keys, the checkpoint's values
    d = ckpt["config"]["dit"]
    if d["objective"] != "flow" or d["guidance_embed"]:
        raise SystemExit(f"error: {path} is not an undistilled flow DiT: 07 distils dit.objective=flow checkpoints")
    cache = os.path.join(os.path.dirname(path), "latents.pt")
    if not os.path.isfile(cache):
        raise SystemExit(f"error: the training latents of {path} are not beside it ({cache}): distil a checkpoint "
                         "in the folder train.py wrote it to")
    data = torch.load(cache, weights_only=True)
    teacher = build_dit(d, ckpt["vocab_size"], ckpt["latent_shape"][0])
    teacher.load_state_dict(ckpt["ema"])
    tokenizer = Tokenizer.from_state_dict(ckpt["tokenizer"])
    ids, mask = tokenizer.encode(data["captions"], d["text_len"])
    return teacher.to(device).eval().requires_grad_(False), ckpt, data["latents"], ids, mask


def student_of(model, dit_config, vocab_size, device):
    """A copy of model's weights in a DiT with the guidance embedding, whose last layer starts at zero: at step 0
    the student is the teacher's conditional model, whatever w."""
    student = build_dit(dit_config | {"guidance_embed": True}, vocab_size, model.in_channels).to(device)
    missing, unexpected = student.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("g_embed.") for k in missing), (missing, unexpected)
    torch.nn.init.zeros_(student.g_embed[2].weight)
    torch.nn.init.zeros_(student.g_embed[2].bias)
    return student


@torch.no_grad()
def euler(model, z, ids, mask, w, steps, shift):
    """04's sampler on the distilled model, from a given noise z: t from 1 to 0 on the shifted grid, one pass a step."""
    ts = flow.shift_time(torch.linspace(1, 0, steps + 1, dtype=torch.float64), shift).tolist()
    guidance = torch.full((len(z),), float(w), device=z.device)
    for t, t_next in zip(ts[:-1], ts[1:]):
        z = z + (t_next - t) * model(z, torch.full((len(z),), 1000 * t, device=z.device), ids, mask,
                                     guidance=guidance).float()
    return z


def fine_tune(student, loss_fn, steps, cfg, out, stage):
    """AdamW on loss_fn(model, batch_index) for `steps` steps with an EMA copy, as train.py trains; returns the EMA."""
    device = next(student.parameters()).device
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.distill.lr, betas=(0.9, 0.99), weight_decay=0.0)
    scaler, ema = torch.amp.GradScaler(device.type, enabled=False), copy.deepcopy(student).requires_grad_(False)
    logger = train.Logger(dataclasses.replace(cfg, out_dir=out), 0, stage, 0, steps)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = train.schedule.lr_at(step, cfg.distill.lr, min(100, steps // 10), steps)
        loss, logs = train.train_step(student, opt, scaler, lambda m, i: (loss_fn(m), {}), [torch.zeros(1)], device,
                                      cfg.dtype, cfg.clip_grad)
        train.ema_update(ema, student, min(0.999, (1 + step) / (10 + step)))
        train.check_finite(loss, step, os.path.join(out, f"{stage}.pt"), logger)
        logger.step(step, loss, logs)
    logger.bar.close()
    return ema.eval()


def save(path, model, ckpt, cfg, w, steps, shift):
    """A dit.pt that sample.py, bench.py and 08_serve.py read like any other: the distilled EMA weights, the
    teacher's VAE and tokenizer, and a config that says how to sample it (one pass a step at guidance w)."""
    config = copy.deepcopy(ckpt["config"]) | {"distill": dataclasses.asdict(cfg.distill) | dict(sample_steps=steps)}
    config["dit"] |= dict(guidance_embed=True, sample_cfg=float(w), sample_shift=shift)
    keep = ("tokenizer", "vocab_size", "latent_shape", "vae", "vae_config", "scaling_factor")
    save_checkpoint(path, dict(kind="dit", step=ckpt["step"], config=config, ema=model.state_dict(),
                               **{k: ckpt[k] for k in keep}))
    print(f"wrote {path}")


def main(argv=None):
    cfg, _ = parse_args(argv, description=__doc__)
    dc, out = cfg.distill, cfg.out_dir
    if not dc.teacher:
        raise SystemExit("error: give the flow DiT to distil: --distill.teacher=runs/tiny/dit.pt")
    device = pick_device(cfg.device)
    check_dtype(device, cfg.dtype)
    os.makedirs(out, exist_ok=True)
    teacher, ckpt, latents, ids, mask = load_teacher(dc.teacher, device)
    d, vocab = ckpt["config"]["dit"], ckpt["vocab_size"]
    objective = build_objective(d)
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    w_sample, shift = d["sample_cfg"], d["sample_shift"] or d["flow_shift"]

    def batch(n):  # n random training latents (B, C, T, h, w) and their captions, on the device
        i = torch.randint(len(latents), (n,), generator=g)
        return latents[i].float().to(device), ids[i].to(device), mask[i].to(device)

    # ---- stage 1: guidance distillation, at the x_t and t that training visits
    path1 = os.path.join(out, "guidance.pt")
    student = student_of(teacher, d, vocab, device)
    if dc.guidance_steps:
        null_ids, null_mask = diffusion.null_caption(dc.batch_size, d["text_len"], device)

        def guidance_loss(model):
            x0, c_ids, c_mask = batch(dc.batch_size)
            t = objective.sample_t(dc.batch_size, device=device)
            x_t = torch.lerp(x0, torch.randn_like(x0), t.view(-1, 1, 1, 1, 1))  # (1 - t) x0 + t eps
            w = dc.guidance_min + (dc.guidance_max - dc.guidance_min) * torch.rand(dc.batch_size, device=device)
            with torch.no_grad(), autocast(device, cfg.dtype):
                both = teacher(torch.cat([x_t, x_t]), torch.cat([1000 * t] * 2), torch.cat([c_ids, null_ids]),
                               torch.cat([c_mask, null_mask])).float()
            v_c, v_u = both.chunk(2)
            target = v_u + w.view(-1, 1, 1, 1, 1) * (v_c - v_u)
            return F.mse_loss(model(x_t, 1000 * t, c_ids, c_mask, guidance=w).float(), target)
        student = fine_tune(student, guidance_loss, dc.guidance_steps, cfg, out, "guidance")
        save(path1, student, ckpt, cfg, w_sample, 50, d["sample_shift"])

    # ---- stage 2: reflow on the stage-1 model's own noise -> sample pairs, at its sampling guidance
    if dc.reflow_steps:
        pairs = []
        for start in range(0, dc.reflow_pairs, 256):
            x0, c_ids, c_mask = batch(min(256, dc.reflow_pairs - start))
            z = torch.randn(x0.shape, generator=g).to(device)
            with autocast(device, cfg.dtype):
                pairs.append((z, euler(student, z, c_ids, c_mask, w_sample, dc.reflow_teacher_steps, shift), c_ids,
                              c_mask))
            print(f"reflow pairs: {start + len(z)} of {dc.reflow_pairs}")
        z_all, x1_all, ids_all, mask_all = (torch.cat(p) for p in zip(*pairs))
        fixed_w = torch.full((dc.batch_size,), float(w_sample), device=device)

        def reflow_loss(model):
            i = torch.randint(len(z_all), (dc.batch_size,), generator=g).to(device)
            z, x1 = z_all[i], x1_all[i]
            t = torch.rand(dc.batch_size, device=device)  # uniform: a straight path is as hard at every t
            x_t = torch.lerp(x1, z, t.view(-1, 1, 1, 1, 1))  # (1 - t) x1 + t z
            pred = model(x_t, 1000 * t, ids_all[i], mask_all[i], guidance=fixed_w).float()
            return F.mse_loss(pred, z - x1)
        student = fine_tune(copy.deepcopy(student).train().requires_grad_(True), reflow_loss, dc.reflow_steps, cfg,
                            out, "reflow")
        # sampled on the teacher's shifted grid, the few steps spent nearer noise where the digit is decided:
        # 0.559 against 0.484 on uniform steps at 2 steps (docs/experiments.md)
        save(os.path.join(out, "dit.pt"), student, ckpt, cfg, w_sample, dc.sample_steps, shift)


flow = importlib.import_module("04_flow")

if __name__ == "__main__":
    main()
