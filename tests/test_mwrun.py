"""The world action model on Meta-World (configs/metaworld.yaml): a tiny run trains with 4-D
actions and every teacher, and eval.py evaluates it (closed-loop success per task and per suite,
attention, PSNR; the tabletop-only analyses recorded as absent). Demos are made once per module."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

if importlib.util.find_spec("metaworld") is None:  # not importorskip: mworld must import mujoco
    pytest.skip("metaworld is not installed", allow_module_level=True)  # first (MUJOCO_GL)
import eval as ev
import mworld
import train
from config import load_config
from data import Dataset

ROOT = Path(__file__).resolve().parents[1]
TINY = ["metaworld.max_steps=16", "metaworld.episodes_per_task=1", "model.patch=16",
        "model.width=32", "model.depth=2", "model.heads=2", "model.head_width=32",
        "model.head_heads=2", "model.video_steps=2", "align.layer=1", "align.proj_hidden=32",
        "align.oracle_dim=32", "train.steps=4", "train.batch_size=8", "train.warmup=1",
        "train.log_every=2", "train.ckpt_every=4", "eval.episodes=6", "eval.suites=['id', 'table@2']",
        "eval.curve_suites=['id']", "eval.curve_episodes=6", "eval.heldout_episodes=6",
        "eval.attn_samples=8", "eval.psnr_samples=4", "eval.latency_reps=2", "eval.examples=2",
        "eval.replan=2", "train.snapshots=[1.0]"]


def tiny(tmp, name, *extra):
    return load_config(ROOT / "configs" / "metaworld.yaml", [
        *TINY, f"name={name}", f"train.out_dir={str(tmp / 'runs')!r}",
        f"data.cache_dir={str(tmp / 'cache')!r}", *extra])


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("mw")


def trained(tmp, teacher):
    """The tiny run of this teacher, trained once per module."""
    out = tmp / "runs" / teacher
    return out if (out / "ckpt.pt").exists() else \
        train.train(tiny(tmp, teacher, f"align.teacher={teacher!r}"))


@pytest.mark.parametrize("teacher", ["oracle", "shuffled", "random"])
def test_a_tiny_metaworld_run_trains_with_4d_actions(tmp, teacher):
    """A tiny Meta-World run trains a few steps on batches of (B, Ha, 4) actions with finite
    losses, with the oracle teacher and the shuffled and random-ViT controls."""
    cfg = tiny(tmp, teacher, f"align.teacher={teacher!r}")
    demos = mworld.make_demos(cfg)
    b = Dataset(demos, cfg.data).batch(torch.arange(8))
    assert b["actions"].shape == (8, cfg.data.horizon, 4), b["actions"].shape
    out = trained(tmp, teacher)
    ckpt = train.load_checkpoint(out / "ckpt.pt")
    assert ckpt["step"] == 4 and ckpt["teacher"] == teacher, (ckpt["step"], ckpt["teacher"])
    assert ckpt["model"]["action_head.x_embedder.weight"].shape[1] == 4, "action dim is not 4"
    rows = (out / "metrics.csv").read_text().splitlines()[1:]
    losses = [float(x) for r in rows for x in r.split(",")[1:5]]
    assert rows and all(math.isfinite(x) for x in losses), rows
    assert float(rows[-1].split(",")[4]) != 0, "the align loss was not logged"


def test_mworld_mask_ids_are_the_oracle_kinds():
    """mworld's mask ids 0..DISTRACTOR are config.MW_ENTITIES, the Meta-World oracle's kinds."""
    from config import MW_ENTITIES
    ids = [mworld.BACKGROUND, mworld.GRIPPER, mworld.GOAL, mworld.TARGET, mworld.ROBOT,
           mworld.DISTRACTOR]
    assert ids == list(range(len(MW_ENTITIES))), (ids, MW_ENTITIES)
    assert (MW_ENTITIES[mworld.ROBOT], MW_ENTITIES[mworld.TARGET]) == ("robot", "task object")


def test_eval_gives_success_per_task_and_suite_and_marks_tabletop_parts_absent(tmp):
    """eval.py on a tiny Meta-World run gives success per suite and per (suite, task) in [0, 1],
    attention in the interaction region, PSNR and hidden-state interventions; the pixel
    interventions and the probes are recorded as absent, with none of their keys."""
    m = ev.evaluate(trained(tmp, "oracle"))
    tasks = mworld.TASKS
    for suite in ["id", "table@2"]:
        rates = [m[f"success.{suite}"]] + [m[f"success_task.{suite}.{t}"] for t in tasks]
        assert all(0 <= r <= 1 for r in rates), (suite, rates)
    assert 0 <= m["success_curve.id@4"] <= 1, m["success_curve.id@4"]
    assert 0 <= m["attention.in_mask"] <= 1 and math.isfinite(m["video.psnr"]), m
    assert "intervention.hidden_ratio" in m, sorted(m)
    assert set(m) >= {"absent.intervention.pixel", "absent.probe"}, sorted(m)
    assert not [k for k in m if k.startswith(("probe.", "intervention.pixel."))], sorted(m)
    assert json.loads((tmp / "runs" / "oracle" / "eval" / "metrics.json").read_text()) == m
