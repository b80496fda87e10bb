"""Train a small Llama on the stdlib corpus: seeded, resumable, CPU or CUDA, rich progress.

`decodelab train --config NAME_OR_PATH --out DIR [--tokenizer DIR]`. The run directory holds the
tokenised data, `ckpt.pt` (model, optimizer, step, RNG: a killed run resumes where it stopped),
`log.jsonl` (loss per step, validation CE) and, at the end, `model/`: a standard Hugging Face
directory (safetensors, float16) with the tokenizer beside it.
Fill-in-the-middle examples use StarCoder's prefix-suffix-middle layout.

Distillation (a config with `teacher`, e.g. `pyco-draft-kd`): the loss is
(1 − kd_weight) · CE(data) + kd_weight · KL(p_teacher ‖ q_student) per token — the forward KL of
DistillSpec ("DistillSpec: Improving Speculative Decoding via Knowledge Distillation", arXiv:2310.08461),
which trains a draft to agree with its target rather than with the data. `init` starts from an existing
model's weights (a builtin name or a directory; its tokenizer is the run's).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import UserError
from .corpus import load_split
from .tokenizer import BOS, EOS, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, save_hf_tokenizer, train_tokenizer

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class TrainConfig:
    name: str
    model: dict
    vocab_size: int = 8192
    seq_len: int = 512
    batch_size: int = 8
    steps: int = 1000
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.1
    fim_rate: float = 0.5
    eval_every: int = 200
    eval_batches: int = 16
    ckpt_every: int = 100
    seed: int = 0
    max_files: int | None = None
    stop_after: int | None = None  # end (and export) early; the LR schedule still spans `steps`
    init: str | None = None  # start from this model's weights (builtin name or HF directory)
    teacher: str | None = None  # distil from this model (same tokenizer)
    kd_weight: float = 0.0  # share of the loss that is KL(teacher ‖ student)
    extra: dict = field(default_factory=dict)

    @classmethod
    def load(cls, name_or_path: str) -> "TrainConfig":
        path = Path(name_or_path)
        if not path.exists():
            path = CONFIG_DIR / f"{name_or_path}.json"
        if not path.exists():
            names = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
            raise UserError(f"no training config {name_or_path!r}; builtin configs: {names}")
        return cls(**json.loads(path.read_text()))


def _texts(split: str, cfg: TrainConfig) -> list[str]:
    files = load_split(split)
    return [f.text for f in files[: cfg.max_files]]


def prepare_tokenizer(cfg: TrainConfig, tok_dir: Path):
    """Train the tokenizer into tok_dir unless one is already there; return it as HF fast tokenizer."""
    from transformers import PreTrainedTokenizerFast

    if not (tok_dir / "tokenizer.json").exists():
        tok = train_tokenizer(cfg.vocab_size, _texts("train", cfg))
        save_hf_tokenizer(tok, tok_dir, model_max_length=cfg.model.get("max_position_embeddings", 2048))
    return PreTrainedTokenizerFast.from_pretrained(tok_dir)


def tokenize_split(tok, split: str, cfg: TrainConfig, out: Path) -> torch.Tensor:
    """One long stream `<bos> file <eos> <bos> file <eos> …` (cached as out/data-SPLIT.pt)."""
    cache = out / f"data-{split}.pt"
    if cache.exists():
        return torch.load(cache)
    bos, eos = tok.convert_tokens_to_ids([BOS, EOS])
    ids: list[int] = []
    for text in _texts(split, cfg):
        ids += [bos, *tok.encode(text, add_special_tokens=False), eos]
    stream = torch.tensor(ids, dtype=torch.int32)
    torch.save(stream, cache)
    return stream


def fim_permute(chunk: torch.Tensor, fim_ids: tuple[int, int, int], gen: torch.Generator) -> torch.Tensor:
    """Prefix-suffix-middle: `<fim_prefix> P <fim_suffix> S <fim_middle> M`, same length as chunk."""
    n = chunk.numel()
    a, b = sorted(torch.randint(0, n + 1, (2,), generator=gen).tolist())
    pre, mid, suf = chunk[:a], chunk[a:b], chunk[b:]
    fp, fs, fm = (torch.tensor([i], dtype=chunk.dtype) for i in fim_ids)
    return torch.cat([fp, pre, fs, suf, fm, mid])[:n]


def sample_batch(stream: torch.Tensor, cfg: TrainConfig, fim_ids, gen: torch.Generator) -> torch.Tensor:
    """[batch_size, seq_len + 1] random windows of the stream, a fim_rate share FIM-permuted."""
    starts = torch.randint(0, stream.numel() - cfg.seq_len - 1, (cfg.batch_size,), generator=gen)
    rows = []
    for s in starts.tolist():
        chunk = stream[s : s + cfg.seq_len + 1].long()
        if torch.rand((), generator=gen).item() < cfg.fim_rate:
            chunk = fim_permute(chunk, fim_ids, gen)
        rows.append(chunk)
    return torch.stack(rows)


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def build_model(cfg: TrainConfig, tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    conf = LlamaConfig(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **cfg.model,
    )
    torch.manual_seed(cfg.seed)
    return LlamaForCausalLM(conf)


@torch.no_grad()
def evaluate(model, stream: torch.Tensor, cfg: TrainConfig, device: str) -> float:
    """Mean next-token cross-entropy (nats/token) on the first eval_batches×batch_size windows."""
    model.eval()
    n = min(cfg.eval_batches * cfg.batch_size, (stream.numel() - 1) // cfg.seq_len)
    total = 0.0
    for i in range(0, n, cfg.batch_size):
        rows = [stream[j * cfg.seq_len : (j + 1) * cfg.seq_len + 1].long() for j in range(i, min(n, i + cfg.batch_size))]
        batch = torch.stack(rows).to(device)
        out = model(input_ids=batch[:, :-1], labels=batch[:, :-1].clone())
        # labels are shifted inside HF: loss over positions 1..T-1; recompute over full window instead
        logits = out.logits.float()
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="sum")
        total += loss.item()
    model.train()
    return total / (n * cfg.seq_len)


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def train(config: str, out: Path, tokenizer_dir: Path | None = None, steps: int | None = None) -> Path:
    """Run (or resume) training; returns the exported model directory."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    cfg = TrainConfig.load(config)
    if steps is not None:
        cfg.steps = steps
    out.mkdir(parents=True, exist_ok=True)
    tok_dir = tokenizer_dir or out / "tokenizer"
    if cfg.init and not (tok_dir / "tokenizer.json").exists():  # the initial model's tokenizer is the run's
        _copy_tokenizer(_model_dir(cfg.init), tok_dir)
    tok = prepare_tokenizer(cfg, tok_dir)
    train_stream = tokenize_split(tok, "train", cfg, out)
    valid_stream = tokenize_split(tok, "valid", cfg, out)
    device = _device()
    model = (_init_model(cfg.init) if cfg.init else build_model(cfg, tok)).to(device)
    teacher = _teacher(cfg.teacher, device) if cfg.teacher else None
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    step, wall = 0, 0.0
    ckpt = out / "ckpt.pt"
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        step, wall = state["step"], state["wall"]
    fim_ids = tuple(tok.convert_tokens_to_ids([FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE]))
    log = (out / "log.jsonl").open("a")
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)
    n_params = sum(p.numel() for p in model.parameters())
    with Progress(TextColumn(f"[bold]{cfg.name}[/] {n_params/1e6:.1f}M"), BarColumn(),
                  TextColumn("{task.completed}/{task.total} loss {task.fields[loss]:.3f}"),
                  TimeElapsedColumn(), TimeRemainingColumn()) as bar:
        task = bar.add_task("train", total=cfg.steps, completed=step, loss=float("nan"))
        end = min(cfg.steps, cfg.stop_after or cfg.steps)
        while step < end:
            t0 = time.perf_counter()
            batch = sample_batch(train_stream, cfg, fim_ids, gen).to(device)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg)
            with amp:
                logits = model(input_ids=batch[:, :-1]).logits
            loss = training_loss(logits, batch, teacher, cfg.kd_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            wall += time.perf_counter() - t0
            rec = {"step": step, "loss": round(loss.item(), 4), "lr": lr_at(step - 1, cfg), "wall_s": round(wall, 1)}
            if step % cfg.eval_every == 0 or step == end:
                rec["valid_ce"] = round(evaluate(model, valid_stream, cfg, device), 4)
            log.write(json.dumps(rec) + "\n")
            log.flush()
            bar.update(task, completed=step, loss=loss.item())
            if step % cfg.ckpt_every == 0 or step == end:
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
                            "step": step, "wall": wall}, ckpt)
    return export(model, tok_dir, out / "model", cfg, wall)


