"""Tests of bench.py: the FLOP count behind train.mfu, and its command line."""
import pytest
import torch

import bench
import train
from config import load_config


def test_flop_count_is_per_sample_and_sees_attention():
    """flops_per_sample is a per-sample count (the same at batch 1 and 4) that includes the
    attention matmuls (more than the count of the fused kernel, which the counter cannot see),
    and it grows with the width about quadratically (weights dominate at width 64 vs 32)."""
    cfg = load_config("configs/tiny.yaml")
    model = train.build_model(cfg)
    one, four = bench.flops_per_sample(cfg, model, B=1), bench.flops_per_sample(cfg, model, B=4)
    assert one == pytest.approx(four, rel=1e-6), f"per-sample FLOPs {one} at B=1, {four} at B=4"
    batch = bench.fake_batch(cfg, 1, cfg.data.n_ctx + cfg.data.n_future, "cpu", 1)
    with torch.utils.flop_counter.FlopCounterMode(display=False) as fused:
        losses, _ = model(batch)
        (losses["video"] + losses["action"]).backward()
    assert one > fused.get_total_flops() * 1.01, "the attention matmuls were not counted"
    wide = load_config("configs/tiny.yaml", ["model.width=64", "model.head_width=64"])
    ratio = bench.flops_per_sample(wide, train.build_model(wide)) / one
    assert 2.5 < ratio < 4.1, f"doubling both widths multiplied the FLOPs by {ratio:.2f}"


def test_overrides_reach_the_measured_model(tmp_path):
    """`bench.py train --config P key=value ...` measures the overridden model (its FLOPs are
    those of train.build_model on the same overrides, not the preset's) and records the
    overrides in the JSON; a misspelt group is refused by name."""
    over = ["model.width=48", "model.depth=3", "align.proj_hidden=8", "train.batch_size=2"]
    out = bench.main(["train", "--quick", "--config", "configs/tiny.yaml", *over,
                      "--json", str(tmp_path / "b.json")])
    cfg, preset = load_config("configs/tiny.yaml", over), load_config("configs/tiny.yaml")
    want = bench.flops_per_sample(cfg, train.build_model(cfg))
    assert want != bench.flops_per_sample(preset, train.build_model(preset))
    assert out["train.gflop_per_sample"] == pytest.approx(want / 1e9)
    assert '"overrides": [' in (tmp_path / "b.json").read_text()
    with pytest.raises(SystemExit, match="group 'trian'"):
        bench.main(["trian", "--quick"])
