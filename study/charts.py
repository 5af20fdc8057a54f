"""The study's comparison figures (study/report.py draws them): stats = {label: {metric key: (mean,
95% half-width, n)}}, one label per arm, the same colour for an arm in every figure."""

import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import torch

MARKERS = "osD^vP*Xph<>"  # one per line of a figure: lines that coincide stay apart
CHANGE = "action-chunk change (mean L2)"


def palette(labels):
    """{label: colour}, one per label in order: matplotlib's ten C0-C9, or tab20 for more, so no
    two labels of a figure share a colour and an arm keeps its colour across the figures."""
    cmap = [f"C{i}" for i in range(10)] if len(labels) <= 10 else plt.cm.tab20.colors
    return {a: cmap[i % len(cmap)] for i, a in enumerate(labels)}


def family_order(key):
    """Sort key of family.* metrics: id, the families by name, then covered, unseen, ood."""
    last = ["family.covered", "family.unseen", "family.ood"]
    return (key != "family.id", last.index(key) if key in last else -1, key)


def save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path).name


def bar_err(mu, half, rate):
    """(below, above) of a mean ± half-width error bar: none for nan, inside [0, 1] for a rate."""
    if math.isnan(mu) or math.isnan(half):
        return 0.0, 0.0
    return (min(half, max(mu, 0.0)), min(half, max(1.0 - mu, 0.0))) if rate else (half, half)


def short(keys):
    """Tick labels: the keys without the dotted prefix they all share ('intervention.pixel.')."""
    parts = [k.split(".") for k in keys]
    n = 0
    while all(len(p) > n + 1 for p in parts) and len({p[n] for p in parts}) == 1:
        n += 1
    return [".".join(p[n:]) for p in parts]


def bars(path, stats, panels):
    """Grouped bars, one panel per (title, keys, y label, rate?), one group per key, one bar per
    label, with 95% error bars (clipped to [0, 1] for rates)."""
    panels = [p for p in panels if p[1]]
    if not panels:
        return None
    widths = [len(keys) * max(1, len(stats)) ** 0.5 * 0.6 + 1.4 for _, keys, *_ in panels]
    fig, axes = plt.subplots(1, len(panels), squeeze=False, figsize=(sum(widths) + 1, 3.8),
                             gridspec_kw={"width_ratios": widths})
    w, color = 0.8 / len(stats), palette(list(stats))
    for ax, (title, keys, ylabel, rate) in zip(axes[0], panels):
        for i, (label, s) in enumerate(stats.items()):
            mu = [s.get(k, (math.nan, math.nan))[0] for k in keys]
            err = [bar_err(*s.get(k, (math.nan, math.nan))[:2], rate) for k in keys]
            ax.bar([j + (i - (len(stats) - 1) / 2) * w for j in range(len(keys))], mu, w,
                   yerr=list(zip(*err)), capsize=2, label=label, color=color[label])
        ax.set_xticks(range(len(keys)), short(keys), rotation=35, ha="right", fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel(ylabel, fontsize=8)
        if rate:
            ax.set_ylim(0, 1.02)
    axes[0][0].legend(fontsize=7, title="arm", title_fontsize=7)
    return save(fig, path)


def lines(path, stats, prefix, xlabel, with_id=False):
    """One panel per name in keys '<prefix><name>@<x>', one line per label (95% error bars inside
    [0, 1], its own marker, nudged sideways so equal values stay visible); with_id adds
    success.id at x = 0 (severity 0 = the training distribution)."""
    pat = re.compile(re.escape(prefix) + r"(.+)@(\d+)$")
    names = sorted({pat.match(k)[1] for s in stats.values() for k in s if pat.match(k)})
    if not names:
        return None
    fig, axes = plt.subplots(1, len(names), squeeze=False, figsize=(2.9 * len(names) + 1, 3.0))
    color = palette(list(stats))
    for ax, name in zip(axes[0], names):
        xs = set()
        for i, (label, s) in enumerate(stats.items()):
            pts = sorted((int(pat.match(k)[2]), *v[:2]) for k, v in s.items()
                         if pat.match(k) and pat.match(k)[1] == name)
            pts = [(0, *s["success.id"][:2])] + pts if with_id and "success.id" in s else pts
            if not pts:  # this arm has no value for this panel (e.g. no snapshots)
                continue
            x, mu, half = zip(*pts)
            xs.update(x)
            nudge = (i - (len(stats) - 1) / 2) * 0.012 * (max(x) - min(x) or 1)
            ax.errorbar([v + nudge for v in x], mu, yerr=list(zip(*[bar_err(m, h, True) for m, h
                                                                    in zip(mu, half)])),
                        marker=MARKERS[i % len(MARKERS)], ms=4, capsize=2, lw=1, label=label,
                        color=color[label])
        ax.set_xticks(sorted(xs))  # integers: severities, or the snapshot steps
        ax.set(title=f"suite: {name}", xlabel=xlabel, ylim=(-0.02, 1.02))
    axes[0][0].set_ylabel("success rate")
    axes[0][-1].legend(fontsize=7, title="arm", title_fontsize=7)
    return save(fig, path)


def against(path, panels, xlabel):
    """One panel per (title, {label: [(x, mean, half-width)]}), one line per label with 95% error
    bars inside [0, 1], x on a log scale (demonstration counts double)."""
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), squeeze=False, figsize=(3.2 * len(panels) + 1, 3.0))
    color = palette(sorted({label for _, pts in panels for label in pts}))
    for ax, (title, pts) in zip(axes[0], panels):
        for i, (label, p) in enumerate(sorted(pts.items())):
            x, mu, half = zip(*p)
            ax.errorbar(x, mu, yerr=list(zip(*[bar_err(m, h, True) for m, h in zip(mu, half)])),
                        marker=MARKERS[i % len(MARKERS)], ms=4, capsize=2, lw=1, label=label,
                        color=color[label])
        xs = sorted({v for p in pts.values() for v, *_ in p})
        ax.set_xscale("log")
        ax.set_xticks(xs, [str(v) for v in xs])
        ax.minorticks_off()
        ax.set(title=title, xlabel=xlabel, ylim=(-0.02, 1.02))
    axes[0][0].set_ylabel("success rate")
    axes[0][-1].legend(fontsize=7, title="arm", title_fontsize=7)
    return save(fig, path)


