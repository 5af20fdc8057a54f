"""Every knob of the project: one dataclass per section of config.yaml, the YAML loader (`base:`
inheritance, dotted overrides), and the few helpers every stage shares (checks, atomic saves, the
device, a seeded RNG). Imports no other stage, so every stage can import it.

The dataclass defaults are config.yaml's values (tests/test_config.py compares them); the suites
are written once, in config.yaml: `id` lists every Suite field, the others what they change.
"""

import ast
import contextlib
import difflib
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
import yaml

FAMILIES = ["reach", "push"]  # task id = FAMILIES.index(family) * 4 + colour index
TASK_COLORS = ["red", "green", "blue", "yellow"]
PALETTE = {  # RGB in [0, 1]; colour id = index in list(PALETTE); the task colours come first
    "red": [0.86, 0.14, 0.12], "green": [0.16, 0.70, 0.22], "blue": [0.15, 0.32, 0.92],
    "yellow": [0.96, 0.84, 0.12], "orange": [0.97, 0.52, 0.08], "pink": [0.98, 0.48, 0.68],
    "lime": [0.62, 0.92, 0.18], "purple": [0.56, 0.22, 0.74], "cyan": [0.10, 0.82, 0.86],
    "brown": [0.48, 0.30, 0.12]}
SHAPES = ["square", "disc", "triangle", "diamond", "cross", "ring"]  # shape id = index
TEXTURES = ["plain", "stripes", "checker", "noise", "dots", "waves"]  # texture id = index
TEACHERS = ["oracle", "oracle_task", "dinov2", "random", "shuffled"]
MW_TASKS = ["reach", "push", "pick-place", "drawer-open", "button-press-topdown", "window-open"]
MW_ENTITIES = ["background", "gripper", "goal", "task object", "robot", "distractor"]  # mworld's
                   # mask ids (id = index; the first four are world.py's)
MW_ACTION_DIM = 4  # Meta-World actions: xyz deltas + gripper effort (the tabletop's: 2, xy)
MW_TEXTURES = ["wood", "stripes", "checker", "noise"]  # Meta-World table textures; wood = stock
MW_SHAPES = ["box", "sphere", "cylinder"]  # Meta-World visual-only distractor shapes


# ---- checks -----------------------------------------------------------------
def check(ok, msg):
    """Raise ValueError(msg) unless ok: for user input (asserts vanish under python -O)."""
    if not ok:
        raise ValueError(msg)


