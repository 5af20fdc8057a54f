"""Meta-World (Farama; MuJoCo, with a scripted expert per task) as an external benchmark, in
world.py's terms: a batch of B envs (a Python loop over them), reset / step / success, the expert,
64 px frames from one fixed free camera with per-pixel entity ids from segmentation, and
appearance perturbations (config.MWSuite) applied at run time, no XML edits. Demonstrations:
make_demos, cached like data.py's. `python data.py configs/metaworld.yaml` shows it (main below).
The measured facts this builds on (render settings, camera, experts): ../shared/METAWORLD.md.

B envs   H = W = metaworld.res   L = metaworld.max_steps   A = 4 actions: xyz deltas + gripper
E episodes   F = frames kept per episode (every metaworld.frame_every steps, from 0)
"""

import importlib.util
import os
import sys

if "mujoco" in sys.modules and "MUJOCO_GL" not in os.environ:
    raise ImportError("mujoco was imported before mworld without MUJOCO_GL set, so it would "
                      "render through GLFW (a display); import mworld first, or set MUJOCO_GL=egl")
os.environ.setdefault("MUJOCO_GL", "egl")  # headless; must precede `import mujoco`; a user's wins
if importlib.util.find_spec("triton"):  # triton's LLVM loaded after Mesa's (EGL, llvmpipe)
    import triton  # noqa: F401  segfaults (torchvision and torch.compile import it): load it first

import warnings
from dataclasses import asdict
from functools import cache
from pathlib import Path

import metaworld
import metaworld.policies
import mujoco
import numpy as np
import torch
from tqdm import tqdm

from config import (
    MW_ACTION_DIM,
    MW_TASKS,
    MW_TEXTURES,
    PALETTE,
    MWSuite,
    check,
    check_choice,
    get_suite,
)
from data import cached, suite_sheet
from world import BACKGROUND, GOAL, GRIPPER, TARGET

ROBOT, DISTRACTOR = 4, 5  # mask ids after world.py's: the arm but the gripper; the visual-only geoms
TASKS, A = MW_TASKS, MW_ACTION_DIM  # task id = TASKS.index(name); action dim (config.py's)
TABLE_BOX = [-0.35, 0.45, 0.35, 0.85]  # x0, y0, x1, y1 (m): where distractors stand on the table
CLEAR = 0.1  # distractors keep this far (m, in xy) from the hand, the object and the goal
SHAPE_TYPE = {"box": mujoco.mjtGeom.mjGEOM_BOX, "sphere": mujoco.mjtGeom.mjGEOM_SPHERE,
              "cylinder": mujoco.mjtGeom.mjGEOM_CYLINDER}
TOO_HIGH = r"Constant\(s\) may be too high"  # the experts warn many times an episode


@cache
def _task(name):
    """(env class, a task with the goal observable) of TASKS name: the experts read the goal."""
    bench = metaworld.MT1(f"{name}-v3", seed=0)
    return bench.train_classes[f"{name}-v3"], bench.train_tasks[0]


def _policy(name):
    return getattr(metaworld.policies, "Sawyer" + "".join(w.capitalize() for w in
                                                          name.split("-")) + "V3Policy")()


@cache
def _pattern(kind, h, w):
    """(h, w) float32 in [-1, 1]: a table texture's pattern over its image (MW_TEXTURES)."""
    v, u = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")
    if kind == "stripes":
        return np.sign(np.sin(2 * np.pi * 6 * v)).astype(np.float32)
    elif kind == "checker":
        return (((6 * u).astype(int) + (6 * v).astype(int)) % 2 * 2 - 1).astype(np.float32)
    elif kind == "noise":  # fixed coarse noise, 16 x 16 blocks
        cells = np.random.default_rng(0).uniform(-1, 1, (16, 16)).astype(np.float32)
        return cells[(v * 16).astype(int), (u * 16).astype(int)]
    raise ValueError(f"table texture {kind!r}; expected one of {MW_TEXTURES[1:]}")


