"""study/report.py and study/charts.py on small hand-made run folders (config.yaml, metrics.csv,
eval/metrics.json written here): statistics, arms, tables, figures, the README block, records."""

import itertools
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

STUDY = Path(__file__).resolve().parents[1]
ROOT = STUDY.parent
sys.path.insert(0, str(STUDY))
import charts
import report

CSV = "step,loss,video,action,align\n10,1.0,0.5,0.5,0.0\n20,0.8,0.4,0.4,-0.2\n"


def metrics_of(v, teacher="t"):
    """A run's eval/metrics.json with every group the report reads, values set by v in (0, 1)."""
    return {"success.id": v, "success.a@1": v * 0.9, "success.a@2": v / 2,
            "success_curve.id@10": v / 3, "success_curve.id@20": v, "attention.in_mask": v / 4,
            "attention.chance": 0.1, "intervention.pixel.target_move": v,
            "intervention.hidden.mean.region": v / 5, "intervention.sensitivity_ratio": 10 * v,
            "probe.localization_acc": v / 2, "video.psnr": 20 + v, "latency.act_ms": 5.0,
            "time.success": 1.0, "time.total": 2.0, "teacher": teacher, "step": 20}


def examples(seed=0):
    """An eval/examples.pt as eval.py writes it: 2 windows of 8x8 frames, a 2x2 token grid."""
    g = torch.Generator().manual_seed(seed)
    return {"frames": torch.zeros(2, 3, 8, 8, dtype=torch.uint8), "attn": torch.rand(2, 2, 2,
            generator=g), "region": torch.tensor([[[True, False], [False, False]]] * 2)}


def make_run(parent, name, seed, weight, v, pictures=True, teacher="t"):
    """A run folder: config.yaml, metrics.csv, eval/metrics.json (and examples.pt, pca.png)."""
    run = parent / name
    (run / "eval").mkdir(parents=True)
    cfg = {"name": name, "train": {"seed": seed, "steps": 20}, "align": {"weight": weight}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "metrics.csv").write_text(CSV)
    (run / "eval" / "metrics.json").write_text(json.dumps(metrics_of(v, teacher)))
    if pictures:
        torch.save(examples(seed), run / "eval" / "examples.pt")
        (run / "eval" / "pca.png").write_bytes(b"png of " + name.encode())
    return run


@pytest.fixture
def two(tmp_path):
    """A baseline and an agra run of seed 0."""
    return [make_run(tmp_path / "runs", "x-baseline-s0", 0, 0.0, 0.4, teacher="none"),
            make_run(tmp_path / "runs", "x-agra-s0", 0, 0.5, 0.8, teacher="oracle")]


def tables(md):
    return [line for line in md.splitlines() if line.startswith("|")]


def test_mean_ci_and_arms(tmp_path):
    """Three seeds 1, 2, 3 give mean 2 +- 4.303/sqrt(3); runs differing in seed only form one
    arm."""
    mu, half, n = report.mean_ci([1.0, 2.0, 3.0, math.nan])
    assert (mu, n) == (2.0, 3) and abs(half - 4.303 / 3 ** 0.5) < 1e-9, (mu, half, n)
    ts = [report.t975(df) for df in range(1, 200)]  # past the table: 2.0395 at 31, 1.9840 at 100
    assert all(a > b for a, b in itertools.pairwise(ts)), "t quantiles must fall with the df"
    assert abs(ts[30] - 2.0395) < 1e-3 and abs(ts[99] - 1.9840) < 1e-3, (ts[30], ts[99])
    for name, seed, w in [("x-baseline-s0", 0, 0.0), ("x-baseline-s1", 1, 0.0),
                          ("x-agra-s0", 0, 1)]:
        (tmp_path / name).mkdir()
        cfg = {"name": name, "train": {"seed": seed}, "align": {"weight": w}}
        (tmp_path / name / "config.yaml").write_text(yaml.safe_dump(cfg))
    arms = report.arms_of(sorted(tmp_path.iterdir()))
    assert {a: [r.name for r in rs] for a, rs in arms.items()} == {
        "agra": ["x-agra-s0"], "baseline": ["x-baseline-s0", "x-baseline-s1"]}, arms


