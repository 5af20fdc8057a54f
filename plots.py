"""Pictures of one evaluated run, and report.md comparing arms of runs (eval.py's helper).

An arm = the runs whose config.yaml differ only in name, train.seed and paths; named after its first
run without a trailing -s<seed> (or _seed<k>) and without the prefix all arm names share
("cpu-agra-s1" -> "agra" next to "cpu-baseline-s0" -> "baseline"). Each arm gets its mean and 95%
t-interval over seeds, and the paired per-seed difference to the baseline arm with its interval.
"""

import json
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import torch
import yaml

T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042]  # t-distribution 97.5% quantiles, 1..30 degrees of freedom
ARM_FREE = {"name", "train.seed", "train.out_dir", "train.device", "data.cache_dir"}
TIMES = ["heldout", "success", "success_curve", "attention", "intervention", "probe", "video",
         "latency", "total"]  # time.<part> columns of the report
ORDER = ["success.", "attention.", "intervention.", "probe.", "video.", "latency."]  # table rows


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


# -----------------------------------------------------------------------------
# figures: stats = {label: {metric key: (mean, 95% half-width, n)}}


def palette(labels):
    """{label: colour}, one per label in order: matplotlib's ten C0-C9, or tab20 for more, so no
    two labels of a figure share a colour and an arm keeps its colour across the figures."""
    cmap = [f"C{i}" for i in range(10)] if len(labels) <= 10 else plt.cm.tab20.colors
    return {a: cmap[i % len(cmap)] for i, a in enumerate(labels)}


def save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path).name


def bars(path, stats, panels):
    """Grouped bars, one panel per (title, keys), one group per key, one bar per label, with
    95% error bars."""
    panels = [(title, keys) for title, keys in panels if keys]
    if not panels:
        return None
    widths = [len(keys) * max(1, len(stats)) ** 0.5 * 0.6 + 1 for _, keys in panels]
    fig, axes = plt.subplots(1, len(panels), squeeze=False, figsize=(sum(widths) + 1, 3.6),
                             gridspec_kw={"width_ratios": widths})
    w, color = 0.8 / len(stats), palette(list(stats))
    for ax, (title, keys) in zip(axes[0], panels):
        for i, (label, s) in enumerate(stats.items()):
            mu = [s.get(k, (math.nan,))[0] for k in keys]
            err = [0 if math.isnan(s.get(k, (0, math.nan))[1]) else s[k][1] for k in keys]
            ax.bar([j + (i - (len(stats) - 1) / 2) * w for j in range(len(keys))], mu, w,
                   yerr=err, capsize=2, label=label, color=color[label])
        ax.set_xticks(range(len(keys)), [k.split(".", 1)[1] for k in keys], rotation=35,
                      ha="right", fontsize=7)
        ax.set_title(title, fontsize=9)
    axes[0][0].legend(fontsize=7)
    return save(fig, path)


def lines(path, stats, prefix, xlabel, with_id=False):
    """One panel per name in keys '<prefix><name>@<x>', one line per label (95% error bars);
    with_id adds success.id at x = 0 (severity 0 = the training distribution)."""
    pat = re.compile(re.escape(prefix) + r"(.+)@(\d+)$")
    names = sorted({pat.match(k)[1] for s in stats.values() for k in s if pat.match(k)})
    if not names:
        return None
    fig, axes = plt.subplots(1, len(names), squeeze=False, figsize=(2.8 * len(names) + 0.5, 2.8))
    color = palette(list(stats))
    for ax, name in zip(axes[0], names):
        for label, s in stats.items():
            pts = sorted((int(pat.match(k)[2]), *v[:2]) for k, v in s.items()
                         if pat.match(k) and pat.match(k)[1] == name)
            pts = [(0, *s["success.id"][:2])] + pts if with_id and "success.id" in s else pts
            if not pts:  # this arm has no value for this panel (e.g. no snapshots)
                continue
            x, mu, err = zip(*pts)
            ax.errorbar(x, mu, yerr=[0 if math.isnan(e) else e for e in err], marker="o",
                        capsize=2, label=label, color=color[label])
        ax.set(title=name, xlabel=xlabel, ylim=(-0.02, 1.02))
    axes[0][0].set_ylabel("success")
    axes[0][-1].legend(fontsize=7)
    return save(fig, path)


