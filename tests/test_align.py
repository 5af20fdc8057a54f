"""AGRA (align.py): loss, normalisation, teachers, weights, fallback, cache, gradient reach."""

from pathlib import Path

import huggingface_hub
import pytest
import torch
import torch.nn.functional as F

import align
import config
import world
from align import align_loss, build_teacher
from config import PALETTE, SHAPES, AlignConfig, Config, EnvConfig, ModelConfig
from model import WAM
from world import BACKGROUND, GOAL, GRIPPER, TARGET

RES, PATCH, GRID = 16, 4, 4  # 4 x 4 tokens; the ViT then runs at 14 * 4 = 56 px: fast


def make_cfg(tmp_path=".", depth=4, res=RES, **align_kw):
    """A Config at res 16, patch 4 (4 x 4 tokens), with these align values."""
    cfg = Config(align=AlignConfig(**align_kw), model=ModelConfig(patch=PATCH, depth=depth))
    cfg.env.res, cfg.data.cache_dir = res, str(tmp_path)
    return cfg


def scene(target_color="red"):
    """One frame: gripper at token 0, goal at token 15, a red square filling token 6 and a blue disc
    filling the top half of token 8; block 0 (mask id TARGET) is the task's colour."""
    red, blue = list(PALETTE).index("red"), list(PALETTE).index("blue")
    sq, disc = SHAPES.index("square"), SHAPES.index("disc")
    masks = torch.full((1, 1, RES, RES), BACKGROUND, dtype=torch.uint8)  # (B, T, H, W)
    masks[..., 0:4, 0:4], masks[..., 12:16, 12:16] = GRIPPER, GOAL
    red_id, blue_id = (TARGET, TARGET + 1) if target_color == "red" else (TARGET + 1, TARGET)
    masks[..., 4:8, 8:12], masks[..., 8:10, 0:4] = red_id, blue_id
    order = [0, 1] if target_color == "red" else [1, 0]
    color = torch.tensor([[red, blue]])[:, order]                         # (B, K)
    shape = torch.tensor([[sq, disc]])[:, order]                          # (B, K)
    return {"masks": masks, "color": color, "shape": shape, "task": torch.tensor([0])}


def demos_fixture(E=2, L1=3, K=2):
    g = torch.Generator().manual_seed(0)
    return {"frames": torch.randint(0, 256, (E, L1, 3, RES, RES), generator=g, dtype=torch.uint8),
            "masks": torch.randint(0, 3 + K, (E, L1, RES, RES), generator=g).byte(),
            "color": torch.randint(0, 4, (E, K), generator=g),
            "shape": torch.randint(0, len(SHAPES), (E, K), generator=g),
            "task": torch.arange(E), "hash": "testdemos"}


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="the GPU's RNG needs a CUDA GPU"))])
def test_seeded_rng_leaves_the_callers_stream_alone(device):
    """Inside: the stream of manual_seed(s). After: the stream the caller would have had without
    the block, on the CPU and on the GPU (manual_seed inside reseeds both)."""
    torch.manual_seed(7)
    want = torch.rand(3, device=device)
    torch.manual_seed(7)
    with config.seeded_rng(11):
        inside = torch.rand(3, device=device)
    after = torch.rand(3, device=device)
    torch.manual_seed(11)
    assert torch.equal(inside, torch.rand(3, device=device)) and torch.equal(after, want)


def test_loss_extremes():
    """align_loss is -1 when the projection equals the teacher (any scale), +1 for its negation."""
    y = torch.randn(2, 10, 8)
    for h, want in [(y, -1.0), (3 * y, -1.0), (-y, 1.0)]:
        got = align_loss(h, y).item()
        assert abs(got - want) < 1e-5, f"align_loss = {got}, expected {want}"


