"""The tabletop world, batched in torch: reset/step/success, the scripted experts, render, the
rollout loop, and Policy, a trained WAM as the policy that drives it. data.py turns the world into
demonstrations; eval.py runs policies in it.

World coordinates are [0, 1]^2, x = column, y = row; pixel (i, j) is centred on ((j + .5) / res,
(i + .5) / res). Physics treats every block as a disc of radius `size`; shapes are only drawn.
State (physics) and appearance (pixels only) are separate dicts: any state draws under any suite.
B worlds   K = 1 + env.max_distractors blocks (block 0 = target)   H = W = env.res
"""

import math
from functools import cache

import torch
import torch.nn.functional as F

from config import FAMILIES, PALETTE, SHAPES, TASK_COLORS, TEXTURES, check

BACKGROUND, GRIPPER, GOAL, TARGET = 0, 1, 2, 3  # mask ids; block k >= 1 (distractor k-1) is 3 + k
GRIPPER_RGB, GOAL_RGB = [0.10, 0.10, 0.12], [0.90, 0.90, 0.84]
# who moves the end effector: the robot's gripper (a black disc, the demos), or another embodiment
# (the action-free clips): a skin-coloured cross of the same physics, moved by world.hand
EFFECTORS = {"gripper": (GRIPPER_RGB, "disc"), "hand": ([0.93, 0.71, 0.56], "cross")}
LEVELS, STENCIL = 17, 32  # texture grey levels (the middle one = plain); shape stencil side


def to_float(frames):
    """uint8 frames in 0..255 -> float32 in [-1, 1] (what the model reads), any shape."""
    return frames.float() / 127.5 - 1


def to_uint8(x):
    """float frames in [-1, 1] -> uint8 in 0..255, any shape."""
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


TASK_NAMES = [f"{fam}-{c}" for fam in FAMILIES for c in TASK_COLORS]  # index = task id


def task_ids(env):
    """The task ids of env.task's family, in TASK_COLORS order."""
    return [FAMILIES.index(env.task) * len(TASK_COLORS) + c for c in range(len(TASK_COLORS))]


# ---- the world: reset, step, success, expert --------------------------------
def _in_boxes(gen, boxes, n):
    """(n, 2) points uniform over a union of boxes [x0, y0, x1, y1]."""
    bx = torch.tensor(boxes, dtype=torch.float32, device=gen.device)           # (nb, 4)
    area = (bx[:, 2] - bx[:, 0]) * (bx[:, 3] - bx[:, 1])                     # (nb,)
    i = torch.multinomial(area, n, True, generator=gen)                        # (n,) box of each
    u = torch.rand(n, 2, generator=gen, device=gen.device)                     # (n, 2)
    return bx[i, :2] + u * (bx[i, 2:] - bx[i, :2])                             # (n, 2)


def _too_close(p, others, gap):
    """(B,) bool: point p (B, 2) nearer than gap (B, M) to any of others (B, M, 2)."""
    return ((p[:, None] - others).norm(dim=-1) < gap).any(1)


def _sample_clear(gen, boxes, others, gap, what, tries=100):
    """(B, 2) points in boxes, redrawn until at least gap (B, M) away from others (B, M, 2);
    raises, naming `what`, if some world still has none after `tries` draws."""
    p = _in_boxes(gen, boxes, others.shape[0])                                 # (B, 2)
    for _ in range(tries):
        bad = _too_close(p, others, gap)                                       # (B,)
        if not bad.any():
            return p
        p = torch.where(bad[:, None], _in_boxes(gen, boxes, p.shape[0]), p)    # (B, 2)
    bad = _too_close(p, others, gap)                                           # (B,)
    check(not bad.any(), f"{what}: no position in {boxes} clear of the "
          f"entities placed before it in {int(bad.sum())} of {len(p)} worlds after {tries} draws")
    return p


