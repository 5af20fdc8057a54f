"""Tests of model.py: attention, adaLN-Zero, rectified flow, the bridge, the two passes, AGRA's
tap, act() and its input checks, the Policy."""
import pytest
import torch
import torch.nn.functional as F

from config import Config, load_config
from model import WAM, bridge_map, flow_pair, math_attention
from world import Policy

TINY = {"patch": 4, "width": 32, "depth": 2, "heads": 2, "mlp_ratio": 2.0, "head_width": 32,
        "head_depth": 2, "head_heads": 2, "act_steps": 2, "video_steps": 2, "bridge_layer": 1}
RES, N_CTX, N_FUT, HA, N_TASKS = 16, 1, 1, 4, 4
N_TOKENS = (N_CTX + N_FUT) * (RES // 4) ** 2  # T*N


def make_cfg(align_layer=1, apply_to="foresight", **model):
    cfg = Config()
    cfg.env.res, cfg.data.horizon = RES, HA
    cfg.model = type(cfg.model)(**{**TINY, **model})
    cfg.align.layer, cfg.align.apply_to, cfg.align.proj_hidden = align_layer, apply_to, 16
    return cfg


def make_model(align_dim=None, align_layer=1, apply_to="foresight", **model):
    torch.manual_seed(0)
    return WAM(make_cfg(align_layer, apply_to, **model), align_dim)


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
    out_math, probs = math_attention(q, k, v)
    torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v), out_math,
                               msg="sdpa != math in fp32")
    assert probs.shape == (2, 3, 5, 7), f"probs shape {tuple(probs.shape)}, expected (B,h,Lq,Lk)"
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 3, 5), msg="probs rows must sum to 1")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 fused kernels need a CUDA GPU")
def test_sdpa_and_math_attention_agree_bf16_cuda():
    """On a GPU in bf16, fused SDPA and the math path agree within bf16 tolerance (2e-2)."""
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 4, 64, 32, generator=g, device="cuda", dtype=torch.bfloat16)
               for _ in range(3))
    torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v), math_attention(q, k, v)[0],
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
    losses, _ = model(batch)
    for name, value in losses.items():
        assert value.item() < 1e-8, f"perfect {name} predictor has loss {value.item():.3g}"


def test_hidden_state_shapes_for_any_layers():
    """video_forward returns (B, T*N, D) for exactly the requested 1-based layers."""
    model, batch = make_model(), make_batch(b=3)
    t = torch.rand(3, N_CTX + N_FUT)  # (B, T)
    for layers in [(), (1,), (2,), (1, 2)]:
        v, hidden = model.video_forward(batch["video"], t, batch["task"], layers)
        assert v.shape == (3, N_FUT, 3, RES, RES), f"velocity shape {tuple(v.shape)}"
        assert sorted(hidden) == sorted(layers), f"asked {layers}, got {sorted(hidden)}"
        for h in hidden.values():
            assert h.shape == (3, N_TOKENS, 32), f"hidden shape {tuple(h.shape)}"


@pytest.mark.parametrize("depth, head_depth, expected", [
    (4, 2, [1, 4]), (6, 3, [1, 4, 6]), (4, 3, [1, 3, 4]), (8, 4, [1, 3, 6, 8]),
    (2, 4, [1, 1, 2, 2]), (5, 1, [5])])
def test_bridge_mapping(depth, head_depth, expected):
    """Block j reads layer int(j (depth-1)/(head_depth-1) + 0.5) + 1: first layer 1, last = depth."""
    assert bridge_map(depth, head_depth) == expected, f"bridge_map({depth}, {head_depth})"
    model = make_model(depth=depth, head_depth=head_depth)
    assert model.bridge_layers() == expected, "WAM.bridge_layers disagrees with bridge_map"


def test_single_bridge_reads_one_layer():
    """bridge 'single' feeds model.bridge_layer to every action block; 0 or past depth is refused
    when the config loads."""
    assert make_model(bridge="single", bridge_layer=2).bridge_layers() == [2, 2]
    assert make_model(bridge="single", bridge_layer=1).bridge_layers() == [1, 1]
    for bad in ["model.bridge_layer=0", "model.bridge_layer=5", "model.bridge='both'"]:
        with pytest.raises(ValueError, match=bad.split("=")[0]):
            load_config("config.yaml", [bad])


