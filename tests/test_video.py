"""Action-free clips of another embodiment and co-training: the clips hold no actions, the action
loss reads only the labelled windows, no clips is exactly the robot-only WAM, and the regime
preset's suites lie inside or outside the clips' band as they say."""

from pathlib import Path

import pytest
import torch

import data
import train
import world
from config import get_suite, load_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"


def clip_cfg(tmp_path, *extra):
    return load_config(TINY, [f"data.cache_dir={tmp_path}", "video.n_clips=8",
                              f"train.out_dir={tmp_path}/runs", *extra])


def test_clips_hold_no_actions_and_show_the_hand(tmp_path):
    """Clips store frames and masks of the hand (its colour on the gripper's mask id) and no
    actions; the same worlds drawn with the gripper differ only on the effector's pixels."""
    cfg = clip_cfg(tmp_path)
    clips = data.make_clips(cfg)
    assert "actions" not in clips and clips["frames"].shape[:2] == (8, cfg.env.max_steps + 1)
    assert (clips["effector"] == 1).all(), "the clips are not the hand's"
    env, suite = cfg.env, get_suite(cfg.suites, "id")
    state, app = world.reset(env, suite, torch.tensor([0, 1]), torch.Generator().manual_seed(0))
    app = {**app, "brightness": torch.ones(2), "tint": torch.zeros(2, 3)}   # neutral light
    f0, m0 = world.render(env, state, app)
    f1, m1 = world.render(env, state, {**app, "effector": torch.ones(2, dtype=torch.long)})
    differ = (f0 != f1).any(1)                                               # (B, H, W)
    assert differ.any() and not differ[(m0 != world.GRIPPER) & (m1 != world.GRIPPER)].any(), \
        "the hand changed pixels that are not the end effector's"
    hand = (torch.tensor(world.EFFECTORS["hand"][0]) * 255).round().to(torch.uint8)  # (3,)
    pixels = f1.permute(0, 2, 3, 1)[m1 == world.GRIPPER]                     # (n, 3)
    assert len(pixels) and (pixels == hand).all(), "hand pixels lack the hand's colour"


def test_the_hand_mostly_reaches_its_target():
    """The hand's own controller (turned and slowed expert headings) still reaches the target in
    most reach episodes, so the clips show the task being done, by other paths than the robot's."""
    env = load_config(TINY, ["env.max_steps=16"]).env
    suite = get_suite(load_config(TINY).suites, "id")
    task = torch.tensor(world.task_ids(env)).repeat(64)                      # (256,)
    gen = torch.Generator().manual_seed(0)
    state, app = world.reset(env, suite, task, gen)
    style = torch.rand(len(task), 2, generator=gen)
    r = world.rollout(env, state, app, lambda t, s, f: world.hand(env, s, style), env.max_steps,
                      draw=False)
    robot = world.rollout(env, state, app, lambda t, s, f: world.expert(env, s), env.max_steps,
                          draw=False)
    assert r["success"].float().mean() > 0.8, f"hand success {r['success'].float().mean():.2f}"
    paths = torch.stack([s["gripper"] for s in r["states"]]) - \
        torch.stack([s["gripper"] for s in robot["states"]])
    assert paths.norm(dim=-1).amax(0).mean() > 0.02, "the hand moves like the robot"


def test_action_loss_reads_only_the_labelled_windows(tmp_path):
    """With n_labelled windows first, changing the other windows' actions leaves every loss as it
    was, changing their frames moves the video loss; n_labelled=0 never runs the action head."""
    cfg = clip_cfg(tmp_path)
    model = train.build_model(cfg, cfg.align.oracle_dim)
    ds = data.Dataset(data.make_demos(cfg), cfg.data)
    batch = ds.batch(torch.arange(8))
    other = {**batch, "actions": batch["actions"].clone()}
    other["actions"][5:] = 0.9
    torch.manual_seed(0)
    a = model(batch, 5)[0]
    torch.manual_seed(0)
    b = model(other, 5)[0]
    assert all(torch.equal(a[k], b[k]) for k in a), "an unlabelled window's actions were read"
    moved = {**batch, "video": batch["video"].clone()}
    moved["video"][5:] = -1
    torch.manual_seed(0)
    assert not torch.equal(model(moved, 5)[0]["video"], a["video"]), "unlabelled frames unused"

    def never(*args, **kw):
        raise AssertionError("the action head ran with no action loss")
    model.action_head.forward = never
    losses, z = model(batch, 0)
    assert losses["action"].item() == 0 and z is not None