def training(path, csvs, colors):
    """Training curves (loss, video, action, align) of each run, coloured by arm."""
    cols = ["loss", "video", "action", "align"]
    fig, axes = plt.subplots(1, 4, figsize=(12, 2.8))
    for run, c in csvs.items():
        for ax, col in zip(axes, cols):
            ax.plot(c["step"], c[col], color=colors[run][0], lw=0.8, label=colors[run][1])
    for ax, col in zip(axes, cols):
        ax.set(title=col, xlabel="step")
    handles = dict(zip(*axes[0].get_legend_handles_labels()[::-1]))  # one entry per arm
    axes[0].legend(handles.values(), handles.keys(), fontsize=7)
    return save(fig, path)


def heatmaps(path, rows):
    """Each row's attention (summed over frames) over the current frame; cyan: interaction region.
    rows = {label: examples dict from eval.attention_part}, the same inputs in every row."""
    if not rows:  # no run kept its examples: no picture, and none left over from an earlier report
        path.unlink(missing_ok=True)
        return None
    n = min(len(ex["frames"]) for ex in rows.values())
    fig, axes = plt.subplots(len(rows), n, squeeze=False, figsize=(1.7 * n, 1.8 * len(rows)))
    for r, (label, ex) in enumerate(rows.items()):
        for i in range(n):
            ax, (_, H, W), g = axes[r][i], ex["frames"][i].shape, ex["attn"].shape[-1]
            ax.imshow(ex["frames"][i].permute(1, 2, 0).numpy(), extent=(0, W, H, 0))
            ax.imshow(ex["attn"][i].numpy(), cmap="inferno", alpha=0.6, extent=(0, W, H, 0))
            centers = [(j + 0.5) * W / g for j in range(g)]
            ax.contour(centers, centers, ex["region"][i].float().numpy(), [0.5], colors="cyan",
                       linewidths=0.7)
            ax.set(xticks=[], yticks=[])
        axes[r][0].set_ylabel(label, fontsize=7)
    return save(fig, path)


def pca_rgb(f):
    """Features (n, h, w, D) -> (n, h, w, 3) in [0, 1]: their top 3 principal components."""
    x = f.flatten(0, 2).float()                                                 # (n*h*w, D)
    x = x - x.mean(0)
    y = x @ torch.linalg.svd(x, full_matrices=False)[2][:3].T                  # (n*h*w, 3)
    y = y * y.gather(0, y.abs().argmax(0, keepdim=True)).sign()  # SVD's sign: largest value > 0
    y = (y - y.min(0).values) / (y.max(0).values - y.min(0).values).clamp_min(1e-8)
    return y.view(*f.shape[:3], 3)                                              # (n, h, w, 3)


def without_position(f):
    """Features (n, h, w, D) minus each grid cell's mean over the n windows: what is left is what
    differs between frames at that cell (the content), not the position code every frame shares."""
    return f - f.mean(0, keepdim=True)


def pca(path, ex):
    """The current frame, the top-3 PCA of the interface features (as they are, then with each
    cell's mean over the shown windows removed) and the top-3 PCA of the teacher's."""
    n = len(ex["frames"])
    fig, axes = plt.subplots(4, n, squeeze=False, figsize=(1.7 * n, 7.2))
    names = ["frame", f"layer {ex['layer']}", f"layer {ex['layer']}, cell mean removed",
             f"teacher: {ex['teacher_name']}"[:28]]
    rows = [ex["frames"].permute(0, 2, 3, 1), pca_rgb(ex["student"]),                # (n, h, w, 3)
            pca_rgb(without_position(ex["student"])), pca_rgb(ex["teacher"])]
    for r, imgs in enumerate(rows):
        for i in range(n):
            axes[r][i].imshow(imgs[i].numpy(), interpolation="nearest")
            axes[r][i].set(xticks=[], yticks=[])
        axes[r][0].set_ylabel(names[r], fontsize=7)
    return save(fig, path)


