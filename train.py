"""Training: `python train.py CONFIG [section.key=value ...]`.

Loads a YAML config (with `base:` inheritance and dotted overrides), builds the demonstrations, the
world action model and (when align.weight > 0) the AGRA teacher and projector, then runs one plain
loop. Writes runs/<name>/: config.yaml, metrics.csv, ckpt.pt, snapshots/, samples/.
Running the same command again resumes from ckpt.pt and ends where an uninterrupted run would.
Multi-GPU: torchrun --nproc_per_node=N train.py CONFIG
"""

import ast
import copy
import csv
import difflib
import functools
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm import tqdm

from align import (
    AlignConfig,
    agra_loss,
    build_projector,
    build_teacher,
    seeded_rng,
    teacher_batch,
    teacher_features,
)
from data import DataConfig, Dataset, make_demos
from eval import EvalConfig
from model import WAM, ModelConfig
from world import EnvConfig, get_suite, task_names


@dataclass
class TrainConfig:
    steps: int = 1500              # optimizer steps
    batch_size: int = 64           # global batch (split across ranks under DDP)
    lr: float = 3e-4               # peak learning rate
    min_lr: float = 3e-5           # cosine floor
    warmup: int = 100              # linear warmup steps
    weight_decay: float = 0.01     # on matrices only (dim >= 2), nanoGPT's rule
    grad_clip: float = 1.0         # max global grad norm; 0 = off
    ema: float = 0.995             # EMA decay of the weights used by eval and sampling
    video_weight: float = 1.0      # weight of the video flow-matching loss
    action_weight: float = 1.0     # weight of the action flow-matching loss
    init_from: str = ""            # a ckpt.pt whose EMA video model (not its action head) starts us
    freeze: str = "none"           # none | video: train the action head alone on a fixed video model
    seed: int = 0                  # one seed: model init, data order, noise
    device: str = "auto"           # auto | cpu | cuda
    compile: bool = False          # torch.compile the model
    log_every: int = 25            # steps between metrics.csv rows
    ckpt_every: int = 250          # steps between checkpoints
    sample_every: int = 0          # steps between imagined-future GIFs; 0 = only at the end
    snapshots: list = field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0])  # EMA kept at fractions
    out_dir: str = "runs"

    def __post_init__(self):
        for key in ["steps", "batch_size", "log_every", "ckpt_every"]:
            if getattr(self, key) < 1:
                raise ValueError(f"train.{key}={getattr(self, key)}; expected >= 1")
        for key, ok, want in [("lr", self.lr > 0, "> 0"), ("min_lr", self.min_lr >= 0, ">= 0"),
                              ("warmup", self.warmup >= 0, ">= 0"),
                              ("grad_clip", self.grad_clip >= 0, ">= 0 (0 = off)"),
                              ("ema", 0 <= self.ema < 1, "in [0, 1)")]:
            if not ok:
                raise ValueError(f"train.{key}={getattr(self, key)}; expected {want}")
        for f in self.snapshots:  # fractions of train.steps
            if not (isinstance(f, (int, float)) and 0 < f <= 1):
                raise ValueError(f"train.snapshots={self.snapshots} has {f!r}; expected fractions "
                                 "of train.steps in (0, 1]")


@dataclass
class Config:
    name: str = "default"
    env: EnvConfig = field(default_factory=EnvConfig)
    data: DataConfig = field(default_factory=DataConfig)
    suites: dict = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


SECTIONS = {"env": EnvConfig, "data": DataConfig, "model": ModelConfig, "align": AlignConfig,
            "train": TrainConfig, "eval": EvalConfig}

# -----------------------------------------------------------------------------
# config: YAML + base + overrides -> dataclasses, every key and type checked


def read_yaml(path, seen=()):
    """Read a config file, resolving `base:` (relative to the file) recursively."""
    path = Path(path).resolve()
    if path in seen:
        raise ValueError(f"config base cycle: {' -> '.join(str(p) for p in (*seen, path))}")
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise TypeError(f"config {path} must be a mapping of sections, got {type(raw).__name__}")
    base = raw.pop("base", None)
    if base is None:
        return raw
    return merge(read_yaml(path.parent / base, (*seen, path)), raw)