def training(path, csvs, colors):
    """Training curves (loss, video, action, align) of each run; colors = {run: (colour, arm)}:
    the seeds of an arm share its colour, one legend entry per arm."""
    cols = [("loss", "total loss"), ("video", "video loss (flow matching)"),
            ("action", "action loss (flow matching)"), ("align", "alignment loss (-cosine)")]
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.0))
    for run, c in csvs.items():
        for ax, (col, _) in zip(axes, cols):
            if col in c:  # a column an older metrics.csv lacks stays empty
                ax.plot(c["step"], c[col], color=colors[run][0], lw=0.8, label=colors[run][1])
    for ax, (_, title) in zip(axes, cols):
        ax.set_xlabel("training step")
        ax.set_title(title, fontsize=9)
    axes[0].set_ylabel("loss")
    handles = dict(zip(*axes[0].get_legend_handles_labels()[::-1]))  # one entry per arm
    axes[0].legend(handles.values(), handles.keys(), fontsize=7, title="arm", title_fontsize=7)
    return save(fig, path)


def heatmaps(path, rows):
    """Each row's attention (summed over frames) over the current frame; cyan: interaction region.
    rows = {label: examples dict (eval/examples.pt)}, the same inputs in every row."""
    if not rows:  # no run kept its examples; an older report's picture (one a log may link) stays
        return None
    n = min(len(ex["frames"]) for ex in rows.values())
    fig, axes = plt.subplots(len(rows), n, squeeze=False, figsize=(1.7 * n, 1.8 * len(rows) + 0.4))
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
    fig.suptitle("action head's attention on held-out windows (cyan: interaction region)",
                 fontsize=8)
    return save(fig, path)


def pca_rgb(f):
    """Features (n, h, w, D) -> (n, h, w, 3) in [0, 1]: their top 3 principal components (as
    eval.py draws them; repeated here so the study imports nothing of the core)."""
    x = f.flatten(0, 2).float()                                                 # (n*h*w, D)
    x = x - x.mean(0)
    y = x @ torch.linalg.svd(x, full_matrices=False)[2][:3].T                  # (n*h*w, 3)
    y = y * y.gather(0, y.abs().argmax(0, keepdim=True)).sign()  # SVD's sign: largest value > 0
    y = (y - y.min(0).values) / (y.max(0).values - y.min(0).values).clamp_min(1e-8)
    return y.view(*f.shape[:3], 3)                                              # (n, h, w, 3)


def pca(path, ex, title):
    """An arm's PCA picture from a run's eval/examples.pt (for runs that wrote no eval/pca.png):
    the current frame, the top-3 PCA of the aligned layer's features as they are, then with each
    grid cell's mean over the windows removed, and the teacher's."""
    n, f = len(ex["frames"]), ex["student"]
    fig, axes = plt.subplots(4, n, squeeze=False, figsize=(1.7 * n, 7.4))
    names = ["frame", f"layer {ex['layer']}", f"layer {ex['layer']}, cell mean removed",
             f"teacher: {ex['teacher_name']}"[:28]]
    rows = [ex["frames"].permute(0, 2, 3, 1), pca_rgb(f), pca_rgb(f - f.mean(0, keepdim=True)),
            pca_rgb(ex["teacher"])]                                             # (n, h, w, 3) each
    for r, imgs in enumerate(rows):
        for i in range(n):
            axes[r][i].imshow(imgs[i].numpy(), interpolation="nearest")
            axes[r][i].set(xticks=[], yticks=[])
        axes[r][0].set_ylabel(names[r], fontsize=7)
    fig.suptitle(title, fontsize=8)
    return save(fig, path)


def figures(out, stats, csvs, colors, rows):
    """Every comparison picture into out/; returns {title: file name} of those that have data."""
    keys = sorted({k for s in stats.values() for k in s})
    suites = sorted((k for k in keys if k.startswith("success.")), key=lambda k: k != "success.id")
    fams = sorted((k for k in keys if k.startswith("family.")), key=family_order)
    pix = [k for k in keys if k.startswith("intervention.pixel.")]
    hid = [k for k in keys if k.startswith("intervention.hidden.")]
    ratios = [k for k in ["intervention.sensitivity_ratio", "intervention.hidden_ratio"]
              if k in keys]
    figs = {"success per suite family": bars(out / "families.png", stats, [(
                "success per suite family (covered: inside the clips' band; unseen: outside)",
                fams, "success rate", True)]),
            "success per suite": bars(out / "success.png", stats,
                                      [("success per suite", suites, "success rate", True)]),
            "success against OOD severity": lines(out / "severity.png", stats, "success.",
                                                  "OOD severity (0 = training)", with_id=True),
            "success against training steps": lines(out / "curve.png", stats, "success_curve.",
                                                    "training step"),
            "sensitivity (action-chunk change, same noise)": bars(
                out / "sensitivity.png", stats,
                [("pixel edits", pix, CHANGE, False), ("interface edits", hid, CHANGE, False),
                 ("relevant / irrelevant", ratios, "ratio", False)]),
            "training curves": training(out / "training.png", csvs, colors),
            "attention of the action head": heatmaps(out / "attention.png", rows)}
    return {k: v for k, v in figs.items() if v}
