"""eval.py: attention statistics, interventions, probes, the closed loop, one run's whole
evaluation and its pictures."""

import json
import math
from pathlib import Path

import pytest
import torch

import eval as ev
import train
import world
from config import load_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
SMALL = ["eval.episodes=16", "eval.curve_episodes=8", "eval.heldout_episodes=8",
         "eval.attn_samples=16", "eval.intervention_samples=16", "eval.probe_samples=32",
         "eval.probe_steps=20", "eval.psnr_samples=4", "eval.latency_reps=3", "eval.examples=2"]


def region_of(g, T, cells):
    """(1, T*N) bool with the given (frame, row, col) tokens set."""
    region = torch.zeros(1, T, g, g, dtype=torch.bool)
    for t, r, c in cells:
        region[0, t, r, c] = True
    return region.flatten(1)


def test_attention_equal_to_the_mask_is_all_in_mask():
    """An attention map equal to the (normalised) region mask gives in_mask 1 and centroid error 0;
    attention on one cell, the region on another (in another frame), gives the cells' distance."""
    region = region_of(4, 2, [(0, 1, 1), (0, 1, 2), (1, 3, 0)])
    s = ev.attention_stats(region.float() / region.sum(), region, 4)
    assert abs(s["in_mask"] - 1) < 1e-6, f"in_mask {s['in_mask']} for attention == mask"
    assert s["centroid_error"] < 1e-6, f"centroid error {s['centroid_error']} for attention == mask"
    # all attention on cell (0, 0) of frame 1, the region cell (3, 3) of frame 0: sqrt(3^2 + 3^2)
    far = ev.attention_stats(region_of(4, 2, [(1, 0, 0)]).float(), region_of(4, 2, [(0, 3, 3)]), 4)
    assert abs(far["centroid_error"] - 18 ** 0.5) < 1e-5, f"centroid error {far['centroid_error']}"
    assert far["in_mask"] == 0, f"in_mask {far['in_mask']} for attention off the region"


def test_uniform_attention_is_at_chance():
    """A uniform attention map puts exactly the region's token share (the chance level) in the mask."""
    region = region_of(4, 2, [(0, 0, 0), (1, 2, 3), (1, 3, 3)])
    s = ev.attention_stats(torch.full((1, 32), 1 / 32), region, 4)
    assert abs(s["chance"] - 3 / 32) < 1e-6, f"chance {s['chance']}, expected 3/32"
    assert abs(s["in_mask"] - s["chance"]) < 1e-6, f"uniform in_mask {s['in_mask']} != chance"


def test_attention_stats_average_over_the_batch():
    """Two windows: all attention on the region in one, all off it in the other, give in_mask 0.5;
    chance is the mean of the two regions' token shares, each window's centroid its own."""
    region = torch.cat([region_of(4, 2, [(0, 1, 1)]), region_of(4, 2, [(1, 2, 2), (1, 2, 3)])])
    attn = torch.cat([region_of(4, 2, [(0, 1, 1)]), region_of(4, 2, [(0, 2, 0)])]).float()
    s = ev.attention_stats(attn, region, 4)                                       # (B, T*N) = (2, 32)
    assert abs(s["in_mask"] - 0.5) < 1e-6, f"in_mask {s['in_mask']}, expected (1 + 0) / 2"
    assert abs(s["chance"] - (1 / 32 + 2 / 32) / 2) < 1e-6, f"chance {s['chance']}"
    assert abs(s["centroid_error"] - 2.5 / 2) < 1e-5, f"centroid error {s['centroid_error']}"


def test_region_tokens_pool_pixels_to_tokens():
    """A token is in the region when any of its pixels carries an interaction id, never otherwise."""
    masks = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)                           # (B, T, H, W)
    masks[0, 0, 5, 2], masks[0, 0, 0, 7] = 3, 4  # a target pixel in token (1, 0), a distractor's
    region = ev.region_tokens(masks, [1, 3], 4)                                   # (1, 4)
    assert region.tolist() == [[False, False, True, False]], f"region tokens {region.tolist()}"
    two = torch.zeros(1, 2, 8, 8, dtype=torch.uint8)  # frames are time-major: frame 1 at 4..7
    two[0, 1, 1, 6] = 3                                                           # token (0, 1)
    assert ev.region_tokens(two, [3], 4)[0].nonzero().tolist() == [[5]]


