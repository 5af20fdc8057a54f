"""The world action model (WAM): a video diffusion transformer whose hidden states feed an action head.

Shapes:  B batch   T frames = n_ctx context + Tf future (context first)   N = h*w tokens per frame
         H, W frame size   p patch   D video width   Dh action-head width   Ha action horizon
         A action dim   heads, d = width / heads   L, Lq, Lk tokens in one attention call
Video tokens are (B, T*N, D), time-major, row-major in each frame. Rectified flow everywhere:
x_t = (1 - t) x0 + t eps, the networks predict v = eps - x0, sampling runs t = 1 -> 0 (Euler).

    video pass:     context (t=0) + noisy future (t~U(0,1)) -> blocks 1..depth -> final_layer -> v
    foresight pass: context (t=0) + pure noise (t=1) -> blocks -> hidden[l_j] -> bridge[j]
                    -> action block j (self-attn, cross-attn to the bridged tokens, MLP) -> action v
"""
import math

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import Mlp
from torch import nn

from config import action_dim, frame_res, seeded_rng, tasks

MAX_FRAMES = 64  # length of the fixed temporal sin-cos table: T <= 64 frames


def math_attention(q, k, v):
    """Explicit softmax(q k^T / sqrt(d)) v, with the probabilities: q (B, heads, Lq, d), k and v
    (B, heads, Lk, d) -> out (B, heads, Lq, d), probs (B, heads, Lq, Lk)."""
    scores = (q @ k.transpose(-2, -1)).float() * q.shape[-1] ** -0.5  # (B, heads, Lq, Lk)
    probs = scores.softmax(-1).to(q.dtype)  # fp32 softmax, as sdpa does
    return probs @ v, probs


def sincos_1d(dim, pos):
    """Fixed sin-cos embedding of positions pos (L,) -> (L, dim)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim // 2))  # (dim/2,)
    out = pos.double()[:, None] * omega[None]  # (L, dim/2)
    return torch.cat([out.sin(), out.cos()], 1).float()  # (L, dim)


def sincos_2d(dim, h, w):
    """Fixed 2-D sin-cos embedding of an h x w grid, row-major: half the channels rows, half columns."""
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")  # (h, w) each
    return torch.cat([sincos_1d(dim // 2, rows.flatten()), sincos_1d(dim // 2, cols.flatten())], 1)


def bridge_map(depth, head_depth):
    """1-based video layer read by action block j: int(j (depth-1) / (head_depth-1) + 0.5) + 1.
    Halves round up (not round-half-even); first block layer 1, last (or only) block layer depth."""
    if head_depth == 1:
        return [depth]
    return [int(j * (depth - 1) / (head_depth - 1) + 0.5) + 1 for j in range(head_depth)]


def flow_pair(x0, eps, t):
    """Rectified flow: x_t = (1 - t) x0 + t eps and its velocity target eps - x0; t (B,) per sample."""
    t = t.view(-1, *[1] * (x0.dim() - 1))  # (B, 1, ...)
    return (1 - t) * x0 + t * eps, eps - x0  # like x0 each


def modulate(x, shift, scale):
    """DiT's adaLN on x (B, G*L, D), one shift and scale (B, G, D) per group of L tokens: a group is
    a frame in the video DiT (modulation computed per frame, not per token), the chunk (G=1) in the head."""
    B, G, D = shift.shape
    x = x.view(B, G, -1, D)  # (B, G, L, D)
    return (x * (1 + scale.unsqueeze(2)) + shift.unsqueeze(2)).view(B, -1, D)  # (B, G*L, D)


def gate(x, g):
    """adaLN-Zero gate: x (B, G*L, D) times g (B, G, D), per group as in modulate."""
    B, G, D = g.shape
    return (x.view(B, G, -1, D) * g.unsqueeze(2)).view(B, -1, D)  # (B, G*L, D)


def mlp(dim, ratio):
    return Mlp(dim, int(dim * ratio), act_layer=lambda: nn.GELU(approximate="tanh"))  # DiT's


class TimestepEmbedder(nn.Module):
    """DiT's timestep embedder: sinusoid of 1000 t, then a 2-layer MLP; t (M,) in [0, 1] -> (M, D)."""

    def __init__(self, dim, freq_dim=256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t):
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device) / half)  # (half,)
        args = 1000 * t.float()[:, None] * freqs[None]  # (M, half); 1000 t spans DiT's 0..999 steps
        return self.mlp(torch.cat([args.cos(), args.sin()], -1))  # (M, D)