def reset(env, suite, task, gen):
    """B new worlds from `suite` for task ids `task` (B,): (state, appearance) on gen's device."""
    dev, B, K, r = gen.device, task.shape[0], 1 + env.max_distractors, env.gripper_radius
    ids = torch.tensor(task_ids(env), device=dev)
    if task.dtype != torch.long or task.dim() != 1 or not torch.isin(task, ids).all():
        raise ValueError(f"task {task.tolist()}: expected a (B,) long tensor of {env.task} task "
                         f"ids {ids.tolist()}")
    check(suite.n_distractors[1] <= env.max_distractors, f"suite.n_distractors = "
          f"{suite.n_distractors} exceeds env.max_distractors = {env.max_distractors}")

    def U(lohi, *shape):
        return lohi[0] + (lohi[1] - lohi[0]) * torch.rand(shape, generator=gen, device=dev)

    def pick(values, *shape):  # uniform draws from a list
        v = torch.tensor(values, device=dev)
        return v[torch.randint(len(v), shape, generator=gen, device=dev)]

    size = torch.cat([U(suite.target_size, B, 1), U(suite.distractor_size, B, K - 1)], 1)  # (B, K)
    n = pick(list(range(suite.n_distractors[0], suite.n_distractors[1] + 1)), B)  # (B,)
    present = torch.arange(K, device=dev) <= n[:, None]                          # (B, K)
    goal = _in_boxes(gen, suite.goal_region, B)                                  # (B, 2)
    # rejection sampling, one entity at a time, each clear of those placed before it; after 100
    # target draws a goal that leaves its target no room (layout@1: a target region in the centre
    # the goal region covers) is drawn again with it
    sep = 1.5 * env.goal_size + size[:, :1]                                     # (B, 1)
    target = _in_boxes(gen, suite.target_region, B)                              # (B, 2)
    for i in range(200):
        bad = _too_close(target, goal[:, None], sep)                             # (B,)
        if not bad.any():
            break
        if i >= 100:
            goal = torch.where(bad[:, None], _in_boxes(gen, suite.goal_region, B), goal)
        target = torch.where(bad[:, None], _in_boxes(gen, suite.target_region, B), target)
    bad = _too_close(target, goal[:, None], sep)  # (B,) after the last redraw
    check(not bad.any(), f"no target position in "
          f"{suite.target_region} clear of a goal in {suite.goal_region} in "
          f"{int(bad.sum())} of {B} worlds after 200 draws")
    gripper = _sample_clear(gen, suite.gripper_region, target[:, None], r + size[:, :1] + 0.1,
                            "gripper")
    placed = [gripper, target]                                                   # (B, 2) each
    for k in range(1, K):
        gap = torch.cat([r + size[:, k:k + 1], size[:, :k] + size[:, k:k + 1]], 1) + 0.02
        gap = gap * torch.cat([present[:, :1], present[:, :k]], 1)  # (B, k+1) absent: no gap
        placed.append(_sample_clear(gen, suite.distractor_region, torch.stack(placed, 1), gap,
                                    f"distractor {k}"))
    state = {"gripper": gripper, "blocks": torch.stack(placed[1:], 1), "size": size,  # (B, K, 2)
             "present": present, "goal": goal, "task": task}
    state["gripper"], state["blocks"] = _resolve(env, state)  # rare leftovers of the rejection

    names = list(PALETTE)
    target_color = torch.tensor([names.index(c) for c in TASK_COLORS], device=dev)[task % 4]  # (B,)
    cand = torch.tensor([names.index(c) for c in suite.distractor_colors], device=dev)  # (C,)
    allowed = (cand[None] != target_color[:, None]).float()                      # (B, C)
    color = cand[torch.multinomial(allowed, K, True, generator=gen)]             # (B, K)
    color[:, 0] = target_color
    shape = torch.cat([pick([SHAPES.index(s) for s in suite.target_shapes], B, 1),  # (B, K)
                       pick([SHAPES.index(s) for s in suite.distractor_shapes], B, K - 1)], 1)
    tint = torch.randn(B, 3, generator=gen, device=dev)                          # (B, 3)
    tint = tint - tint.mean(1, keepdim=True)                                     # a hue, not a gain
    j = suite.table_jitter
    app = {"table": (pick(suite.table_colors, B) + U([-j, j], B, 3)).clamp(0, 1),  # (B, 3)
           "texture": pick([TEXTURES.index(t) for t in suite.textures], B),      # (B,)
           "brightness": U(suite.brightness, B),                                 # (B,)
           "tint": tint / tint.norm(dim=1, keepdim=True).clamp_min(1e-6) * U(suite.tint, B, 1),
           "color": color, "shape": shape,                                       # (B, K) each
           "effector": torch.zeros(B, dtype=torch.long, device=dev)}  # (B,) the gripper: 0
    return state, app


