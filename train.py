"""Training: `python train.py CONFIG [section.key=value ...]`.

Builds the demonstrations (and the action-free clips, with video.n_clips > 0), the world action
model and (when align.weight > 0) the AGRA teacher, then runs one plain loop. Writes
runs/<name>/: config.yaml, metrics.csv, ckpt.pt, snapshots/, samples/. Running the same command
again resumes from ckpt.pt and ends where an uninterrupted run would.
Multi-GPU: torchrun --nproc_per_node=N train.py CONFIG
"""

import copy
import csv
import functools
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import torch
import yaml
from PIL import Image, ImageDraw
from torchvision.utils import make_grid
from tqdm import tqdm

import world
from align import align_loss, build_teacher, targets, teacher_features
from config import SECTIONS, atomic_save, cli_config, pick_device, seeded_rng
from data import Dataset, make_data
from model import WAM


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


def load_checkpoint(path, device="cpu", mmap=False):
    try:  # mmap: tensors stay on disk until read (preflight reads the config alone)
        return torch.load(path, map_location=device, weights_only=True, mmap=mmap)
    except Exception as e:  # any unreadable file: say which and stop, never restart from zero
        raise RuntimeError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e}); "
                           "restore it, or move it away to train from scratch") from e


def build_model(cfg, align_dim=None):
    """The WAM of a Config, from seed train.seed: every arm of a seed starts from the same weights.
    align_dim: the teacher's feature dim, for AGRA's projector (None: the baseline, none)."""
    torch.manual_seed(cfg.train.seed)
    return WAM(cfg, align_dim)


def init_video(model, path, device):
    """Load the video model (everything but the action head) from a checkpoint's EMA weights."""
    ema = load_checkpoint(path, device)["ema"]
    video = {k: v for k, v in ema.items() if not k.startswith(("action_head.", "projector."))}
    try:
        missing, unexpected = model.load_state_dict(video, strict=False)
    except RuntimeError as e:  # shape mismatches: a different model size
        raise ValueError(f"train.init_from={path}: its video model does not fit this config's "
                         f"model section ({e})") from e
    missing = [k for k in missing if not k.startswith(("action_head.", "projector."))]
    if missing or unexpected:
        raise ValueError(f"train.init_from={path}: missing video weights {missing}, unexpected "
                         f"{unexpected}; was it trained with this config's model section?")


