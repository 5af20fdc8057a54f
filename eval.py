"""Evaluation of one run: `python eval.py RUN_DIR [RUN_DIR ...] [section.key=value ...]`.

Writes RUN_DIR/eval/metrics.json (flat keys, below), examples.pt (the pictures' inputs) and PNGs:
training.png, success.png and attention.png (with the PCA pictures). Overrides apply to every
run, e.g. eval.episodes=100, or a new suite: "suites.bg_new={'table_colors': [[0.9, 0.2, 0.9]]}".
Comparing runs (arms, seeds, intervals) is the study's: python study/report.py RUN_DIR ...

  success.<suite>, success_curve.<suite>@<step>   closed-loop success rate (final EMA; snapshots)
  attention.in_mask[.block<j>], attention.chance   action-head cross-attention mass on the
      interaction region's tokens, and their share of tokens; attention.centroid_error[.block<j>]:
      grid cells from the attention centroid to the region's
  intervention.pixel.<edit>   action-chunk change (same noise) when only the background, distractor
      colours or places change (irrelevant), or the target moves (relevant);
      intervention.sensitivity_ratio = relevant / irrelevant (higher is better)
  intervention.hidden.<op>.<region|background>, intervention.hidden_ratio   the same for edits of the
      interface tokens (mean, zeros, shuffle, swap)
  probe.<localization|affordance>_acc   linear probes for the target's / the contact point's token
      on the aligned layer; probe.read.*: on the layers the action head reads; *_chance: majority
  video.psnr   latency.act_ms   teacher   step   time.<part> (seconds)
A Meta-World run (configs/metaworld.yaml) adds success_task.<suite>.<task> (closed-loop success per
task); its pixel interventions and probes, which move and read tabletop blocks, are not run:
metrics.json says so in absent.<part>, and has none of their keys.
"""
# B episodes or windows   T frames   N = g*g tokens per frame   D width   Ha horizon   A actions

import copy
import csv
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure  # not pyplot: files only, no display backend
from tqdm import tqdm

import align
import data
import world
from config import (
    MWSuite,
    action_dim,
    atomic_save,
    eval_suites,
    get_suite,
    is_metaworld,
    load_config,
    pick_device,
    seeded_rng,
    tasks,
)
from train import build_model, load_checkpoint

IRRELEVANT = ["background", "distractor_color", "distractor_move"]  # pixel edits; target_move matters
HIDDEN_OPS = ["mean", "zeros", "shuffle", "swap"]  # on the region's tokens, then the rest's
PARTS = ["attention", "intervention", "probe", "video", "latency"]  # on held-out id windows
TABLETOP_ONLY = {"intervention.pixel": "the pixel interventions move tabletop blocks",
                 "probe": "the probes read tabletop block positions"}  # absent on Meta-World


def interaction_ids(cfg):
    """Mask ids of the interaction region: Meta-World's gripper, goal and task object (mworld's
    ids, world.py's numbers), or world.interaction_ids of the tabletop task."""
    return [world.GRIPPER, world.GOAL, world.TARGET] if is_metaworld(cfg) else \
        world.interaction_ids(cfg.env)


def action_change(a, b):
    """Mean L2 distance between two action chunks (B, Ha, A) per sample -> (B,)."""
    return (a - b).norm(dim=-1).mean(-1)


def nanmean(xs):
    xs = [x for x in xs if not math.isnan(x)]
    return sum(xs) / len(xs) if xs else float("nan")


def sensitivity_ratio(relevant, irrelevant):
    """Relevant change / mean irrelevant change (nan entries, e.g. no valid episode, are skipped);
    inf when the irrelevant edits change nothing at all (a perfectly invariant head), nan for 0/0."""
    base = nanmean(irrelevant)
    if base == 0:
        return float("inf") if relevant > 0 else float("nan")
    return relevant / base


def region_tokens(masks, ids, patch):
    """Entity masks (B, T, H, W) -> (B, T*N) bool: the token holds a pixel of one of ids."""
    inside = torch.isin(masks, torch.tensor(ids, dtype=masks.dtype)).float()  # (B, T, H, W)
    return F.max_pool2d(inside, patch).flatten(1) > 0                          # (B, T*N)