def test_sensitivity_ratio_on_a_hand_made_case():
    """Relevant change 5 (a 3-4-5 shift) over irrelevant changes 1 and 0 (nan skipped) gives 10."""
    a0 = torch.zeros(2, 4, 2)                                                     # (B, Ha, A)
    moved = ev.action_change(a0 + torch.tensor([3.0, 4.0]), a0)                   # (B,)
    swapped = ev.action_change(a0 + torch.tensor([0.6, 0.8]), a0)
    same = ev.action_change(a0.clone(), a0)
    assert moved.tolist() == [5.0, 5.0] and same.tolist() == [0.0, 0.0], (moved, same)
    ratio = ev.sensitivity_ratio(moved.mean().item(), [swapped.mean().item(), math.nan, 0.0])
    assert abs(ratio - 10) < 1e-5, f"ratio {ratio}, expected 5 / mean(1, 0) = 10"
    assert ev.sensitivity_ratio(1.0, [0.0, math.nan]) == math.inf, "a perfectly invariant head"
    assert math.isnan(ev.sensitivity_ratio(0.0, [0.0])), "no change at all is not a ratio"


def test_token_edits_touch_only_the_marked_tokens():
    """Every edit leaves unmarked tokens alone; swap fills marked ones with the window's unmarked
    tokens, shuffle with the previous window's, mean with their mean, zeros with 0."""
    h = {1: torch.randn(3, 6, 5)}                                                 # (B, L, D)
    m = torch.tensor([[1, 1, 0, 0, 0, 0], [0, 0, 0, 1, 0, 0], [0, 1, 0, 1, 0, 1]]).bool()
    gen = torch.Generator().manual_seed(0)
    for op in ["identity", "mean", "zeros", "shuffle", "swap"]:
        out = ev.edit_tokens(h, m, op, gen)[1]
        assert torch.equal(out[~m], h[1][~m]), f"'{op}' changed unmarked tokens"
    swap, shuffle = ev.edit_tokens(h, m, "swap", gen)[1], ev.edit_tokens(h, m, "shuffle", gen)[1]
    for b, i in m.nonzero().tolist():
        assert any(torch.equal(swap[b, i], h[1][b, j]) for j in (~m[b]).nonzero()[:, 0]), \
            f"swap put a non-background token at ({b}, {i})"
        assert torch.equal(shuffle[b, i], h[1][b - 1, i]), f"shuffle at ({b}, {i})"
    zeros = ev.edit_tokens(h, m, "zeros", gen)[1]
    assert zeros[m].abs().sum() == 0, "zeros left non-zero marked tokens"
    mean = ev.edit_tokens(h, m, "mean", gen)[1]
    for b in range(3):
        want = h[1][b][m[b]].mean(0)                                              # (D,)
        torch.testing.assert_close(mean[b][m[b]], want.expand(int(m[b].sum()), -1))
    assert torch.equal(ev.edit_tokens(h, m, "identity", gen)[1], h[1]), "identity changed tokens"
    with pytest.raises(ValueError, match="unknown token edit"):
        ev.edit_tokens(h, m, "blur", gen)


def test_pca_without_position_sees_content_only():
    """A position code shared by every window (however large) leaves the content PCA unchanged."""
    gen = torch.Generator().manual_seed(0)
    content = torch.randn(6, 4, 4, 16, generator=gen)                          # (n, h, w, D)
    position = 100 * torch.randn(1, 4, 4, 16, generator=gen).expand(6, -1, -1, -1)
    a = ev.pca_rgb(ev.without_position(content + position))
    b = ev.pca_rgb(ev.without_position(content))
    assert torch.allclose(a, b, atol=1e-3), (a - b).abs().max()
    assert not torch.allclose(ev.pca_rgb(content + position), b, atol=0.1)  # raw: position wins


