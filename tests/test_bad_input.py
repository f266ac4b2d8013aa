"""Bad input fails early with one clear line: the exception type, the offending field or value, and what is allowed.

Each row of a table is one case: what to call, the exception expected, and the phrases its message must
hold. Data cases at the CLI level live in test_training_data.py; these cover the rest of the library API.
"""

import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors.torch import load_file, save_file

import lora_hf
from lora_hf import LoraConfig, LoraForSequenceClassification
from lora_hf.data import DataArguments, DataError, check_labels, infer_task, load_pretrain_texts, load_task_data
from reliability_fixtures import REPO, copy_dir, edit_config, save_base
from tiny_backbones import randomize_adapters, tiny_config
from train_fixtures import sentences, write_csv, write_jsonl


@dataclass
class Case:
    id: str
    call: Callable  # call(env) must raise
    error: type
    says: tuple  # phrases the message must contain: the field/value and what is allowed


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Tiny bases (the one trained on, another with equal shapes, a wider one), an adapter save and a full save."""
    root = tmp_path_factory.mktemp("bad_input")
    env = {"root": root, "base": save_base(root / "base", seed=0), "other_base": save_base(root / "other_base", seed=1),
           "wide_base": save_base(root / "wide_base", seed=2, hidden_size=64)}
    model = LoraForSequenceClassification.from_base_model(env["base"], r=4, num_labels=3)
    randomize_adapters(model)
    model.save_pretrained(root / "adapter")
    model.save_pretrained(root / "full", save_base=True)
    env["adapter"], env["full"] = root / "adapter", root / "full"
    env["n"] = 0
    return env


def fresh(env, name: str) -> Path:
    """A new, unused directory under the fixture's root."""
    env["n"] += 1
    path = env["root"] / f"{name}-{env['n']}"
    path.mkdir()
    return path


def adapter_copy(env, name: str) -> Path:
    env["n"] += 1
    return copy_dir(env["adapter"], env["root"] / f"{name}-{env['n']}")


def rewrite_tensors(env, name: str, change) -> Path:
    """A copy of the adapter save whose tensors went through `change(dict)`; metadata kept."""
    path = adapter_copy(env, name)
    from safetensors import safe_open

    with safe_open(path / "model.safetensors", framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(path / "model.safetensors")
    change(tensors)
    save_file(tensors, path / "model.safetensors", metadata=metadata)
    return path


def first_lora_a(tensors: dict) -> str:
    return sorted(k for k in tensors if k.endswith("lora_A"))[0]


def cut_weights(env, name: str, keep) -> Path:
    path = adapter_copy(env, name)
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(keep(data))
    return path


def load(path, **kwargs):
    return LoraForSequenceClassification.from_pretrained(path, **kwargs)


def lora(**kwargs):
    return LoraConfig(backbone_config=tiny_config("bert"), **kwargs)


def data_files(env, split_rows: dict, suffix=".csv", **flags) -> DataArguments:
    root = fresh(env, "data")
    files = {}
    for split, rows in split_rows.items():
        path = root / f"{split}{suffix}"
        if isinstance(rows, bytes):
            path.write_bytes(rows)
        elif suffix == ".jsonl":
            write_jsonl(path, rows)
        else:
            write_csv(path, rows, header=flags.pop(f"{split}_header", ("text", "label")))
        files[f"{split}_file"] = str(path)
    return DataArguments(**{**{k: v for k, v in files.items() if k != "pretrain_file"}, **flags})


def dataset_dir(env, files: dict) -> str:
    root = fresh(env, "dataset")
    for name, rows in files.items():
        write_csv(root / name, rows)
    return str(root)


def labelled(split_labels: dict, task="classification", column="label"):
    from datasets import Dataset, DatasetDict

    return DatasetDict({s: Dataset.from_dict({"text": ["x"] * len(v), column: v}) for s, v in split_labels.items()})


def class_label_data(values):
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    features = Features({"text": Value("string"), "label": ClassLabel(names=["neg", "pos"])})
    train = Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]}, features=features)
    test = Dataset.from_dict({"text": ["c"] * len(values), "label": values}, features=Features({"text": Value("string"), "label": Value("int64")}))
    return DatasetDict({"train": train, "test": test})


ALLOWED_GROUPS = "['lora', 'embeddings', 'head', 'attention', 'norm', 'bias', 'all']"