def _resolve(env, state, iters=4):
    """Kinematic contacts: the gripper pushes blocks out along the contact normal, blocks push each
    other (half each), blocks stay on the table; a block pinned by the edge stops the gripper."""
    g, b, s, p = state["gripper"], state["blocks"], state["size"], state["present"]
    r, K = env.gripper_radius, s.shape[1]
    pair = p[:, :, None] & p[:, None] & ~torch.eye(K, dtype=torch.bool, device=p.device)  # (B,K,K)

    def push_out(d, reach, on):  # displacement along d (..., 2): from distance |d| out to `reach`
        dist = d.norm(dim=-1)                                                  # (...)
        depth = (reach - dist).clamp_min(0) * on                               # (...)
        return d / dist.clamp_min(1e-9)[..., None] * depth[..., None]          # (..., 2)

    for _ in range(iters):
        b = b + push_out(b - g[:, None], r + s, p)                             # (B, K, 2)
        b = b + 0.5 * push_out(b[:, :, None] - b[:, None], s[:, :, None] + s[:, None], pair).sum(2)
        b = torch.maximum(torch.minimum(b, 1 - s[..., None]), s[..., None])    # (B, K, 2)
    g = (g - push_out(b - g[:, None], r + s, p).sum(1)).clamp(r, 1 - r)       # (B, 2)
    return g, b


def step(env, state, action):
    """The next state (a new dict) after gripper velocities `action` (B, 2) in [-1, 1]."""
    shape = tuple(getattr(action, "shape", ()))
    check(torch.is_tensor(action) and shape == tuple(state["gripper"].shape), f"action of shape "
          f"{shape}; expected {tuple(state['gripper'].shape)}: (B, 2) velocities in [-1, 1]")
    if not torch.isfinite(action).all():
        bad = (~torch.isfinite(action)).any(1).nonzero()[:, 0].tolist()
        raise ValueError(f"action has NaN/inf in worlds {bad}; expected finite values in [-1, 1]")
    r, g = env.gripper_radius, state["gripper"]
    g = (g + action.to(g.dtype).clamp(-1, 1) * env.max_speed).clamp(r, 1 - r)    # (B, 2)
    new = {**state, "gripper": g}
    new["gripper"], new["blocks"] = _resolve(env, new)
    return new


def success(env, state):
    """(B,) bool: the gripper touching the target (reach); the target centre in the goal (push)."""
    T, s = state["blocks"][:, 0], state["size"][:, 0]                          # (B, 2), (B,)
    if env.task == "reach":
        return (state["gripper"] - T).norm(dim=-1) <= env.gripper_radius + s + env.reach_tol
    elif env.task == "push":
        return ((T - state["goal"]).abs() <= env.goal_size).all(-1)
    raise ValueError(f"env.task = {env.task!r}; expected one of {FAMILIES}")


def rollout(env, state, app, policy, steps, draw=True):
    """Run policy(t, state, frame) -> actions (B, 2) for `steps` steps from `state`; frame is the
    uint8 render at t (None when draw is False). Returns states [steps + 1 dicts], frames
    (B, steps+1, 3, H, W) uint8 and masks (B, steps+1, H, W) (None when draw is False), and
    success (B,) bool: at any step, the first state included."""
    states, drawn, done = [state], [], success(env, state)
    for t in range(steps + 1):
        if draw:
            drawn.append(render(env, state, app))                              # (B,3,H,W), (B,H,W)
        if t == steps:
            break
        state = step(env, state, policy(t, state, drawn[-1][0] if draw else None))
        done |= success(env, state)
        states.append(state)
    frames, masks = (torch.stack(x, 1) for x in zip(*drawn)) if draw else (None, None)
    return {"states": states, "frames": frames, "masks": masks, "success": done}


