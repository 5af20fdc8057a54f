"""AGRA (arXiv 2606.12217): a projector maps the video DiT's hidden states at `align.layer` onto
a frozen teacher's patch features, token by token, with REPA's negative-cosine loss. Teachers:
  dinov2       timm ViT (DINOv2) on the frames, patch tokens resampled to the model's grid
  random       the same ViT with frozen random weights (control: semantics vs "any extra loss")
  oracle       task-agnostic entity-kind shares per token from the masks (idealised semantics)
  oracle_task  task-relative classes (target / distractor ...): privileged ablation
  shuffled     oracle features with each frame's tokens permuted (control: no spatial match)
Every teacher is an nn.Module called as teacher(batch) on the data batch dict -> (B, T, h, w, Dt).

# B batch   T frames   h, w token grid   N = h*w   D width   Dt teacher dim   p patch
"""

import contextlib
import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from world import PALETTE, SHAPES

TEACHERS = ["oracle", "oracle_task", "dinov2", "random", "shuffled"]
SEED = 1234  # fixes the oracle lift, the shuffles and the random ViT across runs


@contextlib.contextmanager
def seeded_rng(seed=None):
    """Runs the body on torch's global RNG (seeded with `seed` unless None), then restores the CPU's
    and every GPU's RNG state, so the body never shifts the caller's random stream. (fork_rng with
    devices=[] restores the CPU's alone, yet manual_seed reseeds the GPUs too.)"""
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count()))):
        if seed is not None:
            torch.manual_seed(seed)
        yield


@dataclass
class AlignConfig:
    weight: float = 0.5           # lambda: loss += weight * align loss; 0 = baseline WAM, no cost
    teacher: str = "oracle"       # oracle | oracle_task | dinov2 | random | shuffled
    teacher_name: str = "vit_small_patch14_dinov2.lvd142m"  # timm name for dinov2 / random
    teacher_weights: str = ""     # state-dict file (.safetensors/.pt); "" = timm's local caches
    strict_teacher: bool = False  # dinov2 without weights: error instead of oracle fallback
    # 1-based video layer (output of blocks[layer-1]). REPA's ~1/3 of the depth rounds to 1 at the
    # default depth 4, but one block has barely mixed the patches; 2 leaves 2 blocks for velocity.
    layer: int = 2
    apply_to: str = "foresight"   # the DESIGN's align.pass: foresight (what the head reads) | video
    frames: str = "all"           # all | context | future: whose tokens are aligned
    normalize: str = "spatial"    # none | spatial (per-frame token standardisation, iREPA)
    proj_hidden: int = 128        # projector MLP hidden width
    oracle_dim: int = 64          # Dt of the oracle-family teachers
    teacher_res: int = 0          # ViT input side in px; 0 = 14 * grid side (patch grid = our grid)
    cache: bool = True            # ViT features of the demos computed once, kept on disk (float16)
    teacher_used: str = ""        # written by train.py: the teacher actually used (after fallback)

    def __post_init__(self):
        check_align(self)


def check_align(a, depth=None):
    """Raise on a bad align value; `layer` is checked against `depth` where the model is known."""
    choices = {"teacher": TEACHERS, "apply_to": ["foresight", "video"],
               "frames": ["all", "context", "future"], "normalize": ["none", "spatial"]}
    for key, valid in choices.items():
        if getattr(a, key) not in valid:
            raise ValueError(f"align.{key}={getattr(a, key)!r}; expected one of {valid}")
    for key, low in [("weight", 0), ("teacher_res", 0), ("proj_hidden", 1), ("oracle_dim", 1)]:
        if getattr(a, key) < low:
            raise ValueError(f"align.{key}={getattr(a, key)} must be >= {low}")
    if a.layer < 1 or (depth is not None and a.layer > depth):
        raise ValueError(f"align.layer={a.layer}; expected 1..{depth or 'model.depth'} (1-based)")


# -----------------------------------------------------------------------------
# projector and loss