def check_choice(key, value, valid):
    """value must be one of valid; the error names the nearest valid one."""
    if value not in valid:
        near = difflib.get_close_matches(str(value), [str(v) for v in valid], n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ValueError(f"{key} = {value!r}; expected one of {list(valid)}{hint}")


def check_type(key, value, typ):
    """value as type typ (an int is a float), or raise naming key, value and the expected type."""
    if typ is float and type(value) is int:
        return float(value)
    if isinstance(value, typ) and (typ is bool or type(value) is not bool):
        return value
    raise TypeError(f"{key} = {value!r} ({type(value).__name__}); expected {typ.__name__}")


def check_keys(where, keys, valid):
    for key in keys:
        if key not in valid:
            near = difflib.get_close_matches(key, list(valid), n=1)
            hint = f"did you mean '{where}{near[0]}'?" if near else f"valid keys: {sorted(valid)}"
            raise KeyError(f"unknown config key '{where}{key}'; {hint}")


def checked(cls):
    """Class decorator: __post_init__ checks each field's type, then the class's own `check`."""
    def post_init(self):
        for f in fields(self):
            setattr(self, f.name, check_type(f"{cls.__name__}.{f.name}", getattr(self, f.name),
                                             f.type))
        self.check()
    cls.__post_init__ = post_init
    return cls


def positive(obj, section, keys, low=1):
    for k in keys:
        check(getattr(obj, k) >= low, f"{section}.{k} = {getattr(obj, k)}; expected >= {low}")


# ---- the sections -----------------------------------------------------------
@dataclass
@checked
class EnvConfig:
    res: int = 32                    # frame side in pixels
    task: str = "reach"              # task family: reach | push
    max_steps: int = 16              # episode length L in steps
    max_speed: float = 0.08          # gripper displacement per step (world units) at |action| = 1
    max_distractors: int = 3         # distractor slots, K - 1; a suite draws 0..this many
    gripper_radius: float = 0.08     # world units
    goal_size: float = 0.1           # half-side of the square goal region (world units)
    reach_tol: float = 0.015         # reach succeeds when the gripper-target gap is below this
    texture_contrast: float = 0.2    # table texture amplitude, a fraction of the table colour

    def check(self):
        check_choice("env.task", self.task, FAMILIES)
        check(self.res >= 8, f"env.res = {self.res}; expected >= 8")
        positive(self, "env", ["max_steps"])
        positive(self, "env", ["max_distractors"], low=0)


@dataclass
@checked
class Suite:
    """What world.reset draws worlds from. Ranges are [lo, hi]; regions are lists of boxes
    [x0, y0, x1, y1], drawn uniformly over their union. No defaults: config.yaml's `id` has them."""
    table_colors: list               # RGB in [0, 1]
    table_jitter: float              # each table channel + U(-jitter, jitter)
    textures: list                   # of TEXTURES
    brightness: list                 # whole-image gain
    tint: list                       # size of a zero-mean RGB hue shift
    n_distractors: list              # distractor count
    distractor_colors: list          # of PALETTE; never the target's colour
    distractor_shapes: list          # of SHAPES
    distractor_size: list            # half-size = physics radius (world units)
    target_shapes: list              # of SHAPES (its colour is the task's)
    target_size: list                # half-size = physics radius (world units)
    gripper_region: list
    target_region: list
    goal_region: list
    distractor_region: list

    def check(self):
        for k, valid in [("textures", TEXTURES), ("distractor_colors", PALETTE),
                         ("distractor_shapes", SHAPES), ("target_shapes", SHAPES)]:
            v = getattr(self, k)
            check(v and set(v) <= set(valid), f"suite.{k} = {v}; expected names from {list(valid)}")
        for k in ["brightness", "tint", "n_distractors", "distractor_size", "target_size"]:
            v = getattr(self, k)
            check(len(v) == 2 and v[0] <= v[1], f"suite.{k} = {v}; expected [lo, hi] with lo <= hi")
        check(self.n_distractors[0] >= 0, f"suite.n_distractors = {self.n_distractors}; expected "
              "[lo, hi] with lo >= 0 (a negative count would drop the target)")
        for k in ["distractor_size", "target_size"]:  # block radii
            v = getattr(self, k)
            check(v[0] > 0, f"suite.{k} = {v}; expected [lo, hi] with lo > 0 (a radius)")
        for k in ["gripper_region", "target_region", "goal_region", "distractor_region"]:
            for b in getattr(self, k):
                check(len(b) == 4 and 0 <= b[0] < b[2] <= 1 and 0 <= b[1] < b[3] <= 1,
                      f"suite.{k} box {b}; expected [x0, y0, x1, y1] inside [0, 1]")
        check(all(len(c) == 3 and 0 <= min(c) <= max(c) <= 1 for c in self.table_colors),
              f"suite.table_colors = {self.table_colors}; expected RGB lists in [0, 1]")
        dc = self.distractor_colors  # a target's own colour is never drawn: keep another one
        check(len(set(dc)) > 1 or dc[0] not in TASK_COLORS, f"suite.distractor_colors = {dc}; "
              f"expected two or more distinct colours, or one not in {TASK_COLORS}")


def get_suite(suites, name, cls=None, where="suites"):
    """Suite `name` (a `cls`, default Suite): the `id` entry overridden by suites[name]; unknown
    names and keys raise. `where` names the suites' place in the config, for the messages."""
    cls = Suite if cls is None else cls
    if name not in suites or "id" not in suites:
        raise KeyError(f"unknown suite {name!r} (or no 'id' suite); defined: {sorted(suites)}")
    valid = [f.name for f in fields(cls)]
    for part in ("id", name):
        check_keys(f"{where}.{part}.", suites[part], valid)
    missing = [k for k in valid if k not in suites["id"]]
    if missing:
        raise KeyError(f"suite 'id' lacks {missing}: it must list every {cls.__name__} field")
    return cls(**{**suites["id"], **suites[name]})


@dataclass
@checked
class MWSuite:
    """What mworld.World.reset draws a Meta-World episode's appearance from (the layout is
    Meta-World's own, from the seed). Ranges are [lo, hi]; no defaults: configs/metaworld.yaml's
    `id` has them. Every field changes pixels only, never physics."""
    table_colors: list               # RGB in [0, 1] multiplying the table's wood texture
    table_jitter: float              # each table channel + U(-jitter, jitter)
    table_textures: list             # of MW_TEXTURES: the pattern laid over the wood
    texture_contrast: list           # pattern amplitude, a fraction of the wood's brightness
    light: list                      # gain on every light's diffuse and the headlight
    object_hue: list                 # degrees the task object's colours turn (random sign)
    camera_shift: list               # degrees azimuth and elevation move (each a random sign)
    n_distractors: list              # visual-only geoms drawn on the table (no physics)
    distractor_colors: list          # of PALETTE
    distractor_shapes: list          # of MW_SHAPES

    def check(self):
        for k, valid in [("table_textures", MW_TEXTURES), ("distractor_colors", PALETTE),
                         ("distractor_shapes", MW_SHAPES)]:
            v = getattr(self, k)
            check(v and set(v) <= set(valid), f"suite.{k} = {v}; expected names from {list(valid)}")
        for k in ["texture_contrast", "light", "object_hue", "camera_shift", "n_distractors"]:
            v = getattr(self, k)
            check(len(v) == 2 and 0 <= v[0] <= v[1], f"suite.{k} = {v}; expected [lo, hi] "
                  "with 0 <= lo <= hi")
        check(self.table_colors and all(len(c) == 3 and 0 <= min(c) <= max(c) <= 1
                                        for c in self.table_colors),
              f"suite.table_colors = {self.table_colors}; expected RGB lists in [0, 1]")
        check(self.table_jitter >= 0, f"suite.table_jitter = {self.table_jitter}; expected >= 0")


@dataclass
@checked
class DataConfig:
    n_episodes: int = 4000           # expert episodes E
    seed: int = 0                    # generation seed: the demos are a function of it
    n_ctx: int = 1                   # context frames per window (the newest is time t)
    n_future: int = 1                # future frames per window
    stride: int = 4                  # steps between consecutive context / future frames
    horizon: int = 4                 # action chunk length Ha
    expert_noise: float = 0.0        # std of Gaussian noise on executed actions (labels stay clean)
    random_action_frac: float = 0.3  # share of steps that execute a uniform random action instead
    cache_dir: str = "cache"         # demos-, clips-<hash>.pt and teacher_<hash>.pt live here

    def check(self):
        positive(self, "data", ["n_episodes", "n_ctx", "n_future", "stride", "horizon"])
        check(0 <= self.random_action_frac <= 1, f"data.random_action_frac = "
              f"{self.random_action_frac}; expected a share in [0, 1]")
        check(self.expert_noise >= 0, f"data.expert_noise = {self.expert_noise}; expected >= 0")


@dataclass
@checked
class VideoConfig:
    n_clips: int = 0                 # action-free clips (no action labels stored); 0 = none
    suite: str = "id"                # the suite whose appearance band the clips are drawn from
    effector: str = "hand"           # who performs them: hand (another embodiment) | gripper
    seed: int = 1                    # generation seed (other worlds than the demos')
    ratio: float = 0.5               # share of each batch's windows taken from the clips
    covered: list = field(default_factory=list)  # OOD suites inside the clips' band (the rest:
                                     # unseen anywhere): a label for readers, checked by tests

    def check(self):
        positive(self, "video", ["n_clips"], low=0)
        check_choice("video.effector", self.effector, ["hand", "gripper"])
        check(0 <= self.ratio < 1, f"video.ratio = {self.ratio}; expected a share in [0, 1)")


@dataclass
@checked
class MetaWorldConfig:
    res: int = 64                    # frame side in pixels (mworld.py renders Meta-World at this)
    max_steps: int = 150             # episode length L (steps) of demos and evaluation episodes
    frame_every: int = 4             # demos keep the frame of every this many steps (the model's)
    episodes_per_task: int = 50      # expert demos per task of mworld.TASKS
    camera: list = field(default_factory=lambda: [0.0, 0.65, 0.1, 1.0, 150.0, -35.0])
                                     # free camera: lookat x, y, z (m), distance (m), azimuth,
                                     # elevation (degrees)
    max_distractors: int = 6         # visual-only distractor geoms a suite may draw
    suites: dict = field(default_factory=dict)  # MWSuite per name; configs/metaworld.yaml's

    def check(self):
        positive(self, "metaworld", ["res", "max_steps", "frame_every", "episodes_per_task"])
        positive(self, "metaworld", ["max_distractors"], low=0)
        check(self.max_steps < 500, f"metaworld.max_steps = {self.max_steps}; expected < 500 "
              "(Meta-World refuses to step past 500 without a reset)")
        check(len(self.camera) == 6 and self.camera[3] > 0, f"metaworld.camera = {self.camera}; "
              "expected [x, y, z, distance > 0, azimuth, elevation]")
        for name in self.suites:  # every suite's keys and values now, not mid-run
            n = get_suite(self.suites, name, MWSuite, "metaworld.suites").n_distractors[1]
            check(n <= self.max_distractors, f"metaworld.suites.{name}.n_distractors reaches "
                  f"{n}; expected <= metaworld.max_distractors = {self.max_distractors}")


@dataclass
@checked
class ModelConfig:
    patch: int = 4                   # patch side p in pixels (env.res must be a multiple)
    width: int = 96                  # video DiT width D (multiple of 4 and of heads)
    depth: int = 4                   # video DiT blocks; layer l = output of blocks[l-1]
    heads: int = 4                   # attention heads of the video DiT
    mlp_ratio: float = 4.0           # MLP hidden width / block width (video DiT and action head)
    head_width: int = 96             # action head width Dh (multiple of head_heads)
    head_depth: int = 2              # action head blocks
    head_heads: int = 4              # attention heads of the action head
    bridge: str = "multi"            # multi: block j reads model.bridge_map's layer; single: one
    bridge_layer: int = 2            # the 1-based video layer every block reads, for bridge single
    act_steps: int = 4               # Euler steps of the action head in act()
    video_steps: int = 8             # Euler steps of the video model in imagine()

    def check(self):
        check_choice("model.bridge", self.bridge, ["multi", "single"])
        positive(self, "model", ["patch", "width", "depth", "heads", "head_width", "head_depth",
                                 "head_heads", "bridge_layer", "act_steps", "video_steps"])
        check(self.width % 4 == 0 and self.width % self.heads == 0, f"model.width = {self.width}; "
              f"expected a multiple of 4 (2-D sin-cos) and of model.heads = {self.heads}")
        check(self.head_width % self.head_heads == 0, f"model.head_width = {self.head_width}; "
              f"expected a multiple of model.head_heads = {self.head_heads}")
        check(self.bridge_layer <= self.depth, f"model.bridge_layer = {self.bridge_layer}; "
              f"expected 1..model.depth = {self.depth}")


@dataclass
@checked
class AlignConfig:
    weight: float = 0.5              # lambda: loss += weight * align loss; 0 = baseline WAM
    teacher: str = "oracle"          # oracle | oracle_task | dinov2 | random | shuffled
    teacher_name: str = "vit_small_patch14_dinov2.lvd142m"  # timm model of dinov2 and random
    teacher_weights: str = ""        # dinov2 weights file; "" = timm's local cache, if any
    strict_teacher: bool = False     # dinov2 without weights: error, not a loud oracle fallback
    layer: int = 2                   # 1-based video layer aligned: the output of blocks[layer-1]
    apply_to: str = "foresight"      # which pass is aligned: foresight (the head reads) | video
    windows: str = "all"             # which windows' tokens are aligned: all | demos | clips
    normalize: str = "spatial"       # none | spatial (standardise teacher features per frame)
    proj_hidden: int = 128           # projector MLP: D -> proj_hidden -> proj_hidden -> Dt
    oracle_dim: int = 64             # Dt of the oracle teachers (>= their entity kinds)
    cache: bool = True               # ViT teachers: every demo and clip frame's features, on disk

    def check(self):
        check_choice("align.teacher", self.teacher, TEACHERS)
        check_choice("align.apply_to", self.apply_to, ["foresight", "video"])
        check_choice("align.windows", self.windows, ["all", "demos", "clips"])
        check_choice("align.normalize", self.normalize, ["none", "spatial"])
        check(self.weight >= 0, f"align.weight = {self.weight}; expected >= 0 (0 = baseline)")
        positive(self, "align", ["layer", "proj_hidden", "oracle_dim"])


@dataclass
@checked
class TrainConfig:
    steps: int = 3000                # optimizer steps
    batch_size: int = 64             # global batch (split across ranks under torchrun)
    lr: float = 0.001                # peak learning rate (AdamW, betas 0.9 / 0.95)
    min_lr: float = 0.0001           # floor of the cosine decay
    warmup: int = 100                # linear warmup steps
    weight_decay: float = 0.01       # on weight matrices only (dim >= 2), nanoGPT's rule
    grad_clip: float = 1.0           # max global gradient norm
    ema: float = 0.995               # EMA decay of the weights that eval and sampling use
    video_weight: float = 1.0        # weight of the video flow-matching loss
    action_weight: float = 1.0       # weight of the action loss; 0: video-only, no action head run
    init_from: str = ""              # a run's ckpt.pt: its EMA video model starts this run
    freeze: str = "none"             # none | video: train the action head alone
    seed: int = 0                    # model init, data order and noise; paired across arms
    device: str = "auto"             # auto | cpu | cuda
    compile: bool = False            # torch.compile the model
    log_every: int = 25              # steps between metrics.csv rows
    ckpt_every: int = 100            # steps between checkpoints (resume points)
    snapshots: list = field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0])  # EMA kept at these
    out_dir: str = "runs"            # fractions of training; runs/<name>/

    def check(self):
        positive(self, "train", ["steps", "batch_size", "log_every", "ckpt_every"])
        for key, ok, want in [("lr", self.lr > 0, "> 0"), ("min_lr", self.min_lr >= 0, ">= 0"),
                              ("warmup", self.warmup >= 0, ">= 0"),
                              ("grad_clip", self.grad_clip > 0, "> 0"),
                              ("ema", 0 <= self.ema < 1, "in [0, 1)"),
                              ("video_weight", self.video_weight >= 0, ">= 0"),
                              ("action_weight", self.action_weight >= 0, ">= 0")]:
            check(ok, f"train.{key} = {getattr(self, key)}; expected {want}")
        check_choice("train.freeze", self.freeze, ["none", "video"])
        check_choice("train.device", self.device, ["auto", "cpu", "cuda"])
        for f in self.snapshots:
            check(type(f) in (int, float) and 0 < f <= 1, f"train.snapshots = {self.snapshots} "
                  f"has {f!r}; expected fractions of train.steps in (0, 1]")


