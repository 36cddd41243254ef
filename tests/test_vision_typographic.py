"""The multimodal (typographic) check: key words, rendering, and the check's numbers."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from _vision_runs import (
    InkSubject,
    make_image_run,
    picture,
    record_from_subject,
    tiny_clip_folder,
    unit_record,
)
from neuroscribe.errors import ConfigError
from neuroscribe.rundir import RunDir
from neuroscribe.vision.typographic import (
    CONTROL_WORDS,
    TypographicResult,
    key_words,
    read_typographic,
    render_word,
    run_typographic_checks,
    summarise,
    typographic_check,
    typographic_path,
    write_on,
)


def test_key_words_keep_content_words_in_order_once():
    assert key_words("Spiders, spider webs and the SPIDER's legs!") == ["spiders", "spider", "webs"]
    assert key_words("images of dogs playing in the snow", k=2) == ["dogs", "playing"]
    assert key_words("the neuron fires on pictures of red fire trucks") == ["red", "trucks"]
    assert key_words("it is on a 3D TV", k=5) == []  # short words and numbers only
    assert key_words("Café façades in Zürich") == ["café", "façades", "zürich"]
    with pytest.raises(ConfigError):
        key_words("spider", k=0)


def _dark_fraction(img: Image.Image) -> float:
    grey = np.asarray(img.convert("L"), dtype=np.float64)
    return float((grey < 128).mean())


def test_render_word_is_dark_text_centred_on_white():
    img = render_word("spider", size=224)
    assert img.size == (224, 224) and img.mode == "RGB"
    grey = np.asarray(img.convert("L"), dtype=np.float64)
    assert grey[0, 0] == 255 and np.median(grey) == 255  # a white background
    ink = grey < 128
    assert 0.01 < ink.mean() < 0.4  # text is there, and large
    rows, cols = np.nonzero(ink)
    assert abs(rows.mean() - 112) < 25 and abs(cols.mean() - 112) < 25  # centred
    assert cols.max() - cols.min() > 224 * 0.5  # large: spans most of the width
    # A long word still fits inside the picture.
    long = np.asarray(render_word("extraordinarily", 224).convert("L"))
    assert long[:, 0].min() == 255 and long[:, -1].min() == 255
    with pytest.raises(ConfigError):
        render_word("  ")


def test_write_on_puts_a_label_on_the_photo_and_keeps_it():
    photo = picture(3, 0.2, red=True, size=160)
    before = photo.copy()
    out = write_on(photo, "spider")
    assert out.size == photo.size and np.array_equal(np.asarray(photo), np.asarray(before))
    diff = np.abs(np.asarray(out, dtype=int) - np.asarray(photo, dtype=int)).sum(axis=-1) > 0
    assert 0.02 < diff.mean() < 0.5  # a label, not a new picture
    # The label is white with dark writing on it.
    assert _dark_fraction(out) > _dark_fraction(photo)


def test_check_numbers_are_the_units_responses_and_their_ratios(tmp_path):
    store = RunDir(tmp_path).images
    rec = unit_record(store, 0)
    subject = InkSubject()
    photos = [picture(i, 0.1, size=96) for i in range(2)]
    r = typographic_check(
        subject, rec, "dark spider webs", store=store, photos=photos, unrelated_words=CONTROL_WORDS
    )
    assert r.key_words == ["dark", "spider", "webs"]
    assert r.control_words == list(CONTROL_WORDS)

    def act(img: Image.Image) -> float:  # the unit: max over cells of darkness
        return float(subject.activations([img], ["ink"])["ink"][0, 0].max())

    tops = [x.activations[0] for x in rec.most_positive_activation_records]
    assert r.top_response == pytest.approx(np.mean(tops)) and r.n_top == len(tops)
    assert r.word_responses == pytest.approx({w: act(render_word(w)) for w in r.key_words})
    assert r.word == max(r.word_responses, key=r.word_responses.get)
    assert r.word_ratio == pytest.approx(r.word_responses[r.word] / r.top_response)
    ctrl = np.mean([act(render_word(w)) for w in CONTROL_WORDS])
    assert r.control_ratio == pytest.approx(ctrl / r.top_response)
    effect = np.mean([act(write_on(p, r.word)) - act(p) for p in photos])
    assert r.attack_effect == pytest.approx(effect) and r.attack_effect > 0
    assert r.attack_ratio == pytest.approx(effect / r.top_response)
    assert r.summary.startswith(
        f'responds to the word "{r.word}" rendered as text at {r.word_ratio:.2f}× '
        f"its top-image response (unrelated words {r.control_ratio:.2f}×); writing it on "
        f"unrelated photos raises the unit by +{effect:.2f} ({r.attack_ratio:.2f}×"
    )
    assert r.text_tower is None  # a subject without a text tower
    # Every probe picture is in the store, with the activation it got.
    kinds = [p.kind for p in r.probes]
    assert kinds.count("word") == 3 and kinds.count("control") == len(CONTROL_WORDS)
    assert kinds.count("photo") == 2 and kinds.count("written") == 6
    for p in r.probes:
        assert store.open(p.image).size in ((224, 224), (96, 96))
    assert TypographicResult.model_validate_json(r.model_dump_json()) == r


def test_controls_skip_the_explanations_words_and_a_dead_unit_gets_no_ratio(tmp_path):
    store = RunDir(tmp_path).images
    rec = unit_record(store, 0)
    dead = rec.model_copy(
        update={
            "most_positive_activation_records": [
                x.model_copy(update={"activations": [-0.5]})
                for x in rec.most_positive_activation_records
            ]
        }
    )
    r = typographic_check(InkSubject(), dead, "paper and river banks", store=store)
    assert r.key_words == ["paper", "river", "banks"]
    assert "paper" not in r.control_words and "river" not in r.control_words
    assert r.top_response == pytest.approx(-0.5)
    assert r.word_ratio is None and r.control_ratio is None and r.attack_effect is None
    assert "not positive" in r.reason and "no unrelated photos" in r.reason
    assert "no ratio: its top-image response is -0.50, not positive" in r.summary


def test_no_key_words_is_a_reason_not_a_crash(tmp_path):
    store = RunDir(tmp_path).images
    subject = InkSubject()
    r = typographic_check(subject, unit_record(store, 0), "it is on the", store=store)
    assert r.key_words == [] and r.probes == [] and subject.calls == 0
    assert "no content words" in r.summary and r.word_ratio is None
    assert summarise(r) == r.summary


def test_text_tower_for_embedding_dimensions_only(tmp_path):
    store = RunDir(tmp_path).images
    rec = unit_record(store, 0)
    clip = InkSubject(text=True)
    r = typographic_check(clip, rec, "spiders", store=store, layer="embeds", unit_index=0)
    tt = r.text_tower
    assert tt is not None and tt.defined and tt.word == "spiders"
    feats = clip.text_features(["spiders", *r.control_words])[:, 0]
    assert tt.word_value == pytest.approx(feats[0])
    assert tt.control_mean == pytest.approx(feats[1:].mean())
    assert tt.z == pytest.approx((feats[0] - feats[1:].mean()) / feats[1:].std(ddof=1))
    assert f"{tt.z:+.1f} SD from unrelated words" in r.summary
    mlp = typographic_check(clip, rec, "spiders", store=store)
    assert mlp.text_tower is not None and not mlp.text_tower.defined
    assert "n/a" in mlp.text_tower.note


def test_run_checks_each_units_latest_explanation_once(tmp_path):
    run = make_image_run(tmp_path / "run", n_units=2, typographic=False)
    subject = InkSubject()
    first = run_typographic_checks(run, subject)
    assert [r.unit_id for r in first] == ["ink-subject/ink/0", "ink-subject/ink/1"]
    assert all(r.n_photos == 3 for r in first)  # the units' weakest random pictures
    saved = read_typographic(run)
    assert [r.summary for r in saved] == [r.summary for r in first]
    assert all(r.explanation_id.endswith("#0") for r in saved)
    lines = typographic_path(run).read_text().splitlines()
    # A rerun skips what is done: no subject call, no new line.
    calls = subject.calls
    assert run_typographic_checks(run, subject) == []
    assert subject.calls == calls and typographic_path(run).read_text().splitlines() == lines
    # By spec: a finished run does not even load the subject ("ink-subject" is no spec).
    assert run_typographic_checks(run, "ink-subject") == []
    assert RunDir(run).manifest().stages["typographic"]["subject"] == "ink-subject"
    with pytest.raises(ConfigError, match="recorded from"):
        run_typographic_checks(run, InkSubject(name="other"))
    with pytest.raises(ConfigError, match="no record of unit"):
        run_typographic_checks(run, subject, units=["ink-subject/ink/9"])


def test_explicit_units_must_be_image_units_and_unexplained_ones_wait(tmp_path):
    from _reportruns import make_run

    text_run = make_run(tmp_path / "text", {"tiny/gpt/0/1": [0.5]})
    with pytest.raises(ConfigError, match="text unit"):
        run_typographic_checks(text_run, InkSubject(), units=["tiny/gpt/0/1"])
    assert run_typographic_checks(text_run, InkSubject()) == []  # nothing to check
    # A unit whose explanation failed is skipped, not an error (the pipeline names all).
    run = make_image_run(tmp_path / "img", n_units=1, typographic=False)
    (run / "explanations.jsonl").unlink()
    subject = InkSubject()
    assert run_typographic_checks(run, subject, units=["ink-subject/ink/0"]) == []
    assert subject.calls == 0 and not typographic_path(run).exists()


# ---------------------------------------------------------------- real subjects (slow)


def _photos() -> list[Image.Image]:
    return [picture(i, 0.2 + 0.1 * (i % 6), red=i % 3 == 0, size=96) for i in range(8)]


@pytest.mark.slow
def test_efficientnet_unit_on_rendered_words(tmp_path):
    from neuroscribe.jsonl import append_jsonl
    from neuroscribe.schema import Explanation
    from neuroscribe.vision.subjects import load_vision_subject

    subject = load_vision_subject("efficientnet-lite0")
    rd = RunDir(tmp_path / "run")
    rec = record_from_subject(subject, rd.images, _photos(), "block6")
    append_jsonl(rd.records_dir / "block6.jsonl", [rec])
    exp = Explanation(
        explanation_id="e0",
        unit_id=rec.unit_id,
        sample_index=0,
        text="round red discs",
        explainer="test",
        prompt_version="v",
        config_hash="c",
        train_excerpts=[],
    )
    append_jsonl(rd.path("explanations"), [exp])

    (r,) = run_typographic_checks(rd.root, "efficientnet-lite0", n_photos=2)
    assert r.subject == "efficientnet-lite0" and r.key_words == ["round", "red", "discs"]
    assert r.top_response == pytest.approx(
        np.mean([x.activations[0] for x in rec.most_positive_activation_records])
    )
    # The numbers are the subject's own pooled responses to the rendered words.
    acts = subject.activations([render_word("red")], ["block6"])["block6"]
    assert r.word_responses["red"] == pytest.approx(float(acts[0, rec.index].max()), rel=1e-4)
    assert r.word_ratio == pytest.approx(r.word_responses[r.word] / r.top_response)
    assert r.n_photos == 2 and len(r.attack_effects) == 3
    assert all(np.isfinite(v) for v in r.attack_effects.values())
    assert r.text_tower is None  # a classifier has no text tower
    assert r.summary.startswith(f'responds to the word "{r.word}" rendered as text at ')
    assert all(rd.images.file(p.image).is_file() for p in r.probes)
    assert read_typographic(rd.root) == [r]


@pytest.mark.slow
def test_clip_text_tower_for_an_embedding_dimension(tmp_path):
    import torch
    from transformers import AutoTokenizer, CLIPModel

    from neuroscribe.vision.subjects import load_vision_subject

    folder = tiny_clip_folder(tmp_path / "clip")
    subject = load_vision_subject(f"hf:{folder}")
    store = RunDir(tmp_path / "run").images
    rec = record_from_subject(subject, store, _photos()[:5], "embeds", n_top=3)
    r = typographic_check(subject, rec, "spider webs", store=store, photos=_photos()[5:7])
    tt = r.text_tower
    assert tt is not None and tt.defined, r
    # Independently: CLIP's projected text features of the words, dimension d.
    model = CLIPModel.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    words = ["spider", "webs", *r.control_words]
    with torch.no_grad():
        out = model.get_text_features(**tok(words, padding=True, return_tensors="pt"))
    emb = (out if isinstance(out, torch.Tensor) else out.pooler_output)[:, rec.index].numpy()
    best = int(np.argmax(emb[:2]))
    assert tt.word == words[best] and tt.word_value == pytest.approx(emb[best], abs=1e-5)
    assert tt.control_mean == pytest.approx(emb[2:].mean(), abs=1e-5)
    assert tt.z == pytest.approx((emb[best] - emb[2:].mean()) / emb[2:].std(ddof=1), rel=1e-3)
    assert "text tower" in r.summary
    # An MLP neuron of the same subject: the text tower is not defined for it.
    mlp = record_from_subject(subject, store, _photos()[:5], "mlp0", n_top=3)
    m = typographic_check(subject, mlp, "spider webs", store=store)
    assert m.text_tower is not None and not m.text_tower.defined
    assert "n/a for MLP neurons" in m.text_tower.note


def test_words_render_large_without_a_scalable_font(monkeypatch):
    from PIL import ImageFont

    def old_pillow(size=None):  # Pillow < 10.1, or no FreeType: an 11 px bitmap font
        if size is not None:
            raise TypeError("load_default() got an unexpected keyword argument 'size'")
        return ImageFont.load_default_imagefont()

    monkeypatch.setattr(ImageFont, "load_default", old_pillow)
    ink = np.asarray(render_word("spider").convert("L")) < 128
    cols = np.nonzero(ink)[1]
    assert cols.max() - cols.min() > 224 * 0.5 and ink.mean() > 0.01


def test_the_summary_says_whether_the_word_beats_the_control_words() -> None:
    from neuroscribe.vision.typographic import verdict

    assert verdict(2.0, {"table": 1.0, "seven": 1.5}) == " — above all 2 unrelated words"
    said = verdict(1.2, {"table": 1.0, "seven": 1.5, "river": 1.2})
    assert "2 of 3 respond as much" in said and "no sign the unit reads the word" in said
    assert verdict(1.0, {}) == ""