def test_targets_spatial_normalize_the_teacher():
    """normalize=spatial compares the student with the teacher standardized over each frame's
    tokens: a student equal to that scores -1 against a teacher with a large offset shared by
    every token, which normalize=none does not remove."""
    y = torch.randn(2, 3, GRID, GRID, 8)                                  # (B, T, h, w, Dt)
    z = align.spatial_normalize(y.flatten(2, 3)).flatten(1, 2)            # (B, T*N, Dt)
    shifted = y + 10 * torch.randn(8)                                     # one offset, every token

    def teacher(batch):
        return shifted
    y_spatial = align.targets({}, teacher, "spatial")                    # (B, T*N, Dt)
    assert y_spatial.shape == (2, 3 * GRID * GRID, 8), tuple(y_spatial.shape)
    assert align_loss(z, y_spatial).item() == pytest.approx(-1, abs=1e-4)
    assert align_loss(z, align.targets({}, teacher, "none")).item() > -0.9


def test_spatial_normalize_zero_mean():
    """Spatially normalised features have zero mean and unit std over each frame's tokens."""
    y = align.spatial_normalize(5 * torch.randn(2, 3, 16, 8) + 3)               # (B, T, N, Dt)
    assert y.mean(2).abs().max() < 1e-5, f"token mean {y.mean(2).abs().max():.2e}"
    assert (y.std(2, unbiased=False) - 1).abs().max() < 1e-4, "token std is not 1"


def test_oracle_puts_block_classes_on_their_tokens_whatever_the_task():
    """Oracle features depend on what is where, not on the task; each token carries the colour and
    shape shares of the block pixels it holds (oracle_task, privileged, does see the task)."""
    teacher, name = build_teacher(make_cfg(teacher="oracle"))
    assert name == "oracle"
    y_red, y_blue = teacher(scene("red")), teacher(scene("blue"))         # (1, 1, h, w, Dt)
    torch.testing.assert_close(y_red, y_blue, msg="oracle features changed with the task")
    share = (y_red @ teacher.lift.T)[0, 0].flatten(0, 1)                  # (N, kinds)
    C = len(PALETTE)
    red, blue = 3 + list(PALETTE).index("red"), 3 + list(PALETTE).index("blue")
    sq, disc = 3 + C + SHAPES.index("square"), 3 + C + SHAPES.index("disc")
    assert share[6, red] == pytest.approx(0.5) and share[6, sq] == pytest.approx(0.5), share[6]
    assert share[8, blue] == pytest.approx(0.25) and share[8, disc] == pytest.approx(0.25)
    assert share[0, 1] == pytest.approx(1) and share[15, 2] == pytest.approx(1), "gripper / goal"
    assert (share[:, red] > 1e-6).nonzero().flatten().tolist() == [6], "red off the red block"
    task_teacher, _ = build_teacher(make_cfg(teacher="oracle_task"))
    assert not torch.allclose(task_teacher(scene("red")), task_teacher(scene("blue"))), \
        "oracle_task should tell target from distractor"


def test_oracle_on_rendered_scenes_ignores_which_block_is_the_target():
    """On world.py's rendered worlds, every token holding block k carries block k's colour and shape,
    and relabelling which block is the target (another task, same scene) changes nothing."""
    env = EnvConfig(res=32, max_distractors=2)
    suite = config.get_suite(config.read_yaml(Path(__file__).parents[1] / "config.yaml")["suites"],
                             "id")
    task = torch.tensor(world.task_ids(env) * 2)                           # (B,) 8 worlds
    state, app = world.reset(env, suite, task, torch.Generator().manual_seed(0))
    _, masks = world.render(env, state, app)                               # (B, H, W) uint8
    batch = {"masks": masks[:, None], "color": app["color"], "shape": app["shape"]}
    teacher, _ = build_teacher(make_cfg(teacher="oracle", res=32))
    share = (teacher(batch) @ teacher.lift.T)[:, 0]                       # (B, h, w, kinds)
    held = F.one_hot(masks.long(), 3 + app["color"].shape[1]).float()     # (B, H, W, 3 + K)
    held = held.view(len(task), 8, 4, 8, 4, -1).amax((2, 4))              # (B, h, w, 3 + K)
    C, checked = len(PALETTE), 0
    for b, k in (held[..., 3:].sum((1, 2)) > 0).nonzero().tolist():      # visible blocks
        on = held[b, ..., 3 + k] > 0                                      # (h, w) its tokens
        assert (share[b][on][:, 3 + app["color"][b, k]] > 0).all(), f"world {b} block {k} colour"
        assert (share[b][on][:, 3 + C + app["shape"][b, k]] > 0).all(), f"world {b} block {k} shape"
        checked += 1
    assert checked >= 12, f"only {checked} visible blocks: the scene test proves little"
    swap = masks.clone()                                                  # target <-> block 1
    swap[masks == TARGET], swap[masks == TARGET + 1] = TARGET + 1, TARGET
    other = {"masks": swap[:, None], "color": app["color"][:, [1, 0, 2]],
             "shape": app["shape"][:, [1, 0, 2]]}
    torch.testing.assert_close(teacher(other), teacher(batch), msg="oracle depends on the target")


