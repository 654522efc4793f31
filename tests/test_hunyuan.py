"""HunyuanVideo's transformer in 02_dit.py (arch="hunyuan"): dual-stream then single-stream blocks, the token
refiner, the guidance embedding, and everything the CogVideoX arch already works with (masks, history,
image conditioning, checkpointing, the three objectives); the tests both archs share (padding, causality) are in
test_dit.py, sequence parallelism in test_parallel.py."""
import importlib

import pytest
import torch

import dit_helpers
from dit_helpers import C, D, L, caption, changed

dit = importlib.import_module("02_dit")


def make(arch="hunyuan", **kw):  # depth 3 for both archs, so that they compare block for block
    return dit_helpers.make(arch, **{"depth": 3, **kw})


def kinds(model):
    return [type(b).__name__[0] for b in model.blocks]  # D(ual), S(ingle), E(xpert)


def test_default_split_is_one_dual_stream_block_in_three_at_least_one():
    assert kinds(make(depth=6)) == list("DDSSSS") and kinds(make(depth=2)) == list("DS")
    assert kinds(make(double_depth=0)) == list("SSS") and kinds(make(arch="cogvideox")) == list("EEE")
    assert len(make().refiner.layers) == 2 and make(arch="cogvideox").refiner is None


def test_token_refiner_is_hunyuanvideos():
    """As hyvideo/modules/token_refiner.py builds it: no qk-norm, a SiLU MLP, gates only, and a conditioning of its
    own (its t embedder and context embedder, not the DiT's); with the gates at zero it is its input projection."""
    refiner = make(perturb=False).refiner
    layer = refiner.layers[0]
    assert isinstance(layer.attn.q_norm, torch.nn.Identity) and isinstance(layer.mlp[1], torch.nn.SiLU)
    assert refiner.gates[0][1].out_features == 2 * D  # gate_msa, gate_mlp: no shift or scale
    text, (_, mask) = torch.randn(2, L, D), caption([2, 6])
    assert torch.equal(refiner(text, mask, torch.tensor([3.0, 900.0])), refiner.proj_in(text))


@pytest.mark.parametrize("arch", ["cogvideox", "hunyuan"])
def test_at_init_output_is_zero_and_every_block_is_the_identity(arch):
    model = make(perturb=False, arch=arch, guidance_embed=True)
    x, t, ids_mask = torch.randn(2, C, 3, 4, 4), torch.tensor([1.0, 500.0]), caption([2, 6])
    w = torch.tensor([1.0, 6.0])  # guidance scales
    assert torch.count_nonzero(model(x, t, *ids_mask, guidance=w)) == 0
    text, video, emb = torch.randn(2, L, D), torch.randn(2, 12, D), torch.randn(2, D)
    for block in model.blocks:
        text_out, video_out = block(text, video, emb)
        assert torch.equal(text_out, text) and torch.equal(video_out, video)
    if arch == "hunyuan":  # gated from its own conditioning, the refiner starts as its input projection
        assert torch.equal(model.refiner(text, ids_mask[1], t), model.refiner.proj_in(text))
    perturbed = make(arch=arch, guidance_embed=True)  # the same checks fail once the zero-init weights are moved
    assert torch.count_nonzero(perturbed(x, t, *ids_mask, guidance=w)) > 0
    for block in perturbed.blocks:
        text_out, video_out = block(text, video, emb)
        assert changed(text_out, text) and changed(video_out, video)
    if arch == "hunyuan":
        assert changed(perturbed.refiner(text, ids_mask[1], t), perturbed.refiner.proj_in(text))


def test_dual_stream_text_and_video_weights_are_distinct_and_both_learn():
    model = make().train()
    block = model.blocks[0]
    text_params, video_params = dict(block.text.named_parameters()), dict(block.video.named_parameters())
    assert text_params.keys() == video_params.keys()
    assert {n.split(".")[0] for n in text_params} == {"attn", "mlp", "adaLN"}
    model(torch.randn(2, C, 2, 4, 4), torch.tensor([5.0, 500.0]), *caption([2, 4])).square().mean().backward()
    for name, p in text_params.items():
        q = video_params[name]
        assert p is not q and p.data_ptr() != q.data_ptr(), name
        assert p.grad.abs().sum() > 0 and q.grad.abs().sum() > 0, name
        assert changed(p.grad, q.grad), name


def test_single_stream_block_fuses_attention_and_mlp():
    block = make(depth=2, double_depth=0).blocks[0]
    assert block.linear1.weight.shape == (3 * D + 4 * D, D) and block.linear2.weight.shape == (D, D + 4 * D)
    assert {n.split(".")[0] for n, _ in block.named_parameters()} == {"linear1", "linear2", "q_norm", "k_norm",
                                                                      "adaLN"}
    assert isinstance(block.q_norm, torch.nn.RMSNorm) and isinstance(make().blocks[0].video.attn.k_norm,
                                                                     torch.nn.RMSNorm)


def test_history_is_causal_and_may_be_coarser():
    model = make()
    t, ids_mask = torch.tensor([300.0]), caption([4])
    x = torch.randn(1, C, 3, 4, 4)
    split = model(x[:, :, 1:], t, *ids_mask, history=[x[:, :, :1]])  # equal to the causal whole: test_dit.py
    later = x[:, :, 1:].clone()
    later[:, :, 1] += 1
    out_later = model(later, t, *ids_mask, history=[x[:, :, :1]])
    assert torch.equal(out_later[:, :, 0], split[:, :, 0]) and changed(out_later[:, :, 1], split[:, :, 1])
    coarse = model(x[:, :, 1:], t, *ids_mask, history=[torch.randn(1, C, 1, 2, 2)])  # a lower-resolution history
    assert coarse.shape == split.shape and changed(coarse, split)


