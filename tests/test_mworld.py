"""Meta-World through mworld.py: 64 px frames, masks vs pixels, the experts, determinism,
perturbations that change only what they name, OOD suites disjoint from id, the demos, bad
inputs. One World is shared by the module's tests: making envs and renderers is the slow part."""

import importlib.util
from dataclasses import fields
from pathlib import Path

import pytest
import torch

if importlib.util.find_spec("metaworld") is None:  # not importorskip: mworld must import mujoco
    pytest.skip("metaworld is not installed", allow_module_level=True)  # first (MUJOCO_GL)
import mworld
from config import MWSuite, get_suite, load_config
from mworld import BACKGROUND, DISTRACTOR, GRIPPER, ROBOT, TARGET, TASKS

ROOT = Path(__file__).resolve().parents[1]
MW = load_config(ROOT / "configs" / "metaworld.yaml").metaworld
ALL = torch.arange(len(TASKS))  # one env per task


def suite(name):
    return get_suite(MW.suites, name, MWSuite, "metaworld.suites")


@pytest.fixture(scope="module")
def world():
    w = mworld.World(MW)
    yield w
    w.close()


def test_frames_are_64px_uint8_with_every_entity_in_the_masks(world):
    """render gives (B, 3, 64, 64) uint8 frames and (B, 64, 64) uint8 masks of known ids, and
    every task's first frame shows its gripper, its task object and the rest of the robot."""
    world.reset(suite("id"), ALL, 0)
    frames, masks = world.render()
    assert frames.shape == (len(TASKS), 3, 64, 64) and frames.dtype == torch.uint8, frames.shape
    assert masks.shape == (len(TASKS), 64, 64) and masks.dtype == torch.uint8, masks.shape
    assert set(masks.unique().tolist()) <= set(range(DISTRACTOR + 1)), masks.unique()
    for i, name in enumerate(TASKS):
        for eid in (GRIPPER, TARGET, ROBOT):
            assert (masks[i] == eid).sum() >= 2, f"{name}: {int((masks[i] == eid).sum())} px of id {eid}"


