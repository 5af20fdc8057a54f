"""study/run.sh's orchestration, with a stand-in for python that records each command (no
training): arms, seeds, order, workers, records, resuming, failures, the report call."""

import ast
import importlib
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEADLINE = ["baseline", "agra", "agra-random", "agra-shuffled"]

FAKE = r"""#!/usr/bin/env bash
# stands in for python: logs the command, makes the files train.py / eval.py would
echo "$*" >> calls.txt
script=$1; shift
if [ "$script" = train.py ]; then
  for a in "$@"; do case $a in name=*) name=${a#name=};; train.init_from=*)
    test -f "${a#train.init_from=}" || { echo "init_from missing: $a" >&2; exit 1; };; esac; done
  if [ "$name" = "${FAIL:-}" ]; then exit 1; fi
  mkdir -p "runs/$name"
  touch "runs/$name/config.yaml" "runs/$name/metrics.csv" "runs/$name/ckpt.pt"
elif [ "$script" = eval.py ] && [ "$#" = 1 ]; then
  mkdir -p "$1/eval" && echo {} > "$1/eval/metrics.json"
  touch "$1/eval/meta.json" "$1/eval/examples.pt" "$1/eval/pca.png" "$1/eval/success.png"
fi
"""


def study(tmp_path, *args, seeds="0 1", jobs=2, ok=True, fail="", weights="", cwd=None,
          preset="tiny"):
    """Runs a copy of study/run.sh in tmp_path (the repository root there) with the fake python."""
    (tmp_path / "study").mkdir(exist_ok=True)
    shutil.copy(ROOT / "study" / "run.sh", tmp_path / "study" / "run.sh")
    fake = tmp_path / "fakepy"
    fake.write_text(FAKE)
    fake.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "PYTHON": str(fake), "SEEDS": seeds, "JOBS": str(jobs),
           "FAIL": fail, "DINOV2_WEIGHTS": weights}  # FAIL: the run whose training fails
    p = subprocess.run(["bash", str(tmp_path / "study" / "run.sh"), preset, *args], check=False,
                       cwd=cwd or tmp_path, env=env, capture_output=True, text=True, timeout=120)
    if not ok:
        return p
    assert p.returncode == 0, p.stdout + p.stderr
    return (tmp_path / "calls.txt").read_text().splitlines()


def trains(calls):
    """name -> the overrides of its train.py call, without name=."""
    out = {}
    for c in calls:
        if c.startswith("train.py"):
            words = c.split()[2:]
            name = next(w for w in words if w.startswith("name="))[5:]
            out[name] = [w for w in words if not w.startswith("name=")]
    return out


def test_arms_of_a_seed_differ_only_in_their_knob(tmp_path):
    """Each headline run gets its seed and exactly its arm's overrides; nothing else differs."""
    t = trains(study(tmp_path, "headline"))
    assert sorted(t) == sorted(f"tiny-{a}-s{s}" for s in (0, 1) for a in HEADLINE)
    knobs = {"baseline": ["align.weight=0.0"], "agra": ["align.teacher=oracle"],
             "agra-random": ["align.teacher=random"], "agra-shuffled": ["align.teacher=shuffled"]}
    for s in (0, 1):
        for arm, knob in knobs.items():
            assert t[f"tiny-{arm}-s{s}"] == [f"train.seed={s}", *knob]


def test_every_override_is_a_key_the_config_accepts(tmp_path):
    """Every train.py call of the whole study (dinov2 arm included) loads as a valid config of the
    cpu preset: no override names a key the core has dropped or renamed."""
    sys.path.insert(0, str(ROOT))
    import config
    calls = study(tmp_path, "all", seeds="0", jobs=1, weights="/w/dinov2.pth")
    for name, overrides in trains(calls).items():
        cfg = config.load_config(ROOT / "configs" / "cpu.yaml", overrides)
        assert cfg.train.seed == 0, name


