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
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

MAX_FRAMES = 64  # length of the fixed temporal sin-cos table: any T <= 64 frames works


@dataclass
class ModelConfig:
    patch: int = 4  # patch side p in pixels (res must be a multiple)
    width: int = 96  # video DiT width D (multiple of 4 and of heads)
    depth: int = 4  # video DiT blocks; hidden layers are 1..depth (layer l = output of blocks[l-1])
    heads: int = 4  # attention heads of the video DiT
    mlp_ratio: float = 4.0  # MLP hidden width / block width (video DiT and action head)
    head_width: int = 96  # action head width Dh
    head_depth: int = 2  # action head blocks
    head_heads: int = 4  # attention heads of the action head
    bridge: str = "multi"  # "multi": block j reads its own layer (bridge_map); "single": one layer
    bridge_layer: int = 0  # 1-based layer for bridge "single"; 0 = the align layer
    attn: str = "auto"  # "auto" | "sdpa" (fused) | "math" (explicit softmax)
    act_steps: int = 4  # Euler steps of the action head in act()
    video_steps: int = 8  # Euler steps of the video model in imagine()


def attention(q, k, v, impl="auto", return_attn=False):
    """q (B, heads, Lq, d), k and v (B, heads, Lk, d) -> (B, heads, Lq, d) [, probs (B, heads, Lq, Lk)].

    "sdpa": fused F.scaled_dot_product_attention; "math": explicit softmax(q k^T / sqrt(d)) v, which
    can return the probabilities; "auto": sdpa, or math where sdpa is missing or probs are asked for.
    """
    if impl == "auto":
        impl = "math" if return_attn or not hasattr(F, "scaled_dot_product_attention") else "sdpa"
    if impl == "sdpa":
        if return_attn:
            raise ValueError("attention impl 'sdpa' cannot return probabilities; use 'math' or 'auto'")
        return F.scaled_dot_product_attention(q, k, v)  # (B, heads, Lq, d)
    if impl == "math":
        scores = (q @ k.transpose(-2, -1)).float() * q.shape[-1] ** -0.5  # (B, heads, Lq, Lk)
        probs = scores.softmax(-1).to(q.dtype)  # (B, heads, Lq, Lk); fp32 softmax, as sdpa does
        out = probs @ v  # (B, heads, Lq, d)
        return (out, probs) if return_attn else out
    raise ValueError(f"unknown attention impl '{impl}'; expected 'auto', 'sdpa' or 'math'")


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
    hidden = int(dim * ratio)
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))


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
    """Multi-head self-attention (fused qkv), or cross-attention (q from x, k and v precomputed)."""

    def __init__(self, dim, heads, impl, cross=False):
        super().__init__()
        self.heads, self.impl = heads, impl
        if cross:
            self.q, self.kv = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim)
        else:
            self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def split(self, x, n):
        B, L, _ = x.shape
        return x.view(B, L, n, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)  # n x (B, heads, L, d)

    def keys_values(self, ctx):
        return self.split(self.kv(ctx), 2)  # k, v (B, heads, Lk, d)

    def forward(self, x, kv=None, return_attn=False):
        if kv is None:
            q, k, v = self.split(self.qkv(x), 3)  # (B, heads, L, d) each
        else:
            (q,), (k, v) = self.split(self.q(x), 1), kv  # (B, heads, Lq, d), (B, heads, Lk, d)
        # attention maps only exist on the math path, whatever impl the config asks for
        out = attention(q, k, v, "math" if return_attn else self.impl, return_attn)
        out, probs = out if return_attn else (out, None)  # (B, heads, Lq, d), (B, heads, Lq, Lk)
        B, _, L, _ = q.shape
        return self.proj(out.transpose(1, 2).reshape(B, L, -1)), probs  # (B, Lq, dim)


