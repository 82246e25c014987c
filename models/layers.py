"""Primitives shared by the two-tower model and the ranker: hashed embeddings, RMSNorm, rotary, GQA attention, FFN."""

from __future__ import annotations

import functools
import hashlib
import math
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

T = TypeVar("T")

# Universal hashing h_j(id) = ((id * scale_j + bias_j) mod P) mod (V - 1) + 1 (Phoenix R2 `_hash_ids`). P is the
# Mersenne prime 2^31 - 1: ids are reduced mod P first, so (id mod P) * scale_j < 2^62 never overflows int64.
HASH_PRIME = 2**31 - 1


def string_id(value: object) -> int:
    """A stable positive int64 id for a string attribute (country, language, ...), for `MultiHashEmbedding`.

    Python's `hash()` is salted per process, so it cannot be used: the id must be the same in training and serving.
    None, NaN and "" map to 0, the padding id (embedded as zeros).
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return 0
    if isinstance(value, str):  # a numpy str_ too; only a string can equal ""
        return _text_id(str(value)) if value else 0
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

    # Inference on CPU (serving): the same rows and values through numpy (`lookup_np`). A request embeds a few hundred
    # ids; each torch operator costs several microseconds of dispatch, and `hash` is ten of them per lookup.

    def hash_np(self, ids: np.ndarray) -> np.ndarray:
        """`hash` on a numpy array: the same int64 rows."""
        return _hash_np([self], [np.asarray(ids, dtype=np.int64)])[0]

    def rows_np(self, ids: np.ndarray) -> np.ndarray:
        """`forward` on a numpy array, inference only (CPU weights): (..., n_hashes, D) float32, the same values."""
        return lookup_np([self], [ids])[0]

    def summed_np(self, ids: np.ndarray) -> np.ndarray:
        """(..., D) the sum of each id's hash rows, as `forward(ids).sum(-2)` adds them (in hash order)."""
        return lookup_np([self], [ids], summed=True)[0]


def lookup_np(
    tables: Sequence[MultiHashEmbedding], ids: Sequence[np.ndarray], summed: bool = False
) -> list[np.ndarray]:
    """`table(ids)` of several tables at once, in numpy, inference only (CPU weights): the same rows and float32
    values, with one vectorised hash over every table's ids (they share n_hashes and the ids' shape) instead of ten
    torch operators per table.

    Args:
        tables, ids: table k embeds ids[k] (...) int64.
        summed: return each id's rows added in hash order, as `table(ids).sum(-2)` does: (..., D) each.

    Returns:
        (..., n_hashes, D) float32 per table, or (..., D) with `summed`.
    """
    arrays = [np.asarray(i, dtype=np.int64) for i in ids]
    if sum(a.size for a in arrays) <= SMALL_LOOKUP:  # a user and its attributes: each id's rows remembered
        return [_remembered(table, a, summed) for table, a in zip(tables, arrays, strict=True)]
    out = []
    for table, rows in zip(tables, _hash_np(tables, arrays), strict=True):
        got = np.take(weight_np(table.table), rows, axis=0)  # (..., H, D); np.take is ~4x faster than [rows]
        out.append(sum_hashes(got) if summed else got)
    return out


SMALL_LOOKUP = 8  # ids per lookup_np call read through the per-id memo (one request's user and its attributes)
MEMO_SIZE = 1 << 16  # ids remembered per table (cleared when full)