def test_a_knob_added_between_runs_at_one_value_does_not_split_an_arm(tmp_path, capsys):
    """Seed 1 ran after the code gained a knob (its config has it, seed 0's not): one arm, the key
    named on stderr; a knob that differs where present still splits the arms."""
    runs = [make_run(tmp_path / "runs", f"x-agra-s{s}", s, 0.5, 0.5) for s in (0, 1)]
    runs += [make_run(tmp_path / "runs", "x-abl-s1", 1, 0.5, 0.5)]
    for r, value in [(runs[1], "all"), (runs[2], "clips")]:
        cfg = yaml.safe_load((r / "config.yaml").read_text())
        cfg["align"]["windows"] = value
        (r / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert list(report.arms_of(runs[:2]).values()) == [runs[:2]]
    assert "not compared: align.windows" in capsys.readouterr().err
    assert len(report.arms_of(runs)) == 3, report.arms_of(runs)


def test_frozen_arms_group_over_seeds_and_apart_by_pretrain(tmp_path):
    """Runs started from their own seed's pretrain form one arm; another pretrain, another arm."""
    for arm, pre in [("frozen", "frozen-pre"), ("frozen-agra", "frozen-agra-pre")]:
        for seed in (0, 1):
            name = f"x-{arm}-s{seed}"
            cfg = {"name": name, "train": {"seed": seed,
                                           "init_from": f"runs/x-{pre}-s{seed}/ckpt.pt"}}
            (tmp_path / name).mkdir()
            (tmp_path / name / "config.yaml").write_text(yaml.safe_dump(cfg))
    arms = report.arms_of(sorted(tmp_path.iterdir()))
    assert {a: [r.name for r in rs] for a, rs in arms.items()} == {
        "frozen": ["x-frozen-s0", "x-frozen-s1"],
        "frozen-agra": ["x-frozen-agra-s0", "x-frozen-agra-s1"]}, arms


def test_figures_give_each_arm_its_own_colour_and_skip_missing_points(tmp_path):
    """Eleven arms get eleven colours (the default cycle has ten) and an arm keeps its colour
    between figures; an arm without points for a panel is left out of it, not a crash; with no
    baseline arm the summary has no paired rows rather than rows of nan."""
    labels = [f"a{i}" for i in range(11)]
    assert len(set(charts.palette(labels).values())) == 11
    assert charts.palette(labels[:3]) == {"a0": "C0", "a1": "C1", "a2": "C2"}
    stats = {"a": {"success_curve.id@10": (0.5, 0.1, 2)}, "b": {"success.id": (1.0, 0.0, 1)}}
    assert charts.lines(tmp_path / "c.png", stats, "success_curve.", "step") == "c.png"
    md = report.summary({"agra": ["r0"]}, {"r0": {"success.id": 1.0, "teacher": "t"}}, {"r0": 0},
                        "baseline")
    assert "Paired" not in md and "nan" not in md, md


def test_error_bars_of_rates_stay_inside_zero_and_one():
    """A success rate's error bar is cut at 0 and 1 (a rate near 1 with a wide interval does not
    reach 1.1); other metrics keep the whole interval; a nan interval draws no bar."""
    assert charts.bar_err(0.98, 0.1, True) == pytest.approx((0.1, 0.02))
    assert charts.bar_err(0.03, 0.1, True) == pytest.approx((0.03, 0.1))
    assert charts.bar_err(30.0, 12.0, False) == (12.0, 12.0)
    assert charts.bar_err(0.5, math.nan, True) == (0.0, 0.0)


def test_ood_success_is_the_mean_over_the_suites_every_run_has():
    """OOD success is each run's mean over the suites all runs were evaluated on (a suite only some
    runs have is named and left out of it); a run without OOD suites has no OOD success (n/a)."""
    metrics = {"r0": {"success.id": 1.0, "success.a": 0.2, "success.b": 0.6, "teacher": "t"},
               "r1": {"success.id": 1.0, "success.a": 0.4, "success.b": 0.8, "success.c": 0.0,
                      "teacher": "t"}}
    md = report.summary({"baseline": ["r0", "r1"]}, metrics, {"r0": 0, "r1": 1}, "baseline")
    assert "| baseline | 2 | t | 1.000 ± 0.000 | 0.500 ± 1.271 |" in md, md
    assert "not every run has c," in md, md
    md = report.summary({"baseline": ["r0"]}, {"r0": {"success.id": 1.0, "teacher": "t"}},
                        {"r0": 0}, "baseline")
    assert "| baseline | 1 | t | 1.000 | n/a |" in md, md


def test_ablation_table_compares_on_the_ablations_seeds_only():
    """Ablations run on seed 0 sit beside the baseline and agra rows of seed 0 alone (not the
    means over every seed), and each gets its paired difference to the baseline."""
    arms = {"baseline": ["b0", "b1"], "agra": ["a0", "a1"], "abl-x": ["x0"]}
    seed = {"b0": 0, "b1": 1, "a0": 0, "a1": 1, "x0": 0}
    metrics = {r: {"success.id": v, "success.far": v / 2, "teacher": "t"}
               for r, v in [("b0", 0.2), ("b1", 0.4), ("a0", 0.6), ("a1", 1.0), ("x0", 0.8)]}
    md = report.summary(arms, metrics, seed, "baseline")
    assert "| baseline | 2 | t | 0.300 ± 1.271 | 0.150 ± 0.635 |" in md, md
    assert "| baseline (seed 0) | 1 | t | 0.200 | 0.100 |" in md, md
    assert "| agra (seed 0) | 1 | t | 0.600 | 0.300 |" in md, md
    assert "| abl-x | 1 | t | 0.800 | 0.400 |" in md, md
    assert "| abl-x - baseline | 1 | +0.600 | +0.300 |" in md, md


def test_report_of_two_runs_has_the_arm_table(two, tmp_path):
    """Two runs of two arms give report.md with the arm table, the paired differences to the
    baseline, the timing table and the figures it links, each written."""
    report.main([*map(str, two), "--out", str(tmp_path / "rep")])
    md = (tmp_path / "rep" / "report.md").read_text()
    for text in ["| arm | runs | train.seed | teacher | steps |",
                 "| baseline | x-baseline-s0 | 0 | none | 20 |",
                 "| agra | x-agra-s0 | 0 | oracle |",
                 "## Paired differences (to baseline", "| success.id | 0.400 (1) |",
                 "## Time (seconds)", "`python study/report.py "]:
        assert text in md, f"report.md lacks {text!r}"
    for f in ["success.png", "severity.png", "curve.png", "sensitivity.png", "training.png",
              "attention.png", "pca_agra.png", "pca_baseline.png"]:
        assert (tmp_path / "rep" / f).is_file() and f"({f})" in md, f"{f} not written or linked"
    assert (tmp_path / "rep" / "pca_agra.png").read_bytes() == b"png of x-agra-s0"


def test_ablations_get_their_own_table_and_pictures(two, tmp_path, monkeypatch):
    """An abl-* arm stays out of the headline pictures and gets its own, beside the baseline and
    agra runs of its seed; summary.md gets the ablation table."""
    seen, figures = [], charts.figures
    monkeypatch.setattr(charts, "figures", lambda out, stats, *a: seen.append(sorted(stats))
                        or figures(out, stats, *a))
    abl = make_run(tmp_path / "runs", "x-abl-w1-s0", 0, 1.0, 0.6, pictures=False)
    report.main([*map(str, two), str(abl), "--out", str(tmp_path / "rep")])
    md, summary = (tmp_path / "rep" / "report.md").read_text(), \
        (tmp_path / "rep" / "summary.md").read_text()
    assert seen[-1] == ["agra", "baseline"], f"headline pictures drew {seen[-1]}"
    for f in ["abl_severity.png", "abl_curve.png"]:
        assert (tmp_path / "rep" / f).is_file() and f"({f})" in md, f"{f} not written or linked"
    for row in ["| baseline (seed 0) | 1 |", "| agra (seed 0) | 1 |", "| abl-w1 | 1 |"]:
        assert row in summary.split("Ablations")[1], f"ablation table lacks {row!r}"


def test_readme_block_is_filled_from_the_summary(two, tmp_path):
    """--readme replaces exactly the marked block with summary.md and keeps the text around it;
    a file without the markers is an error that names them."""
    readme, out = tmp_path / "README.md", tmp_path / "rep"
    readme.write_text(f"before\n<!-- results:{out} -->\nstale\n<!-- /results:{out} -->\nafter\n")
    args = [*map(str, two), "--out", str(out)]
    report.main([*args, "--readme", str(readme)])
    text = readme.read_text()
    assert "stale" not in text and text.startswith("before\n") and text.endswith("after\n"), text
    assert (out / "summary.md").read_text() in text, "summary.md not pasted"
    assert "| agra - baseline | 1 |" in text, "paired difference row missing"
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="results:"):
        report.main([*args, "--readme", str(readme)])


