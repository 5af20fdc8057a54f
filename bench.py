"""Speed figures: `python bench.py [env|attention|train|act|teacher|metaworld|all] [--json PATH]
[--config PATH] [--threads N] [--quick] [section.key=value ...]` (overrides as in train.py, e.g.
`python bench.py train --config configs/gpu.yaml train.batch_size=512 train.compile=True`).

Prints a table (figure, value, goal, device); --json writes the figures as flat keys. Timings are
medians over repetitions after warm-up. Every comparison (sdpa vs math, AGRA vs baseline, act
steps) is a ratio measured in the same run, the variants' repetitions interleaved so machine
noise hits them alike. On CUDA, train and act run under bf16 autocast as train.py does.
--quick only checks that the code runs: its numbers are not figures. `metaworld` (not in `all`)
measures Meta-World (mworld.py) and needs its preset: `python bench.py metaworld --config
configs/metaworld.yaml`.
"""
import argparse
import copy
import json
import platform
import re
import statistics
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from align import OracleTeacher, align_loss, build_vit, targets, use_bf16
from config import PALETTE, SHAPES, cli_config, get_suite, pick_device
from model import math_attention
from train import build_model
from world import expert, render, reset, step, task_ids

GOALS = {  # figure prefix -> (goal on the 2-core CPU, goal on one H100)
    "env.steps_per_s": (">= 20000", "report"), "attention.sdpa_over_math": (">= 1.3", ">= 2"),
    "train.mfu": ("report", ">= 0.45"), "train.agra_over_baseline": ("<= 1.05", "<= 1.05"),
    "act.ms_batch1": ("<= 60", "<= 10")}
PEAKS = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12}  # bf16 dense
STEPS = [1, 2, 4, 8]  # act() Euler steps compared: the latency lever of the action head
REPS, WARMUP, QUICK_REPS = {"env": 20, "attention": 10, "train": 10, "act": 50, "teacher": 5,
                           "metaworld": 3}, 3, 2


def device_name(device):
    if device == "cuda":
        return torch.cuda.get_device_name()
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.*)", info)
    model = model.group(1).strip() if model else platform.processor() or "unknown cpu model"
    n = torch.get_num_threads()
    return f"cpu ({n} thread{'s' * (n > 1)}, {model})"


def timeit(fns, device, reps, warmup):
    """Median seconds per call of each fn in {name: fn}; the variants take turns each repetition."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    times = {name: [] for name in fns}
    for i in range(warmup + reps):
        for name, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def fake_batch(cfg, B, T, device, n_frames):
    """A batch with data.Dataset.batch's keys and shapes, random contents (speed does not depend
    on them); frame_index points into a feature table of n_frames frames."""
    g = torch.Generator().manual_seed(0)
    H, K = cfg.env.res, 1 + cfg.env.max_distractors
    tasks = torch.tensor(task_ids(cfg.env))                                 # (4,)
    batch = {"video": torch.rand(B, T, 3, H, H, generator=g) * 2 - 1,      # (B, T, 3, H, W)
             "actions": torch.rand(B, cfg.data.horizon, 2, generator=g) * 2 - 1,  # (B, Ha, 2)
             "task": tasks[torch.randint(len(tasks), (B,), generator=g)],  # (B,)
             "masks": torch.randint(3 + K, (B, T, H, H), generator=g).byte(),  # (B, T, H, W)
             "color": torch.randint(len(PALETTE), (B, K), generator=g),    # (B, K)
             "shape": torch.randint(len(SHAPES), (B, K), generator=g),     # (B, K)
             "frame_index": torch.randint(n_frames, (B, T), generator=g)}  # (B, T)
    return {k: v.to(device) for k, v in batch.items()}


def flops_per_sample(cfg, model, B=2):
    """FLOPs of one training sample (both passes and the action head, forward and backward), as
    torch.utils.flop_counter counts them on a batch of B; attention through SDPA's math backend,
    whose matmuls the counter sees (the fused CPU kernel it does not)."""
    batch = fake_batch(cfg, B, cfg.data.n_ctx + cfg.data.n_future, "cpu", 1)
    model = copy.deepcopy(model).cpu()
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        losses, _ = model(batch)
        (losses["video"] + losses["action"]).backward()
    return counter.get_total_flops() / B


def peak_flops(device, reps, warmup):
    """(peak FLOP/s, how it was found): the card's bf16 dense spec, else a large matmul now."""
    name = device_name(device)
    for card, peak in PEAKS.items():
        if device == "cuda" and card in name:
            return peak, f"spec bf16 dense ({card})"
    n = 1024 if reps == QUICK_REPS else 4096
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))  # (n, n) each
    t = timeit({"mm": lambda: a @ b}, device, reps, warmup)["mm"]
    return 2 * n**3 / t, f"measured {dtype} matmul n={n}"