def merge(a, b):
    """b over a, recursively for mappings."""
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def check_value(key, value, typ):
    """Return value as type typ, or raise naming the key, the value and the expected type."""
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, typ) and not (typ is int and isinstance(value, bool)):
        return value
    raise TypeError(f"config key '{key}' = {value!r} ({type(value).__name__}); "
                    f"expected {typ.__name__}")


def build_section(name, cls, section):
    if not isinstance(section, dict):
        raise TypeError(f"config section '{name}' must be a mapping, got {section!r}")
    valid = {f.name: f.type for f in fields(cls)}
    for key in section:
        if key not in valid:
            near = difflib.get_close_matches(key, valid, n=1)
            hint = f"did you mean '{name}.{near[0]}'?" if near else f"valid keys: {sorted(valid)}"
            raise KeyError(f"unknown config key '{name}.{key}'; {hint}")
    return cls(**{k: check_value(f"{name}.{k}", v, valid[k]) for k, v in section.items()})


def parse_override(arg):
    """'a.b.c=value' -> (['a', 'b', 'c'], value): a Python literal, else the raw string."""
    if "=" not in arg:
        raise ValueError(f"override {arg!r} must look like section.key=value")
    key, text = arg.split("=", 1)
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text  # a bare word: only a str field accepts it (checked by build_section)
    return key.split("."), value


def load_config(path, overrides=()):
    raw = read_yaml(path)
    for arg in overrides:
        keys, value = parse_override(arg)
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise KeyError(f"override {arg!r}: '{k}' is not a section")
        node[keys[-1]] = value
    valid_top = ["name", "suites", *SECTIONS]
    for key in raw:
        if key not in valid_top:
            near = difflib.get_close_matches(key, valid_top, n=1)
            raise KeyError(f"unknown config section '{key}'; "
                           + (f"did you mean '{near[0]}'?" if near else f"valid: {valid_top}"))
    cfg = Config(name=check_value("name", raw.get("name", "default"), str),
                 suites=check_value("suites", raw.get("suites", {}), dict),
                 **{s: build_section(s, cls, raw.get(s, {})) for s, cls in SECTIONS.items()})
    for suite in cfg.suites:
        get_suite(cfg.suites, suite)  # validates every suite's keys and values now, not mid-eval
    return cfg


def config_from_dict(d):
    """Rebuild a Config from asdict() output (a checkpoint's or a run's config.yaml)."""
    return Config(name=d["name"], suites=d["suites"],
                  **{s: build_section(s, cls, d[s]) for s, cls in SECTIONS.items()})


# -----------------------------------------------------------------------------
# pieces of the loop


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def get_lr(step, tc):
    """Linear warmup, then cosine from lr to min_lr over the remaining steps:
    step < warmup:  lr * (step + 1) / warmup
    otherwise:      min_lr + (lr - min_lr) * (1 + cos(pi * frac)) / 2,
                    frac = (step - warmup) / max(1, steps - warmup)
    Steps warmup - 1 and warmup both give lr, step `steps` gives min_lr; the last step trained,
    steps - 1, stays just above min_lr."""
    if step < tc.warmup:
        return tc.lr * (step + 1) / tc.warmup
    frac = (step - tc.warmup) / max(1, tc.steps - tc.warmup)
    return tc.min_lr + 0.5 * (1 + math.cos(math.pi * frac)) * (tc.lr - tc.min_lr)


@functools.lru_cache(maxsize=2)
def epoch_perm(n, seed, epoch):
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def batch_indices(step, batch_size, n, seed):
    """Dataset indices of a step's batch: a function of the step alone, so resume is exact."""
    start = step * batch_size
    first, last = start // n, (start + batch_size - 1) // n
    perm = torch.cat([epoch_perm(n, seed, e) for e in range(first, last + 1)])  # (n * epochs,)
    off = start - first * n
    return perm[off:off + batch_size]                                           # (B,)


