"""The study's report: `python study/report.py RUN_DIR [RUN_DIR ...] --out DIR [--baseline NAME]
[--reference NAME] [--pair ARM:ARM ...] [--readme FILE]` reads each run's config.yaml,
metrics.csv and eval/metrics.json (a record in results/<preset>/runs/, or a live runs/<name>/
that `python eval.py` has evaluated) and writes
DIR/report.md (every metric), DIR/summary.md (the README's tables) and the comparison figures.
`--curves OUT.png RUN_DIR ...` draws only the training curves, of runs still in progress too.

An arm = the runs whose config.yaml differ only in name, train.seed and paths; named after its first
run without a trailing -s<seed> (or _seed<k>) and without the prefix all arm names share
("cpu-agra-s1" -> "agra" next to "cpu-baseline-s0" -> "baseline"). Each arm gets its mean and 95%
t-interval over seeds, and the paired per-seed difference to the baseline arm with its interval
(and of each --pair). Runs of the paired regime (a config with video.covered) also get success per
suite family, covered (@1) and unseen (@2) apart; arms named <arm>-d<count> are a demonstration
count sweep of <arm>, shown against the count (with <arm>'s runs of the same seeds).
The figures are in study/charts.py. Nothing of the core (train.py, eval.py, ...) is imported here.
"""

import argparse
import json
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # charts.py beside this file, however run
import charts

T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042]  # t-distribution 97.5% quantiles, 1..30 degrees of freedom
ARM_FREE = {"name", "train.seed", "train.out_dir", "train.device", "data.cache_dir"}
TIMES = ["heldout", "success", "success_curve", "attention", "intervention", "probe", "video",
         "latency", "total"]  # time.<part> columns of the report
ORDER = ["success.", "success_task.", "family.", "attention.", "intervention.", "probe.", "video.",
         "latency."]  # the groups of the report's metric rows, in order (success_task: Meta-World)


# -----------------------------------------------------------------------------
# statistics and run folders


def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def mean_ci(xs):
    """(mean, 95% t-interval half-width, n) of the finite values; half-width nan for n < 2."""
    xs = [x for x in xs if is_number(x) and math.isfinite(x)]
    n = len(xs)
    if n < 2:
        return (xs[0] if xs else float("nan")), float("nan"), n
    mu = sum(xs) / n
    sd = math.sqrt(sum((x - mu) ** 2 for x in xs) / (n - 1))
    return mu, t975(n - 1) * sd / math.sqrt(n), n


def t975(df):
    """The t-distribution's 97.5% quantile: the table up to 30 degrees of freedom, then the
    Cornish-Fisher expansion around the normal's 1.96 (within 1e-3 of the exact value there)."""
    if df <= 30:
        return T975[df - 1]
    z = 1.959964
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


def flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def read_csv(path):
    """A run's metrics.csv -> {column: [floats]}."""
    lines = [line.split(",") for line in Path(path).read_text().split()]
    return {c: [float(r[i]) for r in lines[1:]] for i, c in enumerate(lines[0])}


def arms_of(runs):
    """{arm name: [run dirs]}: runs whose configs differ only in name, train.seed and paths. A key
    only some configs have, with one value in all of them (a knob added to the code between
    runs, at its default: the old behaviour), is named on stderr and left out of the comparison."""
    groups, configs = {}, {}
    for r in runs:
        c = flat(yaml.safe_load((r / "config.yaml").read_text()))
        if c.get("train.init_from"):  # each seed starts from its own seed's pretrain: one arm
            c["train.init_from"] = re.sub(r"[-_]s(eed)?\d+(?=[/\\])", "", c["train.init_from"])
        configs[r] = c
    shared = set.intersection(*(set(c) for c in configs.values())) if configs else set()
    new = [k for k in sorted(set().union(*configs.values()) - shared)
           if len({json.dumps(c[k]) for c in configs.values() if k in c}) == 1]
    if new:
        print(f"report: keys only some runs' configs have, each with one value, not compared: "
              f"{', '.join(new)}", file=sys.stderr)
    for r, c in configs.items():
        key = json.dumps({k: v for k, v in c.items() if k not in new and k not in ARM_FREE
                          and not k.startswith("eval.")}, sort_keys=True)
        groups.setdefault(key, []).append(r)
    names = [re.sub(r"[-_]s(eed)?\d+$", "", Path(rs[0]).resolve().name) for rs in groups.values()]
    cut = os.path.commonprefix(names).rfind("-") + 1 if len(names) > 1 else 0
    arms = {}
    for name, rs in zip(names, groups.values()):
        name = name[cut:] or name
        while name in arms:  # same name, different configs: keep both apart, loudly
            print(f"WARNING: runs {rs} differ from {arms[name]} beyond the seed; arm '{name}+'")
            name += "+"
        arms[name] = rs
    return arms