def test_the_regime_plan_is_the_2x2_the_controls_the_sweep_and_the_ablations(tmp_path):
    """`regime all`: seeds 0-2 of the six headline arms first (seeds outer), then the sweep and
    the ablations on seed 0, then seeds 3-4; every call loads as a valid regime config whose arm
    differs from agra-clips (or wam-clips) in exactly what its name says."""
    sys.path.insert(0, str(ROOT))
    import config
    calls = study(tmp_path, "all", seeds="0 1 2 3 4", jobs=1, preset="regime")
    names = [c.split()[2][5:] for c in calls if c.startswith("train.py")]
    head = ["wam-clips", "agra-clips", "wam", "agra", "agra-random-clips", "agra-shuffled-clips"]
    assert names[:18] == [f"regime-{a}-s{s}" for s in (0, 1, 2) for a in head], names[:18]
    assert names[-12:] == [f"regime-{a}-s{s}" for s in (3, 4) for a in head], names[-12:]
    later = sorted(n for n in names[18:-12])
    assert later == sorted(f"regime-{a}-s0" for a in
                           [f"{m}-clips-d{n}" for m in ("wam", "agra") for n in (125, 250, 1000)]
                           + ["abl-layer1", "abl-layer3", "abl-bridge_single", "abl-align_clips",
                              "abl-align_demos"]), later
    cfgs = {n: config.load_config(ROOT / "configs" / "regime.yaml", o)
            for n, o in trains(calls).items()}
    ref = cfgs["regime-agra-clips-s0"]
    assert ref.video.n_clips > 0 and ref.align.weight > 0 and ref.align.teacher == "oracle"
    assert cfgs["regime-wam-s0"].video.n_clips == cfgs["regime-agra-s0"].video.n_clips == 0
    assert cfgs["regime-wam-clips-s0"].align.weight == cfgs["regime-wam-s0"].align.weight == 0
    assert cfgs["regime-agra-clips-d125-s0"].data.n_episodes == 125
    assert cfgs["regime-wam-clips-d1000-s0"].align.weight == 0
    assert cfgs["regime-abl-align_clips-s0"].align.windows == "clips"
    assert cfgs["regime-abl-layer1-s0"].align.layer == 1
    assert cfgs["regime-agra-random-clips-s0"].align.teacher == "random"
    report = next(c for c in calls if c.startswith("study/report.py"))
    assert report.endswith("--baseline wam-clips --reference agra-clips --pair agra:wam"), report


def test_the_metaworld_plan_is_the_four_headline_arms(tmp_path):
    """`metaworld all`: baseline, agra and the two controls per seed, nothing else; every call
    loads as a valid Meta-World config of its arm."""
    sys.path.insert(0, str(ROOT))
    import config
    calls = study(tmp_path, "all", seeds="0 1", jobs=1, preset="metaworld")
    t = trains(calls)
    assert sorted(t) == sorted(f"metaworld-{a}-s{s}" for s in (0, 1) for a in HEADLINE), t
    for name, overrides in t.items():
        cfg = config.load_config(ROOT / "configs" / "metaworld.yaml", overrides)
        assert config.is_metaworld(cfg), name


def test_every_call_names_a_script_or_function_of_the_repository(tmp_path):
    """Each command the runner runs is a file of the repository root (train.py, eval.py,
    study/report.py), and the demos line calls functions the core has."""
    sys.path.insert(0, str(ROOT))
    calls = study(tmp_path, "headline", seeds="0")
    for c in calls:
        if c.startswith("-c "):  # module.function pairs of the demos line, each one the core has
            used = {(n.value.id, n.attr) for n in ast.walk(ast.parse(c[3:]))
                    if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)}
            assert {f for _, f in used} == {"make_data", "load_config"}, used
            for module, function in used:
                assert callable(getattr(importlib.import_module(module), function, None)), c
        else:
            assert (ROOT / c.split()[0]).is_file(), c
    assert any(c.startswith("study/report.py ") for c in calls), calls


def test_the_runner_works_from_any_directory(tmp_path):
    """Started from another folder, the runner still works in the repository root: runs/, results/
    and every call are relative to it."""
    (tmp_path / "elsewhere").mkdir()
    calls = study(tmp_path, "headline", seeds="0", cwd=tmp_path / "elsewhere")
    assert len(trains(calls)) == 4 and (tmp_path / "results/tiny/runs/tiny-agra-s0").is_dir()
    assert not any((tmp_path / "elsewhere").iterdir())