def build_projector(width, hidden, dim):
    """REPA's projector h_phi: D -> hidden -> hidden -> Dt."""
    return nn.Sequential(nn.Linear(width, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                         nn.Linear(hidden, dim))


def align_loss(h: Tensor, y: Tensor) -> Tensor:
    """REPA alignment loss: minus the mean per-token cosine similarity (-1 at best, +1 at worst).
    Paper -> code:  h_phi(h_t^[n]) -> h  (B, T*N, Dt)  projector output at `align.layer`
                    y_*^[n]        -> y  (B, T*N, Dt)  frozen teacher features, same frame and patch
                    sim(., .)      -> F.cosine_similarity over the last dim
    """
    if h.shape != y.shape:
        raise ValueError(f"align_loss: student {tuple(h.shape)} != teacher {tuple(y.shape)}")
    return -F.cosine_similarity(h, y.detach(), dim=-1).mean()


def spatial_normalize(y, eps=1e-6):
    """Standardise each channel over each frame's tokens (iREPA): (..., N, Dt) -> same shape.
    Removes the direction all tokens share (mostly background), so the loss cannot saturate on it.
    """
    mean = y.mean(dim=-2, keepdim=True)                            # (..., 1, Dt)
    std = y.std(dim=-2, keepdim=True, unbiased=False)              # (..., 1, Dt)
    return (y - mean) / (std + eps)                                # (..., N, Dt)


def agra_loss(projector, hidden, y, a, n_ctx):
    """AGRA loss (not yet times a.weight) of hidden states (B, T*N, D) against teacher features
    y (B, T, h, w, Dt); a = AlignConfig, n_ctx = context frames (they come first)."""
    B, T, h, w, Dt = y.shape
    if hidden.shape[:2] != (B, T * h * w):
        raise ValueError(f"agra_loss: hidden {tuple(hidden.shape)} != (B={B}, T*N={T * h * w}, D) "
                         f"for teacher {tuple(y.shape)}")
    if not 0 < n_ctx < T:
        raise ValueError(f"agra_loss: n_ctx={n_ctx} must be in 1..{T - 1} for {T} frames")
    check_align(a)
    y = y.reshape(B, T, h * w, Dt).float()                         # (B, T, N, Dt)
    y = spatial_normalize(y) if a.normalize == "spatial" else y    # (B, T, N, Dt)
    sel = {"all": slice(0, T), "context": slice(0, n_ctx), "future": slice(n_ctx, T)}[a.frames]
    hidden = hidden.reshape(B, T, h * w, -1)[:, sel]               # (B, Ts, N, D)
    z = projector(hidden)                                          # (B, Ts, N, Dt)
    return align_loss(z.flatten(1, 2), y[:, sel].flatten(1, 2))    # h, y: (B, Ts*N, Dt)


# -----------------------------------------------------------------------------
# teachers


class Frozen(nn.Module):
    """A teacher: no gradients, always in eval mode, follows the batch to its device."""

    def train(self, mode=True):
        return super().train(False)  # model.train() elsewhere must never turn dropout on here

    def follow(self, x):
        if next(self.buffers()).device != x.device:
            self.to(x.device)


class OracleTeacher(Frozen):
    """Per token, the share of each entity kind among its p x p pixels, lifted to Dt by a fixed
    random matrix with orthonormal rows (it keeps every dot product).

    Kinds, task-agnostic like a vision model: background, gripper, goal, and a block pixel counts
    half to its colour (list(PALETTE)) and half to its shape (SHAPES). Two-hot rather than one-hot
    (colour, shape) pairs: a red disc and a red square share the red direction, as in DINOv2, and
    there are 3 + colours + shapes kinds, not 3 + colours * shapes. The target is not special.
    task_relative: background, gripper, goal, target, distractor (privileged ablation).
    shuffle: each frame's tokens permuted by a permutation fixed per frame, keyed by the global
    batch["frame_index"] when present (same on every path), else by the position t in the window.
    """

    def __init__(self, patch, n_colors, n_shapes, dim, task_relative=False, shuffle=False):
        super().__init__()
        self.patch, self.n_colors, self.n_shapes = patch, n_colors, n_shapes
        self.task_relative, self.shuffle, self.dim = task_relative, shuffle, dim
        self.n_kinds = 5 if task_relative else 3 + n_colors + n_shapes
        if dim < self.n_kinds:
            raise ValueError(f"align.oracle_dim={dim} < {self.n_kinds} entity kinds")
        g = torch.Generator().manual_seed(SEED)
        q, _ = torch.linalg.qr(torch.randn(dim, self.n_kinds, generator=g))  # (Dt, kinds)
        self.register_buffer("lift", q.T.contiguous())             # (kinds, Dt) orthonormal rows
        self.identity = f"oracle{'_task' * task_relative}{'_shuffled' * shuffle}:{self.n_kinds}"

    def kind_table(self, batch, n_ids):
        """Mask id -> kind shares (B, n_ids, kinds); ids 0 bg, 1 gripper, 2 goal, 3 + b block b."""
        eye = torch.eye(self.n_kinds, device=self.lift.device)     # (kinds, kinds)
        B = batch["color"].shape[0]
        if self.task_relative:                                     # bg, gripper, goal, target, rest
            rows = torch.tensor([0, 1, 2, 3] + [4] * (n_ids - 4), device=eye.device)  # (n_ids,)
            return eye[rows].expand(B, -1, -1)                     # (B, n_ids, kinds)
        color, shape = batch["color"].to(eye.device), batch["shape"].to(eye.device)  # (B, K)
        if ((color < 0) | (color >= self.n_colors) | (shape < 0) | (shape >= self.n_shapes)).any():
            raise ValueError(f"colour ids {color.unique().tolist()}, shape ids "
                             f"{shape.unique().tolist()}: not ids of world.PALETTE / world.SHAPES")
        c = eye[3 + color]                                         # (B, K, kinds) colour one-hot
        s = eye[3 + self.n_colors + shape]                         # (B, K, kinds) shape one-hot
        return torch.cat([eye[:3].expand(B, -1, -1), 0.5 * c + 0.5 * s], 1)  # (B, 3 + K, kinds)

    @torch.no_grad()
    def forward(self, batch):
        masks = batch["masks"]                                     # (B, T, H, W) uint8
        self.follow(masks)
        (B, T, H, W), p = masks.shape, self.patch
        h, w = H // p, W // p
        n_ids = 3 + batch["color"].shape[1]
        if int(masks.max()) >= n_ids:
            raise ValueError(f"masks hold id {int(masks.max())}; {n_ids - 3} blocks give ids "
                             f"0..{n_ids - 1}")
        share = F.one_hot(masks.long(), n_ids).float()             # (B, T, H, W, n_ids)
        share = share.view(B, T, h, p, w, p, n_ids).mean((3, 5))   # (B, T, h, w, n_ids)
        table = self.kind_table(batch, n_ids)                      # (B, n_ids, kinds)
        y = torch.einsum("bthwi,bik->bthwk", share, table) @ self.lift  # (B, T, h, w, Dt)
        if self.shuffle:
            keys = batch["frame_index"] if "frame_index" in batch else torch.arange(T).expand(B, T)
            perm = frame_permutations(keys, h * w).to(y.device)   # (B, T, N)
            y = y.flatten(2, 3).gather(2, perm[..., None].expand(-1, -1, -1, self.dim))
            y = y.view(B, T, h, w, self.dim)                       # (B, T, h, w, Dt)
        return y


def frame_permutations(keys, n):
    """A fixed permutation of n tokens per frame key: (B, T) long -> (B, T, n) long."""
    perms = [torch.randperm(n, generator=torch.Generator().manual_seed(SEED + int(k)))
             for k in keys.flatten().tolist()]
    return torch.stack(perms).view(*keys.shape, n)                 # (B, T, n)


class ViTTeacher(Frozen):
    """timm ViT patch tokens on the model's grid. Frames are upsampled to `res` px so the ViT's
    (res / 14)^2 patch grid covers the frame; with res = 14 * h each ViT patch is exactly one of
    our tokens, otherwise the ViT grid is area-averaged (or bilinearly upsampled) onto h x w."""

    def __init__(self, vit, res, grid, identity):
        super().__init__()
        self.vit = vit.eval().requires_grad_(False)
        self.res, self.grid, self.dim, self.identity = res, grid, vit.embed_dim, identity
        mean, std = vit.pretrained_cfg["mean"], vit.pretrained_cfg["std"]  # ImageNet's
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))  # (1, 3, 1, 1)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))    # (1, 3, 1, 1)

    @torch.no_grad()
    def forward(self, batch):
        video = batch["video"]                                     # (B, T, 3, H, W) in [-1, 1]
        self.follow(video)
        B, T = video.shape[:2]
        x = (video.flatten(0, 1).float() + 1) / 2                  # (B*T, 3, H, W) in [0, 1]
        x = F.interpolate(x, size=(self.res, self.res), mode="bilinear", align_corners=False)
        x = (x - self.mean) / self.std                             # (B*T, 3, R, R)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=use_bf16(x.device.type)):
            tok = self.vit.forward_features(x)[:, self.vit.num_prefix_tokens:].float()  # B*T,g*g,Dt
        g = self.res // self.vit.patch_embed.patch_size[0]
        f = tok.transpose(1, 2).reshape(B * T, self.dim, g, g)     # (B*T, Dt, g, g)
        f = F.adaptive_avg_pool2d(f, self.grid) if g >= self.grid else \
            F.interpolate(f, size=(self.grid, self.grid), mode="bilinear")  # (B*T, Dt, h, w)
        return f.permute(0, 2, 3, 1).reshape(B, T, self.grid, self.grid, self.dim).float()