def figures(out, stats, csvs, colors, rows):
    """Every picture into out/; returns {title: file name} of those that have data."""
    keys = sorted({k for s in stats.values() for k in s})
    suites = sorted((k for k in keys if k.startswith("success.")), key=lambda k: k != "success.id")
    pix = [k for k in keys if k.startswith("intervention.pixel.")]
    hid = [k for k in keys if k.startswith("intervention.hidden.")]
    ratios = [k for k in ["intervention.sensitivity_ratio", "intervention.hidden_ratio"] if k in keys]
    figs = {"success per suite": bars(out / "success.png", stats, [("success", suites)]),
            "success against OOD severity": lines(out / "severity.png", stats, "success.",
                                                  "severity", with_id=True),
            "success against training steps": lines(out / "curve.png", stats, "success_curve.",
                                                    "training step"),
            "sensitivity (action-chunk change, same noise)": bars(
                out / "sensitivity.png", stats, [("pixel edits", pix), ("interface edits", hid),
                                                 ("relevant / irrelevant", ratios)]),
            "training curves": training(out / "training.png", csvs, colors),
            "attention of the action head": heatmaps(out / "attention.png", rows)}
    return {k: v for k, v in figs.items() if v}


def run_pictures(out, run, m, cfg, ex):
    """A run's pictures in out/ (RUN_DIR/eval); error bars: binomial 95% for success rates."""
    n = {"success": cfg.eval.episodes, "success_curve": cfg.eval.curve_episodes}
    stats = {run.name: {k: (v, 1.96 * math.sqrt(max(0.0, v * (1 - v)) / n[k.split(".")[0]])
                            if k.split(".")[0] in n else math.nan, 1)
                        for k, v in m.items() if is_number(v)}}
    figures(out, stats, {run: read_csv(run / "metrics.csv")}, {run: ("C0", run.name)},
            {run.name: ex})
    pca(out / "pca.png", ex)


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