class Policy:
    """A WAM as a closed-loop policy, in LeRobot's interface: it keeps the frames the context
    needs (n_ctx frames `stride` steps apart, the first frame repeated before time 0) and a queue
    of the chunk's next actions, executing `replan` of them before it plans again.
        obs = {"frame": (B, 3, H, W) uint8, "task": (B,) long}  ->  action (B, A) in [-1, 1]
    A step whose frame it never reads (needs_frame(t) False, t counted from reset) may pass
    frame None, so a slow renderer draws only the frames the policy reads."""

    def __init__(self, model, n_ctx, stride, replan, steps=None):
        if not 1 <= replan <= model.horizon:
            raise ValueError(f"replan = {replan}; expected 1..{model.horizon} (the chunk length)")
        self.model, self.n_ctx, self.stride, self.replan, self.steps = model, n_ctx, stride, \
            replan, steps
        self.reset()

    def reset(self):
        """Forget the episode: call before each new batch of episodes."""
        self.frames, self.queue = [], []

    def needs_frame(self, t):
        """Whether step t's frame is read: t is a planning step (a multiple of replan) or in the
        context of one (t + j * stride for j < n_ctx)."""
        return any((t + j * self.stride) % self.replan == 0 for j in range(self.n_ctx))

    def observe(self, obs):
        frame = obs["frame"]
        if not self.frames:  # time 0 repeated back to the first context frame
            if frame is None:
                raise ValueError("obs['frame'] is None at the first step after reset(); expected "
                                 "(B, 3, H, W) uint8: step 0 is always read")
            self.frames, self.shape = [frame] * ((self.n_ctx - 1) * self.stride + 1), frame.shape
        if frame is not None and frame.shape != self.shape:
            raise ValueError(f"obs['frame'] {tuple(frame.shape)} after frames of "
                             f"{tuple(self.shape)}; call reset() between episodes")
        self.frames = self.frames[1:] + [frame]

    def predict_action_chunk(self, obs):
        """The whole chunk (B, Ha, A) for this observation, which joins the history."""
        self.observe(obs)
        ctx = self.frames[::self.stride]
        if any(f is None for f in ctx):
            raise ValueError("a context frame of this planning step was passed as None; render "
                             "every step t with needs_frame(t)")
        ctx = torch.stack(ctx, 1)  # (B, n_ctx, 3, H, W) uint8
        device = next(self.model.parameters()).device
        chunk = self.model.act(to_float(ctx).to(device), obs["task"].to(device), self.steps)
        return chunk.to(obs["frame"].device)  # (B, Ha, A)

    def select_action(self, obs):
        """The next action (B, A): from the queue, or from a new chunk when it is empty."""
        if self.queue:
            self.observe(obs)
        else:
            self.queue = list(self.predict_action_chunk(obs)[:, :self.replan].unbind(1))
        return self.queue.pop(0)


def interaction_ids(env):
    """Mask ids of the interaction region (KeyError for an unknown task family)."""
    return {"reach": [GRIPPER, TARGET], "push": [GRIPPER, TARGET, GOAL]}[env.task]


def expert(env, state):
    """Scripted expert, (B, 2) actions in [-1, 1]. Reach: straight to contact with the target.
    Push: circle the target (clear of it) until behind it relative to the goal, then push."""
    g, T, G = state["gripper"], state["blocks"][:, 0], state["goal"]          # (B, 2) each
    R = (env.gripper_radius + state["size"][:, 0])[:, None]                   # (B, 1) contact dist
    rel = g - T                                                               # (B, 2)
    dist = rel.norm(dim=-1, keepdim=True)                                     # (B, 1)
    if env.task == "reach":
        want = T + rel / dist.clamp_min(1e-6) * R                             # touch, don't shove
    elif env.task == "push":
        gd = (G - T).norm(dim=-1, keepdim=True)                               # (B, 1)
        d = (G - T) / gd.clamp_min(1e-6)                                      # (B, 2) push dir
        behind = T - d * (R + 0.02)                                           # (B, 2) start of push
        shove = T - d * (R - gd.clamp(max=env.max_speed))                     # moves target 1 step
        phi = torch.atan2(rel[:, 1], rel[:, 0])                               # (B,) gripper angle
        gap = torch.atan2(-d[:, 1], -d[:, 0]) - phi                           # (B,) angle to behind
        gap = torch.remainder(gap + math.pi, 2 * math.pi) - math.pi           # (B,) in [-pi, pi)
        orbit_r = R + 0.03                                                    # (B, 1) clears target
        ang = phi + gap.sign() * gap.abs().clamp(max=1.2 * env.max_speed / orbit_r[:, 0])  # (B,)
        orbit = T + orbit_r * torch.stack([ang.cos(), ang.sin()], -1)         # (B, 2)
        seg = behind - g                                                      # (B, 2)
        t = ((T - g) * seg).sum(-1, keepdim=True)                             # (B, 1)
        t = t / (seg * seg).sum(-1, keepdim=True).clamp_min(1e-9)             # (B, 1) along seg
        clear = (g + t.clamp(0, 1) * seg - T).norm(dim=-1, keepdim=True) > R + 0.015  # (B, 1)
        aligned = gap.abs()[:, None] < 0.35                                   # (B, 1) behind it
        want = torch.where(aligned | clear, behind, orbit)                    # (B, 2) get behind
        want = torch.where(aligned & (dist < R + 0.04), shove, want)          # (B, 2) then push
        want = torch.where(gd < 0.03, g, want)                                # at the goal: hold
    else:
        raise ValueError(f"env.task = {env.task!r}; expected one of {FAMILIES}")
    a = (want - g) / env.max_speed                                            # (B, 2)
    return a / a.abs().amax(-1, keepdim=True).clamp_min(1)                    # keep the direction


