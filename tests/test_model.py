"""Tests of model.py: attention, adaLN-Zero, rectified flow, the bridge, the two passes, act()."""
import pytest
import torch

from model import WAM, ModelConfig, attention, bridge_map, flow_pair

TINY = {"patch": 4, "width": 32, "depth": 2, "heads": 2, "mlp_ratio": 2.0, "head_width": 32,
        "head_depth": 2, "head_heads": 2, "act_steps": 2, "video_steps": 2}
RES, N_CTX, N_FUT, HA, N_TASKS = 16, 1, 1, 4, 4
N_TOKENS = (N_CTX + N_FUT) * (RES // 4) ** 2  # T*N


def make_model(align_layer=1, **overrides):
    torch.manual_seed(0)
    mcfg = ModelConfig(**{**TINY, **overrides})
    return WAM(mcfg, RES, N_CTX, N_FUT, HA, N_TASKS, action_dim=2, align_layer=align_layer)


def make_batch(b=4, seed=0):
    """A synthetic batch with the data contract's keys (the model reads video, actions, task)."""
    g = torch.Generator().manual_seed(seed)
    return {"video": torch.rand(b, N_CTX + N_FUT, 3, RES, RES, generator=g) * 2 - 1,  # B,T,3,H,W
            "actions": torch.rand(b, HA, 2, generator=g) * 2 - 1,  # B,Ha,A
            "task": torch.randint(0, N_TASKS, (b,), generator=g)}  # B


@torch.no_grad()
def perturb(model, scale=0.2):
    """Random weights everywhere: the zero-initialised gates would make most invariances trivial."""
    g = torch.Generator().manual_seed(1)
    for p in model.parameters():
        p.add_(scale * torch.randn(p.shape, generator=g))
    return model


def test_sdpa_and_math_attention_agree_fp32():
    """Fused SDPA and explicit softmax(QK^T/sqrt(d))V give the same output; math probs sum to 1."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 8, generator=g) for n in (5, 7, 7))
    out_math, probs = attention(q, k, v, "math", return_attn=True)
    torch.testing.assert_close(attention(q, k, v, "sdpa"), out_math, msg="sdpa != math in fp32")
    torch.testing.assert_close(attention(q, k, v, "auto"), out_math, msg="auto != math in fp32")
    assert probs.shape == (2, 3, 5, 7), f"probs shape {tuple(probs.shape)}, expected (B,h,Lq,Lk)"
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 3, 5), msg="probs rows must sum to 1")
    assert len(attention(q, k, v, "auto", return_attn=True)) == 2, "auto must fall back to math"
    with pytest.raises(ValueError, match="unknown attention impl 'flash'"):
        attention(q, k, v, "flash")
    with pytest.raises(ValueError, match="cannot return probabilities"):
        attention(q, k, v, "sdpa", return_attn=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 fused kernels need a CUDA GPU")
def test_sdpa_and_math_attention_agree_bf16_cuda():
    """On a GPU in bf16, fused SDPA and the math path agree within bf16 tolerance (2e-2)."""
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 4, 64, 32, generator=g, device="cuda", dtype=torch.bfloat16)
               for _ in range(3))
    torch.testing.assert_close(attention(q, k, v, "sdpa"), attention(q, k, v, "math"),
                               atol=2e-2, rtol=2e-2, msg="sdpa != math in bf16 beyond 2e-2")


def test_adaln_zero_blocks_at_init():
    """At init a video block returns its input, and an action block adds only its cross-attention
    (self-attention and MLP gated shut, the cross-attention gate open at 1), for any conditioning."""
    model = make_model()
    x, c = torch.randn(2, 2 * 16, 32), 10 * torch.randn(2, 2, 32)  # (B, T*N, D), (B, T, D)
    torch.testing.assert_close(model.blocks[0](x, c), x, msg="video block is not the identity")
    a, ca, ctx = torch.randn(2, HA, 32), torch.randn(2, 1, 32), torch.randn(2, N_TOKENS, 32)
    block = model.action_head.blocks[0]
    kv = block.cross_attn.keys_values(ctx)
    out, _ = block(a, ca, kv)
    cross, _ = block.cross_attn(block.norm2(a), kv)  # (2, HA, 32)
    assert cross.abs().mean() > 1e-3, "cross-attention output is ~0: the test would prove nothing"
    torch.testing.assert_close(out, a + cross, msg="action block at init is not x + cross-attention")


def test_rectified_flow_pair_by_hand():
    """x_t = (1-t) x0 + t eps and the target is eps - x0 (x0=1, eps=3, t=0.25 -> 1.5 and 2)."""
    xt, v = flow_pair(torch.ones(1, 2), torch.full((1, 2), 3.0), torch.tensor([0.25]))
    assert xt.tolist() == [[1.5, 1.5]] and v.tolist() == [[2.0, 2.0]], f"got x_t={xt}, v={v}"


def test_perfect_predictor_gives_zero_loss(monkeypatch):
    """Networks that output eps - x0 (recovered as (x_t - x0) / t) get zero video and action loss."""
    model, batch = make_model(), make_batch()
    x0, a0 = batch["video"][:, N_CTX:], batch["actions"]

    def video_oracle(video, t_frames, task, layers=()):
        t = t_frames[:, N_CTX:].view(-1, N_FUT, 1, 1, 1)  # (B, Tf, 1, 1, 1)
        return (video[:, N_CTX:] - x0) / t, {}

    def action_oracle(x, t, task, kvs, return_attn=False):
        return (x - a0) / t.view(-1, 1, 1), []

    monkeypatch.setattr(model, "video_forward", video_oracle)
    monkeypatch.setattr(model.action_head, "forward", action_oracle)
    torch.manual_seed(0)
    losses, _ = model.loss(batch)
    for name, value in losses.items():
        assert value.item() < 1e-8, f"perfect {name} predictor has loss {value.item():.3g}"


def test_hidden_state_shapes_for_any_layers():
    """video_forward returns (B, T*N, D) for exactly the requested 1-based layers, and rejects 0."""
    model, batch = make_model(), make_batch(b=3)
    t = torch.rand(3, N_CTX + N_FUT)  # (B, T)
    for layers in [(), (1,), (2,), (1, 2)]:
        v, hidden = model.video_forward(batch["video"], t, batch["task"], layers)
        assert v.shape == (3, N_FUT, 3, RES, RES), f"velocity shape {tuple(v.shape)}"
        assert sorted(hidden) == sorted(layers), f"asked {layers}, got {sorted(hidden)}"
        for h in hidden.values():
            assert h.shape == (3, N_TOKENS, 32), f"hidden shape {tuple(h.shape)}"
    for bad in (0, 3):
        with pytest.raises(ValueError, match=rf"layers \[{bad}\] out of range"):
            model.video_forward(batch["video"], t, batch["task"], (bad,))


@pytest.mark.parametrize("depth, head_depth, expected", [
    (4, 2, [1, 4]), (6, 3, [1, 4, 6]), (4, 3, [1, 3, 4]), (8, 4, [1, 3, 6, 8]),
    (2, 4, [1, 1, 2, 2]), (5, 1, [5])])
def test_bridge_mapping(depth, head_depth, expected):
    """Block j reads layer int(j (depth-1)/(head_depth-1) + 0.5) + 1: first layer 1, last = depth."""
    assert bridge_map(depth, head_depth) == expected, f"bridge_map({depth}, {head_depth})"
    model = make_model(depth=depth, head_depth=head_depth)
    assert model.bridge_layers() == expected, "WAM.bridge_layers disagrees with bridge_map"


def test_single_bridge_reads_one_layer():
    """bridge 'single' feeds bridge_layer (or, when 0, the align layer) to every action block."""
    assert make_model(bridge="single", bridge_layer=2).bridge_layers() == [2, 2]
    assert make_model(align_layer=1, bridge="single").bridge_layers() == [1, 1]
    with pytest.raises(ValueError, match="bridge 'single' reads layer 0"):
        make_model(align_layer=0, bridge="single")
    with pytest.raises(ValueError, match="model.bridge='both'"):
        make_model(bridge="both")


def test_foresight_pass_ignores_future_frames():
    """The foresight pass (align hidden and action loss) does not change when the future frames do,
    while the video pass's hidden states do."""
    model, batch = perturb(make_model()), make_batch()
    other = {**batch, "video": batch["video"].clone()}
    other["video"][:, N_CTX:] = torch.rand_like(other["video"][:, N_CTX:])
    results = {}
    for name, b in [("a", batch), ("b", other)]:
        for p in ("foresight", "video"):
            torch.manual_seed(0)
            results[name, p] = model.loss(b, align_layer=1, align_pass=p)
    (la, ha), (lb, hb) = results["a", "foresight"], results["b", "foresight"]
    torch.testing.assert_close(ha, hb, msg="foresight hidden depends on the future frames")
    torch.testing.assert_close(la["action"], lb["action"], msg="action loss reads the future")
    assert not torch.allclose(results["a", "video"][1], results["b", "video"][1]), \
        "the video pass's hidden states should see the future frames"


def test_loss_returns_align_hidden_from_requested_pass():
    """loss() returns (B, T*N, D) at align_layer from the chosen pass, None for align_layer 0."""
    model, batch = perturb(make_model()), make_batch()
    ctx = batch["video"][:, :N_CTX]
    losses, h = model.loss(batch, align_layer=1, align_pass="foresight")
    assert set(losses) == {"video", "action"}, f"loss keys {sorted(losses)}"
    assert h.shape == (4, N_TOKENS, 32), f"align hidden shape {tuple(h.shape)}"
    torch.testing.assert_close(h, model.foresight(ctx, batch["task"], [1])[1],
                               msg="align hidden is not the foresight pass's layer 1")
    _, h = model.loss(batch, align_layer=2, align_pass="video")
    assert h.shape == (4, N_TOKENS, 32), f"video-pass align hidden shape {tuple(h.shape)}"
    assert model.loss(batch)[1] is None, "align_layer=0 must return no hidden"
    with pytest.raises(ValueError, match="align_pass='noisy'"):
        model.loss(batch, align_layer=1, align_pass="noisy")
    with pytest.raises(ValueError, match=r"layers \[3\] out of range"):
        model.loss(batch, align_layer=3)


def test_act_deterministic_shape_range():
    """act() with fixed noise is deterministic, returns (B, Ha, A) in [-1, 1]; other noise differs."""
    model, batch = perturb(make_model()), make_batch()
    frames, task = batch["video"][:, :N_CTX], batch["task"]
    noise = torch.randn(4, HA, 2)
    a1, a2 = model.act(frames, task, noise=noise), model.act(frames, task, noise=noise)
    assert a1.shape == (4, HA, 2), f"act shape {tuple(a1.shape)}"
    assert torch.equal(a1, a2), "act() with the same noise gave different actions"
    assert a1.abs().max() <= 1, f"act() left [-1, 1]: max |a| = {a1.abs().max():.3g}"
    assert not torch.equal(a1, model.act(frames, task, noise=torch.randn(4, HA, 2))), \
        "act() ignores its noise"
    hidden = model.foresight(frames, task, model.bridge_layers())
    a3, maps = model.sample_actions(hidden, task, TINY["act_steps"], noise, return_attn=True)
    torch.testing.assert_close(a3, a1, msg="foresight + sample_actions != act")
    assert len(maps) == 2 and all(m.shape == (4, 2, HA, N_TOKENS) for m in maps), "map shapes"
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(4, 2, HA), msg="maps rows sum != 1")
    video = model.imagine(frames, task)
    assert video.shape == (4, N_FUT, 3, RES, RES) and video.abs().max() <= 1, "imagine shape/range"


