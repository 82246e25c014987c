"""Primitives shared by the two-tower model and the ranker: hashed embeddings, RMSNorm, rotary, GQA attention, FFN."""

from __future__ import annotations

import functools
import hashlib
import math
import zlib
from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Universal hashing h_j(id) = ((id * scale_j + bias_j) mod P) mod (V - 1) + 1 (Phoenix R2 `_hash_ids`). P is the
# Mersenne prime 2^31 - 1: ids are reduced mod P first, so (id mod P) * scale_j < 2^62 never overflows int64.
HASH_PRIME = 2**31 - 1


def string_id(value: object) -> int:
    """A stable positive int64 id for a string attribute (country, language, ...), for `MultiHashEmbedding`.

    Python's `hash()` is salted per process, so it cannot be used: the id must be the same in training and serving.
    None, NaN and "" map to 0, the padding id (embedded as zeros).
    """
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return 0
    return _text_id(str(value))


@functools.lru_cache(maxsize=1 << 16)  # attributes repeat (a few topics, media types, countries): hash each once
def _text_id(text: str) -> int:
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % (2**62) + 1


def string_ids(values: Iterable[object]) -> np.ndarray:
    """`string_id` over a column: (N,) int64."""
    return np.fromiter((string_id(v) for v in values), dtype=np.int64)


class MultiHashEmbedding(nn.Module):
    """One embedding table for one entity type, read through `n_hashes` seeded universal hashes.

    No vocabulary: any int64 id embeds (unseen ids included) and collisions are made rare by taking several
    hashes. Id 0 is padding: every hash maps it to row 0, which is zero and never trained.

    Args:
        num_rows: V, table rows including the padding row 0.
        dim: D, width of a row.
        n_hashes: hash functions per id.
        seed: picks the hash functions; the same seed gives the same rows for the same ids.
    """

    scale: torch.Tensor  # (n_hashes,) int64
    bias: torch.Tensor  # (n_hashes,) int64

    def __init__(self, num_rows: int, dim: int, n_hashes: int = 2, seed: int = 0) -> None:
        super().__init__()
        if num_rows < 2:
            raise ValueError(f"MultiHashEmbedding: num_rows={num_rows}, need >= 2 (row 0 is padding)")
        self.num_rows, self.n_hashes = num_rows, n_hashes
        self.table = nn.Embedding(num_rows, dim, padding_idx=0)
        rng = np.random.default_rng(seed)
        # Persistent buffers: a checkpoint carries its hash functions, so loading can never silently rehash.
        self.register_buffer("scale", torch.from_numpy(rng.integers(1, HASH_PRIME, n_hashes, dtype=np.int64)))
        self.register_buffer("bias", torch.from_numpy(rng.integers(0, HASH_PRIME, n_hashes, dtype=np.int64)))

    def hash(self, ids: torch.Tensor) -> torch.Tensor:
        """Row indices: ids (...) int64 -> (..., n_hashes) int64 in [1, V), and 0 where id == 0."""
        x = torch.remainder(ids.long(), HASH_PRIME).unsqueeze(-1)  # (..., 1)
        rows = torch.remainder(torch.remainder(x * self.scale + self.bias, HASH_PRIME), self.num_rows - 1) + 1
        return torch.where(ids.unsqueeze(-1) == 0, torch.zeros_like(rows), rows)  # (..., n_hashes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (...) int64 -> (..., n_hashes, D) float."""
        return self.table(self.hash(ids))


def entity_seed(seed: int, entity: str) -> int:
    """A stable per-entity hash seed, so two tables never share hash functions by accident."""
    return (seed * 1_000_003 + zlib.crc32(entity.encode())) % 2**32


class RMSNorm(nn.Module):
    """RMSNorm with a learned scale, computed in fp32 and cast back (stable under bf16 autocast)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        # Ones, not Phoenix's zero init: a zero scale makes a freshly built model output a constant.
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., D) -> (..., D)."""
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)


