"""Expert demonstrations of the tabletop world (world.py), cached on disk, and the Dataset of
training windows. `python data.py [config.yaml] [section.key=value ...]` writes a PNG of every
suite and expert GIFs, and prints the scripted expert's success rate on every suite (for a
Meta-World preset, configs/metaworld.yaml, mworld.main does the same for Meta-World).
B windows   E episodes   L = env.max_steps   K = 1 + env.max_distractors blocks
T = n_ctx + n_future frames per window   Ha action horizon   H = W = env.res
"""

import hashlib
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from torchvision.utils import make_grid
from tqdm import tqdm

import world
from config import atomic_save, check, cli_config, get_suite, is_metaworld

GEN_FIELDS = ["n_episodes", "seed", "expert_noise", "random_action_frac"]  # what the demos depend on
CLIP_FIELDS = ["n_clips", "suite", "effector", "seed"]  # what the clips depend on
CHUNK = 1000  # episodes simulated at once; the draws depend on it, so it is fixed, not a knob


# ---- demonstrations and the Dataset -----------------------------------------
def make_demos(cfg):
    """Expert demonstrations (see generate_demos) plus "hash", cached in cache_dir/demos-<hash>.pt,
    keyed by env, the generation fields of data and the id suite."""
    key = {"env": asdict(cfg.env), "data": {k: getattr(cfg.data, k) for k in GEN_FIELDS},
           "id": asdict(get_suite(cfg.suites, "id")), "version": 3}
    return cached(cfg, "demos", key, lambda: generate_demos(cfg.env, cfg.data,
                                                            get_suite(cfg.suites, "id")))


def make_data(cfg):
    """A run's (demos, clips): on Meta-World mworld.make_demos and no clips (config refuses them
    there), else the tabletop's make_demos and make_clips (None without video.n_clips)."""
    if is_metaworld(cfg):
        import mworld  # here only: it loads metaworld and sets up headless rendering
        return mworld.make_demos(cfg), None
    return make_demos(cfg), make_clips(cfg)


def make_clips(cfg):
    """Action-free clips of another embodiment (see generate_clips) plus "hash", cached in
    cache_dir/clips-<hash>.pt; None when video.n_clips is 0."""
    v = cfg.video
    if not v.n_clips:
        return None
    key = {"env": asdict(cfg.env), "video": {k: getattr(v, k) for k in CLIP_FIELDS},
           "suite": asdict(get_suite(cfg.suites, v.suite)), "version": 3}
    return cached(cfg, "clips", key, lambda: generate_clips(cfg.env, v, get_suite(cfg.suites,
                                                                                  v.suite)))


def cached(cfg, kind, key, generate):
    h = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(cfg.data.cache_dir) / f"{kind}-{h}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    out = {**generate(), "hash": h}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(out, path)
    return out


def episodes(env, suite, E, seed, controller, desc, effector="gripper"):
    """E episodes of L steps from suite, CHUNK at a time, deterministic from seed; after each
    chunk's reset, controller(gen, state) gives the chunk's policy step(t, state, frame) -> (n, 2).
      frames (E, L+1, 3, H, W) uint8   masks (E, L+1, H, W) uint8
      gripper (E, L+1, 2)   blocks (E, L+1, K, 2)   goal (E, 2)   size (E, K)   present (E, K)
      task (E,) long   color, shape (E, K) long   success (E,) bool (at any step)
      table (E, 3)   texture (E,)   brightness (E,)   tint (E, 3)   effector (E,) (the appearance)"""
    L, gen = env.max_steps, torch.Generator().manual_seed(seed)
    tasks = torch.tensor(world.task_ids(env))                                 # (4,) one per colour
    task = tasks[torch.arange(E) % len(tasks)]                                # (E,) balanced
    parts, bar = [], tqdm(total=E * L, desc=f"{desc} ({env.task}, res {env.res})", unit="step")
    for i in range(0, E, CHUNK):
        state, app = world.reset(env, suite, task[i:i + CHUNK], gen)
        app["effector"] = app["effector"] + list(world.EFFECTORS).index(effector)
        step = controller(gen, state)

        def counted(t, s, f, step=step):
            bar.update(len(s["task"]))
            return step(t, s, f)
        r = world.rollout(env, state, app, counted, L)
        parts.append({**app, "goal": state["goal"], "size": state["size"],
                      "present": state["present"], "task": state["task"],
                      "frames": r["frames"], "masks": r["masks"], "success": r["success"],
                      "gripper": torch.stack([s["gripper"] for s in r["states"]], 1),
                      "blocks": torch.stack([s["blocks"] for s in r["states"]], 1)})
    bar.close()
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def generate_demos(env, data, suite):
    """The robot's demonstrations: episodes() of the scripted expert, deterministic from data.seed,
    plus actions (E, L, 2) float32, the labels. Executed actions may be noisy or random; the
    labels are always the expert's."""
    chunks = []  # the labels of each chunk, (n, 2) per step

    def explore(gen, state):
        chunks.append([])

        def step(t, state, frame):
            chunks[-1].append(world.expert(env, state))                      # (n, 2)
            n = len(state["task"])
            noisy = chunks[-1][-1] + data.expert_noise * torch.randn(n, 2, generator=gen)
            rand = torch.rand(n, 2, generator=gen) * 2 - 1                    # (n, 2)
            random = torch.rand(n, 1, generator=gen) < data.random_action_frac  # (n, 1)
            return torch.where(random, rand, noisy).clamp(-1, 1)
        return step
    out = episodes(env, suite, data.n_episodes, data.seed, explore, "expert demos")
    return {**out, "actions": torch.cat([torch.stack(c, 1) for c in chunks])}  # (E, L, 2)