class DiTBlock(nn.Module):
    """DiT block with adaLN-Zero: x (B, G*L, D), conditioning c (B, G, D) -> (B, G*L, D)."""

    def __init__(self, dim, heads, mlp_ratio, impl):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads, impl)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = mlp(dim, mlp_ratio)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x, c):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, -1)
        x = x + gate(self.attn(modulate(self.norm1(x), shift1, scale1))[0], gate1)  # (B, G*L, D)
        return x + gate(self.mlp(modulate(self.norm2(x), shift2, scale2)), gate2)  # (B, G*L, D)


class ActionBlock(nn.Module):
    """Action-head block: self-attention, cross-attention to bridged video tokens, MLP; adaLN-Zero."""

    def __init__(self, dim, heads, mlp_ratio, impl):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads, impl)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.cross_attn = Attention(dim, heads, impl, cross=True)
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
    cross-attends to video layer layers[j] through bridge[j]; outputs the action velocity.

    Three choices make the head read the video from the first steps instead of after a long plateau
    (measured on a head-only probe, README "Design notes"): the task and timestep embedding is added
    to the action tokens, not only used by adaLN, so the queries depend on the task at init; the
    cross-attention's gate starts at 1, not 0; the bridged video tokens get a fixed sin-cos code of
    their grid cell and frame, so where a token is stays readable whatever the video layer did."""

    def __init__(self, mcfg, layers, horizon, n_tasks, action_dim, grid, n_frames):
        super().__init__()
        D, Dh, r, impl = mcfg.width, mcfg.head_width, mcfg.mlp_ratio, mcfg.attn
        self.layers = list(layers)  # 1-based video layer read by each block
        self.x_embedder = nn.Linear(action_dim, Dh)
        self.pos_embed = nn.Parameter(torch.zeros(1, horizon, Dh))  # (1, Ha, Dh), learned
        self.t_embedder = TimestepEmbedder(Dh)
        self.y_embedder = nn.Embedding(n_tasks, Dh)
        self.bridge = nn.ModuleList(nn.Sequential(nn.Linear(D, Dh), nn.LayerNorm(Dh)) for _ in layers)
        kv_pos = sincos_2d(Dh, grid, grid)[None] + sincos_1d(Dh, torch.arange(n_frames))[:, None]
        self.register_buffer("kv_pos", kv_pos.flatten(0, 1)[None], persistent=False)  # (1, T*N, Dh)
        self.blocks = nn.ModuleList(ActionBlock(Dh, mcfg.head_heads, r, impl) for _ in layers)
        self.final_layer = FinalLayer(Dh, action_dim)

    def keys_values(self, hidden):
        """Bridge each block's video layer into its cross-attention keys and values, once per
        foresight pass (every Euler step reuses them); hidden {l: (B, T*N, D)}."""
        missing = [layer for layer in self.layers if layer not in hidden]
        if missing:
            raise KeyError(f"hidden has layers {sorted(hidden)}; the action head reads {self.layers}")
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
    """Video DiT (x_embedder ... final_layer) plus the action head that reads its foresight pass."""

    def __init__(self, mcfg, res, n_ctx, n_future, horizon, n_tasks, action_dim=2, align_layer=0):
        super().__init__()
        D, p, depth = mcfg.width, mcfg.patch, mcfg.depth
        for name, value, valid in [("attn", mcfg.attn, ("auto", "sdpa", "math")),
                                   ("bridge", mcfg.bridge, ("multi", "single"))]:
            if value not in valid:
                raise ValueError(f"model.{name}='{value}'; expected one of {valid}")
        if (res % p or D % 4 or D % mcfg.heads or mcfg.head_width % mcfg.head_heads
                or depth < 1 or mcfg.head_depth < 1):
            raise ValueError(f"need res % patch == 0, width % 4 == 0, width % heads == 0, head_width"
                             f" % head_heads == 0, depth and head_depth >= 1; got res={res}, {mcfg}")
        if n_ctx < 1 or n_future < 1 or n_ctx + n_future > MAX_FRAMES:
            raise ValueError(f"n_ctx={n_ctx}, n_future={n_future}; need >= 1 each, <= {MAX_FRAMES}")
        self.mcfg, self.res, self.n_ctx, self.n_future = mcfg, res, n_ctx, n_future
        self.horizon, self.n_tasks, self.action_dim = horizon, n_tasks, action_dim
        self.grid = res // p  # h = w
        self.n_tokens = self.grid**2  # N
        self.x_embedder = nn.Conv2d(3, D, p, stride=p)  # per-frame patch embedding
        self.t_embedder = TimestepEmbedder(D)
        self.y_embedder = nn.Embedding(n_tasks, D)
        # fixed sin-cos buffers, not parameters, so the frame count can change at eval
        self.register_buffer("pos_embed", sincos_2d(D, self.grid, self.grid)[None],
                             persistent=False)  # (1, N, D)
        self.register_buffer("time_embed", sincos_1d(D, torch.arange(MAX_FRAMES))[:, None],
                             persistent=False)  # (MAX_FRAMES, 1, D)
        self.blocks = nn.ModuleList(DiTBlock(D, mcfg.heads, mcfg.mlp_ratio, mcfg.attn)
                                    for _ in range(depth))
        self.final_layer = FinalLayer(D, p * p * 3)
        # the foresight pass's future frames: one fixed draw of pure noise, so the pass never reads
        # the real future and act() is a deterministic function of (frames, task, action noise)
        gen = torch.Generator().manual_seed(0)
        self.register_buffer("foresight_noise", torch.randn(1, n_future, 3, res, res, generator=gen))
        if mcfg.bridge == "multi":
            layers = bridge_map(depth, mcfg.head_depth)
        else:
            layer = mcfg.bridge_layer or align_layer
            if not 1 <= layer <= depth:
                raise ValueError(f"bridge 'single' reads layer {layer} (bridge_layer="
                                 f"{mcfg.bridge_layer}, align_layer={align_layer}); need 1..{depth}")
            layers = [layer] * mcfg.head_depth
        self.action_head = ActionHead(mcfg, layers, horizon, n_tasks, action_dim, self.grid,
                                      n_ctx + n_future)
        self.initialize_weights()

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

    def bridge_layers(self):
        return list(self.action_head.layers)

    def _check_layers(self, layers):
        bad = [layer for layer in layers if not 1 <= layer <= self.mcfg.depth]
        if bad:
            raise ValueError(f"layers {bad} out of range; video layers are 1..{self.mcfg.depth}")

    def _check_inputs(self, frames, task, n_frames, name="frames"):
        expected = (n_frames, 3, self.res, self.res)
        if frames.dim() != 5 or tuple(frames.shape[1:]) != expected:
            raise ValueError(f"{name} has shape {tuple(frames.shape)}; expected (B, *{expected})")
        if not frames.is_floating_point():
            raise ValueError(f"{name} dtype {frames.dtype}; expected float in [-1, 1] "
                             "(uint8 frames: x / 127.5 - 1)")
        lo, hi = torch.aminmax(frames)  # () each
        if not (-1 <= lo.item() and hi.item() <= 1):  # also catches NaN
            raise ValueError(f"{name} range [{lo.item():.3g}, {hi.item():.3g}]; expected [-1, 1]")
        self._check_task(task, frames.shape[0])

    def _check_task(self, task, batch):
        if tuple(task.shape) != (batch,) or task.dtype != torch.long:
            raise ValueError(f"task {tuple(task.shape)} {task.dtype}; expected ({batch},) long")
        if task.min().item() < 0 or task.max().item() >= self.n_tasks:
            raise ValueError(f"task ids {task.tolist()}; expected ids in 0..{self.n_tasks - 1}")

    def _t_frames(self, t_future):
        """Per-frame noise levels (B, T): context clean (t=0), every future frame at t_future (B,)."""
        ctx = torch.zeros(len(t_future), self.n_ctx, device=t_future.device)  # (B, n_ctx)
        return torch.cat([ctx, t_future[:, None].expand(-1, self.n_future)], 1)  # (B, T)

    def _run(self, video, t_frames, task, layers, upto):
        """Embed the frames and run blocks[:upto] -> tokens (B, T*N, D), cond (B, T, D), hidden."""
        B, T = video.shape[:2]
        if T > MAX_FRAMES or tuple(t_frames.shape) != (B, T):
            raise ValueError(f"video {tuple(video.shape)}, t_frames {tuple(t_frames.shape)}: need "
                             f"t_frames (B, T) and T <= {MAX_FRAMES}")
        x = self.x_embedder(video.flatten(0, 1))  # (B*T, D, h, w)
        x = x.flatten(2).transpose(1, 2).view(B, T, self.n_tokens, -1)  # (B, T, N, D)
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
        self._check_layers(layers)
        x, c, hidden = self._run(video, t_frames, task, layers, self.mcfg.depth)
        n0, B, p, g = self.n_ctx * self.n_tokens, video.shape[0], self.mcfg.patch, self.grid
        out = self.final_layer(x[:, n0:], c[:, self.n_ctx:])  # (B, Tf*N, p*p*3)
        out = out.view(B, -1, g, g, p, p, 3)  # (B, Tf, h, w, p, p, 3)
        return out.permute(0, 1, 6, 2, 4, 3, 5).reshape(B, -1, 3, g * p, g * p), hidden

    def foresight(self, ctx, task, layers):
        """Hidden states {l: (B, T*N, D)} with clean context (t=0) and pure-noise future (t=1).
        Blocks after the deepest requested layer are skipped."""
        self._check_layers(layers)
        if not layers:
            raise ValueError("foresight needs at least one layer")
        if tuple(ctx.shape[1:]) != (self.n_ctx, 3, self.res, self.res):
            raise ValueError(f"ctx has shape {tuple(ctx.shape)}; expected (B, {self.n_ctx}, 3, "
                             f"{self.res}, {self.res}): the context frames only")
        B = ctx.shape[0]
        noise = self.foresight_noise.expand(B, -1, -1, -1, -1).to(ctx.dtype)  # (B, Tf, 3, H, W)
        t_frames = self._t_frames(torch.ones(B, device=ctx.device))  # (B, T)
        video = torch.cat([ctx, noise], 1)  # (B, T, 3, H, W)
        return self._run(video, t_frames, task, set(layers), max(layers))[2]

    def _noise(self, noise, shape, like):
        if noise is None:
            return torch.randn(shape, device=like.device, dtype=like.dtype)  # shape
        if tuple(noise.shape) != shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}; expected {shape}")
        return noise

    def sample_actions(self, hidden, task, steps, noise=None, return_attn=False):
        """Euler sampling of the action head from a foresight pass's hidden {l: (B, T*N, D)}
        -> actions (B, Ha, A) in [-1, 1] [, cross-attention maps per block (B, heads, Ha, T*N)
        from the last Euler step]. Explicit noise (B, Ha, A) makes it deterministic."""
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps={steps!r}; expected an int >= 1")
        kvs = self.action_head.keys_values(hidden)
        B = kvs[0][0].shape[0]
        self._check_task(task, B)
        x = self._noise(noise, (B, self.horizon, self.action_dim), kvs[0][0])  # (B, Ha, A), t=1
        for i in range(steps):
            t = torch.full((B,), 1 - i / steps, device=x.device)  # (B,)
            v, maps = self.action_head(x, t, task, kvs, return_attn and i == steps - 1)  # (B, Ha, A)
            x = x - v / steps  # (B, Ha, A) Euler step t -> t - 1/steps
        x = x.clamp(-1, 1)  # (B, Ha, A)
        return (x, maps) if return_attn else x

    def loss(self, batch, align_layer=0, align_pass="foresight"):
        """Both passes on a data batch -> ({"video", "action"} scalars, hidden (B, T*N, D) at
        align_layer from the align_pass pass, or None when align_layer == 0)."""
        video, actions, task = batch["video"], batch["actions"], batch["task"]  # B,T,3,H,W; B,Ha,A
        B = video.shape[0]
        shape = (B, self.n_ctx + self.n_future, 3, self.res, self.res)
        if tuple(video.shape) != shape or tuple(actions.shape) != (B, self.horizon, self.action_dim):
            raise ValueError(f"video {tuple(video.shape)}, actions {tuple(actions.shape)}; expected "
                             f"{shape} and {(B, self.horizon, self.action_dim)}")
        if align_pass not in ("foresight", "video"):
            raise ValueError(f"align_pass='{align_pass}'; expected 'foresight' or 'video'")
        self._check_layers([align_layer] if align_layer else [])
        video_taps = [align_layer] if align_layer and align_pass == "video" else []
        fore_taps = [align_layer] if align_layer and align_pass == "foresight" else []
        ctx, x0 = video[:, : self.n_ctx], video[:, self.n_ctx:]  # (B, n_ctx, ...), (B, Tf, ...)
        # (1) video pass: future frames at a random noise level, clean context
        t = torch.rand(B, device=video.device)  # (B,)
        xt, target = flow_pair(x0, torch.randn_like(x0), t)  # (B, Tf, 3, H, W) each
        v, hidden_video = self.video_forward(torch.cat([ctx, xt], 1), self._t_frames(t), task,
                                             video_taps)  # (B, Tf, 3, H, W)
        losses = {"video": F.mse_loss(v, target)}  # scalar
        # (2) foresight pass: future at pure noise; its hidden states feed the action head
        hidden_fore = self.foresight(ctx, task, self.bridge_layers() + fore_taps)
        ta = torch.rand(B, device=video.device)  # (B,)
        at, target_a = flow_pair(actions, torch.randn_like(actions), ta)  # (B, Ha, A) each
        va, _ = self.action_head(at, ta, task, self.action_head.keys_values(hidden_fore))  # B,Ha,A
        losses["action"] = F.mse_loss(va, target_a)
        hidden = hidden_video if align_pass == "video" else hidden_fore
        return losses, (hidden[align_layer] if align_layer else None)

    def forward(self, batch, align_layer=0, align_pass="foresight"):
        """The training losses, as `loss`: DDP and torch.compile wrap the module's forward."""
        return self.loss(batch, align_layer, align_pass)

    @torch.no_grad()
    def act(self, frames, task, steps=None, noise=None):
        """frames (B, n_ctx, 3, H, W) in [-1, 1], task (B,) -> action chunk (B, Ha, A) in [-1, 1]:
        one foresight pass, then `steps` Euler steps of the action head only."""
        self._check_inputs(frames, task, self.n_ctx)
        hidden = self.foresight(frames, task, self.bridge_layers())
        steps = self.mcfg.act_steps if steps is None else steps
        return self.sample_actions(hidden, task, steps, noise)

    @torch.no_grad()
    def imagine(self, frames, task, steps=None, noise=None):
        """Euler sampling of the future frames: (B, n_ctx, 3, H, W) -> (B, Tf, 3, H, W) in [-1, 1]."""
        self._check_inputs(frames, task, self.n_ctx)
        steps = self.mcfg.video_steps if steps is None else steps
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps={steps!r}; expected an int >= 1")
        B = frames.shape[0]
        x = self._noise(noise, (B, self.n_future, 3, self.res, self.res), frames)  # t = 1
        for i in range(steps):
            t = torch.full((B,), 1 - i / steps, device=frames.device)  # (B,)
            v, _ = self.video_forward(torch.cat([frames, x], 1), self._t_frames(t), task)  # like x
            x = x - v / steps  # (B, Tf, 3, H, W) Euler step t -> t - 1/steps
        return x.clamp(-1, 1)  # (B, Tf, 3, H, W)