class Attention(nn.Module):
    """Multi-head self-attention (fused qkv), or cross-attention (q from x, k and v precomputed).
    Fused SDPA, or the explicit softmax where the attention maps are asked for."""

    def __init__(self, dim, heads, cross=False):
        super().__init__()
        self.heads = heads
        if cross:
            self.q, self.kv = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim)
        else:
            self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def split(self, x, n):  # (B, L, n*dim) -> n x (B, heads, L, d)
        return rearrange(x, "b l (n h d) -> n b h l d", n=n, h=self.heads).unbind(0)

    def keys_values(self, ctx):
        return self.split(self.kv(ctx), 2)  # k, v (B, heads, Lk, d)

    def forward(self, x, kv=None, return_attn=False):
        if kv is None:
            q, k, v = self.split(self.qkv(x), 3)  # (B, heads, L, d) each
        else:
            (q,), (k, v) = self.split(self.q(x), 1), kv  # (B, heads, Lq, d), (B, heads, Lk, d)
        if return_attn:
            out, probs = math_attention(q, k, v)  # (B, heads, Lq, d), (B, heads, Lq, Lk)
        else:
            out, probs = F.scaled_dot_product_attention(q, k, v), None  # (B, heads, Lq, d)
        return self.proj(rearrange(out, "b h l d -> b l (h d)")), probs  # (B, Lq, dim)


class DiTBlock(nn.Module):
    """DiT block with adaLN-Zero: x (B, G*L, D), conditioning c (B, G, D) -> (B, G*L, D)."""

    def __init__(self, dim, heads, mlp_ratio):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = mlp(dim, mlp_ratio)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x, c):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, -1)
        x = x + gate(self.attn(modulate(self.norm1(x), shift1, scale1))[0], gate1)  # (B, G*L, D)
        return x + gate(self.mlp(modulate(self.norm2(x), shift2, scale2)), gate2)  # (B, G*L, D)


class ActionBlock(nn.Module):
    """Action-head block: self-attention, cross-attention to bridged video tokens, MLP; adaLN-Zero."""

    def __init__(self, dim, heads, mlp_ratio):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.cross_attn = Attention(dim, heads, cross=True)
        self.norm3 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = mlp(dim, mlp_ratio)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 9 * dim))

    def forward(self, x, c, kv, return_attn=False):
        m = self.adaLN_modulation(c).chunk(9, -1)  # 9 x (B, 1, Dh): shift, scale, gate per sublayer
        x = x + gate(self.attn(modulate(self.norm1(x), m[0], m[1]))[0], m[2])  # (B, Ha, Dh)
        y, probs = self.cross_attn(modulate(self.norm2(x), m[3], m[4]), kv, return_attn)
        x = x + gate(y, m[5])  # (B, Ha, Dh)
        return x + gate(self.mlp(modulate(self.norm3(x), m[6], m[7])), m[8]), probs  # (B, Ha, Dh)


class FinalLayer(nn.Module):
    """DiT's final layer: adaLN then a linear map to the outputs; x (B, G*L, D), c (B, G, D)."""

    def __init__(self, dim, out):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, out)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, -1)  # (B, G, D) each
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (B, G*L, out)