def hand(env, state, style):
    """The other embodiment's controller: the expert's heading turned by a fixed angle and slowed
    by a fixed factor per episode, style (B, 2) in [0, 1]^2 -> (B, 2) actions in [-1, 1]: a turn
    of -30..30 degrees, a speed of 0.6..1 of the expert's, so it takes other paths than the robot."""
    a = expert(env, state)                                                    # (B, 2)
    turn = (style[:, 0] - 0.5) * math.pi / 3                                  # (B,)
    cos, sin = turn.cos()[:, None], turn.sin()[:, None]                       # (B, 1) each
    a = torch.cat([cos * a[:, :1] - sin * a[:, 1:], sin * a[:, :1] + cos * a[:, 1:]], 1)
    return (a * (0.6 + 0.4 * style[:, 1:])).clamp(-1, 1)                      # (B, 2)


def normalize_actions(velocity, env):
    """Gripper displacement per step (world units) -> action in [-1, 1] (what the dataset holds)."""
    return velocity / env.max_speed


def unnormalize_actions(action, env):
    """Action in [-1, 1] -> gripper displacement per step (world units)."""
    return action * env.max_speed


# ---- rendering --------------------------------------------------------------
@cache
def _stencils(device):
    """(n_shapes, S+1, S+1) bool, S = STENCIL: each shape on [-1, 1]^2 (the unit disc is the
    physics body); the last row and column stay empty: pixels outside a patch look there."""
    S = STENCIL
    c = (torch.arange(S) + 0.5) / S * 2 - 1                                    # (S,) cell centres
    v, u = torch.meshgrid(c, c, indexing="ij")                                 # (S, S) each
    rad, box = (u * u + v * v).sqrt(), torch.maximum(u.abs(), v.abs())         # (S, S) each
    drawn = {"square": box <= 0.9, "disc": rad <= 1, "diamond": u.abs() + v.abs() <= 1,
             "triangle": (v <= 0.7) & (u.abs() <= (v + 1) * 0.58),
             "ring": (rad <= 1) & (rad >= 0.55),
             "cross": ((u.abs() <= 0.33) | (v.abs() <= 0.33)) & (box <= 0.95)}
    out = torch.zeros(len(SHAPES), S + 1, S + 1, dtype=torch.bool)          # (n_shapes, S+1, S+1)
    out[:, :S, :S] = torch.stack([drawn[s] for s in SHAPES])
    return out.to(device)


@cache
def _textures(res, device):
    """(n_textures, H*W) long grey levels 0..LEVELS-1 of each table texture, in world units."""
    c = (torch.arange(res) + 0.5) / res                                       # (res,) pixel centres
    y, x = torch.meshgrid(c, c, indexing="ij")                                 # (H, W) each
    lattice = torch.rand(1, 1, 9, 9, generator=torch.Generator().manual_seed(0)) * 2 - 1  # fixed
    grid = torch.stack([x, y], -1)[None] * 2 - 1                               # (1, H, W, 2)
    tau = 2 * math.pi
    f = {"plain": 0 * x, "stripes": torch.sin(tau * 8 * y).sign(),
         "checker": ((8 * x).floor() + (8 * y).floor()) % 2 * 2 - 1,
         "noise": F.grid_sample(lattice, grid, align_corners=True)[0, 0],
         "dots": torch.where(((6 * x) % 1 - 0.5) ** 2 + ((6 * y) % 1 - 0.5) ** 2 < 0.06, 1.0, -0.4),
         "waves": torch.sin(tau * (5 * x + 0.5 * torch.sin(tau * 2 * y)))}
    f = torch.stack([f[t] for t in TEXTURES])                                  # (n_tex, H, W)
    return ((f + 1) / 2 * (LEVELS - 1)).round().long().view(len(TEXTURES), -1).to(device)


