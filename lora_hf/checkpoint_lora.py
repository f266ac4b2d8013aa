"""The lora_hf checkpoint format: what a save holds, how files reach the disk, and how a load is planned.

This file travels with a saved model's code (like `modeling_lora.py`), so it imports only
torch, safetensors and transformers.
"""

import os
import re
import shutil
import tempfile
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_text", "atomic_write_all"]


# ----- writing files ---------------------------------------------------------------------------
def atomic_write(path, write) -> None:
    """Write `path` through `write(staged_path)`, fsync, then rename: readers see the old file or the new one, never half.

    Example:
        >>> atomic_write(Path("out/config.json"), lambda tmp: Path(tmp).write_text("{}"))
    """
    path = Path(path)
    atomic_write_all(path.parent, [(path.name, write)])


def atomic_write_text(path, text: str) -> None:
    """`atomic_write` of a UTF-8 text file."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_all(directory, files: list) -> None:
    """Write each `(name, write)` through `write(staged_path)`, then rename them all into `directory`, in order.

    Nothing is renamed before every file is written, so a failed write (disk full) leaves all the
    previous files as they were; each rename is atomic, so readers never see half a file. Files are
    staged in a private `.lora_hf-save-<pid>-*` folder (safetensors adds its own temporary file
    beside its target); the folders of saves whose process died are removed first.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob(".lora_hf-save-*"):
        if not _pid_alive(stale.name.split("-")[2]):
            shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(dir=directory, prefix=f".lora_hf-save-{os.getpid()}-"))
    try:
        for name, write in files:
            _write_staged(staging / name, write, directory)
        for i, (name, _) in enumerate(files):
            try:
                os.replace(staging / name, directory / name)
            except OSError as err:
                done = ", ".join(n for n, _ in files[:i]) or "nothing"
                raise OSError(err.errno, f"Could not rename the new {name} into {str(directory)!r} ({err.strerror or err}); replaced so far: {done}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _pid_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _write_staged(path: Path, write, directory: Path) -> None:
    try:
        write(str(path))
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(path, 0o666 & ~umask)  # temporary files are created 0600; give the file the usual permissions
    except Exception as err:
        # safetensors reports a failed write (disk full, quota) as SafetensorError "... (os error 28)".
        code = err.errno if isinstance(err, OSError) else _os_error_code(err)
        if code is None:
            raise
        raise OSError(
            code, f"Could not write {path.name} in {str(directory)!r} ({os.strerror(code)}); the files already there are unchanged"
        ) from None


def _os_error_code(err: BaseException) -> int | None:
    found = re.search(r"os error (\d+)", str(err))
    return int(found.group(1)) if found and isinstance(err, Exception) else None