def test_recorded_runs_give_the_same_report(two, tmp_path):
    """A run's record (its folder without ckpt.pt and snapshots/, as study/run.sh keeps it) gives
    the report its live folder gives; one that lost its examples is left out of the attention
    picture and named; a folder without eval/metrics.json is refused, naming the eval.py call."""
    for r in two:
        (r / "ckpt.pt").write_bytes(b"weights")
        (r / "snapshots").mkdir()
    report.main([*map(str, two), "--out", str(tmp_path / "live")])
    rec = [tmp_path / "rec" / r.name for r in two]
    for r, dst in zip(two, rec, strict=True):
        shutil.copytree(r, dst, ignore=shutil.ignore_patterns("ckpt.pt", "snapshots"))
    report.main([*map(str, rec), "--out", str(tmp_path / "again")])
    for f in ["summary.md", "report.md"]:
        a, b = [(tmp_path / d / f).read_text() for d in ("live", "again")]
        assert tables(a) == tables(b) and tables(a), f"{f}: the record's tables differ"
    (rec[0] / "eval" / "examples.pt").unlink()
    report.main([*map(str, rec), "--out", str(tmp_path / "lost")])
    md = (tmp_path / "lost" / "report.md").read_text()
    assert "No attention map for baseline" in md and \
        "Attention rows, top to bottom: agra (x-agra-s0)" in md, md
    (rec[0] / "eval" / "metrics.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"x-baseline-s0 has no eval/metrics.json: run "
                       r"`python eval.py .*x-baseline-s0` first"):
        report.main([*map(str, rec), "--out", str(tmp_path / "x")])