@pytest.mark.parametrize("replan", [1, 2])
def test_closed_loop_feeds_the_right_frames_and_scores_the_expert(monkeypatch, replan):
    """Driven by the scripted expert, the closed loop scores >= 95% on id (replanning every step);
    each context frame it feeds is the frame of the state at the time data.Dataset would use, and
    step t executes action t % replan of the chunk planned last (the slots differ here)."""
    cfg = load_config(TINY, ["env.max_steps=20", "data.n_ctx=2", f"eval.replan={replan}"])
    log, real_reset, real_step = {}, world.reset, world.step

    def reset(env, suite, task, gen):
        state, app = real_reset(env, suite, task, gen)
        log.update(states=[state], app=app)
        return state, app

    def step(env, state, action):
        t = len(log["states"]) - 1
        assert torch.equal(action, log["chunk"][:, t % replan]), f"step {t} ran the wrong slot"
        log["states"].append(real_step(env, state, action))
        return log["states"][-1]

    class ExpertPolicy(torch.nn.Module):  # a model whose act() is the expert, checking its input
        horizon = cfg.data.horizon

        def __init__(self):
            super().__init__()
            self.x_embedder = torch.nn.Linear(1, 1)

        def act(self, frames, task, steps=None):
            t = len(log["states"]) - 1
            assert t % replan == 0, f"planned at step {t}, replan {replan}"
            for i, s in enumerate([max(0, t - cfg.data.stride), t]):  # as data.Dataset's windows
                want = world.to_float(world.render(cfg.env, log["states"][s], log["app"])[0])
                assert torch.equal(frames[:, i], want), f"context frame {i} at t={t} is not {s}"
            slow = 1 - 0.1 * torch.arange(cfg.data.horizon)[None, :, None]        # (1, Ha, 1)
            log["chunk"] = world.expert(cfg.env, log["states"][-1])[:, None] * slow  # (B, Ha, A)
            return log["chunk"]

    monkeypatch.setattr(world, "reset", reset)
    monkeypatch.setattr(world, "step", step)
    rate = ev.success_rate(ExpertPolicy(), cfg, "id", 64, "cpu")
    assert replan > 1 or rate >= 0.95, f"the expert scores {rate:.2f} in eval's closed loop"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A baseline and an AGRA run of the tiny preset, seed 0."""
    tmp = tmp_path_factory.mktemp("eval")
    for name, weight in [("tiny-baseline-s0", 0.0), ("tiny-agra-s0", 0.5)]:
        train.train(load_config(TINY, [f"name={name}", f"train.out_dir={tmp}/runs",
                                             f"data.cache_dir={tmp}/cache",
                                             f"align.weight={weight}"]))
    return tmp / "runs"


@pytest.mark.parametrize("bad", ["eval.episodes=0", "eval.probe_steps=-1", "eval.replan=-1",
                                 "eval.replan=3", "eval.device=tpu", "eval.examples=0"])
def test_bad_eval_values_are_refused_when_the_config_loads(bad):
    """A zero or negative count, or an unknown device, fails when the config loads, naming the key
    and its value, not as a ZeroDivisionError deep inside the evaluation."""
    with pytest.raises(ValueError, match=bad.replace("tpu", "'tpu'").replace("=", " = ")):
        load_config(TINY, [bad])


def test_eval_refuses_the_training_seed_before_any_episode(runs, monkeypatch):
    """eval.seed equal to data.seed (held-out data would be training data) fails before the
    closed-loop suites run, so no evaluation time is spent and lost."""
    def no_episodes(*args):
        raise AssertionError("success_rate ran before the seed check")
    monkeypatch.setattr(ev, "success_rate", no_episodes)
    cfg = load_config(runs / "tiny-baseline-s0" / "config.yaml")
    with pytest.raises(ValueError, match=f"eval.seed = {cfg.data.seed} equals data.seed"):
        ev.evaluate(runs / "tiny-baseline-s0", [*SMALL, f"eval.seed={cfg.data.seed}"])


def test_psnr_of_a_known_error_is_20_db(monkeypatch):
    """imagine() off by 0.2 on the [-1, 1] scale (0.1 on [0, 1]) everywhere gives exactly 20 dB:
    this pins the scale and that the true frames compared are the future ones, not the context."""
    cfg = load_config(TINY, SMALL)
    model, held = train.build_model(cfg).eval(), ev.heldout(cfg)
    video = ev.windows(held[1], cfg.eval.psnr_samples, cfg.eval.seed + 3)["video"]  # the part's
    monkeypatch.setattr(model, "imagine", lambda ctx, task: video[:, cfg.data.n_ctx:] + 0.2)
    psnr = ev.video_part(model, cfg, held, "cpu", None)["video.psnr"]
    assert abs(psnr - 20) < 1e-3, f"PSNR {psnr} dB, expected 20"


def test_probe_labels_are_the_targets_token(monkeypatch):
    """The localization probe's label (world x = column, y = row, row-major tokens like the model's)
    is a token that holds target pixels in the current frame's mask: a swapped axis or a wrong
    frame fails this."""
    cfg = load_config(TINY, SMALL)
    model, held = train.build_model(cfg).eval(), ev.heldout(cfg)
    seen = []
    monkeypatch.setattr(ev, "linear_probe", lambda f, labels, *a: seen.append(labels) or 0.0)
    ev.probe_part(model, cfg, held, "cpu", None)
    batch = ev.windows(held[1], cfg.eval.probe_samples, cfg.eval.seed + 2)  # the part's windows
    cur = batch["masks"][:, cfg.data.n_ctx - 1:cfg.data.n_ctx]                   # (B, 1, H, W)
    target = ev.region_tokens(cur, [world.TARGET], cfg.model.patch)              # (B, N)
    hit = target[torch.arange(len(target)), seen[0]].float().mean().item()
    assert hit >= 0.9, f"only {hit:.2f} of localization labels hold target pixels"
    g = model.grid  # the transposed labels must not pass too: the test can tell the axes apart
    swapped = (seen[0] % g) * g + seen[0] // g
    assert target[torch.arange(len(target)), swapped].float().mean().item() < hit - 0.2


def test_linear_probe_finds_a_marked_token():
    """Tokens whose feature 0 marks the labelled one are found on held-out rows; chance is not."""
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(64, 16, 8, generator=gen)                              # (B, N, D)
    labels = torch.randint(0, 16, (64,), generator=gen)
    train_mask = torch.arange(64) < 32
    marked = feats.clone()
    marked[torch.arange(64), labels, 0] += 5.0
    assert ev.linear_probe(marked, labels, train_mask, 300) == 1.0
    assert ev.linear_probe(feats, labels, train_mask, 300) < 0.5


def test_probe_of_a_single_bridge_reads_the_aligned_layer():
    """With every action block reading the aligned layer, the head's-input probe is the aligned
    layer's probe; with the multi-level bridge it reads the bridge's layers (here 1 and 2)."""
    for bridge in ["single", "multi"]:
        cfg = load_config(TINY, [*SMALL, f"model.bridge={bridge}", "align.layer=2"])
        model = train.build_model(cfg).eval()
        m = ev.probe_part(model, cfg, ev.heldout(cfg), "cpu", None)
        assert model.bridge_layers() == ([2, 2] if bridge == "single" else [1, 2])
        if bridge == "single":
            for w in ["localization", "affordance"]:
                assert m[f"probe.read.{w}_acc"] == m[f"probe.{w}_acc"], m
        assert all(0 <= v <= 1 for v in m.values()), m


def test_interventions_measure_only_their_edit(runs):
    """The interventions' zero: on a trained run's interface, with the same noise, every edit of
    no token leaves the action chunk exactly as it was, so every change measured comes from the
    edit; zeroing the interaction region's tokens does change it."""
    cfg = load_config(runs / "tiny-baseline-s0" / "config.yaml", SMALL)
    model = train.build_model(cfg).eval()
    model.load_state_dict(train.load_checkpoint(runs / "tiny-baseline-s0" / "ckpt.pt")["ema"])
    _, ds = ev.heldout(cfg)
    batch = ev.windows(ds, 8, 0)
    with torch.no_grad():
        hidden, task = ev.interface(model, cfg, batch, "cpu", model.bridge_layers())
        noise = ev.noise_like(cfg, 8, 0, "cpu")                                   # (B, Ha, A)
        region = ev.region_tokens(batch["masks"], [1, 3], cfg.model.patch)
        a0 = model.sample_actions(hidden, task, 2, noise)
        none = torch.zeros_like(region)
        for op in ["identity", *ev.HIDDEN_OPS]:
            a1 = model.sample_actions(ev.edit_tokens(hidden, none, op, torch.Generator()), task, 2,
                                      noise)
            change = ev.action_change(a1, a0)
            assert change.abs().max() == 0, f"'{op}' of no token changed actions: {change.tolist()}"
        zeros = model.sample_actions(ev.edit_tokens(hidden, region, "zeros", None), task, 2, noise)
    assert ev.action_change(zeros, a0).min() > 0, "zeroing the region changed no action chunk"


