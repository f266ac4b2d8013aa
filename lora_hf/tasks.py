"""The finetune tasks of `lora-hf train`, one record each: what differs between them lives here, not in if-chains.

A task's model class is the head class that lists it in `training_tasks` (`lora_hf.modeling_lora.HEAD_CLASSES`).

Example:
    >>> from lora_hf.tasks import TASKS
    >>> TASKS["regression"].model_class.__name__
    'LoraForSequenceClassification'
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from datasets import Dataset, DatasetDict
from transformers import DataCollatorForLanguageModeling, DataCollatorForTokenClassification, DataCollatorWithPadding, PreTrainedTokenizerBase
from transformers.utils import logging

from .data import DataArguments
from .metrics import load_metric
from .modeling_lora import HEAD_CLASSES

logger = logging.get_logger(__name__)

__all__ = ["Task", "TASKS", "tokenize_text", "encode_task"]


@dataclass(frozen=True)
class Task:
    """What `lora-hf train` does differently for one finetune task.

    `encode(ds, split, tokenizer, data_args, labels)` tokenizes one split (with a `labels` column where the split has
    labels); `collator(tokenizer)` pads batches; `metrics(num_labels)` builds `compute_metrics` (None for a
    language model: its perplexity comes from the eval loss); `label_kwargs(labels, tokenizer)` are the config
    overrides of the head; `predictions(output, labels)` writes `predict_results.txt` (None: no `--do_predict`).

    Example:
        >>> task = TASKS["token-classification"]
        >>> task.model_class.__name__, task.language_model, task.predict_needs_labels
        ('LoraForTokenClassification', False, True)
    """

    name: str
    encode: Callable
    collator: Callable
    metrics: Callable | None
    label_kwargs: Callable
    predictions: Callable | None
    named_labels: bool  # the labels are a list of names (or class ids), read from the data
    labelled: bool = True  # the data has a label column (a language model's labels are its text)
    needs_decoder: bool = False
    predict_needs_labels: bool = False  # prediction reads the test labels (which token starts each word)

    @property
    def model_class(self) -> type:
        """The lora_hf head class that trains this task."""
        return next(cls for cls in HEAD_CLASSES if self.name in cls.training_tasks)

    @property
    def language_model(self) -> bool:
        """Evaluated by its loss (perplexity), not by metrics on predicted labels."""
        return self.metrics is None


# ----- tokenisation ---------------------------------------------------------------------------
def tokenize_text(ds: Dataset, tokenizer: PreTrainedTokenizerBase, data_args: DataArguments, columns: list) -> Dataset:
    """Tokenize `columns[0]` (and `--text_pair_column` where `ds` has it), truncating to `--max_seq_length` with a warning."""
    too_long = 0

    def encode(batch):
        nonlocal too_long
        # The pretrain texts are one column: the pair column belongs to the task data only.
        pair = batch[data_args.text_pair_column] if data_args.text_pair_column in batch else None
        full = tokenizer(batch[columns[0]], pair, truncation=False)
        too_long += sum(len(ids) > data_args.max_seq_length for ids in full["input_ids"])
        return tokenizer(batch[columns[0]], pair, truncation=True, max_length=data_args.max_seq_length)

    out = ds.map(encode, batched=True, remove_columns=ds.column_names, desc="tokenize")
    if too_long:
        logger.warning(f"{too_long} of {len(ds)} texts are longer than --max_seq_length {data_args.max_seq_length} tokens and were truncated.")
    return out


def encode_task(task: Task, data: DatasetDict, tokenizer: PreTrainedTokenizerBase, data_args: DataArguments, labels: list | None) -> dict:
    """Each split of `data` tokenized for `task`, keyed by split name."""
    return {split: task.encode(ds, split, tokenizer, data_args, labels) for split, ds in data.items()}


def _encode_texts(convert: Callable | None) -> Callable:
    """An encoder of one split: the tokenized text column, plus `labels` (`convert(raw_labels, labels)`) where the split has them."""

    def encode(ds, split, tokenizer, data_args, labels):
        texts = tokenize_text(ds, tokenizer, data_args, [data_args.text_column])
        if convert is None or data_args.label_column not in ds.column_names:
            return texts
        return texts.add_column("labels", convert(ds[data_args.label_column], labels))

    return encode


def _label_ids(raw: list, labels: list) -> list:
    label_to_id = {label: i for i, label in enumerate(labels)}
    return [_label_index(v, labels, label_to_id) for v in raw]


def _label_index(value, labels: list, label_to_id: dict) -> int:
    if value in label_to_id:
        return label_to_id[value]
    if isinstance(value, int) and 0 <= value < len(labels):  # ClassLabel-encoded
        return value
    return label_to_id[str(value)]


def _encode_words(ds, split, tokenizer, data_args, labels):
    labels = list(labels or [])
    label_to_id = {label: i for i, label in enumerate(labels)}
    has_labels = data_args.label_column in ds.column_names

    def align(batch):
        enc = tokenizer(batch[data_args.text_column], is_split_into_words=True, truncation=True, max_length=data_args.max_seq_length)
        if not has_labels:
            return enc
        all_labels = []
        for i, word_labels in enumerate(batch[data_args.label_column]):
            previous, row = None, []
            for word_id in enc.word_ids(i):
                # Only the first sub-token of a word carries its label; the rest are ignored by the loss.
                row.append(-100 if word_id is None or word_id == previous else _label_index(word_labels[word_id], labels, label_to_id))
                previous = word_id
            all_labels.append(row)
        enc["labels"] = all_labels
        return enc

    return ds.map(align, batched=True, remove_columns=ds.column_names, desc=f"tokenize {split}")


# ----- labels in the config ---------------------------------------------------------------------
def _names(labels: list) -> dict:
    return {"id2label": {i: str(l) for i, l in enumerate(labels)}, "label2id": {str(l): i for i, l in enumerate(labels)}}


def _padding(tokenizer) -> dict:
    # A sequence head pools the last non-padding token of a decoder: it needs to know the padding id.
    return {"pad_token_id": tokenizer.pad_token_id} if tokenizer.pad_token_id is not None else {}


# ----- metrics ----------------------------------------------------------------------------------
def _classification_metrics(num_labels: int) -> Callable:
    accuracy, f1 = load_metric("accuracy"), load_metric("f1")

    def compute(pred):
        preds = np.argmax(pred.predictions, axis=-1)
        average = "binary" if num_labels == 2 else "macro"
        return {**accuracy.compute(predictions=preds, references=pred.label_ids), **f1.compute(predictions=preds, references=pred.label_ids, average=average)}

    return compute


def _regression_metrics(num_labels: int) -> Callable:
    pearson, spearman = load_metric("pearsonr"), load_metric("spearmanr")

    def compute(pred):
        preds = _values(pred.predictions)
        return {**pearson.compute(predictions=preds, references=pred.label_ids), **spearman.compute(predictions=preds, references=pred.label_ids),
                "mse": float(np.mean((preds - pred.label_ids) ** 2))}

    return compute


def _token_metrics(num_labels: int) -> Callable:
    accuracy, f1 = load_metric("accuracy"), load_metric("f1")

    def compute(pred):
        preds = np.argmax(pred.predictions, axis=-1)
        keep = pred.label_ids != -100
        p, r = preds[keep], pred.label_ids[keep]
        return {**accuracy.compute(predictions=p, references=r), **f1.compute(predictions=p, references=r, average="macro")}

    return compute


def _values(predictions):
    return np.squeeze(predictions, -1) if predictions.ndim > 1 else predictions


# ----- predict_results.txt ------------------------------------------------------------------------
# `index<TAB>prediction` lines as `run_glue.py` writes them (label names; regression values to 3 decimals);
# token classification: the label names of each row's words, space-separated, as `run_ner.py`.
_HEADER = ["index\tprediction\n"]


def _class_predictions(output, labels: list) -> list:
    return _HEADER + [f"{i}\t{labels[p]}\n" for i, p in enumerate(np.argmax(output.predictions, axis=-1))]


def _regression_predictions(output, labels) -> list:
    return _HEADER + [f"{i}\t{v:3.3f}\n" for i, v in enumerate(_values(output.predictions))]


def _word_predictions(output, labels: list) -> list:
    ids = np.argmax(output.predictions, axis=-1)
    rows = [" ".join(str(labels[p]) for p, l in zip(row, gold) if l != -100) for row, gold in zip(ids, output.label_ids)]
    return _HEADER + [f"{i}\t{row}\n" for i, row in enumerate(rows)]


# ----- the registry -----------------------------------------------------------------------------
def _pad(tokenizer):
    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8)


TASKS = {task.name: task for task in (
    Task("classification", encode=_encode_texts(_label_ids), collator=_pad, metrics=_classification_metrics,
         label_kwargs=lambda labels, tokenizer: {**_names(labels), "problem_type": "single_label_classification", **_padding(tokenizer)},
         predictions=_class_predictions, named_labels=True),
    Task("regression", encode=_encode_texts(lambda raw, labels: [float(v) for v in raw]), collator=_pad, metrics=_regression_metrics,
         label_kwargs=lambda labels, tokenizer: {"num_labels": 1, "problem_type": "regression", **_padding(tokenizer)},
         predictions=_regression_predictions, named_labels=False),
    Task("token-classification", encode=_encode_words, metrics=_token_metrics,
         collator=lambda tokenizer: DataCollatorForTokenClassification(tokenizer, pad_to_multiple_of=8),
         label_kwargs=lambda labels, tokenizer: _names(labels), predictions=_word_predictions, named_labels=True,
         predict_needs_labels=True),
    Task("causal-lm", encode=_encode_texts(None), metrics=None, predictions=None, named_labels=False, labelled=False,
         collator=lambda tokenizer: DataCollatorForLanguageModeling(tokenizer, mlm=False, pad_to_multiple_of=8),
         label_kwargs=lambda labels, tokenizer: {}, needs_decoder=True),
)}