def use_bf16(device_type):
    """Run the ViT teacher under bf16 autocast (the cache is float16 anyway) on CUDA and on CPUs
    with AVX-512, where it was 1.7x the fp32 speed; not on an AVX2-only CPU, where it was ~7x
    slower than fp32 (measured here: 1.7 against 12 img/s)."""
    return device_type == "cuda" or torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def local_weights(name):
    """Files on disk that may hold `name`'s pretrained weights (HF hub cache, torch hub cache);
    never touches the network. Returns (first existing path or None, places looked at)."""
    from huggingface_hub import try_to_load_from_cache
    pc = timm.models.get_pretrained_cfg(name)
    found, places = [], []
    if pc is not None and pc.hf_hub_id:
        for fname in ["model.safetensors", "pytorch_model.bin"]:
            places.append(f"HF cache {pc.hf_hub_id}/{fname}")
            hit = try_to_load_from_cache(pc.hf_hub_id, fname)
            found += [hit] if isinstance(hit, str) else []
    if pc is not None and pc.url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(pc.url).name
        places.append(str(path))
        found += [str(path)] if path.is_file() else []
    return (found[0] if found else None), places


def load_weights(vit, path):
    """Load a state-dict file into vit (pos_embed resampled to its size); mismatch raises."""
    path = Path(path)
    sd = safetensors.torch.load_file(str(path)) if path.suffix == ".safetensors" else \
        torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise ValueError(f"{path} is not a flat state dict of tensors")
    sd = timm.models.vision_transformer.checkpoint_filter_fn(sd, vit)  # original DINOv2 -> timm
    want = vit.state_dict()
    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(want[k].shape)}"
              for k in want if k in sd and sd[k].shape != want[k].shape]
    if missing or unexpected or shapes:
        raise ValueError(f"weights file {path} does not match {vit.default_cfg['architecture']}: "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}, shape {shapes[:5]}")
    vit.load_state_dict(sd)