def with_families(metrics, configs):
    """Success per suite family for runs whose config marks covered suites (video.covered): the
    metrics with family.<f> (the mean of f@1, f@2, ...), family.covered and family.unseen (the
    means of the OOD suites inside and outside the clips' band), family.ood (all OOD suites) and
    family.id added; other runs as they are. Every mean is over the suites all such runs have
    (a suite only some have is named on stderr and left out), so the runs' means compare."""
    marked = [r for r in metrics if configs[r].get("video.covered")]
    have = [{k for k in metrics[r] if k.startswith("success.") and k != "success.id"}
            for r in marked]
    common = set.intersection(*have) if have else set()
    if left := sorted(set().union(*have) - common):
        print(f"report: not every run has {', '.join(k[8:] for k in left)}; left out of the "
              "family means", file=sys.stderr)
    out = {}
    for r, m in metrics.items():
        covered = configs[r].get("video.covered")
        ood = {k[8:]: v for k, v in m.items() if k in common}
        if not covered or not ood:
            out[r] = m
            continue
        fams = {}
        for name, v in ood.items():
            fams.setdefault(name.split("@")[0], []).append(v)
        groups = {**fams, "covered": [v for k, v in ood.items() if k in covered],
                  "unseen": [v for k, v in ood.items() if k not in covered],
                  "ood": list(ood.values())}
        out[r] = {**m, "family.id": m["success.id"],
                  **{f"family.{g}": sum(vs) / len(vs) for g, vs in groups.items() if vs}}
    return out


def is_sweep(arm):
    """'agra-clips-d125' -> ('agra-clips', 125); None for an arm not named <arm>-d<count>."""
    m = re.fullmatch(r"(.+)-d(\d+)", arm)
    return (m[1], int(m[2])) if m else None


def check_runs(runs, evaluated=True):
    """Every folder has config.yaml and metrics.csv, and (evaluated) eval/metrics.json."""
    for r in runs:
        if not (r / "config.yaml").is_file() or not (r / "metrics.csv").is_file():
            raise FileNotFoundError(f"{r} is not a run folder (needs config.yaml and metrics.csv)")
        if evaluated and not (r / "eval" / "metrics.json").is_file():
            raise FileNotFoundError(f"{r} has no eval/metrics.json: run `python eval.py {r}` first")


# -----------------------------------------------------------------------------
# report.md


def fmt(v):
    if not is_number(v) or math.isnan(v):
        return "n/a"
    if abs(v) < 1e-9:  # rounding noise, e.g. the spread of three equal values
        return "0.000"
    return f"{v:.1f}" if abs(v) >= 100 else f"{v:.3f}" if abs(v) >= 0.01 or v == 0 else f"{v:.1e}"


def ablation_rows(arms, seed, baseline, reference="agra"):
    """[(label, runs)]: `baseline` and `reference` on the seeds the ablations (arms named abl-*)
    ran, then the ablations. An ablation is one knob away from `reference`, so it is compared on
    its own seeds, not with means over seeds it never ran."""
    abl = [a for a in arms if a.startswith("abl-")]
    seeds = sorted({seed[r] for a in abl for r in arms[a]})
    refs = [(f"{a} (seed {', '.join(map(str, seeds))})", [r for r in arms.get(a, [])
                                                          if seed[r] in seeds])
            for a in (baseline, reference)]
    return [(a, rs) for a, rs in refs if rs] + [(a, arms[a]) for a in abl]


def table_keys(runs, metrics):
    """The report's metric rows: ORDER's groups, success.id first, then by name."""
    def row(k):
        return next(i for i, p in enumerate(ORDER) if k.startswith(p)), k != "success.id", k
    return sorted({k for r in runs for k, v in metrics[r].items() if is_number(v)
                   and k.startswith(tuple(ORDER))}, key=row)


