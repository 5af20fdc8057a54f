"""Tests of bench.py: the analytic FLOP count behind train.mfu, and its command line."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import bench
import train
from bench import flops_per_sample
from model import WAM, ModelConfig

TINY = {"patch": 4, "width": 32, "depth": 3, "heads": 2, "mlp_ratio": 2.0, "head_width": 24,
        "head_depth": 2, "head_heads": 2, "attn": "math"}  # math: FlopCounterMode sees its bmm


@pytest.mark.parametrize("overrides, n_ctx, n_future", [
    ({}, 1, 1),
    ({"bridge": "single", "bridge_layer": 2, "mlp_ratio": 4.0}, 2, 1),  # foresight stops at 2
])
def test_analytic_flops_match_flop_counter(overrides, n_ctx, n_future):
    """flops_per_sample (nanoGPT-style, both passes, fwd+bwd) is within 5% of torch's count."""
    torch.manual_seed(0)
    model = WAM(ModelConfig(**{**TINY, **overrides}), 16, n_ctx, n_future, 4, 8)
    B, T = 4, n_ctx + n_future
    batch = {"video": torch.rand(B, T, 3, 16, 16) * 2 - 1, "actions": torch.rand(B, 4, 2) * 2 - 1,
             "task": torch.zeros(B, dtype=torch.long)}
    with FlopCounterMode(display=False) as counter:
        losses, _ = model.loss(batch)
        (losses["video"] + losses["action"]).backward()
    counted, analytic = counter.get_total_flops() / B, flops_per_sample(model)
    assert abs(analytic / counted - 1) < 0.05, f"analytic {analytic:.4g} vs counted {counted:.4g}"


def test_overrides_reach_the_measured_model(tmp_path):
    """`bench.py train --config P key=value ...` measures the overridden model (its analytic FLOPs
    are those of train.build_model on the same overrides, not the preset's) and records the
    overrides in the JSON; a misspelt group is refused by name."""
    over = ["model.width=48", "model.depth=3", "align.proj_hidden=8", "train.batch_size=2"]
    out = bench.main(["train", "--quick", "--config", "configs/tiny.yaml", *over,
                      "--json", str(tmp_path / "b.json")])
    want = flops_per_sample(train.build_model(train.load_config("configs/tiny.yaml", over)))
    preset = flops_per_sample(train.build_model(train.load_config("configs/tiny.yaml")))
    assert want != preset and out["train.gflop_per_sample"] == pytest.approx(want / 1e9)
    assert '"overrides": [' in (tmp_path / "b.json").read_text()
    with pytest.raises(SystemExit, match="group 'trian'"):
        bench.main(["trian", "--quick"])
