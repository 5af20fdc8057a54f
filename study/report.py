"""The study's report: `python study/report.py RUN_DIR [RUN_DIR ...] --out DIR [--baseline NAME]
[--readme FILE]` reads each run's config.yaml, metrics.csv and eval/metrics.json (a record in
results/<preset>/runs/, or a live runs/<name>/ that `python eval.py` has evaluated) and writes
DIR/report.md (every metric), DIR/summary.md (the README's tables) and the comparison figures.
`--curves OUT.png RUN_DIR ...` draws only the training curves, of runs still in progress too.

An arm = the runs whose config.yaml differ only in name, train.seed and paths; named after its first
run without a trailing -s<seed> (or _seed<k>) and without the prefix all arm names share
("cpu-agra-s1" -> "agra" next to "cpu-baseline-s0" -> "baseline"). Each arm gets its mean and 95%
t-interval over seeds, and the paired per-seed difference to the baseline arm with its interval.
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
ORDER = ["success.", "attention.", "intervention.", "probe.", "video.", "latency."]  # table rows


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
    """{arm name: [run dirs]}: runs whose configs differ only in name, train.seed and paths."""
    groups = {}
    for r in runs:
        c = flat(yaml.safe_load((r / "config.yaml").read_text()))
        if c.get("train.init_from"):  # each seed starts from its own seed's pretrain: one arm
            c["train.init_from"] = re.sub(r"[-_]s(eed)?\d+(?=[/\\])", "", c["train.init_from"])
        key = json.dumps({k: v for k, v in c.items()
                          if k not in ARM_FREE and not k.startswith("eval.")}, sort_keys=True)
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


def paired_diffs(arms, metrics, seed, baseline, keys):
    """{arm: {key: mean_ci of the per-seed differences to `baseline`}}, arms sharing a seed."""
    base = {seed[r]: metrics[r] for r in arms.get(baseline, [])}
    diffs = {}
    for a, rs in arms.items():
        pairs = [(metrics[r], base[seed[r]]) for r in rs if seed[r] in base]
        if a != baseline and pairs:
            diffs[a] = {k: mean_ci([x[k] - y[k] for x, y in pairs if is_number(x.get(k))
                                    and is_number(y.get(k))]) for k in keys}
    return diffs


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


def draw(out, arms, metrics, seed, baseline, keys, shown):
    """The figures and PCA copies; returns ({title: file}, examples, [headline arms])."""
    examples = {a: torch.load(r / "eval" / "examples.pt", weights_only=True)
                for a, r in shown["examples.pt"].items() if r}
    head = [a for a in arms if not a.startswith("abl-")] or list(arms)  # figures: headline arms

    def stats(rows):
        return {a: {k: mean_ci([metrics[r].get(k) for r in rs]) for k in keys} for a, rs in rows}
    colors = {r: (c, a) for a, c in charts.palette(head).items() for r in arms[a]}  # as the bars
    figs = charts.figures(out, stats([(a, arms[a]) for a in head]),
                   {r: read_csv(r / "metrics.csv") for a in head for r in arms[a]}, colors,
                   {f"{a}\n({shown['examples.pt'][a].name})": examples[a] for a in head
                    if a in examples})
    if len(head) < len(arms):  # the ablations beside baseline and agra on their seeds (summary.md)
        st = stats(ablation_rows(arms, seed, baseline))
        figs["ablations: success against OOD severity"] = charts.lines(
            out / "abl_severity.png", st, "success.", "OOD severity (0 = training)", with_id=True)
        figs["ablations: success against training steps"] = charts.lines(
            out / "abl_curve.png", st, "success_curve.", "training step")
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
    md += [f"\n## Paired difference to {baseline}: mean [95% CI] (pairs)\n",
           "| metric | " + " | ".join(f"{a} - {baseline}" for a in diffs) + " |",
           "|---" * (len(diffs) + 1) + "|"]
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


def report(runs, metrics, out, baseline="baseline", command="python study/report.py"):
    """out/report.md and out/summary.md with the PNGs: arms, mean and 95% CI per metric, paired
    differences, pictures, times. metrics = {run dir: its eval/metrics.json}."""
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    arms = arms_of(runs)
    arms = {a: arms[a] for a in sorted(arms, key=lambda a: a != baseline)}  # baseline first
    seed = {r: yaml.safe_load((r / "config.yaml").read_text())["train"]["seed"] for r in runs}
    keys = table_keys(runs, metrics)
    curve = sorted({k for r in runs for k in metrics[r] if k.startswith("success_curve.")})
    stats = {a: {k: mean_ci([metrics[r].get(k) for r in rs]) for k in keys} for a, rs in
             arms.items()}
    diffs = paired_diffs(arms, metrics, seed, baseline, keys)
    shown = shown_pictures(arms)
    figs, examples, head = draw(out, arms, metrics, seed, baseline, keys + curve, shown)
    md = [(f"# Evaluation report\n\n`{command}`, {time.strftime('%Y-%m-%d %H:%M')}. Means with 95% "
           f"t-intervals over seeds (n = seeds); paired differences to `{baseline}` over the seeds "
           f"both arms ran. An arm = the runs whose configs differ only in "
           f"{', '.join(sorted(ARM_FREE))}.\n")]
    md += arms_md(arms, metrics, seed) + metrics_md(stats, diffs, keys, baseline)
    md += pictures_md(figs, examples, head, shown) + times_md(runs, metrics)
    md += [f"\nThis report: {time.perf_counter() - t0:.1f} s.\n"]
    (out / "report.md").write_text("\n".join(md))
    (out / "summary.md").write_text(summary(arms, metrics, seed, baseline))
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


def paired_table(m, arms, seed, baseline):
    base = {seed[r]: m[r] for r in arms.get(baseline, [])}
    rows = []
    for a in [a for a in arms if a != baseline]:
        pairs = [(m[r], base[seed[r]]) for r in arms[a] if seed[r] in base]
        if not pairs:  # no baseline run of this arm's seeds
            continue
        cells = [mean_ci([x.get(k, math.nan) - y.get(k, math.nan) for x, y in pairs])
                 for k, _ in PAIRED]
        rows.append(f"| {a} - {baseline} | {len(pairs)} | " + " | ".join(
            f"{mu:+.3f} [{mu - h:+.3f}, {mu + h:+.3f}]" if n > 1 else f"{mu:+.3f}"
            for mu, h, n in cells) + " |")
    if not rows:
        return []
    return [f"\nPaired per-seed difference to `{baseline}`, mean [95% CI]:\n",
            "| arms | pairs | " + " | ".join(c for _, c in PAIRED) + " |",
            "|---" * (len(PAIRED) + 2) + "|", *rows]


def summary(arms, metrics, seed, baseline, reference="agra"):
    """The README's tables: one row per arm (mean ± 95% CI over seeds), headline arms first, then
    the ablations (arms named abl-*) beside the baseline and `reference` arms on the ablations'
    seeds only (an ablation is one knob away from `reference`), then OOD success per suite and the
    paired differences."""
    m, suites, common = with_ood(metrics)
    head = [a for a in arms if not a.startswith("abl-")]
    abl = [a for a in arms if a.startswith("abl-")]
    md = ["Mean ± 95% t-interval over seeds (no interval with one seed).\n"]
    if set(suites) != common:
        left = ", ".join(k[8:] for k in suites if k not in common)
        md.append(f"OOD success is the mean over the suites every run has; not every run has "
                  f"{left}, so those are left out of it.\n")
    md += arm_table(m, [(a, arms[a]) for a in head], SUMMARY)
    if abl:
        cols = [c for c in SUMMARY if c[0] not in ("attention.chance", "video.psnr",
                                                    "latency.act_ms")]
        md += [(f"\nAblations (what each changes: the report's arms table), beside `{baseline}` "
                f"and `{reference}` on the same seeds:\n"),
               *arm_table(m, ablation_rows(arms, seed, baseline, reference), cols)]
    md += ["\nSuccess per suite:\n", *arm_table(m, [(a, arms[a]) for a in head + abl],
                                                [(k, k[8:]) for k in suites])]
    md += paired_table(m, {a: arms[a] for a in head + abl}, seed, baseline)
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
    report(runs, metrics, out, a.baseline, " ".join(["python study/report.py", *argv]))
    if a.readme:
        fill_readme(a.readme, out)


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
