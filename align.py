"""AGRA (arXiv 2606.12217): a projector maps the video DiT's hidden states at `align.layer` onto
a frozen teacher's patch features, token by token, with REPA's negative-cosine loss. Teachers:
  dinov2       timm ViT (DINOv2) on the frames, patch tokens resampled to the model's grid
  random       the same ViT with frozen random weights (control: semantics vs "any extra loss")
  oracle       task-agnostic entity-kind shares per token from the masks (idealised semantics);
               on Meta-World the kinds are its mask ids (background, gripper, goal, task object,
               rest of the robot, distractors)
  oracle_task  task-relative classes (target / distractor ...): privileged ablation
  shuffled     oracle features with each frame's tokens permuted (control: no spatial match)
Every teacher is an nn.Module called as teacher(batch) on the data batch dict -> (B, T, h, w, Dt).

# B batch   T frames   h, w token grid   N = h*w   D width   Dt teacher dim   p patch
"""

import hashlib
import json
import warnings
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from huggingface_hub import try_to_load_from_cache
from torch import Tensor, nn
from tqdm import tqdm

from config import (
    MW_ENTITIES,
    PALETTE,
    SHAPES,
    atomic_save,
    check,
    frame_res,
    is_metaworld,
    seeded_rng,
)
from world import to_float

SEED = 1234  # fixes the oracle lift, the shuffles and the random ViT across runs


# ---- the loss ---------------------------------------------------------------
def align_loss(z: Tensor, y: Tensor) -> Tensor:
    """REPA alignment loss: minus the mean per-token cosine similarity (-1 at best, +1 at worst).
    Paper -> code:  h_phi(h_t^[n]) -> z  (B, T*N, Dt)  projector output at `align.layer`
                    y_*^[n]        -> y  (B, T*N, Dt)  frozen teacher features, same frame and patch
                    sim(., .)      -> F.cosine_similarity over the last dim
    """
    return -F.cosine_similarity(z, y.detach(), dim=-1).mean()


def spatial_normalize(y, eps=1e-6):
    """Standardise each channel over each frame's tokens (iREPA): (..., N, Dt) -> same shape.
    Removes the direction all tokens share (mostly background), so the loss cannot saturate on it.
    """
    mean = y.mean(dim=-2, keepdim=True)                            # (..., 1, Dt)
    std = y.std(dim=-2, keepdim=True, unbiased=False)              # (..., 1, Dt)
    return (y - mean) / (std + eps)                                # (..., N, Dt)


def targets(batch, source, normalize):
    """The teacher's features for a batch, the loss's y: (B, T*N, Dt) float32, from the feature
    cache (a tensor, gathered by batch["frame_index"]) or from the teacher module itself, each
    frame standardised when normalize == "spatial"."""
    if isinstance(source, Tensor):
        idx = batch["frame_index"]                                 # (B, T) long
        y = source[idx.flatten().to(source.device)]                # (B*T, h, w, Dt) float16
        y = y.view(*idx.shape, *y.shape[1:]).to(batch["video"].device).float()
    else:
        y = source(batch)                                          # (B, T, h, w, Dt)
    y = y.flatten(2, 3)                                            # (B, T, N, Dt)
    y = spatial_normalize(y) if normalize == "spatial" else y      # (B, T, N, Dt)
    return y.flatten(1, 2)                                         # (B, T*N, Dt)


