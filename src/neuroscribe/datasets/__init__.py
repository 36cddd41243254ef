"""Recording activation datasets: corpora, unit sources, streaming collection, interchange.

The heavy modules (torch, transformers) load on first use, so importing this package is cheap.
Public entry points:

- `record_run(out, **options)` / `RecordConfig`: record NeuronRecords into a run directory;
- `open_corpus(spec)`: a deterministic document stream (`builtin`, files, Hub datasets);
- `import_openai(src, out)` / `export_openai(run, out)`: OpenAI's per-neuron JSON files.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "record_run": "neuroscribe.datasets.record",
    "RecordConfig": "neuroscribe.datasets.record",
    "RecordSummary": "neuroscribe.datasets.record",
    "open_corpus": "neuroscribe.datasets.corpus",
    "Corpus": "neuroscribe.datasets.corpus",
    "import_openai": "neuroscribe.datasets.openai_format",
    "export_openai": "neuroscribe.datasets.openai_format",
    "load_sae": "neuroscribe.datasets.sae",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'neuroscribe.datasets' has no attribute {name!r}")