def test_local_dinov2_weights_add_the_real_teacher_arm(tmp_path):
    """With DINOV2_WEIGHTS set, each seed also trains agra-dinov2 on that file, strictly (no
    fallback to the oracle); without it there is no such arm."""
    t = trains(study(tmp_path, "headline", seeds="0", weights="/w/dinov2.pth"))
    assert t["tiny-agra-dinov2-s0"] == ["train.seed=0", "align.teacher=dinov2",
                                        "align.teacher_weights=/w/dinov2.pth",
                                        "align.strict_teacher=True"], t
    assert len(t) == 5, sorted(t)


def test_frozen_ablations_train_their_pretrain_first_and_start_from_it(tmp_path):
    """abl-frozen(-agra) runs its own video-only pretrain (same seed), then trains from its
    checkpoint with the video model frozen; the pretrain is never evaluated nor reported."""
    calls = study(tmp_path, "ablations")
    t = trains(calls)
    for arm, pre_knob in [("abl-frozen", "align.weight=0.0"), ("abl-frozen-agra",
                                                                "align.teacher=oracle")]:
        pre, run = f"tiny-{arm}-pre-s0", f"tiny-{arm}-s0"
        assert t[pre] == ["train.seed=0", pre_knob, "train.action_weight=0.0"]
        assert t[run] == ["train.seed=0", "align.weight=0.0", "train.freeze=video",
                          f"train.init_from=runs/{pre}/ckpt.pt"]
        order = [c.split()[2] for c in calls if c.startswith("train.py")]
        assert order.index(f"name={pre}") < order.index(f"name={run}")
        assert f"eval.py runs/{pre}" not in calls
        assert (tmp_path / "results/tiny/pretrain" / pre / "metrics.csv").exists()
        assert not (tmp_path / "results/tiny/runs" / pre).exists()
    report = [c for c in calls if c.startswith("study/report.py")]
    assert len(report) == 1 and "pre-s0" not in report[0]


def test_a_second_call_skips_finished_runs(tmp_path):
    """Run again, on a new machine without runs/, the study trains and evaluates nothing it
    finished: the records in results/ (everything eval.py wrote, no checkpoint) suffice, and the
    report is rebuilt from them."""
    first = study(tmp_path, "headline", seeds="0")
    (tmp_path / "calls.txt").unlink()
    shutil.rmtree(tmp_path / "runs")
    again = study(tmp_path, "headline", seeds="0")
    assert len(first) == 10  # the demos, 4 trains, 4 evals, the report
    assert again == [c for c in first if "--out" in c or "make_data" in c]
    rec = tmp_path / "results/tiny/runs/tiny-agra-s0"
    assert sorted(str(f.relative_to(rec)) for f in rec.rglob("*") if f.is_file()) == [
        "config.yaml", "eval/examples.pt", "eval/meta.json", "eval/metrics.json", "eval/pca.png",
        "eval/success.png", "metrics.csv"]
    report = next(c for c in again if "--out" in c).split()
    assert report[0] == "study/report.py" and report[5:7] == ["--out", "results/tiny"], report
    assert sorted(report[1:5]) == sorted(f"results/tiny/runs/tiny-{a}-s0" for a in HEADLINE)


def test_the_report_skips_unfinished_records_and_fills_the_readme_block_if_any(tmp_path):
    """The report reads only records with eval/metrics.json (copied last: a record cut short has
    none), and gets --readme README.md only when README.md has this preset's block."""
    (tmp_path / "results/tiny/runs/tiny-cut-s0/eval").mkdir(parents=True)
    calls = study(tmp_path, "headline", seeds="0")
    report = next(c for c in calls if c.startswith("study/report.py"))
    assert "tiny-cut-s0" not in report and "--readme" not in report, report
    (tmp_path / "README.md").write_text("<!-- results:results/tiny -->\n"
                                        "<!-- /results:results/tiny -->\n")
    (tmp_path / "calls.txt").unlink()
    report = next(c for c in study(tmp_path, "headline", seeds="0")
                  if c.startswith("study/report.py"))
    assert report.endswith("--out results/tiny --readme README.md --baseline baseline "
                           "--reference agra"), report