class Rotary(nn.Module):
    """Rotary position embedding tables (rotate-half convention) for positions 0..max_len-1."""

    cos: torch.Tensor  # (L, hd)
    sin: torch.Tensor  # (L, hd)

    def __init__(self, head_dim: int, max_len: int, base: float = 10_000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"Rotary: head_dim={head_dim} must be even")
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (hd/2,)
        angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)  # (L, hd/2)
        angles = torch.cat([angles, angles], dim=-1)  # (L, hd)
        # Non-persistent: derived from the config, so never stored in a checkpoint.
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin for positions 0..seq_len-1: each (T, hd)."""
        if seq_len > self.cos.shape[0]:
            raise ValueError(f"Rotary: sequence of {seq_len} positions, tables hold {self.cos.shape[0]}")
        return self.cos[:seq_len], self.sin[:seq_len]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, hd), cos/sin (T, hd) -> (B, H, T, hd): each pair of dims rotated by its position's angle."""
    return (x * cos + rotate_half(x) * sin).to(x.dtype)


class Attention(nn.Module):
    """Multi-head self-attention with rotary positions and optional grouped-query attention; no biases.

    `n_kv_heads < n_heads` shares each key/value head among n_heads // n_kv_heads query heads (GQA).
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int | None = None) -> None:
        super().__init__()
        n_kv_heads = n_kv_heads or n_heads
        if d_model % n_heads or n_heads % n_kv_heads:
            raise ValueError(
                f"Attention: need n_heads | d_model and n_kv_heads | n_heads ({d_model}/{n_heads}/{n_kv_heads})"
            )
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, d_model // n_heads
        self.q = nn.Linear(d_model, n_heads * self.head_dim, bias=False)
        self.kv = nn.Linear(d_model, 2 * n_kv_heads * self.head_dim, bias=False)
        self.out = nn.Linear(n_heads * self.head_dim, d_model, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None = None,
        cache: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """Self-attention.

        Args:
            x: (B, T, D).
            cos, sin: (T, hd) rotary tables.
            mask: broadcastable to (B, H, T, T); bool (True = may attend) or additive float (0 or -inf).
                A query row must allow at least one key, or its output is NaN.
            cache: when given, this layer's keys (rotary applied) and values, (B, Hkv, T, hd) each, are appended.

        Returns:
            (B, T, D).
        """
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k, v = self.kv(x).view(B, T, 2, self.n_kv_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (B, Hkv, T, hd) x2
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            cache.append((k, v))
        if self.n_kv_heads != self.n_heads:
            rep = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)  # (B, H, T, hd)
        if mask is not None and mask.dtype != torch.bool:
            mask = mask.to(q.dtype)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, T, hd)
        return self.out(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


# Gate nonlinearity by name: GeGLU is Phoenix's FFN, SwiGLU Llama's.
GATES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"geglu": F.gelu, "swiglu": F.silu}


def ffn_hidden(d_model: int, ffn_mult: float) -> int:
    """Gated-FFN width: 2/3 of ffn_mult * d_model (same parameter count as an ungated FFN), rounded up to 8."""
    return int(math.ceil(int(ffn_mult * d_model) * 2 / 3 / 8) * 8)


class GatedFFN(nn.Module):
    """out(gate(W_g x) * W_v x): GeGLU or SwiGLU, no biases."""

    def __init__(self, d_model: int, ffn_mult: float = 4.0, gate: str = "geglu") -> None:
        super().__init__()
        if gate not in GATES:
            raise ValueError(f"GatedFFN: unknown gate {gate!r} (choose from {', '.join(GATES)})")
        hidden = ffn_hidden(d_model, ffn_mult)
        self.act = GATES[gate]
        self.gate = nn.Linear(d_model, hidden, bias=False)
        self.value = nn.Linear(d_model, hidden, bias=False)
        self.out = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., D) -> (..., D)."""
        return self.out(self.act(self.gate(x)) * self.value(x))


class Block(nn.Module):
    """Pre-norm transformer block: h + attn(norm(h)), then h + ffn(norm(h))."""

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, ffn_mult: float, gate: str) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(d_model)
        self.attn = Attention(d_model, n_heads, n_kv_heads)
        self.ffn_norm = RMSNorm(d_model)
        self.ffn = GatedFFN(d_model, ffn_mult, gate)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None = None,
        cache: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """x (B, T, D) -> (B, T, D); cos/sin, mask and cache as in `Attention`."""
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, cache)
        return x + self.ffn(self.ffn_norm(x))
