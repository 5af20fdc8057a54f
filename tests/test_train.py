"""train.py: config loading, the loop, checkpoints and exact resume (CPU, tiny preset)."""

import csv
import itertools
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

import align
import bench
import train
from config import PALETTE, SHAPES, TrainConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"


def run_args(tmp, name, *extra):
    return [f"name={name}", f"train.out_dir={tmp}/runs", f"data.cache_dir={tmp}/cache", *extra]


def cli(tmp, name, *extra):
    cmd = [sys.executable, str(ROOT / "train.py"), str(TINY), *run_args(tmp, name, *extra)]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def rows(run):
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_tiny_preset_trains_from_the_command_line(tmp_path):
    """The tiny preset runs end to end from the CLI, writes its outputs, and its losses fall."""
    p = cli(tmp_path, "t")
    out = p.communicate(timeout=300)[0].decode()
    assert p.returncode == 0, out[-2000:]
    run = tmp_path / "runs" / "t"
    for f in ["config.yaml", "metrics.csv", "ckpt.pt"]:
        assert (run / f).exists(), f"{f} missing from {run}"
    assert list((run / "snapshots").glob("ema_*.pt")), "no EMA snapshots kept"
    assert list((run / "samples").glob("*.gif")), "no imagined-future GIF written"
    r = rows(run)
    for key in ["video", "action"]:
        first = sum(float(x[key]) for x in r[:3]) / 3  # batch-16 losses are noisy: mean of 3 rows
        last = min(float(x[key]) for x in r[-3:])
        assert last < 0.8 * first, f"{key} loss did not fall: {first:.4f} -> {last:.4f}"


def test_resume_after_sigkill_is_bit_identical(tmp_path):
    """A run killed (SIGKILL) after its first checkpoint and started again ends bit-identical."""
    ref = cli(tmp_path, "ref")
    assert ref.wait(timeout=300) == 0, ref.stdout.read().decode()[-2000:]
    p = cli(tmp_path, "cut")
    ckpt = tmp_path / "runs" / "cut" / "ckpt.pt"
    while not ckpt.exists() and p.poll() is None:
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    killed_at = torch.load(ckpt, weights_only=True)["step"]
    total = load_config(TINY).train.steps
    assert killed_at < total, f"the run finished ({killed_at}/{total}) before it could be killed"
    again = cli(tmp_path, "cut")
    out = again.communicate(timeout=300)[0].decode()
    assert again.returncode == 0, out[-2000:]
    assert f"resuming {ckpt} at step {killed_at}" in out, out[-2000:]
    a = torch.load(tmp_path / "runs" / "ref" / "ckpt.pt", weights_only=True)
    b = torch.load(ckpt, weights_only=True)
    for part in ["model", "ema"]:
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs after resume"
    steps = [int(r["step"]) for r in rows(ckpt.parent)]
    assert steps == sorted(set(steps)), f"metrics.csv has repeated or unordered steps: {steps}"


