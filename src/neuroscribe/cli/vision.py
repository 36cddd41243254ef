"""`neuroscribe vision ...`: vision units (record a vision subject over images)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from neuroscribe.cli.app import app, make_console

console = make_console()
err_console = make_console(stderr=True)

vision_app = typer.Typer(
    help="Vision units: record what the units of an image model respond to, over pictures.",
    no_args_is_help=True,
)
app.add_typer(vision_app, name="vision")


@vision_app.command("record")
def record_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory to write.")] = Path("run"),
    subject: Annotated[
        str,
        typer.Option(
            "--subject",
            "-s",
            help="efficientnet-lite0 (embedded), hf:<hub id or folder> (CLIP, SigLIP, ViT, "
            "DINOv2, ConvNeXt), e.g. hf:openai/clip-vit-base-patch32.",
        ),
    ] = "efficientnet-lite0",
    images: Annotated[
        str,
        typer.Option(
            "--images",
            "-i",
            help="offline (emoji + photos), offline-photos, a folder, a .txt/.jsonl list "
            "file, or hf-dataset:<name or folder>[:split].",
        ),
    ] = "offline",
    layer: Annotated[
        str | None,
        typer.Option(
            "--layer",
            help="Layer(s), comma-separated: block0..block15, head, logits (efficientnet); "
            "mlp<i>, resid<i>, stage<i>, embeds (hf). Default: block15, or the subject's last block.",
        ),
    ] = None,
    units: Annotated[
        str | None,
        typer.Option(
            "--units",
            help="Unit indices, e.g. '0-7', '3,9,12' or 'all' (default: the embedded subject's "
            "chosen eight on block15, else 0-7).",
        ),
    ] = None,
    n_units: Annotated[
        int | None, typer.Option("--n-units", min=1, help="Record the first N units instead.")
    ] = None,
    n_top: Annotated[int, typer.Option("--n-top", min=1, help="Top images kept per unit.")] = 20,
    n_random: Annotated[
        int, typer.Option("--n-random", min=0, help="Random images kept per unit.")
    ] = 20,
    quantiles: Annotated[
        int, typer.Option("--quantiles", min=0, help="Activation quantile bins sampled per unit.")
    ] = 0,
    per_quantile: Annotated[
        int, typer.Option("--per-quantile", min=1, help="Images sampled per quantile bin.")
    ] = 4,
    pool_size: Annotated[
        int,
        typer.Option(
            "--pool-size", min=1, help="Images in the seeded pool random samples come from."
        ),
    ] = 200,
    pooling: Annotated[
        str, typer.Option("--pooling", help="max or mean over positions (patches, cells).")
    ] = "max",
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Images per forward pass.")
    ] = 32,
    max_images: Annotated[
        int,
        typer.Option(
            "--max-images",
            min=0,
            help="Record a seeded subset of N images spread over categories (0 = all).",
        ),
    ] = 600,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the subset and samples.")] = 0,
    spatial_side: Annotated[
        int,
        typer.Option("--spatial-side", min=1, max=32, help="Cells a side of stored maps (≤ 32)."),
    ] = 8,
    image_column: Annotated[
        str | None, typer.Option("--image-column", help="hf-dataset: the image column.")
    ] = None,
    caption_column: Annotated[
        str | None, typer.Option("--caption-column", help="hf-dataset: the caption column.")
    ] = None,
    label_columns: Annotated[
        str | None,
        typer.Option("--label-columns", help="hf-dataset: label columns, comma-separated."),
    ] = None,
    sae: Annotated[
        Path | None,
        typer.Option(
            "--sae",
            help="Record the latents of this SAE (SAELens/sparsify folder, Gemma Scope "
            "params.npz or a safetensors file) on the one --layer it reads, e.g. resid10.",
        ),
    ] = None,
    sae_k: Annotated[
        int | None, typer.Option("--sae-k", min=1, help="TopK for a bare SAE file.")
    ] = None,
    zero_shot: Annotated[
        str,
        typer.Option(
            "--zero-shot",
            help="Labels for pictures with no caption or label: auto (the subject's own CLIP "
            "zero-shot labels over a concept vocabulary, when it is an image-text model), "
            "none, or an image-text model to label with (hf:openai/clip-vit-base-patch32).",
        ),
    ] = "auto",
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:1 ...")] = "cpu",
    restart: Annotated[
        bool, typer.Option("--restart", help="Discard an interrupted recording's checkpoint.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace records made with other options.")
    ] = False,
) -> None:
    """Run a vision subject over images and write NeuronRecords with image excerpts."""
    from neuroscribe.errors import ConfigError
    from neuroscribe.vision.record import VisionRecordProgress, record_images

    if pooling not in ("max", "mean"):
        raise ConfigError(f"--pooling {pooling!r}: use max or mean")
    if units is not None and n_units is not None:
        raise ConfigError("give --units or --n-units, not both")
    last = [-1]

    def progress(p: VisionRecordProgress) -> None:
        if not p.total:
            return
        pct = int(100 * p.images_read / p.total)
        if pct >= last[0] + 10 or (pct == 100 and last[0] < 100):
            last[0] = pct - pct % 10 if pct < 100 else 100
            err_console.print(
                f"recorded {p.images_recorded:,} of {p.total:,} images ({pct}%)"
                + (f", {p.images_skipped} skipped" if p.images_skipped else ""),
                highlight=False,
                markup=False,
            )

    summary = record_images(
        None,
        out,
        progress,
        restart=restart,
        overwrite=overwrite,
        subject=subject,
        images=images,
        layers=[x.strip() for x in layer.split(",") if x.strip()] if layer else None,
        units=n_units if n_units is not None else units,
        n_top=n_top,
        n_random=n_random,
        n_quantiles=quantiles,
        per_quantile=per_quantile,
        pool_size=pool_size,
        pooling=pooling,
        batch_size=batch_size,
        max_images=max_images or None,
        seed=seed,
        spatial_side=spatial_side,
        image_column=image_column,
        caption_column=caption_column,
        label_columns=[c.strip() for c in label_columns.split(",")] if label_columns else None,
        sae=str(sae) if sae else None,
        sae_k=sae_k,
        zero_shot=zero_shot,
        device=device,
    )
    if summary.skipped:
        console.print(
            f"{out}: already recorded with these options (nothing to do)",
            highlight=False,
            markup=False,
        )
        return
    console.print(
        f"recorded {summary.n_units} units ({', '.join(summary.layers)}) over "
        f"{summary.n_images:,} images, {summary.n_skipped} skipped, in "
        f"{summary.seconds:.1f} s ({summary.images_per_second:.1f} images/s); "
        f"{summary.n_stored} images stored",
        highlight=False,
        markup=False,
    )
    for f in summary.files:
        console.print(f"records: {f}", highlight=False, markup=False)
