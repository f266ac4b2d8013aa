"""Tiny bases, a tiny finished training run and helpers for the Hub, PEFT-interop and CLI tests (no downloads)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from tiny_backbones import VOCAB, randomize_adapters, tiny_config

REPO = Path(__file__).resolve().parents[1]
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(VOCAB - 5)]
# What a two-phase run records (the shape of lora_hf.training's run_record.json).
RESULTS = {
    "base_model": "see config.json",
    "task": "classification",
    "full_finetune": False,
    "datasets": {"pretrain": "movie reviews, unlabeled (local text files)", "finetune": "stanfordnlp/sst2"},
    "pretrain": {"eval_loss": 4.25, "eval_perplexity": 70.1, "eval_runtime": 1.5, "train_loss": 4.6, "epoch": 1.0},
    "finetune": {"eval_accuracy": 0.8125, "eval_f1": 0.8, "eval_loss": 0.45, "test_accuracy": 0.79, "test_f1": 0.7812,
                 "test_loss": 0.5, "test_samples_per_second": 100.0, "train_loss": 0.55, "epoch": 3.0},
    "trainable_params": 1234,
    "total_params": 56789,
}


def tokenizer():
    """A WordPiece tokenizer over `w0 ... w93` and BERT's special tokens: 99 ids, like the tiny models."""
    from transformers import BertTokenizer

    return BertTokenizer(vocab={word: i for i, word in enumerate(WORDS)})


def save_bases(root: Path, hub_id: str | None = "hf-internal-testing/tiny-random-bert") -> dict:
    """Tiny bases: BERT with a masked-LM head and a tokenizer (its config records `hub_id` as its origin),
    a bare BERT encoder (it has the pooler a classifier needs), and GPT-2 with its LM head."""
    from transformers import BertForMaskedLM, BertModel, GPT2LMHeadModel

    torch.manual_seed(0)
    BertForMaskedLM(tiny_config("bert")).save_pretrained(root / "bert")
    tokenizer().save_pretrained(root / "bert")
    if hub_id:
        config_file = root / "bert" / "config.json"
        config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "_name_or_path": hub_id}, indent=2))
    torch.manual_seed(1)
    GPT2LMHeadModel(tiny_config("gpt2")).save_pretrained(root / "gpt2")
    torch.manual_seed(2)
    BertModel(tiny_config("bert")).save_pretrained(root / "bert_encoder")
    return {"bert": str(root / "bert"), "gpt2": str(root / "gpt2"), "bert_encoder": str(root / "bert_encoder")}


def classifier(base: str, seed: int = 0, **lora_kwargs):
    from lora_hf import LoraForSequenceClassification

    torch.manual_seed(seed)
    kwargs = {"r": 4, "lora_alpha": 8, "num_labels": 3, **lora_kwargs}
    model = LoraForSequenceClassification.from_base_model(base, **kwargs)
    randomize_adapters(model, seed, head_scale=0.1)  # a re-drawn head too, so that it shows in the outputs
    return model.eval()


def save_run(root: Path, base: str, results: dict | None = RESULTS) -> Path:
    """A directory like the end of `lora-hf train`: model, tokenizer, run_record.json, all_results.json, loss picture, phase states."""
    model = classifier(base, id2label={0: "negative", 1: "neutral", 2: "positive"}, label2id={"negative": 0, "neutral": 1, "positive": 2})
    model.set_phase("finetune")
    model.save_pretrained(root)
    tokenizer().save_pretrained(root)
    if results is not None:
        from lora_hf.training import flat_results

        (root / "run_record.json").write_text(json.dumps(results, indent=2))
        (root / "all_results.json").write_text(json.dumps(flat_results(results), indent=2))
    (root / "loss_curve.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)  # stands in for matplotlib's picture
    for phase, steps, rate in (("pretrain", 40, 5e-4), ("finetune", 120, 1e-3)):
        (root / phase).mkdir()
        history = [{"step": s, "loss": 1.0 / s, "learning_rate": rate * min(1.0, s / 20)} for s in range(10, steps + 1, 10)]
        state = {"global_step": steps, "num_train_epochs": 2, "train_batch_size": 16, "log_history": history}
        (root / phase / "trainer_state.json").write_text(json.dumps(state))
    return root


def run_without_lora_hf(code: str, cwd: str = "/"):
    """Run `code` in a fresh interpreter where `import lora_hf` fails; return the JSON it prints last."""
    script = "import sys, json, torch\nsys.modules['lora_hf'] = None\n" + textwrap.dedent(code)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300, cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


class FakeHub:
    """Stands in for `HfApi.create_repo` / `create_commit`: records the calls and the uploaded bytes."""

    def __init__(self, monkeypatch):
        from huggingface_hub import HfApi
        from huggingface_hub.hf_api import CommitInfo, RepoUrl

        self.repos, self.commits = [], []
        hub = self

        def create_repo(api, repo_id, **kwargs):
            hub.repos.append({"repo_id": repo_id, "token": api.token, **kwargs})
            return RepoUrl(f"https://huggingface.co/{repo_id}")

        def create_commit(api, repo_id, operations, commit_message=None, **kwargs):
            files = {}
            for op in operations:
                data = op.path_or_fileobj
                files[op.path_in_repo] = data if isinstance(data, bytes) else Path(data).read_bytes()
            hub.commits.append({"repo_id": repo_id, "files": files, "message": commit_message, **kwargs})
            url = f"https://huggingface.co/{repo_id}/commit/{'0' * 40}"
            return CommitInfo(commit_url=url, commit_message=commit_message, commit_description="", oid="0" * 40)

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "create_commit", create_commit)
        # The Hub's own YAML check is a network call: count it, accept the card.
        from huggingface_hub import ModelCard

        self.validated = []
        monkeypatch.setattr(ModelCard, "validate", lambda card, repo_type=None: hub.validated.append(str(card)))

    def write(self, folder: Path, commit: int = -1) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in self.commits[commit]["files"].items():
            (folder / name).write_bytes(data)
        return folder