def test_whole_eval_writes_every_key_and_its_pictures(runs):
    """A tiny run's eval writes every documented key and its pictures; examples.pt stays small."""
    run = runs / "tiny-baseline-s0"
    m = ev.evaluate(run, SMALL)
    cfg = load_config(run / "config.yaml", SMALL)
    steps = [int(p.stem.split("_")[1]) for p in (run / "snapshots").glob("ema_*.pt")]
    keys = {f"success.{s}" for s in cfg.suites} | {f"success_curve.id@{k}" for k in steps}
    keys |= {f"attention.{k}" for k in ["in_mask", "chance", "centroid_error"]}
    keys |= {f"attention.{k}.block{j}" for k in ["in_mask", "centroid_error"]
             for j in range(cfg.model.head_depth)}
    keys |= {f"intervention.pixel.{k}" for k in [*ev.IRRELEVANT, "target_move"]}
    keys |= {f"intervention.hidden.{op}.{w}" for op in ev.HIDDEN_OPS
             for w in ["region", "background"]}
    keys |= {f"intervention.{k}" for k in ["relevant", "irrelevant", "sensitivity_ratio",
                                           "hidden_ratio"]}
    keys |= {f"probe.{r}{w}_acc" for r in ["", "read."] for w in ["localization", "affordance"]}
    keys |= {"probe.localization_chance", "probe.affordance_chance", "video.psnr",
             "latency.act_ms", "teacher", "step", "time.success", "time.total"}
    stored = json.loads((run / "eval" / "metrics.json").read_text())
    assert not keys - set(stored), f"missing keys: {sorted(keys - set(stored))}"
    assert stored == m, "metrics.json differs from what evaluate returned"
    for k in ["attention.in_mask", "attention.chance", "probe.localization_acc", "video.psnr",
              "latency.act_ms"]:
        assert math.isfinite(stored[k]), f"{k} = {stored[k]}"
    assert all(0 <= stored[k] <= 1 for k in keys if k.startswith("success")), "rate outside [0, 1]"
    assert stored["teacher"] == "none", f"baseline teacher {stored['teacher']!r}"
    for f in ["success.png", "training.png", "attention.png"]:
        assert (run / "eval" / f).stat().st_size > 0, f"picture {f} missing"
    ex = torch.load(run / "eval" / "examples.pt", weights_only=True)  # kept in results/: small
    data = sum(v.nbytes for v in ex.values() if torch.is_tensor(v))
    size = (run / "eval" / "examples.pt").stat().st_size
    assert size < data + 20_000, f"examples.pt {size} bytes for {data} bytes of tensors"


def test_suite_given_on_the_command_line_is_used(runs):
    """A suite defined only on the command line is evaluated under its own values."""
    run = runs / "tiny-baseline-s0"
    ev.main([str(run), "suites.bg_new={'table_colors': [[0.9, 0.2, 0.9]]}",
             "eval.suites=['bg_new']", *SMALL])
    stored = json.loads((run / "eval" / "metrics.json").read_text())
    assert "success.bg_new" in stored, f"no success.bg_new in {sorted(stored)}"
    with pytest.raises(SystemExit, match="eval.suites entry = 'nope'"):
        ev.main([str(run), "eval.suites=['nope']", *SMALL])
