"""Datasets for the two training phases: the VADER default, `datasets` Hub names, local files.

Everything here checks its input before any training starts and says what is wrong in one line.
"""

import math
import os
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from datasets import ClassLabel, Dataset, DatasetDict, Sequence, Value, load_dataset

__all__ = ["DataArguments", "fetch_vader", "vader_task", "load_task_data", "load_pretrain_texts", "infer_task", "DataError"]

VADER_SDIST = "vadersentiment==3.3.2"
VADER_CORPORA = ("movieReviewSnippets", "tweets", "amazonReviewSnippets", "nytEditorialSnippets")
TASKS = ("auto", "classification", "regression", "token-classification", "causal-lm")
_LOADERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".txt": "text"}


class DataError(ValueError):
    """Bad data, found before training: the message names the file/split/column and what is allowed."""


@dataclass
class DataArguments:
    """Where the data of both phases comes from. With no data argument, the VADER default task runs."""

    dataset_name: str | None = field(default=None, metadata={"help": "A `datasets` dataset for the finetune phase."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Its configuration name."})
    pretrain_dataset_name: str | None = field(default=None, metadata={"help": "A `datasets` dataset of text for the pretrain phase."})
    pretrain_dataset_config_name: str | None = field(default=None, metadata={"help": "Its configuration name."})
    train_file: str | None = field(default=None, metadata={"help": "Local finetune train file (csv, tsv, json, jsonl)."})
    validation_file: str | None = field(default=None, metadata={"help": "Local validation file."})
    test_file: str | None = field(default=None, metadata={"help": "Local test file."})
    pretrain_files: list[str] | None = field(default=None, metadata={"help": "Local text files for the pretrain phase (txt: one text a line; csv/json: --text_column)."})
    text_column: str = field(default="text", metadata={"help": "Column with the text (token-classification: the word list)."})
    text_pair_column: str | None = field(default=None, metadata={"help": "Optional second text column (sentence pairs)."})
    label_column: str = field(default="label", metadata={"help": "Column with the label."})
    task: str = field(default="auto", metadata={"help": f"One of {TASKS}; auto infers it from the labels."})
    max_seq_length: int = field(default=128, metadata={"help": "Longer texts are truncated (with a warning)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many training rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use at most this many validation/test rows."})
    max_pretrain_samples: int | None = field(default=None, metadata={"help": "Use at most this many pretrain texts."})
    mlm_probability: float = field(default=0.15, metadata={"help": "Masking rate of the masked-LM pretrain phase."})
    pretrain_on_task_text: bool = field(default=False, metadata={"help": (
        "Phase 1 reads the finetune training texts (labels dropped) instead of the pretrain data; with the default "
        "data: the movie snippets alone, not the other VADER corpora.")})

    def __post_init__(self):
        if self.task not in TASKS:
            raise DataError(f"`--task` {self.task!r} is not allowed; choose from {list(TASKS)}.")
        if not 0 < self.mlm_probability < 1:
            raise DataError(f"`--mlm_probability` must be in (0, 1), got {self.mlm_probability}.")
        if self.max_seq_length < 8:
            raise DataError(f"`--max_seq_length` must be at least 8, got {self.max_seq_length}.")
        for name in ("train_file", "validation_file", "test_file"):
            _check_file(getattr(self, name), f"--{name}")
        for path in self.pretrain_files or []:
            _check_file(path, "--pretrain_files")
        if self.dataset_name and self.train_file:
            raise DataError("Pass either `--dataset_name` or `--train_file`, not both.")
        if self.pretrain_on_task_text and (self.pretrain_dataset_name or self.pretrain_files):
            given = "--pretrain_dataset_name" if self.pretrain_dataset_name else "--pretrain_files"
            raise DataError(f"`--pretrain_on_task_text` reads the task's training texts; it cannot be combined with `{given}`.")

    @property
    def uses_default_data(self) -> bool:
        return not (self.dataset_name or self.train_file or self.pretrain_dataset_name or self.pretrain_files)

    def describe(self) -> dict:
        """What each phase reads, in words (the bare Hub id where there is one): recorded for the model card."""
        if self.uses_default_data:
            pretrain = VADER_TASK_PRETRAIN_TEXT if self.pretrain_on_task_text else VADER_PRETRAIN_TEXT
            return {"pretrain": pretrain, "finetune": VADER_TASK_TEXT}
        finetune = self.dataset_name or (Path(self.train_file).name if self.train_file else None)
        pretrain = self.pretrain_dataset_name or ", ".join(Path(p).name for p in self.pretrain_files or [])
        if not pretrain and finetune:
            pretrain = f"the finetune training text ({finetune})"
        return {phase: text for phase, text in (("pretrain", pretrain), ("finetune", finetune)) if text}


def _check_file(path: str | None, flag: str) -> None:
    if path is None:
        return
    suffix = Path(path).suffix.lower()
    if suffix not in _LOADERS:
        raise DataError(f"`{flag}` {path!r} has extension {suffix!r}; allowed are {sorted(_LOADERS)}.")
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise DataError(f"`{flag}` {path!r} is not a readable file.")
    if os.path.getsize(path) == 0:
        raise DataError(f"`{flag}` {path!r} is empty (0 bytes); it needs a header line and at least one row.")


# ----- the VADER default -------------------------------------------------------------------
VADER_TASK_TEXT = "VADER movie-review snippets (Hutto & Gilbert 2014), binary sentiment, split by id"
VADER_TASK_PRETRAIN_TEXT = "VADER movie-review snippets of the training split (Hutto & Gilbert 2014), labels dropped"
VADER_PRETRAIN_TEXT = "VADER tweets, movie, Amazon and NYT snippets (Hutto & Gilbert 2014) minus the movie validation/test ids"


def cache_dir() -> Path:
    return Path(os.environ.get("LORA_HF_CACHE") or Path.home() / ".cache" / "lora_hf")


def fetch_vader(cache: Path | None = None) -> Path:
    """The directory holding the four VADER `*_GroundTruth.txt` corpora, downloading them once.

    They ship inside the source distribution of `vaderSentiment==3.3.2` on PyPI
    (`additional_resources/hutto_ICWSM_2014.tar.gz`, MIT licence, Hutto & Gilbert 2014).
    """
    target = Path(cache or cache_dir()) / "vader_hutto_ICWSM_2014"
    if all((target / f"{name}_GroundTruth.txt").is_file() for name in VADER_CORPORA):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet", VADER_SDIST, "-d", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        sdists = list(Path(tmp).glob("vaderSentiment-*.tar.gz")) + list(Path(tmp).glob("vadersentiment-*.tar.gz"))
        if done.returncode != 0 or not sdists:
            raise OSError(f"Could not download {VADER_SDIST} from PyPI (pip said: {done.stderr.strip()[-300:]}).")
        staging = Path(tmp) / "corpora"
        staging.mkdir()
        with tarfile.open(sdists[0]) as sdist:
            inner = next(m for m in sdist.getmembers() if m.name.endswith("additional_resources/hutto_ICWSM_2014.tar.gz"))
            with tarfile.open(fileobj=sdist.extractfile(inner)) as corpora:
                for member in corpora.getmembers():
                    name = Path(member.name).name
                    # Copy only the named corpus files: never extract paths an archive chooses.
                    if member.isfile() and name in {f"{c}_GroundTruth.txt" for c in VADER_CORPORA}:
                        (staging / name).write_bytes(corpora.extractfile(member).read())
        if target.exists():
            for old in target.iterdir():
                old.unlink()
            target.rmdir()
        os.replace(staging, target)
    return target


def read_vader(path: Path) -> list:
    """Rows `(id, mean_score, text)` of one `*_GroundTruth.txt` file (tab-separated, CRLF line ends)."""
    rows = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        if len(parts) != 3:
            raise DataError(f"{path.name}:{line_no} is not `id<TAB>score<TAB>text`: {line[:80]!r}")
        rows.append((int(parts[0]), float(parts[1]), parts[2].strip()))
    return rows


def vader_task(cache: Path | None = None) -> tuple:
    """The default task: `(pretrain_texts: Dataset, task: DatasetDict)`.

    Movie snippets, score == 0 dropped, label 1 if score > 0 else 0; split by id: `id % 10 == 0`
    test, `== 1` validation, the rest train. Pretrain text: all four corpora minus the movie
    validation and test ids.
    """
    root = fetch_vader(cache)
    splits = {"train": [], "validation": [], "test": []}
    pretrain = []
    for corpus in VADER_CORPORA:
        for id_, score, text in read_vader(root / f"{corpus}_GroundTruth.txt"):
            held_out = corpus == "movieReviewSnippets" and id_ % 10 in (0, 1)
            if not held_out:
                pretrain.append(text)
            if corpus == "movieReviewSnippets" and score != 0:
                split = "test" if id_ % 10 == 0 else "validation" if id_ % 10 == 1 else "train"
                splits[split].append({"text": text, "label": int(score > 0)})
    label = ClassLabel(names=["negative", "positive"])
    features = {"text": Value("string"), "label": label}
    from datasets import Features

    task = DatasetDict({k: Dataset.from_list(v, features=Features(features)) for k, v in splits.items()})
    return Dataset.from_dict({"text": pretrain}), task


# ----- user data ---------------------------------------------------------------------------
def _load_files(files: dict, flag: str) -> DatasetDict:
    paths = [p for value in files.values() for p in (value if isinstance(value, list) else [value])]  # --pretrain_files: a list
    suffixes = {_LOADERS[Path(p).suffix.lower()] for p in paths}
    if len(suffixes) != 1:
        raise DataError(f"`{flag}` files must share one format, got {sorted(suffixes)}.")
    loader = suffixes.pop()
    kwargs = {"delimiter": "\t"} if loader == "csv" and all(p.lower().endswith(".tsv") for p in paths) else {}
    data = DatasetDict()
    # One split at a time: splits whose columns differ are then reported by the column check, split by split.
    for split, path in files.items():
        if not any(_has_rows(p, loader) for p in (path if isinstance(path, list) else [path])):
            raise DataError(f"Split {split!r} is empty: {path} holds no rows.")
        try:
            data[split] = load_dataset(loader, data_files={split: path}, **kwargs)[split]
        except Exception as err:  # datasets wraps parser errors in many types
            reason = " ".join(str(err).split())[:300]
            raise DataError(f"Could not read {path} as {loader}: {type(err).__name__}: {reason}") from None
    return data


def _has_rows(path: str, loader: str) -> bool:
    """Whether `path` holds at least one data row (csv: a line after the header); reads at most two lines."""
    needed = 2 if loader == "csv" else 1
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = (line for line in f if line.strip())
        return sum(1 for _ in zip(range(needed), lines)) == needed


def load_task_data(args: DataArguments) -> DatasetDict:
    """The labeled data of the finetune phase, checked: splits non-empty, columns present."""
    if args.dataset_name:
        data = load_dataset(args.dataset_name, args.dataset_config_name)
    elif args.train_file:
        files = {"train": args.train_file}
        if args.validation_file:
            files["validation"] = args.validation_file
        if args.test_file:
            files["test"] = args.test_file
        data = _load_files(files, "--train_file/--validation_file/--test_file")
    else:
        raise DataError("No finetune data: pass `--dataset_name` or `--train_file`, or no data argument at all for the default task.")
    if "validation" not in data and "validation_matched" in data:
        data["validation"] = data["validation_matched"]
    # With --task auto the label column may be absent (causal-LM text); infer_task says so for encoders.
    label_column = args.label_column if args.task not in ("auto", "causal-lm") else None
    _check_split_columns(data, [args.text_column] + ([args.text_pair_column] if args.text_pair_column else []), label_column)
    return truncate_samples(data, args)


def _check_split_columns(data: DatasetDict, text_columns: list, label_column: str | None) -> None:
    if "train" not in data:
        raise DataError(f"The finetune data has no `train` split; it has {list(data)}.")
    for split, ds in data.items():
        if len(ds) == 0:
            raise DataError(f"Split {split!r} is empty.")
        wanted = text_columns + ([label_column] if label_column and split in ("train", "validation") else [])
        for column in wanted:
            if column not in ds.column_names:
                raise DataError(
                    f"Column {column!r} is missing from split {split!r}; the columns there are {ds.column_names}. "
                    f"Point `--text_column`/`--label_column` at the right ones."
                )


def truncate_samples(data: DatasetDict, args: DataArguments, seed: int = 42) -> DatasetDict:
    out = DatasetDict()
    for split, ds in data.items():
        limit = args.max_train_samples if split == "train" else args.max_eval_samples
        # Shuffle before cutting: files are often sorted by label.
        out[split] = ds.shuffle(seed=seed).select(range(min(limit, len(ds)))) if limit else ds
    return out


def load_pretrain_texts(args: DataArguments, task_data: DatasetDict | None) -> Dataset:
    """Unlabeled text of the pretrain phase, as a one-column (`text`) dataset."""
    if args.pretrain_on_task_text and task_data is None:
        raise DataError("`--pretrain_on_task_text` needs task data (`--train_file` or `--dataset_name`).")
    if args.pretrain_dataset_name:
        data = load_dataset(args.pretrain_dataset_name, args.pretrain_dataset_config_name)
        ds = data["train"] if "train" in data else next(iter(data.values()))
    elif args.pretrain_files:
        ds = _load_files({"train": list(args.pretrain_files)}, "--pretrain_files")["train"]
    elif task_data is not None:
        ds = task_data["train"]  # domain-adaptive default: the task's own training text, labels unused
    else:
        raise DataError("No pretrain data: pass `--pretrain_dataset_name` or `--pretrain_files`, or `--skip_pretrain`.")
    column = "text" if "text" in ds.column_names and args.text_column not in ds.column_names else args.text_column
    if column not in ds.column_names:
        raise DataError(f"Column {args.text_column!r} is missing from the pretrain data; its columns are {ds.column_names}.")
    ds = ds.select_columns([column]).rename_column(column, "text") if column != "text" else ds.select_columns(["text"])
    ds = ds.filter(lambda row: isinstance(row["text"], str) and row["text"].strip() != "")
    if len(ds) == 0:
        raise DataError("The pretrain data holds no non-empty text.")
    if args.max_pretrain_samples:
        ds = ds.select(range(min(args.max_pretrain_samples, len(ds))))
    return ds


def infer_task(data: DatasetDict, args: DataArguments, is_decoder: bool) -> str:
    """`classification`, `regression`, `token-classification` or `causal-lm`, from `--task` or the labels."""
    if args.task != "auto":
        return args.task
    # An empty cell makes the labels look untyped: say which row, not "cannot infer".
    check_no_empty_labels(data, args.label_column)
    if args.label_column not in data["train"].column_names:
        if is_decoder:
            return "causal-lm"
        raise DataError(f"Column {args.label_column!r} is missing from split 'train'; the columns there are {data['train'].column_names}.")
    feature = data["train"].features[args.label_column]
    if isinstance(feature, (Sequence, list)) or isinstance(getattr(feature, "feature", None), ClassLabel):
        return "token-classification"
    if isinstance(feature, ClassLabel):
        return "classification"
    values = data["train"][args.label_column][:1000]
    if all(isinstance(v, (int, bool, str)) for v in values):
        return "classification"
    if all(isinstance(v, float) for v in values):
        return "classification" if all(v.is_integer() for v in values) else "regression"
    if any(isinstance(v, list) for v in values):
        return "token-classification"
    raise DataError(f"Cannot infer the task from column {args.label_column!r} (values like {values[:3]}); pass `--task`.")


def label_list(data: DatasetDict, column: str) -> list:
    """The label set, from the `ClassLabel` feature or the sorted distinct training labels."""
    feature = data["train"].features[column]
    inner = getattr(feature, "feature", feature)
    if isinstance(inner, ClassLabel):
        return list(inner.names)
    values = data["train"][column]
    flat = [v for row in values for v in row] if values and isinstance(values[0], list) else values
    return sorted({str(v) if not isinstance(v, (int, bool)) else v for v in flat}, key=lambda v: (str(type(v)), v))


def check_no_empty_labels(data: DatasetDict, column: str) -> None:
    """Refuse a row whose label cell is empty (None or NaN), naming the split and row."""
    for split, ds in data.items():
        if column not in ds.column_names:
            continue
        for row_no, value in enumerate(ds[column]):
            if value is None or (isinstance(value, float) and math.isnan(value)):
                raise DataError(f"Split {split!r} row {row_no}: label column {column!r} is empty.")


def check_labels(data: DatasetDict, column: str, task: str, labels: list | None) -> None:
    """Refuse labels outside the training label set, and regression labels that are not numbers."""
    # Class ids (ints) when the training split's labels are a ClassLabel, whatever the other splits hold.
    train_feature = data["train"].features.get(column) if "train" in data else None
    class_ids = isinstance(train_feature, ClassLabel) or isinstance(getattr(train_feature, "feature", None), ClassLabel)
    check_no_empty_labels(data, column)
    for split, ds in data.items():
        if column not in ds.column_names:
            continue
        for row_no, value in enumerate(ds[column]):
            if task == "regression":
                try:
                    float(value)
                except (TypeError, ValueError):
                    raise DataError(f"Split {split!r} row {row_no}: regression label {value!r} in {column!r} is not a number.") from None
            elif task in ("classification", "token-classification"):
                items = value if isinstance(value, list) else [value]
                for item in items:
                    key = item if isinstance(item, (int, bool)) or labels is None else str(item)
                    if class_ids:
                        ok = isinstance(item, int) and 0 <= item < len(labels)
                    else:
                        ok = key in labels
                    if not ok:
                        raise DataError(
                            f"Split {split!r} row {row_no}: label {item!r} is not in the label set of the training data {labels[:20]}."
                        )