def report(runs, metrics, out, baseline="baseline"):
    """out/report.md with its PNGs: arms, mean and 95% CI per metric, paired differences, times."""
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    arms = arms_of(runs)
    arms = {a: arms[a] for a in sorted(arms, key=lambda a: a != baseline)}  # baseline first
    seed = {r: yaml.safe_load((r / "config.yaml").read_text())["train"]["seed"] for r in runs}
    def row(k):  # table order: ORDER's groups, success.id first, then by name
        return next(i for i, p in enumerate(ORDER) if k.startswith(p)), k != "success.id", k
    keys = sorted({k for r in runs for k, v in metrics[r].items() if is_number(v)
                   and k.startswith(tuple(ORDER))}, key=row)
    curve = sorted({k for r in runs for k in metrics[r] if k.startswith("success_curve.")})
    stats = {a: {k: mean_ci([metrics[r].get(k) for r in rs]) for k in keys + curve}
             for a, rs in arms.items()}
    diffs = {}
    for a, rs in arms.items():
        base = {seed[r]: metrics[r] for r in arms.get(baseline, [])}
        pairs = [(metrics[r], base[seed[r]]) for r in rs if seed[r] in base]
        if a != baseline and pairs:
            diffs[a] = {k: mean_ci([x[k] - y[k] for x, y in pairs if is_number(x.get(k))
                                    and is_number(y.get(k))]) for k in keys}
    # pictures: each arm's first run that kept them (a run recorded without its eval/examples.pt or
    # pca.png, by an older study.sh, has none); arms without any are named in the report
    shown = {f: {a: next((r for r in rs if (r / "eval" / f).is_file()), None) for a, rs in
                 arms.items()} for f in ["examples.pt", "pca.png"]}
    missing = {f: [a for a, r in by_arm.items() if r is None] for f, by_arm in shown.items()}
    for f, arms_without in missing.items():
        if arms_without:
            print(f"report: no run of {', '.join(arms_without)} has eval/{f}; left out of its "
                  "pictures", file=sys.stderr)
    examples = {a: torch.load(r / "eval" / "examples.pt", weights_only=True)
                for a, r in shown["examples.pt"].items() if r}
    same = all(torch.equal(ex["frames"], next(iter(examples.values()))["frames"])
               for ex in examples.values())
    head = [a for a in arms if not a.startswith("abl-")] or list(arms)  # figures: headline arms
    colors = {r: (c, a) for a, c in palette(head).items() for r in arms[a]}  # as bars and lines
    figs = figures(out, {a: stats[a] for a in head}, {r: read_csv(r / "metrics.csv") for a in head
                   for r in arms[a]}, colors, {a: examples[a] for a in head if a in examples})
    abl = [a for a in arms if a not in head]
    if abl:  # the ablations beside baseline and agra on the ablations' seeds (as in summary.md)
        st = {a: {k: mean_ci([metrics[r].get(k) for r in rs]) for k in keys + curve}
              for a, rs in ablation_rows(arms, seed, baseline)}
        figs["ablations: success against OOD severity"] = lines(
            out / "abl_severity.png", st, "success.", "severity", with_id=True)
        figs["ablations: success against training steps"] = lines(
            out / "abl_curve.png", st, "success_curve.", "training step")
        figs = {k: v for k, v in figs.items() if v}
    for a, r in shown["pca.png"].items():  # copies, so the report folder stands alone
        if r:
            shutil.copy(r / "eval" / "pca.png", out / f"pca_{a}.png")
    md = [(f"# Evaluation report\n\n`python eval.py {' '.join(sys.argv[1:])}`, "
           f"{time.strftime('%Y-%m-%d %H:%M')}. Means with 95% t-intervals over seeds (n = seeds); "
           f"paired differences to `{baseline}` over the seeds both arms ran. An arm = the runs "
           f"whose configs differ only in {', '.join(sorted(ARM_FREE))}.\n"),
          "## Arms\n", "| arm | runs | train.seed | teacher | steps |", "|---|---|---|---|---|"]
    md += [f"| {a} | {', '.join(r.name for r in rs)} | {', '.join(str(seed[r]) for r in rs)} | "
           f"{', '.join(sorted({str(metrics[r]['teacher']) for r in rs}))} | "
           f"{', '.join(sorted({str(metrics[r]['step']) for r in rs}))} |" for a, rs in arms.items()]
    md += ["\n## Metrics: mean ± 95% CI (n)\n", "| metric | " + " | ".join(arms) + " |",
           "|---" * (len(arms) + 1) + "|"]
    md += [f"| {k} | " + " | ".join(f"{fmt(stats[a][k][0])} ± {fmt(stats[a][k][1])} "
                                    f"({stats[a][k][2]})" for a in arms) + " |" for k in keys]
    if diffs:
        md += [f"\n## Paired difference to {baseline}: mean [95% CI] (pairs)\n",
               "| metric | " + " | ".join(f"{a} - {baseline}" for a in diffs) + " |",
               "|---" * (len(diffs) + 1) + "|"]
        md += [f"| {k} | " + " | ".join(
            f"{d[k][0]:+.3f} [{d[k][0] - d[k][1]:+.3f}, {d[k][0] + d[k][1]:+.3f}] ({d[k][2]})"
            if d[k][2] > 1 else f"{fmt(d[k][0])} ({d[k][2]})" for d in diffs.values()) + " |"
            for k in keys]
    else:
        md += [f"\nNo paired differences: no arm named `{baseline}` shares a seed with another."]
    md += ["\n## Pictures\n"] + [f"### {t}\n\n![{t}]({f})\n" for t, f in figs.items()]
    rows = [f"{a} ({shown['examples.pt'][a].name})" for a in head if a in examples]
    md += [f"Attention rows, top to bottom: {', '.join(rows)}.\n" if rows else ""]
    lost = {"attention map": [a for a in head if a in missing["examples.pt"]],
            "PCA picture": missing["pca.png"]}
    md += [f"No {what} for {', '.join(arms_)}: none of their runs kept it (a run recorded without "
           "its eval/examples.pt or eval/pca.png).\n" for what, arms_ in lost.items() if arms_]
    md += ["" if same else "(The arms' held-out inputs differ: their data configs differ.)\n"]
    md += ["### PCA of interface features next to the teacher's\n",
           ("Rows: the current frame; the top 3 principal components of the aligned layer's "
            "foresight features as they are (mostly the token's position), then with each grid "
            "cell's mean over the shown windows removed (what differs between frames); the "
            "teacher's. The run is named beside its arm.\n")]
    md += [f"{a} ({r.name}):\n\n![pca {a}](pca_{a}.png)\n" for a, r in shown["pca.png"].items() if r]
    parts = [f"time.{p}" for p in TIMES if any(f"time.{p}" in metrics[r] for r in runs)]
    md += ["## Time (seconds)\n", "| run | " + " | ".join(p[5:] for p in parts) + " |",
           "|---" * (len(parts) + 1) + "|"]
    md += [f"| {r.name} | " + " | ".join(f"{metrics[r].get(p, math.nan):.2f}" for p in parts) + " |"
           for r in runs]
    md += [f"\nThis report: {time.perf_counter() - t0:.1f} s.\n"]
    (out / "report.md").write_text("\n".join(md))
    (out / "summary.md").write_text(summary(arms, metrics, seed, baseline))
    print(f"report: {out / 'report.md'}, {out / 'summary.md'}")


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