@dataclass
@checked
class EvalConfig:
    episodes: int = 500              # closed-loop episodes per suite (standard error < ~2.3 points)
    suites: list = field(default_factory=lambda: ["all"])  # suite names; [all] = every suite
    replan: int = 4                  # actions executed per chunk before re-planning (<= horizon)
    curve_suites: list = field(default_factory=lambda: ["id"])  # suites run on every snapshot
    curve_episodes: int = 200        # episodes per suite per snapshot
    heldout_episodes: int = 64       # fresh expert episodes (seed below) for the analyses
    attn_samples: int = 256          # held-out windows for attention and hidden-state edits
    intervention_samples: int = 256  # fresh id episodes for the pixel interventions
    probe_samples: int = 1024        # held-out windows for the probes (split by episode)
    probe_steps: int = 300           # Adam steps of each linear probe
    psnr_samples: int = 64           # held-out windows for the PSNR of imagined futures
    latency_reps: int = 50           # timed act() calls at batch 1 (after 5 warm-up calls)
    examples: int = 6                # windows shown in the attention and PCA pictures
    seed: int = 1234                 # eval episodes, held-out demos and noise; != data.seed
    device: str = "auto"             # auto | cpu | cuda

    def check(self):
        positive(self, "eval", ["episodes", "replan", "curve_episodes", "heldout_episodes",
                                "attn_samples", "intervention_samples", "probe_samples",
                                "probe_steps", "psnr_samples", "latency_reps", "examples"])
        check_choice("eval.device", self.device, ["auto", "cpu", "cuda"])