CONFIG_CASES = [
    Case("r-zero", lambda env: lora(r=0), ValueError, ("`r`", "got 0", "positive integer")),
    Case("r-string", lambda env: lora(r="8"), ValueError, ("`r`", "'8'", "positive integer")),
    Case("r-above-layer-size", lambda env: LoraForSequenceClassification(lora(r=33)), ValueError,
         ("`r`=33", "smaller dimension (32)", "1 <= r <= 32")),
    Case("alpha-negative", lambda env: lora(lora_alpha=-1), ValueError, ("`lora_alpha`", "-1", "positive finite number")),
    Case("alpha-infinite", lambda env: lora(lora_alpha=float("inf")), ValueError, ("`lora_alpha`", "inf", "positive finite number")),
    Case("dropout-one", lambda env: lora(lora_dropout=1.0), ValueError, ("`lora_dropout`", "1.0", "[0, 1)")),
    Case("targets-match-nothing", lambda env: LoraForSequenceClassification(lora(target_modules=["qury"])), ValueError,
         ("'qury'", "matched no module", "'query'", "'value'")),
    Case("targets-bad-regex", lambda env: lora(target_modules=["re:(("]), ValueError, ("`target_modules`", "'re:(('", "not a valid regex")),
    Case("targets-empty", lambda env: lora(target_modules=[]), ValueError, ("`target_modules`", "[]", "'auto' or a non-empty list")),
    Case("unknown-phase", lambda env: lora(phase_trainable={"warmup": ["lora"]}), ValueError,
         ("unknown phase 'warmup'", "['pretrain', 'finetune']")),
    Case("unknown-group", lambda env: lora(phase_trainable={"finetune": ["lora", "heads"]}), ValueError,
         ("unknown group 'heads'", ALLOWED_GROUPS)),
    Case("phase-trains-nothing", lambda env: LoraForSequenceClassification(lora(phase_trainable={"finetune": ["re:nomatch"]})),
         ValueError, ("['re:nomatch']", "selects no parameter", ALLOWED_GROUPS)),
    Case("set-unknown-phase", lambda env: LoraForSequenceClassification(lora()).set_phase("warmup"), ValueError,
         ("Unknown phase 'warmup'", "['pretrain', 'finetune']")),
    Case("init-unknown", lambda env: lora(init_lora_weights="xavier"), ValueError, ("`init_lora_weights`", "'xavier'", "['kaiming', 'gaussian']")),
    Case("rslora-not-bool", lambda env: lora(use_rslora="yes"), ValueError, ("`use_rslora`", "'yes'", "True or False")),
    Case("backbone-unknown-type", lambda env: LoraConfig(backbone_config={"model_type": "nosuch"}), ValueError,
         ("`backbone_config.model_type`", "'nosuch'", "transformers model type")),
    Case("backbone-not-a-dict", lambda env: LoraConfig(backbone_config=[1, 2]), ValueError, ("`backbone_config`", "list", "dict with `model_type`")),
    Case("backbone-field-type", lambda env: LoraConfig.from_dict({"backbone_config": {"model_type": "bert", "hidden_size": "x"}}),
         ValueError, ("`backbone_config`", "'bert'", "hidden_size", "expected int")),
    Case("trained-groups-not-list", lambda env: LoraConfig.from_dict({"trained_groups": 5}), ValueError, ("`trained_groups`", "got 5", "list of groups")),
    Case("id2label-not-a-map", lambda env: LoraConfig.from_dict({"id2label": [1]}), ValueError, ("`id2label`", "[1]", "label ids")),
    Case("num-labels-string", lambda env: LoraConfig.from_dict({"num_labels": "x"}), ValueError, ("`num_labels`", "'x'", "positive integer")),
    Case("config-not-an-object", lambda env: LoraConfig.from_dict([1, 2]), ValueError, ("JSON object", "list [1, 2]")),
]

