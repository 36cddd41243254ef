"""Small image-unit run directories and a tiny deterministic vision subject, for tests.

`make_image_run` writes a run as the vision pipeline would: pictures drawn with Pillow
and stored in the run's ImageStore, NeuronRecords whose excerpts are image excerpts with
spatial maps, an explanation per unit, a simulation Score and one SequenceSimulation per
held-out image, and (optionally) a typographic check line. The truth is known: unit 0
fires on dark pictures ("ink"), and its simulations are a fixed function of the truth.

`InkSubject` implements the vision subject interface (`layers`, `n_units`,
`activations`) with plain arithmetic on pixels, so bookkeeping tests run in
milliseconds; real subjects are tested in the slow tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from neuroscribe.jsonl import append_jsonl, write_json_atomic
from neuroscribe.rundir import RunDir
from neuroscribe.schema import (
    ActivationRecord,
    Explanation,
    ImageRef,
    NeuronRecord,
    RunManifest,
    Score,
    ScoreInterval,
    SequenceSimulation,
)

SUBJECT = "ink-subject"
LAYER = "ink"
HOSTILE_CAPTION = "<img src=x onerror=alert(1)>"
GRID = 4  # spatial cells a side


class InkSubject:
    """A deterministic stand-in for a vision subject: darkness and redness per cell.

    Layer `ink`: unit 0 is the darkness (1 - grey level) of each of 4×4 cells, unit 1 the
    redness (red - green, /255); layer `embeds` (no positions): the same two, averaged.
    With `text=True` it also has a text tower (`text_features`), whose dimension 0 is the
    share of the letter "s" in the text — a known answer for the text-tower maths.
    """

    def __init__(self, name: str = SUBJECT, text: bool = False) -> None:
        self.name = name
        self.calls = 0
        if text:
            self.text_features = self._text_features

    def layers(self) -> list[str]:
        return [LAYER, "embeds"]

    def n_units(self, layer: str) -> int:
        return 2

    def _cells(self, image: Any) -> np.ndarray:
        rgb = np.asarray(image.convert("RGB").resize((GRID * 8, GRID * 8)), dtype=np.float64)
        cells = rgb.reshape(GRID, 8, GRID, 8, 3).mean(axis=(1, 3)) / 255.0
        ink = 1.0 - cells.mean(axis=-1)
        red = cells[..., 0] - cells[..., 1]
        return np.stack([ink, red])  # (2, GRID, GRID)

    def activations(self, images: list[Any], layers: list[str]) -> dict[str, Any]:
        # numpy arrays, not torch tensors: the check reads both through np.asarray, and
        # importing torch would cost the fast tests a second.
        self.calls += 1
        maps = np.stack([self._cells(im) for im in images]).astype(np.float32)
        out = {}
        for layer in layers:
            if layer == LAYER:
                out[layer] = maps
            elif layer == "embeds":
                out[layer] = maps.mean(axis=(2, 3))
            else:
                raise KeyError(layer)
        return out

    def _text_features(self, texts: list[str]) -> np.ndarray:
        return np.array([[t.count("s") / max(1, len(t)), len(t) / 10.0] for t in texts])


def picture(i: int, dark: float, red: bool = False, size: int = 48) -> Image.Image:
    """A distinct picture: a disc whose darkness is `dark` (0 white .. 1 black)."""
    grey = round(255 * (1 - dark))
    fill = (grey, 40, 40) if red else (grey, grey, grey)
    img = Image.new("RGB", (size, size), (250, 250, 245))
    d = ImageDraw.Draw(img)
    r = 10 + (i % 4) * 3
    cx, cy = 14 + (i * 7) % 20, 14 + (i * 11) % 20
    d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    d.rectangle((0, size - 4 - i % 3, size, size), fill=(30 * (i % 5), 90, 160))
    return img


def _excerpt(store: Any, subject: InkSubject, img: Image.Image, caption: str, labels: list[str]):
    ref = store.put(img, source=f"test:{caption}", caption=caption, labels=labels)
    acts = subject.activations([img], [LAYER])[LAYER][0, 0].astype(float)
    ref = ref.model_copy(update={"spatial": np.round(acts, 4).tolist(), "pooling": "max"})
    return ActivationRecord(tokens=[ref.description], activations=[float(acts.max())], image=ref)


def unit_record(store: Any, index: int, *, n_top: int = 6, n_random: int = 4, hostile=False):
    """Unit `index` of layer `ink` (index 0 is the real darkness unit), with its pictures."""
    s = InkSubject()
    top = [
        _excerpt(store, s, picture(i + 10 * index, 0.9 - 0.05 * i), f"dark disc {i}", ["disc"])
        for i in range(n_top)
    ]
    rnd = [
        _excerpt(store, s, picture(i + 50 + 10 * index, 0.15, red=i % 2 == 1), f"pale {i}", [])
        for i in range(n_random)
    ]
    if hostile:
        ref = top[0].image.model_copy(update={"caption": HOSTILE_CAPTION})
        top[0] = ActivationRecord(
            tokens=[HOSTILE_CAPTION], activations=top[0].activations, image=ref
        )
    top.sort(key=lambda r: -r.activations[0])
    values = [r.activations[0] for r in (*top, *rnd)]
    return NeuronRecord(
        unit_id=f"{SUBJECT}/{LAYER}/{index}",
        model=SUBJECT,
        layer=LAYER,
        index=index,
        most_positive_activation_records=top,
        random_sample=rnd,
        mean=float(np.mean(values)),
        max_activation=max(values),
    )


HELD_OUT = [("top:0", "test"), ("top:2", "test"), ("random:0", "test"), ("random:1", "test")]
HELD_OUT += [("top:4", "calibration"), ("random:2", "calibration")]


def simulated(true: float) -> float:
    """The stand-in simulator's answer on a 0..10 scale: a fixed function of the truth."""
    return round(10 * true * 0.9, 3)


