"""Evaluation: `python eval.py RUN_DIR [RUN_DIR ...] [--out DIR] [--force] [section.key=value ...]`.

Per run: RUN_DIR/eval/metrics.json (flat keys, below), meta.json (what they were computed from),
examples.pt (the pictures' inputs) and PNGs. Several runs: DIR/report.md comparing arms (plots.py;
default DIR = <the runs' common parent>/report). Overrides apply to every run, e.g. eval.episodes=100
or a new suite "suites.bg_new={'table_colors': [[0.9, 0.2, 0.9]]}". Finished keys are reused while
the checkpoint and the config they depend on are unchanged (--force recomputes them all). A RUN_DIR
without ckpt.pt but with eval/metrics.json (a recorded run: study.sh keeps each finished run so in
results/<preset>/runs/, checkpoints left out) joins the report with its metrics as recorded.

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
"""
# B episodes or windows   T frames   N = g*g tokens per frame   D width   Ha horizon   A = 2

import argparse
import copy
import json
import math
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from tqdm import tqdm

import align
import data
import plots
import world

IRRELEVANT = ["background", "distractor_color", "distractor_move"]  # pixel edits; target_move matters
HIDDEN_OPS = ["mean", "zeros", "shuffle", "swap"]  # on the region's tokens, then the rest's
PARTS = ["attention", "intervention", "probe", "video", "latency"]  # on held-out id windows


@dataclass
class EvalConfig:
    episodes: int = 500            # closed-loop episodes per suite (standard error < ~2.3 points)
    batch_size: int = 500          # episodes simulated at once
    suites: list = field(default_factory=lambda: ["all"])  # suite names; ["all"] = every suite
    replan: int = 4                # actions executed per chunk before re-planning; 0 = whole chunk
    act_steps: int = 0             # Euler steps of the action head; 0 = model.act_steps
    curve_suites: list = field(default_factory=lambda: ["id"])  # suites run on every snapshot
    curve_episodes: int = 200      # episodes per suite per snapshot
    heldout_episodes: int = 64     # fresh expert episodes (seed below) for the held-out analyses
    attn_samples: int = 256        # held-out windows for attention and hidden-state interventions
    intervention_samples: int = 256  # fresh id episodes for the pixel interventions
    probe_samples: int = 1024      # held-out windows for the probes (split by episode, half/half)
    probe_steps: int = 300         # Adam steps of each linear probe
    psnr_samples: int = 64         # held-out windows for video PSNR
    latency_reps: int = 50         # timed act() calls at batch 1 (after 5 warm-up calls)
    examples: int = 6              # windows shown in the attention and PCA pictures
    seed: int = 1234               # episodes, held-out demos and noise; must differ from data.seed
    use_ema: bool = True           # evaluate the EMA weights (else the raw weights)
    device: str = "auto"           # auto | cpu | cuda[:i]

    def __post_init__(self):
        for k in ("episodes", "batch_size", "curve_episodes", "heldout_episodes", "attn_samples",
                  "intervention_samples", "probe_samples", "probe_steps", "psnr_samples",
                  "latency_reps", "examples"):
            if getattr(self, k) < 1:
                raise ValueError(f"eval.{k}={getattr(self, k)}; expected an integer >= 1")
        for k in ("replan", "act_steps"):
            if getattr(self, k) < 0:
                raise ValueError(f"eval.{k}={getattr(self, k)}; expected 0 (the default) or more")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"eval.device={self.device!r}; expected auto, cpu, cuda or cuda:<i>")


def context_times(t, n_ctx, stride):
    """Frame times fed as context at time t, as data.Dataset builds them (clamped at 0)."""
    return [max(0, t - (n_ctx - 1 - i) * stride) for i in range(n_ctx)]


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


# -----------------------------------------------------------------------------
# measurements