def test_workers_take_each_item_once(tmp_path):
    """Three workers over eight runs: every run trained and evaluated exactly once."""
    calls = study(tmp_path, "headline", seeds="0 1", jobs=3)
    names = [c.split()[2] for c in calls if c.startswith("train.py")]
    assert sorted(names) == sorted(f"name=tiny-{a}-s{s}" for s in (0, 1) for a in HEADLINE), names
    assert len([c for c in calls if c.startswith("eval.py runs/")]) == 8


def test_the_demos_are_built_once_before_any_run(tmp_path):
    """The workers start after the demonstrations exist: one make_data call, before every train."""
    calls = study(tmp_path, "headline", seeds="0 1", jobs=4)
    demos = [i for i, c in enumerate(calls) if "make_data" in c]
    assert demos == [0] and "configs/tiny.yaml" in calls[0], calls[:2]


def test_all_runs_three_seeds_then_the_ablations_then_the_other_seeds(tmp_path):
    """`all`: seeds 0-2, the one-knob ablations, seed 3, and the frozen backbone (with its
    pretrain) last, so the smallest complete study is in first and the optional ablations wait for
    the seeds."""
    order = list(trains(study(tmp_path, "all", seeds="0 1 2 3", jobs=1)))
    seed = [int(n.rsplit("-s", 1)[1]) if not n.startswith("tiny-abl") else None for n in order]
    abl = [i for i, s in enumerate(seed) if s is None]
    assert seed[:12] == [0] * 4 + [1] * 4 + [2] * 4, order
    assert abl[:7] == list(range(12, 19)) and seed[19:23] == [3] * 4, order
    assert order[23:] == ["tiny-abl-frozen-pre-s0", "tiny-abl-frozen-s0",
                          "tiny-abl-frozen-agra-pre-s0", "tiny-abl-frozen-agra-s0"], order


def test_an_unknown_part_is_refused(tmp_path):
    """A misspelt part fails at once with its name, and trains nothing."""
    p = study(tmp_path, "headlines", ok=False)
    assert p.returncode == 2 and "'headlines'" in p.stderr, p.stderr
    assert not (tmp_path / "calls.txt").exists()


def test_a_bad_job_count_is_refused(tmp_path):
    """JOBS=0 (or not a number) fails at once naming the value, not as a bash division by zero."""
    p = study(tmp_path, "headline", jobs=0, ok=False)
    assert p.returncode == 2 and "JOBS='0'" in p.stderr, p.stderr
    assert not (tmp_path / "calls.txt").exists()


def test_a_resumed_run_says_so_in_the_timing(tmp_path):
    """A run that starts from its checkpoint is logged as resumed (its time is not a whole
    run's)."""
    (tmp_path / "runs" / "tiny-baseline-s0").mkdir(parents=True)
    (tmp_path / "runs" / "tiny-baseline-s0" / "ckpt.pt").touch()
    study(tmp_path, "headline", seeds="0")
    lines = (tmp_path / "results" / "tiny" / "timing.txt").read_text().splitlines()
    done = {ln.split()[1]: ln for ln in lines if " done in " in ln}
    assert "resumed" in done["tiny-baseline-s0"] and "resumed" not in done["tiny-agra-s0"], lines


def test_a_failed_run_is_logged_and_retried_alone(tmp_path):
    """A run whose training fails gets a FAILED line and no record; the other runs are recorded and
    the report still runs; the next call retries that run alone."""
    calls = study(tmp_path, "headline", seeds="0", fail="tiny-agra-s0")
    timing = (tmp_path / "results/tiny/timing.txt").read_text()
    assert "FAILED: agra 0" in timing, timing
    recs = sorted(p.name for p in (tmp_path / "results/tiny/runs").iterdir())
    assert recs == ["tiny-agra-random-s0", "tiny-agra-shuffled-s0", "tiny-baseline-s0"], recs
    assert "eval.py runs/tiny-agra-s0" not in calls and any("--out" in c for c in calls)
    (tmp_path / "calls.txt").unlink()
    again = study(tmp_path, "headline", seeds="0")
    assert list(trains(again)) == ["tiny-agra-s0"], again