def save_checkpoint(ckpt, path):
    tmp = f"{path}.tmp"
    torch.save(ckpt, tmp)
    os.replace(tmp, path)  # atomic: a crash mid-save never leaves a truncated checkpoint


def load_checkpoint(path, device="cpu"):
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # any unreadable file: say which and stop, never restart from zero
        raise RuntimeError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e}); "
                           "restore it, or move it away to train from scratch") from e


def build_model(cfg):
    return WAM(cfg.model, cfg.env.res, cfg.data.n_ctx, cfg.data.n_future, cfg.data.horizon,
               len(task_names(cfg.env)), action_dim=2, align_layer=cfg.align.layer)


def init_video(model, path, device):
    """Load the video model (everything but the action head) from a checkpoint's EMA weights."""
    ema = load_checkpoint(path, device)["ema"]
    video = {k: v for k, v in ema.items() if not k.startswith("action_head.")}
    try:
        missing, unexpected = model.load_state_dict(video, strict=False)
    except RuntimeError as e:  # shape mismatches: a different model size
        raise ValueError(f"train.init_from={path}: its video model does not fit this config's "
                         f"model section ({e})") from e
    missing = [k for k in missing if not k.startswith("action_head.")]
    if missing or unexpected:
        raise ValueError(f"train.init_from={path}: missing video weights {missing}, unexpected "
                         f"{unexpected}; was it trained with this config's model section?")