def test_training_curves_of_runs_in_progress(tmp_path, monkeypatch):
    """`--curves OUT.png RUN...` draws runs from their metrics.csv so far (no eval yet): the seeds
    of an arm share its colour, another arm gets another; a folder that is not a run is named."""
    runs = []
    for name, weight in [("p-x-s0", 0.5), ("p-x-s1", 0.5), ("p-y-s0", 0.0)]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.csv").write_text(CSV)
        (tmp_path / name / "config.yaml").write_text(
            f"name: {name}\ntrain: {{seed: {name[-1]}}}\nalign: {{weight: {weight}}}\n")
        runs.append(str(tmp_path / name))
    report.main(["--curves", str(tmp_path / "t.png"), *runs])
    assert (tmp_path / "t.png").stat().st_size > 0
    seen = {}
    monkeypatch.setattr(charts, "training", lambda path, csvs, colors: seen.update(colors))
    report.main(["--curves", str(tmp_path / "t.png"), *runs])
    c = {Path(r).name: v for r, v in seen.items()}
    assert c["p-x-s0"] == c["p-x-s1"] == ("C0", "x") and c["p-y-s0"] == ("C1", "y"), c
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty is not a run folder"):
        report.main(["--curves", str(tmp_path / "t.png"), str(tmp_path / "empty")])


def test_committed_records_regenerate_their_summary(tmp_path):
    """results/cpu-1000/runs/* (records: no checkpoints, no examples) give every table line of
    the committed results/cpu-1000/summary.md, in order: the README's numbers are regenerable."""
    recs = sorted((ROOT / "results" / "cpu-1000" / "runs").iterdir())
    assert len(recs) == 7, recs
    report.main([*map(str, recs), "--out", str(tmp_path / "rep")])
    want = tables((ROOT / "results" / "cpu-1000" / "summary.md").read_text())
    assert want and tables((tmp_path / "rep" / "summary.md").read_text()) == want