class ActionHead(nn.Module):
    """The action DiT: Ha noisy-action tokens conditioned on action timestep + task; block j
    cross-attends to video layer layers[j] through bridge[j]; outputs the action velocity. So that
    it reads the video from the first steps (results/LOG.md, design notes): the task embedding
    joins the action tokens, the cross-attention's gate starts at 1, and the bridged tokens carry a
    fixed sin-cos code of their grid cell and frame."""

    def __init__(self, mcfg, layers, horizon, n_tasks, action_dim, grid, n_frames):
        super().__init__()
        D, Dh, r = mcfg.width, mcfg.head_width, mcfg.mlp_ratio
        self.layers = list(layers)  # 1-based video layer read by each block
        self.x_embedder = nn.Linear(action_dim, Dh)
        self.pos_embed = nn.Parameter(torch.zeros(1, horizon, Dh))  # (1, Ha, Dh), learned
        self.t_embedder = TimestepEmbedder(Dh)
        self.y_embedder = nn.Embedding(n_tasks, Dh)
        self.bridge = nn.ModuleList(nn.Sequential(nn.Linear(D, Dh), nn.LayerNorm(Dh)) for _ in layers)
        kv_pos = sincos_2d(Dh, grid, grid)[None] + sincos_1d(Dh, torch.arange(n_frames))[:, None]
        self.register_buffer("kv_pos", kv_pos.flatten(0, 1)[None], persistent=False)  # (1, T*N, Dh)
        self.blocks = nn.ModuleList(ActionBlock(Dh, mcfg.head_heads, r) for _ in layers)
        self.final_layer = FinalLayer(Dh, action_dim)

    def keys_values(self, hidden):
        """Bridge each block's video layer into its cross-attention keys and values, once per
        foresight pass (every Euler step reuses them); hidden {l: (B, T*N, D)}."""
        return [block.cross_attn.keys_values(bridge(hidden[layer]) + self.kv_pos)  # (B,heads,T*N,d) x2
                for block, bridge, layer in zip(self.blocks, self.bridge, self.layers)]

    def forward(self, x, t, task, kvs, return_attn=False):
        """x (B, Ha, A) noisy actions, t (B,) -> velocity (B, Ha, A), maps [(B, heads, Ha, T*N)]."""
        c = (self.t_embedder(t) + self.y_embedder(task)).unsqueeze(1)  # (B, 1, Dh)
        x = self.x_embedder(x) + self.pos_embed + c  # (B, Ha, Dh): the queries know the task
        maps = []
        for block, kv in zip(self.blocks, kvs):
            x, probs = block(x, c, kv, return_attn)  # (B, Ha, Dh), (B, heads, Ha, T*N) or None
            maps.append(probs)
        return self.final_layer(x, c), maps  # (B, Ha, A)