def test_corrupted_checkpoint_raises_clearly(tmp_path):
    """A truncated checkpoint stops the run with an error naming the file, never a fresh start."""
    cfg = load_config(TINY, run_args(tmp_path, "bad"))
    run = Path(cfg.train.out_dir) / "bad"
    run.mkdir(parents=True)
    (run / "ckpt.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(RuntimeError, match="ckpt.pt is unreadable"):
        train.train(cfg)
    assert (run / "ckpt.pt").read_bytes() == b"PK\x03\x04 truncated", "the bad file was touched"


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    """A non-finite loss stops the run, names the step and the loss, and leaves the last good
    checkpoint as it was: the step before, every weight finite (nothing of the bad step saved)."""
    cfg = load_config(TINY, run_args(tmp_path, "nan", "train.steps=6", "train.ckpt_every=1"))
    real, calls = train.WAM.forward, []

    def poisoned(self, *a, **k):  # the third training forward (step 2) turns the video loss NaN
        losses, z = real(self, *a, **k)
        calls.append(1)
        return ({**losses, "video": losses["video"] * float("nan")} if len(calls) > 2 else losses), z
    monkeypatch.setattr(train.WAM, "forward", poisoned)
    with pytest.raises(FloatingPointError, match=r"step 2: the loss is nan \(video nan"):
        train.train(cfg)
    ck = train.load_checkpoint(Path(cfg.train.out_dir) / "nan" / "ckpt.pt", "cpu")
    assert ck["step"] == 2, f"checkpoint of step {ck['step']}; expected the last good one, 2"
    for part in ("model", "ema"):
        bad = [k for k, v in ck[part].items() if v.is_floating_point() and not v.isfinite().all()]
        assert not bad, f"non-finite {part} weights in the kept checkpoint: {bad[:3]}"


@pytest.mark.parametrize("preset", ["config.yaml", "configs/tiny.yaml", "configs/quick.yaml",
                                    "configs/regime.yaml", "configs/cpu.yaml", "configs/gpu.yaml"])
def test_every_preset_builds_and_takes_a_step(preset):
    """Every preset's model with the AGRA projector takes one training step (both passes, the
    oracle-teacher loss, backward) on two windows of the preset's shapes: finite losses, a
    gradient on every parameter of the aligned video block, the projector and the action head."""
    cfg = load_config(ROOT / preset)
    ac, T = cfg.align, cfg.data.n_ctx + cfg.data.n_future
    model = train.build_model(cfg, ac.oracle_dim)
    oracle = align.OracleTeacher(cfg.model.patch, len(PALETTE), len(SHAPES), ac.oracle_dim)
    batch = bench.fake_batch(cfg, 2, T, "cpu", 8)
    losses, z = model(batch)
    losses["align"] = align.align_loss(z, align.targets(batch, oracle, ac.normalize))
    assert all(torch.isfinite(v) for v in losses.values()), {k: v.item() for k, v in losses.items()}
    sum(losses.values()).backward()
    for name, part in [(f"blocks[{ac.layer - 1}]", model.blocks[ac.layer - 1]),
                       ("projector", model.projector), ("action_head", model.action_head)]:
        grads = [q.grad for q in part.parameters() if q.requires_grad]
        assert grads and all(g is not None for g in grads), f"{preset}: no gradient on {name}"


def test_bad_train_values_raise():
    """Each out-of-range train value fails at load time (after the overrides), naming the key,
    the value and the expected range; the edge values that are valid load."""
    cases = [("steps=0", "train.steps = 0; expected >= 1"),
             ("batch_size=0", "train.batch_size = 0; expected >= 1"),
             ("log_every=-5", "train.log_every = -5; expected >= 1"),
             ("ckpt_every=0", "train.ckpt_every = 0; expected >= 1"),
             ("ema=-0.1", "train.ema = -0.1; expected in [0, 1)"),
             ("snapshots=[0.5, 0.0]", "train.snapshots = [0.5, 0.0] has 0.0; expected fractions"),
             ("snapshots=[1.5]", "train.snapshots = [1.5] has 1.5; expected fractions"),
             ("snapshots=[250]", "train.snapshots = [250] has 250; expected fractions"),
             ("lr=0.0", "train.lr = 0.0; expected > 0"),
             ("min_lr=-1e-05", "train.min_lr = -1e-05; expected >= 0"),
             ("warmup=-1", "train.warmup = -1; expected >= 0"),
             ("grad_clip=0.0", "train.grad_clip = 0.0; expected > 0"),
             ("freeze='all'", "train.freeze = 'all'; expected one of ['none', 'video']")]
    for override, needle in cases:
        with pytest.raises(ValueError, match=re.escape(needle)):
            load_config(TINY, [f"train.{override}"])
    tc = load_config(TINY, ["train.ema=0.0", "train.warmup=0", "train.min_lr=0.0",
                            "train.snapshots=[1.0]", "train.steps=1"]).train
    assert (tc.ema, tc.warmup, tc.snapshots) == (0.0, 0, [1.0]), tc


def test_lr_schedule_follows_its_formula():
    """get_lr is lr * (step + 1) / warmup during warmup, reaches lr at its end, then falls
    monotonically along the cosine to min_lr at step `steps` (values worked out by hand)."""
    tc = TrainConfig(steps=16, warmup=4, lr=1.0, min_lr=0.1)
    want = {0: 0.25, 1: 0.5, 3: 1.0,    # warmup: (step + 1) / 4
            4: 1.0,                     # frac 0: cos 0 = 1
            8: 0.1 + 0.9 * 0.75,        # frac 1/3: (1 + cos(pi/3)) / 2 = 0.75
            10: 0.1 + 0.9 * 0.5,        # frac 1/2: (1 + cos(pi/2)) / 2 = 0.5
            12: 0.1 + 0.9 * 0.25,       # frac 2/3: (1 + cos(2pi/3)) / 2 = 0.25
            16: 0.1}                    # frac 1: cos pi = -1
    for step, lr in want.items():
        assert train.get_lr(step, tc) == pytest.approx(lr, abs=1e-12), f"step {step}"
    after = [train.get_lr(s, tc) for s in range(4, 17)]
    assert all(a > b for a, b in itertools.pairwise(after)), f"not decreasing: {after}"
    assert 0.1 < train.get_lr(15, tc) < 0.12, "the last step trained is not just above min_lr"


def test_ema_is_the_documented_average_after_one_step(tmp_path):
    """After one optimizer step the checkpoint's EMA weights are ema * initial + (1 - ema) *
    trained, for every parameter (the EMA starts as a copy of the initial model)."""
    cfg = load_config(TINY, run_args(tmp_path, "ema", "train.steps=1", "train.ema=0.75",
                                           "align.weight=0.0"))
    train.train(cfg)
    ckpt = torch.load(tmp_path / "runs" / "ema" / "ckpt.pt", weights_only=True)
    assert ckpt["step"] == 1, f"checkpoint at step {ckpt['step']}, expected 1"
    model = train.build_model(cfg)  # seeded by train.seed, as train() builds it
    moved = 0
    for k, init in model.named_parameters():
        trained, ema = ckpt["model"][k], ckpt["ema"][k]
        moved += not torch.equal(trained, init.detach())
        torch.testing.assert_close(ema, 0.75 * init.detach() + 0.25 * trained, msg=f"ema {k}")
    assert moved > 10, f"only {moved} parameters moved in the step: the check proves little"


def test_saved_config_reloads_to_the_same_config(tmp_path):
    """The resolved config.yaml a run writes loads back to an equal Config."""
    p = cli(tmp_path, "cfg", "train.steps=2")
    assert p.wait(timeout=300) == 0, p.stdout.read().decode()[-2000:]
    saved = tmp_path / "runs" / "cfg" / "config.yaml"
    again = load_config(saved)
    want = load_config(TINY, run_args(tmp_path, "cfg", "train.steps=2"))
    assert asdict(again) == asdict(want)
    ckpt = torch.load(saved.parent / "ckpt.pt", weights_only=True)
    assert ckpt["teacher"] == "oracle", f"recorded teacher {ckpt['teacher']!r}"


def test_batch_order_is_a_function_of_the_step():
    """Batch indices depend only on the step: each epoch is a permutation, so resume is exact."""
    n, b = 10, 4
    idx = torch.cat([train.batch_indices(s, b, n, seed=3) for s in range(5)])  # 2 epochs
    assert sorted(idx[:10].tolist()) == list(range(10)), "first epoch is not a permutation"
    assert sorted(idx[10:20].tolist()) == list(range(10)), "second epoch is not a permutation"
    assert not torch.equal(idx[:10], idx[10:20]), "every epoch in the same order"
    assert torch.equal(train.batch_indices(3, b, n, 3), idx[12:16])


def test_torchrun_two_ranks_on_cpu(tmp_path):
    """`torchrun --nproc_per_node=2 train.py` (DDP over gloo on CPU) trains, and rank 0 alone
    writes the checkpoint with the same parameter names as a one-process run and every rank's own
    RNG state (the ranks draw different noise); the same command again loads it back."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
           str(ROOT / "train.py"), str(TINY), *run_args(tmp_path, "ddp", "train.steps=6")]
    p = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    ckpt = torch.load(tmp_path / "runs" / "ddp" / "ckpt.pt", weights_only=True)
    assert ckpt["step"] == 6, f"checkpoint at step {ckpt['step']}, expected 6"
    cfg = load_config(TINY)
    model = train.build_model(cfg, cfg.align.oracle_dim)
    assert set(ckpt["model"]) == set(model.state_dict()), "DDP-prefixed or missing parameter names"
    r0, r1 = (r["torch"] for r in ckpt["rng_ranks"])
    assert not torch.equal(r0, r1), "both ranks drew the same noise"
    p = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0 and "resuming" in p.stdout, (p.stdout + p.stderr)[-3000:]


def test_frozen_video_model_trains_the_action_head_alone(tmp_path):
    """init_from + freeze=video: the video model is the pretrain's EMA weights, bit for bit, at the
    end of training, and only the action head (starting from the seed's fresh init) moved."""
    pre = load_config(TINY, run_args(tmp_path, "pre", "train.steps=20", "train.action_weight=0.0",
                                           "align.weight=0.0"))
    train.train(pre)
    ckpt = tmp_path / "runs" / "pre" / "ckpt.pt"
    cfg = load_config(TINY, run_args(tmp_path, "frozen", "train.steps=20", "align.weight=0.0",
                                           f"train.init_from={ckpt}", "train.freeze=video"))
    train.train(cfg)
    pre_ema = torch.load(ckpt, weights_only=True)["ema"]
    after = torch.load(tmp_path / "runs" / "frozen" / "ckpt.pt", weights_only=True)
    fresh = train.build_model(cfg).state_dict()
    moved = 0
    for k, v in after["model"].items():
        if k.startswith("action_head."):
            moved += not torch.equal(v, fresh[k])
        else:
            assert torch.equal(v, pre_ema[k]), f"frozen video weight {k} changed"
            assert torch.equal(after["ema"][k], pre_ema[k]), f"EMA of frozen {k} changed"
    assert moved > 10, f"only {moved} action-head tensors changed: the head did not train"


def test_init_from_and_resume_reject_bad_values(tmp_path):
    """A missing init_from stops before any work, naming the file; resuming a run under another
    config is refused, naming the keys that differ."""
    cfg = load_config(TINY, run_args(tmp_path, "bad", f"train.init_from={tmp_path}/nope.pt"))
    with pytest.raises(FileNotFoundError, match=r"nope\.pt"):
        train.train(cfg)
    assert not (tmp_path / "runs" / "bad").exists()
    train.train(load_config(TINY, run_args(tmp_path, "old", "train.steps=20")))
    with pytest.raises(ValueError, match=r"different config \(train\.steps, align\.weight|"
                       r"different config \(align\.weight, train\.steps"):
        train.train(load_config(TINY, run_args(tmp_path, "old", "train.steps=40",
                                               "align.weight=0.1")))


def test_a_checkpoint_older_than_a_config_section_still_resumes(tmp_path):
    """A checkpoint written before a config section existed (metaworld) resumes while that
    section holds its defaults, and is refused, naming the key, once it does not."""
    train.train(load_config(TINY, run_args(tmp_path, "old", "train.steps=2")))
    path = tmp_path / "runs" / "old" / "ckpt.pt"
    ckpt = torch.load(path, weights_only=True)
    del ckpt["config"]["metaworld"]  # as every checkpoint from before the section was
    torch.save(ckpt, path)
    train.preflight(load_config(TINY, run_args(tmp_path, "old", "train.steps=2")))
    with pytest.raises(ValueError, match=r"different config \(metaworld\.res\)"):
        train.preflight(load_config(TINY, run_args(tmp_path, "old", "train.steps=2",
                                                   "metaworld.res=32")))