def paired_diffs(arms, metrics, seed, pairs, keys):
    """{"a - b": {key: mean_ci of the per-seed differences a - b}} for each pair (a, b) of arms
    that share a seed."""
    diffs = {}
    for a, b in pairs:
        base = {seed[r]: metrics[r] for r in arms.get(b, [])}
        both = [(metrics[r], base[seed[r]]) for r in arms.get(a, []) if seed[r] in base]
        if a != b and both:
            diffs[f"{a} - {b}"] = {k: mean_ci([x[k] - y[k] for x, y in both if is_number(x.get(k))
                                               and is_number(y.get(k))]) for k in keys}
    return diffs


def pairs_of(arms, baseline, extra=()):
    """Every arm against `baseline`, then the extra (a, b) pairs."""
    return [(a, baseline) for a in arms if a != baseline] + list(extra)


def shown_pictures(arms):
    """{"examples.pt": {arm: its first run with eval/examples.pt}, "pca.png": {arm: its first run
    with eval/pca.png, else with eval/examples.pt (drawn from it)}}, None for an arm without (a run
    recorded by an older study.sh may have neither); arms without one are named on stderr."""
    def first(rs, f):
        return next((r for r in rs if (r / "eval" / f).is_file()), None)
    shown = {"examples.pt": {a: first(rs, "examples.pt") for a, rs in arms.items()},
             "pca.png": {a: first(rs, "pca.png") or first(rs, "examples.pt")
                         for a, rs in arms.items()}}
    for f, by_arm in shown.items():
        if without := [a for a, r in by_arm.items() if r is None]:
            what = "eval/pca.png or eval/examples.pt" if f == "pca.png" else f"eval/{f}"
            print(f"report: no run of {', '.join(without)} has {what}; left out of its "
                  "pictures", file=sys.stderr)
    return shown


def headline(arms):
    """The headline arms: neither an ablation (abl-*) nor a sweep point."""
    return [a for a in arms if not a.startswith("abl-") and not is_sweep(a)]


def sweep_points(arms, metrics, seed, configs, key):
    """{arm: [(count, mean, half-width)]} of `key` against the demonstration count, for each arm
    with sweep arms <arm>-d<count>; <arm> itself joins at its own count on the sweep's seeds."""
    bases = {}
    for a in arms:
        if is_sweep(a):
            bases.setdefault(is_sweep(a)[0], []).append(a)
    out = {}
    for b, sweeps in bases.items():
        seeds = {seed[r] for a in sweeps for r in arms[a]}
        runs = {configs[r]["data.n_episodes"]: [] for a in [b, *sweeps] for r in arms.get(a, [])}
        for a in [b, *sweeps]:
            for r in arms.get(a, []):
                if seed[r] in seeds:
                    runs[configs[r]["data.n_episodes"]].append(metrics[r].get(key))
        out[b] = sorted((n, *mean_ci(v)[:2]) for n, v in runs.items() if v)
    return out


