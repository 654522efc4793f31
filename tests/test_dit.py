import importlib
import re

import pytest
import torch
import torch.nn.functional as F

from dit_helpers import C, D, HEADS, L, caption, changed, make

dit = importlib.import_module("02_dit")


@pytest.mark.parametrize("attention", ["full", "factorized"])
@pytest.mark.parametrize("patch_t,shape", [(1, (1, 4, 4)), (1, (3, 6, 4)), (2, (2, 4, 4)), (2, (4, 4, 6))])
def test_output_shape(attention, patch_t, shape):
    model = make(patch_t=patch_t, attention=attention)
    x = torch.randn(2, C, *shape)
    out = model(x, torch.tensor([10.0, 900.0]), *caption([2, 5]))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_indivisible_shape_names_the_shapes():
    model = make(patch_t=2)
    for shape in [(3, 4, 4), (2, 5, 4)]:
        with pytest.raises(ValueError, match=re.escape(str(shape))):
            model(torch.randn(1, C, *shape), torch.zeros(1), *caption([3]))


def test_bad_inputs_are_errors():
    model, ids_mask = make(), caption([3])
    x = torch.randn(1, C, 2, 4, 4)
    with pytest.raises(ValueError, match="guidance= goes with guidance_embed=True"):
        model(x, torch.zeros(1), *ids_mask, guidance=torch.ones(1))
    with pytest.raises(ValueError, match="attention='full'"):
        make(attention="factorized")(x, torch.zeros(1), *ids_mask, causal=True)
    with pytest.raises(ValueError, match="patch_t=1"):
        make(patch_t=2)(x, torch.zeros(1), *ids_mask, history=[torch.randn(1, C, 1, 4, 4)])


def test_at_init_output_is_zero_and_every_block_is_the_identity():
    model = make(perturb=False)
    x, ids_mask = torch.randn(2, C, 3, 4, 4), caption([2, 6])
    assert torch.count_nonzero(model(x, torch.tensor([1.0, 500.0]), *ids_mask)) == 0
    text, video, emb = torch.randn(2, L, D), torch.randn(2, 12, D), torch.randn(2, D)
    for block in model.blocks:
        text_out, video_out = block(text, video, emb)
        assert torch.equal(text_out, text) and torch.equal(video_out, video)
    perturbed = make()  # the same checks fail once the zero-init weights are moved
    assert torch.count_nonzero(perturbed(x, torch.tensor([1.0, 500.0]), *ids_mask)) > 0
    assert changed(perturbed.blocks[0](text, video, emb)[1], video)