def test_foresight_pass_ignores_future_frames():
    """The foresight pass (AGRA's tap and the action loss) does not change when the future frames
    do, while the video pass's tap does."""
    batch = make_batch()
    other = {**batch, "video": batch["video"].clone()}
    other["video"][:, N_CTX:] = torch.rand_like(other["video"][:, N_CTX:])
    results = {}
    for p in ("foresight", "video"):
        model = perturb(make_model(align_dim=8, apply_to=p))
        for name, b in [("a", batch), ("b", other)]:
            torch.manual_seed(0)
            results[name, p] = model(b)
    (la, za), (lb, zb) = results["a", "foresight"], results["b", "foresight"]
    torch.testing.assert_close(za, zb, msg="the foresight tap depends on the future frames")
    torch.testing.assert_close(la["action"], lb["action"], msg="action loss reads the future")
    assert not torch.allclose(results["a", "video"][1], results["b", "video"][1]), \
        "the video pass's tap should see the future frames"


def test_forward_returns_the_projected_tap():
    """forward's z is the projector on the align layer of the chosen pass, (B, T*N, Dt); a model
    without a projector (the baseline) returns None and draws the same noise and weights."""
    batch = make_batch()
    model = perturb(make_model(align_dim=8, align_layer=1))
    losses, z = model(batch)
    assert set(losses) == {"video", "action"} and z.shape == (4, N_TOKENS, 8), tuple(z.shape)
    h = model.foresight(batch["video"][:, :N_CTX], batch["task"], [1])[1]
    torch.testing.assert_close(z, model.projector(h), msg="z is not h_phi(foresight layer 1)")
    base, agra = make_model(), make_model(align_dim=8)
    assert base.projector is None and base(batch)[1] is None
    for (k, a), b in zip(base.state_dict().items(), list(agra.state_dict().values())):
        assert torch.equal(a, b), f"{k}: the projector changed the other weights' init"
    torch.manual_seed(0)
    make_model(align_dim=8)
    after = torch.rand(3)
    torch.manual_seed(0)
    make_model()
    assert torch.equal(after, torch.rand(3)), "the projector shifted the random stream"


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
    """act() refuses a wrong shape, dtype, range (reported unrounded), task (type, family, shape),
    noise (shape, NaN), steps and an empty batch, with a message naming the value."""
    model, batch = make_model(), make_batch(b=2)
    frames, task = batch["video"][:, :N_CTX], batch["task"]
    nan = frames.clone()
    nan[0, 0, 0, 0, 0] = float("nan")
    cases = [(batch["video"], task, {}, "expected .B >= 1"),
             (frames[:0], task[:0], {}, r"frames \(0, 1"),
             ((frames * 127).byte(), task, {}, "uint8 frames: world.to_float"),
             (frames.double(), task, {}, "dtype torch.float64"),
             (frames.half(), task, {}, "dtype torch.float16"),
             (frames.bfloat16(), task, {}, "dtype torch.bfloat16"),
             (frames.clamp(-1, 1).index_fill(0, torch.tensor([0]), -1.0001), task, {},
              r"-1.0001\d*, "), (nan, task, {}, "nan"),
             (frames, torch.tensor([0, 4]), {}, r"expected ids \[0, 1, 2, 3\] \(reach-red, reach-green"),
             (frames, 1, {}, "task 1; expected a .2,. long tensor"),
             (frames, [0, 1], {}, r"task \[0, 1\]"), (frames, task[:1], {}, "task"),
             (frames, task.float(), {}, "task"),
             (frames, task, {"noise": torch.zeros(2, HA, 3)}, "noise"),
             (frames, task, {"noise": torch.full((2, HA, 2), float("nan"))}, "NaN"),
             (frames, task, {"steps": 0}, "steps")]
    for f, t, kw, match in cases:
        with pytest.raises((ValueError, TypeError), match=match):
            model.act(f, t, **kw)


