"""The checkpoint format's load plan, checked as a pure function (no model is built), and the head registry that
every table of head facts is derived from."""

import pytest
import torch
import transformers
from peft import TaskType
from transformers.pipelines import SUPPORTED_TASKS

import lora_hf
from lora_hf import HEAD_CLASSES, LoraConfig, head_class
from lora_hf.checkpoint_lora import LoadPlan, plan_load
from lora_hf.tasks import TASKS

F32, I64 = torch.float32, torch.int64
MLM = {"backbone.bert.layer.q.lora_A": ((4, 8), F32), "backbone.bert.layer.q.weight": ((8, 8), F32),
       "backbone.cls.predictions.bias": ((30,), F32)}
CLS = {"backbone.bert.layer.q.lora_A": ((4, 8), F32), "backbone.bert.layer.q.weight": ((8, 8), F32),
       "backbone.classifier.weight": ((2, 8), F32)}


def test_same_class_loads_every_key_into_itself():
    assert plan_load(MLM, MLM, "bert", "bert") == LoadPlan(targets={k: k for k in MLM})


def test_another_head_class_keeps_the_body_and_drops_the_saved_head():
    plan = plan_load(MLM, CLS, "bert", "bert", head_switch=True)
    assert plan.targets == {k: k for k in MLM if k.startswith("backbone.bert.")}
    assert plan.dropped == ["backbone.cls.predictions.bias"] and plan.unexpected == [] and plan.mismatched == []


def test_keys_meet_inside_the_base_model_whatever_the_prefix():
    # A plain transformers BERT head (no `backbone.`) and a bare-encoder lora_hf model (no `bert.`).
    saved = {"bert.layer.q.weight": ((8, 8), F32)}
    own = {"backbone.layer.q.weight": ((8, 8), F32)}
    assert plan_load(saved, own, "bert", "").targets == {"bert.layer.q.weight": "backbone.layer.q.weight"}


def test_a_key_without_a_place_is_unexpected_not_dropped():
    plan = plan_load({**CLS, "backbone.bert.layer.k.lora_A": ((4, 8), F32)}, CLS, "bert", "bert")
    assert plan.unexpected == ["backbone.bert.layer.k.lora_A"] and plan.dropped == []


def test_shape_and_dtype_kind_mismatches_are_named_or_reinitialised():
    saved = {"backbone.classifier.weight": ((3, 8), F32), "backbone.bert.layer.q.weight": ((8, 8), I64)}
    plan = plan_load(saved, CLS, "bert", "bert")
    assert plan.mismatched == ["backbone.classifier.weight: saved (3, 8), model (2, 8)",
                               "backbone.bert.layer.q.weight: saved dtype torch.int64, model torch.float32"]
    plan = plan_load(saved, CLS, "bert", "bert", ignore_mismatched_sizes=True)
    # Shapes may be re-initialised; a float/int mix is never bridged.
    assert plan.reinit == [("backbone.classifier.weight", "backbone.classifier.weight", (3, 8), (2, 8))]
    assert plan.mismatched == ["backbone.bert.layer.q.weight: saved dtype torch.int64, model torch.float32"]


def test_rows_added_to_the_vocabulary_are_saved_as_those_rows_only():
    own = {"backbone.bert.embeddings.word_embeddings.weight": ((32, 8), F32)}
    saved = {"backbone.bert.embeddings.word_embeddings.weight": ((2, 8), F32)}
    assert plan_load(saved, own, "bert", "bert").mismatched  # without the note, 2 rows do not fit 32
    plan = plan_load(saved, own, "bert", "bert", new_rows={"backbone.bert.embeddings.word_embeddings.weight": 2})
    assert plan.targets and not plan.mismatched


@pytest.mark.parametrize("cls", HEAD_CLASSES, ids=lambda c: c.__name__)
def test_each_head_declares_what_every_table_reads(cls):
    auto = cls.backbone_auto_class
    assert auto._model_mapping[LoraConfig] is cls  # `import lora_hf` registered it with its Auto class
    assert cls.auto_map_entries()[auto.__name__] == f"modeling_lora.{cls.__name__}"
    assert getattr(transformers, auto.__name__) is auto
    # The Hub's tag; a transformers pipeline too wherever `lora-hf train` prints a pipeline line (transformers 5
    # dropped the question-answering pipeline; the Hub still tags such models "question-answering").
    assert cls.pipeline_tag in SUPPORTED_TASKS or (not cls.training_tasks and cls.pipeline_tag == "question-answering")
    assert cls.peft_task_type is None or cls.peft_task_type in {t.value for t in TaskType}
    assert cls.description.startswith("a LoRA-adapted ")
    assert head_class(cls.__name__) is cls
    assert all(TASKS[task].model_class is cls for task in cls.training_tasks)


def test_every_training_task_has_a_head_and_unknown_names_are_refused():
    assert {name for name, task in TASKS.items() if task.model_class in HEAD_CLASSES} == {
        "classification", "regression", "token-classification", "causal-lm"}
    with pytest.raises(ValueError, match="'LoraForRanking' is not one of lora_hf's model classes"):
        head_class("LoraForRanking")
    assert set(lora_hf.__all__) >= {cls.__name__ for cls in HEAD_CLASSES}