@torch.no_grad()
def success_rate(model, cfg, suite, episodes, device):
    """Closed-loop success on one suite: batches of episodes, `replan` actions of each chunk."""
    env, ec, dc = cfg.env, cfg.eval, cfg.data
    replan = ec.replan or dc.horizon
    if not 0 < replan <= dc.horizon:
        raise ValueError(f"eval.replan={ec.replan}; expected 0 (whole chunk) or 1..{dc.horizon}")
    gen = torch.Generator().manual_seed(ec.seed)  # same tasks and layouts for every suite and run
    torch.manual_seed(ec.seed)  # action noise
    wins, tasks = 0, torch.tensor(world.task_ids(env))  # env.task's family
    for start in range(0, episodes, ec.batch_size):
        B = min(ec.batch_size, episodes - start)
        task = tasks[torch.randint(len(tasks), (B,), generator=gen)]            # (B,)
        state, app = world.reset(env, world.get_suite(cfg.suites, suite), task, gen)
        hist = [world.render(env, state, app)[0]]                                # [(B, 3, H, W)]
        done = torch.zeros(B, dtype=torch.bool)                                 # (B,)
        for t in range(env.max_steps):
            if t % replan == 0:
                ctx = torch.stack([hist[i] for i in context_times(t, dc.n_ctx, dc.stride)], 1)
                chunk = model.act((ctx.float() / 127.5 - 1).to(device), task.to(device),  # (B, Ha, A)
                                  ec.act_steps or None).cpu()
            state = world.step(env, state, chunk[:, t % replan])
            done |= world.success(env, state)
            hist.append(world.render(env, state, app)[0])
        wins += done.sum().item()
    return wins / episodes


def check_heldout_seed(cfg):
    if cfg.eval.seed == cfg.data.seed:
        raise ValueError(f"eval.seed={cfg.eval.seed} equals data.seed: held-out data must differ")


def heldout(cfg):
    """Fresh expert episodes (seed eval.seed, never the training seed) and their Dataset windows."""
    check_heldout_seed(cfg)
    hcfg = copy.deepcopy(cfg)
    hcfg.data.seed, hcfg.data.n_episodes = cfg.eval.seed, cfg.eval.heldout_episodes
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
    return torch.randn(B, cfg.data.horizon, 2, generator=gen).to(device)     # (B, Ha, A)


@torch.no_grad()
def attention_part(model, cfg, held, device, out):
    """Cross-attention of every action block on held-out windows; saves the pictures' inputs."""
    ec, dc, g = cfg.eval, cfg.data, model.grid
    batch = windows(held[1], ec.attn_samples, ec.seed)
    hidden, task = interface(model, cfg, batch, device, [*model.bridge_layers(), cfg.align.layer])
    noise = noise_like(cfg, len(task), ec.seed, device)                         # (B, Ha, A)
    _, maps = model.sample_actions(hidden, task, ec.act_steps or cfg.model.act_steps, noise, True)
    maps = [a.float().mean((1, 2)).cpu() for a in maps]  # per block (B, T*N): heads, actions avg
    region = region_tokens(batch["masks"], world.interaction_ids(cfg.env), cfg.model.patch)
    m = {f"attention.{k}": v for k, v in attention_stats(sum(maps) / len(maps), region, g).items()}
    for j, a in enumerate(maps):
        s = attention_stats(a, region, g)
        m.update({f"attention.{k}.block{j}": s[k] for k in ["in_mask", "centroid_error"]})
    n, cur = ec.examples, dc.n_ctx - 1  # pictures: the current frame of the first n windows
    ex = {k: v[:n] for k, v in batch.items()}
    tcfg = copy.deepcopy(cfg)  # the run's teacher; the oracle for a baseline or a fallback
    tcfg.align.teacher = cfg.align.teacher_used if cfg.align.teacher_used in align.TEACHERS \
        else "oracle"
    teacher, tname = align.build_teacher(tcfg)
    feats = hidden[cfg.align.layer][:n].view(n, -1, g, g, cfg.model.width)[:, cur]  # (n, g, g, D)
    pics = {"frames": ((ex["video"][:, cur] + 1) * 127.5).round().byte(),  # (n, 3, H, W)
            "attn": (sum(maps) / len(maps))[:n].view(n, -1, g, g).sum(1),   # (n, g, g)
            "region": region[:n].view(n, -1, g, g)[:, cur],                 # (n, g, g)
            "student": feats.float().cpu(), "layer": cfg.align.layer,       # (n, g, g, D)
            "teacher": teacher(ex)[:, cur].float().cpu(), "teacher_name": tname}  # (n, g, g, Dt)
    # clone: torch.save writes a view's whole storage (the batch's), not just the view
    torch.save({k: v.clone() if torch.is_tensor(v) else v for k, v in pics.items()},
               out / "examples.pt")
    return m