def draw(out, arms, metrics, seed, baseline, keys, shown, configs, reference="agra"):
    """The figures and PCA copies; returns ({title: file}, examples, [headline arms])."""
    examples = {a: torch.load(r / "eval" / "examples.pt", weights_only=True)
                for a, r in shown["examples.pt"].items() if r}
    head = headline(arms) or list(arms)  # figures of ablations alone, if nothing else ran

    def stats(rows):
        return {a: {k: mean_ci([metrics[r].get(k) for r in rs]) for k in keys} for a, rs in rows}
    colors = {r: (c, a) for a, c in charts.palette(head).items() for r in arms[a]}  # as the bars
    figs = charts.figures(out, stats([(a, arms[a]) for a in head]),
                   {r: read_csv(r / "metrics.csv") for a in head for r in arms[a]}, colors,
                   {f"{a}\n({shown['examples.pt'][a].name})": examples[a] for a in head
                    if a in examples})
    if any(a.startswith("abl-") for a in arms):  # beside baseline and reference on their seeds
        st = stats(ablation_rows(arms, seed, baseline, reference))
        figs["ablations: success against OOD severity"] = charts.lines(
            out / "abl_severity.png", st, "success.", "OOD severity (0 = training)", with_id=True)
        figs["ablations: success against training steps"] = charts.lines(
            out / "abl_curve.png", st, "success_curve.", "training step")
    if any(is_sweep(a) for a in arms):
        panels = [(k, t, sweep_points(arms, metrics, seed, configs, k)) for k, t in
                  [("success.id", "ID success"), ("family.ood", "OOD success (mean of suites)"),
                   ("family.covered", "covered OOD suites (@1)"),
                   ("family.unseen", "unseen OOD suites (@2)")]]
        figs["success against the number of demonstrations"] = charts.against(
            out / "demos.png", [(t, pts) for k, t, pts in panels if any(pts.values())],
            "labelled demonstrations")
    figs = {k: v for k, v in figs.items() if v}
    for a, r in shown["pca.png"].items():  # copies, so the report folder stands alone
        if r and (r / "eval" / "pca.png").is_file():
            shutil.copy(r / "eval" / "pca.png", out / f"pca_{a}.png")
        elif r:  # a run whose eval.py drew its PCA into attention.png: drawn here for the arm
            charts.pca(out / f"pca_{a}.png", torch.load(r / "eval" / "examples.pt",
                                                        weights_only=True), f"{a} ({r.name})")
    return figs, examples, head


def arms_md(arms, metrics, seed):
    md = ["## Arms\n", "| arm | runs | train.seed | teacher | steps |", "|---|---|---|---|---|"]
    return md + [f"| {a} | {', '.join(r.name for r in rs)} | "
                 f"{', '.join(str(seed[r]) for r in rs)} | "
                 f"{', '.join(sorted({str(metrics[r]['teacher']) for r in rs}))} | "
                 f"{', '.join(sorted({str(metrics[r]['step']) for r in rs}))} |"
                 for a, rs in arms.items()]


def metrics_md(stats, diffs, keys, baseline):
    md = ["\n## Metrics: mean ± 95% CI (n)\n", "| metric | " + " | ".join(stats) + " |",
          "|---" * (len(stats) + 1) + "|"]
    md += [f"| {k} | " + " | ".join(f"{fmt(s[k][0])} ± {fmt(s[k][1])} ({s[k][2]})"
                                    for s in stats.values()) + " |" for k in keys]
    if not diffs:
        return md + [(f"\nNo paired differences: no arm named `{baseline}` shares a seed "
                      "with another.")]
    md += [f"\n## Paired differences (to {baseline}, and any --pair): mean [95% CI] (pairs)\n",
           "| metric | " + " | ".join(diffs) + " |", "|---" * (len(diffs) + 1) + "|"]
    return md + [f"| {k} | " + " | ".join(
        f"{d[k][0]:+.3f} [{d[k][0] - d[k][1]:+.3f}, {d[k][0] + d[k][1]:+.3f}] ({d[k][2]})"
        if d[k][2] > 1 else f"{fmt(d[k][0])} ({d[k][2]})" for d in diffs.values()) + " |"
        for k in keys]


def pictures_md(figs, examples, head, shown):
    md = ["\n## Pictures\n"] + [f"### {t}\n\n![{t}]({f})\n" for t, f in figs.items()]
    rows = [f"{a} ({shown['examples.pt'][a].name})" for a in head if a in examples]
    md += [f"Attention rows, top to bottom: {', '.join(rows)}.\n" if rows else ""]
    missing = {f: [a for a, r in by_arm.items() if r is None] for f, by_arm in shown.items()}
    lost = {"attention map": [a for a in head if a in missing["examples.pt"]],
            "PCA picture": missing["pca.png"]}
    md += [f"No {what} for {', '.join(arms_)}: none of their runs kept it (a run recorded without "
           "its eval/examples.pt or eval/pca.png).\n" for what, arms_ in lost.items() if arms_]
    first = next(iter(examples.values()), None)
    same = all(torch.equal(ex["frames"], first["frames"]) for ex in examples.values())
    md += ["" if same else "(The arms' held-out inputs differ: their data configs differ.)\n"]
    md += ["### PCA of interface features next to the teacher's\n",
           ("Rows: the current frame; the top 3 principal components of the aligned layer's "
            "foresight features as they are (mostly the token's position), then with each grid "
            "cell's mean over the shown windows removed (what differs between frames); the "
            "teacher's. The run is named beside its arm.\n")]
    return md + [f"{a} ({r.name}):\n\n![pca {a}](pca_{a}.png)\n"
                 for a, r in shown["pca.png"].items() if r]