def _hue(rgb, degrees):
    """rgb (3,) turned by `degrees` about the grey axis (Rodrigues); greys stay put."""
    k, th = np.ones(3) / np.sqrt(3), np.radians(degrees)
    out = rgb * np.cos(th) + np.cross(k, rgb) * np.sin(th) + k * (k @ rgb) * (1 - np.cos(th))
    return np.clip(out, 0, 1)


class _Env:
    """One Meta-World env of one task, its renderer, its stock appearance and its mask tables."""

    def __init__(self, name, res):
        cls, task = _task(name)
        self.name, self.env, self.policy = name, cls(), _policy(name)
        self.env.set_task(task)
        # fresh layouts every reset, drawn from env.seed's stream (set_task freezes them)
        self.env._freeze_rand_vec, self.env.seeded_rand_vec = False, True
        m = self.model = self.env.model
        body = [m.body(b).name for b in range(m.nbody)]
        kind = np.zeros(m.nbody, np.uint8)  # mask id of each body, from its chain of parents
        for b in range(m.nbody):
            chain, p = [body[b]], b
            while p:
                p = m.body_parentid[p]
                chain.append(body[p])
            kind[b] = GRIPPER if "hand" in chain else ROBOT if "base" in chain else BACKGROUND \
                if b == 0 or {"tablelink", "RetainingWall", "mocap"} & set(chain) else TARGET
        self.geom_id, self.site_id = kind[m.geom_bodyid], kind[m.site_bodyid]  # (ngeom,), (nsite,)
        sites = [m.site(i).name for i in range(m.nsite)]
        if "goal" in sites:  # button-press-topdown has none: its goal is the button's travel
            self.site_id[sites.index("goal")] = GOAL
        self.table_mat, self.table_tex = m.mat("table_wood").id, m.tex("T_table").id
        t = self.table_tex
        self.tex_slice = slice(m.tex_adr[t], m.tex_adr[t] + m.tex_width[t] * m.tex_height[t] * 3)
        self.stock = {"mat_rgba": m.mat_rgba.copy(), "geom_rgba": m.geom_rgba.copy(),
                      "light": m.light_diffuse.copy(), "tex": m.tex_data[self.tex_slice].copy(),
                      "head": (m.vis.headlight.diffuse.copy(), m.vis.headlight.ambient.copy())}
        self.texture, self.obs, self.distractors = ("wood", 0.0), None, []
        m.vis.quality.offsamples = 0  # no multisampling: 4-7 fps -> 70-127 fps at 64 px
        self.renderer = mujoco.Renderer(m, res, res)
        for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION):
            self.renderer.scene.flags[flag] = 0

    def dress(self, app, mw):
        """Apply an appearance (World._appearance) to this env's model, camera and scene list."""
        m, s = self.model, self.stock
        m.mat_rgba[:] = s["mat_rgba"]
        m.mat_rgba[self.table_mat, :3] = s["mat_rgba"][self.table_mat, :3] * app["table"]
        m.light_diffuse[:] = s["light"] * app["light"]
        m.vis.headlight.diffuse[:], m.vis.headlight.ambient[:] = (x * app["light"] for x in s["head"])
        m.geom_rgba[:] = s["geom_rgba"]
        for g in np.flatnonzero(self.geom_id == TARGET):  # the colour the renderer would use
            own = not np.allclose(s["geom_rgba"][g], [0.5, 0.5, 0.5, 1]) or m.geom_matid[g] < 0
            rgba = s["geom_rgba"][g] if own else s["mat_rgba"][m.geom_matid[g]]
            m.geom_rgba[g] = [*_hue(rgba[:3].astype(np.float64), app["hue"]), rgba[3]]
        if app["texture"] != self.texture:  # re-upload only on change: 512 x 512 RGB
            tex = s["tex"].astype(np.float32)
            if app["texture"][0] != "wood":
                h, w = m.tex_height[self.table_tex], m.tex_width[self.table_tex]
                gain = 1 + app["texture"][1] * _pattern(app["texture"][0], h, w)  # (h, w)
                tex = tex.reshape(h, w, 3) * gain[..., None]
            m.tex_data[self.tex_slice] = np.clip(tex, 0, 255).round().astype(np.uint8).ravel()
            self.renderer._gl_context.make_current()
            mujoco.mjr_uploadTexture(m, self.renderer._mjr_context, self.table_tex)
            self.texture = app["texture"]
        cam = self.camera = mujoco.MjvCamera()
        cam.type = mujoco.mjtCamera.mjCAMERA_FREE
        cam.lookat[:], cam.distance = mw.camera[:3], mw.camera[3]
        cam.azimuth, cam.elevation = mw.camera[4] + app["camera"][0], mw.camera[5] + app["camera"][1]
        self.distractors = app["distractors"]

    def render(self, masks=True):
        """(H, W, 3) uint8 RGB and (H, W) uint8 entity ids of the current state (None without
        masks: the segmentation pass is skipped)."""
        r = self.renderer
        r.update_scene(self.env.data, self.camera)
        scn = r.scene
        for shape, size, pos, rgba in self.distractors:  # visual-only: in the scene, not the model
            check(scn.ngeom < scn.maxgeom, f"scene full ({scn.maxgeom} geoms)")
            g = scn.geoms[scn.ngeom]
            mujoco.mjv_initGeom(g, SHAPE_TYPE[shape], np.full(3, size), pos, np.eye(3).ravel(),
                                rgba)
            g.category, g.segid = mujoco.mjtCatBit.mjCAT_DECOR, scn.ngeom
            g.objtype, g.objid = mujoco.mjtObj.mjOBJ_UNKNOWN, -1
            scn.ngeom += 1
        rgb = r.render()
        if not masks:
            return rgb, None
        r.enable_segmentation_rendering()
        seg = r.render()                                          # (H, W, 2): object id, type
        r.disable_segmentation_rendering()
        oid, typ = seg[..., 0], seg[..., 1]                       # (H, W) each
        mask = np.full(oid.shape, 255, np.uint8)                  # (H, W)
        mask[typ == -1] = BACKGROUND
        g, s = typ == mujoco.mjtObj.mjOBJ_GEOM, typ == mujoco.mjtObj.mjOBJ_SITE
        mask[g], mask[s] = self.geom_id[oid[g]], self.site_id[oid[s]]
        mask[typ == mujoco.mjtObj.mjOBJ_UNKNOWN] = DISTRACTOR
        check((mask != 255).all(), f"{self.name}: segmentation has object types "
              f"{sorted(set(typ[mask == 255].tolist()))}; expected geoms, sites, distractors")
        return rgb, mask

    def close(self):
        """Free the renderer: its GL objects in its own context, then the context. (Renderer.close
        frees the context first, and with several renderers that segfaulted here.)"""
        r = self.renderer
        r._gl_context.make_current()
        r._mjr_context.free()
        r._gl_context.free()
        r._mjr_context = r._gl_context = None


