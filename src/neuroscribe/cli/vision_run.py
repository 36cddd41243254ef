"""`neuroscribe vision run` (the whole vision job) and `neuroscribe vision check` (the
multimodal check alone). Recording options are `vision record`'s; explain and score
options are `neuroscribe run`'s (image units route to the image explainer and scorers)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from neuroscribe.cli._jobs import hooks
from neuroscribe.cli.pipeline import (
    COMMON,
    DEFAULT_RUN,
    EXPLAIN,
    JOB,
    SCORE,
    RunArg,
    _config,
    _print_results,
    _scorers,
    takes,
)
from neuroscribe.cli.vision import console, vision_app
from neuroscribe.errors import ConfigError

SubjectOpt = Annotated[
    str,
    typer.Option(
        "--subject",
        help="Vision subject: efficientnet-lite0 (embedded), hf:<hub id or folder> "
        "(CLIP, SigLIP, ViT, DINOv2, ConvNeXt), e.g. hf:openai/clip-vit-base-patch32.",
    ),
]
ImagesOpt = Annotated[
    str,
    typer.Option(
        "--images",
        help="offline (emoji + photos), offline-photos, a folder, a .txt/.jsonl list "
        "file, or hf-dataset:<name or folder>[:split].",
    ),
]
LayerOpt = Annotated[
    str | None,
    typer.Option("--layer", help="Layer(s) to record, comma-separated (see vision record)."),
]
UnitIdxOpt = Annotated[
    str | None,
    typer.Option("--unit-indices", help="Unit indices to record, e.g. '0-7' or '3,9,12'."),
]
MaxImagesOpt = Annotated[
    int,
    typer.Option("--max-images", min=0, help="Pictures to record over (0: every one)."),
]
NoCheckOpt = Annotated[
    bool, typer.Option("--no-typographic", help="Skip the multimodal (typographic) check.")
]
ReportOpt = Annotated[
    Path | None,
    typer.Option("--report", help="HTML report to write (default: RUN/report.html)."),
]


def _record_config(subject: str, images: str, layer: str | None, units: str | None, n: int):
    from neuroscribe.vision.record import VisionRecordConfig

    data: dict[str, Any] = {"subject": subject, "images": images, "max_images": n or None}
    if layer:
        data["layers"] = [x.strip() for x in layer.split(",") if x.strip()]
    if units:
        data["units"] = units
    try:
        return VisionRecordConfig.model_validate(data)
    except ValueError as e:
        raise ConfigError(f"bad vision recording options: {e}") from None


@vision_app.command("run")
# Greedy by default: one sample from a small explainer at temperature 1 wanders off
# (measured on the embedded SmolLM2: "Colloquial Hebrew: of Libya" vs "the flag of Haiti
# and the flag of Taiwan" for a flag unit).
# Two scorers by default: the embedded LLM simulating from captions (what the issue calls
# simulation; on the emoji ground truth it ranks the true explanation first 4 of 11 times,
# chance 25%), and caption-similarity (MiniLM, no LLM: 9 of 11, margin +0.09 [+0.03,
# +0.16]), so the offline report carries a score that discriminates.
# No contrast pictures by default here: shown its units' weakest pictures, the embedded
# 135M explainer described those instead ("the woman genie" for a flag unit; mean
# caption-similarity over the 8 default units +0.03 with 3 contrast pictures, +0.33
# without). `neuroscribe run` on image units shows 3 (strong explainers use them).
@takes(
    *EXPLAIN,
    *SCORE,
    *COMMON,
    *JOB,
    scorer="simulation,caption-similarity",
    temperature=0.0,
    n_contrast=0,
)
def run_cmd(
    run: RunArg = DEFAULT_RUN,
    subject: SubjectOpt = "efficientnet-lite0",
    images: ImagesOpt = "offline",
    layer: LayerOpt = None,
    unit_indices: UnitIdxOpt = None,
    max_images: MaxImagesOpt = 600,
    no_typographic: NoCheckOpt = False,
    report: ReportOpt = None,
    *,
    flags: dict[str, Any],
) -> None:
    """Record image units (if the run has none), explain them, simulate and score them per
    image, run the multimodal check, and write the HTML report."""
    from neuroscribe.vision.pipeline import run_vision

    if flags["dry_run"]:
        raise ConfigError(
            "vision run has no --dry-run; record first, then `neuroscribe run --dry-run`"
        )
    record = _record_config(subject, images, layer, unit_indices, max_images)
    scorers = _scorers(flags)
    config = _config(flags)
    result = run_vision(
        config,
        record,
        scorers=scorers,
        typographic=not no_typographic,
        report=report,
        hooks=hooks(console),
    )
    _print_results(run)
    for check in result.typographic:
        console.print(f"{check.unit_id}: {check.summary}", markup=False, highlight=False)
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
    console.print(f"report: {result.report}", markup=False, highlight=False, soft_wrap=True)
    console.print(f"time: {steps}", markup=False, highlight=False)


@vision_app.command("check")
def check_cmd(
    run: RunArg = DEFAULT_RUN,
    subject: SubjectOpt = "efficientnet-lite0",
    unit: Annotated[
        list[str] | None, typer.Option("--unit", help="Unit id(s) to check (default: all).")
    ] = None,
    photos: Annotated[
        int, typer.Option("--photos", min=0, max=20, help="Unrelated photos to write on.")
    ] = 3,
) -> None:
    """The multimodal check: each image unit's response to its explanation's key words
    rendered as text, on blank images and written onto unrelated photos."""
    from neuroscribe.vision.typographic import read_typographic, run_typographic_checks

    new = run_typographic_checks(run, subject, units=unit, n_photos=photos)
    done = {(r.unit_id, r.explanation_id) for r in new}
    for r in new:
        console.print(f"{r.unit_id}: {r.summary}", markup=False, highlight=False)
    old = [r for r in read_typographic(run) if (r.unit_id, r.explanation_id) not in done]
    if old and not new:
        console.print(
            f"{len(old)} checks already in the run (nothing new to check)",
            markup=False,
            highlight=False,
        )