# ---- teachers ---------------------------------------------------------------
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
    entities > 0 (Meta-World, mworld's mask ids 0..entities-1): each mask id is its own kind,
    one-hot; its batches carry masks only, no block colours or shapes.
    shuffle: each frame's tokens permuted by a permutation fixed per frame, keyed by the global
    batch["frame_index"] when present (same on every path), else by the position t in the window.
    """

    def __init__(self, patch, n_colors, n_shapes, dim, task_relative=False, shuffle=False,
                 entities=0):
        super().__init__()
        self.patch, self.n_colors, self.n_shapes = patch, n_colors, n_shapes
        self.task_relative, self.shuffle, self.dim = task_relative, shuffle, dim
        self.entities = entities
        check(not (entities and task_relative), "the oracle teacher: entities (Meta-World) and "
              "task_relative (the tabletop's oracle_task) exclude each other")
        self.n_kinds = entities or (5 if task_relative else 3 + n_colors + n_shapes)
        if dim < self.n_kinds:
            raise ValueError(f"align.oracle_dim={dim} < {self.n_kinds} entity kinds")
        g = torch.Generator().manual_seed(SEED)
        q, _ = torch.linalg.qr(torch.randn(dim, self.n_kinds, generator=g))  # (Dt, kinds)
        self.register_buffer("lift", q.T.contiguous())             # (kinds, Dt) orthonormal rows
        self.identity = (f"oracle{'_mw' * bool(entities)}{'_task' * task_relative}"
                         f"{'_shuffled' * shuffle}:{self.n_kinds}")

    def kind_table(self, batch, n_ids):
        """Mask id -> kind shares (B, n_ids, kinds); ids 0 bg, 1 gripper, 2 goal, 3 + b block b
        (the tabletop), or each id its own kind (entities: Meta-World)."""
        eye = torch.eye(self.n_kinds, device=self.lift.device)     # (kinds, kinds)
        B = batch["masks"].shape[0]
        if self.entities:
            return eye.expand(B, -1, -1)                           # (B, n_ids = kinds, kinds)
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
        n_ids = self.entities or 3 + batch["color"].shape[1]
        if int(masks.max()) >= n_ids:
            raise ValueError(f"masks hold id {int(masks.max())}; expected ids 0..{n_ids - 1} ("
                             + (f"{n_ids} Meta-World entities)" if self.entities
                                else f"{n_ids - 3} blocks)"))
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
    """timm ViT patch tokens on the model's grid: frames upsampled to res = 14 * grid px, so each
    ViT patch covers exactly one of our tokens."""

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
            tok = self.vit.forward_features(x)[:, self.vit.num_prefix_tokens:].float()  # B*T,N,Dt
        return tok.reshape(B, T, self.grid, self.grid, self.dim)   # (B, T, h, w, Dt), row-major


def use_bf16(device_type):
    """Run the ViT teacher under bf16 autocast (the cache is float16 anyway) on CUDA and on CPUs
    with AVX-512, where it was 1.7x the fp32 speed; not on an AVX2-only CPU, where it was ~7x
    slower than fp32 (measured here: 1.7 against 12 img/s)."""
    return device_type == "cuda" or torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def build_vit(a, grid, weights):
    """The frozen ViT teacher on `grid` tokens a side: seeded random init, or the weights file
    (DINOv2's original keys or timm's; timm resamples pos_embed to our input size)."""
    check(timm.is_model(a.teacher_name), f"align.teacher_name = {a.teacher_name!r}; expected a "
          "timm model name")
    if weights is not None and not Path(weights).is_file():
        raise FileNotFoundError(f"align.teacher_weights = {str(weights)!r} does not exist")
    res = 14 * grid  # DINOv2's patch is 14 px: one ViT patch per model token
    overlay = {"file": str(weights)} if weights else None
    with seeded_rng(SEED):  # a fixed init, and the caller's RNG stream untouched
        try:
            vit = timm.create_model(a.teacher_name, pretrained=weights is not None, num_classes=0,
                                    img_size=res, pretrained_cfg_overlay=overlay)
        except RuntimeError as e:  # load_state_dict's missing / unexpected keys and shapes
            raise ValueError(f"align.teacher_weights = {weights}: not weights of "
                             f"{a.teacher_name} ({' '.join(str(e).split())[:300]})") from e
    check(res % vit.patch_embed.patch_size[0] == 0, f"align.teacher_name = {a.teacher_name}: its "
          f"patch {vit.patch_embed.patch_size[0]} does not divide the input side {res} = 14 * grid")
    digest = hashlib.sha256()
    for k, v in vit.state_dict().items():  # the weights' identity, for the feature cache key
        digest.update(k.encode())
        digest.update(v.detach().float().contiguous().numpy())
    return ViTTeacher(vit, res, grid, f"{a.teacher_name}@{res}px:{digest.hexdigest()[:16]}")


def build_teacher(cfg):
    """(teacher, the teacher's name as used) from a Config. dinov2 without a weights file looks in
    the Hugging Face cache (never the network), and without weights there falls back to the
    oracle loudly, or raises with align.strict_teacher."""
    a, grid = cfg.align, frame_res(cfg) // cfg.model.patch

    def oracle(kind):  # Meta-World's kinds: mworld's 6 mask ids (config refuses oracle_task there)
        return OracleTeacher(cfg.model.patch, len(PALETTE), len(SHAPES), a.oracle_dim,
                             task_relative=kind == "oracle_task", shuffle=kind == "shuffled",
                             entities=len(MW_ENTITIES) if is_metaworld(cfg) else 0)

    if a.teacher in ["oracle", "oracle_task", "shuffled"]:
        return oracle(a.teacher), a.teacher
    if a.teacher == "random":
        return build_vit(a, grid, None), "random"
    path = a.teacher_weights
    hub = timm.models.get_pretrained_cfg(a.teacher_name)
    hub = hub.hf_hub_id if hub is not None else None
    if not path and hub:
        hit = try_to_load_from_cache(hub, "model.safetensors")
        path = hit if isinstance(hit, str) else ""
    if path:
        return build_vit(a, grid, path), "dinov2"
    msg = (f"align.teacher = dinov2 but no weights for {a.teacher_name}: align.teacher_weights is "
           f"empty and the Hugging Face cache has no {hub}/model.safetensors")
    if a.strict_teacher:
        raise FileNotFoundError(msg + " (align.strict_teacher = true)")
    msg += ". FALLING BACK TO THE ORACLE TEACHER; this run is NOT DINOv2-aligned."
    warnings.warn(msg, stacklevel=2)
    print(f"WARNING: {msg}", flush=True)
    return oracle("oracle"), "oracle (fallback: no dinov2 weights)"


# ---- the teacher-feature cache ---------------------------------------------


def demo_batch(demos, idx, device):
    """A one-frame teacher batch for flat demo frame ids idx (n,), ids into frames.flatten(0, 1)."""
    L1 = demos["frames"].shape[1]
    ep = idx // L1                                                 # (n,) episode of each frame
    frames = demos["frames"].flatten(0, 1)[idx]                    # (n, 3, H, W) uint8
    return {"video": to_float(frames.to(device))[:, None],         # (n, 1, 3, H, W)
            "masks": demos["masks"].flatten(0, 1)[idx].to(device)[:, None],  # (n, 1, H, W)
            **{k: demos[k][ep].to(device) for k in ["color", "shape"] if k in demos},  # tabletop
            "task": demos["task"][ep].to(device), "frame_index": idx[:, None].to(device)}


def teacher_features(cfg, teacher, used_name, demos, clips=None, chunk=256):
    """Features of every demo frame, then every clip frame (the rows batch["frame_index"] counts),
    (E*(L+1), h, w, Dt) float16, computed once (on the GPU when there is one) and kept in
    cfg.data.cache_dir; None for the oracle family, which is computed from the masks per batch
    instead (exact, and cheaper than gathering from a table)."""
    if isinstance(teacher, OracleTeacher):
        return None
    if clips is not None:  # one table of every frame a window can hold
        demos = {**{k: torch.cat([demos[k], clips[k]]) for k in ["frames", "masks", "color",
                                                                  "shape", "task"]},
                 "hash": f"{demos['hash']}+{clips['hash']}"}
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
    atomic_save(feats, path)
    return feats