def test_bad_inputs_raise():
    """Wrong shape, dtype, range, task id, noise shape or steps give a ValueError naming the value."""
    model, batch = make_model(), make_batch(b=2)
    frames, task = batch["video"][:, :N_CTX], batch["task"]
    cases = [(batch["video"], task, {}, "shape"), ((frames * 127).byte(), task, {}, "dtype"),
             (frames * 2, task, {}, "range"), (frames, torch.tensor([0, N_TASKS]), {}, "task ids"),
             (frames, task[:1], {}, "task"), (frames, task.float(), {}, "task"),
             (frames, task, {"noise": torch.zeros(2, HA, 3)}, "noise"),
             (frames, task, {"steps": 0}, "steps"), (frames.clone().fill_(float("nan")), task, {},
                                                     "range")]
    for f, t, kw, match in cases:
        with pytest.raises(ValueError, match=match):
            model.act(f, t, **kw)
    with pytest.raises(ValueError, match="attn='fast'"):
        make_model(attn="fast")


def test_tiny_model_overfits_one_batch():
    """With the noise and timesteps fixed, both losses fall below a third of their start on one batch."""
    model, batch = make_model(), make_batch(b=4)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    history = []
    for _ in range(150):
        torch.manual_seed(0)  # the same t and eps every step: a fixed regression target
        losses, _ = model.loss(batch)
        (losses["video"] + losses["action"]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        history.append({k: v.item() for k, v in losses.items()})
    for name in ("video", "action"):
        start, end = history[0][name], history[-1][name]
        assert end < start / 3, f"{name} loss did not fall: {start:.4f} -> {end:.4f}"