def make_image_run(
    path: Path,
    *,
    n_units: int = 2,
    hostile: bool = True,
    explanation: str = "dark spider shapes",
    typographic: bool = True,
) -> Path:
    """An image run in `path`: records, explanations, simulations, scores, a check line."""
    rd = RunDir(path)
    path.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        rd.manifest_path,
        RunManifest(subject={"model": SUBJECT, "modality": "image"}),
    )
    records = [unit_record(rd.images, i, hostile=hostile and i == 0) for i in range(n_units)]
    append_jsonl(rd.records_dir / "ink.jsonl", records)
    explanations, sims, scores = [], [], []
    for rec in records:
        eid = f"{rec.unit_id}#text-route#0"
        explanations.append(
            Explanation(
                explanation_id=eid,
                unit_id=rec.unit_id,
                sample_index=0,
                text=explanation,
                explainer="caption-explainer",
                prompt_version="explain-image-v1",
                config_hash="cfg",
                train_excerpts=["top:1", "top:3"],
            )
        )
        for excerpt_id, role in HELD_OUT:
            kind, _, i = excerpt_id.partition(":")
            source = rec.most_positive_activation_records if kind == "top" else rec.random_sample
            ex = source[int(i)]
            sims.append(
                SequenceSimulation(
                    explanation_id=eid,
                    unit_id=rec.unit_id,
                    excerpt_id=excerpt_id,
                    kind=kind,  # type: ignore[arg-type]
                    role=role,  # type: ignore[arg-type]
                    tokens=ex.tokens,
                    true_activations=ex.activations,
                    expected_activations=[simulated(ex.activations[0])],
                    strategy="caption-json",
                    simulator="caption-sim",
                    prompt_version="simulate-image-v1",
                    config_hash="cfg",
                )
            )
        scores.append(
            Score(
                explanation_id=eid,
                unit_id=rec.unit_id,
                explanation=explanation,
                explainer="caption-explainer",
                scorer="simulation",
                scorer_model="caption-sim",
                config_hash="cfg",
                metrics={"score": 0.87, "top_score": 0.5, "random_score": 0.4},
                interval=ScoreInterval(metric="score", low=0.7, high=0.95),
                n_excerpts=4,
                n_tokens=4,
                details={"strategy": "caption-json", "prompt_version": "simulate-image-v1"},
            )
        )
    append_jsonl(rd.path("explanations"), explanations)
    append_jsonl(rd.path("simulations"), sims)
    append_jsonl(rd.path("scores"), scores)
    if typographic:
        from neuroscribe.vision.typographic import run_typographic_checks

        run_typographic_checks(path, InkSubject(), units=[records[0].unit_id])
    return path


def first_image(rec: NeuronRecord) -> ImageRef:
    ref = rec.most_positive_activation_records[0].image
    assert ref is not None
    return ref


def record_from_subject(
    subject: Any, store: Any, images: list[Image.Image], layer: str, n_top: int = 4
) -> NeuronRecord:
    """A record of a real subject's unit over `images`: the unit with the largest mean
    pooled (max) activation, its `n_top` strongest pictures on top, the rest random."""
    acts = np.asarray(subject.activations(images, [layer])[layer], dtype=np.float64)
    pooled = acts.reshape(acts.shape[0], acts.shape[1], -1).max(axis=2)
    unit = int(pooled.mean(axis=0).argmax())
    excerpts = []
    for i, img in enumerate(images):
        ref = store.put(img, source=f"test:{i}", caption=f"picture {i}")
        spatial = None
        if acts.ndim == 4:
            spatial = np.round(acts[i, unit], 4).tolist()
        ref = ref.model_copy(update={"spatial": spatial, "pooling": "max"})
        excerpts.append(
            ActivationRecord(tokens=[ref.description], activations=[pooled[i, unit]], image=ref)
        )
    order = sorted(range(len(images)), key=lambda i: -pooled[i, unit])
    values = pooled[:, unit]
    return NeuronRecord(
        unit_id=f"{subject.name}/{layer}/{unit}",
        model=subject.name,
        layer=layer,
        index=unit,
        most_positive_activation_records=[excerpts[i] for i in order[:n_top]],
        random_sample=[excerpts[i] for i in order[n_top:]],
        mean=float(values.mean()),
        max_activation=float(values.max()),
    )


def tiny_clip_folder(path: Path) -> Path:
    """A random-weight CLIPModel small enough for tests, saved with an image processor
    and a tokenizer built offline (a letters-only BPE vocabulary, no merges)."""
    import json

    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    path.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    letters = "abcdefghijklmnopqrstuvwxyz"
    for c in letters:
        vocab[c] = len(vocab)
    for c in letters:
        vocab[c + "</w>"] = len(vocab)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt")).save_pretrained(path)
    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 37,
            "max_position_embeddings": 32,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        vision_config={
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 37,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).eval().save_pretrained(path)
    CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(path)
    return path