def test_rope_score_depends_only_on_the_offset():
    torch.manual_seed(0)
    rope = dit.RoPE3D(32)
    q, k = F.normalize(torch.randn(1, 1, 1, 32), dim=-1), F.normalize(torch.randn(1, 1, 1, 32), dim=-1)

    def score(pq, pk):
        rq = dit.apply_rope(q, rope(torch.tensor([pq], dtype=torch.float)))
        rk = dit.apply_rope(k, rope(torch.tensor([pk], dtype=torch.float)))
        return (rq * rk).sum()

    pq, pk = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0, 0.0, 1.5])
    base = score(pq.tolist(), pk.tolist())
    for shift in [(5.0, -3.0, 7.0), (0.5, 2.25, -1.75), (9.0, 9.0, 9.0)]:
        s = torch.tensor(shift)
        assert torch.allclose(score((pq + s).tolist(), (pk + s).tolist()), base, atol=1e-5)
    for axis in range(3):  # every axis has its own channels: moving one key coordinate changes the score
        moved = pk.clone()
        moved[axis] += 1
        assert changed(score(pq.tolist(), moved.tolist()), base)
    # the same inside Attention: shifting every video token by one offset leaves its output unchanged
    attn, rope, x = dit.Attention(D, HEADS), dit.RoPE3D(D // HEADS), torch.randn(2, 12, D)
    pos = torch.cat([dit.frame_positions(f, 2, 2, 2, 2) for f in range(3)])
    out = attn(x, rope=rope(pos))
    assert torch.allclose(attn(x, rope=rope(pos + torch.tensor([4.0, -2.5, 7.0]))), out, atol=1e-5)
    assert changed(attn(x, rope=rope(pos * 2)), out)


def test_rope_tells_frames_and_rows_apart():
    # without positions attention is permutation-equivariant: reordering frames (or rows) would only reorder the output
    model = make()
    x, t, ids_mask = torch.randn(1, C, 2, 4, 4), torch.tensor([300.0]), caption([4])
    out = model(x, t, *ids_mask)
    assert changed(model(x[:, :, [1, 0]], t, *ids_mask)[:, :, [1, 0]], out)
    assert changed(model(x.flip(3), t, *ids_mask).flip(3), out)


@pytest.mark.parametrize("mask_shape", [None, "keys", "causal", "per_query"])
def test_written_out_cpu_attention_matches_pytorchs_kernel(mask_shape):
    """02's attention on CPU (baddbmm with a -inf bias) gives F.scaled_dot_product_attention's output and gradients."""
    torch.manual_seed(0)
    B, S = 3, 7
    q, k, v = (torch.randn(B, HEADS, S, 16, requires_grad=True) for _ in range(3))
    mask = {None: None,
            "keys": torch.arange(S)[None, None, None] < torch.tensor([3, 5, 7])[:, None, None, None],  # (B, 1, 1, S)
            "causal": dit.block_causal_mask(2, [3, 2])[None, None],                                    # (1, 1, S, S)
            "per_query": (torch.rand(B, 1, S, S) < 0.6) | (torch.arange(S) == 0)}[mask_shape]  # every query sees key 0
    ours = dit.attention(q, k, v, mask)
    grads = torch.autograd.grad(ours.square().sum(), (q, k, v))
    theirs = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.allclose(ours, theirs, atol=1e-6)
    for g, g_ref in zip(grads, torch.autograd.grad(theirs.square().sum(), (q, k, v))):
        assert torch.allclose(g, g_ref, atol=1e-5)
    if mask_shape == "keys":  # keys past each caption's length have no influence at all
        v_hidden = v.detach().clone()
        v_hidden.transpose(1, 2)[~mask[:, 0, 0]] += 100.0
        assert torch.equal(dit.attention(q, k, v_hidden, mask), ours.detach())


def test_frame_positions_stretch_a_coarse_frame_onto_the_grid():
    on_grid = dit.frame_positions(2, 4, 3, 4, 3)
    assert torch.equal(on_grid[:, 0], torch.full((12,), 2.0))
    rows, cols = torch.meshgrid(torch.arange(4.0), torch.arange(3.0), indexing="ij")
    assert torch.equal(on_grid[:, 1:], torch.stack([rows, cols], -1).flatten(0, 1))
    coarse = dit.frame_positions(0, 2, 2, 4, 4)  # a 2x2 frame covers the 4x4 grid in 2x2 blocks: their centres
    assert torch.equal(coarse[:, 1:], torch.tensor([[0.5, 0.5], [0.5, 2.5], [2.5, 0.5], [2.5, 2.5]]))


@pytest.mark.parametrize("arch,attention", [("cogvideox", "full"), ("cogvideox", "factorized"), ("hunyuan", "full")])
def test_padded_text_is_ignored_and_real_text_is_not(arch, attention):
    model = make(arch, attention=attention)
    x, t = torch.randn(2, C, 2, 4, 4), torch.tensor([100.0, 700.0])
    ids, mask = caption([3, 5])
    out = model(x, t, ids, mask)
    padded = ids.clone()
    padded[~mask] = torch.randint(2, 20, (int((~mask).sum()),))
    assert torch.equal(model(x, t, padded, mask), out)
    real = ids.clone()
    real[0, 1] = 2 + (ids[0, 1] - 2 + 1) % 18  # another non-PAD token
    out_real = model(x, t, real, mask)
    assert changed(out_real[0], out[0]) and torch.equal(out_real[1], out[1])
    swapped = ids.clone()
    swapped[0, :2] = ids[0, [1, 0]]  # the same words in another order: learned positions tell them apart
    assert changed(model(x, t, swapped, mask)[0], out[0])


def test_null_caption_gives_finite_output():
    model = make()
    ids, mask = torch.zeros(2, L, dtype=torch.long), torch.zeros(2, L, dtype=torch.bool)
    mask[:, 0] = True
    assert torch.isfinite(model(torch.randn(2, C, 2, 4, 4), torch.tensor([0.0, 1000.0]), ids, mask)).all()


def test_block_causal_mask():
    m = dit.block_causal_mask(2, [1, 3, 2])  # text 0-1, frame 0: 2, frame 1: 3-5, frame 2: 6-7
    assert m.shape == (8, 8) and m.diagonal().all()
    assert m[:2].sum(1).tolist() == [2, 2]  # the caption sees only itself
    assert m[2].tolist() == [True, True, True, False, False, False, False, False]  # frame 0: caption + itself
    assert m[3:6, :6].all() and not m[3:6, 6:].any() and m[6:].all()


@pytest.mark.parametrize("arch", ["cogvideox", "hunyuan"])
@pytest.mark.parametrize("patch_t", [1, 2])
def test_causal_later_frame_does_not_change_earlier_frames(arch, patch_t):
    model = make(arch, patch_t=patch_t)
    x, t, ids_mask = torch.randn(1, C, 4, 4, 4), torch.tensor([300.0]), caption([4])
    later = x.clone()
    later[:, :, 2] += 1  # token frame 2 // patch_t; frames before it must not notice
    keep = 2 // patch_t * patch_t
    out, out_later = model(x, t, *ids_mask, causal=True), model(later, t, *ids_mask, causal=True)
    assert torch.equal(out[:, :, :keep], out_later[:, :, :keep]) and changed(out[:, :, keep:], out_later[:, :, keep:])
    # without the mask they do
    assert changed(model(x, t, *ids_mask)[:, :, :keep], model(later, t, *ids_mask)[:, :, :keep])


def test_causal_with_history():
    model = make()
    t, ids_mask = torch.tensor([300.0]), caption([4])
    history = [torch.randn(1, C, 1, 2, 2), torch.randn(1, C, 1, 4, 4)]  # older frame at lower resolution
    x = torch.randn(1, C, 2, 4, 4)
    later = x.clone()
    later[:, :, 1] += 1
    out = model(x, t, *ids_mask, history=history)
    out_later = model(later, t, *ids_mask, history=history)
    assert out.shape == x.shape
    assert torch.equal(out[:, :, 0], out_later[:, :, 0]) and changed(out[:, :, 1], out_later[:, :, 1])
    assert changed(model(x, t, *ids_mask, history=[history[0] + 1, history[1]]), out)  # history reaches x


@pytest.mark.parametrize("arch", ["cogvideox", "hunyuan"])
def test_full_resolution_history_equals_an_earlier_causal_frame(arch):
    # 05's contract: history frame j sits at time j and x's frames follow, under the same block-causal mask
    model = make(arch)
    t, ids_mask = torch.tensor([300.0]), caption([4])
    x = torch.randn(1, C, 3, 4, 4)
    whole = model(x, t, *ids_mask, causal=True)
    split = model(x[:, :, 1:], t, *ids_mask, history=[x[:, :, :1]])
    assert torch.allclose(split, whole[:, :, 1:], atol=1e-5)


def test_expert_adaln_gives_text_and_video_their_own_modulation():
    torch.manual_seed(0)
    block = dit.ExpertBlock(D, HEADS)
    adaLN = block.adaLN[1]  # rows [0, 6D): text shift/scale/gate, [6D, 12D): video
    with torch.no_grad():
        adaLN.weight.normal_(std=0.3)
        adaLN.bias.normal_(std=0.3)
    text, video, emb = torch.randn(2, L, D), torch.randn(2, 8, D), torch.randn(2, D)
    mask = dit.block_causal_mask(L, [4, 4])[None, None]  # text attends to text only: text outputs are text-only
    text_before, video_before = block(text, video, emb, attn_mask=mask)
    with torch.no_grad():
        adaLN.weight[6 * D:] += torch.randn(6 * D, D)
        adaLN.bias[6 * D:] += 1
    text_after, video_after = block(text, video, emb, attn_mask=mask)
    assert torch.equal(text_after, text_before) and changed(video_after, video_before)
    with torch.no_grad():
        adaLN.weight[:6 * D] += torch.randn(6 * D, D)
    assert changed(block(text, video, emb, attn_mask=mask)[0], text_after)


@pytest.mark.parametrize("axis", ["space", "time"])
def test_factorized_attention_equals_full_attention_with_a_group_mask(axis):
    torch.manual_seed(0)
    frames, n = 3, 4  # 3 frames of 2x2 tokens
    full, factorized = dit.Attention(D, HEADS), dit.Attention(D, HEADS, axis)
    factorized.load_state_dict(full.state_dict())
    x = torch.randn(2, L + frames * n, D)
    key_mask = F.pad(torch.arange(L)[None] < torch.tensor([[2], [5]]), (0, frames * n), value=True)[:, None, None, :]
    pos = torch.cat([dit.frame_positions(f, 2, 2, 2, 2) for f in range(frames)])
    rope = F.pad(dit.RoPE3D(D // HEADS)(pos), (0, 0, L, 0))
    video = torch.arange(frames * n)
    group = torch.cat([torch.full((L,), -1), video // n if axis == "space" else video % n])  # caption: group -1
    allowed = (group[:, None] == group[None, :]) | (group < 0)[None, :]  # own group, and everyone sees the caption
    expected = full(x, key_mask & allowed, rope)
    assert torch.allclose(factorized(x, key_mask, rope, L, frames), expected, atol=1e-5)


def test_factorized_blocks_alternate_with_the_same_parameters():
    full, factorized = make(depth=3), make(depth=3, attention="factorized")
    assert [b.attn.axis for b in factorized.blocks] == ["space", "time", "space"]
    assert sum(p.numel() for p in full.parameters()) == sum(p.numel() for p in factorized.parameters())


@pytest.mark.parametrize("arch", ["cogvideox", "hunyuan"])
def test_checkpointing_gives_the_same_output_and_gradients(arch):
    plain, ckpt = make(arch=arch).train(), make(checkpointing=True, arch=arch).train()
    x, t, ids_mask = torch.randn(2, C, 2, 4, 4), torch.tensor([5.0, 50.0]), caption([2, 4])
    outs = []
    for model in (plain, ckpt):
        out = model(x, t, *ids_mask, causal=True)
        out.square().mean().backward()
        outs.append(out)
    assert torch.allclose(outs[0], outs[1], atol=1e-6)
    for a, b in zip(plain.parameters(), ckpt.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6)


@pytest.mark.parametrize("arch", ["cogvideox", "hunyuan"])
def test_bf16_autocast_matches_fp32(arch):
    model = make(arch=arch)
    x, t, ids_mask = torch.randn(2, C, 2, 4, 4), torch.tensor([5.0, 50.0]), caption([2, 4])
    history = [torch.randn(2, C, 1, 2, 2)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x, t, *ids_mask, history=history)
    high = model(x, t, *ids_mask, history=history)
    assert low.shape == high.shape and (low.float() - high).abs().max() < 0.05 * high.abs().max()
