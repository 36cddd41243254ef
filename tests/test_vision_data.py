"""Image excerpts in the data model: references, the run's image store, splits, overlays."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from pydantic import ValidationError

from neuroscribe.errors import DataError
from neuroscribe.rundir import RunDir
from neuroscribe.schema import ActivationRecord, ImageRef, NeuronRecord
from neuroscribe.splits import SplitConfig, split_record
from neuroscribe.vision.overlay import overlay


def _picture(colour: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> Image.Image:
    return Image.new("RGB", size, colour)


def _excerpt(ref: ImageRef, value: float, spatial=None) -> ActivationRecord:
    ref = ref.model_copy(update={"spatial": spatial})
    return ActivationRecord(tokens=[ref.description], activations=[value], image=ref)


def test_text_records_are_written_as_before():
    line = ActivationRecord(tokens=["a", "b"], activations=[0.0, 1.5]).model_dump_json()
    assert json.loads(line) == {"tokens": ["a", "b"], "activations": [0.0, 1.5]}


def test_store_is_content_addressed_and_round_trips(tmp_path):
    store = RunDir(tmp_path).images
    a = store.put(_picture((200, 10, 10)), source="red.png", caption="a red square")
    b = store.put(_picture((200, 10, 10)), source="again.png")
    c = store.put(_picture((10, 10, 200)), labels=["blue", "square"])
    assert a.sha256 == b.sha256 != c.sha256
    assert len(list((tmp_path / "images").glob("*.png"))) == 2
    assert store.open(a, verify=True).getpixel((0, 0)) == (200, 10, 10)
    assert store.open(a, thumbnail=True).size[0] <= 96
    assert store.data_url(c).startswith("data:image/png;base64,")
    assert (a.description, c.description) == ("a red square", "blue, square")

    excerpt = _excerpt(a, 2.5, spatial=[[0.0, 2.5], [1.0, 0.5]])
    again = ActivationRecord.model_validate_json(excerpt.model_dump_json())
    assert again == excerpt and again.image.spatial == [[0.0, 2.5], [1.0, 0.5]]


def test_transparent_pictures_are_shown_on_white(tmp_path):
    ref = RunDir(tmp_path).images.put(Image.new("RGBA", (8, 8), (0, 0, 0, 0)))
    assert RunDir(tmp_path).images.open(ref).getpixel((3, 3)) == (255, 255, 255)


def test_bad_image_references_are_refused(tmp_path):
    good = RunDir(tmp_path).images.put(_picture((1, 2, 3)))
    for bad in ("../outside.png", "/etc/passwd", "images/../../x.png"):
        with pytest.raises(ValidationError, match="not inside the run directory"):
            good.model_copy(update={"path": bad}).model_validate({**good.model_dump(), "path": bad})
    with pytest.raises(ValidationError, match="not finite"):
        _excerpt(good, 1.0).model_validate(
            {
                **_excerpt(good, 1.0).model_dump(),
                "image": {**good.model_dump(), "spatial": [[float("nan")]]},
            }
        )
    with pytest.raises(ValidationError, match="at most 32"):
        ImageRef.model_validate({**good.model_dump(), "spatial": [[0.0] * 33]})
    with pytest.raises(ValidationError, match="one position"):
        ActivationRecord(tokens=["a", "b"], activations=[1.0, 2.0], image=good)
    (tmp_path / good.path).unlink()
    with pytest.raises(DataError, match="missing"):
        RunDir(tmp_path).images.open(good)
    (tmp_path / good.path).write_bytes(b"not a png")
    with pytest.raises(DataError, match="does not match its hash"):
        RunDir(tmp_path).images.open(good, verify=True)


def test_splits_treat_the_same_picture_as_the_same_excerpt(tmp_path):
    store = RunDir(tmp_path).images
    refs = [store.put(_picture((i * 20, 0, 0)), caption="a square") for i in range(8)]
    top = [_excerpt(r, 8.0 - i) for i, r in enumerate(refs)]
    # The random sample holds a train picture (dropped) and other pictures with the same
    # caption (kept: a caption is not the picture).
    rnd = [_excerpt(refs[0], 0.1), *(_excerpt(r, 0.2) for r in refs[5:8])]
    record = NeuronRecord(
        unit_id="m/head/3", most_positive_activation_records=top, random_sample=rnd
    )
    assert record.modality == "image"
    splits = split_record(record, SplitConfig(n_train=2, n_test_top=2, n_test_random=3))
    train = {e.record.image.sha256 for e in splits.train}
    assert refs[0].sha256 in train
    held = [e.record.image.sha256 for e in splits.held_out if e.kind == "random"]
    assert refs[0].sha256 not in held and len(held) == 3


def test_overlay_marks_where_the_unit_fired():
    out = overlay(_picture((0, 0, 255), (64, 64)), [[0.0, 4.0], [0.0, 0.0]], scale_max=4.0)
    assert out.size == (64, 64)
    assert out.getpixel((2, 60)) == (0, 0, 255)  # silent cell: the picture as it was
    r, _g, b = out.getpixel((62, 1))
    assert r > 100 and b < 255  # the hot cell is tinted


def test_contrast_excerpts_are_the_weakest_leftovers_and_never_scored(tmp_path):
    store = RunDir(tmp_path).images
    refs = [store.put(_picture((i * 9, 50, 0))) for i in range(24)]
    top = [_excerpt(r, 10.0 + i) for i, r in enumerate(refs[:8])]
    rnd = [_excerpt(r, float(i % 7)) for i, r in enumerate(refs[8:])]
    record = NeuronRecord(unit_id="m/x/0", most_positive_activation_records=top, random_sample=rnd)
    plain = split_record(record, SplitConfig())
    cfg = SplitConfig(n_contrast=3)
    with_contrast = split_record(record, cfg)
    assert plain.contrast == []
    # Turning contrast on changes no other split, and only then the key space.
    assert [e.excerpt_id for e in with_contrast.held_out] == [e.excerpt_id for e in plain.held_out]
    assert "n_contrast" not in SplitConfig().hashed() and cfg.hashed()["n_contrast"] == 3
    others = {e.excerpt_id for e in [*with_contrast.held_out, *with_contrast.validation]}
    chosen = with_contrast.contrast
    assert len(chosen) == 3 and not others & {e.excerpt_id for e in chosen}
    leftovers = [r.activations[0] for i, r in enumerate(rnd) if f"random:{i}" not in others]
    assert sorted(e.record.activations[0] for e in chosen) == sorted(leftovers)[:3]