def test_shuffled_is_a_per_frame_permutation_of_oracle():
    """Each frame of the shuffled teacher holds exactly the oracle's tokens, permuted, and the
    permutation depends on the frame id only (same on the cache path's one-frame batches)."""
    demos = demos_fixture()
    oracle, _ = build_teacher(make_cfg(teacher="oracle"))
    shuffled, _ = build_teacher(make_cfg(teacher="shuffled"))
    idx = torch.tensor([[0, 2]])                                          # (B, T) episode 0's
    window = {"masks": demos["masks"].flatten(0, 1)[idx], "frame_index": idx,  # (B, T, H, W)
              "color": demos["color"][:1], "shape": demos["shape"][:1]}
    o, s = oracle(window), shuffled(window)                               # (1, 2, h, w, Dt)
    r = torch.randn(o.shape[-1])                                          # (Dt,) sort key
    for t in range(2):
        a, b = o[0, t].flatten(0, 1), s[0, t].flatten(0, 1)               # (N, Dt)
        torch.testing.assert_close(b[(b @ r).argsort()], a[(a @ r).argsort()],
                                   msg=f"frame {t} is not a permutation of the oracle's tokens")
        assert not torch.equal(a, b), f"frame {t} was not shuffled"
    one = align.demo_batch(demos, torch.tensor([2]), "cpu")               # frame 2 alone (T=1)
    torch.testing.assert_close(shuffled(one)[0, 0], s[0, 1], msg="permutation depends on batch")


def test_alignment_gradient_reaches_only_layers_up_to_align_layer():
    """The AGRA loss's gradient reaches the projector and blocks[:layer], never later blocks,
    final_layer or the action head (with the adaLN gates perturbed away from zero)."""
    layer = 2
    cfg = make_cfg(layer=layer, proj_hidden=16)
    cfg.model = ModelConfig(patch=PATCH, width=32, depth=3, heads=2, head_width=32, head_depth=2,
                            head_heads=2)
    torch.manual_seed(0)
    model = WAM(cfg, align_dim=8)
    with torch.no_grad():
        for block in model.blocks:  # zero gates would block the gradient and prove nothing
            block.adaLN_modulation[-1].weight.normal_(0, 0.05)
            block.adaLN_modulation[-1].bias.normal_(0, 0.05)
    batch = {"video": torch.rand(2, 2, 3, RES, RES) * 2 - 1, "actions": torch.rand(2, 4, 2) - 0.5,
             "task": torch.tensor([0, 3])}
    _, z = model(batch)                                                   # (B, T*N, Dt)
    align_loss(z, torch.randn(2, 2 * GRID * GRID, 8)).backward()

    def reached(module):
        return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())

    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.projector.parameters())
    for i, block in enumerate(model.blocks):
        assert reached(block) == (i < layer), f"blocks[{i}] reached={reached(block)}, layer={layer}"
    assert not reached(model.final_layer), "gradient reached final_layer"
    assert not reached(model.action_head), "gradient reached the action head"