class WAM(nn.Module):
    """Video DiT (x_embedder ... final_layer) plus the action head that reads its foresight pass,
    and, for AGRA (align_dim: the teacher's feature dim Dt), the projector on the tapped layer."""

    def __init__(self, cfg, align_dim=None):
        super().__init__()
        mcfg, d = cfg.model, cfg.data
        D, p, depth, res = mcfg.width, mcfg.patch, mcfg.depth, frame_res(cfg)
        self.mcfg, self.res, self.n_ctx, self.n_future = mcfg, res, d.n_ctx, d.n_future
        self.horizon, self.action_dim = d.horizon, action_dim(cfg)
        self.task_names, self.task_ids = tasks(cfg)  # every id's name (one table), this run's ids
        self.n_tasks = len(self.task_names)
        self.align_layer, self.align_pass = cfg.align.layer, cfg.align.apply_to  # AGRA's tap
        self.grid = res // p  # h = w
        self.n_tokens = self.grid**2  # N
        self.x_embedder = nn.Conv2d(3, D, p, stride=p)  # per-frame patch embedding
        self.t_embedder = TimestepEmbedder(D)
        self.y_embedder = nn.Embedding(self.n_tasks, D)
        self.register_buffer("pos_embed", sincos_2d(D, self.grid, self.grid)[None],
                             persistent=False)  # (1, N, D) fixed
        self.register_buffer("time_embed", sincos_1d(D, torch.arange(MAX_FRAMES))[:, None],
                             persistent=False)  # (MAX_FRAMES, 1, D) fixed
        self.blocks = nn.ModuleList(DiTBlock(D, mcfg.heads, mcfg.mlp_ratio) for _ in range(depth))
        self.final_layer = FinalLayer(D, p * p * 3)
        # the foresight pass's future frames: one fixed draw of pure noise, so the pass never reads
        # the real future and act() is a deterministic function of (frames, task, action noise)
        gen = torch.Generator().manual_seed(0)
        self.register_buffer("foresight_noise", torch.randn(1, d.n_future, 3, res, res,
                                                            generator=gen))
        layers = (bridge_map(depth, mcfg.head_depth) if mcfg.bridge == "multi"
                  else [mcfg.bridge_layer] * mcfg.head_depth)
        self.action_head = ActionHead(mcfg, layers, d.horizon, self.n_tasks, self.action_dim,
                                      self.grid, d.n_ctx + d.n_future)
        self.initialize_weights()
        self.projector = None
        if align_dim is not None:  # REPA's projector h_phi: D -> hidden -> hidden -> Dt. Its own
            # stream (the seed + 1): an AGRA run starts from its baseline's weights and noise
            h = cfg.align.proj_hidden
            with seeded_rng(torch.initial_seed() + 1):
                self.projector = nn.Sequential(nn.Linear(D, h), nn.SiLU(), nn.Linear(h, h),
                                               nn.SiLU(), nn.Linear(h, align_dim))

    def initialize_weights(self):
        def _basic_init(module):
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        self.apply(_basic_init)
        w = self.x_embedder.weight.data  # initialise the patch embedding like nn.Linear (DiT)
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        head = self.action_head
        nn.init.normal_(head.pos_embed, std=0.02)
        nn.init.normal_(self.y_embedder.weight, std=0.02)
        nn.init.normal_(head.y_embedder.weight, std=1.0)  # the task is part of the action tokens
        for embedder in (self.t_embedder, head.t_embedder):
            nn.init.normal_(embedder.mlp[0].weight, std=0.02)
            nn.init.normal_(embedder.mlp[2].weight, std=0.02)
        # adaLN-Zero: every block starts as the identity, and both outputs (video, action) at 0
        finals = [self.final_layer, head.final_layer]
        zeroed = [m.adaLN_modulation[-1] for m in [*self.blocks, *head.blocks, *finals]]
        for layer in zeroed + [final.linear for final in finals]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        for block in head.blocks:  # ... except the cross-attention gate (chunk 5 of 9), open at 1
            block.adaLN_modulation[-1].bias.data.view(9, -1)[5] = 1.0

    def configure_optimizer(self, lr, weight_decay):
        """AdamW over the trainable parameters; decay on weight matrices only (nanoGPT's rule)."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))

    def bridge_layers(self):
        return list(self.action_head.layers)

    def _t_frames(self, t_future):
        """Per-frame noise levels (B, T): context clean (t=0), every future frame at t_future (B,)."""
        ctx = torch.zeros(len(t_future), self.n_ctx, device=t_future.device)  # (B, n_ctx)
        return torch.cat([ctx, t_future[:, None].expand(-1, self.n_future)], 1)  # (B, T)

    def _run(self, video, t_frames, task, layers, upto):
        """Embed the frames and run blocks[:upto] -> tokens (B, T*N, D), cond (B, T, D), hidden."""
        B, T = video.shape[:2]
        x = self.x_embedder(video.flatten(0, 1))  # (B*T, D, h, w)
        x = rearrange(x, "(b t) d h w -> b t (h w) d", b=B)  # (B, T, N, D)
        x = (x + self.pos_embed + self.time_embed[:T]).flatten(1, 2)  # (B, T*N, D)
        c = self.t_embedder(t_frames.flatten()).view(B, T, -1)  # (B, T, D) per-frame timestep
        c = c + self.y_embedder(task)[:, None]  # (B, T, D)
        hidden = {}
        for i, block in enumerate(self.blocks[:upto]):
            x = block(x, c)  # (B, T*N, D)
            if i + 1 in layers:  # REPA's 1-based tap: layer l = output of blocks[l-1]
                hidden[i + 1] = x
        return x, c, hidden

    def video_forward(self, video, t_frames, task, layers=()):
        """video (B, T, 3, H, W), t_frames (B, T), task (B,) -> velocity of the future frames
        (B, Tf, 3, H, W) and the hidden states {l: (B, T*N, D)} of the requested layers."""
        x, c, hidden = self._run(video, t_frames, task, layers, self.mcfg.depth)
        out = self.final_layer(x[:, self.n_ctx * self.n_tokens:], c[:, self.n_ctx:])  # B,Tf*N,ppc
        return rearrange(out, "b (t h w) (p q c) -> b t c (h p) (w q)", h=self.grid, w=self.grid,
                         p=self.mcfg.patch, q=self.mcfg.patch), hidden  # (B, Tf, 3, H, W)

    def foresight(self, ctx, task, layers):
        """Hidden states {l: (B, T*N, D)} of the layers, from the context ctx (B, n_ctx, 3, H, W)
        (t=0) and the fixed pure-noise future (t=1). Blocks after the deepest layer are skipped."""
        B = ctx.shape[0]
        noise = self.foresight_noise.expand(B, -1, -1, -1, -1).to(ctx.dtype)  # (B, Tf, 3, H, W)
        t_frames = self._t_frames(torch.ones(B, device=ctx.device))  # (B, T)
        video = torch.cat([ctx, noise], 1)  # (B, T, 3, H, W)
        return self._run(video, t_frames, task, set(layers), max(layers))[2]

    def forward(self, batch, n_labelled=None):
        """Both passes on a data batch -> {"video", "action"} flow-matching losses, and z: the
        projector's output at the tapped layer (B, T*N, Dt), or None without a projector. The
        video and alignment losses read every window; the action loss the first n_labelled
        (default: all; 0: the action head does not run, its loss is 0)."""
        video, task = batch["video"], batch["task"]  # (B, T, 3, H, W), (B,)
        n = len(video) if n_labelled is None else n_labelled
        tap = [self.align_layer] if self.projector is not None else []
        ctx, x0 = video[:, : self.n_ctx], video[:, self.n_ctx:]  # (B, n_ctx, ...), (B, Tf, ...)
        # (1) video pass: future frames at a random noise level, clean context
        t = torch.rand(len(video), device=video.device)  # (B,)
        xt, target = flow_pair(x0, torch.randn_like(x0), t)  # (B, Tf, 3, H, W) each
        v, hidden_video = self.video_forward(torch.cat([ctx, xt], 1), self._t_frames(t), task,
                                             tap if self.align_pass == "video" else [])
        losses = {"video": F.mse_loss(v, target), "action": video.new_zeros(())}
        # (2) foresight pass: future at pure noise; its hidden states feed the action head
        layers = (self.bridge_layers() if n else []) + (tap if self.align_pass == "foresight"
                                                        else [])
        hidden = self.foresight(ctx, task, layers) if layers else {}
        if n:
            actions = batch["actions"][:n]  # (n, Ha, A): the labelled windows come first
            ta = torch.rand(n, device=video.device)  # (n,)
            at, target_a = flow_pair(actions, torch.randn_like(actions), ta)  # (n, Ha, A) each
            kvs = self.action_head.keys_values({k: h[:n] for k, h in hidden.items()})
            va, _ = self.action_head(at, ta, task[:n], kvs)  # (n, Ha, A)
            losses["action"] = F.mse_loss(va, target_a)
        if not tap:
            return losses, None
        h = (hidden if self.align_pass == "foresight" else hidden_video)[self.align_layer]
        return losses, self.projector(h.float())  # AGRA: h_phi(h^[l]) (B, T*N, Dt)

    def sample_actions(self, hidden, task, steps, noise=None, return_attn=False):
        """Euler sampling of the action head from a foresight pass's hidden {l: (B, T*N, D)}
        -> actions (B, Ha, A) in [-1, 1] [, cross-attention maps per block (B, heads, Ha, T*N)
        from the last Euler step]. Explicit noise (B, Ha, A) makes it deterministic."""
        kvs = self.action_head.keys_values(hidden)
        B, maps = len(task), []
        x = torch.randn(B, self.horizon, self.action_dim, device=task.device) if noise is None \
            else noise  # (B, Ha, A) at t = 1

        def velocity(x, t, last):
            v, m = self.action_head(x, t, task, kvs, return_attn and last)  # (B, Ha, A)
            maps[:] = m
            return v
        x = euler(velocity, x, steps).clamp(-1, 1)  # (B, Ha, A)
        return (x, maps) if return_attn else x

    def check_inputs(self, frames, task, noise, noise_shape, steps):
        """The checks of a public call (act, imagine), with one host sync."""
        want, dtype = (self.n_ctx, 3, self.res, self.res), self.x_embedder.weight.dtype
        what = lambda x: tuple(x.shape) if torch.is_tensor(x) else repr(x)
        if not (type(steps) is int and steps >= 1):
            raise ValueError(f"steps = {steps!r}; expected an int >= 1")
        if not torch.is_tensor(frames) or frames.dim() != 5 or frames.shape[1:] != want \
                or len(frames) == 0:
            raise ValueError(f"frames {what(frames)}; expected (B >= 1, *{want}) {dtype} in [-1, 1]")
        if frames.dtype != dtype:
            raise TypeError(f"frames dtype {frames.dtype}; expected {dtype} in [-1, 1] (uint8 "
                            f"frames: world.to_float(frames); other floats: frames.to({dtype}))")
        if not torch.is_tensor(task) or task.dtype != torch.long or task.shape != frames.shape[:1]:
            raise TypeError(f"task {what(task)}{' ' + str(task.dtype) if torch.is_tensor(task) else ''}"
                            f"; expected a "
                            f"({len(frames)},) long tensor of ids {self.task_ids}")
        if noise is not None and (not torch.is_tensor(noise) or noise.shape != noise_shape):
            raise ValueError(f"noise {what(noise)}; expected {noise_shape}")
        finite = frames.new_ones(()) if noise is None else torch.isfinite(noise).all().to(frames)
        lo, hi, tlo, thi, finite = torch.stack([frames.min(), frames.max(), task.min().to(frames),
                                                task.max().to(frames), finite]).tolist()  # sync
        if not -1 <= lo <= hi <= 1:  # also catches NaN
            raise ValueError(f"frames range [{lo!r}, {hi!r}]; expected [-1, 1]")
        if tlo < self.task_ids[0] or thi > self.task_ids[-1]:
            raise ValueError(f"task ids in [{int(tlo)}, {int(thi)}]; expected ids {self.task_ids} "
                             f"({', '.join(self.task_names[i] for i in self.task_ids)})")
        if not finite:
            raise ValueError("noise has NaN or inf values; expected finite Gaussian noise")

    @torch.no_grad()
    def act(self, frames, task, steps=None, noise=None):
        """frames (B, n_ctx, 3, H, W) in [-1, 1], task (B,) -> action chunk (B, Ha, A) in [-1, 1]:
        one foresight pass, then `steps` Euler steps of the action head only."""
        steps = self.mcfg.act_steps if steps is None else steps
        shape = torch.Size([len(frames), self.horizon, self.action_dim])
        self.check_inputs(frames, task, noise, shape, steps)
        hidden = self.foresight(frames, task, self.bridge_layers())
        return self.sample_actions(hidden, task, steps, noise)

    @torch.no_grad()
    def imagine(self, frames, task, steps=None, noise=None):
        """Euler sampling of the future frames: (B, n_ctx, 3, H, W) -> (B, Tf, 3, H, W) in [-1, 1]."""
        shape = torch.Size([len(frames), self.n_future, 3, self.res, self.res])
        steps = self.mcfg.video_steps if steps is None else steps
        self.check_inputs(frames, task, noise, shape, steps)
        x = torch.randn(shape, device=frames.device) if noise is None else noise  # t = 1

        def velocity(x, t, last):
            return self.video_forward(torch.cat([frames, x], 1), self._t_frames(t), task)[0]
        return euler(velocity, x, steps).clamp(-1, 1)  # (B, Tf, 3, H, W)


def euler(velocity, x, steps):
    """Rectified-flow sampling: x from t = 1 (noise) to t = 0 in `steps` Euler steps of
    velocity(x, t (B,), last step?) -> dx/dt; t counts down 1, 1 - 1/steps, ..., 1/steps."""
    for i in range(steps):
        t = torch.full((len(x),), 1 - i / steps, device=x.device)  # (B,)
        x = x - velocity(x, t, i == steps - 1) / steps  # Euler step t -> t - 1/steps
    return x