@torch.no_grad()
def intervention_part(model, cfg, held, device, out):
    """Action change (same noise) under pixel edits of fresh id episodes and token edits of the
    interface on held-out windows."""
    env, ec, dc = cfg.env, cfg.eval, cfg.data
    B, ids, steps = ec.intervention_samples, world.interaction_ids(env), ec.act_steps or None
    gen = torch.Generator().manual_seed(ec.seed + 1)
    tasks = torch.tensor(world.task_ids(env))                                    # env.task's family
    task = tasks[torch.randint(len(tasks), (B,), generator=gen)]                # (B,)
    state, app = world.reset(env, world.get_suite(cfg.suites, "id"), task, gen)
    hist = [state]
    for _ in range((dc.n_ctx - 1) * dc.stride):  # an expert history as long as the context needs
        hist.append(world.step(env, hist[-1], world.expert(env, hist[-1])))
    hist = [hist[i] for i in context_times(len(hist) - 1, dc.n_ctx, dc.stride)]
    noise = noise_like(cfg, B, ec.seed + 1, device)                             # (B, Ha, A)

    def look(states, appearance):  # -> frames (B, n_ctx, 3, H, W), region pixels (B, n_ctx, ids)
        frames, masks = zip(*(world.render(env, s, appearance) for s in states))
        masks = torch.stack(masks, 1)                                           # (B, n_ctx, H, W)
        counts = torch.stack([(masks == i).sum((2, 3)) for i in ids], -1)      # (B, n_ctx, ids)
        return torch.stack(frames, 1).float() / 127.5 - 1, counts

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

    batch = windows(held[1], ec.attn_samples, ec.seed)
    hidden, task = interface(model, cfg, batch, device, model.bridge_layers())
    region = region_tokens(batch["masks"], ids, cfg.model.patch).to(device)     # (B, T*N)
    steps, noise = steps or cfg.model.act_steps, noise_like(cfg, len(task), ec.seed, device)
    a0, tgen = model.sample_actions(hidden, task, steps, noise), torch.Generator().manual_seed(0)
    for op in HIDDEN_OPS:
        for where, mask in (("region", region), ("background", ~region)):
            a = model.sample_actions(edit_tokens(hidden, mask, op, tgen), task, steps, noise)
            m[f"intervention.hidden.{op}.{where}"] = action_change(a, a0).mean().item()
    m["intervention.hidden_ratio"] = sensitivity_ratio(  # region edits / background edits
        nanmean([m[f"intervention.hidden.{op}.region"] for op in HIDDEN_OPS]),
        [m[f"intervention.hidden.{op}.background"] for op in HIDDEN_OPS])
    return m