SECTIONS = {"env": EnvConfig, "data": DataConfig, "video": VideoConfig, "model": ModelConfig,
            "align": AlignConfig, "train": TrainConfig, "eval": EvalConfig,
            "metaworld": MetaWorldConfig}


@dataclass
class Config:
    name: str = "cpu"                # the run folder: runs/<name>/
    env: EnvConfig = field(default_factory=EnvConfig)
    data: DataConfig = field(default_factory=DataConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    suites: dict = field(default_factory=dict)  # written once, in config.yaml
    model: ModelConfig = field(default_factory=ModelConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    metaworld: MetaWorldConfig = field(default_factory=MetaWorldConfig)


# ---- loading: YAML + base + overrides -> Config, every key and type checked --
def read_yaml(path, seen=()):
    """A config file as a dict, its `base:` (a path relative to the file) merged under it."""
    path = Path(path).resolve()
    if path in seen:
        raise ValueError(f"config base cycle: {' -> '.join(str(p) for p in (*seen, path))}")
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise TypeError(f"config {path} must be a mapping of sections, got {type(raw).__name__}")
    base = raw.pop("base", None)
    return raw if base is None else merge(read_yaml(path.parent / base, (*seen, path)), raw)


def merge(a, b):
    """b over a, recursively for mappings."""
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_override(arg):
    """'a.b=value' -> (['a', 'b'], value): a Python literal, else the raw string (str fields)."""
    if "=" not in arg:
        raise ValueError(f"override {arg!r} must look like section.key=value")
    key, text = arg.split("=", 1)
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text  # a bare word: only a str field accepts it (check_type says so otherwise)
    return key.split("."), value


def from_dict(raw):
    """A Config from a dict of sections (a YAML file's, or asdict() of a saved Config)."""
    check_keys("", raw, ["name", "suites", *SECTIONS])
    sections = {}
    for s, cls in SECTIONS.items():
        section = raw.get(s, {})
        if not isinstance(section, dict):
            raise TypeError(f"config section '{s}' must be a mapping, got {section!r}")
        check_keys(f"{s}.", section, [f.name for f in fields(cls)])
        sections[s] = cls(**{k: check_type(f"{s}.{k}", v, cls.__dataclass_fields__[k].type)
                             for k, v in section.items()})
    cfg = Config(name=check_type("name", raw.get("name", Config.name), str),
                 suites=check_type("suites", raw.get("suites", {}), dict), **sections)
    for suite in cfg.suites:  # every suite's keys and values now, not mid-eval
        n = get_suite(cfg.suites, suite).n_distractors[1]
        check(n <= cfg.env.max_distractors, f"suites.{suite}.n_distractors reaches {n}; expected "
              f"<= env.max_distractors = {cfg.env.max_distractors}")
    for key in ["suites", "curve_suites"]:
        names = getattr(cfg.eval, key)
        for name in names if names != ["all"] else []:  # [all]: every suite
            check_choice(f"eval.{key} entry", name, list(eval_suites(cfg)))
    check_choice("video.suite", cfg.video.suite, list(cfg.suites))
    for name in cfg.video.covered:
        check_choice("video.covered entry", name, list(cfg.suites))
    v, B = cfg.video, cfg.train.batch_size
    if v.n_clips:
        check(v.seed not in (cfg.data.seed, cfg.eval.seed), f"video.seed = {v.seed} equals "
              "data.seed or eval.seed: the clips would show the demos' or the evaluation's worlds")
        check(1 <= round(v.ratio * B) <= B - 1, f"video.ratio = {v.ratio} gives "
              f"{round(v.ratio * B)} of train.batch_size = {B} windows from the clips; expected "
              "1..batch_size - 1 (labelled windows and clips in every batch)")
    check(cfg.align.windows != "clips" or v.n_clips, "align.windows = 'clips' with video.n_clips "
          "= 0: there are no clip windows to align; expected video.n_clips > 0")
    m, d = cfg.model, cfg.data
    res = "metaworld.res" if is_metaworld(cfg) else "env.res"
    check(frame_res(cfg) % m.patch == 0, f"{res} = {frame_res(cfg)}; expected a multiple of "
          f"model.patch = {m.patch}")
    if is_metaworld(cfg):
        mw = cfg.metaworld
        check(not v.n_clips, f"video.n_clips = {v.n_clips} on a Meta-World run (metaworld.suites "
              "set); expected 0: the action-free clips are tabletop-only for now")
        check(d.stride % mw.frame_every == 0, f"data.stride = {d.stride}; expected a multiple of "
              f"metaworld.frame_every = {mw.frame_every} (context and future frames must be kept)")
        check(d.horizon <= mw.max_steps, f"data.horizon = {d.horizon}; expected <= "
              f"metaworld.max_steps = {mw.max_steps}")
        check(cfg.align.teacher != "oracle_task", "align.teacher = 'oracle_task' on a Meta-World "
              "run; expected oracle, dinov2, random or shuffled (Meta-World's oracle kinds, its "
              "mask ids, are task-relative already)")
    check(cfg.align.layer <= m.depth, f"align.layer = {cfg.align.layer}; expected 1..model.depth "
          f"= {m.depth} (1-based)")
    check(cfg.eval.replan <= d.horizon, f"eval.replan = {cfg.eval.replan}; expected 1..data."
          f"horizon = {d.horizon}")
    check(d.n_ctx + d.n_future <= 64, f"data.n_ctx + data.n_future = {d.n_ctx + d.n_future}; "
          "expected <= 64 frames (model.MAX_FRAMES)")
    check(d.horizon <= cfg.env.max_steps, f"data.horizon = {d.horizon}; expected <= env.max_steps "
          f"= {cfg.env.max_steps}")
    check(cfg.eval.seed != d.seed, f"eval.seed = {cfg.eval.seed} equals data.seed: held-out "
          "episodes must differ from the training ones")
    check(not (cfg.train.freeze == "video" and cfg.align.weight > 0), f"train.freeze = 'video' "
          f"with align.weight = {cfg.align.weight}: a frozen video model cannot be aligned")
    return cfg


def load_config(path, overrides=()):
    """config.yaml-style file + dotted overrides ('train.steps=100') -> a checked Config."""
    raw = read_yaml(path)
    for arg in overrides:
        keys, value = parse_override(arg)
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise KeyError(f"override {arg!r}: '{k}' is not a section")
        node[keys[-1]] = value
    return from_dict(raw)


def cli_config(argv, usage):
    """load_config for a command line: a bad key, value or path exits with one line, no traceback."""
    if not argv or argv[0].startswith("-"):
        raise SystemExit(usage)
    try:
        return load_config(argv[0], argv[1:])
    except (KeyError, ValueError, TypeError, FileNotFoundError, yaml.YAMLError) as e:
        raise SystemExit(f"error: {e.args[0] if e.args else e}") from None


# ---- what a run is: the tabletop world or Meta-World -------------------------
def is_metaworld(cfg):
    """A run is a Meta-World run when its config sets metaworld.suites (configs/metaworld.yaml)."""
    return bool(cfg.metaworld.suites)


def frame_res(cfg):
    """Frame side in pixels: metaworld.res for a Meta-World run, env.res otherwise."""
    return cfg.metaworld.res if is_metaworld(cfg) else cfg.env.res


def action_dim(cfg):
    """A: 4 for Meta-World (xyz deltas, gripper effort), 2 for the tabletop (xy velocity)."""
    return MW_ACTION_DIM if is_metaworld(cfg) else 2


def tasks(cfg):
    """(names of every task id: the rows of the task embeddings, the ids this run uses): Meta-
    World's MW_TASKS, all of them; the tabletop's every family and colour, env.task's family."""
    if is_metaworld(cfg):
        return list(MW_TASKS), list(range(len(MW_TASKS)))
    first = FAMILIES.index(cfg.env.task) * len(TASK_COLORS)
    return ([f"{f}-{c}" for f in FAMILIES for c in TASK_COLORS],
            list(range(first, first + len(TASK_COLORS))))


def eval_suites(cfg):
    """The suites a run is evaluated on: metaworld.suites (config.MWSuite) or suites (Suite)."""
    return cfg.metaworld.suites if is_metaworld(cfg) else cfg.suites


# ---- shared helpers ---------------------------------------------------------
def pick_device(name):
    """'auto' -> cuda when there is one, else cpu; any other name as it is."""
    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def atomic_save(obj, path):
    """torch.save through a per-process temporary file: a crash never leaves a truncated file, and
    two processes writing the same cache never mix."""
    tmp = f"{path}.{os.getpid()}.tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


@contextlib.contextmanager
def seeded_rng(seed=None):
    """Runs the body on torch's global RNG (seeded with `seed` unless None), then restores the CPU's
    and every GPU's RNG state, so the body never shifts the caller's random stream."""
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count()))):
        if seed is not None:
            torch.manual_seed(seed)
        yield