def test_co_training_runs_and_no_clips_is_the_robot_only_run(tmp_path):
    """A tiny co-training run trains and logs; with video.n_clips=0 a run is bit for bit the run
    of a config without the video section's effect (the same weights as the default tiny run)."""
    out = train.train(clip_cfg(tmp_path, "name=co", "train.steps=6"))
    assert (out / "ckpt.pt").exists()
    a = train.train(load_config(TINY, [f"data.cache_dir={tmp_path}", "name=a", "train.steps=6",
                                       f"train.out_dir={tmp_path}/runs"]))
    b = train.train(load_config(TINY, [f"data.cache_dir={tmp_path}", "name=b", "train.steps=6",
                                       f"train.out_dir={tmp_path}/runs", "video.ratio=0.25"]))
    wa = torch.load(a / "ckpt.pt", weights_only=True)["model"]
    wb = torch.load(b / "ckpt.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "a video knob moved a run without clips"


def test_align_windows_reads_only_the_windows_it_names(tmp_path, monkeypatch):
    """align.windows=demos: the alignment loss of a step is the same whatever the clips' teacher
    targets are (with or without an action loss); =clips: whatever the demos' are; =all: it
    reads both."""
    real = train.targets

    def scrambled(rows):  # the teacher's targets with `rows` of the batch replaced by noise
        def targets(batch, source, normalize):
            y = real(batch, source, normalize)                           # (B, T*N, Dt)
            y[rows] = torch.randn(y[rows].shape, generator=torch.Generator().manual_seed(0))
            return y
        return targets

    def align_loss(windows, rows=None, name="x", *extra):  # the logged align loss of one step
        if rows is not None:
            monkeypatch.setattr(train, "targets", scrambled(rows))
        out = train.train(clip_cfg(tmp_path, f"name={name}", "train.steps=1", "train.log_every=1",
                                   f"align.windows={windows}", *extra))
        monkeypatch.setattr(train, "targets", real)
        return (out / "metrics.csv").read_text().splitlines()[1].split(",")[4]

    n_demo = 16 - round(0.5 * 16)  # tiny: batch 16, video.ratio 0.5; the demos' windows first
    demos, clips = slice(None, n_demo), slice(n_demo, None)
    assert align_loss("demos", name="d0") == align_loss("demos", clips, "d1")
    assert align_loss("clips", name="c0") == align_loss("clips", demos, "c1")
    assert align_loss("all", name="a0") != align_loss("all", clips, "a1")
    video_only = "train.action_weight=0.0"  # no action loss: no labelled rows, demo windows still
    assert align_loss("demos", None, "v0", video_only) == align_loss("demos", clips, "v1",
                                                                     video_only)
    with pytest.raises(ValueError, match="align.windows = 'clips' with video.n_clips = 0"):
        load_config(TINY, ["align.windows=clips"])


def test_the_feature_cache_serves_clip_windows_their_own_frames(tmp_path):
    """With clips, the ViT feature cache holds the demos' frames then the clips'; a clip window's
    frame_index (offset past every demo frame) gathers the features of its own frames."""
    import align
    cfg = clip_cfg(tmp_path, "align.teacher=random")
    demos, clips = data.make_demos(cfg), data.make_clips(cfg)
    teacher, name = align.build_teacher(cfg)
    cache = align.teacher_features(cfg, teacher, name, demos, clips)
    assert len(cache) == (len(demos["frames"]) + len(clips["frames"])) * (cfg.env.max_steps + 1)
    ds = data.Dataset(clips, cfg.data, first_frame=demos["frames"].flatten(0, 1).shape[0])
    batch = ds.batch(torch.tensor([0, len(ds) - 1]))
    torch.testing.assert_close(align.targets(batch, cache, "none"),
                               align.targets(batch, teacher, "none"), rtol=2e-3, atol=2e-3)


def band_violations(suites, name, band, inside):
    """Fields suite `name` changes that lie outside (inside=True) or inside (inside=False) the
    band suite's values; the distractor count is not an appearance and is skipped when outside."""
    ref, s, bad = get_suite(suites, band), get_suite(suites, name), []
    for key in suites[name]:
        a, b = getattr(ref, key), getattr(s, key)
        if key == "table_colors":
            near = [any(max(abs(x - y) for x, y in zip(c, c0)) <= ref.table_jitter + s.table_jitter
                        for c0 in a) for c in b]
            hit = all(near) if inside else not any(near)
        elif isinstance(b[0], str):
            hit = set(b) <= set(a) if inside else not set(b) & set(a)
        elif key == "n_distractors" and not inside:
            hit = True
        else:
            hit = (a[0] <= b[0] and b[1] <= a[1]) if inside else (b[0] > a[1] or b[1] < a[0])
        if not hit:
            bad.append(f"{name}.{key} = {b} against {band}'s {a}")
    return bad


def test_regime_suites_are_covered_or_unseen_as_marked():
    """In configs/regime.yaml every covered suite's values lie inside the clips' band, and every
    other OOD suite's outside both the clips' band and the lab (so 'unseen anywhere' is true)."""
    cfg = load_config(ROOT / "configs" / "regime.yaml")
    ood = [s for s in cfg.eval.suites if s != "id"]
    assert set(cfg.video.covered) < set(ood), cfg.video.covered
    bad = []
    for name in ood:
        if name in cfg.video.covered:
            bad += band_violations(cfg.suites, name, cfg.video.suite, inside=True)
        else:
            bad += band_violations(cfg.suites, name, cfg.video.suite, inside=False)
        bad += band_violations(cfg.suites, name, "id", inside=False)
    assert not bad, "\n".join(bad)
    with pytest.raises(ValueError, match="video.seed = 0 equals data.seed"):
        load_config(ROOT / "configs" / "regime.yaml", ["video.seed=0"])
    for ratio, n in [(0.99, 63), (0.001, 0)]:  # 63 of 64 is fine; 0 of 64 is not
        if n:
            load_config(ROOT / "configs" / "regime.yaml", [f"video.ratio={ratio}"])
        else:
            with pytest.raises(ValueError, match="gives 0 of train.batch_size = 64"):
                load_config(ROOT / "configs" / "regime.yaml", [f"video.ratio={ratio}"])
