"""Recording vision units: image sources, the streaming recorder's bookkeeping, subjects.

Fast tests drive the recorder with a tiny deterministic subject (a few lines of numpy
over the pictures' pixels): they test the recorder's own maths and files, not a model.
Slow tests run the real subjects: the embedded efficientnet-lite0 and a random-weight
CLIP loaded through the real `hf:` path, a saved Hugging Face dataset and the CLI.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from neuroscribe.errors import ConfigError, DataError
from neuroscribe.rundir import RunDir
from neuroscribe.vision.record import (
    VisionCollector,
    VisionRecordConfig,
    default_layers,
    record_images,
    sig,
    spatial_summary,
)
from neuroscribe.vision.sources import SourceImage, open_images, spread_subset
from neuroscribe.vision.store import to_rgb

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 200, 40),
    "blue": (20, 40, 230),
}


class TinySubject:
    """Deterministic units from pixels: `grid` = 6 units on a 4x4 map (the RGB channels
    and their negatives), `vec` = 2 units without positions (mean brightness, redness)."""

    name = "tiny"

    def __init__(self, fail_on_call: int | None = None, nan_red: int | None = None) -> None:
        self.calls = 0
        self.fail_on_call = fail_on_call
        self.nan_red = nan_red

    def layers(self) -> list[str]:
        return ["grid", "vec"]

    def n_units(self, layer: str) -> int:
        return 6 if layer == "grid" else 2

    def view(self, image):
        return to_rgb(image)

    def activations(self, images, layers):
        self.calls += 1
        if self.fail_on_call is not None and self.calls == self.fail_on_call:
            raise KeyboardInterrupt  # a recording killed mid-way
        arr = np.stack(
            [np.asarray(to_rgb(im).resize((4, 4)), dtype=np.float32) / 255 for im in images]
        )
        x = torch.from_numpy(arr).permute(0, 3, 1, 2)  # [N, 3, 4, 4]
        grid = torch.cat([x, 0.5 - x], dim=1)
        if self.nan_red is not None:
            hit = (x[:, 0, 0, 0] * 255).round() == self.nan_red
            grid[hit, 4, 1, 1] = float("nan")
        vec = torch.stack(
            [x.mean(dim=(1, 2, 3)), x[:, 0].mean(dim=(1, 2)) - x[:, 2].mean(dim=(1, 2))], 1
        )
        out = {"grid": grid, "vec": vec}
        return {name: out[name] for name in layers}


def _picture(colour: tuple[int, int, int], i: int) -> Image.Image:
    """An 8x8 picture: the colour, brighter towards one corner, varying with i."""
    a = np.zeros((8, 8, 3), dtype=np.uint8)
    ramp = np.add.outer(np.arange(8), np.arange(8)) * (i % 5)
    for c in range(3):
        a[..., c] = np.clip(colour[c] - 40 + ramp + 3 * i, 0, 255)
    return Image.fromarray(a)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """ImageFolder layout: root/<class>/<file>, captions.jsonl and captions.csv."""
    root = tmp_path / "pics"
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(7):
            _picture(colour, i).save(root / name / f"{name}{i}.png")
    (root / "captions.jsonl").write_text(
        json.dumps({"image": "red/red0.png", "caption": "a red square"}) + "\n", encoding="utf-8"
    )
    (root / "captions.csv").write_text("image,caption\nblue3.png,a blue square\n", encoding="utf-8")
    return root


def _config(images: Path | str, **kw) -> VisionRecordConfig:
    base = dict(
        subject="tiny",
        images=str(images),
        layers=["grid", "vec"],
        units="all",
        n_top=5,
        n_random=4,
        pool_size=8,
        batch_size=4,
        max_images=None,
        spatial_side=2,
    )
    return VisionRecordConfig(**{**base, **kw})


def _lines(run: Path) -> dict[str, list[dict]]:
    return {
        f.name: [json.loads(x) for x in f.read_text().splitlines()]
        for f in RunDir(run).record_files()
    }


# ---------------------------------------------------------------- sources


def test_folder_source_labels_classes_and_reads_captions(folder: Path) -> None:
    src = open_images(str(folder))
    items = list(src)
    assert len(src) == 21 and [it.index for it in items] == list(range(21))
    assert items[0].key == "blue/blue0.png" and items[0].labels == ("blue",)
    by_key = {it.key: it for it in items}
    assert by_key["red/red0.png"].caption == "a red square"  # captions.jsonl, relative path
    assert by_key["blue/blue3.png"].caption == "a blue square"  # captions.csv, bare name
    assert by_key["green/green1.png"].caption is None
    assert by_key["green/green1.png"].load().size == (8, 8)


def test_list_files_resolve_paths_relative_to_the_list(folder: Path, tmp_path: Path) -> None:
    txt = tmp_path / "list.txt"
    txt.write_text("# two pictures\npics/red/red1.png\n\npics/blue/blue2.png\n", encoding="utf-8")
    items = list(open_images(str(txt)))
    assert [it.key for it in items] == ["pics/red/red1.png", "pics/blue/blue2.png"]
    assert items[1].load().size == (8, 8)
    jl = tmp_path / "list.jsonl"
    jl.write_text(
        json.dumps({"image": "pics/green/green0.png", "caption": "green", "labels": ["g", "c"]})
        + "\n"
        + json.dumps({"image": "pics/red/red2.png", "label": "r"})
        + "\n",
        encoding="utf-8",
    )
    items = list(open_images(str(jl)))
    assert (items[0].caption, items[0].labels) == ("green", ("g", "c"))
    assert items[1].labels == ("r",) and items[1].caption is None
    jl.write_text('{"caption": "no path"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"list.jsonl:1: no \"image\" path"):
        open_images(str(jl))


def test_missing_emoji_set_says_how_to_fetch_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("NEUROSCRIBE_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ConfigError) as err:
        open_images("offline")
    assert "bash scripts/fetch_images.sh" in str(err.value)
    assert "offline-photos" in str(err.value)
    with pytest.raises(ConfigError, match="neither 'offline'"):
        open_images(str(tmp_path / "nowhere"))


def test_subset_spreads_over_groups_deterministically() -> None:
    items = [
        SourceImage(i, f"k{i}", lambda: None, None, (g,))
        for i, g in enumerate(["a"] * 30 + ["b"] * 5 + ["c"] * 15)
    ]
    pick = spread_subset(items, 12, seed=0)
    groups = [it.labels[0] for it in pick]
    assert (groups.count("a"), groups.count("b"), groups.count("c")) == (4, 4, 4)
    assert [it.index for it in pick] == sorted(it.index for it in pick)  # source order kept
    assert pick == spread_subset(items, 12, seed=0)
    assert pick != spread_subset(items, 12, seed=1)
    assert len(spread_subset(items, 40, seed=0)) == 40  # small groups run out, others fill


# ---------------------------------------------------------------- the maths


def test_spatial_summary_keeps_the_peak_under_max_pooling() -> None:
    gen = torch.Generator().manual_seed(0)
    maps = torch.randn(3, 5, 7, 9, generator=gen)
    pooled, small = spatial_summary(maps, side=4, pooling="max")
    assert small.shape == (3, 5, 4, 4)
    assert torch.equal(pooled, maps.amax(dim=(2, 3)))
    assert torch.equal(small.amax(dim=(2, 3)), pooled)  # the map's peak is the pooled value
    pooled, small = spatial_summary(maps, side=4, pooling="mean")
    assert torch.allclose(pooled, maps.mean(dim=(2, 3)))
    assert small.min() >= maps.min() and small.max() <= maps.max()
    pooled, small = spatial_summary(maps[:, :, :2, :3], side=8, pooling="max")
    assert small.shape == (3, 5, 2, 3)  # smaller than the cap: kept as it is
    vec = torch.randn(3, 5)
    assert spatial_summary(vec, side=4, pooling="max") == (vec, None)


def test_streaming_moments_match_the_whole_set() -> None:
    gen = torch.Generator().manual_seed(1)
    values = torch.randn(50, 3, generator=gen) ** 3 + torch.tensor([0.0, 1.0, -2.0])
    c = VisionCollector({"l": [0, 1, 2]}, n_top=4, pool_size=5, seed=0)
    for a in range(0, 50, 7):
        c.update(list(range(a, min(a + 7, 50))), {"l": (values[a : a + 7], None)})
    s = c.statistics("l")
    x = values.double().numpy()
    assert np.allclose(s["mean"], x.mean(0))
    assert np.allclose(s["variance"], x.var(0))
    d = x - x.mean(0)
    m2, m3, m4 = (d**2).mean(0), (d**3).mean(0), (d**4).mean(0)
    assert np.allclose(s["skewness"], m3 / m2**1.5)  # population skewness
    assert np.allclose(s["kurtosis"], m4 / m2**2 - 3)  # excess kurtosis
    assert np.allclose(s["max_activation"], x.max(0))
    top_vals, top_ids = c.states["l"].top_vals, c.states["l"].top_ids
    assert torch.equal(top_vals, values.T.sort(dim=1, descending=True).values[:, :4])
    assert torch.equal(top_ids, values.T.argsort(dim=1, descending=True)[:, :4])
    assert len(c.pool_ids) == 5


def test_records_do_not_depend_on_batch_size(folder: Path, tmp_path: Path) -> None:
    a = record_images(_config(folder, batch_size=3), tmp_path / "a", loaded_subject=TinySubject())
    b = record_images(_config(folder, batch_size=8), tmp_path / "b", loaded_subject=TinySubject())
    assert a.n_images == b.n_images == 21 and a.n_units == 8
    la, lb = _lines(tmp_path / "a"), _lines(tmp_path / "b")
    assert list(la) == ["grid.jsonl", "vec.jsonl"]
    for name in la:
        for ra, rb in zip(la[name], lb[name], strict=True):
            assert ra["most_positive_activation_records"] == rb["most_positive_activation_records"]
            assert ra["random_sample"] == rb["random_sample"]
            assert ra["mean"] == pytest.approx(rb["mean"], rel=1e-5)


def test_records_hold_image_excerpts_with_maps(folder: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    summary = record_images(_config(folder), run, loaded_subject=TinySubject())
    records = {r.unit_id: r for r in RunDir(run).records()}
    assert len(records) == 8 and all(r.modality == "image" for r in records.values())
    red = records["tiny/grid/0"]  # the red channel: the red pictures come first
    top = red.most_positive_activation_records
    assert len(top) == 5 and all(e.image.labels == ["red"] for e in top)
    values = [e.activations[0] for e in top]
    assert values == sorted(values, reverse=True)
    for e in top:
        assert e.image.pooling == "max" and len(e.image.spatial) == 2
        assert max(max(row) for row in e.image.spatial) == e.activations[0]
        assert e.tokens == [e.image.description]
        assert RunDir(run).images.open(e.image, verify=True).size == (8, 8)
    assert len(red.random_sample) == 4 and red.random_sample[0].image is not None
    vec = records["tiny/vec/1"]
    assert vec.most_positive_activation_records[0].image.spatial is None  # no positions
    assert vec.most_positive_activation_records[0].image.labels == ["red"]
    captions = {
        e.image.caption for r in records.values() for e in r.most_positive_activation_records
    }
    assert "a red square" in captions
    # Rounded to 6 significant digits, as stored.
    assert all(
        v == sig(v)
        for r in records.values()
        for e in r.most_positive_activation_records
        for v in e.activations
    )
    manifest = RunDir(run).manifest()
    assert manifest.subject["modality"] == "image" and manifest.subject["model"] == "tiny"
    assert manifest.stages["record"]["n_images"] == 21 and summary.n_stored >= 5
    # The same options again: nothing to do; other options: refused.
    again = record_images(_config(folder), run, loaded_subject=TinySubject())
    assert again.skipped and again.n_units == 8
    with pytest.raises(ConfigError, match="already holds records"):
        record_images(_config(folder, n_top=3), run, loaded_subject=TinySubject())


def test_unreadable_pictures_are_skipped_and_counted(folder: Path, tmp_path: Path, caplog) -> None:
    (folder / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    data = (folder / "green" / "green0.png").read_bytes()
    (folder / "green" / "cut.png").write_bytes(data[: len(data) // 2])
    txt = tmp_path / "list.txt"
    txt.write_text("pics/red/red1.png\npics/red/gone.png\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        s = record_images(_config(folder), tmp_path / "r1", loaded_subject=TinySubject())
        t = record_images(_config(txt), tmp_path / "r2", loaded_subject=TinySubject())
    assert (s.n_images, s.n_skipped) == (21, 2)
    assert "red/broken.png" in caplog.text and "green/cut.png" in caplog.text
    skipped = RunDir(tmp_path / "r1").manifest().stages["record"]["skipped"]
    assert sorted(x["key"] for x in skipped) == ["green/cut.png", "red/broken.png"]
    assert (t.n_images, t.n_skipped) == (1, 1) and "gone.png" in caplog.text


def test_non_finite_activation_is_refused_naming_unit_and_picture(
    folder: Path, tmp_path: Path
) -> None:
    red = _picture(COLOURS["red"], 2)
    nan_red = int(np.asarray(red.resize((4, 4)))[0, 0, 0])
    with pytest.raises(DataError) as err:
        record_images(_config(folder), tmp_path / "r", loaded_subject=TinySubject(nan_red=nan_red))
    assert "tiny/grid/4" in str(err.value) and "red/red2.png" in str(err.value)
    assert not RunDir(tmp_path / "r").record_files()  # nothing half-written


def test_killed_recording_resumes_to_the_same_records(folder: Path, tmp_path: Path) -> None:
    cfg = _config(folder, checkpoint_seconds=0)
    run = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        record_images(cfg, run, loaded_subject=TinySubject(fail_on_call=4))
    assert not RunDir(run).record_files() and RunDir(run).checkpoint_path.exists()
    resumed = record_images(cfg, run, loaded_subject=TinySubject())
    assert resumed.resumed_from == 12 and resumed.n_images == 21
    assert not RunDir(run).checkpoint_path.exists()
    whole = record_images(cfg, tmp_path / "whole", loaded_subject=TinySubject())
    assert whole.resumed_from == 0
    la, lb = _lines(run), _lines(tmp_path / "whole")
    for name in la:
        for ra, rb in zip(la[name], lb[name], strict=True):
            assert ra["most_positive_activation_records"] == rb["most_positive_activation_records"]
            assert ra["random_sample"] == rb["random_sample"]
            assert ra["variance"] == pytest.approx(rb["variance"], rel=1e-5)


def test_unit_selection_and_bad_options(folder: Path, tmp_path: Path) -> None:
    s = record_images(
        _config(folder, layers=["grid"], units="1,4-5"),
        tmp_path / "u",
        loaded_subject=TinySubject(),
    )
    assert [r.index for r in RunDir(tmp_path / "u").records()] == [1, 4, 5] and s.n_units == 3
    with pytest.raises(ConfigError, match="out of range"):
        record_images(
            _config(folder, units="0-9", layers=["grid"]),
            tmp_path / "x",
            loaded_subject=TinySubject(),
        )
    with pytest.raises(ConfigError, match="no layer 'mlp3'"):
        record_images(
            _config(folder, layers=["mlp3"]), tmp_path / "y", loaded_subject=TinySubject()
        )
    with pytest.raises(ConfigError, match="pooling"):
        record_images(
            _config(folder), tmp_path / "z", loaded_subject=TinySubject(), pooling="median"
        )


def test_sae_latents_on_a_layer(folder: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from neuroscribe.datasets.sae import load_sae

    gen = torch.Generator().manual_seed(2)
    weights = {
        "W_enc": torch.randn(6, 10, generator=gen),
        "b_enc": torch.zeros(10),
        "b_dec": torch.full((6,), 0.1),
    }
    save_file(weights, tmp_path / "sae.safetensors")
    run = tmp_path / "run"
    cfg = _config(folder, layers=["grid"], sae=str(tmp_path / "sae.safetensors"), units="0-9")
    s = record_images(cfg, run, loaded_subject=TinySubject())
    records = RunDir(run).records()
    assert s.n_units == 10 and records[0].unit_id.startswith("tiny/grid:sae:")
    # A latent's value on a picture: the SAE's encoding of the layer at each cell, maxed.
    sae = load_sae(tmp_path / "sae.safetensors")
    top = records[3].most_positive_activation_records[0]
    pic = RunDir(run).images.open(top.image)
    grid = TinySubject().activations([pic], ["grid"])["grid"][0]  # [6, 4, 4]
    want = sae.encode(grid.permute(1, 2, 0))[..., 3].max().item()
    assert top.activations[0] == pytest.approx(want, rel=1e-5)
    entry = RunDir(run).manifest().stages["record"]["units"][0]
    assert entry["unit_type"] == "sae" and entry["sae_reads"] == "grid" and entry["sae_d_sae"] == 10
    with pytest.raises(ConfigError, match="reads 6 dimensions but layer vec"):
        record_images(
            _config(folder, layers=["vec"], sae=str(tmp_path / "sae.safetensors")),
            tmp_path / "r2",
            loaded_subject=TinySubject(),
        )


# ---------------------------------------------------------------- real subjects (slow)


def _tiny_clip(path: Path) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(
        vision_config=dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            image_size=32,
            patch_size=8,
        ),
        text_config=dict(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=4,
            intermediate_size=37,
            vocab_size=100,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        ),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(path)
    CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(path)
    return path


@pytest.mark.slow
def test_efficientnet_records_offline_images_and_resumes(tmp_path: Path) -> None:
    from neuroscribe.vision.sources import emoji_dir

    images = "offline" if (emoji_dir() / "emoji.json").is_file() else "offline-photos"
    cfg = VisionRecordConfig(images=images, max_images=40, n_top=10, n_random=5, pool_size=20)
    run = tmp_path / "run"
    s = record_images(cfg, run)
    assert s.n_images == min(40, len(open_images(images))) and s.n_skipped == 0
    assert s.layers == ["block15"] and s.n_units == 8
    records = RunDir(run).records()
    assert records[0].unit_id == "efficientnet-lite0/block15/11"
    for r in records:
        top = r.most_positive_activation_records
        values = [e.activations[0] for e in top]
        assert len(top) == 10 and values == sorted(values, reverse=True)
        assert len(top[0].image.spatial) == 7 and len(top[0].image.spatial[0]) == 7
        assert max(max(row) for row in top[0].image.spatial) == values[0]
        pic = RunDir(run).images.open(top[0].image, verify=True)
        assert max(pic.size) <= 512
    assert RunDir(run).manifest().subject["layer"] == "block15"
    again = record_images(cfg, run)
    assert again.skipped and again.n_images == s.n_images


@pytest.mark.slow
def test_random_clip_records_mlp_neurons_and_embeddings(tmp_path: Path) -> None:
    from neuroscribe.vision.subjects import load_vision_subject

    clip = _tiny_clip(tmp_path / "clip")
    subject = load_vision_subject(f"hf:{clip}")
    assert subject.layers() == ["mlp0", "mlp1", "embeds", "resid0", "resid1"]
    assert subject.n_units("resid1") == 32
    assert default_layers(subject) == ["mlp1"]  # the last MLP block
    assert subject.n_units("mlp0") == 37 and subject.n_units("embeds") == 16
    pics = tmp_path / "pics"
    pics.mkdir()
    for i, colour in enumerate(COLOURS.values()):
        _picture(colour, i).resize((48, 40)).save(pics / f"p{i}.png")
    acts = subject.activations([Image.open(p) for p in sorted(pics.iterdir())], ["mlp0", "embeds"])
    assert acts["mlp0"].shape == (3, 37, 4, 4) and acts["embeds"].shape == (3, 16)
    # The hook reads the MLP's hidden neurons after the activation (fc2's input), CLS dropped.
    with torch.no_grad():
        pv = subject.preprocess([Image.open(p) for p in sorted(pics.iterdir())])
        hidden = subject.model.vision_model(pixel_values=pv, output_hidden_states=True)
        layer = subject.model.vision_model.encoder.layers[0]
        h = hidden.hidden_states[0]
        x = h + layer.self_attn(layer.layer_norm1(h))[0]
        neurons = layer.mlp.activation_fn(layer.mlp.fc1(layer.layer_norm2(x)))
        want = neurons[:, 1:].transpose(1, 2).reshape(3, 37, 4, 4)
        embeds = subject.model.get_image_features(pixel_values=pv)
        embeds = getattr(embeds, "pooler_output", embeds)
    assert torch.allclose(acts["mlp0"], want, atol=1e-5)
    assert torch.allclose(acts["embeds"], embeds, atol=1e-5)
    cfg = VisionRecordConfig(
        subject=f"hf:{clip}",
        images=str(pics),
        layers=["mlp0", "embeds"],
        units="0-3",
        n_top=3,
        n_random=2,
        max_images=None,
    )
    s = record_images(cfg, tmp_path / "run")
    records = {r.unit_id: r for r in RunDir(tmp_path / "run").records()}
    assert s.n_units == 8 and f"hf:{clip}/mlp0/3" in records
    assert len(records[f"hf:{clip}/mlp0/0"].most_positive_activation_records[0].image.spatial) == 4
    assert records[f"hf:{clip}/embeds/0"].most_positive_activation_records[0].image.spatial is None


@pytest.mark.slow
def test_local_hf_dataset_source(tmp_path: Path) -> None:
    import datasets

    pics = [_picture(c, i) for i, c in enumerate(COLOURS.values())] * 2
    ds = datasets.Dataset.from_dict(
        {
            "image": pics,
            "label": [0, 1, 2, 0, 1, 2],
            "caption": ["first", "second", "third", "fourth", "fifth", "sixth"],
        },
        features=datasets.Features(
            {
                "image": datasets.Image(),
                "label": datasets.ClassLabel(names=["red", "green", "blue"]),
                "caption": datasets.Value("string"),
            }
        ),
    )
    ds.save_to_disk(str(tmp_path / "ds"))
    src = open_images(f"hf-dataset:{tmp_path / 'ds'}")
    items = list(src)
    assert len(src) == 6 and items[1].labels == ("green",) and items[1].caption == "second"
    assert items[2].load().size == (8, 8)
    sub = open_images(f"hf-dataset:{tmp_path / 'ds'}", max_images=3)
    assert sorted(it.labels for it in sub) == [("blue",), ("green",), ("red",)]
    s = record_images(
        _config(f"hf-dataset:{tmp_path / 'ds'}"), tmp_path / "run", loaded_subject=TinySubject()
    )
    assert s.n_images == 6
    top = RunDir(tmp_path / "run").records()[0].most_positive_activation_records[0]
    assert top.image.labels == ["red"] and top.image.source.endswith("#0")


@pytest.mark.slow
def test_cli_vision_record(tmp_path: Path) -> None:
    from _cli import run_cli

    pics = tmp_path / "pics"
    (pics / "cat").mkdir(parents=True)
    for i in range(5):
        _picture(COLOURS["red"], i).resize((40, 40)).save(pics / "cat" / f"{i}.png")
    (pics / "cat" / "bad.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "run"
    r = run_cli(
        "vision",
        "record",
        "--out",
        str(out),
        "--images",
        str(pics),
        "--layer",
        "block15",
        "--units",
        "0-3",
        "--n-top",
        "3",
        "--n-random",
        "2",
        "--batch-size",
        "4",
        columns=None,
    )
    assert "recorded 4 units (block15) over 5 images, 1 skipped" in r.stdout
    assert f"records: {out / 'records' / 'block15.jsonl'}" in r.stdout
    again = run_cli(
        "vision",
        "record",
        "--out",
        str(out),
        "--images",
        str(pics),
        "--layer",
        "block15",
        "--units",
        "0-3",
        "--n-top",
        "3",
        "--n-random",
        "2",
        columns=None,
    )
    assert "already recorded with these options" in again.stdout
    bad = run_cli("vision", "record", "--out", str(out), "--layer", "nope", check=False)
    assert bad.returncode == 1 and "has no layer 'nope'" in bad.stderr


@pytest.mark.slow
def test_a_clip_subject_labels_uncaptioned_pictures_zero_shot(tmp_path: Path) -> None:
    """Pictures with no caption or label get the subject's own CLIP zero-shot labels (the
    k nearest concepts of the shipped vocabulary), so the text-only route has something
    to read; `none` leaves them bare; a picture's own labels are never replaced."""
    from _vision_runs import tiny_clip_folder
    from neuroscribe.vision.clip import concept_vocabulary

    clip = tiny_clip_folder(tmp_path / "clip")
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for i in range(6):
        Image.new("RGB", (40, 40), (40 * i, 255 - 40 * i, 90)).save(pictures / f"p{i}.png")
    cfg = VisionRecordConfig(
        subject=f"hf:{clip}",
        images=str(pictures),
        layers=["embeds"],
        units="0-1",
        n_top=3,
        n_random=2,
        pool_size=6,
        max_images=None,
    )
    record_images(cfg, tmp_path / "run")
    vocabulary = set(concept_vocabulary())
    refs = [
        x.image
        for r in RunDir(tmp_path / "run").records()
        for x in (*r.most_positive_activation_records, *r.random_sample)
    ]
    assert refs and all(len(ref.labels) == 3 and set(ref.labels) <= vocabulary for ref in refs)
    assert all(ref.description == ", ".join(ref.labels) for ref in refs)

    record_images(cfg.model_copy(update={"zero_shot": "none"}), tmp_path / "bare")
    bare = RunDir(tmp_path / "bare").records()[0].most_positive_activation_records[0].image
    assert bare.labels == [] and bare.description.startswith("image ")
