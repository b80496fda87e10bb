"""The training pipeline on the `tiny` config: corpus splits, tokenizer, FIM, training, resume, export."""

import json
import math

import pytest
import torch

import decodelab
from decodelab.training import corpus
from decodelab.training.tokenizer import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, SPECIAL_TOKENS, train_tokenizer
from decodelab.training.train import TrainConfig, fim_permute, lr_at, sample_batch, train


def _log(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The tiny config trained twice with one shared tokenizer: straight through, and 3 steps + resume."""
    root = tmp_path_factory.mktemp("train")
    tok_dir = root / "tokenizer"
    straight = train("tiny", root / "straight", tok_dir)
    partial = train("tiny", root / "resumed", tok_dir, steps=3)
    partial_log = _log(root / "resumed")
    resumed = train("tiny", root / "resumed", tok_dir)
    return {"straight": straight, "resumed": resumed, "partial_log": partial_log, "root": root,
            "partial": partial}


# ---- training, export, resume --------------------------------------------------------------------

def test_run_exports_a_standard_model_directory(runs):
    model = runs["straight"]
    assert model == runs["root"] / "straight" / "model"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "training_summary.json"):
        assert (model / name).is_file(), name
    assert not list(model.glob("*.bin"))
    summary = json.loads((model / "training_summary.json").read_text())
    assert summary["config"] == "tiny" and summary["steps"] == 6 and summary["params"] > 0
    config = json.loads((model / "config.json").read_text())
    assert config["model_type"] == "llama" and config["vocab_size"] >= 400


def test_log_has_every_step_and_validation(runs):
    cfg = TrainConfig.load("tiny")
    log = _log(runs["root"] / "straight")
    assert [r["step"] for r in log] == list(range(1, cfg.steps + 1))
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in log)
    evals = {r["step"]: r["valid_ce"] for r in log if "valid_ce" in r}
    assert set(evals) == {3, 6}  # eval_every 3, and the last step
    # an untrained model is near uniform: CE close to ln(vocab), certainly finite and positive
    assert all(0 < ce < 2 * math.log(cfg.vocab_size) for ce in evals.values())


def test_exported_model_loads_and_generates(runs):
    lm = decodelab.load(str(runs["straight"]))
    assert lm.vocab_size >= 400 and lm.max_length == 128
    eos = lm.tokenizer.convert_tokens_to_ids("<|eos|>")
    assert eos in lm.eos_token_ids
    g = decodelab.generate(lm, "def f(x):", max_new_tokens=5)
    assert len(g.token_ids) == 5 or g.finish_reason == "eos"
    assert g.text == lm.decode(g.token_ids[:-1] if g.finish_reason == "eos" else g.token_ids)


def test_resume_continues_from_the_checkpoint(runs):
    assert [r["step"] for r in runs["partial_log"]] == [1, 2, 3]
    log = _log(runs["root"] / "resumed")
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]  # continued from 4, not restarted at 1
    assert torch.load(runs["root"] / "resumed" / "ckpt.pt", weights_only=False)["step"] == 6


def test_resumed_run_equals_uninterrupted_run(runs):
    """Model, optimizer and data RNG are all restored: the losses and weights match a straight run."""
    from safetensors.torch import load_file

    straight, resumed = _log(runs["root"] / "straight"), _log(runs["root"] / "resumed")
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]
    assert [r.get("valid_ce") for r in resumed] == [r.get("valid_ce") for r in straight]
    a, b = load_file(runs["straight"] / "model.safetensors"), load_file(runs["resumed"] / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)


def test_lr_schedule():
    cfg = TrainConfig.load("tiny")
    lrs = [lr_at(s, cfg) for s in range(cfg.steps)]
    assert lrs[: cfg.warmup] == sorted(lrs[: cfg.warmup]) and lrs[cfg.warmup - 1] == pytest.approx(cfg.lr)
    decay = lrs[cfg.warmup - 1:]
    assert decay == sorted(decay, reverse=True)
    assert lr_at(cfg.steps, cfg) == pytest.approx(cfg.lr * cfg.min_lr_ratio)
    assert all(cfg.lr * cfg.min_lr_ratio <= lr <= cfg.lr for lr in lrs)


def test_unknown_config_is_a_clear_error():
    with pytest.raises(ValueError, match="no training config 'nope'.*tiny"):
        TrainConfig.load("nope")


# ---- corpus splits -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def relpaths():
    root = corpus.stdlib_root()
    return [p.relative_to(root).as_posix() for p in corpus.iter_paths(root)]


def test_split_of_is_deterministic_and_roughly_90_5_5(relpaths):
    assert len(relpaths) > 500 and len(set(relpaths)) == len(relpaths)
    assert all(r.endswith(".py") and "site-packages" not in r for r in relpaths)
    splits = {r: corpus.split_of(r) for r in relpaths}
    assert all(corpus.split_of(r) == s for r, s in splits.items())
    groups = {name: {r for r, s in splits.items() if s == name} for name in corpus.SPLITS}
    assert set(splits.values()) == set(corpus.SPLITS)
    assert sum(len(g) for g in groups.values()) == len(relpaths)  # disjoint and covering
    assert set().union(*groups.values()) == set(relpaths)
    share = {name: len(g) / len(relpaths) for name, g in groups.items()}
    assert 0.85 < share["train"] < 0.95
    assert 0.02 < share["valid"] < 0.08 and 0.02 < share["test"] < 0.08


def test_split_depends_on_the_path_only(relpaths):
    # the split is a property of the relative path, not of order or of the rest of the corpus
    sample = relpaths[::50]
    assert [corpus.split_of(r) for r in reversed(sample)] == [corpus.split_of(r) for r in sample][::-1]
    assert len({corpus.split_of(r) for r in relpaths[:200]}) > 1


# ---- FIM -----------------------------------------------------------------------------------------

FIM = (1001, 1002, 1003)


def _psm_split(chunk: list[int], out: list[int]):
    """The (a, b) for which out is the first len(chunk) tokens of `<pre> P <suf> S <mid> M`, or None."""
    n = len(chunk)
    for a in range(n + 1):
        for b in range(a, n + 1):
            full = [FIM[0], *chunk[:a], FIM[1], *chunk[b:], FIM[2], *chunk[a:b]]
            if full[:n] == out:
                return a, b
    return None


def test_fim_permute_keeps_length_and_layout():
    chunk = torch.arange(33)
    complete = 0
    for seed in range(150):
        out = fim_permute(chunk, FIM, torch.Generator().manual_seed(seed))
        assert out.shape == chunk.shape and out.dtype == chunk.dtype
        ids = out.tolist()
        assert ids[0] == FIM[0]
        assert all(ids.count(f) <= 1 for f in FIM)
        split = _psm_split(chunk.tolist(), ids)
        assert split is not None, ids
        a, b = split
        if b - a >= 3:  # the middle absorbs the 3 sentinels' room: all three are present
            assert all(f in ids for f in FIM)
            complete += 1
    assert complete > 100  # most random splits leave a middle long enough


def test_sample_batch_without_fim_is_windows_of_the_stream():
    cfg = TrainConfig.load("tiny")
    cfg.fim_rate = 0.0
    stream = torch.arange(500, dtype=torch.int32)
    batch = sample_batch(stream, cfg, FIM, torch.Generator().manual_seed(0))
    assert batch.shape == (cfg.batch_size, cfg.seq_len + 1)
    for row in batch:
        assert torch.equal(row, torch.arange(row[0].item(), row[0].item() + cfg.seq_len + 1))
    cfg.fim_rate = 1.0
    batch = sample_batch(stream, cfg, FIM, torch.Generator().manual_seed(0))
    assert (batch[:, 0] == FIM[0]).all()


# ---- tokenizer -----------------------------------------------------------------------------------

def _texts(relpaths, start, count, max_chars=30_000):
    root = corpus.stdlib_root()
    out = []
    for rel in relpaths[start:]:
        try:
            text = (root / rel).read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            continue
        if 0 < len(text) <= max_chars:
            out.append(text)
        if len(out) == count:
            break
    return out


def test_tokenizer_round_trips_unseen_files_byte_for_byte(relpaths, tmp_path):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from decodelab.training.tokenizer import save_hf_tokenizer

    train_texts = _texts(relpaths, 0, 10)
    others = _texts(relpaths, len(relpaths) // 2, 18)
    others += ["x = 'héllo wörld — ∑ 😀'\n\tif a:\r\n  pass  \n", "  leading and trailing spaces  \n\n\n"]
    assert len(others) == 20
    tok = train_tokenizer(vocab_size=400, texts=train_texts)
    assert tok.get_vocab_size() == 400
    assert all(tok.token_to_id(s) is not None for s in SPECIAL_TOKENS)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False)
    save_hf_tokenizer(tok, tmp_path / "tok", model_max_length=128)
    auto = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert auto.convert_tokens_to_ids([FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE]) == [
        tok.token_to_id(FIM_PREFIX), tok.token_to_id(FIM_SUFFIX), tok.token_to_id(FIM_MIDDLE)]
    for text in others:
        ids = tok.encode(text).ids
        assert len(ids) < len(text.encode())  # merges were learned and used
        assert tok.decode(ids, skip_special_tokens=False) == text
        assert fast.decode(fast.encode(text, add_special_tokens=False)) == text
        assert auto.decode(auto.encode(text, add_special_tokens=False)) == text


# ---- model card ------------------------------------------------------------------------------------

def test_model_card_numbers(runs):
    from decodelab.training.evaluate import _valid_stream, _windows, model_card

    straight, resumed = str(runs["straight"]), str(runs["resumed"])
    card = model_card(straight, resumed, n_windows=3, length=32, bigram_files=20)
    assert card["validation_tokens"] == 3 * 32
    # the card's CE is the mean next-token loss transformers computes on the same windows
    lm = decodelab.load(straight, backend="transformers")  # the peer: transformers computes the loss
    windows = _windows(_valid_stream(lm, 3 * 32 + 1), 3, 32)
    with torch.no_grad():
        hf = torch.stack([lm.model(input_ids=w[None], labels=w[None]).loss for w in windows]).mean()
    assert card["target_ce"] == pytest.approx(float(hf), abs=1e-3)
    assert card["bigram_ce"] < card["uniform_ce"] == round(math.log(lm.vocab_size), 4)
    assert 0 <= card["top1_agreement"] <= 1 and card["target_params"] == card["draft_params"] > 0
    assert card["target_ms_per_token"] > 0 and card["draft_ms_per_token"] > 0
    assert card["draft_cost_ratio"] == pytest.approx(card["draft_ms_per_token"] / card["target_ms_per_token"], rel=1e-2)
    assert len(card["completions"]) == 3 and all(c["prompt"] for c in card["completions"])
    # a model compared with itself agrees everywhere and has the same CE
    same = model_card(straight, straight, n_windows=3, length=32, bigram_files=20)
    assert same["top1_agreement"] == 1.0 and same["draft_ce"] == same["target_ce"]


# ---- distillation (DistillSpec's forward KL) -----------------------------------------------------

def test_training_loss_mixes_ce_and_kl_to_the_teacher():
    from decodelab.training.train import training_loss

    torch.manual_seed(0)
    batch = torch.randint(0, 11, (2, 6))
    student = torch.randn(2, 5, 11, requires_grad=True)

    class Teacher:
        def __init__(self, logits):
            self.logits = logits

        def __call__(self, input_ids):
            return self

    ce = torch.nn.functional.cross_entropy(student.flatten(0, 1), batch[:, 1:].flatten())
    assert torch.equal(training_loss(student, batch, None, 1.0), ce)
    same = Teacher(student.detach().clone())
    torch.testing.assert_close(training_loss(student, batch, same, 0.25), 0.75 * ce)  # KL(p‖p) = 0
    other = torch.randn(2, 5, 11)
    p, logq = other.flatten(0, 1).softmax(-1), student.flatten(0, 1).log_softmax(-1)
    kl = (p * (p.log() - logq)).sum(-1).mean()
    loss = training_loss(student, batch, Teacher(other), 1.0)
    torch.testing.assert_close(loss, kl)
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_distillation_run_starts_from_init_and_records_its_teacher(runs, tmp_path):
    from safetensors.torch import load_file

    cfg = json.loads((decodelab.training.train.CONFIG_DIR / "tiny.json").read_text())
    cfg.update(name="tiny-kd", steps=2, eval_every=2, ckpt_every=2, init=str(runs["partial"]),
               teacher=str(runs["straight"]), kd_weight=0.5)
    path = tmp_path / "tiny-kd.json"
    path.write_text(json.dumps(cfg))
    out = train(str(path), tmp_path / "kd")
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["init"] == str(runs["partial"]) and summary["teacher"] == str(runs["straight"])
    assert summary["kd_weight"] == 0.5
    assert (tmp_path / "kd" / "tokenizer" / "tokenizer.json").read_text() == \
        (runs["partial"] / "tokenizer.json").read_text()  # the initial model's tokenizer is the run's
    start, end = load_file(runs["partial"] / "model.safetensors"), load_file(out / "model.safetensors")
    assert start.keys() == end.keys() and any(not torch.equal(start[k], end[k]) for k in start)
    assert all(math.isfinite(r["loss"]) for r in _log(tmp_path / "kd"))
