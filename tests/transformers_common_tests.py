"""transformers' own common model tests, taken from the source distribution of the installed version.

`load()` returns the module `test_modeling_common` (with `ModelTesterMixin`) and the module
`test_configuration_common` (with `ConfigTester`) exactly as the `transformers==<installed version>`
sdist on PyPI ships them. The sdist is fetched once with pip (`pip download --no-binary :all:`) into
`$LORA_HF_CACHE` (default `~/.cache/lora_hf`) and the two files are unpacked next to it; nothing of
transformers' test code lives in this repository.

The sdist ships `tests/*.py` but not the subpackages those two files import from: `ExportTesterMixin`
(tests/exporters, torch.export checks), `GenerationTesterMixin` (tests/generation) and
`config_common_kwargs` (tests/utils, read only for configs without sub-configs, which `LoraConfig` is
not). Those names are provided here as empty stand-ins: the export tests and transformers' generic
generation tests are not among the tests run (generation is checked against the plain backbone in
test_generation.py), and every test that `test_modeling_common.py` itself defines runs.
"""

import importlib
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import transformers

FILES = ("test_modeling_common.py", "test_configuration_common.py")
PACKAGE = "transformers_common_tests_sdist"

# Empty stand-ins for the three names the two files import from subpackages the sdist lacks.
_STUBS = {
    "exporters/__init__.py": "",
    "exporters/test_export.py": "class ExportTesterMixin:\n    \"\"\"Stand-in: the sdist lacks tests/exporters.\"\"\"\n",
    "generation/__init__.py": "",
    "generation/test_utils.py": "class GenerationTesterMixin:\n    \"\"\"Stand-in: the sdist lacks tests/generation.\"\"\"\n",
    "utils/__init__.py": "",
    "utils/test_configuration_utils.py": "# Stand-in: read only by ConfigTester.check_config_arguments_init for configs without sub-configs.\nconfig_common_kwargs = {}\n",
}


def cache_dir() -> Path:
    return Path(os.environ.get("LORA_HF_CACHE") or Path.home() / ".cache" / "lora_hf")


def _sdist(version: str, root: Path) -> Path:
    archive = root / f"transformers-{version}.tar.gz"
    if not archive.is_file():
        root.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
             "--no-build-isolation", f"transformers=={version}", "-d", str(root)],
            capture_output=True, text=True, timeout=600,
        )
        if done.returncode != 0 or not archive.is_file():
            raise RuntimeError(
                f"Could not download the transformers=={version} source distribution from PyPI into {root} "
                f"(it holds transformers' common model tests): {done.stderr[-2000:]}"
            )
    return archive


def package_dir(version: str = transformers.__version__) -> Path:
    """`<cache>/transformers-<version>-common-tests`, holding the importable package `PACKAGE`."""
    root = cache_dir()
    target = root / f"transformers-{version}-common-tests"
    package = target / PACKAGE
    if all((package / name).is_file() for name in FILES):
        return target
    archive = _sdist(version, root)
    staging = root / f".transformers-{version}-common-tests-{os.getpid()}"
    (staging / PACKAGE).mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        for name in FILES:
            member = tar.getmember(f"transformers-{version}/tests/{name}")
            (staging / PACKAGE / name).write_bytes(tar.extractfile(member).read())
    (staging / PACKAGE / "__init__.py").write_text("")
    for name, text in _STUBS.items():
        (staging / PACKAGE / name).parent.mkdir(parents=True, exist_ok=True)
        (staging / PACKAGE / name).write_text(text)
    try:
        os.replace(staging, target)
    except OSError:  # another process unpacked it meanwhile
        shutil.rmtree(staging, ignore_errors=True)
    return target


def load():
    """`(test_modeling_common, test_configuration_common)` of the installed transformers version."""
    path = str(package_dir())
    if path not in sys.path:
        sys.path.insert(0, path)
    modeling = importlib.import_module(f"{PACKAGE}.test_modeling_common")
    configuration = importlib.import_module(f"{PACKAGE}.test_configuration_common")
    return modeling, configuration
