"""The llamacpp backend: the Session protocol over llama.cpp's forward (llama-cpp-python's low-level API).

Why: on a small CPU the PyTorch forward pays per-op dispatch that llama.cpp's fused C kernels do not
(docs/BACKENDS.md); every decodelab method keeps working because they all go through `Session`.

How the Session maps onto llama.cpp's KV cache (one context per session; a batch, a tree or a fork uses a
"wide" context: 256 sequence ids over one unified cache, `kv_unified=True`; a single row starts in a
one-sequence context, a little faster per step, and moves over when it first needs more — its cache is
copied with llama.cpp's per-sequence state calls, not recomputed):
- the KV cache grows ahead of the rows' length (doubling, the cache copied), never the whole context up front;
- batch row b is llama.cpp sequence b. Pads are never fed: a left-padded row's real tokens sit at the
  positions Session computes (pads take none), so attention needs no pad mask at all;
- a forward is one `llama_decode` of every row's new tokens with explicit positions, logits requested
  for every fed position (or only the last with last_only);
- a token tree (SpecInfer's layout, arXiv:2305.09781) is evaluated exactly in the same pass: every leaf
  gets a sequence id (the row's own for the first leaf, temporary copies of the row's sequence for the
  others), and a node carries the ids of all leaves below it. llama.cpp masks a query by its first
  sequence id and by position (`p_key ≤ p_query`), so node i sees the cache, its ancestors and itself;
- rollback: the kept nodes of the last forward (a chain prefix or a root path of the tree, per row — also
  after `accept_rows`, read from the pad mask) stay in sequence b via `llama_memory_seq_cp`, the rest go
  with `llama_memory_seq_rm`. Cells are shared between sequences, so no keys or values are copied;
- `reorder` / `fork` copy sequences through temporary ids (`seq_cp`), again without copying data; a
  fork past the context's room, and `merge` (continuous batching), copy the rows' state into a context
  with room (`llama_state_seq_get_data` / `set_data`; where that fails, the rows' tokens are fed again).

Not available here: hidden states (contrastive, dola and DEL's `selfspec exit_layer=0` need them) and the
shared early-exit cache; `selfspec` with a fixed exit layer drafts with a GGUF of the first ℓ layers
(model/gguf_export.py). Numerics: llama.cpp's own kernels (float32 KV cache for an f32 model), so logits
match the native backend's to ~1e-4 relative, not bit for bit (tests/model/test_llamacpp.py).
"""

from __future__ import annotations

import collections
import ctypes
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ModelError
from . import gguf_export
from .session import Session

INSTALL = "pip install 'decodelab[llamacpp]' (builds llama.cpp from source, several minutes)"
MAX_SEQ = 256  # llama.cpp's LLAMA_MAX_SEQ: rows + temporary tree / reorder sequences together
POOL = 4  # idle contexts a model keeps for its next sessions
_TORCH_DTYPE = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16, "q8_0": torch.float32}
_ALIASES = {"float32": "f32", "fp32": "f32", "float": "f32", "bfloat16": "bf16", "float16": "f16",
            "fp16": "f16", "half": "f16", "q8": "q8_0"}
_log: collections.deque = collections.deque(maxlen=8)  # llama.cpp's last warnings / errors
_lib_state: dict = {}