def attention_stats(attn, region, g):
    """attn (B, T*N) attention mass per token, region (B, T*N) bool, g grid side -> in_mask (mass
    share on the region), chance (the region's token share) and centroid_error (grid cells between
    the attention and region centroids, positions within a frame)."""
    n = torch.arange(attn.shape[1]) % (g * g)                                   # (T*N,)
    pos = torch.stack([n // g, n % g], 1).float()                               # (T*N, 2) row, col
    attn, r = attn / attn.sum(1, keepdim=True), region.float()                  # (B, T*N) each
    err = (attn @ pos - (r @ pos) / r.sum(1, keepdim=True).clamp_min(1)).norm(dim=1)  # (B,)
    return {"in_mask": (attn * r).sum(1).mean().item(), "chance": r.mean(1).mean().item(),
            "centroid_error": err.mean().item()}


def edit_tokens(hidden, m, op, gen):
    """Replace the tokens where m (B, L) is True in every hidden state {l: (B, L, D)}: by their mean,
    by zeros, by the same tokens of the previous window in the batch ("shuffle"), or by random
    unmarked tokens of their own window ("swap": region <- background, or background <- region).
    The action head's cross-attention ignores token order, so only new contents can matter."""
    w = m.unsqueeze(-1)                                                         # (B, L, 1)
    if op == "identity":
        return dict(hidden)
    if op in ("mean", "zeros"):
        fill = {k: (h * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1)
                if op == "mean" else torch.zeros_like(h[:, :1]) for k, h in hidden.items()}
        return {k: torch.where(w, fill[k], h) for k, h in hidden.items()}      # (B, L, D) each
    (B, L), mc = m.shape, m.cpu()
    b, i = torch.arange(B)[:, None].expand(B, L), torch.arange(L).expand(B, L)  # (B, L) each
    if op == "shuffle":
        b = torch.where(mc, b.roll(1, 0), b)                                    # (B, L)
    elif op == "swap":
        rnd = torch.rand(B, L, generator=gen)                                   # (B, L)
        other = torch.argsort(torch.where(mc, 2 + rnd, rnd), dim=1)  # (B, L) unmarked first, shuffled
        n = (~mc).sum(1, keepdim=True).clamp_min(1)                             # (B, 1)
        pick = other.gather(1, (torch.rand(B, L, generator=gen) * n).long())   # (B, L)
        i = torch.where(mc, pick, i)                                            # (B, L)
    else:
        raise ValueError(f"unknown token edit '{op}'; expected identity, mean, zeros, shuffle, swap")
    b, i = b.to(m.device), i.to(m.device)
    return {k: h[b, i] for k, h in hidden.items()}                             # (B, L, D) each


# ---- measurements -----------------------------------------------------------
@torch.no_grad()
def success_rate(model, cfg, suite, episodes, device):
    """Closed-loop success on one suite: the model as a Policy, `replan` actions of each chunk."""
    env, dc = cfg.env, cfg.data
    gen = torch.Generator().manual_seed(cfg.eval.seed)  # the same tasks and layouts for every run
    torch.manual_seed(cfg.eval.seed)  # action noise
    tasks = torch.tensor(world.task_ids(env))  # env.task's family
    task = tasks[torch.randint(len(tasks), (episodes,), generator=gen)]         # (B,)
    state, app = world.reset(env, get_suite(cfg.suites, suite), task, gen)
    policy = world.Policy(model, dc.n_ctx, dc.stride, cfg.eval.replan)
    r = world.rollout(env, state, app, lambda t, s, frame: policy.select_action(
        {"frame": frame, "task": task}), env.max_steps)
    return r["success"].float().mean().item()


@torch.no_grad()
def mw_success_rate(model, cfg, suite, episodes, device, sim):
    """Closed-loop success on one Meta-World suite: `episodes` episodes, the tasks in turn, one
    round of len(TASKS) envs at a time in sim (an mworld.World), each episode at most
    metaworld.max_steps steps (a round stops when all its episodes succeeded: success counts at
    any step). Only the frames the Policy reads are rendered. -> (rate, {task name: rate})."""
    import mworld  # here only: it loads metaworld and sets up headless rendering
    mw, dc, names = cfg.metaworld, cfg.data, mworld.TASKS
    torch.manual_seed(cfg.eval.seed)  # action noise
    policy = world.Policy(model, dc.n_ctx, dc.stride, cfg.eval.replan)
    s, wins = get_suite(mw.suites, suite, MWSuite, "metaworld.suites"), torch.zeros(episodes)
    for r in tqdm(range(0, episodes, len(names)), desc=f"{suite}, {episodes} episodes",
                  leave=False):
        task = torch.arange(r, min(r + len(names), episodes)) % len(names)     # (B,)
        sim.reset(s, task, (cfg.eval.seed, r // len(names), 1))  # 3 ints: never a demo's seed
        policy.reset()
        done = sim.success()                                                   # (B,)
        for t in range(mw.max_steps):
            frame = sim.render(masks=False)[0] if policy.needs_frame(t) else None  # (B,3,H,W)
            sim.step(policy.select_action({"frame": frame, "task": task}).cpu())
            done |= sim.success()
            if done.all():
                break
        wins[r:r + len(task)] = done.float()
    task = torch.arange(episodes) % len(names)                                 # (episodes,)
    return wins.mean().item(), {n: wins[task == i].mean().item() for i, n in enumerate(names)
                                if (task == i).any()}


def heldout(cfg):
    """Fresh expert episodes (seed eval.seed, never the training seed) and their Dataset windows;
    on Meta-World eval.heldout_episodes rounded up to whole rounds of one episode per task."""
    hcfg = copy.deepcopy(cfg)
    hcfg.data.seed, hcfg.data.n_episodes = cfg.eval.seed, cfg.eval.heldout_episodes
    if is_metaworld(cfg):
        import mworld  # here only: it loads metaworld and sets up headless rendering
        hcfg.metaworld.episodes_per_task = -(-cfg.eval.heldout_episodes // len(mworld.TASKS))
        demos = mworld.make_demos(hcfg)
    else:
        demos = data.make_demos(hcfg)
    return demos, data.Dataset(demos, hcfg.data)


def windows(ds, n, seed):
    """n random windows of ds (the same ones for every run of the same data config)."""
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n]  # (n,)
    return ds.batch(idx)


def interface(model, cfg, batch, device, layers):
    """Foresight hidden states {l: (B, T*N, D)} of the given layers for a batch of windows."""
    ctx, task = batch["video"][:, :cfg.data.n_ctx].to(device), batch["task"].to(device)
    return model.foresight(ctx, task, sorted(set(layers))), task


def noise_like(cfg, B, seed, device):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(B, cfg.data.horizon, action_dim(cfg), generator=gen).to(device)  # B,Ha,A


@torch.no_grad()
def attention_part(model, cfg, held, device, out, teacher="oracle"):
    """Cross-attention of every action block on held-out windows; saves the pictures' inputs."""
    ec, dc, g = cfg.eval, cfg.data, model.grid
    batch = windows(held[1], ec.attn_samples, ec.seed)
    hidden, task = interface(model, cfg, batch, device, [*model.bridge_layers(), cfg.align.layer])
    noise = noise_like(cfg, len(task), ec.seed, device)                         # (B, Ha, A)
    _, maps = model.sample_actions(hidden, task, cfg.model.act_steps, noise, True)
    maps = [a.float().mean((1, 2)).cpu() for a in maps]  # per block (B, T*N): heads, actions avg
    region = region_tokens(batch["masks"], interaction_ids(cfg), cfg.model.patch)
    m = {f"attention.{k}": v for k, v in attention_stats(sum(maps) / len(maps), region, g).items()}
    for j, a in enumerate(maps):
        s = attention_stats(a, region, g)
        m.update({f"attention.{k}.block{j}": s[k] for k in ["in_mask", "centroid_error"]})
    n, cur = ec.examples, dc.n_ctx - 1  # pictures: the current frame of the first n windows
    ex = {k: v[:n] for k, v in batch.items()}
    tcfg = copy.deepcopy(cfg)  # the run's teacher; the oracle for a baseline or a fallback
    tcfg.align.teacher = teacher if teacher in ["oracle", "oracle_task", "shuffled", "random",
                                                "dinov2"] else "oracle"
    teacher, tname = align.build_teacher(tcfg)
    feats = hidden[cfg.align.layer][:n].view(n, -1, g, g, cfg.model.width)[:, cur]  # (n, g, g, D)
    pics = {"frames": world.to_uint8(ex["video"][:, cur]),                # (n, 3, H, W)
            "attn": (sum(maps) / len(maps))[:n].view(n, -1, g, g).sum(1),   # (n, g, g)
            "region": region[:n].view(n, -1, g, g)[:, cur],                 # (n, g, g)
            "student": feats.float().cpu(), "layer": cfg.align.layer,       # (n, g, g, D)
            "teacher": teacher(ex)[:, cur].float().cpu(), "teacher_name": tname,  # (n, g, g, Dt)
            "task": ex["task"]}
    # clone: torch.save writes a view's whole storage (the batch's), not just the view
    atomic_save({k: v.clone() if torch.is_tensor(v) else v for k, v in pics.items()},
                out / "examples.pt")
    return m


@torch.no_grad()
def intervention_part(model, cfg, held, device, out):
    """Action change (same noise) under pixel edits of fresh id episodes (the tabletop's) and token
    edits of the interface on held-out windows."""
    m = {} if is_metaworld(cfg) else pixel_interventions(model, cfg, device)
    ec, ids = cfg.eval, interaction_ids(cfg)
    batch = windows(held[1], ec.attn_samples, ec.seed)
    hidden, task = interface(model, cfg, batch, device, model.bridge_layers())
    region = region_tokens(batch["masks"], ids, cfg.model.patch).to(device)     # (B, T*N)
    steps, noise = cfg.model.act_steps, noise_like(cfg, len(task), ec.seed, device)
    a0, tgen = model.sample_actions(hidden, task, steps, noise), torch.Generator().manual_seed(0)
    for op in HIDDEN_OPS:
        for where, mask in (("region", region), ("background", ~region)):
            a = model.sample_actions(edit_tokens(hidden, mask, op, tgen), task, steps, noise)
            m[f"intervention.hidden.{op}.{where}"] = action_change(a, a0).mean().item()
    m["intervention.hidden_ratio"] = sensitivity_ratio(  # region edits / background edits
        nanmean([m[f"intervention.hidden.{op}.region"] for op in HIDDEN_OPS]),
        [m[f"intervention.hidden.{op}.background"] for op in HIDDEN_OPS])
    return m


def pixel_interventions(model, cfg, device):
    """The tabletop's pixel edits: action change (same noise) when the background, distractor
    colours or places change, or the target moves, in fresh id episodes."""
    env, ec, dc = cfg.env, cfg.eval, cfg.data
    B, ids, steps = ec.intervention_samples, world.interaction_ids(env), None
    gen = torch.Generator().manual_seed(ec.seed + 1)
    tasks = torch.tensor(world.task_ids(env))                                    # env.task's family
    task = tasks[torch.randint(len(tasks), (B,), generator=gen)]                # (B,)
    state, app = world.reset(env, get_suite(cfg.suites, "id"), task, gen)
    hist = world.rollout(env, state, app, lambda t, s, f: world.expert(env, s),  # the expert's
                         (dc.n_ctx - 1) * dc.stride, draw=False)["states"][::dc.stride]  # context
    noise = noise_like(cfg, B, ec.seed + 1, device)                             # (B, Ha, A)

    def look(states, appearance):  # -> frames (B, n_ctx, 3, H, W), region pixels (B, n_ctx, ids)
        frames, masks = zip(*(world.render(env, s, appearance) for s in states))
        masks = torch.stack(masks, 1)                                           # (B, n_ctx, H, W)
        counts = torch.stack([(masks == i).sum((2, 3)) for i in ids], -1)      # (B, n_ctx, ids)
        return world.to_float(torch.stack(frames, 1)), counts

    def moved(slots):  # every episode takes the next episode's positions for these blocks
        out = []
        for s in hist:
            blocks = s["blocks"].clone()                                        # (B, K, 2)
            blocks[:, slots] = s["blocks"].roll(1, 0)[:, slots]
            out.append({**s, "blocks": blocks})
        return out

    color = app["color"].clone()                                                # (B, K)
    new = color.roll(1, 0)[:, 1:]  # the next episode's distractor colours, never the target's
    color[:, 1:] = torch.where(new == color[:, :1], color[:, 1:], new)
    edits = {"background": (hist, {**app, "table": app["table"].roll(1, 0),
                                   "texture": app["texture"].roll(1, 0)}),
             "distractor_color": (hist, {**app, "color": color}),
             "distractor_move": (moved(slice(1, None)), app),
             "target_move": (moved(slice(0, 1)), app)}
    x0, c0 = look(hist, app)
    a0 = model.act(x0.to(device), task.to(device), steps, noise).cpu()          # (B, Ha, A)
    m, tgt = {}, ids.index(world.TARGET)
    for name, (states, appearance) in edits.items():
        x, c = look(states, appearance)
        if name == "target_move":  # the target stays mostly visible (only the gripper is above it)
            ok = c[..., tgt] >= 0.75 * c0[..., tgt]                             # (B, n_ctx)
        else:  # nothing of the interaction region may change
            ok = (c == c0).all(-1)                                              # (B, n_ctx)
        valid = ok.all(1) & (x != x0).flatten(1).any(1)                         # (B,)
        d = action_change(model.act(x.to(device), task.to(device), steps, noise).cpu(), a0)
        m[f"intervention.pixel.{name}"] = d[valid].mean().item() if valid.any() else float("nan")
    irr = [m[f"intervention.pixel.{k}"] for k in IRRELEVANT]
    m["intervention.relevant"] = m["intervention.pixel.target_move"]
    m["intervention.irrelevant"] = nanmean(irr)
    m["intervention.sensitivity_ratio"] = sensitivity_ratio(m["intervention.relevant"], irr)
    return m


def linear_probe(feats, labels, train_mask, steps, seed=0):
    """Test accuracy of a linear token scorer (softmax over a frame's tokens, cross-entropy to the
    labelled token), trained with Adam on train_mask rows and tested on the others.
    feats (B, N, D), labels (B,) token ids, train_mask (B,) bool."""
    f = feats[train_mask]                                                       # (Btr, N, D)
    x = (feats - f.mean((0, 1))) / (f.std((0, 1)) + 1e-6)                      # (B, N, D)
    with seeded_rng(seed), torch.enable_grad():
        lin = torch.nn.Linear(x.shape[-1], 1)
        opt = torch.optim.Adam(lin.parameters(), lr=1e-2)
        for _ in range(steps):
            loss = F.cross_entropy(lin(x[train_mask]).squeeze(-1), labels[train_mask])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    pred = lin(x[~train_mask]).squeeze(-1).argmax(1)                            # (Bte,)
    return (pred == labels[~train_mask]).float().mean().item()


@torch.no_grad()
def probe_part(model, cfg, held, device, out):
    """Linear probes on the current frame's tokens for which token holds the target, and which
    the contact point (where the gripper's centre must be, as world.expert aims: behind the target
    as seen from the goal for push, its side facing the gripper for reach). Two feature sets: the
    aligned layer (what the alignment writes: probe.*) and the layers the action head reads,
    concatenated (what it can use: probe.read.*); chance = always the training half's most
    common cell. Trained on half the held-out episodes, tested on the other half."""
    (demos, ds), ec, g, env = held, cfg.eval, model.grid, cfg.env
    batch = windows(ds, ec.probe_samples, ec.seed + 2)
    read = sorted(set(model.bridge_layers()))
    hidden, _ = interface(model, cfg, batch, device, [cfg.align.layer, *read])

    def current(layer):  # (B, N, D) of the last context frame
        h = hidden[layer].view(len(batch["task"]), -1, g * g, cfg.model.width)
        return h[:, cfg.data.n_ctx - 1].float().cpu()
    feats = {"probe.": current(cfg.align.layer),
             "probe.read.": torch.cat([current(layer) for layer in read], -1)}  # (B, N, D*len)
    fi = batch["frame_index"][:, cfg.data.n_ctx - 1]                            # (B,)
    e, t = fi // demos["frames"].shape[1], fi % demos["frames"].shape[1]        # episode, time
    target, gripper = demos["blocks"][e, t, 0], demos["gripper"][e, t]          # (B, 2) each
    R = (env.gripper_radius + demos["size"][e, 0])[:, None]                     # (B, 1) touching
    if env.task == "push":
        contact = target - R * F.normalize(demos["goal"][e] - target, dim=1)    # (B, 2)
    elif env.task == "reach":
        contact = target + R * F.normalize(gripper - target, dim=1)             # (B, 2)
    else:
        raise ValueError(f"env.task={env.task!r}; expected 'reach' or 'push'")
    train_mask = e < demos["frames"].shape[0] // 2  # disjoint episodes train / test
    m = {}
    for what, p in [("localization", target), ("affordance", contact)]:
        cell = (p * g).long().clamp(0, g - 1)                                   # (B, 2) col, row
        labels = cell[:, 1] * g + cell[:, 0]                                    # (B,) token id
        mode = labels[train_mask].mode().values
        m[f"probe.{what}_chance"] = (labels[~train_mask] == mode).float().mean().item()
        for key, f in feats.items():
            m[f"{key}{what}_acc"] = linear_probe(f, labels, train_mask, ec.probe_steps)
    return m


@torch.no_grad()
def video_part(model, cfg, held, device, out):
    """PSNR (dB, pixels in [0, 1]) of imagine()'s future frames against the true ones."""
    batch = windows(held[1], cfg.eval.psnr_samples, cfg.eval.seed + 3)
    video, task = batch["video"].to(device), batch["task"].to(device)           # (B, T, 3, H, W)
    torch.manual_seed(cfg.eval.seed)
    fake = model.imagine(video[:, :cfg.data.n_ctx], task)                       # (B, Tf, 3, H, W)
    mse = ((fake - video[:, cfg.data.n_ctx:]) / 2).pow(2).flatten(1).mean(1)    # (B,)
    return {"video.psnr": (-10 * mse.clamp_min(1e-10).log10()).mean().item()}


@torch.no_grad()
def latency_part(model, cfg, held, device, out):
    """Median milliseconds per act() at batch 1, after warm-up."""
    batch = windows(held[1], 1, cfg.eval.seed)
    ctx, task = batch["video"][:, :cfg.data.n_ctx].to(device), batch["task"].to(device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else lambda: None
    times = []
    for _ in range(5 + cfg.eval.latency_reps):  # the first 5 are warm-up
        sync()
        t0 = time.perf_counter()
        model.act(ctx, task)
        sync()
        times.append(1000 * (time.perf_counter() - t0))
    return {"latency.act_ms": sorted(times[5:])[len(times[5:]) // 2]}


# ---- pictures of one run ------------------------------------------------------
def pictures(out, run, m, cfg, ex, name):
    """training.png (losses), success.png (per suite; per EMA snapshot) and attention.png (the
    head's attention and the PCA of the tapped layer and the teacher) of one evaluated run."""
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    fig = Figure(figsize=(12, 2.8))
    for ax, col in zip(fig.subplots(1, 4), ["loss", "video", "action", "align"]):
        ax.plot([int(r["step"]) for r in rows], [float(r[col]) for r in rows], lw=0.8)
        ax.set(title=f"{name}: {col} loss", xlabel="training step")
    save(fig, out / "training.png")

    def bars(p, n):  # binomial 95% interval, inside [0, 1]
        h = [1.96 * math.sqrt(max(0.0, x * (1 - x)) / n) for x in p]
        return [[x - max(0.0, x - e) for x, e in zip(p, h)], [min(1.0, x + e) - x for x, e in zip(p, h)]]
    suites = [k for k in m if k.startswith("success.")]
    curve = sorted((k.split("@")[0][14:], int(k.split("@")[1]), v) for k, v in m.items()
                   if k.startswith("success_curve."))
    fig = Figure(figsize=(5 + 0.4 * len(suites), 3.2))
    ax, bx = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1 + 0.4 * len(suites), 4]})
    p = [m[k] for k in suites]
    ax.bar(range(len(p)), p, yerr=bars(p, cfg.eval.episodes), capsize=2)
    ax.set_xticks(range(len(p)), [k[8:] for k in suites], rotation=40, ha="right", fontsize=7)
    ax.set(title=f"{name}: success per suite", ylabel=f"success rate ({cfg.eval.episodes} "
           "episodes, 95%)", ylim=(0, 1.02))
    for suite in sorted({c[0] for c in curve}):
        x, p = zip(*[(k, v) for s, k, v in curve if s == suite])
        bx.errorbar(x, p, yerr=bars(p, cfg.eval.curve_episodes), marker="o", capsize=2, label=suite)
    bx.set(title="success of the EMA snapshots", xlabel="training step", ylim=(0, 1.02))
    bx.legend(fontsize=7, title="suite")
    save(fig, out / "success.png")

    n, (_, H, W), g = len(ex["frames"]), ex["frames"][0].shape, ex["attn"].shape[-1]
    fig = Figure(figsize=(1.7 * n, 9))
    axes = fig.subplots(5, n, squeeze=False)
    pcs = [pca_rgb(ex["student"]), pca_rgb(without_position(ex["student"])), pca_rgb(ex["teacher"])]
    labels = ["frame, interaction\nregion (cyan)", "head's attention", f"layer {ex['layer']}: PCA",
              "layer, cell mean\nremoved: PCA", f"teacher {ex['teacher_name'][:12]}: PCA"]
    centres = [(j + 0.5) * W / g for j in range(g)]
    for i in range(n):
        for r, img in enumerate([ex["frames"][i].permute(1, 2, 0)] * 2 + [x[i] for x in pcs]):
            ax = axes[r][i]
            ax.imshow(img.numpy(), extent=(0, W, H, 0), interpolation="nearest")
            if r < 2:
                ax.contour(centres, centres, ex["region"][i].float().numpy(), [0.5],
                           colors="cyan", linewidths=0.7)
            if r == 1:
                ax.imshow(ex["attn"][i].numpy(), cmap="inferno", alpha=0.6, extent=(0, W, H, 0))
            ax.set(xticks=[], yticks=[])
        axes[0][i].set_title(tasks(cfg)[0][int(ex["task"][i])], fontsize=7)
    for r, label in enumerate(labels):
        axes[r][0].set_ylabel(label, fontsize=7)
    fig.suptitle(f"{name}: the current frame of {n} held-out windows", fontsize=9)
    save(fig, out / "attention.png")


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


def save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ---- one run ------------------------------------------------------------------
def evaluate(run, overrides=()):
    """Every metric of one run folder, written with its pictures to RUN_DIR/eval/."""
    t_start, run = time.perf_counter(), Path(run)
    cfg = load_config(run / "config.yaml", overrides)
    ec, out, device = cfg.eval, run / "eval", pick_device(cfg.eval.device)
    suites = list(eval_suites(cfg)) if ec.suites == ["all"] else ec.suites
    curves = list(eval_suites(cfg)) if ec.curve_suites == ["all"] else ec.curve_suites
    ckpt = load_checkpoint(run / "ckpt.pt", device)
    proj = ckpt["ema"].get("projector.4.weight")  # AGRA's projector: (Dt, proj_hidden)

    def load(weights):
        model = build_model(cfg, None if proj is None else proj.shape[0]).to(device).eval()
        model.load_state_dict(weights)
        return model
    model = load(ckpt["ema"])
    snaps = sorted(int(p.stem.split("_")[1]) for p in run.glob("snapshots/ema_*.pt"))
    todo = [("success", s) for s in suites]
    todo += [("success_curve", f"{s}@{k}") for k in snaps for s in curves]
    todo += [(part, "") for part in PARTS]
    out.mkdir(exist_ok=True)
    m, times, held, sim = {}, {}, None, None
    if is_metaworld(cfg):
        import mworld  # here only: it loads metaworld and sets up headless rendering
        sim = mworld.World(cfg.metaworld)  # its envs and renderers serve every suite
        m.update({f"absent.{k}": f"tabletop-only: {why}" for k, why in TABLETOP_ONLY.items()})
        print(f"eval {run.name}: a Meta-World run: not running "
              + "; ".join(f"{k} ({why})" for k, why in TABLETOP_ONLY.items())
              + ": metrics.json records them as absent.<part>")

    def success(model, suite, episodes, key):
        if sim is None:
            m[key] = success_rate(model, cfg, suite, episodes, device)
            return
        m[key], per_task = mw_success_rate(model, cfg, suite, episodes, device, sim)
        if key.startswith("success."):  # the final model's, per task
            m.update({f"success_task.{suite}.{k}": v for k, v in per_task.items()})
    try:
        for part, arg in (bar := tqdm(todo, desc=f"eval {run.name}", dynamic_ncols=True)):
            bar.set_postfix_str(f"{part} {arg}")
            t0, key = time.perf_counter(), f"{part}.{arg}" if arg else part
            if part == "success":
                success(model, arg, ec.episodes, key)
            elif part == "success_curve":
                suite, step = arg.split("@")
                snap = load(load_checkpoint(run / "snapshots" / f"ema_{step}.pt", device)["ema"])
                success(snap, suite, ec.curve_episodes, key)
            elif sim is None or part not in TABLETOP_ONLY:  # Meta-World: no probes
                if held is None:
                    held = heldout(cfg)
                    times["heldout"], t0 = time.perf_counter() - t0, time.perf_counter()
                kw = {"teacher": ckpt["teacher"]} if part == "attention" else {}
                m.update(PART_FNS[part](model, cfg, held, device, out, **kw))
            times[key] = time.perf_counter() - t0
    finally:
        if sim is not None:
            sim.close()
    for p in ["success", "success_curve"]:
        times[p] = sum(v for k, v in times.items() if k.startswith(p + "."))
    m.update({f"time.{p}": times[p] for p in [*PARTS, "heldout", "success", "success_curve"]})
    m["time.total"] = time.perf_counter() - t_start
    m = dict(sorted({**m, "teacher": ckpt["teacher"], "step": ckpt["step"]}.items()))
    (out / "metrics.json").write_text(json.dumps(m, indent=1))
    pictures(out, run, m, cfg, torch.load(out / "examples.pt", weights_only=True), run.name)
    print(f"{run}: {m['time.total']:.1f} s; " + ", ".join(
        f"{k} {m[k]:.3g}" for k in ["success.id", "attention.in_mask", "probe.localization_acc"]
        if k in m) + f"; {out}")
    return m


PART_FNS = {"attention": attention_part, "intervention": intervention_part, "probe": probe_part,
            "video": video_part, "latency": latency_part}


def main(argv):
    runs, overrides = [a for a in argv if "=" not in a], [a for a in argv if "=" in a]
    if not runs or any(a.startswith("-") for a in runs):
        raise SystemExit("usage: python eval.py RUN_DIR [RUN_DIR ...] [section.key=value ...]")
    for r in map(Path, runs):  # every run checked before the first is evaluated
        if not (r / "config.yaml").is_file() or not (r / "ckpt.pt").is_file():
            raise SystemExit(f"error: {r} is not a run folder: expected {r}/config.yaml and "
                             f"{r}/ckpt.pt (python train.py CONFIG name=... makes one)")
        try:
            load_config(r / "config.yaml", overrides)
        except (KeyError, ValueError, TypeError, FileNotFoundError) as e:
            raise SystemExit(f"error: {e.args[0] if e.args else e}") from None
    for r in runs:
        evaluate(r, overrides)


if __name__ == "__main__":
    main(sys.argv[1:])
