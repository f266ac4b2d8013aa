"""Tiny bases, a tiny finished training run and helpers for the Hub, PEFT-interop and CLI tests (no downloads)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
VOCAB = 99
ATOL = 1e-5  # fp32 outputs compared across implementations (PEFT, the merged model)
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


def bert_config(**overrides):
    from transformers import BertConfig

    values = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                  max_position_embeddings=64, pad_token_id=0)
    return BertConfig(**{**values, **overrides})


def gpt2_config(**overrides):
    from transformers import GPT2Config

    values = dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=40, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return GPT2Config(**{**values, **overrides})


def tokenizer():
    """A WordPiece tokenizer over `w0 ... w93` and BERT's special tokens: 99 ids, like the tiny models."""
    from transformers import BertTokenizer

    return BertTokenizer(vocab={word: i for i, word in enumerate(WORDS)})


def save_bases(root: Path, hub_id: str | None = "hf-internal-testing/tiny-random-bert") -> dict:
    """Tiny bases: BERT with a masked-LM head and a tokenizer (its config records `hub_id` as its origin),
    a bare BERT encoder (it has the pooler a classifier needs), and GPT-2 with its LM head."""
    from transformers import BertForMaskedLM, BertModel, GPT2LMHeadModel

    torch.manual_seed(0)
    BertForMaskedLM(bert_config()).save_pretrained(root / "bert")
    tokenizer().save_pretrained(root / "bert")
    if hub_id:
        config_file = root / "bert" / "config.json"
        config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "_name_or_path": hub_id}, indent=2))
    torch.manual_seed(1)
    GPT2LMHeadModel(gpt2_config()).save_pretrained(root / "gpt2")
    torch.manual_seed(2)
    BertModel(bert_config()).save_pretrained(root / "bert_encoder")
    return {"bert": str(root / "bert"), "gpt2": str(root / "gpt2"), "bert_encoder": str(root / "bert_encoder")}


def randomize(model, seed: int = 0, scale: float = 0.3, head: bool = True) -> None:
    """Non-zero adapters (B starts at zero) and, with `head`, a re-drawn task head, so that both show in the outputs."""
    from lora_hf.lora_layers import lora_layers

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in lora_layers(model):
            for param in (layer.lora_A, layer.lora_B):
                param.copy_(torch.randn(param.shape, generator=gen) * scale)
        for name in model.group_parameter_names("head") if head else ():
            param = model.get_parameter(name)
            param.copy_(torch.randn(param.shape, generator=gen) * 0.1)


def inputs(batch: int = 2, length: int = 7, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(5, VOCAB, (batch, length), generator=gen)


def classifier(base: str, seed: int = 0, **lora_kwargs):
    from lora_hf import LoraForSequenceClassification

    torch.manual_seed(seed)
    kwargs = {"r": 4, "lora_alpha": 8, "num_labels": 3, **lora_kwargs}
    model = LoraForSequenceClassification.from_base_model(base, **kwargs)
    randomize(model, seed)
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