def save_samples(model, ds, path, step, n=4):
    """A GIF of n fixed windows: the true frames (top row) over the imagined futures (bottom)."""
    batch = ds.batch(torch.arange(0, len(ds), max(1, len(ds) // n))[:n])
    device = next(model.parameters()).device
    nc, names = ds.data.n_ctx, model.task_names
    ctx, task = batch["video"][:, :nc].to(device), batch["task"].to(device)
    with seeded_rng(0):  # sampling must not shift the training noise stream
        fake = model.imagine(ctx, task).cpu()                           # (n, Tf, 3, H, W)
    real = batch["video"]                                               # (n, T, 3, H, W)
    fake = torch.cat([real[:, :nc], fake], 1)                           # (n, T, 3, H, W)
    imgs, scale = [], max(1, 128 // ds.frames.shape[-1])
    for t in range(real.shape[1]):  # one GIF frame per window frame: 2 rows x n windows
        grid = make_grid(world.to_uint8(torch.cat([real[:, t], fake[:, t]])), nrow=n, padding=1)
        img = Image.fromarray(grid.permute(1, 2, 0).numpy())
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
        page = Image.new("RGB", (img.width, img.height + 28), "white")
        page.paste(img, (0, 28))
        what = "context" if t < nc else "future"
        ImageDraw.Draw(page).text((2, 2), f"top: true, bottom: imagined ({what} frame {t}); "
                                  f"step {step}; " + ", ".join(names[i] for i in task), fill="black")
        imgs.append(page)
    imgs[0].save(path, save_all=True, append_images=imgs[1:], duration=400, loop=0)


# -----------------------------------------------------------------------------


def preflight(cfg, world_size=1):
    """The checks that need more than the config (ranks, files, an existing run): before any work."""
    tc = cfg.train
    n_clip = round(cfg.video.ratio * tc.batch_size) if cfg.video.n_clips else 0
    for what, n in [("train.batch_size", tc.batch_size), ("its labelled windows",
                     tc.batch_size - n_clip), ("its clip windows", n_clip)]:
        if n % world_size:
            raise ValueError(f"{what}: {n} must divide by the {world_size} ranks")
    if tc.init_from and not Path(tc.init_from).is_file():
        raise FileNotFoundError(f"train.init_from = '{tc.init_from}' is not a file; expected a "
                                "run's ckpt.pt (for example runs/<pretrain>/ckpt.pt)")
    ckpt_path = Path(tc.out_dir) / cfg.name / "ckpt.pt"
    if ckpt_path.exists():
        want, had = asdict(cfg), load_checkpoint(ckpt_path, mmap=True)["config"]
        # a section added after the checkpoint was written (metaworld) had its defaults there
        had = {**{s: asdict(c()) for s, c in SECTIONS.items() if s not in had}, **had}
        diff = [f"{s}.{k}" for s in want if isinstance(want[s], dict) and s != "suites"
                for k in want[s] if want[s][k] != had.get(s, {}).get(k)]
        diff += [s for s in want if not isinstance(want[s], dict) or s == "suites"
                 if want[s] != had.get(s)]
        if diff:
            raise ValueError(f"{ckpt_path} was trained with a different config ({', '.join(diff)}); "
                             "use another name= or move the run away")


def train(cfg):
    tc, ac = cfg.train, cfg.align
    ddp = int(os.environ.get("RANK", "-1")) != -1  # is this a ddp run?
    if ddp:
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}" if torch.cuda.is_available() else "cpu"
        if device != "cpu":
            torch.cuda.set_device(device)
    else:
        rank, world_size, device = 0, 1, pick_device(tc.device)
    preflight(cfg, world_size)
    master = rank == 0
    ctx = nullcontext() if device == "cpu" else torch.autocast("cuda", dtype=torch.bfloat16)
    out = Path(tc.out_dir) / cfg.name
    ckpt_path = out / "ckpt.pt"

    torch.manual_seed(tc.seed)
    if ddp and not master:
        torch.distributed.barrier()  # rank 0 writes the demo and teacher caches, the others wait
    demos, clips = make_data(cfg)
    ds = Dataset(demos, cfg.data)
    clip_ds = clips and Dataset(clips, cfg.data, first_frame=demos["frames"].flatten(0, 1).shape[0])
    n_clip = round(cfg.video.ratio * tc.batch_size) if clips else 0  # windows a batch takes
    teacher = cache = None
    teacher_name = "none"
    if ac.weight > 0:
        with seeded_rng():  # the teacher never shifts the shared RNG stream
            teacher, teacher_name = build_teacher(cfg)
            cache = teacher_features(cfg, teacher, teacher_name, demos, clips) if ac.cache \
                else None
    source = cache if cache is not None else teacher  # where the alignment targets come from
    if ddp and master:
        torch.distributed.barrier()  # caches written: the other ranks read them now
    model = build_model(cfg, teacher.dim if teacher else None).to(device)
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
    opt = model.configure_optimizer(tc.lr, tc.weight_decay)
    params = [p for p in model.parameters() if p.requires_grad]
    if ddp:  # same initial weights everywhere, but each rank draws its own noise (t, eps)
        torch.manual_seed(tc.seed * 1000 + rank)

    start = 0
    if ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, device)  # its config: checked by preflight
        model.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["optimizer"])
        rng = ckpt["rng_ranks"][rank] if ddp else ckpt["rng"]
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and device.startswith("cuda"):
            torch.cuda.set_rng_state(rng["cuda"])
        start = ckpt["step"]
        if master:
            print(f"resuming {ckpt_path} at step {start}/{tc.steps}")
    fwd = torch.compile(model) if tc.compile else model
    if ddp:
        fwd = torch.nn.parallel.DistributedDataParallel(  # no action loss: the head is not run
            fwd, device_ids=None if device == "cpu" else [device],
            find_unused_parameters=tc.action_weight == 0)

    header = ["step", "loss", "video", "action", "align", "lr", "grad_norm", "samples_per_s"]
    if master:
        print(f"{cfg.name}: teacher {teacher_name}, {sum(p.numel() for p in params):,} trained "
              f"parameters, {len(ds):,} labelled windows"
              + (f" and {len(clip_ds):,} action-free ({n_clip} of each batch)" if clips else "")
              + f", device {device}")
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
            ranks = [None] * world_size
            torch.distributed.all_gather_object(ranks, rng)
        if master:
            atomic_save({"model": model.state_dict(), "ema": ema.state_dict(),
                         "optimizer": opt.state_dict(), "config": asdict(cfg), "step": step,
                         "teacher": teacher_name, "rng": rng,
                         **({"rng_ranks": ranks} if ddp else {})}, ckpt_path)

    model.train()
    bar = tqdm(range(start, tc.steps), initial=start, total=tc.steps, disable=not master,
               desc=cfg.name, dynamic_ncols=True)
    t0 = time.perf_counter()
    for step in bar:
        lr = get_lr(step, tc)
        for g in opt.param_groups:
            g["lr"] = lr
        idx = batch_indices(step, tc.batch_size - n_clip, len(ds), tc.seed)[rank::world_size]
        batch = ds.batch(idx)  # the labelled windows first, then the action-free ones
        if n_clip:
            clip = clip_ds.batch(batch_indices(step, n_clip, len(clip_ds), tc.seed + 1)
                                 [rank::world_size])
            batch = {k: torch.cat([batch[k], clip[k]]) for k in batch}
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        n_labelled = len(idx) if tc.action_weight > 0 else 0  # 0: the action head does not run
        with ctx:
            losses, z = fwd(batch, n_labelled)  # z: AGRA's projected tap (B, T*N, Dt), or None
            loss = tc.video_weight * losses["video"] + tc.action_weight * losses["action"]
            if z is not None:  # AGRA: minus the cosine to the teacher's patch features, weighted
                y = targets(batch, source, ac.normalize)  # (B, T*N, Dt), normalized per frame
                rows = {"all": slice(None), "demos": slice(len(idx)),
                        "clips": slice(len(idx), None)}[ac.windows]  # the demos' windows first
                losses["align"] = align_loss(z[rows], y[rows])
                loss = loss + ac.weight * losses["align"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"step {step}: the loss is {loss.item()} ("
                                     + ", ".join(f"{k} {v.item():.4g}" for k, v in losses.items())
                                     + f"); stopped. The last good checkpoint {ckpt_path} is intact.")
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
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
            atomic_save({"ema": ema.state_dict(), "step": done}, out / "snapshots" / f"ema_{done}.pt")
        if done % tc.ckpt_every == 0 or done == tc.steps:
            checkpoint(done)
    if master:
        ema.eval()
        save_samples(ema, ds, out / "samples" / f"imagine_{tc.steps}.gif", tc.steps)
        print(f"done: {out} ({time.perf_counter() - t0:.0f} s for steps {start}..{tc.steps})")
    if ddp:
        torch.distributed.destroy_process_group()
    return out


def main(argv):
    cfg = cli_config(argv, "usage: python train.py CONFIG [section.key=value ...]")
    try:  # a bad path, rank count or an existing run of another config: one line, no traceback
        preflight(cfg, int(os.environ.get("WORLD_SIZE", "1")))
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        raise SystemExit(f"error: {e}") from None
    train(cfg)


if __name__ == "__main__":
    main(sys.argv[1:])