def _remembered(table: MultiHashEmbedding, ids: np.ndarray, summed: bool) -> np.ndarray:
    """`lookup_np` of a few ids through a per-table memo of each id's rows, rebuilt when the weights or hash
    functions change (`derived`): a request's user and attribute ids repeat across requests."""
    memo: dict[tuple[int, bool], np.ndarray] = derived(
        table, "memo", (table.table.weight, table.scale, table.bias), dict
    )
    flat = ids.ravel().tolist()
    missing = [i for i in dict.fromkeys(flat) if (i, summed) not in memo]
    if missing:
        if len(memo) > MEMO_SIZE:
            memo.clear()
        rows = np.take(weight_np(table.table), _hash_np([table], [np.array(missing, dtype=np.int64)])[0], axis=0)
        for i, r in zip(missing, sum_hashes(rows) if summed else rows, strict=True):
            memo[i, summed] = r
    return np.stack([memo[i, summed] for i in flat]).reshape(*ids.shape, *memo[flat[0], summed].shape)


def sum_hashes(rows: np.ndarray) -> np.ndarray:
    """(..., H, D) -> (..., D): an id's hash rows added in hash order, as `MultiHashEmbedding(ids).sum(-2)` does."""
    total = rows[..., 0, :]
    for j in range(1, rows.shape[-2]):
        total = total + rows[..., j, :]
    return total


def signed_actions(actions: torch.Tensor, n_actions: int) -> torch.Tensor:
    """(..., n_actions) float Phoenix signed multi-hot of action bitmasks (...): +1 for an action taken, -1 for one
    not taken; all zero with no action at all."""
    bits = (actions.unsqueeze(-1) >> torch.arange(n_actions, device=actions.device)) & 1
    return (2 * bits - 1).float() * (actions != 0).unsqueeze(-1)


MAX_ACTION_TABLE_BITS = 14  # a projected table of every mask: 2^14 rows x E floats


def projected_actions_np(owner: nn.Module, proj: nn.Linear, actions: np.ndarray, n_actions: int) -> np.ndarray:
    """(..., E) float32 `proj(signed_actions(actions))` in numpy: a row of a table holding it for every possible mask
    (built once per weights), so a request pays one gather instead of seven operators and a projection."""
    if n_actions > MAX_ACTION_TABLE_BITS or (actions >> n_actions).any():  # bits beyond the vocabulary (or < 0)
        return F.linear(signed_actions(torch.from_numpy(actions), n_actions), proj.weight).detach().numpy()

    def build() -> np.ndarray:
        masks = torch.arange(1 << n_actions, dtype=torch.int64)
        return F.linear(signed_actions(masks, n_actions), proj.weight).detach().numpy()

    return np.take(derived(owner, "action_table", (proj.weight,), build), actions, axis=0)


def _hash_np(tables: Sequence[MultiHashEmbedding], ids: Sequence[np.ndarray]) -> list[np.ndarray]:
    """`hash` of ids[k] by tables[k]: numpy's and Python's remainder take the divisor's sign, as torch's does, so the
    rows are the same int64s. A handful of ids (a user and its attributes) are hashed with Python ints: the eight
    numpy operators cost more than the arithmetic on a few values."""
    if sum(i.size for i in ids) <= 8:
        out = []
        for table, i in zip(tables, ids, strict=True):
            V, pairs = table.num_rows - 1, _hash_pairs(table)
            rows = [
                [(x % HASH_PRIME * s + b) % HASH_PRIME % V + 1 if x else 0 for s, b in pairs]
                for x in i.ravel().tolist()
            ]
            out.append(np.array(rows, dtype=np.int64).reshape(*i.shape, table.n_hashes))
        return out
    sources = tuple(t for table in tables for t in (table.scale, table.bias))
    name = "hash_params:" + ",".join(str(id(t)) for t in tables)  # one entry per group of tables
    scale, bias, modulus = derived(tables[0], name, sources, lambda: _hash_params(tables))
    stacked = np.stack(ids, -1) if len(ids) > 1 else ids[0][..., None]  # (..., K)
    x = np.remainder(stacked, HASH_PRIME)[..., None]  # (..., K, 1)
    rows = np.remainder(np.remainder(x * scale + bias, HASH_PRIME), modulus)  # (..., K, H)
    rows += 1
    rows *= (stacked != 0)[..., None]
    return [rows[..., k, :] for k in range(len(tables))]


