"""config.json is untrusted input: fuzz it. Every outcome is a loaded config/model or a ValueError/OSError
with a message, never another exception type and never a hang."""

import collections
import contextlib
import json
import signal
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lora_hf import LoraConfig, LoraForSequenceClassification
from reliability_fixtures import save_base
from tiny_backbones import randomize_adapters

FUZZ = settings(deadline=None, database=None, suppress_health_check=list(HealthCheck), print_blob=True)
OUTCOMES = collections.defaultdict(collections.Counter)  # test -> outcome -> count, for docs/reliability.md


@contextlib.contextmanager
def no_hang(seconds: int = 30):
    def stop(signum, frame):
        raise TimeoutError(f"no outcome after {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def outcome(name: str, load) -> None:
    """Run `load()`; only a result or a ValueError/OSError with a message may come out."""
    with no_hang():
        try:
            result = load()
        except (ValueError, OSError) as err:
            assert str(err).strip(), f"{type(err).__name__} without a message"
            OUTCOMES[name][type(err).__name__] += 1
            return
    if isinstance(result, LoraConfig):
        result.to_json_string()  # what loads can be saved again
    OUTCOMES[name]["loaded"] += 1


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    for name, counts in OUTCOMES.items():
        print(f"\n{name}: {sum(counts.values())} cases, {dict(counts)}")


# ----- what to feed ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    base = save_base(root / "base")
    model = LoraForSequenceClassification.from_base_model(base, r=4, num_labels=3)
    randomize_adapters(model)
    model.save_pretrained(root / "adapter")
    full = json.loads(LoraConfig.from_pretrained(root / "adapter").to_json_string(use_diff=False))
    return {"root": root, "adapter": root / "adapter", "diff": json.loads((root / "adapter" / "config.json").read_text()),
            "full": full}


SPECIAL = ["auto", "lora", "bert", "gpt2", "head", "all", "re:(", "re:.*", "re:query", "pretrain", "finetune", "query",
           "value", "kaiming", "gaussian", "float32", "bfloat16", "nn", "", "0", "-1", "NaN", "\x00", "é" * 3]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.sampled_from([0, 1, 2, 3, 4, 5, 8, 32, 33, -1, 10**9]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=10), st.sampled_from(SPECIAL),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(st.text(max_size=8), st.sampled_from(["model_type", "pretrain", "finetune", "0", "1"])),
                                            inner, max_size=4)),
    max_leaves=12,
)
LORA_KEYS = ["r", "lora_alpha", "lora_dropout", "target_modules", "use_rslora", "init_lora_weights", "phase_trainable",
             "trained_groups", "base_fingerprint", "base_model_name_or_path", "id2label", "label2id", "num_labels",
             "problem_type", "architectures", "auto_map", "model_type", "dtype", "torch_dtype", "transformers_version",
             "backbone_config"]
BACKBONE_KEYS = ["model_type", "hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size", "vocab_size",
                 "hidden_act", "id2label", "label2id", "layer_norm_eps", "dtype", "rope_scaling", "layer_types", "pad_token_id",
                 "tie_word_embeddings", "architectures", "attn_implementation", "is_decoder"]


@st.composite
def mutated(draw, valid: dict, keys=LORA_KEYS, backbone=True):
    """A valid config dict with 1-4 edits: a key set to a random JSON value, a key deleted, the backbone edited."""
    config = json.loads(json.dumps(valid))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["set", "delete", "backbone-set", "backbone-delete", "backbone-type"] if backbone else ["set", "delete"]))
        if kind == "set":
            config[draw(st.sampled_from(keys))] = draw(json_values)
        elif kind == "delete":
            config.pop(draw(st.sampled_from(keys)), None)
        elif isinstance(config.get("backbone_config"), dict):
            inner = config["backbone_config"]
            if kind == "backbone-set":
                inner[draw(st.sampled_from(BACKBONE_KEYS))] = draw(json_values)
            elif kind == "backbone-delete":
                inner.pop(draw(st.sampled_from(BACKBONE_KEYS)), None)
            else:
                inner["model_type"] = draw(st.sampled_from(["gpt2", "lora", "llama", "t5", "vit", "clip", "nosuch", ""]))
    return config


def file_bytes(valid: dict):
    """What a config.json may hold: mutated JSON, JSON cut short, other JSON, text, bytes."""
    text = json.dumps(valid, indent=2)
    return st.one_of(
        mutated(valid).map(lambda c: json.dumps(c).encode()),
        st.integers(0, len(text)).map(lambda n: text[:n].encode()),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.text(max_size=200).map(str.encode),
        st.binary(max_size=200),
        st.just(text.replace('"lora"', '"bert"', 1).encode()),
    )


# ----- the fuzzers ----------------------------------------------------------------------------------
def test_from_dict_on_mutated_and_random_configs(saved):
    @settings(FUZZ, max_examples=2500)
    @given(st.one_of(mutated(saved["full"]), mutated(saved["diff"]), json_values))
    def fuzz(config):
        outcome("LoraConfig.from_dict", lambda: LoraConfig.from_dict(config))

    fuzz()


def test_from_pretrained_on_random_config_json_files(saved):
    directory = Path(tempfile.mkdtemp(dir=saved["root"]))

    @settings(FUZZ, max_examples=800)
    @given(file_bytes(saved["diff"]))
    def fuzz(content):
        (directory / "config.json").write_bytes(content)
        outcome("LoraConfig.from_pretrained", lambda: LoraConfig.from_pretrained(directory))

    fuzz()


def test_model_from_pretrained_on_mutated_lora_fields(saved):
    """Whole loads: the base from disk, the adapters, the checks. The backbone's sizes are left alone: a
    config.json may ask for a model of any size, as with any transformers model."""
    directory = Path(tempfile.mkdtemp(dir=saved["root"]))
    for item in saved["adapter"].iterdir():
        (directory / item.name).write_bytes(item.read_bytes())
    keys = [k for k in LORA_KEYS if k != "backbone_config"]

    @settings(FUZZ, max_examples=150)
    @given(mutated(saved["diff"], keys=keys, backbone=False))
    def fuzz(config):
        (directory / "config.json").write_text(json.dumps(config))
        outcome("LoraForSequenceClassification.from_pretrained", lambda: LoraForSequenceClassification.from_pretrained(directory, local_files_only=True))

    fuzz()