def times_md(runs, metrics):
    parts = [f"time.{p}" for p in TIMES if any(f"time.{p}" in metrics[r] for r in runs)]
    md = ["## Time (seconds)\n", "| run | " + " | ".join(p[5:] for p in parts) + " |",
          "|---" * (len(parts) + 1) + "|"]
    return md + [f"| {r.name} | " + " | ".join(f"{metrics[r].get(p, math.nan):.2f}"
                                               for p in parts) + " |" for r in runs]


def report(runs, metrics, out, baseline="baseline", command="python study/report.py",
           reference="agra", pairs=()):
    """out/report.md and out/summary.md with the PNGs: arms, mean and 95% CI per metric, paired
    differences (to `baseline`, and the extra `pairs`), pictures, times. metrics = {run dir: its
    eval/metrics.json}; `reference`: the arm the ablations are one knob away from."""
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    configs = {r: flat(yaml.safe_load((r / "config.yaml").read_text())) for r in runs}
    metrics = with_families(metrics, configs)
    arms = arms_of(runs)
    arms = {a: arms[a] for a in sorted(arms, key=lambda a: a != baseline)}  # baseline first
    for a, b in pairs:  # an arm not (yet) run: said loudly, the rest of the report still made
        if a not in arms or b not in arms:
            print(f"report: --pair {a}:{b} skipped: no runs of arm {a if a not in arms else b}; "
                  f"arms: {list(arms)}", file=sys.stderr)
    seed = {r: configs[r]["train.seed"] for r in runs}
    keys = table_keys(runs, metrics)
    curve = sorted({k for r in runs for k in metrics[r] if k.startswith("success_curve.")})
    stats = {a: {k: mean_ci([metrics[r].get(k) for r in rs]) for k in keys} for a, rs in
             arms.items()}
    diffs = paired_diffs(arms, metrics, seed, pairs_of(arms, baseline, pairs), keys)
    shown = shown_pictures(arms)
    figs, examples, head = draw(out, arms, metrics, seed, baseline, keys + curve, shown, configs,
                                reference)
    md = [(f"# Evaluation report\n\n`{command}`, {time.strftime('%Y-%m-%d %H:%M')}. Means with 95% "
           f"t-intervals over seeds (n = seeds); paired differences to `{baseline}` over the seeds "
           f"both arms ran. An arm = the runs whose configs differ only in "
           f"{', '.join(sorted(ARM_FREE))}.\n")]
    md += arms_md(arms, metrics, seed) + metrics_md(stats, diffs, keys, baseline)
    md += pictures_md(figs, examples, head, shown) + times_md(runs, metrics)
    md += [f"\nThis report: {time.perf_counter() - t0:.1f} s.\n"]
    (out / "report.md").write_text("\n".join(md))
    (out / "summary.md").write_text(summary(arms, metrics, seed, baseline, reference, pairs,
                                            configs))
    print(f"report: {out / 'report.md'}, {out / 'summary.md'}")


# -----------------------------------------------------------------------------
# summary.md: the README's tables

SUMMARY = [("success.id", "ID success"), ("success.ood", "OOD success (mean of suites)"),
           ("attention.in_mask", "attn in mask"), ("attention.chance", "chance"),
           ("attention.centroid_error", "centroid err (cells)"),
           ("intervention.sensitivity_ratio", "sensitivity ratio"),
           ("probe.localization_acc", "probe: target, aligned layer"),
           ("probe.read.localization_acc", "probe: target, head's input"),
           ("video.psnr", "PSNR (dB)"), ("latency.act_ms", "act() ms")]
PAIRED = [("success.id", "ID success"), ("success.ood", "OOD success"),
          ("attention.in_mask", "attn in mask"), ("probe.localization_acc", "probe: aligned layer"),
          ("probe.read.localization_acc", "probe: head's input")]