class World:
    """B Meta-World envs in lockstep. reset(suite, task, seed) -> None; step(actions (B, 4));
    success() (B,) bool at the current step; expert() (B, 4); render() -> frames (B, 3, H, W)
    uint8, masks (B, H, W) uint8 (ids BACKGROUND, GRIPPER, GOAL, TARGET, ROBOT, DISTRACTOR).
    Envs are made once per (slot, task) and kept; call close() when done (EGL needs it)."""

    def __init__(self, mw):
        self.mw, self.pool, self.envs = mw, {}, []

    def reset(self, suite, task, seed):
        """New episodes of TASKS ids `task` (B,) long, under suite (an MWSuite); env i's layout
        and appearance are a function of (seed, i) alone: seed an int or a tuple of ints."""
        if not isinstance(suite, MWSuite):
            raise TypeError(f"suite is a {type(suite).__name__}; expected a config.MWSuite "
                            "(config.get_suite(cfg.metaworld.suites, name, MWSuite))")
        if task.dtype != torch.long or task.dim() != 1 or ((task < 0) | (task >= len(TASKS))).any():
            raise ValueError(f"task {task.tolist()}: expected a (B,) long tensor of ids in "
                             f"0..{len(TASKS) - 1} (TASKS {TASKS})")
        seed = (seed,) if isinstance(seed, int) else tuple(seed)
        check(all(isinstance(s, int) and s >= 0 for s in seed), f"seed {seed}; expected an int "
              ">= 0 or a tuple of them")
        check(suite.n_distractors[1] <= self.mw.max_distractors, f"suite.n_distractors = "
              f"{suite.n_distractors} exceeds metaworld.max_distractors = {self.mw.max_distractors}")
        self.envs = []
        for i, t in enumerate(task.tolist()):
            key = (i, TASKS[t])
            if key not in self.pool:
                self.pool[key] = _Env(TASKS[t], self.mw.res)
            e = self.pool[key]
            e.env.seed(int(np.random.SeedSequence([*seed, i]).generate_state(1)[0]))
            e.obs, _ = e.env.reset()
            e.dress(_appearance(suite, e.obs, [*seed, i]), self.mw)
            self.envs.append(e)
        self.task, self.succ = task.clone(), torch.zeros(len(task), dtype=torch.bool)

    def step(self, action):
        """Apply actions (B, 4) in [-1, 1] (clamped); success() then holds this step's."""
        want = (len(self.envs), A)
        if tuple(action.shape) != want:
            raise ValueError(f"action has shape {tuple(action.shape)}; expected {want}: "
                             "(B, 4) xyz deltas and gripper effort in [-1, 1]")
        if not torch.isfinite(action).all():
            bad = (~torch.isfinite(action)).any(1).nonzero()[:, 0].tolist()
            raise ValueError(f"action has NaN/inf in envs {bad}; expected finite values in [-1, 1]")
        a = action.detach().double().clamp(-1, 1).cpu().numpy()          # (B, 4)
        for i, e in enumerate(self.envs):
            e.obs, _, _, _, info = e.env.step(a[i])
            self.succ[i] = bool(info["success"])

    def success(self):
        """(B,) bool: info["success"] of the last step (False right after reset)."""
        return self.succ.clone()

    def expert(self):
        """(B, 4) float32 actions of Meta-World's scripted experts, clamped to [-1, 1]."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=TOO_HIGH)
            a = np.stack([e.policy.get_action(e.obs) for e in self.envs])   # (B, 4)
        return torch.from_numpy(a).float().clamp(-1, 1)

    def render(self, masks=True):
        """frames (B, 3, H, W) uint8 and masks (B, H, W) uint8 entity ids of the current states
        (None without masks: a policy reads frames alone)."""
        rgb, ids = zip(*(e.render(masks) for e in self.envs))
        return torch.from_numpy(np.stack(rgb)).permute(0, 3, 1, 2).contiguous(), \
            torch.from_numpy(np.stack(ids)) if masks else None

    def close(self):
        for e in self.pool.values():
            e.close()
        self.pool, self.envs = {}, []


def _appearance(suite, obs, seed):
    """One env's appearance under suite: each field from its own stream of `seed`, so a suite that
    changes one field leaves the others' draws alone. obs (39,): where the hand, object and goal
    are, which distractors keep clear of."""
    def rng(k):
        return np.random.default_rng([*seed, 1000 + k])

    def sign(g):
        return g.choice([-1.0, 1.0])

    r = rng(0)
    table = np.array(suite.table_colors[r.integers(len(suite.table_colors))])
    table = np.clip(table + r.uniform(-suite.table_jitter, suite.table_jitter, 3), 0, 1)
    r = rng(1)
    texture = (suite.table_textures[r.integers(len(suite.table_textures))],
               float(r.uniform(*suite.texture_contrast)))
    light, hue = float(rng(2).uniform(*suite.light)), rng(3)
    hue = sign(hue) * hue.uniform(*suite.object_hue)
    r = rng(4)
    camera = [sign(r) * r.uniform(*suite.camera_shift) for _ in range(2)]
    r, keep = rng(5), np.stack([obs[0:2], obs[4:6], obs[36:38]])  # hand, object, goal (x, y)
    distractors = []
    for _ in range(r.integers(suite.n_distractors[0], suite.n_distractors[1] + 1)):
        size = r.uniform(0.02, 0.035)
        for _ in range(100):
            xy = r.uniform(TABLE_BOX[:2], TABLE_BOX[2:])
            if (np.linalg.norm(keep - xy, axis=1) > CLEAR + size).all():
                break
        else:
            raise ValueError(f"no distractor position in {TABLE_BOX} clear of the hand, object "
                             f"and goal ({keep.round(2).tolist()}) after 100 draws")
        rgb = PALETTE[suite.distractor_colors[r.integers(len(suite.distractor_colors))]]
        shape = suite.distractor_shapes[r.integers(len(suite.distractor_shapes))]
        distractors.append((shape, size, np.array([*xy, size]), np.array([*rgb, 1], np.float32)))
        keep = np.concatenate([keep, xy[None]])
    return {"table": table, "texture": texture, "light": light, "hue": hue, "camera": camera,
            "distractors": distractors}


def rollout(world, policy, steps, frame_every=1):
    """Run policy(t, frame) -> (B, 4) for `steps` steps from the current state; frame is the
    render at t when t % frame_every == 0, else None (frame_every 0: no rendering at all).
    Returns frames (B, F, 3, H, W) and masks (B, F, H, W) at steps 0, k, 2k, ... (None when
    frame_every is 0), actions (B, L, 4) as executed, success (B,) bool at any step."""
    done, drawn, acts = world.success(), [], []
    for t in range(steps):
        frame = None
        if frame_every and t % frame_every == 0:
            drawn.append(world.render())
            frame = drawn[-1][0]
        acts.append(policy(t, frame))
        world.step(acts[-1])
        done |= world.success()
    if frame_every and steps % frame_every == 0:
        drawn.append(world.render())
    frames, masks = (torch.stack(x, 1) for x in zip(*drawn)) if drawn else (None, None)
    return {"frames": frames, "masks": masks, "actions": torch.stack(acts, 1), "success": done}


# ---- demonstrations ---------------------------------------------------------
def make_demos(cfg):
    """Expert demonstrations (see generate_demos) plus "hash", cached in
    data.cache_dir/mwdemos-<hash>.pt, keyed by the metaworld section (its suites but id aside),
    data.seed, expert_noise, random_action_frac, the id suite and TASKS."""
    mw = cfg.metaworld
    suite = get_suite(mw.suites, "id", MWSuite, "metaworld.suites")
    key = {"metaworld": {k: v for k, v in asdict(mw).items() if k != "suites"},
           "data": {k: getattr(cfg.data, k) for k in ["seed", "expert_noise", "random_action_frac"]},
           "id": asdict(suite), "tasks": TASKS, "version": 1}
    return cached(cfg, "mwdemos", key, lambda: generate_demos(mw, cfg.data, suite))


def generate_demos(mw, data, suite):
    """metaworld.episodes_per_task episodes per task, one per task at a time, deterministic from
    data.seed. Executed actions may be noisy or random (data.expert_noise, random_action_frac);
    the labels are always the expert's. Only every frame_every-th frame is rendered and kept.
      frames (E, F, 3, H, W) uint8   masks (E, F, H, W) uint8   frame_steps (F,) long
      actions (E, L, 4) float32 labels   task (E,) long   success (E,) bool (at any step)"""
    n, L = len(TASKS), mw.max_steps
    world, parts = World(mw), []
    bar = tqdm(total=n * mw.episodes_per_task * L, desc="Meta-World expert demos", unit="step")
    try:
        for c in range(mw.episodes_per_task):
            task = torch.arange(n)
            world.reset(suite, task, (data.seed, c))
            gen = torch.Generator().manual_seed(int(np.random.SeedSequence([data.seed, c, 7])
                                                    .generate_state(1)[0]))
            labels = []

            def explore(t, frame, labels=labels, gen=gen):
                labels.append(world.expert())                               # (n, 4)
                noisy = labels[-1] + data.expert_noise * torch.randn(n, A, generator=gen)
                rand = torch.rand(n, A, generator=gen) * 2 - 1              # (n, 4)
                random = torch.rand(n, 1, generator=gen) < data.random_action_frac  # (n, 1)
                bar.update(n)
                return torch.where(random, rand, noisy).clamp(-1, 1)
            r = rollout(world, explore, L, mw.frame_every)
            parts.append({"frames": r["frames"], "masks": r["masks"], "task": task,
                          "actions": torch.stack(labels, 1), "success": r["success"]})
    finally:
        bar.close()
        world.close()
    out = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    return {**out, "frame_steps": torch.arange(0, L + 1, mw.frame_every)}


# ---- python data.py configs/metaworld.yaml: look at it ----------------------
def main(cfg):
    """A picture of every suite (first frames), an expert GIF per task, the expert's success."""
    from PIL import Image, ImageDraw

    mw, out = cfg.metaworld, Path(cfg.data.cache_dir) / "preview-metaworld"
    out.mkdir(parents=True, exist_ok=True)
    check(mw.suites, "metaworld.suites is empty; expected a Meta-World preset "
          "(configs/metaworld.yaml)")
    world, task = World(mw), torch.arange(len(TASKS))
    try:
        strips = {}
        for name in mw.suites:  # one first frame per task, the model's pixels (n, 3, H, W)
            world.reset(get_suite(mw.suites, name, MWSuite, "metaworld.suites"), task,
                        cfg.data.seed)
            strips[name] = world.render()[0]
        suite_sheet(strips, out / "suites.png")
        print(out / "suites.png", f"(one row per suite, one env per task {TASKS})")
        world.reset(get_suite(mw.suites, "id", MWSuite, "metaworld.suites"), task, cfg.data.seed)
        r = rollout(world, lambda t, f: world.expert(), mw.max_steps, frame_every=2)
        for i, name in enumerate(TASKS):  # GIFs of every 2nd step
            imgs = []
            for t, f in enumerate(r["frames"][i]):
                img = Image.fromarray(f.permute(1, 2, 0).numpy()).resize((256, 256), Image.NEAREST)
                ImageDraw.Draw(img).text((4, 4), f"expert, {name}, step {2 * t}", fill="white")
                imgs.append(img)
            path = out / f"episode-{name}.gif"
            imgs[0].save(path, save_all=True, append_images=imgs[1:], duration=100, loop=0)
            print(path, "(success)" if r["success"][i] else "(not solved)")
        n = 10  # episodes per task, no rendering: what the demos can reach
        wins = torch.zeros(len(TASKS))
        for k in range(n):
            world.reset(get_suite(mw.suites, "id", MWSuite, "metaworld.suites"), task,
                        (cfg.data.seed, 10_000 + k))
            wins += rollout(world, lambda t, f: world.expert(), mw.max_steps, 0)["success"]
        print(f"expert success, {n} episodes of {mw.max_steps} steps per task:")
        for name, w in zip(TASKS, wins.tolist()):
            print(f"  {name:<22} {w / n:7.1%}")
    finally:
        world.close()


def task_id(name):
    """TASKS index of a task name; an unknown name raises, naming the nearest."""
    check_choice("metaworld task", name, TASKS)
    return TASKS.index(name)

