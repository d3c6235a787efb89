"""A Mamba-1 selective state-space block (Gu & Dao 2023, arXiv:2312.00752) in pure PyTorch: a token mixer with
attention's call shape, (B, T, C) in, (B, T, C) out.

x, z = in_proj(u); x = SiLU(causal depthwise conv1d(x)); (dt, B, C) = x_proj(x); dt = softplus(dt_proj(dt) + dt_bias);
h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t (zero-order hold for A, Euler for B, as Mamba); y_t = C_t h_t + D x_t;
out = out_proj(y * SiLU(z)). A = -exp(A_log) with S4D-real init A_log[d, n] = log(n + 1) (arXiv:2206.11893), D = 1,
dt_bias = softplus^-1(dt) for dt log-uniform in [dt_min, dt_max] (Mamba's init, so the initial step sizes span
two decades). dt_bias is its own parameter (as in Mamba-2, arXiv:2405.21060) rather than dt_proj's bias: the same
function and count, but GPT.init_weights' Linear loop, which zeroes Linear biases, cannot erase it.

No fused CUDA kernel (mamba_ssm / causal_conv1d do not install here): off the CPU the scan is ``selective_scan``,
a chunked parallel scan in PyTorch that materialises the (B, T, d_inner, d_state) states, as Mamba's own reference
does; on the CPU it is ``selective_scan_ref``, the plain loop over time (faster there, and what the chunked scan is
tested against). Memory and speed are therefore not Mamba's. The exact parameter count is
``tinylm.blocks.registry.mamba_param_count`` (registry name ``mamba``).

Decoding: ``SSMCache`` holds every layer's conv state (the last d_conv - 1 conv inputs) and SSM state
(B, d_inner, d_state); ``mamba(x, cache=cache)`` runs only the new tokens (one or more) and updates its layer's slot,
so feeding a sequence in pieces gives the full forward's outputs. It also has KVCache's ``begin``/``advance``/``pos``
so GPT.forward can thread it through its ``kv_cache`` argument unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


def _resolve_dt_rank(n_embd: int, dt_rank: int | str) -> int:
    return math.ceil(n_embd / 16) if dt_rank == "auto" else int(dt_rank)


def selective_scan_ref(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                       D: torch.Tensor | None = None, h0: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """The selective scan as a plain loop over time (the reference ``selective_scan`` is tested against).

    Shapes (batch-first, time-major, unlike mamba_ssm's (b, d, T)): u, delta (b, T, d) with delta >= 0 (already
    through softplus); A (d, n) <= 0; B, C (b, T, n); D (d,); h0 (b, d, n) or None (zeros).
    Returns y (b, T, d) and the last state h_T (b, d, n), computed in at least float32."""
    dtype = torch.promote_types(u.dtype, torch.float32)
    u, delta, A, B, C = (t.to(dtype) for t in (u, delta, A, B, C))
    b, T, d = u.shape
    h = u.new_zeros(b, d, A.size(1)) if h0 is None else h0.to(dtype)
    ys = []
    for t in range(T):
        h = torch.exp(delta[:, t, :, None] * A) * h + (delta[:, t] * u[:, t])[:, :, None] * B[:, t, None, :]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, t]))
    y = torch.stack(ys, dim=1) if ys else u.new_zeros(b, 0, d)
    if D is not None:
        y = y + u * D.to(dtype)
    return y, h


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor | None = None, h0: torch.Tensor | None = None, chunk_size: int = 64
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``selective_scan_ref`` as a chunked parallel scan: same arguments and results.

    The recurrence h_t = a_t h_{t-1} + x_t (a_t = exp(delta_t A), x_t = delta_t u_t B_t) is split into chunks of
    ``chunk_size`` steps. Within every chunk at once, a Hillis-Steele inclusive scan (log2(chunk) steps) combines
    (log a, x) pairs: x[t] += exp(la[t]) x[t-k], la[t] += la[t-k], giving each step's state from a zero chunk start
    and the log decay since the chunk start (a cumulative sum of delta*A). A sequential loop over chunks then
    carries the state: h_t = x_t + exp(la_t) h_start. Every exponent is a sum of delta*A <= 0, so no exp of a
    positive number is ever taken (stable for any step size). T need not be a multiple of the chunk: the tail is
    padded with identity steps (delta = 0)."""
    dtype = torch.promote_types(u.dtype, torch.float32)
    u, delta, A, B, C = (t.to(dtype) for t in (u, delta, A, B, C))
    b, T, d = u.shape
    n = A.size(1)
    L = max(1, min(chunk_size, T))
    nc = -(-T // L)
    la = delta[..., None] * A  # (b, T, d, n), <= 0
    x = (delta * u)[..., None] * B[:, :, None, :]  # (b, T, d, n)
    pad = nc * L - T
    if pad:
        la, x = F.pad(la, (0, 0, 0, 0, 0, pad)), F.pad(x, (0, 0, 0, 0, 0, pad))
    la, x = la.view(b, nc, L, d, n), x.view(b, nc, L, d, n)
    k = 1
    while k < L:  # inclusive scan within each chunk (uses the previous step's la and x on both lines)
        x = torch.cat([x[:, :, :k], x[:, :, k:] + torch.exp(la[:, :, k:]) * x[:, :, :-k]], dim=2)
        la = torch.cat([la[:, :, :k], la[:, :, k:] + la[:, :, :-k]], dim=2)
        k *= 2
    h = u.new_zeros(b, d, n) if h0 is None else h0.to(dtype)
    starts = []
    for c in range(nc):  # carry the state across chunks
        starts.append(h)
        h = x[:, c, -1] + torch.exp(la[:, c, -1]) * h
    states = x + torch.exp(la) * torch.stack(starts, dim=1)[:, :, None]  # (b, nc, L, d, n)
    y = torch.einsum("btdn,btn->btd", states.view(b, nc * L, d, n)[:, :T], C)
    if D is not None:
        y = y + u * D.to(dtype)
    return y, h


def check_same_position(pos: torch.Tensor) -> None:
    """Refuse cache rows at different positions: a state has absorbed every token fed to it, padding included."""
    if pos.numel() and bool((pos != pos[0]).any()):
        raise ValueError("cache rows are at different positions; an SSM state cannot skip padding")


class SSMCache:
    """Every Mamba layer's recurrent state for decoding: ``conv[i]`` (B, d_inner, d_conv - 1), the last conv inputs,
    and ``ssm[i]`` (B, d_inner, d_state), each None until layer i first runs with this cache.

    ``mamba(x, cache=cache)`` reads and replaces slot ``mamba.layer_idx`` (the cache object is updated; tensors
    are replaced, not written into, so a graph through earlier pieces stays valid). For GPT.forward it mirrors
    KVCache's interface: ``batch_size``, ``pos`` (B,), ``begin(t, device)`` -> positions (B, t) and ``advance()``.
    Unlike a KVCache, every row must be at the same position: a state has absorbed every token fed to it, so
    rows of different lengths (a right-padded prefill) cannot share one.

    Args:
        n_layer: slots (layers) held.
        batch_size: rows of every call.
        max_len: if set, positions past it are refused (the learned position table's length).
    """

    def __init__(self, n_layer: int, batch_size: int, max_len: int | None = None):
        self.n_layer, self.batch_size, self.max_len = n_layer, batch_size, max_len
        self.conv: list[torch.Tensor | None] = [None] * n_layer
        self.ssm: list[torch.Tensor | None] = [None] * n_layer
        self.pos = torch.zeros(batch_size, dtype=torch.long)
        self._pos: torch.Tensor | None = None

    def get(self, layer: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return self.conv[layer], self.ssm[layer]

    def update(self, layer: int, conv: torch.Tensor, ssm: torch.Tensor) -> None:
        if conv.size(0) != self.batch_size:
            raise ValueError(f"batch of {conv.size(0)} rows, the cache holds {self.batch_size}")
        self.conv[layer], self.ssm[layer] = conv, ssm

    def begin(self, t: int, device: torch.device) -> torch.Tensor:
        """Positions (B, t) of the next ``t`` tokens (GPT.forward's use of a KVCache)."""
        self.pos = self.pos.to(device)
        check_same_position(self.pos)
        start = int(self.pos[0]) if self.pos.numel() else 0
        if self.max_len is not None and start + t > self.max_len:
            raise ValueError(f"sequence length {start + t} > the cache's {self.max_len} positions")
        self._pos = self.pos[:, None] + torch.arange(t, device=device)
        return self._pos

    def advance(self) -> None:
        self.pos = self._pos[:, -1] + 1

    def reset(self) -> None:
        """Forget every state (a new sequence)."""
        self.conv, self.ssm = [None] * self.n_layer, [None] * self.n_layer
        self.pos = torch.zeros(self.batch_size, dtype=torch.long)


class Mamba(nn.Module):
    """The Mamba-1 mixer. ``forward(x, rope=None, cache=None)`` has CausalSelfAttention's call shape so a Block can
    hold either; ``rope`` is ignored (the recurrence and conv see order).

    Args:
        n_embd: model width C.
        d_state: N, the state size per channel.
        d_conv: causal depthwise conv kernel length.
        expand: d_inner = int(expand * n_embd).
        dt_rank: rank of the dt projection; "auto" = ceil(n_embd / 16).
        bias: biases on in_proj and out_proj.
        conv_bias: bias on the conv.
        layer_idx: this layer's slot in an SSMCache.
        chunk_size: chunk length of ``selective_scan``.
        dt_min, dt_max, dt_init_floor: range of the initial step sizes (Mamba's defaults).
    """

    MATRICES = ("in_proj.weight", "x_proj.weight", "dt_proj.weight", "out_proj.weight")

    def __init__(self, n_embd: int, d_state: int = 16, d_conv: int = 4, expand: float = 2,
                 dt_rank: int | str = "auto", bias: bool = False, conv_bias: bool = True, layer_idx: int = 0,
                 chunk_size: int = 64, dt_min: float = 1e-3, dt_max: float = 1e-1, dt_init_floor: float = 1e-4):
        super().__init__()
        self.n_embd, self.d_state, self.d_conv = n_embd, d_state, d_conv
        self.d_inner = di = int(expand * n_embd)
        self.dt_rank = r = _resolve_dt_rank(n_embd, dt_rank)
        self.layer_idx, self.chunk_size = layer_idx, chunk_size
        self.dt_min, self.dt_max, self.dt_init_floor = dt_min, dt_max, dt_init_floor
        self.in_proj = nn.Linear(n_embd, 2 * di, bias=bias)
        self.conv1d = nn.Conv1d(di, di, d_conv, groups=di, bias=conv_bias)  # causal padding is added in forward
        self.x_proj = nn.Linear(di, r + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(r, di, bias=False)
        self.dt_bias = nn.Parameter(torch.empty(di))
        self.A_log = nn.Parameter(torch.empty(di, d_state))
        self.D = nn.Parameter(torch.empty(di))
        self.out_proj = nn.Linear(di, n_embd, bias=bias)
        self.init_(0.02, 0.02, lambda name: None)  # global RNG; a model calls init_ again with named generators

    @classmethod
    def from_config(cls, cfg, layer_idx: int = 0) -> Mamba:
        return cls(cfg.n_embd, d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.ssm_expand, bias=cfg.bias,
                   layer_idx=layer_idx)

    def param_roles(self) -> dict[str, str]:
        """The projections are Muon matrices; the depthwise conv kernel (di, 1, d_conv) is decayed but no matrix;
        biases, A_log, D and dt_bias are not decayed, as in Mamba (tinylm.blocks.registry)."""
        return {n: "matrix" if n in self.MATRICES else "decay" if n == "conv1d.weight" else "no_decay"
                for n, _ in self.named_parameters()}

    @torch.no_grad()
    def init_(self, std: float, std_out: float, generator_for: Callable[[str], torch.Generator | None]) -> None:
        """(Re)draw every parameter, each from ``generator_for(local name)`` on the CPU in float32:
        in_proj and x_proj normal(0, std), out_proj normal(0, std_out) (the residual projection), their biases 0;
        conv as PyTorch's default (uniform +-1/sqrt(d_conv)); dt_proj uniform +-dt_rank^-0.5 and dt_bias the
        inverse softplus of dt ~ log-uniform[dt_min, dt_max] (floored at dt_init_floor) (Mamba); A_log S4D-real,
        D ones. GPT.init_weights would call ``module.init_(0.02, std_proj, lambda n: tensor_generator(seed,
        f"{mod_name}.{n}"))`` after its Linear/Embedding loop (which would otherwise leave dt_proj, out_proj and the
        conv at GPT-2/PyTorch defaults); the names equal that loop's, so in_proj's draw is the same either way."""
        def put(param: torch.Tensor, name: str, fill) -> None:
            param.copy_(fill(torch.empty(param.shape), generator_for(name)))

        put(self.in_proj.weight, "in_proj.weight", lambda t, g: t.normal_(0.0, std, generator=g))
        put(self.x_proj.weight, "x_proj.weight", lambda t, g: t.normal_(0.0, std, generator=g))
        put(self.out_proj.weight, "out_proj.weight", lambda t, g: t.normal_(0.0, std_out, generator=g))
        for lin in (self.in_proj, self.out_proj):
            if lin.bias is not None:
                lin.bias.zero_()
        bound = 1 / math.sqrt(self.d_conv)
        put(self.conv1d.weight, "conv1d.weight", lambda t, g: t.uniform_(-bound, bound, generator=g))
        if self.conv1d.bias is not None:
            put(self.conv1d.bias, "conv1d.bias", lambda t, g: t.uniform_(-bound, bound, generator=g))
        r = self.dt_rank ** -0.5
        put(self.dt_proj.weight, "dt_proj.weight", lambda t, g: t.uniform_(-r, r, generator=g))
        lo, hi = math.log(self.dt_min), math.log(self.dt_max)
        dt = torch.exp(torch.rand(self.d_inner, generator=generator_for("dt_bias")) * (hi - lo) + lo)
        dt = dt.clamp(min=self.dt_init_floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        self.A_log.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).repeat(self.d_inner, 1))
        self.D.fill_(1.0)

    def forward(self, x: torch.Tensor, rope=None, cache: SSMCache | None = None) -> torch.Tensor:
        Bsz, T, _ = x.shape
        di, K, N = self.d_inner, self.d_conv, self.d_state
        xi, z = self.in_proj(x).chunk(2, dim=-1)
        xi = xi.transpose(1, 2)  # (B, di, T)
        conv_state, ssm_state = cache.get(self.layer_idx) if cache is not None else (None, None)
        if conv_state is None:
            conv_state = xi.new_zeros(Bsz, di, K - 1)  # causal: the sequence starts after zeros
        xpad = torch.cat([conv_state.to(xi.dtype), xi], dim=-1)  # (B, di, K - 1 + T)
        xc = F.silu(F.conv1d(xpad, self.conv1d.weight, self.conv1d.bias, groups=di)).transpose(1, 2)  # (B, T, di)
        dt, Bm, Cm = self.x_proj(xc).split([self.dt_rank, N, N], dim=-1)
        dt = F.softplus(self.dt_proj(dt) + self.dt_bias)
        A = -torch.exp(self.A_log)
        # the plain loop on a CPU: at the sizes trained there (T <= 512, d_inner x d_state ~ 1k) it is ~5x faster
        # than the chunked scan, whose log-depth passes move the whole (B, T, d_inner, d_state) tensor each time
        # (RESULTS.md); the chunked scan where many small launches cost more than the extra arithmetic (a GPU)
        if x.device.type == "cpu":
            y, h = selective_scan_ref(xc, dt, A, Bm, Cm, self.D, h0=ssm_state)
        else:
            y, h = selective_scan(xc, dt, A, Bm, Cm, self.D, h0=ssm_state, chunk_size=self.chunk_size)
        if cache is not None:
            cache.update(self.layer_idx, xpad[..., xpad.size(-1) - (K - 1):], h)
        y = y.to(x.dtype) * F.silu(z)
        return self.out_proj(y)

    def extra_repr(self) -> str:
        return (f"n_embd={self.n_embd}, d_inner={self.d_inner}, d_state={self.d_state}, d_conv={self.d_conv}, "
                f"dt_rank={self.dt_rank}, layer_idx={self.layer_idx}, chunk_size={self.chunk_size}")