def with_ood(metrics):
    """(metrics with success.ood added, every OOD suite, the suites every run has): OOD success is
    a run's mean over the suites all runs were evaluated on (nan with none)."""
    ood = {r: {k for k in x if k.startswith("success.") and k != "success.id"}
           for r, x in metrics.items()}
    common = set.intersection(*ood.values()) if ood else set()  # a mean of the same suites only
    m = {r: {**x, "success.ood": (sum(v for k, v in x.items() if k in common) / len(common)
                                  if common else math.nan)} for r, x in metrics.items()}
    return m, sorted(set().union(*ood.values())), common


def arm_table(m, rows, cols):
    """rows: [(label, runs)] -> markdown lines, one per row: mean ± 95% CI of each column."""
    md = ["| arm | seeds | teacher | " + " | ".join(c for _, c in cols) + " |",
          "|---" * (len(cols) + 3) + "|"]
    for a, rs in rows:
        cells = [mean_ci([m[r].get(k) for r in rs]) for k, _ in cols]
        md.append(f"| {a} | {len(rs)} | {', '.join(sorted({str(m[r]['teacher']) for r in rs}))}"
                  " | " + " | ".join(fmt(mu) + (f" ± {fmt(h)}" if n > 1 else "")
                                     for mu, h, n in cells) + " |")
    return md


def paired_table(m, arms, seed, pairs, cols=PAIRED):
    """Markdown lines: for each pair (a, b) of arms sharing seeds, mean [95% CI] of a - b."""
    rows = []
    for a, b in pairs:
        base = {seed[r]: m[r] for r in arms.get(b, [])}
        both = [(m[r], base[seed[r]]) for r in arms.get(a, []) if seed[r] in base]
        if not both:  # no run of b on a's seeds
            continue
        cells = [mean_ci([x.get(k, math.nan) - y.get(k, math.nan) for x, y in both])
                 for k, _ in cols]
        rows.append(f"| {a} - {b} | {len(both)} | " + " | ".join(
            f"{mu:+.3f} [{mu - h:+.3f}, {mu + h:+.3f}]" if n > 1 else f"{mu:+.3f}"
            for mu, h, n in cells) + " |")
    if not rows:
        return []
    return ["| arms | pairs | " + " | ".join(c for _, c in cols) + " |",
            "|---" * (len(cols) + 2) + "|", *rows]


def summary(arms, metrics, seed, baseline, reference="agra", pairs=(), configs=None):
    """The README's tables: one row per arm (mean ± 95% CI over seeds), headline arms first; for
    the paired regime, success per suite family with paired differences; the ablations (arms
    named abl-*) beside the baseline and `reference` arms on the ablations' seeds only (an
    ablation is one knob away from `reference`); the demonstration-count sweep; OOD success per
    suite and the paired differences (to `baseline`, and the extra `pairs`)."""
    m, suites, common = with_ood(metrics)
    head = headline(arms)
    abl = [a for a in arms if a.startswith("abl-")]
    sweep = [a for a in arms if is_sweep(a)]
    md = ["Mean ± 95% t-interval over seeds (no interval with one seed).\n"]
    if set(suites) != common:
        left = ", ".join(k[8:] for k in suites if k not in common)
        md.append(f"OOD success is the mean over the suites every run has; not every run has "
                  f"{left}, so those are left out of it.\n")
    md += arm_table(m, [(a, arms[a]) for a in head], SUMMARY)
    fams = sorted({k for r in m for k in m[r] if k.startswith("family.")},
                  key=charts.family_order)
    if fams:
        cols = [(k, k[7:]) for k in fams]
        md += [("\nSuccess per suite family (the mean of its suites; covered: the OOD suites "
                "inside the action-free clips' band, unseen: those outside it and the lab):\n"),
               *arm_table(m, [(a, arms[a]) for a in head], cols)]
        if table := paired_table(m, arms, seed, pairs_of(head, baseline, pairs), cols):
            md += ["\nPer family, paired per-seed difference, mean [95% CI]:\n", *table]
    if abl:
        cols = [c for c in SUMMARY if c[0] not in ("attention.chance", "video.psnr",
                                                    "latency.act_ms")]
        cols += [(k, k[7:]) for k in fams if k in ("family.covered", "family.unseen")]
        md += [(f"\nAblations (what each changes: the report's arms table), beside `{baseline}` "
                f"and `{reference}` on the same seeds:\n"),
               *arm_table(m, ablation_rows(arms, seed, baseline, reference), cols)]
    if sweep:
        keys = [("success.id", "ID"), ("success.ood", "OOD"), ("family.covered", "covered"),
                ("family.unseen", "unseen")]
        md += ["\nSuccess against the number of labelled demonstrations (the sweep's seeds):\n",
               "| arm | demos | " + " | ".join(c for _, c in keys) + " |",
               "|---" * (len(keys) + 2) + "|"]
        pts = {k: sweep_points(arms, m, seed, configs, k) for k, _ in keys}
        for b, rows in pts["success.id"].items():
            for i, (n, *_) in enumerate(rows):
                md.append(f"| {b} | {n} | " + " | ".join(
                    fmt(pts[k][b][i][1]) + (f" ± {fmt(pts[k][b][i][2])}"
                                            if not math.isnan(pts[k][b][i][2]) else "")
                    if len(pts[k][b]) > i else "n/a" for k, _ in keys) + " |")
    md += ["\nSuccess per suite:\n", *arm_table(m, [(a, arms[a]) for a in head + abl + sweep],
                                                 [(k, k[8:]) for k in suites])]
    table = paired_table(m, {a: arms[a] for a in head + abl}, seed,
                         pairs_of(head + abl, baseline, pairs))
    if table:
        md += [f"\nPaired per-seed difference to `{baseline}`"
               + (" (and the pairs asked for)" if pairs else "") + ", mean [95% CI]:\n", *table]
    return "\n".join(md) + "\n"