def lib():
    """The llama_cpp module, initialised once (backend, quiet logging); ModelError when not installed."""
    if "lib" in _lib_state:
        return _lib_state["lib"]
    try:
        import llama_cpp
    except ImportError:
        raise ModelError(f"backend='llamacpp' needs llama-cpp-python: {INSTALL}") from None

    @llama_cpp.llama_log_callback
    def keep_warnings(level, text, _user):  # GGML_LOG_LEVEL_WARN = 3, ERROR = 4
        if level in (3, 4):
            _log.append(text.decode(errors="replace").strip())

    llama_cpp.llama_log_set(keep_warnings, ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()
    _lib_state.update(lib=llama_cpp, callback=keep_warnings)  # the callback must outlive every call
    return llama_cpp


def _last_log() -> str:
    return f": {_log[-1]}" if _log else ""


def gguf_dtype(dtype) -> str:
    """`None` / torch dtypes / names → "f32", "bf16", "f16" or "q8_0"."""
    if dtype is None:
        return "f32"
    name = str(dtype).removeprefix("torch.").lower()
    name = _ALIASES.get(name, name)
    if name not in _TORCH_DTYPE:
        raise ModelError(f"unknown llamacpp dtype {dtype!r}; use float32, bfloat16, float16 or q8_0")
    return name


def load_llamacpp(name: str, location, local: bool, dtype, device: str, trust_remote_code: bool):
    """`decodelab.load(..., backend="llamacpp")`: convert (once, cached) and load the model into llama.cpp."""
    from transformers import AutoConfig

    from .lm import LM, _tokenizer

    if device != "cpu":
        raise ModelError("backend='llamacpp' runs on the CPU (device='cpu')")
    if not local:
        raise ModelError(f"{name}: the llamacpp backend converts a local directory or cached snapshot, "
                         "not a Hub id it would have to download")
    lib()
    config = AutoConfig.from_pretrained(location)
    reason = gguf_export.unsupported(config)
    if reason is not None:
        raise ModelError(f"{name}: the llamacpp backend cannot run {reason}; use backend='native' or 'transformers'")
    model = LlamaCppModel(config, Path(location), gguf_dtype(dtype))
    check_kernels(model.file, model.gguf_dtype)
    return LM(model, _tokenizer(name, location, trust_remote_code), name=name, backend="llamacpp")


AMX_DTYPES = ("q8_0",)  # the quantised types llama.cpp's AMX kernels take (float types do not)
_checked: dict[str, str | None] = {}  # GGUF file → None (runs) or why not, once per process


def amx_build() -> bool:
    """Whether this llama.cpp was built with its AMX kernels (`-march=native` on an AMX-advertising Xeon)."""
    return "AMX_INT8 = 1" in lib().llama_print_system_info().decode(errors="replace")


def check_kernels(file: Path, dtype: str, command: list[str] | None = None) -> None:
    """Run one forward of `file` in a child process first where this build's AMX kernels would serve it.

    On a Xeon that advertises AMX, a llama.cpp built with `-march=native` takes AMX for q8_0 matmuls, and in
    a virtual machine that does not enable the tiles the first forward dies with "Illegal instruction"
    (seen on this project's development VM). A signal cannot be caught: the process — a server with it —
    would go down. So the first load of such a model per process runs one decode in a child; a child killed
    by a signal is a one-line ModelError saying how to rebuild (docs/BACKENDS.md, Install), the rest loads
    as usual. `command` replaces the child's command line (tests)."""
    if dtype not in AMX_DTYPES or not (command or amx_build()):
        return
    key = str(file)
    if key not in _checked:
        import subprocess
        import sys

        command = command or [sys.executable, "-c", f"from {__name__} import _probe; _probe({key!r})"]
        done = subprocess.run(command, capture_output=True, timeout=600)
        _checked[key] = None if done.returncode >= 0 else _signal_name(-done.returncode)
    if _checked[key] is not None:
        raise ModelError(f"{file.name}: llama.cpp's AMX kernels crash on this machine ({_checked[key]} in a test "
                         "forward); rebuild llama-cpp-python without AMX (docs/BACKENDS.md, Install) or use "
                         "dtype float32 / bfloat16")


def _signal_name(number: int) -> str:
    import signal

    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _probe(file: str) -> None:
    """The child of `check_kernels`: load `file` and decode two tokens."""
    C = lib()
    model = _load_file(file)
    ctx = C.llama_init_from_model(model, C.llama_context_default_params()) if model else None
    feed = (C.llama_token * 2)(1, 2)
    if not ctx or C.llama_decode(ctx, C.llama_batch_get_one(feed, 2)) != 0:
        raise SystemExit(2)  # not a crash: the parent loaded the file, so this only shows in the tests


def _load_file(file: str | Path):
    """llama.cpp's model pointer for a GGUF file, every layer on the CPU (NULL when it cannot load)."""
    C = lib()
    params = C.llama_model_default_params()
    params.n_gpu_layers = 0
    return C.llama_model_load_from_file(str(file).encode(), params)


class LlamaCppModel(nn.Module):
    """A llama.cpp model (a GGUF converted from the HF directory) and a pool of its contexts.

    An nn.Module only so that `LM.device` / `LM.dtype` read its one empty marker parameter."""

    def __init__(self, config, source: Path, dtype: str, layers: int | None = None):
        super().__init__()
        C = lib()
        self.config, self.source, self.gguf_dtype = config, source, dtype
        self.n_layers = layers or config.num_hidden_layers
        self.marker = nn.Parameter(torch.empty(0, dtype=_TORCH_DTYPE[dtype]), requires_grad=False)
        self.generation_config = _generation_config(source)
        self.file = gguf_export.gguf_path(source, dtype, layers)
        self._ptr = _load_file(self.file)
        if not self._ptr:
            raise ModelError(f"{self.file}: llama.cpp cannot load it{_last_log()}")
        self.vocab_size = C.llama_vocab_n_tokens(C.llama_model_get_vocab(self._ptr))
        self.n_params = C.llama_model_n_params(self._ptr)  # for LM's repr (the module holds none)
        self._pool: list = []  # ((cells, wide), context), oldest first
        self._exits: dict[int, LlamaCppModel] = {}
        self._own: dict = {}  # the plain context and greedy sampler of `plain_greedy`

    @property
    def layers(self) -> range:
        """One entry per decoder layer (early_exit.num_layers counts them)."""
        return range(self.n_layers)

    @property
    def load_dtype(self) -> str:
        """What `load(..., dtype=)` takes to load a model alike (a draft in the same precision)."""
        return self.gguf_dtype

    def truncated(self, layers: int) -> "LlamaCppModel":
        """The model exiting after `layers` decoder layers: a GGUF of those layers + final norm + head."""
        if layers == self.n_layers:
            return self
        if layers not in self._exits:
            self._exits[layers] = LlamaCppModel(self.config, self.source, self.gguf_dtype, layers)
        return self._exits[layers]

    def acquire(self, cells: int, wide: bool):
        """A context with room for `cells` KV cells (from the pool, emptied, or new); `wide` = with
        llama.cpp's 256 sequence ids in one unified cache, else one sequence (slightly faster per step)."""
        C = lib()
        found = next((i for i, (key, _) in enumerate(self._pool) if key == (cells, wide)), None)
        ctx = self._pool.pop(found)[1] if found is not None else self._new_context(cells, wide)
        threads = torch.get_num_threads()
        C.llama_set_n_threads(ctx, threads, threads)
        return ctx

    def release(self, ctx, cells: int, wide: bool) -> None:
        """Back to the pool, emptied (the oldest idle context is freed beyond POOL)."""
        C = lib()
        C.llama_memory_clear(C.llama_get_memory(ctx), True)
        self._pool.append(((cells, wide), ctx))
        if len(self._pool) > POOL:
            C.llama_free(self._pool.pop(0)[1])

    def _new_context(self, cells: int, wide: bool):
        C = lib()
        p = C.llama_context_default_params()
        p.n_ctx = p.n_batch = cells
        p.n_ubatch = min(512, cells)
        p.n_seq_max = MAX_SEQ if wide else 1
        p.kv_unified = wide  # one cell store shared by all sequences: tree nodes and forks share cells
        if self.gguf_dtype == "f32":  # float32 end to end: llama.cpp's defaults (f16 KV cache, CPU flash
            p.type_k = p.type_v = C.GGML_TYPE_F32  # attention in f16) move logits by ~1e-3 relative
            p.flash_attn_type = C.LLAMA_FLASH_ATTN_TYPE_DISABLED
        p.no_perf = True
        threads = torch.get_num_threads()
        p.n_threads = p.n_threads_batch = threads
        ctx = C.llama_init_from_model(self._ptr, p)
        if not ctx:
            raise ModelError(f"llama.cpp cannot create a context of {cells} cells{_last_log()}")
        return ctx

    def plain_context(self, tokens: int):
        """A context for `tokens` tokens as plain llama.cpp makes one (one sequence, default flash-attention
        choice), with the sessions' KV cache type (f32 for an f32 model): the llama.cpp peer's."""
        C = lib()
        if "plain" in self._own and C.llama_n_ctx(self._own["plain"]) < tokens:
            C.llama_free(self._own.pop("plain"))
            C.llama_sampler_free(self._own.pop("sampler"))
        if "plain" not in self._own:
            p = C.llama_context_default_params()
            p.n_ctx = p.n_batch = min(_round(max(tokens, 512)), self.config.max_position_embeddings)
            p.n_ubatch = min(512, p.n_ctx)
            p.n_seq_max, p.no_perf = 1, True
            if self.gguf_dtype == "f32":
                p.type_k = p.type_v = C.GGML_TYPE_F32
                p.flash_attn_type = C.LLAMA_FLASH_ATTN_TYPE_DISABLED
            ctx = C.llama_init_from_model(self._ptr, p)
            if not ctx:
                raise ModelError(f"llama.cpp cannot create a context{_last_log()}")
            self._own["plain"], self._own["sampler"] = ctx, C.llama_sampler_init_greedy()
        threads = torch.get_num_threads()
        lib().llama_set_n_threads(self._own["plain"], threads, threads)
        return self._own["plain"]

    def __del__(self):
        try:
            C = lib()
            if "plain" in self._own:
                C.llama_free(self._own.pop("plain"))
                C.llama_sampler_free(self._own.pop("sampler"))
            for _, ctx in self._pool:
                C.llama_free(ctx)
            self._pool = []
            if getattr(self, "_ptr", None):
                C.llama_model_free(self._ptr)
                self._ptr = None
        except Exception:  # noqa: BLE001 - interpreter shutdown: the library may already be gone
            pass


def plain_greedy(model: LlamaCppModel, ids: list[int], max_new_tokens: int, eos=frozenset(),
                 timed_steps: int | None = None):
    """llama.cpp's own greedy loop (its `simple` example): one `llama_decode` per token, the argmax taken
    by llama.cpp's greedy sampler. Returns the new tokens (stopping at an `eos` id), or with timed_steps=N
    the seconds N decode steps took after the prefill (no EOS stop): the llama.cpp peer's figures."""
    import time

    C = lib()
    steps = max_new_tokens if timed_steps is None else timed_steps + 1
    ctx = model.plain_context(len(ids) + steps)
    C.llama_memory_clear(C.llama_get_memory(ctx), True)
    feed = (C.llama_token * len(ids))(*ids)
    out: list[int] = []
    t0 = 0.0
    for step in range(steps):
        if step == 1:
            t0 = time.perf_counter()
        if C.llama_decode(ctx, C.llama_batch_get_one(feed, len(feed))) != 0:
            raise ModelError(f"llama.cpp decode failed{_last_log()}")
        token = C.llama_sampler_sample(model._own["sampler"], ctx, -1)
        out.append(token)
        if token in eos and timed_steps is None:
            break
        feed = (C.llama_token * 1)(token)
    return out if timed_steps is None else time.perf_counter() - t0


def _round(cells: int) -> int:
    return -(-cells // 256) * 256


def _generation_config(path: Path):
    gen = path / "generation_config.json"
    if not gen.exists():
        return None
    import json

    from transformers import GenerationConfig

    return GenerationConfig.from_dict(json.loads(gen.read_text()))


@dataclass
class Pending:
    """The last forward, until its kept nodes are known: per row, each node's position and sequence ids."""

    start: int  # its first cache column
    parents: list[list[int]]  # per row: the tree (a chain for causal forwards)
    positions: list[list[int | None]]  # per row, per node: position (None = a pad, never fed)
    seqs: list[list[list[int]]]  # per row, per node: sequence ids (first = the one its query reads)
    temps: list[int] = field(default_factory=list)  # temporary sequence ids to drop afterwards
    tokens: list[list[int]] = field(default_factory=list)  # per row, the fed ids
    refeed: set[int] = field(default_factory=set)  # rows whose tree left the cache (kept path fed again)


def _leaf_sets(parents: list[int]) -> list[list[int]]:
    """Per node, the leaves below it (itself if a leaf), in leaf order."""
    children = [0] * len(parents)
    for p in parents:
        if p >= 0:
            children[p] += 1
    below: list[list[int]] = [[] for _ in parents]
    for i in reversed(range(len(parents))):
        if children[i] == 0:
            below[i].insert(0, i)
        if parents[i] >= 0:
            below[parents[i]][:0] = below[i]
    return below


class LlamaCppSession(Session):
    """The Session protocol over a llama.cpp context (see the module docstring for the mapping)."""

    def __init__(self, lm, batch_size: int = 1, stats=None, role: str = "target"):
        super().__init__(lm, batch_size, stats, role)
        if batch_size > MAX_SEQ // 2:
            raise ModelError(f"the llamacpp backend runs at most {MAX_SEQ // 2} rows, got {batch_size}")
        self._cells, self._wide = self._size(batch_size, 256), batch_size > 1
        self._ctx = lm.model.acquire(self._cells, self._wide)
        self._mem = lib().llama_get_memory(self._ctx)
        self._batch, self._batch_size = None, 0
        self._pending: Pending | None = None

    def _size(self, rows: int, length: int) -> int:
        """KV cells for `rows` rows of up to `length` tokens: twice that ahead (growing moves the cache),
        at least 1024, at most what `rows` full-length rows can need."""
        return _round(min(rows * self.lm.max_length + 256, max(2 * rows * length, 1024)))

    def _ensure_room(self, length: int) -> None:
        """Grow the context (copying the cache) when the rows at `length` columns might not fit."""
        if self.batch_size * length + 64 > self._cells:
            self._move(list(range(self.batch_size)), self._wide, self._size(self.batch_size, length))

    def __del__(self):
        try:
            if self._batch is not None:
                lib().llama_batch_free(self._batch)
            self.lm.model.release(self._ctx, self._cells, self._wide)
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # ---- forward -------------------------------------------------------------------------
    def _run(self, ids, positions, parents, last_only, hidden):
        if hidden:
            raise ModelError("the llamacpp backend returns logits only, not hidden states (contrastive, dola and "
                             "selfspec's exit_layer=0 need them): use backend='native', or selfspec -p exit_layer=N")
        self._settle()
        B, n = self.batch_size, ids.shape[1]
        self._ensure_room(self.length + n)
        if parents is None and self.pad_mask is None:
            return self._run_chain(ids.tolist(), positions.tolist(), last_only)
        trees = parents or [list(range(-1, n - 1))] * B
        if parents is not None and any(len(set(range(n)) - set(t)) > 1 for t in trees):
            self._widen()  # extra leaves need sequence ids of their own
        self._pending = pending = Pending(self.length, trees, [], [], tokens=ids.tolist())
        out = torch.zeros(B, 1 if last_only else n, self.lm.vocab_size)
        groups = self._groups(trees) if parents is not None else [range(B)]
        for group in groups:
            for b in group:
                self._plan_row(pending, b, positions[b].tolist(), trees[b], parents is not None)
            entries = [(pending.tokens[b][i], pending.positions[b][i], pending.seqs[b][i], b, i)
                       for b in group for i in range(n) if pending.positions[b][i] is not None]
            wanted = self._wanted(entries, last_only)
            logits = self._decode(entries, wanted)  # [wanted entries, V]
            for k, (_, _, _, b, i) in enumerate(e for e, w in zip(entries, wanted) if w):
                out[b, 0 if last_only else i] = logits[k]
            if len(groups) > 1:
                self._detach(pending, group)
        return out

    def _run_chain(self, tokens: list[list[int]], positions: list[list[int]], last_only: bool) -> torch.Tensor:
        """The common forward: every row feeds all its n tokens as a chain (no pads, no tree)."""
        B, n = len(tokens), len(tokens[0])
        self._pending = Pending(self.length, [list(range(-1, n - 1))] * B, positions,
                                [[[b]] * n for b in range(B)], tokens=tokens)
        entries = [(tokens[b][i], positions[b][i], [b], b, i) for b in range(B) for i in range(n)]
        wanted = [not last_only or i == n - 1 for _, _, _, _, i in entries]
        return self._decode(entries, wanted).view(B, 1 if last_only else n, self.lm.vocab_size)

    def _settle(self) -> None:
        """Make the cache hold exactly the session's columns before it is used again."""
        p = self._pending
        if p is None:
            return
        whole_chain = not p.temps and not p.refeed and all(s == [b] for b, row in enumerate(p.seqs) for s in row)
        if whole_chain and self.pad_mask is None and self.length == p.start + len(p.tokens[0]):
            self._pending = None  # a chain kept whole: llama.cpp already holds exactly it
            return
        self._resolve(list(range(self.length)))

    def _groups(self, trees: list[list[int]]) -> list[range]:
        """Consecutive rows whose trees' extra leaves fit llama.cpp's sequence ids together (usually one)."""
        budget, groups, first, used = MAX_SEQ - self.batch_size, [], 0, 0
        for b, tree in enumerate(trees):
            extra = len(set(range(len(tree))) - set(tree)) - 1  # leaves beyond the row's own sequence
            if extra > budget:
                raise ModelError(f"the llamacpp backend evaluates trees of at most {budget + 1} leaves per row")
            if used + extra > budget:
                groups.append(range(first, b))
                first, used = b, 0
            used += extra
        return groups + [range(first, len(trees))]

    def _detach(self, pending: Pending, group: range) -> None:
        """Drop a row group's tree from the cache (sequence ids are needed by the next group); the kept
        path is fed again as a chain when known — the same tokens at the same positions."""
        C = lib()
        for b in group:
            C.llama_memory_seq_rm(self._mem, b, self._position(b, pending.start), -1)
            pending.refeed.add(b)
        for seq in pending.temps:
            C.llama_memory_seq_rm(self._mem, seq, -1, -1)
        pending.temps = []

    def _plan_row(self, pending: Pending, b: int, positions: list[int], parents: list[int], tree: bool) -> None:
        """Positions (pads: None) and sequence ids of row b's new nodes; temporary copies per extra leaf."""
        real = [True] * len(parents) if self.pad_mask is None else \
            self.pad_mask[b, pending.start:pending.start + len(parents)].bool().tolist()
        pending.positions.append([p if r else None for p, r in zip(positions, real)])
        if not tree:
            pending.seqs.append([[b]] * len(parents))
            return
        below = _leaf_sets(parents)
        leaves = sorted({x for s in below for x in s})
        leaf_seq = {leaf: b if k == 0 else self._temp(pending, b) for k, leaf in enumerate(leaves)}
        pending.seqs.append([sorted({leaf_seq[x] for x in s}, key=lambda s: s != b) for s in below])

    def _temp(self, pending: Pending, b: int) -> int:
        """A fresh sequence id holding a copy of row b's cache (no data copied: cells get a new tag)."""
        seq = self.batch_size + len(pending.temps)
        if seq >= MAX_SEQ:
            raise ModelError(f"the llamacpp backend evaluates trees with at most {MAX_SEQ - self.batch_size} "
                             "extra leaves per forward (llama.cpp's sequence limit)")
        lib().llama_memory_seq_cp(self._mem, b, seq, -1, -1)
        pending.temps.append(seq)
        return seq

    def _wanted(self, entries, last_only: bool) -> list[bool]:
        if not last_only:
            return [True] * len(entries)
        last = {b: i for _, _, _, b, i in entries}  # each row's last fed node
        return [last[b] == i for _, _, _, b, i in entries]

    def _decode(self, entries, wanted: list[bool]) -> torch.Tensor:
        """One llama_decode of the entries (token, position, seq ids, ·, ·); logits of the wanted ones."""
        C = lib()
        batch = self._batch_for(len(entries))
        for k, (token, pos, seqs, _, _) in enumerate(entries):
            batch.token[k] = token
            batch.pos[k] = pos
            batch.n_seq_id[k] = len(seqs)
            for j, s in enumerate(seqs):
                batch.seq_id[k][j] = s
            batch.logits[k] = wanted[k]
        batch.n_tokens = len(entries)
        rc = C.llama_decode(self._ctx, batch)
        if rc != 0:
            reason = "no room left in the KV cache" if rc == 1 else f"error {rc}"
            raise ModelError(f"llama.cpp decode failed ({reason}){_last_log()}")
        rows = sum(wanted)
        if not rows:
            return torch.empty(0, self.lm.vocab_size)
        ptr = C.llama_get_logits(self._ctx)
        return torch.from_numpy(np.ctypeslib.as_array(ptr, shape=(rows, self.lm.vocab_size)).copy())

    def _batch_for(self, n: int):
        if n > self._batch_size:
            C = lib()
            if self._batch is not None:
                C.llama_batch_free(self._batch)
            self._batch_size = max(n, 2 * self._batch_size, 16)
            self._batch = C.llama_batch_init(self._batch_size, 0, MAX_SEQ)
        return self._batch

    # ---- rollback ------------------------------------------------------------------------
    def _resolve(self, columns: list[int]) -> None:
        """Make llama.cpp's sequences hold exactly `columns`: a cache prefix, then kept nodes of the last
        forward (per row minus its pads and holes, read from the current pad mask)."""
        pending, self._pending = self._pending, None
        start = pending.start if pending is not None else self.length
        old, new = [c for c in columns if c < start], [c for c in columns if c >= start]
        if columns != old + new or old != list(range(len(old))) or (new and len(old) < start):
            raise ModelError("the llamacpp backend keeps a cache prefix plus a path of the last forward only")
        C, refeed = lib(), []
        for b in range(self.batch_size):
            if len(old) < start or pending is None:
                C.llama_memory_seq_rm(self._mem, b, self._position(b, len(old)), -1)
            else:
                refeed += self._keep_row(b, pending, [c - start for c in new if self._real(b, c)])
        for seq in pending.temps if pending is not None else ():
            C.llama_memory_seq_rm(self._mem, seq, -1, -1)
        if refeed:
            self._decode(refeed, [False] * len(refeed))

    def _real(self, b: int, column: int) -> bool:
        return self.pad_mask is None or bool(self.pad_mask[b, column])

    def _keep_row(self, b: int, pending: Pending, kept: list[int]) -> list:
        """Row b keeps its whole older cache and, of the last forward, the nodes `kept`: a prefix of a
        chain or a root path of a tree, left in sequence b; everything else leaves it. Returns the decode
        entries that feed the path again when the row's tree already left the cache (`_detach`)."""
        C = lib()
        end = self._position(b, pending.start)
        if not kept:
            C.llama_memory_seq_rm(self._mem, b, end, -1)
            return []
        parents, seqs = pending.parents[b], pending.seqs[b]
        fed = [i for i, p in enumerate(pending.positions[b]) if p is not None]
        chain = kept == fed[: len(kept)] and all(seqs[i] == [b] for i in kept)
        path = parents[kept[0]] == -1 and all(parents[j] == i for i, j in zip(kept, kept[1:]))
        if not (chain or path):
            raise ModelError(f"the llamacpp backend keeps a root path of a tree, not nodes {kept}")
        if b in pending.refeed:
            return [(pending.tokens[b][i], end + j, [b], b, j) for j, i in enumerate(kept)]
        holder = seqs[kept[-1]][0]  # a sequence holding the whole kept path
        if holder != b:
            C.llama_memory_seq_rm(self._mem, b, end, -1)
            C.llama_memory_seq_cp(self._mem, holder, b, end, end + len(kept))
        C.llama_memory_seq_rm(self._mem, b, end + len(kept), -1)
        return []

    def _position(self, b: int, column: int) -> int:
        """Position of the first token after `column` columns of row b (its real tokens before it)."""
        return column if self.pad_mask is None else int(self.pad_mask[b, :column].sum())

    def _keep(self, columns: list[int]) -> None:
        self._resolve(columns)

    def _gather_columns(self, index: torch.Tensor) -> None:
        self._settle()  # real tokens already sit at consecutive positions: nothing moves in llama.cpp

    def _select_rows(self, rows: torch.Tensor) -> None:
        self._settle()
        rows = rows.tolist()
        if rows == list(range(self.batch_size)):
            return
        cells = max(self._cells, self._size(len(rows), self.length))
        if not self._wide or cells > self._cells or max(self.batch_size, len(rows)) + len(rows) > MAX_SEQ:
            return self._move(rows, self._wide or len(rows) > 1, cells)
        C, base = lib(), max(self.batch_size, len(rows))
        for i, r in enumerate(rows):
            C.llama_memory_seq_cp(self._mem, r, base + i, -1, -1)
        for s in range(self.batch_size):
            C.llama_memory_seq_rm(self._mem, s, -1, -1)
        for i in range(len(rows)):
            C.llama_memory_seq_cp(self._mem, base + i, i, -1, -1)
            C.llama_memory_seq_rm(self._mem, base + i, -1, -1)

    def _widen(self) -> None:
        """Move to a context with sequence ids to spare (trees, forks) — the cache is copied, not recomputed."""
        if not self._wide:
            self._move(list(range(self.batch_size)), True, self._cells)

    def _move(self, rows: list[int], wide: bool, cells: int) -> None:
        """Rows `rows` of this batch, copied into a new context of `cells` KV cells (`wide`: 256 sequences)."""
        if len(rows) > MAX_SEQ // 2:
            raise ModelError(f"the llamacpp backend runs at most {MAX_SEQ // 2} rows, got {len(rows)}")
        old = (self._ctx, self._cells, self._wide)
        self._cells, self._wide = cells, wide
        self._ctx = self.lm.model.acquire(self._cells, self._wide)
        self._mem = lib().llama_get_memory(self._ctx)
        self._copy_rows(self, old[0], rows, 0)
        self.lm.model.release(*old)

    def _copy_rows(self, source: "LlamaCppSession", ctx, rows: list[int], first_seq: int) -> None:
        """Sequences `rows` of context `ctx` (holding `source`'s rows) become this context's sequences
        first_seq, first_seq + 1, …: llama.cpp's per-sequence state copy (keys, values, positions), or,
        where that fails, the row's tokens fed again (the same tokens at the same positions)."""
        C, refeed = lib(), []
        for seq, r in enumerate(rows, start=first_seq):
            size = C.llama_state_seq_get_size(ctx, r)
            buf = (ctypes.c_uint8 * size)()
            if not (C.llama_state_seq_get_data(ctx, buf, size, r) == size
                    and C.llama_state_seq_set_data(self._ctx, buf, size, seq) == size):
                C.llama_memory_seq_rm(self._mem, seq, -1, -1)
                real = [t for c, t in enumerate(source.tokens[r]) if source._real(r, c)]
                refeed += [(t, p, [seq], seq, p) for p, t in enumerate(real)]
        if refeed:
            self._decode(refeed, [False] * len(refeed))

    def _merge(self, other: "LlamaCppSession", shift: int, other_shift: int) -> None:
        """Other's rows join as sequences B.. (pads take no position, so `shift`s change nothing here);
        their keys and values are copied over from the other session's context."""
        self._settle()
        other._settle()
        rows = self.batch_size + other.batch_size
        if rows > MAX_SEQ // 2:
            raise ModelError(f"the llamacpp backend runs at most {MAX_SEQ // 2} rows, got {rows}")
        cells = max(self._cells, self._size(rows, max(self.length, other.length)))
        if not self._wide or cells > self._cells:
            self._move(list(range(self.batch_size)), True, cells)
        self._copy_rows(other, other._ctx, list(range(other.batch_size)), self.batch_size)