def build_vit(a, grid, weights):
    """The frozen ViT teacher: seeded random init, then `weights` (a file) unless None."""
    if not timm.is_model(a.teacher_name):
        raise ValueError(f"align.teacher_name={a.teacher_name!r} is not a timm model")
    if weights is not None and not Path(weights).is_file():
        raise FileNotFoundError(f"align.teacher_weights={str(weights)!r} does not exist")
    res = a.teacher_res or 14 * grid  # DINOv2's patch is 14 px: one ViT patch per model token
    with seeded_rng(SEED):  # fixed init, and the caller's RNG stream is untouched
        vit = timm.create_model(a.teacher_name, pretrained=False, num_classes=0, img_size=res)
    if res % vit.patch_embed.patch_size[0]:
        raise ValueError(f"align.teacher_res={res} must be a multiple of the teacher's patch "
                         f"{vit.patch_embed.patch_size[0]} (0 = 14 * grid side {grid})")
    if weights is not None:
        load_weights(vit, weights)
    digest = hashlib.sha256()
    for k, v in vit.state_dict().items():  # the weights' identity, for the feature cache key
        digest.update(k.encode())
        digest.update(v.detach().float().contiguous().numpy())
    return ViTTeacher(vit, res, grid, f"{a.teacher_name}@{res}px:{digest.hexdigest()[:16]}")