def fill_readme(readme, out):
    """Paste out/summary.md into readme between '<!-- results:OUT -->' and '<!-- /results:OUT -->'
    (README tables come from the metrics files, never typed by hand)."""
    text, begin, end = Path(readme).read_text(), f"<!-- results:{out} -->", \
        f"<!-- /results:{out} -->"
    if begin not in text or end not in text:
        raise ValueError(f"{readme} has no '{begin}' ... '{end}' block to fill")
    head, rest = text.split(begin, 1)
    Path(readme).write_text(f"{head}{begin}\n{(out / 'summary.md').read_text()}{end}"
                            f"{rest.split(end, 1)[1]}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description="Compare evaluated run folders: report.md, summary.md "
                                "and figures.")
    p.add_argument("runs", nargs="+", help="run folders (records or evaluated runs/<name>)")
    p.add_argument("--out", help="report folder")
    p.add_argument("--baseline", default="baseline", help="arm the paired differences refer to")
    p.add_argument("--reference", default="agra", help="arm the ablations (abl-*) change one "
                   "knob of: shown beside them on their seeds")
    p.add_argument("--pair", action="append", default=[], metavar="ARM:ARM",
                   help="a further paired difference, first minus second (repeatable)")
    p.add_argument("--readme", help="also paste summary.md into this file, between the lines "
                   "'<!-- results:OUT -->' and '<!-- /results:OUT -->'")
    p.add_argument("--curves", metavar="OUT.png", help="only the training curves of the runs "
                   "(finished or still training: their metrics.csv so far), one colour per arm")
    a = p.parse_args(argv)
    runs = [Path(r) for r in a.runs]
    check_runs(runs, evaluated=not a.curves)
    if a.curves:
        arms = arms_of(runs)
        colors = {r: (c, arm) for arm, c in charts.palette(list(arms)).items() for r in arms[arm]}
        print(charts.training(a.curves, {r: read_csv(r / "metrics.csv") for r in runs}, colors))
        return
    if not a.out:
        p.error("--out DIR is required (unless --curves)")
    out = Path(a.out)
    metrics = {r: json.loads((r / "eval" / "metrics.json").read_text()) for r in runs}
    pairs = [tuple(p.split(":")) for p in a.pair]
    for p_ in pairs:
        if len(p_) != 2:
            raise ValueError(f"--pair {':'.join(p_)}; expected ARM:ARM")
    report(runs, metrics, out, a.baseline, " ".join(["python study/report.py", *argv]),
           a.reference, pairs)
    if a.readme:
        fill_readme(a.readme, out)


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