def training_loss(logits: torch.Tensor, batch: torch.Tensor, teacher, kd_weight: float) -> torch.Tensor:
    """Next-token CE on the data, mixed with KL(p_teacher ‖ q_student) when there is a teacher."""
    F = torch.nn.functional
    logits = logits.float().flatten(0, 1)
    ce = F.cross_entropy(logits, batch[:, 1:].flatten())
    if teacher is None or kd_weight == 0:
        return ce
    with torch.inference_mode():
        target_logp = teacher(input_ids=batch[:, :-1]).logits.float().flatten(0, 1).log_softmax(-1)
    kl = F.kl_div(logits.log_softmax(-1), target_logp.clone(), log_target=True, reduction="batchmean")
    return (1 - kd_weight) * ce + kd_weight * kl


def _model_dir(name: str) -> Path:
    from ..model import builtin_path

    return builtin_path(name) if name.startswith("builtin:") else Path(name)


def _copy_tokenizer(src: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (src / name).exists():
            shutil.copy(src / name, dest / name)


def _init_model(name: str):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(_model_dir(name), dtype=torch.float32)


def _teacher(name: str, device: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(_model_dir(name), dtype=torch.float32).to(device).eval()


def export(model, tok_dir: Path, dest: Path, cfg: TrainConfig, wall: float) -> Path:
    """Save a float16 safetensors HF directory with the tokenizer and a training summary."""
    dest.mkdir(parents=True, exist_ok=True)
    model.to("cpu").to(torch.float16).save_pretrained(dest, safe_serialization=True)
    _copy_tokenizer(tok_dir, dest)
    steps = min(cfg.steps, cfg.stop_after or cfg.steps)
    summary = {"config": cfg.name, "steps": steps, "schedule_steps": cfg.steps,
               **({"init": cfg.init} if cfg.init else {}),
               **({"teacher": cfg.teacher, "kd_weight": cfg.kd_weight} if cfg.teacher else {}),
               "tokens_seen": steps * cfg.batch_size * cfg.seq_len,
               "wall_time_s": round(wall, 1), "params": sum(p.numel() for p in model.parameters()),
               "device": _device(), "torch": torch.__version__}
    (dest / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return dest
