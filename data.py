"""Expert demonstrations of the tabletop world (world.py), cached on disk, and the Dataset of
training windows. `python data.py [config.yaml] [section.key=value ...]` writes a PNG of every
suite and expert GIFs, and prints the scripted expert's success rate on every suite.
B windows   E episodes   L = env.max_steps   K = 1 + env.max_distractors blocks
T = n_ctx + n_future frames per window   Ha action horizon   H = W = env.res
"""

import hashlib
import json
import os
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from tqdm import tqdm

import world

GEN_FIELDS = ["n_episodes", "seed", "expert_noise", "random_action_frac", "gen_batch"]


@dataclass
class DataConfig:
    n_episodes: int = 4000           # expert episodes E
    seed: int = 0                    # generation seed: the demos are a function of it
    n_ctx: int = 1                   # context frames per window (the newest is time t)
    n_future: int = 1                # future frames per window
    stride: int = 4                  # steps between consecutive context / future frames
    horizon: int = 4                 # action chunk length Ha
    expert_noise: float = 0.0        # std of Gaussian noise on executed actions (labels stay clean)
    random_action_frac: float = 0.3  # share of steps that execute a uniform random action instead
    gen_batch: int = 1000            # episodes simulated at once while generating
    cache_dir: str = "cache"         # demos-<hash>.pt lives here

    def __post_init__(self):
        world._check_types(self)
        world._need(min(self.n_episodes, self.n_ctx, self.stride, self.horizon, self.gen_batch)
                    >= 1 and self.n_future >= 0, f"data sizes must be >= 1 (n_future >= 0): {self}")
        world._need(0 <= self.random_action_frac <= 1 and self.expert_noise >= 0,
                    f"data.random_action_frac = {self.random_action_frac} (in [0, 1]), "
                    f"expert_noise = {self.expert_noise} (>= 0)")


# ---- demonstrations and the Dataset -----------------------------------------
def make_demos(cfg):
    """Expert demonstrations (see generate_demos) plus "hash", cached in cache_dir/demos-<hash>.pt,
    keyed by env, the generation fields of data and the id suite."""
    key = {"env": asdict(cfg.env), "data": {k: getattr(cfg.data, k) for k in GEN_FIELDS},
           "id": asdict(world.get_suite(cfg.suites, "id")), "version": 1}
    h = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(cfg.data.cache_dir) / f"demos-{h}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    demos = {**generate_demos(cfg.env, cfg.data, world.get_suite(cfg.suites, "id")), "hash": h}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"  # per process: two runs may build the same cache at once
    torch.save(demos, tmp)
    os.replace(tmp, path)  # atomic: a crash never leaves a truncated cache
    return demos


def generate_demos(env, data, suite):
    """The expert on E episodes of L steps, gen_batch at a time, deterministic from data.seed.
    Executed actions may be noisy or random; the labels are always the expert's. Returns
      frames (E, L+1, 3, H, W) uint8   masks (E, L+1, H, W) uint8   actions (E, L, 2) float32
      gripper (E, L+1, 2)   blocks (E, L+1, K, 2)   goal (E, 2)   size (E, K)   present (E, K)
      task (E,) long   color, shape (E, K) long   success (E,) bool (at any step)
      table (E, 3)   texture (E,)   brightness (E,)   tint (E, 3)   (the appearance)"""
    E, L = data.n_episodes, env.max_steps
    gen = torch.Generator().manual_seed(data.seed)
    tasks = torch.tensor(world.task_ids(env))                                 # (4,) one per colour
    out = {"task": tasks[torch.arange(E) % len(tasks)],                      # (E,) balanced
           "actions": torch.empty(E, L, 2), "success": torch.zeros(E, dtype=torch.bool)}

    def put(key, idx, v, per_step=False):  # allocate out[key] as (E, [L+1,] ...) on first use
        if key not in out:
            out[key] = torch.empty(((E, L + 1) if per_step else (E,)) + v.shape[1:], dtype=v.dtype)
        out[key][idx] = v

    bar = tqdm(total=E * L, desc=f"expert demos ({env.task}, res {env.res})", unit="step")
    for i in range(0, E, data.gen_batch):
        sl = slice(i, min(i + data.gen_batch, E))
        state, app = world.reset(env, suite, out["task"][sl], gen)
        n = len(state["task"])
        for key, v in [*app.items(), *[(k, state[k]) for k in ("goal", "size", "present")]]:
            put(key, sl, v)
        for t in range(L + 1):
            frames, masks = world.render(env, state, app)           # (n, 3, H, W), (n, H, W)
            for key, v in [("frames", frames), ("masks", masks), ("gripper", state["gripper"]),
                           ("blocks", state["blocks"])]:
                put(key, (sl, t), v, per_step=True)
            out["success"][sl] |= world.success(env, state)
            if t == L:
                break
            label = world.expert(env, state)                                  # (n, 2)
            noisy = label + data.expert_noise * torch.randn(n, 2, generator=gen)  # (n, 2)
            rand = torch.rand(n, 2, generator=gen) * 2 - 1                    # (n, 2)
            explore = torch.rand(n, 1, generator=gen) < data.random_action_frac  # (n, 1)
            state = world.step(env, state, torch.where(explore, rand, noisy).clamp(-1, 1))
            out["actions"][sl, t] = label
            bar.update(n)
    bar.close()
    return out