def test_unsupported_options_are_clear_errors():
    with pytest.raises(ValueError, match=r"CogVideoX's ablation: arch 'cogvideox' only.*attention='factorized'"):
        make(attention="factorized")
    with pytest.raises(ValueError, match="arch 'cogvideox' or 'hunyuan'; got attention='full', arch='flux'"):
        make(arch="flux")
    for double_depth in (-1, 3):
        with pytest.raises(ValueError, match=r"double_depth must be in \[0, depth = 3\)"):
            make(double_depth=double_depth)


def test_image_conditioning():
    model = make(image_channels=C)
    x, t, ids_mask = torch.randn(2, C, 3, 4, 4), torch.tensor([100.0, 700.0]), caption([3, 5])
    out = model(x, t, *ids_mask)
    assert out.shape == x.shape
    assert torch.equal(model(x, t, *ids_mask, image=torch.zeros(2, C, 1, 4, 4)), out)
    assert changed(model(x, t, *ids_mask, image=torch.randn(2, C, 1, 4, 4)), out)


def test_guidance_embedding_changes_the_output_only_when_on():
    x, t, ids_mask = torch.randn(2, C, 2, 4, 4), torch.tensor([100.0, 700.0]), caption([3, 5])
    on, off = make(guidance_embed=True), make()
    a = on(x, t, *ids_mask, guidance=torch.tensor([1.0, 6.0]))
    b = on(x, t, *ids_mask, guidance=torch.tensor([3.0, 6.0]))
    assert changed(a[0], b[0]) and torch.equal(a[1], b[1])  # each sample's own scale
    assert set(on.state_dict()) - set(off.state_dict()) == {f"g_embed.{i}.{p}" for i in (0, 2)
                                                             for p in ("weight", "bias")}
    for model, guidance in ((off, torch.tensor([1.0, 6.0])), (on, None)):
        with pytest.raises(ValueError, match="guidance= goes with guidance_embed=True"):
            model(x, t, *ids_mask, guidance=guidance)


@pytest.mark.parametrize("split,head_dim,pairs", [("hunyuan", 128, [8, 28, 28]), ("hunyuan", 32, [2, 7, 7]),
                                                  ("hunyuan", 16, [1, 4, 3]), ("cogvideox", 64, [8, 12, 12])])
def test_rope_split(split, head_dim, pairs):
    """HunyuanVideo splits its 128 channels 16:56:56 (pairs 8:28:28), scaled to smaller heads; CogVideoX 16:24:24 of 64.
    Either way the score depends only on the offset between query and key."""
    rope = dit.RoPE3D(head_dim, split=split)
    assert rope.axis.bincount().tolist() == pairs
    q, k = torch.randn(1, 1, 1, head_dim), torch.randn(1, 1, 1, head_dim)
    pq, pk, shift = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[4.0, 0.0, 1.5]]), torch.tensor([[5.0, -3.0, 7.0]])

    def score(a, b):
        return (dit.apply_rope(q, rope(a)) * dit.apply_rope(k, rope(b))).sum()

    assert torch.allclose(score(pq + shift, pk + shift), score(pq, pk), atol=1e-4)


def test_parameter_count_matches_cogvideox_at_equal_dim_and_depth():
    """tiny.yaml's DiT: 1.66M parameters as cogvideox, 1.87M as hunyuan (+12%); depth 5 with 2 dual blocks: 1.73M."""
    size = dict(in_channels=16, dim=96, depth=6, heads=3, vocab_size=128, max_text_len=16, text_depth=2)

    def count(**kw):
        return sum(p.numel() for p in dit.DiT(**{**size, **kw}).parameters())

    cogvideox = count()
    assert 1.0 < count(arch="hunyuan") / cogvideox < 1.15
    assert abs(count(arch="hunyuan", depth=5, double_depth=2) / cogvideox - 1) < 0.05


@pytest.mark.parametrize("objective", ["ddpm", "flow", "pyramid"])
def test_every_objective_trains_it(objective):
    module, name = {"ddpm": ("03_diffusion", "GaussianDiffusion"), "flow": ("04_flow", "RectifiedFlow"),
                    "pyramid": ("05_pyramid", "PyramidFlow")}[objective]
    obj = getattr(importlib.import_module(module), name)()
    model = make().train()
    ids, mask = caption([2, 3, 4, 6])
    g = torch.Generator().manual_seed(0)
    loss = obj.loss(model, torch.randn(4, C, 2, 4, 4), dict(ids=ids, mask=mask), generator=g)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_loss_falls_on_a_flow_matching_toy():
    flow = importlib.import_module("04_flow").RectifiedFlow()
    model = make(perturb=False).train()
    torch.manual_seed(0)
    x0, cond = torch.randn(4, C, 2, 4, 4), dict(zip(("ids", "mask"), caption([2, 3, 4, 6])))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g, losses = torch.Generator().manual_seed(0), []
    for _ in range(30):
        loss = flow.loss(model, x0, cond, generator=g)  # new t and noise every step
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) < 0.9 * sum(losses[:10]), losses  # ~1.9 -> ~1.6: early on, most of v is noise