def bench_env(cfg, device, ctx, reps, warmup):
    env = replace(cfg.env, res=64)
    gen = torch.Generator(device=device).manual_seed(0)
    task = torch.tensor(task_ids(env), device=device).repeat(256)           # (1024,)
    state, app = reset(env, get_suite(cfg.suites, "id"), task, gen)

    def one_step():  # the expert acts, the world steps, the new state is drawn
        nonlocal state
        state = step(env, state, expert(env, state))
        render(env, state, app)

    t = timeit({"env": one_step}, device, reps, warmup)["env"]
    return {"env.steps_per_s": len(task) / t}


def bench_attention(cfg, device, ctx, reps, warmup):
    """sdpa vs math forward+backward at 128 tokens (cpu preset T*N) and 1024 (gpu preset T*N),
    the preset's width and heads, the preset's tokens per batch (B * T * N) at either length."""
    mc, out = cfg.model, {}
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    T, N = cfg.data.n_ctx + cfg.data.n_future, (cfg.env.res // mc.patch) ** 2
    tokens = cfg.train.batch_size * T * N
    impls = {"sdpa": F.scaled_dot_product_attention, "math": lambda *x: math_attention(*x)[0]}
    for L in [128, 1024]:
        shape = (max(1, tokens // L), mc.heads, L, mc.width // mc.heads)  # (B, heads, L, d)
        q, k, v = (torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
                   for _ in range(3))

        def fwd_bwd(impl, qkv=(q, k, v)):  # grads accumulate: the same cost every call
            impls[impl](*qkv).sum().backward()

        t = timeit({i: lambda i=i: fwd_bwd(i) for i in impls}, device, reps, warmup)
        out[f"attention.sdpa_over_math.{L}"] = t["math"] / t["sdpa"]
    return out


def bench_train(cfg, device, ctx, reps, warmup):
    """One step (both passes, backward, clip, AdamW) of the preset's model: baseline, AGRA with
    the oracle computed from the masks, AGRA with ViT features gathered from a cached table."""
    tc, ac, B = cfg.train, cfg.align, cfg.train.batch_size
    grid, T, n_frames = cfg.env.res // cfg.model.patch, cfg.data.n_ctx + cfg.data.n_future, 4096
    oracle = OracleTeacher(cfg.model.patch, len(PALETTE), len(SHAPES), ac.oracle_dim).to(device)
    vit_dim = build_vit(ac, grid, None).dim
    cache = torch.empty(n_frames, grid, grid, vit_dim, dtype=torch.float16).uniform_(-1, 1)
    batch = fake_batch(cfg, B, T, device, n_frames)  # the cache stays on the CPU, as in train.py
    variants = {"baseline": (None, None), "oracle": (oracle, ac.oracle_dim),
                "dinov2_cache": (cache, vit_dim)}
    steps = {}
    for name, (source, dim) in variants.items():
        model = build_model(cfg, dim).to(device).train()
        opt = model.configure_optimizer(tc.lr, tc.weight_decay)
        fwd = torch.compile(model) if tc.compile else model

        def train_step(model=model, fwd=fwd, source=source, opt=opt):
            with ctx:  # as train.py's loop, without the data loading and the EMA update
                losses, z = fwd(batch)
                loss = tc.video_weight * losses["video"] + tc.action_weight * losses["action"]
                if z is not None:
                    loss = loss + ac.weight * align_loss(z, targets(batch, source, ac.normalize))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
        steps[name] = train_step
    base = build_model(cfg)
    t = timeit(steps, device, reps, warmup)
    peak, how = peak_flops(device, reps, warmup)
    flops = flops_per_sample(cfg, base)
    print(f"train: {flops / 1e9:.3f} GFLOP per sample (flop counter), peak {peak / 1e12:.2f} "
          f"TFLOP/s ({how})")
    n_head = sum(p.numel() for p in base.action_head.parameters())
    n_all = sum(p.numel() for p in base.parameters())
    return {"train.params_video_M": (n_all - n_head) / 1e6, "train.params_head_M": n_head / 1e6,
            "train.samples_per_s": B / t["baseline"],
            "train.mfu": flops * B / t["baseline"] / peak, "train.peak_flops": peak,
            "train.gflop_per_sample": flops / 1e9,
            "train.agra_over_baseline.oracle": t["oracle"] / t["baseline"],
            "train.agra_over_baseline.dinov2_cache": t["dinov2_cache"] / t["baseline"]}


def bench_act(cfg, device, ctx, reps, warmup):
    """ms per act() at batch 1: the default Euler steps, and act_steps in STEPS."""
    model = build_model(cfg).to(device).eval()
    frames = torch.rand(1, cfg.data.n_ctx, 3, cfg.env.res, cfg.env.res, device=device) * 2 - 1
    task = torch.tensor(task_ids(cfg.env)[:1], device=device)               # (1,)

    def act(steps):
        with ctx:
            model.act(frames, task, steps)

    t = timeit({s: lambda s=s: act(s) for s in sorted({*STEPS, cfg.model.act_steps})},
               device, reps, warmup)
    return {"act.ms_batch1": 1e3 * t[cfg.model.act_steps],
            **{f"act.ms_steps{s}": 1e3 * t[s] for s in STEPS}}


def bench_teacher(cfg, device, ctx, reps, warmup):
    """Images per second of each teacher path, the ViT in the precision its forward uses (bf16
    autocast on CUDA and AVX-512 CPUs, else fp32: align.use_bf16):
    the ViT (dinov2 architecture, random init) at 14 px per token, the oracle from the masks,
    and the cache gather (CPU table -> device)."""
    grid, n, n_frames = cfg.env.res // cfg.model.patch, cfg.train.batch_size, 4096
    vit = build_vit(cfg.align, grid, None).to(device)
    oracle = OracleTeacher(cfg.model.patch, len(PALETTE), len(SHAPES), cfg.align.oracle_dim)
    oracle = oracle.to(device)
    cache = torch.empty(n_frames, grid, grid, vit.dim, dtype=torch.float16).uniform_(-1, 1)
    batch = fake_batch(cfg, n, 1, device, n_frames)  # n one-frame windows, as demo_batch gives
    t = timeit({"dinov2": lambda: vit(batch), "oracle": lambda: oracle(batch),
                "cache": lambda: targets(batch, cache, "none")}, device, reps, warmup)
    print(f"teacher: ViT input {vit.res} px from {cfg.env.res} px frames, batch {n}, "
          f"{'bf16 autocast' if use_bf16(torch.device(device).type) else 'fp32'}")
    return {f"teacher.images_per_s.{k}": n / v for k, v in t.items()}


def bench_metaworld(cfg, device, ctx, reps, warmup):
    """Meta-World on the CPU (a Python loop over envs, Mesa's software renderer), one env per
    task: steps/s with a 64 px frame and mask rendered every step, and without rendering;
    seconds per demonstration (the expert, a frame every metaworld.frame_every steps) and per
    evaluation-length episode (a frame every eval.replan steps, when a policy replans)."""
    import mworld  # here only: it loads metaworld and sets up headless rendering
    from config import MWSuite, is_metaworld

    mw = cfg.metaworld
    if not is_metaworld(cfg):
        raise SystemExit("bench.py metaworld: metaworld.suites is empty; expected "
                         "--config configs/metaworld.yaml")
    world, task = mworld.World(mw), torch.arange(len(mworld.TASKS))
    suite = get_suite(mw.suites, "id", MWSuite, "metaworld.suites")
    try:
        world.reset(suite, task, 0)  # makes the envs and renderers: not timed

        def steps(n, draw):  # n expert steps of every env
            for _ in range(n):
                world.step(world.expert())
                if draw:
                    world.render()

        def episode(every):  # a fresh layout, then max_steps expert steps
            world.reset(suite, task, 1)
            mworld.rollout(world, lambda t, f: world.expert(), mw.max_steps, every)

        n = 2 if reps == QUICK_REPS else 25
        t = timeit({"render": lambda: steps(n, True), "physics": lambda: steps(n, False)},
                   device, reps, min(warmup, 1))
        e = timeit({"demo": lambda: episode(mw.frame_every), "eval": lambda: episode(
            cfg.eval.replan)}, device, reps, min(warmup, 1))
    finally:
        world.close()
    print(f"metaworld: {len(task)} envs ({', '.join(mworld.TASKS)}), {mw.res} px, episodes of "
          f"{mw.max_steps} steps; a frame every {mw.frame_every} steps (demo), every "
          f"{cfg.eval.replan} (eval)")
    B = len(task)
    return {"metaworld.rendered_steps_per_s": n * B / t["render"],
            "metaworld.physics_steps_per_s": n * B / t["physics"],
            "metaworld.s_per_demo": e["demo"] / B, "metaworld.s_per_eval_episode": e["eval"] / B}


BENCHES = {"env": bench_env, "attention": bench_attention, "train": bench_train, "act": bench_act,
           "teacher": bench_teacher, "metaworld": bench_metaworld}
ALL = ["env", "attention", "train", "act", "teacher"]  # `all`: metaworld needs its own preset


def goal(key, device):
    hits = [g for prefix, g in GOALS.items() if key.startswith(prefix)]
    return hits[0][device == "cuda"] if hits else ""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("args", nargs="*", metavar="[GROUP] [section.key=value ...]",
                    help=f"GROUP: one of {', '.join([*BENCHES, 'all'])} (default all); overrides "
                    "of the preset as in train.py")
    ap.add_argument("--json", help="write the figures (flat keys) to this file")
    ap.add_argument("--config", default="config.yaml", help="preset whose model is measured")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--quick", action="store_true", help="2 repetitions: a smoke test, no figures")
    args = ap.parse_intermixed_args(argv)
    groups = [a for a in args.args if "=" not in a]
    overrides = [a for a in args.args if "=" in a]
    if len(groups) > 1 or (groups and groups[0] not in [*BENCHES, "all"]):
        raise SystemExit(f"bench.py: group {' '.join(groups)!r}; expected one of "
                         f"{', '.join([*BENCHES, 'all'])}")
    args.group = groups[0] if groups else "all"
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"error: --threads {args.threads}; expected >= 1")
        torch.set_num_threads(args.threads)
    cfg = cli_config([args.config, *overrides], "usage: python bench.py [GROUP] [key=value ...]")
    device = pick_device(cfg.train.device)
    ctx = nullcontext() if device == "cpu" else torch.autocast("cuda", dtype=torch.bfloat16)
    name = device_name(device)
    print(f"bench: {args.group} | config {' '.join([args.config, *overrides])} ({cfg.name}) | "
          f"{name} | torch "
          f"{torch.__version__} | threads {torch.get_num_threads()}"
          + (" | QUICK: smoke test, not figures" if args.quick else ""))
    results = {}
    for group in ALL if args.group == "all" else [args.group]:
        reps, warmup = (QUICK_REPS, 1) if args.quick else (REPS[group], WARMUP)
        results.update(BENCHES[group](cfg, device, ctx, reps, warmup))
    print(f"{'figure':40s} {'value':>12s}  {'goal':10s} device")
    for key, value in results.items():
        print(f"{key:40s} {value:12.4g}  {goal(key, device):10s} {name}")
    if args.json:
        meta = {"device": name, "threads": torch.get_num_threads(), "torch": torch.__version__,
                "config": args.config, "overrides": overrides, "quick": args.quick}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({**meta, **results}, indent=1) + "\n")
        print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