DATA_CASES = [
    Case("task-unknown", lambda env: DataArguments(task="bogus"), DataError, ("`--task`", "'bogus'", "'classification'", "'regression'")),
    Case("mlm-probability-one", lambda env: DataArguments(mlm_probability=1.0), DataError, ("`--mlm_probability`", "(0, 1)", "1.0")),
    Case("max-seq-length-tiny", lambda env: DataArguments(max_seq_length=4), DataError, ("`--max_seq_length`", "at least 8", "4")),
    Case("hub-and-local-data", lambda env: DataArguments(dataset_name="imdb", train_file=write_csv(fresh(env, "d") / "t.csv", [])),
         DataError, ("`--dataset_name`", "`--train_file`", "not both")),
    Case("no-train-split", lambda env: load_task_data(DataArguments(dataset_name=dataset_dir(env, {"validation.csv": sentences(4)}))),
         DataError, ("no `train` split", "['validation']")),
    Case("empty-validation-split", lambda env: load_task_data(data_files(env, {"train": sentences(4), "validation": []})),
         DataError, ("Split 'validation' is empty",)),
    Case("pair-column-missing", lambda env: load_task_data(data_files(env, {"train": sentences(4)}, text_pair_column="premise")),
         DataError, ("Column 'premise' is missing from split 'train'", "['text', 'label']")),
    Case("label-missing-in-validation",
         lambda env: load_task_data(data_files(env, {"train": sentences(4), "validation": sentences(4)}, task="classification",
                                               validation_header=("text", "gold"))),
         DataError, ("Column 'label' is missing from split 'validation'", "['text', 'gold']")),
    Case("ragged-csv", lambda env: load_task_data(data_files(env, {"train": b"text,label\na,1\nb,1,extra,cells\n"})),
         DataError, ("Could not read", "train.csv", "csv")),
    Case("broken-jsonl", lambda env: load_task_data(data_files(env, {"train": b'{"text": "a", "label": 1}\n{"text": \n'}, suffix=".jsonl")),
         DataError, ("Could not read", "train.jsonl", "json")),
    Case("non-utf8-pretrain-text", lambda env: load_pretrain_texts(DataArguments(pretrain_files=[_latin1_txt(env)]), None),
         DataError, ("Could not read", "latin1.txt")),
    Case("no-pretrain-data", lambda env: load_pretrain_texts(DataArguments(), None), DataError,
         ("No pretrain data", "`--pretrain_files`", "`--skip_pretrain`")),
    Case("pretrain-all-empty", lambda env: load_pretrain_texts(DataArguments(pretrain_files=[write_csv(fresh(env, "p") / "p.csv", [("  ", 0), ("", 1)])]), None),
         DataError, ("no non-empty text",)),
    Case("pretrain-column-missing",
         lambda env: load_pretrain_texts(DataArguments(text_column="body", pretrain_files=[write_csv(fresh(env, "p") / "p.csv", [("a", 1)], header=("content", "label"))]), None),
         DataError, ("Column 'body' is missing from the pretrain data", "['content', 'label']")),
    Case("label-empty", lambda env: check_labels(labelled({"train": ["pos", None]}), "label", "classification", ["pos"]),
         DataError, ("Split 'train' row 1", "label column 'label' is empty")),
    Case("label-outside-set-in-test", lambda env: check_labels(labelled({"train": ["neg", "pos"], "test": ["pos", "meh"]}), "label", "classification", ["neg", "pos"]),
         DataError, ("Split 'test' row 1", "label 'meh'", "['neg', 'pos']")),
    Case("class-id-out-of-range", lambda env: check_labels(class_label_data([1, 5]), "label", "classification", ["neg", "pos"]),
         DataError, ("Split 'test' row 1", "label 5", "['neg', 'pos']")),
    Case("token-tag-outside-set", lambda env: check_labels(labelled({"train": [["O", "PER"]], "validation": [["O", "LOC"]]}), "label", "token-classification", ["O", "PER"]),
         DataError, ("Split 'validation' row 0", "label 'LOC'", "['O', 'PER']")),
    Case("regression-not-a-number", lambda env: check_labels(labelled({"train": ["0.5", "abc"]}), "label", "regression", None),
         DataError, ("row 1", "regression label 'abc'", "not a number")),
    Case("task-not-inferable", lambda env: infer_task(labelled({"train": [{"a": 1}]}), DataArguments(), is_decoder=False),
         DataError, ("Cannot infer the task", "'label'", "pass `--task`")),
    Case("encoder-without-labels", lambda env: infer_task(labelled({"train": [1]}, column="y"), DataArguments(), is_decoder=False),
         DataError, ("Column 'label' is missing from split 'train'", "['text', 'y']")),
]

