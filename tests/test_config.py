"""config.py: the dataclass defaults are config.yaml's, presets and overrides load, bad keys,
values and paths are refused once, at load, with a message that names them."""

import subprocess
import sys
from dataclasses import asdict, fields
from pathlib import Path

import pytest
import yaml

import config
import world
from config import SECTIONS, Config, Suite, get_suite, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_dataclass_defaults_are_config_yaml():
    """Every section of config.yaml lists exactly its dataclass's fields, with the defaults'
    values, so the code and the file cannot drift apart; the id suite lists every Suite field."""
    raw = yaml.safe_load((ROOT / "config.yaml").read_text())
    default = asdict(Config())
    for section in SECTIONS:
        assert raw[section] == default[section], f"config.yaml {section}: differs from its defaults"
    assert raw["name"] == Config.name
    assert set(raw["suites"]["id"]) == {f.name for f in fields(Suite)}, "id lacks Suite fields"
    assert asdict(load_config(ROOT / "config.yaml")) == {**default, "suites": raw["suites"]}


@pytest.mark.parametrize("preset", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_preset_loads(preset):
    """Every preset loads through its base, and the base's suites arrive whole."""
    cfg = load_config(ROOT / "configs" / preset)
    assert "id" in cfg.suites and get_suite(cfg.suites, "id")


def test_overrides_reach_the_dataclasses():
    """Dotted overrides are parsed as Python literals and land in their sections."""
    cfg = load_config(ROOT / "configs" / "tiny.yaml", ["train.steps=7", "align.weight=0",
                                                      "eval.suites=['id']", "align.teacher=random"])
    assert (cfg.train.steps, cfg.align.weight, cfg.eval.suites, cfg.align.teacher) == \
        (7, 0.0, ["id"], "random")
    assert type(cfg.align.weight) is float, "an int given for a float field stays an int"


@pytest.mark.parametrize("override, error, named", [
    ("train.stpes=3", KeyError, "did you mean 'train.steps'"),
    ("trian.steps=3", KeyError, "did you mean 'train'"),
    ("train.steps=1.5", TypeError, "train.steps = 1.5 .float.; expected int"),
    ("train.steps=True", TypeError, "train.steps = True"),
    ("align.teacher=dinov3", ValueError, "did you mean 'dinov2'"),
    ("align.layer=5", ValueError, "align.layer = 5; expected 1..model.depth = 4"),
    ("eval.replan=5", ValueError, "eval.replan = 5; expected 1..data.horizon = 4"),
    ("eval.seed=0", ValueError, "eval.seed = 0 equals data.seed"),
    ("eval.suites=['id', 'ligthing@1']", ValueError, "did you mean 'lighting@1'"),
    ("eval.curve_suites=['all', 'id']", ValueError, "eval.curve_suites entry = 'all'"),
    ("env.max_distractors=2", ValueError, "suites.distractors@1.n_distractors reaches 3"),
    ("model.patch=5", ValueError, "env.res = 32; expected a multiple of model.patch = 5"),
    ("train.freeze='video'", ValueError, "a frozen video model cannot be aligned"),
    ("train.ema=1.0", ValueError, r"train.ema = 1.0; expected in \[0, 1\)"),
    ("suites.bad={'brightness': [2, 1]}", ValueError, r"suite.brightness = \[2, 1\]"),
    ("train.steps", ValueError, "must look like section.key=value"),
])
def test_bad_values_are_refused_at_load(override, error, named):
    """A bad key, type, choice, range or cross-section value raises when the config loads, with a
    message naming the value (and the nearest valid key or choice where there is one)."""
    with pytest.raises(error, match=named):
        load_config(ROOT / "config.yaml", [override])


def test_base_cycle_and_missing_file_raise(tmp_path):
    """A base that leads back to itself, and a base that does not exist, raise by name."""
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ValueError, match="cycle"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: nope.yaml\n")
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "c.yaml")


@pytest.mark.parametrize("script, args, named", [
    ("train.py", ["config.yaml", "train.stpes=3"], "did you mean 'train.steps'"),
    ("train.py", ["nope.yaml"], "nope.yaml does not exist"),
    ("data.py", ["config.yaml", "env.res='big'"], "env.res = 'big'"),
    ("eval.py", ["runs/does-not-exist"], "is not a run folder"),
    ("train.py", ["configs/tiny.yaml", "train.init_from=nope.pt"], "'nope.pt' is not a file"),
    ("bench.py", ["--threads", "0"], "--threads 0; expected >= 1"),
])
def test_command_line_errors_are_one_line(script, args, named):
    """A bad key, value, path or run folder on a command line exits with one line naming it,
    no traceback."""
    p = subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True,
                       check=False)
    assert p.returncode != 0 and named in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_atomic_save_and_seeded_rng(tmp_path):
    """atomic_save leaves the file and no temporary; seeded_rng leaves the caller's stream alone."""
    import torch
    config.atomic_save({"x": torch.ones(2)}, tmp_path / "a.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]
    torch.manual_seed(0)
    want = torch.rand(3)
    torch.manual_seed(0)
    with config.seeded_rng(7):
        torch.rand(5)
    assert torch.equal(torch.rand(3), want), "seeded_rng shifted the caller's random stream"


@pytest.mark.parametrize("override, named", [
    ("video.n_clips=8", "video.n_clips = 8 on a Meta-World run"),
    ("data.stride=6", "data.stride = 6; expected a multiple of metaworld.frame_every = 4"),
    ("align.teacher='oracle_task'", "align.teacher = 'oracle_task' on a Meta-World run"),
    ("eval.suites=['id', 'tabel@1']", "did you mean 'table@1'"),
    ("model.patch=5", "metaworld.res = 64; expected a multiple of model.patch = 5"),
])
def test_metaworld_run_refuses_what_it_cannot_do(override, named):
    """A Meta-World preset refuses at load, by name: action-free clips (tabletop-only), a stride
    between kept frames, the tabletop's oracle_task, a tabletop suite name, a patch that does not
    divide metaworld.res."""
    with pytest.raises(ValueError, match=named):
        load_config(ROOT / "configs" / "metaworld.yaml", [override])


def test_a_run_is_metaworld_exactly_when_metaworld_suites_is_set():
    """is_metaworld follows metaworld.suites, and with it the frame size, action dim and tasks."""
    tab, mw = load_config(ROOT / "config.yaml"), load_config(ROOT / "configs" / "metaworld.yaml")
    assert not config.is_metaworld(tab) and config.is_metaworld(mw)
    assert (config.frame_res(tab), config.action_dim(tab)) == (tab.env.res, 2)
    assert (config.frame_res(mw), config.action_dim(mw)) == (mw.metaworld.res, 4)
    assert config.tasks(tab) == (world.TASK_NAMES, world.task_ids(tab.env))
    assert config.tasks(mw) == (config.MW_TASKS, list(range(len(config.MW_TASKS))))