def summary(arms, metrics, seed, baseline, reference="agra"):
    """The README's tables: one row per arm (mean ± 95% CI over seeds), headline arms first, then
    the ablations (arms named abl-*) beside the baseline and `reference` arms on the ablations'
    seeds only (an ablation is one knob away from `reference`), then OOD success per suite and the
    paired differences."""
    ood = {r: {k for k in x if k.startswith("success.") and k != "success.id"}
           for r, x in metrics.items()}
    common = set.intersection(*ood.values()) if ood else set()  # a mean of the same suites only
    suites = sorted(set().union(*ood.values()))
    m = {r: {**x, "success.ood": (sum(v for k, v in x.items() if k in common) / len(common)
                                  if common else math.nan)} for r, x in metrics.items()}

    def table(rows, cols):  # rows: [(label, runs)]
        md = ["| arm | seeds | teacher | " + " | ".join(c for _, c in cols) + " |",
              "|---" * (len(cols) + 3) + "|"]
        for a, rs in rows:
            cells = [mean_ci([m[r].get(k) for r in rs]) for k, _ in cols]
            md.append(f"| {a} | {len(rs)} | {', '.join(sorted({str(m[r]['teacher']) for r in rs}))}"
                      " | " + " | ".join(fmt(mu) + (f" ± {fmt(h)}" if n > 1 else "")
                                         for mu, h, n in cells) + " |")
        return md
    head = [a for a in arms if not a.startswith("abl-")]
    abl = [a for a in arms if a.startswith("abl-")]
    md = ["Mean ± 95% t-interval over seeds (no interval with one seed).\n"]
    if set(suites) != common:
        left = ", ".join(k[8:] for k in suites if k not in common)
        md.append(f"OOD success is the mean over the suites every run has; not every run has "
                  f"{left}, so those are left out of it.\n")
    md += table([(a, arms[a]) for a in head], SUMMARY)
    if abl:
        cols = [c for c in SUMMARY if c[0] not in ("attention.chance", "video.psnr",
                                                    "latency.act_ms")]
        md += [(f"\nAblations (what each changes: the report's arms table), beside `{baseline}` "
                f"and `{reference}` on the same seeds:\n"),
               *table(ablation_rows(arms, seed, baseline, reference), cols)]
    md += ["\nSuccess per suite:\n", *table([(a, arms[a]) for a in head + abl],
                                              [(k, k[8:]) for k in suites])]
    base = {seed[r]: m[r] for r in arms.get(baseline, [])}
    rows = []
    for a in [a for a in head + abl if a != baseline]:
        pairs = [(m[r], base[seed[r]]) for r in arms[a] if seed[r] in base]
        if not pairs:  # no baseline run of this arm's seeds
            continue
        cells = [mean_ci([x.get(k, math.nan) - y.get(k, math.nan) for x, y in pairs])
                 for k, _ in PAIRED]
        rows.append(f"| {a} - {baseline} | {len(pairs)} | " + " | ".join(
            f"{mu:+.3f} [{mu - h:+.3f}, {mu + h:+.3f}]" if n > 1 else f"{mu:+.3f}"
            for mu, h, n in cells) + " |")
    if rows:
        md += [f"\nPaired per-seed difference to `{baseline}`, mean [95% CI]:\n",
               "| arms | pairs | " + " | ".join(c for _, c in PAIRED) + " |",
               "|---" * (len(PAIRED) + 2) + "|", *rows]
    return "\n".join(md) + "\n"


def main(argv):
    """`python plots.py OUT.png RUN_DIR ...`: the training curves of runs, finished or still
    running (their metrics.csv so far), one colour per arm."""
    if len(argv) < 2 or not argv[0].endswith(".png"):
        raise SystemExit("usage: python plots.py OUT.png RUN_DIR [RUN_DIR ...]")
    runs = [Path(r) for r in argv[1:]]
    for r in runs:
        if not (r / "metrics.csv").is_file() or not (r / "config.yaml").is_file():
            raise FileNotFoundError(f"{r} is not a run folder (needs metrics.csv and config.yaml)")
    arms = arms_of(runs)
    colors = {r: (c, a) for a, c in palette(list(arms)).items() for r in arms[a]}
    print(training(argv[0], {r: read_csv(r / "metrics.csv") for r in runs}, colors))


if __name__ == "__main__":
    main(sys.argv[1:])