def generate_clips(env, video, suite):
    """Action-free clips: episodes() of video.effector over suite, deterministic from video.seed;
    the hand moves by world.hand with a style drawn per episode, the gripper by the expert. No
    actions are stored: nothing of them can reach the action loss."""
    def controller(gen, state):
        style = torch.rand(len(state["task"]), 2, generator=gen)             # (n, 2)
        if video.effector == "hand":
            return lambda t, s, f: world.hand(env, s, style)
        return lambda t, s, f: world.expert(env, s)
    return episodes(env, suite, video.n_clips, video.seed, controller,
                    f"action-free clips, {video.effector}", video.effector)


class Dataset(torch.utils.data.Dataset):
    """Training windows over make_demos (or make_clips, or mworld.make_demos) output. Demos keep
    the frames of steps frame_steps (F,) = 0, k, 2k, ... (mworld's; without the key every step's,
    k = 1, the tabletop's) and the actions of every step. Window i is episode i // W at time
    t = k * (i % W), a kept frame, with W = (L - Ha) // k + 1 windows per episode; data.stride
    must be a multiple of k, so every context and future frame is a kept one. Frames before 0
    repeat frame 0; frames after the last kept one repeat it. Clips have no actions: their
    windows' actions are zeros, never a label (the action loss reads the demos' windows only).
    frame_index counts from first_frame: the row of the frame in a teacher-feature table of demos
    and clips (episode e's kept frame f is row e * F + f).

        time     t-(n_ctx-1)*stride ... t-stride   t | t+stride ... t+n_future*stride
        video    [ context frames ..................] | [ future frames ................ ]
        actions                                    t, t+1, ..., t+Ha-1
    """

    def __init__(self, demos, data, first_frame=0):
        self.demos, self.data, self.first = demos, data, first_frame
        self.E, self.F = demos["frames"].shape[:2]
        F = self.F  # kept frames per episode
        steps = demos["frame_steps"] if "frame_steps" in demos else torch.arange(F)  # (F,)
        self.every = int(steps[1] - steps[0]) if F > 1 else 1  # k: steps between kept frames
        check(torch.equal(steps, torch.arange(F) * self.every), f"demos' frame_steps "
              f"{steps.tolist()}; expected 0, k, 2k, ... (one frame every k steps)")
        check(data.stride % self.every == 0, f"data.stride = {data.stride}; expected a multiple "
              f"of {self.every}, the steps between the demos' kept frames (metaworld.frame_every)")
        self.L = demos["actions"].shape[1] if "actions" in demos else (F - 1) * self.every
        self.per_ep = (self.L - data.horizon) // self.every + 1 if self.L >= data.horizon else 0
        check(self.per_ep >= 1, f"data.horizon = {data.horizon} exceeds the episode length {self.L}")
        self.frames = demos["frames"].flatten(0, 1)                            # (E*F, 3, H, W)
        self.masks = demos["masks"].flatten(0, 1)                              # (E*F, H, W)
        self.actions = demos["actions"].flatten(0, 1) if "actions" in demos else \
            torch.zeros(self.E * self.L, 2)                                    # (E*L, A = 2)
        ctx = torch.arange(-data.n_ctx + 1, 1) * data.stride                   # (n_ctx,)
        self.offsets = torch.cat([ctx, torch.arange(1, data.n_future + 1) * data.stride])  # (T,)
        # the tabletop's block colours and shapes, for its oracle teacher; Meta-World has none
        self.extra = [k for k in ["color", "shape"] if k in demos]

    def __len__(self):
        return self.E * self.per_ep

    def __getitem__(self, i):
        return {k: v[0] for k, v in self.batch(torch.tensor([i])).items()}

    def batch(self, idx):
        """Windows idx (B,) long -> dict of batched tensors (shapes below)."""
        if idx.dtype != torch.long or idx.dim() != 1 or ((idx < 0) | (idx >= len(self))).any():
            raise IndexError(f"window indices must be a (B,) long tensor in [0, {len(self)})")
        e, t = idx // self.per_ep, idx % self.per_ep * self.every              # (B,) each
        frame = ((t[:, None] + self.offsets) // self.every).clamp(0, self.F - 1)  # (B, T) kept
        frame_index = e[:, None] * self.F + frame                              # (B, T)
        act = e[:, None] * self.L + t[:, None] + torch.arange(self.data.horizon)  # (B, Ha)
        return {"video": world.to_float(self.frames[frame_index]),     # (B, T, 3, H, W) in [-1, 1]
                "actions": self.actions[act].float(),                   # (B, Ha, A) in [-1, 1]
                "task": self.demos["task"][e],                          # (B,) long
                "masks": self.masks[frame_index],                       # (B, T, H, W) uint8 ids
                **{k: self.demos[k][e] for k in self.extra},            # color, shape (B, K) long
                "frame_index": self.first + frame_index}                # (B, T) long


def suite_sheet(strips, path, label=120):
    """One PNG: a labelled row per suite of its frames, strips = {suite name: (n, 3, H, W)}."""
    rows = []
    for name, frames in strips.items():
        strip = Image.fromarray(make_grid(frames, nrow=len(frames), padding=2, pad_value=255)
                                .byte().permute(1, 2, 0).numpy())
        row = Image.new("RGB", (label + strip.width, strip.height), "white")
        row.paste(strip, (label, 0))
        ImageDraw.Draw(row).text((4, strip.height // 2 - 6), name, fill="black")
        rows.append(row)
    sheet = Image.new("RGB", (rows[0].width, sum(r.height for r in rows)), "white")
    for i, row in enumerate(rows):
        sheet.paste(row, (0, i * row.height))
    sheet.save(path)


# ---- python data.py [config.yaml] [section.key=value ...]: look at the world -
def main(argv):
    cfg = cli_config(argv or ["config.yaml"], "usage: python data.py [CONFIG] [section.key=value ...]")
    if is_metaworld(cfg):  # a Meta-World preset (configs/metaworld.yaml): mworld.py shows it
        import mworld  # here only: it loads metaworld and sets up headless rendering
        return mworld.main(cfg)
    env, out, seed = cfg.env, Path(cfg.data.cache_dir) / "preview", cfg.data.seed
    out.mkdir(parents=True, exist_ok=True)

    def worlds(name, n):  # n worlds of suite `name`, the tasks cycling over the colours
        task = torch.tensor(world.task_ids(env)).repeat(n // 4 + 1)[:n]       # (n,)
        gen = torch.Generator().manual_seed(seed)
        return world.reset(env, get_suite(cfg.suites, name), task, gen)

    n, side = 8, max(64, env.res)  # worlds per suite, pixels per frame
    suite_sheet({name: torch.nn.functional.interpolate(  # nearest, (n, 3, side, side)
        world.render(env, *worlds(name, n))[0].float(), size=side) for name in cfg.suites},
        out / "suites.png")
    print(out / "suites.png", f"(one row per suite, {n} worlds each, res {env.res})")
    clean = replace(cfg.data, n_episodes=4, expert_noise=0.0, random_action_frac=0.0)  # 1 per task
    demos = generate_demos(env, clean, get_suite(cfg.suites, "id"))
    big = env.res * max(1, 256 // env.res)

    def gifs(episodes, kind, label):  # one GIF per episode, each frame labelled with its step
        for e, frames in enumerate(episodes["frames"]):                      # (L+1, 3, H, W)
            name, imgs = world.TASK_NAMES[int(episodes["task"][e])], []
            for t, f in enumerate(frames):
                img = Image.fromarray(f.permute(1, 2, 0).numpy()).resize((big, big), Image.NEAREST)
                ImageDraw.Draw(img).text((4, 4), f"{label}, {name}, step {t}", fill="white")
                imgs.append(img)
            path = out / f"{kind}-{name}.gif"
            imgs[0].save(path, save_all=True, append_images=imgs[1:], duration=150, loop=0)
            print(path, "(success)" if episodes["success"][e] else "(not solved)")
    gifs(demos, "episode", "expert")
    if cfg.video.n_clips:  # the action-free clips: one per task, from their own band
        gifs(generate_clips(env, replace(cfg.video, n_clips=4),
                            get_suite(cfg.suites, cfg.video.suite)),
             "clip", f"clip ({cfg.video.effector}, no actions)")
    n = 500  # episodes per suite: standard error under 1 point near 100%
    print(f"expert success, {n} episodes of {env.max_steps} steps, task {env.task}:")
    for name in cfg.suites:
        state, app = worlds(name, n)
        r = world.rollout(env, state, app, lambda t, s, f: world.expert(env, s), env.max_steps,
                          draw=False)
        print(f"  {name:<16} {r['success'].float().mean().item():7.1%}")


if __name__ == "__main__":
    main(sys.argv[1:])