def test_policy_strides_the_context_and_queues_the_chunk():
    """Policy feeds act() the n_ctx frames `stride` steps apart (the first frame repeated before
    time 0), plans every `replan` steps and returns the chunk's actions in order."""
    class Recorder(torch.nn.Module):  # act() records its context, returns chunks numbered by call
        horizon = 4

        def __init__(self):
            super().__init__()
            self.x_embedder, self.seen = torch.nn.Linear(1, 1), []

        def act(self, frames, task, steps=None):
            self.seen.append(frames[:, :, 0, 0, 0].tolist())
            step = torch.arange(4.0)[None, :, None] + 10 * len(self.seen)  # (1, Ha, 1)
            return step.expand(1, 4, 2)

    model = Recorder()
    policy = Policy(model, n_ctx=2, stride=2, replan=2)
    task, got = torch.zeros(1, dtype=torch.long), []
    for t in range(6):  # frame t holds the value t (uint8 -> [-1, 1] by world.to_float)
        frame = torch.full((1, 3, 4, 4), t, dtype=torch.uint8)
        got.append(policy.select_action({"frame": frame, "task": task})[0, 0].item())
    to = [[round((v + 1) * 127.5) for v in ctx[0]] for ctx in model.seen]
    assert to == [[0, 0], [0, 2], [2, 4]], f"contexts {to}: not 2 frames 2 steps apart"
    assert got == [10, 11, 20, 21, 30, 31], f"actions {got}: not the first 2 of each chunk"
    policy.reset()
    policy.select_action({"frame": torch.zeros(1, 3, 4, 4, dtype=torch.uint8), "task": task})
    assert [round((v + 1) * 127.5) for v in model.seen[-1][0]] == [0, 0], "reset kept old frames"
    with pytest.raises(ValueError, match="replan = 5"):
        Policy(model, 2, 2, 5)


@pytest.mark.parametrize("n_ctx, stride, replan", [(2, 2, 2), (1, 4, 4), (3, 4, 2), (2, 3, 4)])
def test_policy_reads_only_the_frames_needs_frame_names(n_ctx, stride, replan):
    """A Policy given frame None on every step whose needs_frame is False acts exactly as one given
    every frame (a renderer may skip those steps); a None the context needs is refused."""
    class Echo(torch.nn.Module):  # act() returns its context's frame values as the chunk
        horizon = 4

        def __init__(self):
            super().__init__()
            self.x_embedder = torch.nn.Linear(1, 1)

        def act(self, frames, task, steps=None):
            return frames[:, :, 0, 0, 0].sum(1)[:, None, None].expand(1, 4, 2)  # (1, Ha, 2)

    task, runs = torch.zeros(1, dtype=torch.long), []
    for sparse in (False, True):
        policy, got = Policy(Echo(), n_ctx, stride, replan), []
        for t in range(20):
            frame = torch.full((1, 3, 4, 4), t, dtype=torch.uint8)
            skip = sparse and not policy.needs_frame(t)
            got.append(policy.select_action({"frame": None if skip else frame, "task": task}))
        runs.append(torch.cat(got))
    assert torch.equal(*runs), f"skipping frames changed the actions: {runs}"
    policy, zero = Policy(Echo(), 2, 2, 4), torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match="step 0 is always read"):
        policy.select_action({"frame": None, "task": task})
    for frame in [zero, None, None, None]:  # step 2 is step 4's context: needed, but None
        policy.select_action({"frame": frame, "task": task})
    with pytest.raises(ValueError, match="context frame of this planning step was passed as None"):
        policy.select_action({"frame": zero, "task": task})


def test_tiny_model_overfits_one_batch():
    """With the noise and timesteps fixed, both losses fall below a third of their start on one batch."""
    model, batch = make_model(), make_batch(b=4)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    history = []
    for _ in range(150):
        torch.manual_seed(0)  # the same t and eps every step: a fixed regression target
        losses, _ = model(batch)
        (losses["video"] + losses["action"]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        history.append({k: v.item() for k, v in losses.items()})
    for name in ("video", "action"):
        start, end = history[0][name], history[-1][name]
        assert end < start / 3, f"{name} loss did not fall: {start:.4f} -> {end:.4f}"