def linear_probe(feats, labels, train_mask, steps, seed=0):
    """Test accuracy of a linear token scorer (softmax over a frame's tokens, cross-entropy to the
    labelled token), trained with Adam on train_mask rows and tested on the others.
    feats (B, N, D), labels (B,) token ids, train_mask (B,) bool."""
    f = feats[train_mask]                                                       # (Btr, N, D)
    x = (feats - f.mean((0, 1))) / (f.std((0, 1)) + 1e-6)                      # (B, N, D)
    with align.seeded_rng(seed), torch.enable_grad():
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
        model.act(ctx, task, cfg.eval.act_steps or None)
        sync()
        times.append(1000 * (time.perf_counter() - t0))
    return {"latency.act_ms": sorted(times[5:])[len(times[5:]) // 2]}


# -----------------------------------------------------------------------------
# one run: reuse what is done, measure the rest, draw its pictures


def teacher_of(cfg):
    """The teacher a run used; for a run started from a pretrain (train.init_from), the pretrain's
    too, read from the config.yaml beside its checkpoint."""
    if not cfg.train.init_from:
        return cfg.align.teacher_used
    pre = Path(cfg.train.init_from).parent / "config.yaml"
    if not pre.is_file():
        print(f"WARNING: {pre} (the pretrain's config) is missing; its teacher is reported as '?'")
        return f"{cfg.align.teacher_used} (pretrain: ?)"
    pre_teacher = yaml.safe_load(pre.read_text())["align"]["teacher_used"]
    return f"{cfg.align.teacher_used} (pretrain: {pre_teacher})"


def same_config(old, new):
    """A saved config (meta.json's) equals new, keys added to the code since it was written counting
    as the default they had then: the run could not have used another value."""
    import train  # at call time: train.py imports EvalConfig from this file at its top
    default = asdict(train.Config())
    filled = {s: {**default[s], **old[s]} if isinstance(default.get(s), dict) and
              isinstance(old.get(s), dict) else old.get(s) for s in new}
    return filled == new


def evaluate(run, overrides=(), force=False):
    """Metrics of one run folder (flat keys), written with its pictures to RUN_DIR/eval/."""
    import train  # at call time: train.py imports EvalConfig from this file at its top
    t_start, run = time.perf_counter(), Path(run)
    cfg = train.load_config(run / "config.yaml", overrides)
    ec, out = cfg.eval, run / "eval"
    check_heldout_seed(cfg)  # now, not after the closed-loop suites have run
    device = ("cuda" if torch.cuda.is_available() else "cpu") if ec.device == "auto" else ec.device
    suites = list(cfg.suites) if ec.suites == ["all"] else ec.suites
    defs = {s: asdict(world.get_suite(cfg.suites, s)) for s in [*suites, *ec.curve_suites]}
    ckpt = train.load_checkpoint(run / "ckpt.pt", device)
    model = train.build_model(cfg).to(device).eval()
    model.load_state_dict(ckpt["ema" if ec.use_ema else "model"])
    # what every value depends on; suite lists only decide which keys exist
    conf = {**asdict(cfg), "suites": None, "eval": {**asdict(ec), "suites": None,
                                                    "curve_suites": None, "device": None}}
    m, meta = {}, {"step": ckpt["step"], "config": conf, "suites": defs, "times": {}}
    done = (out / "meta.json").exists() and (out / "metrics.json").exists()
    old = json.loads((out / "meta.json").read_text()) if done else None
    if old and not force and old["step"] == meta["step"] and same_config(old["config"], conf):
        stale = {s for s in defs if old["suites"].get(s, defs[s]) != defs[s]}  # redefined suites
        m = {k: v for k, v in json.loads((out / "metrics.json").read_text()).items()
             if not k.startswith("success") or re.split(r"[.@]", k)[1] not in stale}
        meta.update(suites={**old["suites"], **defs}, times=old["times"])
    if not (out / "examples.pt").exists():
        m.pop("time.attention", None)
    if "probe.read.localization_acc" not in m:  # saved before the head-input probe: probe again
        m = {k: v for k, v in m.items() if not k.startswith("probe.") and k != "time.probe"}
    snaps = {int(p.stem.split("_")[1]): p for p in run.glob("snapshots/ema_*.pt")}
    todo = [("success", s) for s in suites if f"success.{s}" not in m]
    todo += [("success_curve", f"{s}@{k}") for k in sorted(snaps) for s in ec.curve_suites
             if f"success_curve.{s}@{k}" not in m]
    todo += [(part, "") for part in PARTS if f"time.{part}" not in m]
    out.mkdir(exist_ok=True)
    held, snap_model = None, None
    for part, arg in (bar := tqdm(todo, desc=f"eval {run.name}", dynamic_ncols=True)):
        bar.set_postfix_str(f"{part} {arg}")
        t0, key = time.perf_counter(), f"{part}.{arg}" if arg else part
        if part == "success":
            m[key] = success_rate(model, cfg, arg, ec.episodes, device)
        elif part == "success_curve":
            suite, step = arg.split("@")
            snap_model = snap_model or train.build_model(cfg).to(device).eval()
            snap_model.load_state_dict(train.load_checkpoint(snaps[int(step)], device)["ema"])
            m[key] = success_rate(snap_model, cfg, suite, ec.curve_episodes, device)
        else:
            if held is None:
                held = heldout(cfg)
                meta["times"]["heldout"], t0 = time.perf_counter() - t0, time.perf_counter()
            m.update(PART_FNS[part](model, cfg, held, device, out))
        meta["times"][key] = time.perf_counter() - t0
    t = meta["times"]
    m.update({f"time.{p}": sum(v for k, v in t.items() if k in m and k.startswith(p + "."))
              for p in ["success", "success_curve"]})
    m.update({f"time.{p}": t[p] for p in [*PARTS, "heldout"] if p in t})
    m["time.total"] = sum(v for k, v in m.items() if k.startswith("time.") and k != "time.total")
    m = dict(sorted({**m, "teacher": teacher_of(cfg), "step": ckpt["step"]}.items()))
    (out / "metrics.json").write_text(json.dumps(m, indent=1))
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    plots.run_pictures(out, run, m, cfg, torch.load(out / "examples.pt", weights_only=True))
    print(f"{run}: {time.perf_counter() - t_start:.1f} s; " + ", ".join(
        f"{k} {m[k]:.3g}" for k in ["success.id", "attention.in_mask", "probe.localization_acc"]))
    return m


PART_FNS = {"attention": attention_part, "intervention": intervention_part, "probe": probe_part,
            "video": video_part, "latency": latency_part}


def main(argv=None):
    p = argparse.ArgumentParser(description="Evaluate run folders; compare them in a report.")
    p.add_argument("args", nargs="+", help="RUN_DIR ... and section.key=value overrides")
    p.add_argument("--out", help="report folder (default: <common parent of the runs>/report)")
    p.add_argument("--force", action="store_true", help="recompute, ignore existing metrics.json")
    p.add_argument("--baseline", default="baseline", help="arm the paired differences refer to")
    p.add_argument("--readme", help="also paste summary.md into this file, between the lines "
                   "'<!-- results:OUT -->' and '<!-- /results:OUT -->'")
    a = p.parse_intermixed_args(argv)
    runs = [Path(x) for x in a.args if "=" not in x]
    overrides = [x for x in a.args if "=" in x]
    for r in runs:
        if not (r / "config.yaml").is_file() or not ((r / "ckpt.pt").is_file()
                                                     or (r / "eval" / "metrics.json").is_file()):
            raise FileNotFoundError(f"{r} is not a run folder (needs config.yaml and ckpt.pt, or "
                                    "config.yaml and eval/metrics.json for a recorded run)")
    recorded = [r for r in runs if not (r / "ckpt.pt").is_file()]  # results/<preset>/runs/*
    if recorded and (overrides or a.force):
        raise ValueError(f"{recorded[0]} has no ckpt.pt, so it cannot be evaluated again with "
                         f"{overrides or '--force'}; its eval/metrics.json is read as it is")
    if recorded:
        print(f"eval: {len(recorded)} run(s) without ckpt.pt, metrics read as recorded: "
              + ", ".join(r.name for r in recorded))
    metrics = {r: json.loads((r / "eval" / "metrics.json").read_text()) if r in recorded
               else evaluate(r, overrides, a.force) for r in runs}
    if len(runs) > 1:
        common = Path(os.path.commonpath([r.resolve() for r in runs]))
        out = Path(a.out) if a.out else common / "report"
        plots.report(runs, metrics, out, a.baseline)
        if a.readme:  # README tables come from the metrics files, never typed by hand
            text, begin, end = Path(a.readme).read_text(), f"<!-- results:{out} -->", \
                f"<!-- /results:{out} -->"
            if begin not in text or end not in text:
                raise ValueError(f"{a.readme} has no '{begin}' ... '{end}' block to fill")
            head, rest = text.split(begin, 1)
            text = f"{head}{begin}\n{(out / 'summary.md').read_text()}{end}{rest.split(end, 1)[1]}"
            Path(a.readme).write_text(text)


if __name__ == "__main__":
    main(sys.argv[1:])