def test_masks_agree_with_pixels_when_the_gripper_moves(world):
    """After the gripper moves, its mask moves, and every pixel that is background in both frames
    keeps its exact colour (shadows and reflections are off: nothing else changes them)."""
    task = torch.tensor([TASKS.index("push")])
    world.reset(suite("id"), task, 1)
    f0, m0 = world.render()
    for _ in range(8):
        world.step(torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    f1, m1 = world.render()
    assert not torch.equal(m0 == GRIPPER, m1 == GRIPPER), "the gripper moved, its mask did not"
    bg = (m0 == BACKGROUND) & (m1 == BACKGROUND)                         # (1, H, W)
    assert bg.sum() > 1000, f"only {int(bg.sum())} background pixels"
    changed = (f0 != f1).any(1) & bg
    assert not changed.any(), f"{int(changed.sum())} background pixels changed colour"


@pytest.mark.parametrize("name, where", [("object@2", [TARGET]), ("table@2", [BACKGROUND]),
                                         ("texture@2", [BACKGROUND]),
                                         ("distractors@2", [BACKGROUND, DISTRACTOR])])
def test_a_perturbation_changes_only_what_it_names(world, name, where):
    """The same seed under id and under a perturbation suite gives the same layout; the pixels
    that differ all lie in the named entities' masks (the object, the table, the distractors),
    and some do in every env. The window's glass is translucent: the table shows through it."""
    world.reset(suite("id"), ALL, 2)
    f0, m0 = world.render()
    world.reset(suite(name), ALL, 2)
    f1, m1 = world.render()
    if name != "distractors@2":
        assert torch.equal(m0, m1), f"{name} changed the masks"
    inside = torch.zeros_like(m0, dtype=torch.bool)
    for eid in where:
        inside |= (m0 == eid) & (m1 == eid) if eid == BACKGROUND else (m0 == eid) | (m1 == eid)
    if BACKGROUND in where:
        inside[TASKS.index("window-open")] |= m0[TASKS.index("window-open")] == TARGET
    changed = (f0 != f1).any(1)                                              # (B, H, W)
    assert not (changed & ~inside).any(), \
        f"{name}: {int((changed & ~inside).sum())} pixels changed outside ids {where}"
    per_env = changed.flatten(1).sum(1)
    for i, t in enumerate(TASKS):
        assert per_env[i] > 0, f"{name} changed no pixel of {t}"


def test_frames_without_masks_are_the_same_frames(world):
    """render(masks=False), what a policy reads, gives the very frames render() gives, no masks."""
    world.reset(suite("distractors@2"), ALL, 5)
    frames = world.render()[0]
    alone, none = world.render(masks=False)
    assert torch.equal(frames, alone) and none is None, "frames differ without the mask pass"


def test_same_seed_same_pixels_another_seed_other_pixels(world):
    """Two resets with one seed, then the same expert steps, give identical frames and masks;
    another seed gives other frames."""
    def run(seed):
        world.reset(suite("id"), ALL, seed)
        out = list(world.render())
        for _ in range(5):
            world.step(world.expert())
        return out + list(world.render())

    a, b, c = run(3), run(3), run(4)
    for i, (x, y) in enumerate(zip(a, b)):
        assert torch.equal(x, y), f"tensor {i} differs between two runs with seed 3"
    assert not torch.equal(a[0], c[0]), "seeds 3 and 4 gave the same first frames"


def test_the_expert_succeeds_on_every_task(world):
    """Meta-World's scripted expert solves two fresh layouts of every task within max_steps,
    success counted at any step."""
    for seed in (10, 11):
        world.reset(suite("id"), ALL, seed)
        r = mworld.rollout(world, lambda t, f: world.expert(), MW.max_steps, frame_every=0)
        failed = [t for t, s in zip(TASKS, r["success"].tolist()) if not s]
        assert not failed, f"seed {seed}: the expert failed {failed}"


def test_ood_suites_lie_outside_the_id_band():
    """Every value an OOD suite changes lies outside id's: ranges disjoint, names not in id's
    lists, table colours farther than both jitters from every id colour."""
    ref, bad = suite("id"), []
    for name in [n for n in MW.suites if n != "id"]:
        s = suite(name)
        for f in fields(MWSuite):
            a, b = getattr(ref, f.name), getattr(s, f.name)
            if f.name == "table_jitter" or a == b:
                continue
            if f.name == "table_colors":
                band = ref.table_jitter + s.table_jitter
                clash = [c for c in b if any(max(abs(x - y) for x, y in zip(c, c0)) <= band
                                             for c0 in a)]
            elif isinstance(b[0], str):
                clash = sorted(set(a) & set(b))
            else:
                clash = [] if b[0] > a[1] or b[1] < a[0] else [b]
            bad += [f"{name}.{f.name}: {clash} overlaps id's {a}"] if clash else []
    assert not bad, bad
    assert len(MW.suites) == 1 + 2 * 6, f"suites {list(MW.suites)}: id + 6 kinds at 2 severities"


def test_demos_have_their_shapes_and_only_the_kept_frames(tmp_path):
    """make_demos stores actions (E, L, 4) in [-1, 1] for every step but frames and masks only
    every frame_every steps, one episode per task per round, and a second call reads the cache."""
    cfg = load_config(ROOT / "configs" / "metaworld.yaml", [
        "metaworld.max_steps=8", "metaworld.frame_every=4", "metaworld.episodes_per_task=1",
        f"data.cache_dir={str(tmp_path)!r}", "data.random_action_frac=0.0"])
    d, E = mworld.make_demos(cfg), len(TASKS)
    assert d["frames"].shape == (E, 3, 3, 64, 64) and d["masks"].shape == (E, 3, 64, 64)
    assert d["actions"].shape == (E, 8, 4) and d["actions"].abs().max() <= 1
    assert d["frame_steps"].tolist() == [0, 4, 8] and d["task"].tolist() == ALL.tolist()
    assert d["success"].dtype == torch.bool and d["success"].shape == (E,)
    assert [p.name for p in tmp_path.iterdir()] == [f"mwdemos-{d['hash']}.pt"]
    again = mworld.make_demos(cfg)
    assert all(torch.equal(d[k], again[k]) for k in d if k != "hash"), "the cache differs"


def test_bad_input_is_refused_by_name(world):
    """An unknown task name, a task id out of range, a wrong action shape and a NaN action raise
    errors that name the bad value and the expected one."""
    with pytest.raises(ValueError, match="did you mean 'pick-place'"):
        mworld.task_id("pick-plcae")
    with pytest.raises(ValueError, match=r"task \[0, 9\]: expected a \(B,\) long tensor"):
        world.reset(suite("id"), torch.tensor([0, 9]), 0)
    world.reset(suite("id"), torch.tensor([0, 1]), 0)
    with pytest.raises(ValueError, match=r"action has shape \(2, 2\); expected \(2, 4\)"):
        world.step(torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"NaN/inf in envs \[1\]"):
        world.step(torch.tensor([[0.0, 0, 0, 0], [0, float("nan"), 0, 0]]))
    with pytest.raises(TypeError, match="expected a config.MWSuite"):
        world.reset(get_suite(load_config(ROOT / "config.yaml").suites, "id"), ALL, 0)