class Dataset(torch.utils.data.Dataset):
    """Training windows over make_demos output: window i is episode i // W at time t = i % W, with
    W = L - Ha + 1 windows per episode. Frames before 0 repeat frame 0; frames after L repeat L.

        time     t-(n_ctx-1)*stride ... t-stride   t | t+stride ... t+n_future*stride
        video    [ context frames ..................] | [ future frames ................ ]
        actions                                    t, t+1, ..., t+Ha-1
    """

    def __init__(self, demos, data):
        self.demos, self.data, self.L = demos, data, demos["actions"].shape[1]
        self.per_ep = self.L - data.horizon + 1
        world._need(self.per_ep >= 1,
                    f"data.horizon = {data.horizon} exceeds the episode length {self.L}")
        self.frames = demos["frames"].flatten(0, 1)                            # (E*(L+1), 3, H, W)
        self.masks = demos["masks"].flatten(0, 1)                              # (E*(L+1), H, W)
        self.actions = demos["actions"].flatten(0, 1)                          # (E*L, 2)
        ctx = torch.arange(-data.n_ctx + 1, 1) * data.stride                   # (n_ctx,)
        self.offsets = torch.cat([ctx, torch.arange(1, data.n_future + 1) * data.stride])  # (T,)

    def __len__(self):
        return self.demos["actions"].shape[0] * self.per_ep

    def __getitem__(self, i):
        return {k: v[0] for k, v in self.batch(torch.tensor([i])).items()}

    def batch(self, idx):
        """Windows idx (B,) long -> dict of batched tensors (shapes below)."""
        if idx.dtype != torch.long or idx.dim() != 1 or ((idx < 0) | (idx >= len(self))).any():
            raise IndexError(f"window indices must be a (B,) long tensor in [0, {len(self)})")
        e, t = idx // self.per_ep, idx % self.per_ep                           # (B,) each
        frame_index = e[:, None] * (self.L + 1) + (t[:, None] + self.offsets).clamp(0, self.L)
        act = e[:, None] * self.L + t[:, None] + torch.arange(self.data.horizon)  # (B, Ha)
        return {"video": self.frames[frame_index].float() / 127.5 - 1,  # (B, T, 3, H, W) in [-1, 1]
                "actions": self.actions[act].float(),                   # (B, Ha, 2) in [-1, 1]
                "task": self.demos["task"][e],                          # (B,) long
                "masks": self.masks[frame_index],                       # (B, T, H, W) uint8 ids
                "color": self.demos["color"][e],                        # (B, K) long
                "shape": self.demos["shape"][e],                        # (B, K) long
                "frame_index": frame_index}                             # (B, T) long


# ---- python data.py [config.yaml] [section.key=value ...]: look at the world -
def main(argv):
    from matplotlib.figure import Figure  # not pyplot: no display backend to pick
    from PIL import Image

    from train import load_config  # here, not at the top: train.py imports this file
    cfg = load_config(argv[0] if argv else "config.yaml", argv[1:])
    env, out, seed = cfg.env, Path(cfg.data.cache_dir) / "preview", cfg.data.seed
    out.mkdir(parents=True, exist_ok=True)

    def worlds(name, n):  # n worlds of suite `name`, the tasks cycling over the colours
        task = torch.tensor(world.task_ids(env)).repeat(n // 4 + 1)[:n]       # (n,)
        gen = torch.Generator().manual_seed(seed)
        return world.reset(env, world.get_suite(cfg.suites, name), task, gen)

    n, fig = 8, Figure(figsize=(8 * 1.2, len(cfg.suites) * 1.3))  # n worlds per suite
    for ax, name in zip(fig.subplots(len(cfg.suites), 1, squeeze=False)[:, 0], cfg.suites):
        frames, _ = world.render(env, *worlds(name, n))                       # (n, 3, H, W)
        strip = frames.permute(2, 0, 3, 1).reshape(env.res, n * env.res, 3)   # (H, n*W, 3)
        ax.imshow(strip.numpy(), interpolation="nearest")
        ax.set_xticks([]), ax.set_yticks([]), ax.set_ylabel(name, rotation=0, ha="right")
    fig.savefig(out / "suites.png", dpi=100, bbox_inches="tight")
    print(out / "suites.png")
    clean = replace(cfg.data, n_episodes=4, expert_noise=0.0, random_action_frac=0.0)  # 1 per task
    demos = generate_demos(env, clean, world.get_suite(cfg.suites, "id"))
    side = env.res * max(1, 256 // env.res)
    for e, frames in enumerate(demos["frames"]):                             # (L+1, 3, H, W)
        imgs = [Image.fromarray(f.permute(1, 2, 0).numpy()).resize((side, side), 0) for f in frames]
        path = out / f"episode-{world.task_names(env)[int(demos['task'][e])]}.gif"
        imgs[0].save(path, save_all=True, append_images=imgs[1:], duration=150, loop=0)
        print(path, "(success)" if demos["success"][e] else "(FAILED)")
    n = 500  # episodes per suite: standard error under 1 point near 100%
    print(f"expert success, {n} episodes of {env.max_steps} steps, task {env.task}:")
    for name in cfg.suites:
        state, _ = worlds(name, n)
        done = world.success(env, state)                                      # (n,) bool
        for _ in range(env.max_steps):
            state = world.step(env, state, world.expert(env, state))
            done |= world.success(env, state)
        print(f"  {name:<16} {done.float().mean().item():7.1%}")


if __name__ == "__main__":
    main(sys.argv[1:])