def _hash_pairs(table: MultiHashEmbedding) -> tuple[tuple[int, int], ...]:
    """The (scale, bias) of each hash as Python ints."""
    return derived(
        table,
        "hash_pairs",
        (table.scale, table.bias),
        lambda: tuple(zip(table.scale.tolist(), table.bias.tolist(), strict=True)),
    )


def _hash_params(tables: Sequence[MultiHashEmbedding]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(K, H) scales, (K, H) biases and (K, 1) row moduli (num_rows - 1) of K tables."""
    scale = np.stack([t.scale.numpy() for t in tables])
    bias = np.stack([t.bias.numpy() for t in tables])
    return scale, bias, np.array([[t.num_rows - 1] for t in tables], dtype=np.int64)


def weight_np(embedding: nn.Embedding) -> np.ndarray:
    """A numpy view of an embedding's weights (the same memory: an in-place update shows through)."""
    return derived(embedding, "weight_np", (embedding.weight,), lambda: embedding.weight.detach().numpy())


def derived(owner: nn.Module, name: str, sources: tuple[torch.Tensor, ...], build: Callable[[], T]) -> T:
    """An inference-only value computed from `sources` (two projections fused into one, hash parameters as numpy),
    kept on `owner` and rebuilt when a source changed: an optimizer step or load_state_dict bumps its version,
    `.to()` moves its data. Not a buffer: never in a state_dict."""
    key = [(t.data_ptr(), t._version) for t in sources]
    cache: dict[str, tuple[list[tuple[int, int]], Any]] = owner.__dict__.setdefault("_derived", {})
    hit = cache.get(name)
    if hit is not None and hit[0] == key:
        return cast(T, hit[1])
    with torch.inference_mode(False), torch.no_grad():  # plain tensors, usable outside inference mode too
        value = build()
    cache[name] = (key, value)
    return value


def rotate_half_rows(w: torch.Tensor, head_dim: int) -> torch.Tensor:
    """W' with W' x = rotate_half(W x) per head: each head's rows [-second half, first half] (exact: a permutation
    and a sign). w (n_heads * head_dim, D)."""
    h = w.view(-1, 2, head_dim // 2, w.shape[-1])  # (heads, halves, hd/2, D)
    return torch.cat([-h[:, 1], h[:, 0]], 1).reshape(w.shape)


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

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        """`forward` as one fused operator (the same values for float32 input)."""
        if x.dtype != torch.float32 or self.weight.dtype != torch.float32:
            return self(x)
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)

    def infer_np(self, x: np.ndarray) -> np.ndarray:
        """`forward` on a float32 numpy array (inference, CPU weights)."""
        w = derived(self, "weight_np", (self.weight,), lambda: self.weight.detach().float().numpy())
        mean = np.add.reduce(x * x, -1, keepdims=True) / np.float32(x.shape[-1])  # np.mean costs 3x more
        return x * (1 / np.sqrt(mean + np.float32(self.eps))) * w


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

    def tables_np(self, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
        """`forward` as numpy views shaped (T, 1, hd) (`Block.infer_np`'s layout), inference only."""
        cos, sin = derived(
            self, "np", (self.cos, self.sin), lambda: (self.cos.numpy()[:, None], self.sin.numpy()[:, None])
        )
        if seq_len > cos.shape[0]:
            raise ValueError(f"Rotary: sequence of {seq_len} positions, tables hold {cos.shape[0]}")
        return cos[:seq_len], sin[:seq_len]

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

    def qkv_rotary_weight(self) -> torch.Tensor:
        """(2 (H + Hkv) hd + Hkv hd, D): the rows of q, k, rotate_half(q), rotate_half(k), v, so that one matrix
        product gives every projection and rotary is two products and a sum (no split, negation or concatenation)."""
        hd = self.head_dim
        wq = self.q.weight
        wk, wv = self.kv.weight.split(self.n_kv_heads * hd)
        return torch.cat([wq, wk, rotate_half_rows(wq, hd), rotate_half_rows(wk, hd), wv])

    def infer(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None = None,
        cache: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """`forward` for inference (no autograd) in fewer operators: one fused projection, rotary on q and k
        together, grouped-query attention without repeating keys and values. The same outputs up to float rounding.

        Args:
            x: (B, T, D).
            cos, sin: broadcastable to (B, T, 1, hd) (note: not (B, 1, T, hd) as in `forward`).
            mask, cache: as in `forward`.
        """
        B, T, _ = x.shape
        H, Hkv, hd = self.n_heads, self.n_kv_heads, self.head_dim
        w = derived(self, "qkv_rotary", (self.q.weight, self.kv.weight), self.qkv_rotary_weight)
        p = F.linear(x, w)  # (B, T, 2 (H + Hkv) hd + Hkv hd)
        n = (H + Hkv) * hd
        qk = p[..., :n].view(B, T, H + Hkv, hd) * cos + p[..., n : 2 * n].view(B, T, H + Hkv, hd) * sin
        q, k = qk[:, :, :H].transpose(1, 2), qk[:, :, H:].transpose(1, 2)  # (B, H, T, hd), (B, Hkv, T, hd)
        v = p[..., 2 * n :].view(B, T, Hkv, hd).transpose(1, 2)  # (B, Hkv, T, hd)
        if cache is not None:
            cache.append((k, v))
        if mask is not None and mask.dtype != torch.bool:
            mask = mask.to(q.dtype)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=Hkv != H)  # (B, H, T, hd)
        return self.out(y.transpose(1, 2).reshape(B, T, H * hd))

    def infer_np(
        self,
        x: np.ndarray,
        cos: np.ndarray,
        sin: np.ndarray,
        bias: np.ndarray,
        cache: list[tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> np.ndarray:
        """`infer` in numpy for a few dozen tokens (one request's user and history): the same outputs up to float
        rounding, at a numpy call's cost per step instead of a torch operator's (`Block.infer_np`).

        Args:
            x: (B, T, D) float32.
            cos, sin: broadcastable to (B, T, 1, hd).
            bias: (B, 1, 1 or T, T) float32 added to the scores: 0 where a query may attend, -inf where not.
            cache: as in `forward`, numpy arrays.
        """
        B, T, _ = x.shape
        H, Hkv, hd = self.n_heads, self.n_kv_heads, self.head_dim
        w, w_out = derived(
            self,
            "infer_np",
            (self.q.weight, self.kv.weight, self.out.weight),
            lambda: (_t_np(self.qkv_rotary_weight()), _t_np(self.out.weight)),
        )
        p = x @ w  # (B, T, 2 (H + Hkv) hd + Hkv hd)
        n = (H + Hkv) * hd
        qk = p[..., :n].reshape(B, T, H + Hkv, hd) * cos + p[..., n : 2 * n].reshape(B, T, H + Hkv, hd) * sin
        k = qk[:, :, H:].transpose(0, 2, 1, 3)  # (B, Hkv, T, hd)
        v = p[..., 2 * n :].reshape(B, T, Hkv, hd).transpose(0, 2, 1, 3)
        if cache is not None:
            cache.append((k, v))
        rep = H // Hkv  # query head j reads kv head j // rep
        q = qk[:, :, :H].reshape(B, T, Hkv, rep, hd).transpose(0, 2, 3, 1, 4)  # (B, Hkv, rep, T, hd)
        scores = q @ k[:, :, None].swapaxes(-1, -2) * np.float32(1 / math.sqrt(hd)) + bias[:, :, None]
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        y = (scores / scores.sum(-1, keepdims=True)) @ v[:, :, None]  # (B, Hkv, rep, T, hd)
        return y.transpose(0, 3, 1, 2, 4).reshape(B, T, H * hd) @ w_out


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
        self.hidden = hidden
        self.gate = nn.Linear(d_model, hidden, bias=False)
        self.value = nn.Linear(d_model, hidden, bias=False)
        self.out = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., D) -> (..., D)."""
        return self.out(self.act(self.gate(x)) * self.value(x))

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        """`forward` with the gate and value projections as one matrix product (inference)."""
        w = derived(
            self,
            "gate_value",
            (self.gate.weight, self.value.weight),
            lambda: torch.cat([self.gate.weight, self.value.weight]),
        )
        g, v = F.linear(x, w).chunk(2, -1)
        return self.out(self.act(g) * v)

    def infer_np(self, x: np.ndarray) -> np.ndarray:
        """`forward` on a float32 numpy array (a few dozen tokens; the gate nonlinearity is torch's own)."""
        w, w_out = derived(
            self,
            "infer_np",
            (self.gate.weight, self.value.weight, self.out.weight),
            lambda: (_t_np(torch.cat([self.gate.weight, self.value.weight])), _t_np(self.out.weight)),
        )
        gv = x @ w
        g, v = gv[..., : self.hidden], gv[..., self.hidden :]
        return (self.act(torch.from_numpy(g)).numpy() * v) @ w_out


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

    def infer(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None = None,
        cache: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """`forward` for inference (`Attention.infer`: cos/sin broadcast to (B, T, 1, hd))."""
        x = x + self.attn.infer(self.attn_norm.infer(x), cos, sin, mask, cache)
        return x + self.ffn.infer(self.ffn_norm.infer(x))

    def infer_np(
        self,
        x: np.ndarray,
        cos: np.ndarray,
        sin: np.ndarray,
        bias: np.ndarray,
        cache: list[tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> np.ndarray:
        """`forward` in numpy (`Attention.infer_np`): for one request's user and history tokens, where each torch
        operator's dispatch cost more than its arithmetic. Use it where `numpy_sized` holds."""
        x = x + self.attn.infer_np(self.attn_norm.infer_np(x), cos, sin, bias, cache)
        return x + self.ffn.infer_np(self.ffn_norm.infer_np(x))

    def numpy_sized(self, tokens: int) -> bool:
        """Whether `infer_np` suits `tokens` rows: every matrix product small enough that numpy's BLAS runs it on the
        calling thread (OpenBLAS threads a product above m n k = 262,144, which would contend with the service's
        own threads)."""
        widest = max(self.attn.q.out_features + 2 * self.attn.kv.out_features, 2 * self.ffn.hidden)
        return tokens * self.attn.q.in_features * widest <= NUMPY_MATMUL_LIMIT


NUMPY_MATMUL_LIMIT = 262_144  # OpenBLAS (numpy's BLAS) runs a product of m n k up to this on one thread


def linear_np(linear: nn.Linear, x: np.ndarray) -> np.ndarray:
    """`linear(x)` (no bias) for a float32 numpy array, inference only: numpy's product when it runs on the calling
    thread (see `NUMPY_MATMUL_LIMIT`), else torch's."""
    if x.size * linear.out_features <= NUMPY_MATMUL_LIMIT and linear.bias is None:
        return x @ derived(linear, "t_np", (linear.weight,), lambda: _t_np(linear.weight))
    return F.linear(torch.from_numpy(x), linear.weight).detach().numpy()


def _t_np(w: torch.Tensor) -> np.ndarray:
    """A (out, in) weight as the (in, out) float32 numpy matrix x @ W.T multiplies by (a contiguous copy)."""
    return np.ascontiguousarray(w.detach().float().numpy().T)


def attention_bias(allowed: np.ndarray) -> np.ndarray:
    """A bool mask (True = may attend) as the float32 bias `Attention.infer_np` adds: 0 or -inf."""
    return np.where(allowed, np.float32(0), np.float32(-np.inf))