def save_samples(model, ds, path, n=4):
    """A GIF of imagined futures (bottom) under the true ones (top) for n fixed windows."""
    from PIL import Image
    batch = ds.batch(torch.arange(0, len(ds), max(1, len(ds) // n))[:n])
    device = next(model.parameters()).device
    nc = ds.data.n_ctx
    ctx, task = batch["video"][:, :nc].to(device), batch["task"].to(device)
    with seeded_rng(0):  # sampling must not shift the training noise stream
        fake = model.imagine(ctx, task).cpu()                           # (n, Tf, 3, H, W)
    real = batch["video"]                                               # (n, T, 3, H, W)
    fake = torch.cat([real[:, :nc], fake], 1)                           # (n, T, 3, H, W)
    grid = torch.cat([torch.cat(list(real), -1), torch.cat(list(fake), -1)], -2)  # (T, 3, 2H, nW)
    frames = ((grid + 1) * 127.5).clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    imgs = [Image.fromarray(f).resize((f.shape[1] * 4, f.shape[0] * 4), Image.NEAREST)
            for f in frames]
    imgs[0].save(path, save_all=True, append_images=imgs[1:], duration=400, loop=0)


# -----------------------------------------------------------------------------


def train(cfg):
    tc, ac = cfg.train, cfg.align
    ddp = int(os.environ.get("RANK", "-1")) != -1  # is this a ddp run?
    if ddp:
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}" if torch.cuda.is_available() else "cpu"
        if device != "cpu":
            torch.cuda.set_device(device)
    else:
        rank, world = 0, 1
        device = ("cuda" if torch.cuda.is_available() else "cpu") if tc.device == "auto" else tc.device
    if tc.batch_size % world:
        raise ValueError(f"train.batch_size={tc.batch_size} must divide by the {world} ranks")
    if tc.freeze not in ("none", "video"):
        raise ValueError(f"train.freeze='{tc.freeze}'; expected 'none' or 'video'")
    if tc.freeze == "video" and ac.weight > 0:
        raise ValueError(f"train.freeze='video' with align.weight={ac.weight}: the aligned video "
                         "model cannot move, only the projector would train; set align.weight=0")
    if tc.init_from and not Path(tc.init_from).is_file():
        raise FileNotFoundError(f"train.init_from='{tc.init_from}' is not a file; expected a "
                                "run's ckpt.pt (for example runs/<pretrain>/ckpt.pt)")
    master = rank == 0
    ctx = nullcontext() if device == "cpu" else torch.autocast("cuda", dtype=torch.bfloat16)
    out = Path(tc.out_dir) / cfg.name
    ckpt_path = out / "ckpt.pt"

    seed_everything(tc.seed)
    if ddp and not master:
        torch.distributed.barrier()  # rank 0 writes the demo and teacher caches, the others wait
    demos = make_demos(cfg)
    ds = Dataset(demos, cfg.data)
    teacher = cache = None
    if ac.weight > 0:
        with seeded_rng():  # the teacher never shifts the shared RNG stream
            teacher, cfg.align.teacher_used = build_teacher(cfg)
            cache = teacher_features(cfg, teacher, ac.teacher_used, demos) if ac.cache else None
    else:
        cfg.align.teacher_used = "none"
    if ddp and master:
        torch.distributed.barrier()  # caches written: the other ranks read them now
    torch.manual_seed(tc.seed)  # same initial weights for every arm of a seed
    model = build_model(cfg).to(device)
    if tc.init_from and not ckpt_path.exists():  # on resume the checkpoint has every weight
        init_video(model, tc.init_from, device)
        if master:
            print(f"video model from the EMA weights of {tc.init_from}; action head fresh")
    if tc.freeze == "video":
        model.requires_grad_(False).action_head.requires_grad_(True)
        if master:
            where = f"from {tc.init_from}" if tc.init_from else "at its random init, no init_from"
            print(f"video model frozen ({where}); training the action head only")
    ema = copy.deepcopy(model).requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    projector = None
    if ac.weight > 0:
        with seeded_rng(tc.seed + 1):  # the baseline, without a projector, draws the same noise
            projector = build_projector(cfg.model.width, ac.proj_hidden, teacher.dim).to(device)
        params += list(projector.parameters())
    if ddp:  # same initial weights everywhere, but each rank draws its own noise (t, eps)
        torch.manual_seed(tc.seed * 1000 + rank)
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=tc.lr, betas=(0.9, 0.95))

    start = 0
    if ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, device)
        want, had = asdict(cfg), asdict(config_from_dict(ckpt["config"]))  # keys added since: default
        diff = [f"{s}.{k}" for s in want if isinstance(want[s], dict)
                for k in set(want[s]) | set(had[s]) if want[s].get(k) != had[s].get(k)]
        diff += [s for s in want if not isinstance(want[s], dict) and want[s] != had[s]]
        if diff:
            raise ValueError(f"{ckpt_path} was trained with a different config ({', '.join(diff)}); "
                             "use another name= or move the run away")
        model.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        if projector is not None:
            projector.load_state_dict(ckpt["projector"])
        opt.load_state_dict(ckpt["optimizer"])
        rng = ckpt["rng_ranks"][rank] if ddp else ckpt["rng"]
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and device.startswith("cuda"):
            torch.cuda.set_rng_state(rng["cuda"])
        start = ckpt["step"]
        if master:
            print(f"resuming {ckpt_path} at step {start}/{tc.steps}")
    fwd = torch.compile(model) if tc.compile else model
    proj = projector
    if ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        fwd = DDP(fwd, device_ids=None if device == "cpu" else [device])
        proj = DDP(projector, device_ids=None if device == "cpu" else [device]) if projector else None

    header = ["step", "loss", "video", "action", "align", "lr", "grad_norm", "samples_per_s"]
    if master:
        (out / "snapshots").mkdir(parents=True, exist_ok=True)
        (out / "samples").mkdir(exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(asdict(cfg), sort_keys=False))
        rows = []
        if start and (out / "metrics.csv").exists():  # drop rows logged after the checkpoint
            with open(out / "metrics.csv") as f:
                rows = [r for r in csv.reader(f)][1:]
            rows = [r for r in rows if int(r[0]) <= start]
        with open(out / "metrics.csv", "w", newline="") as f:
            csv.writer(f).writerows([header, *rows])
    snap_steps = {max(1, round(f * tc.steps)) for f in tc.snapshots}

    def checkpoint(step):  # every rank calls it: a ddp run keeps each rank's RNG state
        rng = {"torch": torch.get_rng_state()}
        if device.startswith("cuda"):
            rng["cuda"] = torch.cuda.get_rng_state()
        ranks = [rng]
        if ddp:
            ranks = [None] * world
            torch.distributed.all_gather_object(ranks, rng)
        if master:
            save_checkpoint({"model": model.state_dict(), "ema": ema.state_dict(),
                             "projector": projector.state_dict() if projector else {},
                             "optimizer": opt.state_dict(), "config": asdict(cfg), "step": step,
                             "rng": rng, **({"rng_ranks": ranks} if ddp else {})}, ckpt_path)

    model.train()
    bar = tqdm(range(start, tc.steps), initial=start, total=tc.steps, disable=not master,
               desc=cfg.name, dynamic_ncols=True)
    t0 = time.perf_counter()
    for step in bar:
        lr = get_lr(step, tc)
        for g in opt.param_groups:
            g["lr"] = lr
        idx = batch_indices(step, tc.batch_size, len(ds), tc.seed)[rank::world]  # (B / world,)
        batch = {k: v.to(device, non_blocking=True) for k, v in ds.batch(idx).items()}
        with ctx:
            losses, h = fwd(batch, ac.layer if ac.weight > 0 else 0, ac.apply_to)
            loss = tc.video_weight * losses["video"] + tc.action_weight * losses["action"]
            if ac.weight > 0:
                y = teacher_batch(batch, cache if cache is not None else teacher)  # (B,T,h,w,Dt)
                losses["align"] = agra_loss(proj, h.float(), y, ac, cfg.data.n_ctx)
                loss = loss + ac.weight * losses["align"]
        for name, v in {**losses, "loss": loss}.items():
            if not torch.isfinite(v):
                raise FloatingPointError(f"step {step}: loss '{name}' is {v.item()}; stopped. "
                                         f"The last good checkpoint {ckpt_path} is intact.")
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(params, tc.grad_clip if tc.grad_clip > 0 else 1e9)
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for e, p in zip(ema.parameters(), model.parameters()):
                e.lerp_(p, 1 - tc.ema)
        done = step + 1
        if master and (done % tc.log_every == 0 or done == tc.steps):
            sps = (done - start) * tc.batch_size / (time.perf_counter() - t0)
            vals = {k: v.item() for k, v in {"loss": loss, **losses}.items()}
            with open(out / "metrics.csv", "a", newline="") as f:
                csv.writer(f).writerow([done, *(f"{vals.get(k, 0.0):.5f}" for k in header[1:5]),
                                        f"{lr:.3e}", f"{gn.item():.4f}", f"{sps:.1f}"])
            bar.set_postfix({k: f"{v:.3f}" for k, v in vals.items()} | {"smp/s": f"{sps:.0f}"})
        if master and done in snap_steps:
            torch.save({"ema": ema.state_dict(), "step": done}, out / "snapshots" / f"ema_{done}.pt")
        if master and tc.sample_every and done % tc.sample_every == 0:
            save_samples(ema, ds, out / "samples" / f"imagine_{done}.gif")
        if done % tc.ckpt_every == 0 or done == tc.steps:
            checkpoint(done)
    if master:
        ema.eval()
        save_samples(ema, ds, out / "samples" / f"imagine_{tc.steps}.gif")
        print(f"done: {out} ({time.perf_counter() - t0:.0f} s for steps {start}..{tc.steps})")
    if ddp:
        torch.distributed.destroy_process_group()
    return out


def main(argv):
    if not argv or argv[0].startswith("-"):
        raise SystemExit("usage: python train.py CONFIG [section.key=value ...]")
    train(load_config(argv[0], argv[1:]))


if __name__ == "__main__":
    main(sys.argv[1:])