CHECKPOINT_CASES = [
    Case("weights-truncated", lambda env: load(cut_weights(env, "trunc", lambda b: b[: len(b) // 2])), OSError,
         ("model.safetensors", "not a readable safetensors file", "incomplete metadata")),
    Case("weights-garbage", lambda env: load(cut_weights(env, "garbage", lambda b: b"\xff" * 100)), OSError,
         ("model.safetensors", "not a readable safetensors file")),
    Case("weights-empty", lambda env: load(cut_weights(env, "empty", lambda b: b"")), OSError,
         ("model.safetensors", "not a readable safetensors file", "header too small")),
    Case("weights-header-corrupt", lambda env: load(cut_weights(env, "header", lambda b: b[:8] + b"{{{{" + b[12:])), OSError,
         ("model.safetensors", "not a readable safetensors file", "invalid JSON in header")),
    Case("model-type-not-lora", lambda env: load(env["base"]), ValueError, ("`model_type` 'bert'", "not 'lora'", "from_base_model")),
    Case("config-json-broken", lambda env: load(_write(adapter_copy(env, "json"), "config.json", "{not json")), OSError,
         ("config.json", "not a valid JSON file")),
    Case("config-json-a-list", lambda env: load(_write(adapter_copy(env, "list"), "config.json", "[1, 2]")), OSError,
         ("config.json", "holds a JSON list", "object of config fields")),
    Case("config-r-disagrees-with-tensors", lambda env: load(edit_config(adapter_copy(env, "r"), r=8)), ValueError,
         ("lora_A: saved (4, 32), model (8, 32)", "must match config.json (r, target_modules, num_labels)")),
    Case("config-num-labels-disagrees", lambda env: load(adapter_copy(env, "labels"), num_labels=5), ValueError,
         ("classifier.weight: saved (3, 32), model (5, 32)",)),
    Case("full-save-shapes-do-not-fit",
         lambda env: load(_edit_backbone(copy_dir(env["full"], env["root"] / "full-wide"), intermediate_size=40)), ValueError,
         ("intermediate.dense.weight: saved (37, 32), model (40, 32)", "base model's shapes")),
    Case("tensor-dtype-integer", lambda env: load(rewrite_tensors(env, "int", lambda t: t.update({first_lora_a(t): t[first_lora_a(t)].long()}))),
         ValueError, ("lora_A: saved dtype torch.int64, model torch.float32",)),
    Case("tensor-nan", lambda env: load(rewrite_tensors(env, "nan", lambda t: t[first_lora_a(t)].fill_(float("nan")))), ValueError,
         ("NaN/Inf", ".lora_A", "diverged")),
    Case("tensor-missing", lambda env: load(rewrite_tensors(env, "missing", lambda t: t.pop(first_lora_a(t)))), ValueError,
         ("lacks tensors", ".lora_A", "r, target_modules or trained groups differ")),
    Case("format-unknown", lambda env: load(_retag(adapter_copy(env, "fmt"), "weird")), ValueError, ("`lora_hf_format` 'weird'", "'adapter' or 'full'")),
    Case("directory-missing", lambda env: load(env["root"] / "nope"), OSError, ("nope", "does not exist", "save_pretrained")),
    Case("no-weights-file", lambda env: load(_drop(adapter_copy(env, "noweights"), "model.safetensors")), OSError,
         ("has no model.safetensors", "save_pretrained")),
    Case("adapters-without-base", lambda env: load(edit_config(adapter_copy(env, "nobase"), base_model_name_or_path=None)), ValueError,
         ("holds adapters only", "`base_model_name_or_path=`")),
    Case("other-base-same-shapes", lambda env: load(env["adapter"], base_model_name_or_path=env["other_base"]), ValueError,
         ("is not the one these adapters were trained on", "fingerprint", "`ignore_base_mismatch=True`")),
    Case("other-base-other-shapes", lambda env: load(env["adapter"], base_model_name_or_path=env["wide_base"]), ValueError,
         ("does not fit the adapters", "hidden_size 64, trained on 32", "`ignore_base_mismatch` cannot")),
    Case("other-base-other-shapes-even-when-ignored",
         lambda env: load(env["adapter"], base_model_name_or_path=env["wide_base"], ignore_base_mismatch=True), ValueError,
         ("hidden_size 64, trained on 32",)),
    Case("tensor-unexpected-in-a-lora_hf-file",
         lambda env: load(rewrite_tensors(env, "bogus", lambda t: t.update({"backbone.bogus.weight": torch.zeros(2)}))),
         ValueError, ("unexpected tensors ['backbone.bogus.weight'];",)),
    Case("base-with-pickled-weights-only", lambda env: LoraForSequenceClassification.from_base_model(_pickled_base(env), num_labels=2),
         OSError, ("pytorch_model.bin", "reads safetensors only", "no pickle is loaded")),
    Case("pickle-only-loading-refused", lambda env: load(env["adapter"], use_safetensors=False), ValueError,
         ("`use_safetensors=False`", "safetensors only")),
]


def _write(directory: Path, name: str, text: str) -> Path:
    (directory / name).write_text(text)
    return directory


def _drop(directory: Path, name: str) -> Path:
    (directory / name).unlink()
    return directory


def _edit_backbone(directory: Path, **changes) -> Path:
    config = json.loads((directory / "config.json").read_text())
    config["backbone_config"].update(changes)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def _retag(directory: Path, fmt: str) -> Path:
    tensors = load_file(directory / "model.safetensors")
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt", "lora_hf_format": fmt})
    return directory


def _strip_metadata(directory: Path) -> Path:
    """The file as another tool rewrites it: same tensors, lora_hf's metadata gone."""
    save_file(load_file(directory / "model.safetensors"), directory / "model.safetensors", metadata={"format": "pt"})
    return directory


def _pickled_base(env) -> str:
    """A base directory whose only weights are a pickle that would run `touch <marker>` if loaded (it must never be)."""
    import shutil

    from reliability_fixtures import MARKER_NAME, _RunsShell

    directory = fresh(env, "pickled-base")
    shutil.copy(Path(env["base"]) / "config.json", directory / "config.json")
    torch.save({"bert.embeddings.word_embeddings.weight": _RunsShell(f"touch {directory / MARKER_NAME}")}, directory / "pytorch_model.bin")
    env.setdefault("pickled_bases", []).append(directory)
    return str(directory)


def _latin1_txt(env) -> str:
    path = fresh(env, "latin1") / "latin1.txt"
    path.write_bytes("un caf\xe9 tr\xe8s bon\n".encode("latin-1"))
    return str(path)


ALL_CASES = CONFIG_CASES + DATA_CASES + CHECKPOINT_CASES


@pytest.mark.parametrize("case", ALL_CASES, ids=[c.id for c in ALL_CASES])
def test_bad_input_raises_a_clear_error(env, case):
    with pytest.raises(case.error) as raised:
        case.call(env)
    message = str(raised.value)
    for phrase in case.says:
        assert phrase in message, f"{case.id}: {phrase!r} not in {message!r}"
    assert "\n" not in message.strip(), f"{case.id}: the reason should fit on one line: {message!r}"


def test_the_table_covers_at_least_thirty_cases():
    assert len(ALL_CASES) >= 30 and len({c.id for c in ALL_CASES}) == len(ALL_CASES)


def test_ignore_base_mismatch_loads_the_adapters_onto_another_base(env):
    reference = load(env["adapter"])
    other = load(env["adapter"], base_model_name_or_path=env["other_base"], ignore_base_mismatch=True)
    state, saved = other.state_dict(), load_file(env["adapter"] / "model.safetensors")
    for key in saved:  # the adapters (and head) are the saved ones; the base under them is the other one
        torch.testing.assert_close(state[key], saved[key], rtol=0, atol=0)
    ids = torch.tensor([[5, 6, 7, 8]])
    assert not torch.allclose(other(input_ids=ids).logits, reference(input_ids=ids).logits)


def test_rows_longer_than_max_length_are_truncated_with_a_warning(caplog):
    from datasets import Dataset

    from lora_hf.tasks import tokenize_text
    from train_fixtures import word_tokenizer

    ds = Dataset.from_dict({"text": [" ".join(["good"] * 50), "bad film"]})
    with caplog.at_level(logging.WARNING, logger="lora_hf.tasks"):
        out = tokenize_text(ds, word_tokenizer(), DataArguments(max_seq_length=8), ["text"])
    assert [len(ids) for ids in out["input_ids"]] == [8, 2]
    assert "1 of 2 texts are longer than --max_seq_length 8 tokens and were truncated" in caplog.text


# ----- the command line ----------------------------------------------------------------------------
def _cli(argv: list, capsys) -> tuple:
    from lora_hf.cli import main

    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse errors
        code = exit_.code
    return code, capsys.readouterr().err


CLI_CASES = [
    ("r-zero", lambda env: ["train", "--model_name_or_path", env["base"], "--output_dir", str(fresh(env, "o")), "--r", "0"],
     ("`r` must be a positive integer, got 0",)),
    ("dropout-two", lambda env: ["train", "--model_name_or_path", env["base"], "--output_dir", str(fresh(env, "o")), "--lora_dropout", "2"],
     ("`lora_dropout`", "2.0", "[0, 1)")),
    ("unknown-group", lambda env: ["train", "--model_name_or_path", env["base"], "--output_dir", str(fresh(env, "o")), "--finetune_trainable", "lora", "heads"],
     ("unknown group 'heads'", "'head'")),
    ("misspelt-flag", lambda env: ["train", "--outptu_dir", "x"], ("unknown arguments ['--outptu_dir', 'x']", "did you mean --output_dir", "--help")),
    ("no-output-dir", lambda env: ["train", "--r", "4"], ("`--output_dir` is required",)),
    ("base-missing", lambda env: ["train", "--model_name_or_path", str(env["root"] / "nope"), "--output_dir", str(fresh(env, "o"))],
     ("`--model_name_or_path`", "nope", "is not a directory")),
    ("base-with-pickled-weights-only", lambda env: ["train", "--model_name_or_path", _pickled_base(env), "--output_dir", str(fresh(env, "o"))],
     ("lora-hf train: error:", "pytorch_model.bin", "reads safetensors only")),
    ("not-an-int", lambda env: ["train", "--r", "x"], ("argument --r: invalid int value: 'x'",)),
    ("warmup-ratio-one", lambda env: ["train", "--output_dir", str(fresh(env, "o")), "--warmup_ratio", "1"],
     ("`--warmup_ratio` must be in [0, 1), got 1.0",)),
    ("warmup-ratio-and-steps", lambda env: ["train", "--output_dir", str(fresh(env, "o")), "--warmup_ratio", "0.1", "--warmup_steps", "5"],
     ("`--warmup_ratio` (0.1)", "`--warmup_steps` (5", "not both")),
    ("unknown-command", lambda env: ["bogus"], ("unknown command 'bogus'", "'train'")),
]


@pytest.mark.parametrize("make_argv, says", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_misuse_exits_non_zero_with_a_one_line_reason(env, capsys, make_argv, says):
    code, err = _cli(make_argv(env), capsys)
    assert code not in (0, None)
    last = err.strip().splitlines()[-1]
    for phrase in says:
        assert phrase in last, f"{phrase!r} not in {last!r}"
    assert "Traceback" not in err


@pytest.mark.parametrize("argv, says", [
    (["train", "--bogus"], "unknown arguments ['--bogus']"),
    (["bogus"], "unknown command 'bogus'"),
], ids=["unknown-flag", "unknown-command"])
def test_the_real_command_line_prints_no_traceback(argv, says):
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, "-m", "lora_hf.cli", *argv], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert says in done.stderr.strip().splitlines()[-1]
    assert "Traceback" not in done.stderr


def test_no_pickled_base_was_ever_unpickled(env):
    """Runs after the table and the CLI cases (file order): the pickled bases they loaded never ran their code."""
    from reliability_fixtures import MARKER_NAME

    assert len(env.get("pickled_bases", [])) >= 2
    assert not [d for d in env["pickled_bases"] if (d / MARKER_NAME).exists()]


def test_a_file_another_tool_rewrote_loads_what_fits_and_names_the_tensor_it_did_not_use(env):
    """Without lora_hf's metadata the file is read as transformers reads a checkpoint: what fits loads, the rest
    is reported by name (before, every adapter was listed as unexpected and the stray tensor never named)."""
    path = _strip_metadata(rewrite_tensors(env, "bogus-stripped", lambda t: t.update({"backbone.bogus.weight": torch.zeros(2)})))
    model, info = load(path, output_loading_info=True)
    assert set(info["unexpected_keys"]) == {"backbone.bogus.weight"}
    clean = load(env["adapter"])
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, clean(input_ids=ids).logits, rtol=0, atol=0)