def _cover(res, center, half, shape, vis):
    """Flat pixel ids (into B*H*W) that one entity covers in each world, shape (n,)."""
    P = math.ceil(2 * float(half.max()) * res) + 2                             # patch side (pixels)
    lo = ((center - half[:, None]) * res).floor().long()                       # (B, 2) col, row
    pix = lo[:, :, None] + torch.arange(P, device=center.device)              # (B, 2, P) cols, rows
    u = ((pix + 0.5) / res - center[:, :, None]) / half[:, None, None]         # (B, 2, P) body
    k = ((u + 1) * (STENCIL / 2)).floor().long()                               # (B, 2, P) cells
    k = torch.where((k >= 0) & (k < STENCIL) & (pix >= 0) & (pix < res), k, STENCIL)  # (B, 2, P)
    cell = (shape[:, None, None] * (STENCIL + 1) + k[:, 1, :, None]) * (STENCIL + 1) + k[:, 0, None]
    # cell (B, P, P): flat index into the stencils of (shape, row cell, column cell)
    inside = _stencils(center.device).view(-1).index_select(0, cell.view(-1))  # (B*P*P,)
    w, i, j = (inside.view(cell.shape) & vis[:, None, None]).nonzero(as_tuple=True)  # (n,) each
    lo = lo.index_select(0, w)                                                 # (n, 2)
    return (w * res + lo[:, 1] + i) * res + lo[:, 0] + j                       # (n,)


def render(env, state, app):
    """Draw states under appearances: frames (B, 3, H, W) uint8, masks (B, H, W) uint8 entity ids.
    Back to front: table, goal, distractors, target, gripper. Entity pixels are coloured from the
    final mask, so pixels and masks always agree. Lighting (brightness, tint) scales all colours."""
    s, res, dev = state["size"], env.res, state["size"].device
    B, K, HW = *s.shape, env.res * env.res
    light = app["brightness"][:, None, None] * (1 + app["tint"][:, None])     # (B, 1, 3)
    f = torch.linspace(-1, 1, LEVELS, device=dev)[:, None]                     # (LEVELS, 1)
    table = app["table"][:, None] * (1 + env.texture_contrast * f)             # (B, LEVELS, 3)
    table = (table * light).clamp(0, 1).mul(255).round().to(torch.uint8)       # (B, LEVELS, 3)
    levels = _textures(res, dev)                                               # (n_tex, H*W)
    frames = torch.empty(B, 3, HW, dtype=torch.uint8, device=dev)              # (B, 3, H*W)
    for t in app["texture"].unique().tolist():                                 # a few textures
        w = (app["texture"] == t).nonzero()[:, 0]                              # (n_t,)
        lut = table[w].transpose(1, 2)                                         # (n_t, 3, LEVELS)
        frames[w] = torch.gather(lut, 2, levels[t].expand(len(w), 3, HW))      # (n_t, 3, H*W)
    palette = torch.tensor([[0, 0, 0], GRIPPER_RGB, GOAL_RGB, *PALETTE.values()],
                           device=dev)                                         # (3+colours, 3)
    eff_rgb = torch.tensor([c for c, _ in EFFECTORS.values()], device=dev)[app["effector"]]
    rgb = torch.cat([palette[:1].expand(B, 1, 3), eff_rgb[:, None], palette[2:3].expand(B, 1, 3),
                     palette[3 + app["color"]]], 1)                            # (B, 3+K, 3)
    rgb = (rgb * light).clamp(0, 1).mul(255).round().to(torch.uint8)           # (B, 3+K, 3) by id
    masks = torch.zeros(B * HW, dtype=torch.uint8, device=dev)                 # (B*H*W,)
    one = torch.ones(B, dtype=torch.long, device=dev)                          # (B,)
    ents = [(GOAL, state["goal"], env.goal_size / 0.9, one * SHAPES.index("square"), one > 0)]
    ents += [(TARGET + k, state["blocks"][:, k], s[:, k], app["shape"][:, k],
              state["present"][:, k]) for k in [*range(1, K), 0]]  # the target over distractors
    eff_shape = torch.tensor([SHAPES.index(s) for _, s in EFFECTORS.values()], device=dev)
    ents += [(GRIPPER, state["gripper"], env.gripper_radius, eff_shape[app["effector"]], one > 0)]
    covered = []
    for eid, center, half, shape, vis in ents:
        covered.append(_cover(res, center, one * half, shape, vis))            # (n_e,)
        masks.index_put_((covered[-1],), torch.tensor(eid, dtype=torch.uint8, device=dev))
    q = torch.cat(covered)                                                     # (n,) entity pixels
    w = q // HW                                                                # (n,) their worlds
    col = rgb.view(-1, 3).index_select(0, w * (3 + K) + masks[q])              # (n, 3) final colour
    for c in range(3):
        frames.view(-1).index_put_((q + w * 2 * HW + c * HW,), col[:, c])      # w*3HW + c*HW + pix
    return frames.view(B, 3, res, res), masks.view(B, res, res)
