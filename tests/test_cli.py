"""`lora-hf merge | export-peft | import-peft | card | push`: help with examples, the happy paths, and bad input
that ends in one line on stderr and exit code 2, never a traceback."""

import json
import os
import subprocess
import sys

import pytest

from hub_fixtures import REPO, FakeHub, save_bases, save_run
from lora_hf.cli import SUBCOMMANDS, main

OURS = ("merge", "export-peft", "import-peft", "card", "push")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    bases = save_bases(root / "bases")
    run = save_run(root / "run", bases["bert"])
    subprocess_env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "HF_HUB_OFFLINE": "1"}
    return {"root": root, "bases": bases, "run": run, "plain": bases["bert"], "subprocess_env": subprocess_env, "n": 0}


def fresh(env, name: str):
    env["n"] += 1
    return str(env["root"] / f"{name}-{env['n']}")


def cli(argv, capsys) -> tuple:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse: --help and usage errors
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_top_level_help_lists_every_subcommand(capsys):
    code, out, _ = cli(["--help"], capsys)
    assert code == 0
    listed = [line.split()[0] for line in out.split("commands:\n", 1)[1].splitlines() if line.startswith("  ")]
    assert listed == list(SUBCOMMANDS) and set(listed) == {"train", *OURS}  # one a line, each once


@pytest.mark.parametrize("command", OURS)
def test_each_subcommand_has_help_with_examples(command, capsys):
    code, out, _ = cli([command, "--help"], capsys)
    assert code == 0
    assert out.startswith(f"usage: lora-hf {command}") and "examples:" in out and f"lora-hf {command} " in out.split("examples:")[1]