def test_vit_teacher_random_init_shape_and_grid_mapping(monkeypatch):
    """The random-init DINOv2 teacher gives float32 (B, T, h, w, 384), and ViT patch (i, j) lands
    on token (i, j) (rows stay rows): with a ViT whose patch tokens carry their own row and
    column, token (i, j) holds (i, j)."""
    video = torch.rand(2, 2, 3, RES, RES) * 2 - 1                         # (B, T, 3, H, W)
    teacher, name = build_teacher(make_cfg(teacher="random"))
    y = teacher({"video": video})
    assert name == "random" and y.dtype == torch.float32 and teacher.res == 14 * GRID
    assert y.shape == (2, 2, GRID, GRID, 384), tuple(y.shape)
    rows = torch.arange(GRID, dtype=torch.float32)[:, None].expand(GRID, GRID)   # (h, w)

    def where_am_i(x, g=GRID, dim=teacher.dim):  # (n, 3, R, R) -> (n, 1 + g*g, Dt): CLS, patches
        tok = torch.zeros(x.shape[0], 1 + g * g, dim)
        k = torch.arange(g * g)
        tok[:, 1:, 0], tok[:, 1:, 1] = (k // g).float(), (k % g).float()
        return tok
    monkeypatch.setattr(teacher.vit, "forward_features", where_am_i)
    y = teacher({"video": video})                                         # (B, T, h, w, Dt)
    torch.testing.assert_close(y[..., 0], rows.expand(2, 2, -1, -1))
    torch.testing.assert_close(y[..., 1], rows.T.expand(2, 2, -1, -1))


def test_weights_file_round_trip(tmp_path, monkeypatch):
    """A state dict saved to a file (.pt via align.teacher_weights, or .safetensors in the local HF
    cache layout) loads back to outputs identical to the network that saved it."""
    ref, _ = build_teacher(make_cfg(teacher="random"))
    with torch.no_grad():
        for p in ref.vit.parameters():  # distinct from the seeded init, so loading is visible
            p.add_(0.01 * torch.randn_like(p))
    video = {"video": torch.rand(1, 2, 3, RES, RES) * 2 - 1}
    torch.save(ref.vit.state_dict(), tmp_path / "w.pt")
    teacher, name = build_teacher(make_cfg(teacher="dinov2", teacher_weights=str(tmp_path / "w.pt")))
    assert name == "dinov2"
    torch.testing.assert_close(teacher(video), ref(video), rtol=0, atol=0)
    from safetensors.torch import save_file
    snap = tmp_path / "hub/models--timm--vit_small_patch14_dinov2.lvd142m/snapshots/abc"
    snap.mkdir(parents=True)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs/main").write_text("abc")
    save_file({k: v.contiguous() for k, v in ref.vit.state_dict().items()},
              str(snap / "model.safetensors"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    teacher, name = build_teacher(make_cfg(teacher="dinov2"))
    assert name == "dinov2", f"local HF cache not found: {name}"
    torch.testing.assert_close(teacher(video), ref(video), rtol=0, atol=0)


def test_weights_file_with_wrong_keys_raises(tmp_path):
    """A weights file that does not match the architecture raises, naming the file and keys."""
    torch.save({"foo.weight": torch.zeros(3)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"bad\.pt: not weights of vit_small.*cls_token"):
        build_teacher(make_cfg(teacher="dinov2", teacher_weights=str(tmp_path / "bad.pt")))
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        build_teacher(make_cfg(teacher="dinov2", teacher_weights=str(tmp_path / "nope.pt")))


def test_fallback_to_oracle_is_loud_and_recorded(tmp_path, monkeypatch):
    """dinov2 without weights falls back to the oracle with a warning and says so in used_name;
    strict_teacher raises instead."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.warns(UserWarning, match="FALLING BACK"):
        teacher, name = build_teacher(make_cfg(teacher="dinov2"))
    assert isinstance(teacher, align.OracleTeacher) and "fallback" in name and "oracle" in name
    with pytest.raises(FileNotFoundError, match="strict_teacher"):
        build_teacher(make_cfg(teacher="dinov2", strict_teacher=True))


def test_cache_matches_direct_computation(tmp_path):
    """The disk cache (first computed, then loaded) serves what the teacher computes directly."""
    demos = demos_fixture()
    cfg = make_cfg(tmp_path, teacher="random")
    teacher, name = build_teacher(cfg)
    first = align.teacher_features(cfg, teacher, name, demos)                   # (E*(L+1), h, w, Dt)
    assert first.dtype == torch.float16 and first.shape == (6, GRID, GRID, 384)
    assert len(list(Path(tmp_path).glob("teacher_*.pt"))) == 1, "cache file not written"
    again = align.teacher_features(cfg, teacher, name, demos)                   # loaded from disk
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    idx = torch.tensor([[5, 0], [2, 3]])                                  # (B, T) frame ids
    batch = {"video": world.to_float(demos["frames"].flatten(0, 1)[idx]), "frame_index": idx}
    direct = align.targets(batch, teacher, "none")                              # (B, T*N, Dt)
    torch.testing.assert_close(align.targets(batch, again, "none"), direct, rtol=2e-3, atol=2e-3)
    oracle, oname = build_teacher(make_cfg(tmp_path, teacher="shuffled"))
    assert align.teacher_features(cfg, oracle, oname, demos) is None, "oracle family is not cached"


def test_teacher_precision_follows_the_cpu_and_keys_the_cache(tmp_path, monkeypatch):
    """bf16 autocast only where it is fast (CUDA, AVX-512), fp32 on an AVX2-only CPU; the cache
    file is keyed by the precision, so features of one are never served as the other's."""
    demos = demos_fixture()
    cfg = make_cfg(tmp_path, teacher="random")
    teacher, name = build_teacher(cfg)
    for cap, want in [("AVX2", False), ("AVX512", True)]:
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda cap=cap: cap)
        assert align.use_bf16("cpu") is want and align.use_bf16("cuda"), cap
        align.teacher_features(cfg, teacher, name, demos)
    assert len(list(Path(tmp_path).glob("teacher_*.pt"))) == 2, "one cache per precision"


def test_bad_config_values_raise():
    """Unknown teacher, apply_to, normalize, a negative weight, layer 0, an unknown timm name and
    too small an oracle_dim all raise, naming the value."""
    for kw, word in [({"teacher": "dino"}, "dino"), ({"apply_to": "pass"}, "pass"),
                     ({"normalize": "l2"}, "l2"), ({"weight": -1.0}, "weight"),
                     ({"layer": 0}, "layer")]:
        with pytest.raises(ValueError, match=word):
            AlignConfig(**kw)
    for kw, word in [({"teacher": "random", "teacher_name": "nope"}, "nope"),
                     ({"oracle_dim": 4}, "oracle_dim=4")]:
        with pytest.raises(ValueError, match=word):
            build_teacher(make_cfg(**kw))


def test_metaworld_oracle_follows_the_masks():
    """The Meta-World oracle (entities mode) lifts each token's share of each of the 6 mask ids by
    fixed orthonormal rows: a token inside the gripper mask gets the gripper's row, a token half
    task object, half robot the mean of those rows; batches without block colours are fine."""
    cfg = make_cfg()
    cfg.metaworld.suites = {"id": {}}  # only its presence matters: a Meta-World run
    teacher, name = build_teacher(cfg)
    assert (name, teacher.n_kinds) == ("oracle", len(config.MW_ENTITIES)), (name, teacher.n_kinds)
    masks = torch.zeros(1, 1, RES, RES, dtype=torch.uint8)               # (B, T, H, W)
    masks[..., 0:4, 0:4] = 1                                             # token 0: gripper
    masks[..., 0:4, 4:6], masks[..., 0:4, 6:8] = 3, 4                    # token 1: object, robot
    masks[..., 12:16, 12:16] = 5                                         # token 15: distractor
    y = teacher({"masks": masks, "task": torch.tensor([0])})[0, 0].flatten(0, 1)  # (N, Dt)
    lift = teacher.lift                                                  # (6, Dt)
    torch.testing.assert_close(y[0], lift[1])
    torch.testing.assert_close(y[1], (lift[3] + lift[4]) / 2)
    torch.testing.assert_close(y[15], lift[5])
    torch.testing.assert_close(y[5], lift[0])                            # background
    torch.testing.assert_close(lift @ lift.T, torch.eye(6), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="masks hold id 11; expected ids 0..5"):
        teacher({"masks": masks + 6, "task": torch.tensor([0])})
