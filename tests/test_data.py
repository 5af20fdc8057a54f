"""The tabletop world (world.py) and its demonstrations (data.py): determinism, masks vs pixels,
state vs appearance, the experts, OOD suites disjoint from id, the demos cache, data.Dataset
windows, bad inputs."""

from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

import data
import world
from config import PALETTE, DataConfig, EnvConfig, Suite, get_suite
from world import expert, render, reset, step

CONFIG = Path(__file__).resolve().parents[1] / "config.yaml"
DEFAULT_SUITES = yaml.safe_load(CONFIG.read_text())["suites"]  # id + every OOD suite


def worlds(env, suite="id", B=64, seed=0):
    """B worlds of env.task's family (tasks cycling over the colours) drawn from a default suite."""
    task = torch.tensor(world.task_ids(env)).repeat(B // 4 + 1)[:B]                 # (B,)
    return reset(env, get_suite(DEFAULT_SUITES, suite), task, torch.Generator().manual_seed(seed))


def u8(rgb):
    return (torch.as_tensor(rgb) * 255).round().to(torch.uint8)


def ood_violations(suites):
    """Each value an OOD suite changes must lie outside the id suite's: the clashes (empty = ok).
    Table colours: outside every id colour's jitter box (widened by both jitters); name lists: no
    name of the id list; ranges: disjoint from the id range; regions: no box overlapping an id box."""
    ref, out = get_suite(suites, "id"), []
    for name in [n for n in suites if n != "id"]:
        s = get_suite(suites, name)
        for f in fields(Suite):
            a, b = getattr(ref, f.name), getattr(s, f.name)
            if f.name == "table_jitter" or (a == b and f.name != "table_colors"):
                continue
            if f.name == "table_colors":
                band = ref.table_jitter + s.table_jitter
                bad = [] if a == b and s.table_jitter == ref.table_jitter else [
                    c for c in b if any(max(abs(x - y) for x, y in zip(c, c0)) <= band for c0 in a)]
            elif isinstance(b[0], str):
                bad = sorted(set(a) & set(b))
            elif isinstance(b[0], list):
                bad = [q for q in b if any(q[0] < p[2] and p[0] < q[2] and q[1] < p[3] and p[1] < q[3]
                                           for p in a)]
            else:
                bad = [] if b[0] > a[1] or b[1] < a[0] else [b]
            if bad:
                out.append(f"{name}.{f.name}: {bad} overlaps the id values {a}")
    return out


def test_same_seed_gives_identical_frames():
    """The same seed gives byte-identical frames and masks through resets and steps; another differs."""
    env = EnvConfig(res=32, task="push")

    def run(seed):
        state, app = worlds(env, seed=seed)
        out = list(render(env, state, app))
        for _ in range(3):
            state = step(env, state, expert(env, state))
            out += render(env, state, app)
        return out

    a, b, c = run(0), run(0), run(1)
    for i, (x, y) in enumerate(zip(a, b)):
        assert torch.equal(x, y), f"tensor {i} differs between two runs with seed 0"
    assert not torch.equal(a[0], c[0]), "seeds 0 and 1 gave the same first frames"


@pytest.mark.parametrize("suite", ["id", "distractors@2", "instance@2"])
def test_masks_agree_with_pixels(suite):
    """Under neutral lighting on a plain table, every pixel has the colour of its mask's entity
    (target = the task colour), and every present block is visible at res 32."""
    env = EnvConfig(res=32)
    state, app = worlds(env, suite, B=128)
    B = len(state["task"])
    app = {**app, "brightness": torch.ones(B), "tint": torch.zeros(B, 3),
           "texture": torch.zeros(B, dtype=torch.long)}                      # plain, neutral light
    state = step(env, state, expert(env, state))
    frames, masks = render(env, state, app)                                  # (B, 3, H, W), (B, H, W)
    palette = torch.tensor(list(PALETTE.values()))
    by_id = torch.cat([app["table"][:, None], torch.tensor([world.GRIPPER_RGB, world.GOAL_RGB]).expand(B, 2, 3),
                       palette[app["color"]]], 1)                            # (B, 3 + K, 3)
    want = torch.gather(u8(by_id), 1, masks.flatten(1).long()[..., None].expand(-1, -1, 3))
    got = frames.flatten(2).transpose(1, 2)                                  # (B, H*W, 3)
    bad = (want != got).any(-1)
    assert not bad.any(), f"{int(bad.sum())} pixels differ from their mask's colour"
    task_rgb = u8(palette[state["task"] % 4])                                # (B, 3)
    on_target = (masks == world.TARGET)[:, None]                                   # (B, 1, H, W)
    assert (frames == task_rgb[:, :, None, None])[on_target.expand_as(frames)].all(), \
        "a target pixel does not have the task colour"
    K = state["present"].shape[1]
    seen = torch.stack([(masks == world.TARGET + k).flatten(1).any(1) for k in range(K)], 1)  # (B, K)
    assert torch.equal(seen, state["present"]), "a present block is hidden, or an absent one drawn"
    assert (masks == world.GRIPPER).flatten(1).any(1).all() and (masks == world.GOAL).flatten(1).any(1).all()


def test_appearance_change_leaves_state_untouched():
    """Rendering under another suite's appearance leaves the state as it was; a new table changes
    background pixels only, with identical masks."""
    env = EnvConfig(res=32)
    state, app = worlds(env)
    _, far = worlds(env, "background@2")
    before = {k: v.clone() for k, v in state.items()}
    f1, m1 = render(env, state, app)
    f2, m2 = render(env, state, {**app, "table": far["table"], "texture": far["texture"]})
    render(env, state, worlds(env, "distractors@2")[1])
    for k in state:
        assert torch.equal(state[k], before[k]), f"render changed state[{k!r}]"
    assert torch.equal(m1, m2), "changing the table changed the masks"
    changed = (f1 != f2).any(1)                                              # (B, H, W)
    assert not changed[m1 != world.BACKGROUND].any(), "changing the table changed non-table pixels"
    assert changed[m1 == world.BACKGROUND].float().mean() > 0.9, "the table colour barely changed"


@pytest.mark.parametrize("task", ["reach", "push"])
def test_expert_succeeds(task):
    """The scripted expert succeeds on >= 95% of 500 id episodes within env.max_steps (physics
    does not depend on the resolution, so nothing is rendered)."""
    env = EnvConfig(res=16, task=task)
    state, _ = worlds(env, B=500, seed=1)
    done = world.success(env, state)
    assert not done.any(), "some episodes start already solved"
    for _ in range(env.max_steps):
        state = step(env, state, expert(env, state))
        done |= world.success(env, state)
    assert done.float().mean() >= 0.95, f"{task} expert success {done.float().mean():.3f} < 0.95"


@pytest.mark.parametrize("suite", sorted(DEFAULT_SUITES))
def test_every_suite_places_entities_apart(suite):
    """In every suite the target starts clear of the goal (no push world starts solved, as
    layout@1's did when its goal covered the target's centre box) and the gripper clear of the
    target."""
    env = EnvConfig(res=16, task="push")
    state, _ = worlds(env, suite, B=2000, seed=1234)
    target, size = state["blocks"][:, 0], state["size"][:, 0]                 # (B, 2), (B,)
    sep = 1.5 * env.goal_size + size                                          # (B,)
    assert ((target - state["goal"]).norm(dim=-1) >= sep - 1e-6).all(), "target on the goal"
    assert not world.success(env, state).any(), f"{suite}: a push world starts solved"
    gap = (state["gripper"] - target).norm(dim=-1) - env.gripper_radius - size   # (B,)
    assert (gap > 0).all(), f"{suite}: gripper overlaps the target at reset"


def test_regions_without_room_raise_and_integer_boxes_work():
    """A suite whose regions leave the target no room clear of the goal raises, naming the region,
    instead of keeping an overlap; integer boxes ([[0, 0, 1, 1]]: the whole table) are valid."""
    env = EnvConfig(res=16, task="push")
    full = {"id": {**DEFAULT_SUITES["id"], "target_region": [[0, 0, 1, 1]]}}
    reset(env, get_suite(full, "id"), torch.tensor([4, 5]), torch.Generator())  # ints are fine
    cramped = {"id": {**DEFAULT_SUITES["id"], "goal_region": [[0.45, 0.45, 0.55, 0.55]],
                      "target_region": [[0.4, 0.4, 0.6, 0.6]]}}
    with pytest.raises(ValueError, match=r"no target position in \[\[0.4, 0.4, 0.6, 0.6\]\].* "
                       r"in 2 of 2 worlds"):
        reset(env, get_suite(cramped, "id"), torch.tensor([4, 5]), torch.Generator())


def test_ood_suites_disjoint_from_id():
    """No OOD suite (defaults, and config.yaml's if present) contains an id value; the check
    catches planted clashes; sampled OOD tables and lighting fall outside the id band."""
    assert ood_violations(DEFAULT_SUITES) == [], "\n".join(ood_violations(DEFAULT_SUITES))
    for family in ["background", "lighting", "distractors", "instance", "layout"]:
        assert {f"{family}@1", f"{family}@2"} <= set(DEFAULT_SUITES), f"{family}: < 2 severities"
    for clash in [{"brightness": [1.1, 1.3]}, {"textures": ["stripes", "noise"]},
                  {"table_colors": [[0.55, 0.5, 0.5]]}, {"goal_region": [[0.3, 0.3, 0.4, 0.4]]},
                  {"distractor_colors": ["red", "orange"]}, {"n_distractors": [2, 3]}]:
        assert ood_violations({"id": DEFAULT_SUITES["id"], "bad": clash}), f"missed clash {clash}"
    env, ref = EnvConfig(res=16), get_suite(DEFAULT_SUITES, "id")
    ids = torch.tensor(ref.table_colors)                                     # (n, 3)
    for name in ["background@1", "background@2", "lighting@1", "lighting@2"]:
        _, app = worlds(env, name, B=256)
        dist = (app["table"][:, None] - ids).abs().amax(-1).min(1).values    # (B,) to nearest id
        if "background" in name:
            assert (dist > ref.table_jitter).all(), f"{name}: a table colour inside the id band"
        else:
            lo, hi = ref.brightness
            assert ((app["brightness"] < lo) | (app["brightness"] > hi)).all(), name
            assert (app["tint"].norm(dim=1) > ref.tint[1]).all(), f"{name}: tint inside id band"


def tiny_cfg(tmp_path, **data_kw):
    """A small config: 8 episodes of 10 steps at res 16, windows of 2 + 2 frames at stride 3."""
    kw = {"n_episodes": 8, "n_ctx": 2, "n_future": 2, "stride": 3, "horizon": 4,
          "cache_dir": str(tmp_path), **data_kw}
    return SimpleNamespace(env=EnvConfig(res=16, max_steps=10), suites=DEFAULT_SUITES,
                           data=DataConfig(**kw))


def test_dataset_windows(tmp_path):
    """Dataset windows have the documented shapes, dtypes and ranges; context before 0 repeats
    frame 0, the future clamps to L, and the actions are the chunk starting at t."""
    cfg = tiny_cfg(tmp_path)
    demos = data.make_demos(cfg)
    ds = data.Dataset(demos, cfg.data)
    E, L, Ha, T, K = 8, 10, 4, 4, 4
    assert len(ds) == E * (L - Ha + 1), f"len {len(ds)} != E * (L - Ha + 1)"
    b = ds.batch(torch.arange(len(ds)))
    N = len(ds)
    want = {"video": ((N, T, 3, 16, 16), torch.float32), "actions": ((N, Ha, 2), torch.float32),
            "task": ((N,), torch.long), "masks": ((N, T, 16, 16), torch.uint8),
            "color": ((N, K), torch.long), "shape": ((N, K), torch.long),
            "frame_index": ((N, T), torch.long)}
    for k, (shape, dtype) in want.items():
        assert (tuple(b[k].shape), b[k].dtype) == (shape, dtype), f"{k}: {b[k].shape} {b[k].dtype}"
    assert b["video"].min() >= -1 and b["video"].max() <= 1, "video outside [-1, 1]"
    assert b["actions"].abs().max() <= 1, "actions outside [-1, 1]"
    times = b["frame_index"] % (L + 1)                                       # (N, T)
    t = torch.arange(N) % (L - Ha + 1)
    assert torch.equal(times, (t[:, None] + torch.tensor([-3, 0, 3, 6])).clamp(0, L))
    assert torch.equal(b["video"], world.to_float(demos["frames"].flatten(0, 1)[b["frame_index"]]))
    e = torch.arange(N) // (L - Ha + 1)
    for i in [0, 5, N - 1]:
        assert torch.equal(b["actions"][i], demos["actions"][e[i], t[i]:t[i] + Ha]), f"window {i}"
        one = ds[i]
        assert all(torch.equal(one[k], b[k][i]) for k in b), f"ds[{i}] != batch row {i}"


def test_windows_of_frame_every_demos_start_at_kept_frames():
    """On demos that keep a frame every k = 4 steps (mworld's), windows start only at kept frames,
    their context and future frames are the kept frames stride steps away (clamped to the first
    and last kept ones), and their actions are the Ha steps from the window's start; a stride
    that is not a multiple of k is refused by name."""
    E, L, k, Ha = 2, 10, 4, 3                                 # kept frames at steps 0, 4, 8
    steps = torch.arange(0, L + 1, k)                                          # (F,)
    F_ = len(steps)
    frames = torch.arange(E * F_, dtype=torch.uint8).view(E, F_, 1, 1, 1).expand(E, F_, 3, 8, 8)
    demos = {"frames": frames.contiguous(), "masks": torch.zeros(E, F_, 8, 8, dtype=torch.uint8),
             "actions": torch.rand(E, L, 4) * 2 - 1, "task": torch.tensor([1, 5]),
             "frame_steps": steps}
    ds = data.Dataset(demos, DataConfig(n_ctx=2, n_future=1, stride=4, horizon=Ha))
    assert len(ds) == E * ((L - Ha) // k + 1) == 4, f"{len(ds)} windows, expected 2 per episode"
    b = ds.batch(torch.arange(len(ds)))
    start = torch.tensor([0, 4, 0, 4])                                         # (B,) kept steps
    e = torch.tensor([0, 0, 1, 1])
    want = (start[:, None] + torch.tensor([-4, 0, 4])).clamp(0, 8) // k        # (B, T) kept ids
    assert torch.equal(b["frame_index"], e[:, None] * F_ + want), b["frame_index"]
    assert torch.equal(b["video"][:, :, 0, 0, 0], world.to_float(frames[e[:, None], want][
        ..., 0, 0, 0])), "video is not the frames frame_index names"
    for i in range(len(ds)):
        s = int(start[i])
        assert torch.equal(b["actions"][i], demos["actions"][e[i], s:s + Ha]), f"window {i}"
    assert b["actions"].shape == (4, Ha, 4) and "color" not in b, sorted(b)
    with pytest.raises(ValueError, match="data.stride = 6; expected a multiple of 4"):
        data.Dataset(demos, DataConfig(stride=6, horizon=Ha))


def test_action_normalization_round_trip(tmp_path):
    """normalize_actions inverts world.unnormalize_actions, and an action a moves a free gripper by
    exactly world.unnormalize_actions(a)."""
    env = EnvConfig(res=16, max_distractors=0)
    a = torch.rand(64, 2) * 2 - 1
    torch.testing.assert_close(world.normalize_actions(world.unnormalize_actions(a, env), env), a)
    state = {"gripper": torch.full((64, 2), 0.5), "blocks": torch.full((64, 1, 2), 0.9),
             "size": torch.full((64, 1), 0.05), "present": torch.ones(64, 1, dtype=torch.bool),
             "goal": torch.full((64, 2), 0.2), "task": torch.zeros(64, dtype=torch.long)}
    moved = step(env, state, a)["gripper"] - state["gripper"]
    torch.testing.assert_close(moved, world.unnormalize_actions(a, env))


def test_cache_returns_what_generation_returned(tmp_path, monkeypatch):
    """A second data.make_demos call loads the cache file and returns exactly what was generated;
    another seed is another cache file."""
    cfg = tiny_cfg(tmp_path)
    first = data.make_demos(cfg)
    files = list(tmp_path.glob("demos-*.pt"))
    assert [f.name for f in files] == [f"demos-{first['hash']}.pt"], f"cache files: {files}"

    def no_generation(*args):
        raise AssertionError("make_demos regenerated instead of loading the cache")

    monkeypatch.setattr(data, "generate_demos", no_generation)
    again = data.make_demos(cfg)
    assert again.keys() == first.keys(), "cached keys differ"
    for k, v in first.items():
        assert (v == again[k]) if isinstance(v, str) else torch.equal(v, again[k]), f"{k} differs"
    with pytest.raises(AssertionError, match="regenerated"):
        data.make_demos(tiny_cfg(tmp_path, seed=1))


def test_bad_inputs_raise():
    """Unknown suites, suite keys and tasks, wrong-shaped or NaN actions and wrongly typed or
    invalid config values (a negative distractor count, a block radius <= 0) raise errors naming
    the value and what was expected."""
    env = EnvConfig(res=16)
    state, _ = worlds(env, B=4)
    with pytest.raises(KeyError, match="nope"):
        get_suite(DEFAULT_SUITES, "nope")
    with pytest.raises(KeyError, match="did you mean 'suites.x.textures'"):
        get_suite({**DEFAULT_SUITES, "x": {"texture": ["noise"]}}, "x")
    with pytest.raises(ValueError, match="task ids"):
        reset(env, get_suite(DEFAULT_SUITES, "id"), torch.tensor([4, 5]), torch.Generator())
    with pytest.raises(ValueError, match="shape"):
        step(env, state, torch.zeros(4, 3))
    with pytest.raises(ValueError, match="NaN"):
        step(env, state, torch.tensor([[0.0, float("nan")]] * 4))
    def suite(**kw):
        return Suite(**{**DEFAULT_SUITES["id"], **kw})

    for bad, named in [(lambda: EnvConfig(res="64"), "res = '64'"),
                       (lambda: EnvConfig(task="pull"), "'pull'"),
                       (lambda: DataConfig(seed=1.5), "seed = 1.5"),
                       (lambda: DataConfig(horizon=True), "horizon = True"),
                       (lambda: suite(textures=["marble"]), "'marble'"),
                       (lambda: suite(brightness=[1.2, 0.8]), r"\[1.2, 0.8\]"),
                       (lambda: suite(n_distractors=[-1, 2]),
                        r"n_distractors = \[-1, 2\]; expected \[lo, hi\] with lo >= 0"),
                       (lambda: suite(target_size=[0.0, 0.1]),
                        r"target_size = \[0.0, 0.1\]; expected \[lo, hi\] with lo > 0"),
                       (lambda: suite(distractor_size=[-0.05, 0.1]),
                        r"distractor_size = \[-0.05, 0.1\]; expected \[lo, hi\] with lo > 0"),
                       (lambda: suite(distractor_colors=["red"]),
                        r"distractor_colors = \['red'\]; expected two or more distinct")]:
        with pytest.raises((TypeError, ValueError), match=named):
            bad()
    with pytest.raises(ValueError, match="max_distractors"):
        reset(EnvConfig(max_distractors=1), get_suite(DEFAULT_SUITES, "distractors@1"),
              torch.tensor([0]), torch.Generator())


@pytest.mark.parametrize("res", [16, 32, 64])
def test_every_resolution_renders(res):
    """Every resolution renders uint8 frames (B, 3, res, res) and masks with valid entity ids."""
    env = EnvConfig(res=res, task="push")
    frames, masks = render(env, *worlds(env, "distractors@2", B=8))
    assert frames.shape == (8, 3, res, res) and frames.dtype == torch.uint8
    assert masks.shape == (8, res, res) and int(masks.max()) < 4 + env.max_distractors
