"""Average LoRA adapters' weight updates (a "model soup" of training stages).

    .venv/bin/python bench/lora_soup.py /tmp/soup.safetensors A.safetensors B.safetensors
    .venv/bin/neuroscribe check simulator --split dev \\
        --simulator 'hf:embedded?adapter=/tmp/soup.safetensors'

Averaging fine-tuned weights from one starting point often generalises better than any
single run (Wortsman et al., 2022, "Model soups"). For LoRA the average of the updates
`scale · B_i @ A_i` is exact as one adapter of rank Σ r_i: the A's stacked, each B scaled by
1/n and placed side by side. Every input must share the scale and the simulation prompt
(their metadata), or the soup is refused. bench/README.md has what it measured.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def soup(paths: list[Path], out: Path) -> dict[str, str]:
    import torch
    from safetensors.torch import load_file, save_file

    from neuroscribe.llm import lora

    metas = [lora.metadata(p) for p in paths]
    tensors = [{k: v.float() for k, v in load_file(str(p)).items()} for p in paths]
    for field in ("scale", "prompt"):
        if len({m.get(field) for m in metas}) != 1:
            raise SystemExit(f"adapters differ in {field}: {[m.get(field) for m in metas]}")
    if len({frozenset(t) for t in tensors}) != 1:
        raise SystemExit("adapters adapt different layers")
    n = len(paths)
    merged = {}
    for key in tensors[0]:
        # A: (rank, in) stacked along rank; B: (out, rank) side by side, each 1/n.
        if key.endswith(".lora_A"):
            merged[key] = torch.cat([t[key] for t in tensors], 0)
        else:
            merged[key] = torch.cat([t[key] / n for t in tensors], 1)
        merged[key] = merged[key].to(torch.bfloat16).contiguous()
    meta = dict(metas[0])
    meta["rank"] = str(sum(int(m.get("rank", 0)) for m in metas))
    meta["soup_of"] = ",".join(p.name for p in paths)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(merged, str(out), metadata=meta)
    return meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("adapters", type=Path, nargs="+")
    args = ap.parse_args()
    print(args.out, soup(args.adapters, args.out))


if __name__ == "__main__":
    main()