# ----- happy paths ------------------------------------------------------------------------------
def test_merge_export_import_card_and_push_from_the_command_line(env, capsys, monkeypatch, tmp_path):
    run = env["run"]
    code, out, err = cli(["merge", run, tmp_path / "merged"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["model_type"] == "bert"
    assert (tmp_path / "merged" / "tokenizer.json").is_file()

    code, _, err = cli(["export-peft", run, tmp_path / "peft"], capsys)
    assert code == 0, err
    assert {p.name for p in (tmp_path / "peft").iterdir()} >= {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"}
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "peft").iterdir()}
    assert len(set(modes.values())) == 1, modes  # the weights are not private while the config is world-readable

    code, out, err = cli(["import-peft", tmp_path / "peft", tmp_path / "back"], capsys)
    assert code == 0, err
    assert "LoraForSequenceClassification" in out
    assert json.loads((tmp_path / "back" / "config.json").read_text())["model_type"] == "lora"

    code, _, err = cli(["card", tmp_path / "back", "--finetune_dataset", "stanfordnlp/sst2", "--license", "mit"], capsys)
    assert code == 0, err
    card = (tmp_path / "back" / "README.md").read_text()
    assert "- stanfordnlp/sst2" in card and "license: mit" in card

    hub = FakeHub(monkeypatch)
    code, out, err = cli(["push", run, "me/tiny-lora", "--private"], capsys)
    assert code == 0, err
    assert hub.repos[0]["private"] is True and len(hub.commits) == 1
    assert "https://huggingface.co/me/tiny-lora/commit/" in out


# ----- bad input --------------------------------------------------------------------------------
def peft_dir(env):
    path = fresh(env, "peft")
    assert main(["export-peft", str(env["run"]), path]) == 0
    return path


def non_empty(env):
    path = env["root"] / f"full-{env['n']}"
    path.mkdir(exist_ok=True)
    (path / "keep.txt").write_text("x")
    return str(path)


BAD = [
    ("merge-missing-dir", lambda e: ["merge", e["root"] / "nope", fresh(e, "o")], ("'", "nope' does not exist", "save_pretrained")),
    ("merge-plain-model", lambda e: ["merge", e["plain"], fresh(e, "o")], ("is not a lora_hf model", "model_type 'bert', not 'lora'")),
    ("merge-into-non-empty", lambda e: ["merge", e["run"], non_empty(e)], ("is not empty; pass a new directory or --overwrite",)),
    ("merge-into-itself", lambda e: ["merge", e["run"], e["run"]], ("is the input directory",)),
    ("merge-missing-arg", lambda e: ["merge", e["run"]], ("the following arguments are required: output_dir",)),
    ("export-missing-dir", lambda e: ["export-peft", e["root"] / "nope", fresh(e, "o")], ("nope' does not exist",)),
    ("export-a-peft-dir", lambda e: ["export-peft", peft_dir(e), fresh(e, "o")], ("is not a lora_hf model but a PEFT adapter", "use `lora-hf import-peft`")),
    ("import-missing-dir", lambda e: ["import-peft", e["root"] / "nope", fresh(e, "o")], ("nope' is not a directory",)),
    ("import-a-lora-dir", lambda e: ["import-peft", e["run"], fresh(e, "o")], ("has no adapter_config.json", "not a PEFT adapter")),
    ("import-bad-head", lambda e: ["import-peft", e["run"], fresh(e, "o"), "--head", "Bert"], ("argument --head: invalid choice: 'Bert'",)),
    ("card-missing-dir", lambda e: ["card", e["root"] / "nope"], ("nope' does not exist",)),
    ("card-plain-model", lambda e: ["card", e["plain"]], ("is not a lora_hf model",)),
    ("card-bad-license", lambda e: ["card", e["run"], "--license", "Apache 2"], ("`license` 'Apache 2' is not a Hub license id",)),
    ("card-bad-repo-id", lambda e: ["card", e["run"], "--repo_id", "a/b/c"], ("'a/b/c' is not a Hub repo id",)),
    ("push-missing-dir", lambda e: ["push", e["root"] / "nope", "me/x"], ("nope' does not exist",)),
    ("push-plain-model", lambda e: ["push", e["plain"], "me/x"], ("is not a lora_hf model",)),
    ("push-bad-repo-id", lambda e: ["push", e["run"], "me/x/y"], ("'me/x/y' is not a Hub repo id", "'name' or 'namespace/name'")),
    ("push-repo-id-chars", lambda e: ["push", e["run"], "me/bad name"], ("'me/bad name' is not a Hub repo id",)),
    ("push-bad-base-id", lambda e: ["push", e["run"], "me/x", "--base_model_id", "/local/base"], ("`base_model_id` must be a Hub model id",)),
]


@pytest.mark.parametrize("make_argv, says", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_exits_2_with_a_one_line_reason(env, capsys, monkeypatch, make_argv, says):
    hub = FakeHub(monkeypatch)
    code, _, err = cli(make_argv(env), capsys)
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("lora-hf "), last
    for phrase in says:
        assert phrase in last, f"{phrase!r} not in {last!r}"
    assert "Traceback" not in err
    assert hub.commits == []


def test_the_real_command_line_prints_no_traceback(env):
    done = subprocess.run([sys.executable, "-m", "lora_hf.cli", "merge", "/no/such/dir", "/tmp/x"], capture_output=True, text=True,
                          env=env["subprocess_env"], timeout=120, cwd=str(env["root"]))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("lora-hf merge: error: '/no/such/dir' does not exist")
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("failure, says", [
    (PermissionError("401 Client Error: Unauthorized for url: https://huggingface.co/api/repos/create"), "401 Client Error: Unauthorized"),
    (RuntimeError("connection reset by peer"), "Could not upload to 'me/x' (RuntimeError: connection reset by peer)"),
], ids=["http-error", "client-error"])
def test_a_failed_upload_is_one_line(env, capsys, monkeypatch, failure, says):
    from huggingface_hub import HfApi

    FakeHub(monkeypatch)

    def refuse(api, repo_id, **kwargs):
        raise failure

    monkeypatch.setattr(HfApi, "create_repo", refuse)
    code, _, err = cli(["push", env["run"], "me/x"], capsys)
    assert code == 2 and says in err.strip().splitlines()[-1] and "Traceback" not in err