def test_the_report_imports_nothing_of_the_core():
    """Loading study/report.py loads none of the core's modules (train, eval, model, ...): the
    study reads their files, never their code, so a core in flux cannot break old reports."""
    core = ["align", "bench", "config", "data", "eval", "model", "train", "world", "plots"]
    code = (f"import sys; sys.path.insert(0, {str(STUDY)!r}); import report; "
            f"print(sorted(m for m in {core!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def regime_run(parent, name, seed, weight, clips, n, v):
    """A run of the paired regime: video.covered marks a@1 and b@1 as inside the clips' band."""
    run = make_run(parent, name, seed, weight, v)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg.update(data={"n_episodes": n}, video={"n_clips": clips, "covered": ["a@1", "b@1"]})
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    m = json.loads((run / "eval" / "metrics.json").read_text())
    m.update({"success.b@1": v * 0.8, "success.b@2": v * 0.2})
    (run / "eval" / "metrics.json").write_text(json.dumps(m))
    return run


def test_families_sweep_and_extra_pairs_of_the_regime(tmp_path, capsys):
    """Runs with video.covered get success per family (mean of its suites), covered (@1) and
    unseen (@2) means; <arm>-d<n> arms are a sweep drawn against n with <arm> at its own count on
    the sweep's seeds, kept out of the headline and listed once; --pair adds a paired row, and a
    pair with an arm that has no runs is skipped with a warning."""
    runs = [regime_run(tmp_path / "runs", f"r-{arm}-s{s}", s, w, c, n, v)
            for arm, w, c, n, v0 in [("wam-clips", 0.0, 8, 500, 0.4),
                                     ("agra-clips", 0.5, 8, 500, 0.6),
                                     ("wam", 0.0, 0, 500, 0.3), ("agra", 0.5, 0, 500, 0.5)]
            for s, v in [(0, v0), (1, v0 + 0.1)]]
    runs += [regime_run(tmp_path / "runs", "r-agra-clips-d125-s0", 0, 0.5, 8, 125, 0.2)]
    report.main([*map(str, runs), "--out", str(tmp_path / "rep"), "--baseline", "wam-clips",
                 "--reference", "agra-clips", "--pair", "agra:wam"])
    md = (tmp_path / "rep" / "summary.md").read_text()
    v = 0.6  # agra-clips seed 0: a@1 0.54, a@2 0.3, b@1 0.48, b@2 0.12
    fam = {"id": v, "a": (0.9 * v + v / 2) / 2, "b": (0.8 * v + 0.2 * v) / 2,
           "covered": (0.9 * v + 0.8 * v) / 2, "unseen": (v / 2 + 0.2 * v) / 2,
           "ood": (0.9 * v + v / 2 + 0.8 * v + 0.2 * v) / 4}
    m = report.with_families({"x": json.loads((runs[2] / "eval" / "metrics.json").read_text())},
                             {"x": {"video.covered": ["a@1", "b@1"]}})["x"]
    for k, want in fam.items():
        assert math.isclose(m[f"family.{k}"], want), (k, m[f"family.{k}"], want)
    assert "| id | a | b | covered | unseen | ood |" in md.replace(
        "| arm | seeds | teacher ", ""), md
    assert "| agra - wam | 2 |" in md and "| agra-clips - wam-clips | 2 | +0.200" in md, md
    assert "| agra-clips | 125 | 0.200 |" in md and "| agra-clips | 500 | 0.600 |" in md, md
    for f in ["demos.png", "families.png"]:
        assert (tmp_path / "rep" / f).is_file(), f"{f} not drawn"
    head = [line for line in md.split("Success per suite family")[0].splitlines()
            if line.startswith("| agra-clips-d125")]
    assert not head, "a sweep point sits in the headline table"
    report.main([*map(str, runs), "--out", str(tmp_path / "rep2"), "--pair", "agra:nope"])
    assert "--pair agra:nope skipped: no runs of arm nope" in capsys.readouterr().err
    assert "| agra - nope |" not in (tmp_path / "rep2" / "summary.md").read_text()
    sweep_only = report.summary({"agra-clips-d125": ["x"]}, {"x": {"success.id": 1.0,
                                "success.a@1": 0.5, "teacher": "t"}}, {"x": 0}, "wam-clips",
                                configs={"x": {"data.n_episodes": 125}})
    assert sweep_only.count("| agra-clips-d125 |") == 1, sweep_only  # per suite, not as headline
    assert "| agra-clips | 125 | 1.000 | 0.500 |" in sweep_only, sweep_only
    cov = {"video.covered": ["a@1"]}
    fam = report.with_families({"x": {"success.id": 1.0, "success.a@1": 0.8, "success.a@2": 0.2},
                                "y": {"success.id": 1.0, "success.a@1": 0.6}}, {"x": cov, "y": cov})
    assert fam["x"]["family.ood"] == 0.8 and "family.unseen" not in fam["x"], fam
    assert "not every run has a@2" in capsys.readouterr().err