def build_teacher(cfg):
    """(teacher, used_name) from the full Config (reads cfg.align, cfg.env.res, cfg.model.patch,
    cfg.model.depth). dinov2 without weights falls back to the oracle loudly, unless strict."""
    a = cfg.align
    check_align(a, cfg.model.depth)
    if cfg.env.res % cfg.model.patch:
        raise ValueError(f"env.res={cfg.env.res} is not a multiple of model.patch={cfg.model.patch}")
    grid = cfg.env.res // cfg.model.patch

    def oracle(kind):
        return OracleTeacher(cfg.model.patch, len(PALETTE), len(SHAPES), a.oracle_dim,
                             task_relative=kind == "oracle_task", shuffle=kind == "shuffled")

    if a.teacher in ["oracle", "oracle_task", "shuffled"]:
        return oracle(a.teacher), a.teacher
    if a.teacher == "random":
        return build_vit(a, grid, None), "random"
    if a.teacher != "dinov2":
        raise ValueError(f"align.teacher={a.teacher!r}; expected one of {TEACHERS}")
    path, places = (a.teacher_weights, []) if a.teacher_weights else local_weights(a.teacher_name)
    if path:
        return build_vit(a, grid, path), "dinov2"
    msg = (f"align.teacher=dinov2 but no weights for {a.teacher_name}: align.teacher_weights is "
           f"empty and none of these exist: {places}")
    if a.strict_teacher:
        raise FileNotFoundError(msg + " (align.strict_teacher=true)")
    msg += ". FALLING BACK TO THE ORACLE TEACHER; this run is NOT DINOv2-aligned."
    warnings.warn(msg, stacklevel=2)
    print(f"WARNING: {msg}", flush=True)
    return oracle("oracle"), "oracle (fallback: no dinov2 weights)"


# -----------------------------------------------------------------------------
# teacher-feature cache


def demo_batch(demos, idx, device):
    """A one-frame teacher batch for flat demo frame ids idx (n,), ids into frames.flatten(0, 1)."""
    L1 = demos["frames"].shape[1]
    ep = idx // L1                                                 # (n,) episode of each frame
    frames = demos["frames"].flatten(0, 1)[idx]                    # (n, 3, H, W) uint8
    return {"video": (frames.to(device).float() / 127.5 - 1)[:, None],   # (n, 1, 3, H, W)
            "masks": demos["masks"].flatten(0, 1)[idx].to(device)[:, None],  # (n, 1, H, W)
            "color": demos["color"][ep].to(device), "shape": demos["shape"][ep].to(device),
            "task": demos["task"][ep].to(device), "frame_index": idx[:, None].to(device)}


def teacher_features(cfg, teacher, used_name, demos, chunk=256):
    """Features of every demo frame, (E*(L+1), h, w, Dt) float16, computed once (on the GPU when
    there is one) and kept in cfg.data.cache_dir; None for the oracle family, which is computed
    from the masks per batch instead (exact, and cheaper than gathering from a table)."""
    if isinstance(teacher, OracleTeacher):
        return None
    E, L1, _, H, _ = demos["frames"].shape
    n, grid = E * L1, teacher.grid
    device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = "bf16" if use_bf16(device) else "fp32"  # part of the key: caches never mix
    key = {"data": demos["hash"], "teacher": used_name, "identity": teacher.identity,
           "grid": grid, "frame_res": H, "teacher_res": teacher.res, "autocast": precision}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cfg.data.cache_dir) / f"teacher_{digest}.pt"
    shape = (n, grid, grid, teacher.dim)
    if path.exists():
        feats = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if tuple(feats.shape) != shape:
            raise ValueError(f"{path} holds {tuple(feats.shape)}, expected {shape}; delete it")
        return feats
    if precision == "fp32":
        print(f"teacher features: fp32, not bf16 autocast, on this CPU "
              f"({torch.backends.cpu.get_cpu_capability()}: bf16 is slow without AVX-512)")
    feats = torch.empty(shape, dtype=torch.float16)               # (E*(L+1), h, w, Dt)
    for s in tqdm(range(0, n, chunk), desc=f"teacher features ({used_name})", unit="chunk"):
        idx = torch.arange(s, min(s + chunk, n))                   # (n_chunk,)
        feats[idx] = teacher(demo_batch(demos, idx, device))[:, 0].half().cpu()  # (n_chunk,h,w,Dt)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"  # per process: two runs may build the same cache at once
    torch.save(feats, tmp)
    os.replace(tmp, path)  # atomic: a crash mid-save never leaves a truncated cache
    return feats


def teacher_batch(batch, source):
    """Teacher features (B, T, h, w, Dt) float32 for a batch, from the cache tensor (gathered by
    batch["frame_index"]) or from the teacher module itself."""
    if isinstance(source, Tensor):
        idx = batch["frame_index"]                                 # (B, T) long
        y = source[idx.flatten().to(source.device)]                # (B*T, h, w, Dt) float16
        return y.view(*idx.shape, *y.shape[1:]).to(batch["video"].device).float()
    if isinstance(source, Frozen):
        return source(batch)
    raise TypeError(f"teacher_batch: source is a {type(source).__name__}; expected the feature "
                    "cache (Tensor) or a teacher from build_teacher")
