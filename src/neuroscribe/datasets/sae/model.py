"""The maths of a sparse dictionary: encode a hooked activation, decode it back.

One class covers SAEs and transcoders of every layout read here; the loaders only
differ in how they fill it. With x [..., d_in] the hooked activation:

    x  = x - mean(x)                    if center_input (TransformerLens centred writes)
    xn = normalise(x)                   none | expected_average_only_in: x * norm_scale |
                                        constant_norm_rescale: x * sqrt(d_in) / |x| |
                                        layer_norm: (x - mu) / (std + 1e-5)
    xn = xn - b_dec                     if subtract_b_dec (SAEs; never transcoders)
    pre = xn @ W_enc + b_enc            [..., d_sae]
    z  = relu(pre)                      relu
         relu(pre) * (pre > threshold)  jumprelu
         top k of pre, then relu        topk (pre * |W_dec| first if rescale_by_decoder_norm)
         max of relu(pre) in k groups   groupmax (sparsify)
         (xn @ W_enc + b_gate > 0) * relu(xn @ (W_enc * exp(r_mag)) + b_mag)   gated

    recon = denormalise(z @ W_dec + b_dec) (+ x @ W_skip.T for skip transcoders)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch

ACTIVATIONS = ("relu", "jumprelu", "topk", "groupmax", "gated")
NORMALIZATIONS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")


@dataclass
class SAEInfo:
    """Where an SAE came from and where it belongs in a model (from its files)."""

    path: str = ""
    layout: str = "safetensors"  # saelens | sparsify | gemmascope | safetensors
    architecture: str = "standard"
    sae_id: str = ""  # neuronpedia id, or a readable id from the path
    # Where the input is read: a TransformerLens name (`blocks.8.hook_resid_pre`), a
    # sparsify hookpoint (`layers.8`) or a module path; `{layer}` when only --layers says.
    hook_name: str | None = None
    hook_name_out: str | None = None  # transcoders: the activation they reconstruct
    hook_side: str | None = None  # "input"/"output" for a module-path hook_name
    layer: int | None = None
    model_name: str | None = None
    prepend_bos: bool | None = None
    context_size: int | None = None
    neuronpedia_id: str | None = None
    notes: list[str] = field(default_factory=list)  # caveats to surface to the user


@dataclass
class SAE:
    """Encoder (and, when present, decoder) weights plus how inputs are prepared."""

    W_enc: torch.Tensor  # [d_in, d_sae]
    b_enc: torch.Tensor  # [d_sae]; the gate bias b_gate for gated SAEs
    b_dec: torch.Tensor  # [d_out] (= d_in for SAEs)
    threshold: torch.Tensor | None = None  # [d_sae], JumpReLU
    k: int | None = None  # TopK / GroupMax
    name: str = "sae"  # short, goes into record labels and file names
    activation_fn: str = ""  # one of ACTIVATIONS; "" = inferred from threshold / k
    W_dec: torch.Tensor | None = None  # [d_sae, d_out]
    b_mag: torch.Tensor | None = None  # [d_sae], gated
    r_mag: torch.Tensor | None = None  # [d_sae], gated
    W_skip: torch.Tensor | None = None  # [d_out, d_in], skip transcoders
    decoder_scale: torch.Tensor | None = None  # [d_sae], old SAELens finetuning factor
    subtract_b_dec: bool = True
    normalize: str = "none"
    norm_scale: float | None = None  # expected_average_only_in
    center_input: bool = False
    rescale_by_decoder_norm: bool = False
    transcoder: bool = False
    info: SAEInfo = field(default_factory=SAEInfo)

    def __post_init__(self) -> None:
        if not self.activation_fn:
            if self.threshold is not None:
                self.activation_fn = "jumprelu"
            else:
                self.activation_fn = "topk" if self.k else "relu"

    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_sae(self) -> int:
        return self.W_enc.shape[1]

    @property
    def d_out(self) -> int:
        return self.b_dec.shape[0]

    @property
    def activation(self) -> str:
        """A short description for the manifest: relu, jumprelu, topk(32), gated ..."""
        if self.activation_fn in ("topk", "groupmax"):
            return f"{self.activation_fn}({self.k})"
        return self.activation_fn

    @property
    def can_decode(self) -> bool:
        return self.W_dec is not None

    def to(self, device: torch.device | str, dtype: torch.dtype) -> SAE:
        moved: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                moved[f.name] = v.to(device=device, dtype=dtype)
        return replace(self, **moved)

    # ------------------------------------------------------------------ maths
    def _prepare(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """(x after centring, the encoder's input, what undoes the normalisation)."""
        x = x.to(self.W_enc.dtype)
        if self.center_input:
            x = x - x.mean(dim=-1, keepdim=True)
        xn, undo = x, None
        if self.normalize == "expected_average_only_in" and self.norm_scale is not None:
            xn, undo = x * self.norm_scale, 1.0 / self.norm_scale
        elif self.normalize == "constant_norm_rescale":
            coeff = math.sqrt(self.d_in) / x.norm(dim=-1, keepdim=True)
            xn, undo = x * coeff, 1.0 / coeff
        elif self.normalize == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)
            std = (x - mu).std(dim=-1, keepdim=True)  # unbiased, as SAELens
            xn, undo = (x - mu) / (std + 1e-5), (mu, std)
        if self.subtract_b_dec:
            xn = xn - self.b_dec
        return x, xn, undo

    def _latents(self, xn: torch.Tensor) -> torch.Tensor:
        pre = xn @ self.W_enc + self.b_enc
        act = self.activation_fn
        if act == "relu":
            return pre.relu()
        if act == "jumprelu":
            assert self.threshold is not None
            return pre.relu() * (pre > self.threshold)
        if act == "gated":
            assert self.b_mag is not None and self.r_mag is not None
            mag = xn @ (self.W_enc * self.r_mag.exp()) + self.b_mag
            return (pre > 0) * mag.relu()
        assert self.k is not None
        if act == "topk":
            if self.rescale_by_decoder_norm:
                assert self.W_dec is not None
                pre = pre * self.W_dec.norm(dim=-1)
            top = pre.topk(self.k, dim=-1)
            return torch.zeros_like(pre).scatter_(-1, top.indices, top.values.relu())
        if act == "groupmax":  # k contiguous groups, the largest of each survives
            groups = pre.relu().unflatten(-1, (self.k, -1))
            values, idx = groups.max(dim=-1)
            idx = idx + torch.arange(self.k, device=pre.device) * groups.shape[-1]
            return torch.zeros_like(pre).scatter_(-1, idx, values)
        raise ValueError(f"unknown activation {act!r}")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent activations [..., d_sae] of inputs x [..., d_in]."""
        return self._latents(self._prepare(x)[1])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(latents, reconstruction or None without a decoder, what it reconstructs).

        For an SAE the target is its (centred) input; a transcoder's target is another
        activation, so the third value is then the input and the caller supplies the target.
        """
        xc, xn, undo = self._prepare(x)
        z = self._latents(xn)
        if self.W_dec is None:
            return z, None, xc
        zd = z
        if self.rescale_by_decoder_norm:
            zd = zd / self.W_dec.norm(dim=-1)
        if self.decoder_scale is not None:
            zd = zd * self.decoder_scale
        out = zd @ self.W_dec + self.b_dec
        if not self.transcoder:  # SAELens does not denormalise transcoder outputs
            if isinstance(undo, tuple):
                out = out * undo[1] + undo[0]
            elif undo is not None:
                out = out * undo
        if self.W_skip is not None:
            out = out + xc @ self.W_skip.T
        return z, out, xc


class ReconStats:
    """Fraction of variance unexplained, sum|y - ŷ|² / sum|y - mean(y)|², streamed in float64."""

    def __init__(self) -> None:
        self.n = 0
        self.sse = 0.0
        self.sum_sq = 0.0
        self.sum: torch.Tensor | None = None  # [d]

    def update(self, target: torch.Tensor, recon: torch.Tensor, mask: torch.Tensor) -> None:
        """Add the tokens where mask [B, T] is true (target, recon: [B, T, d])."""
        y = target[mask].double()
        if y.numel() == 0:
            return
        e = recon[mask].double() - y
        self.n += y.shape[0]
        self.sse += float(e.pow(2).sum())
        self.sum_sq += float(y.pow(2).sum())
        s = y.sum(dim=0).cpu()
        self.sum = s if self.sum is None else self.sum + s

    @property
    def fvu(self) -> float | None:
        if self.n == 0 or self.sum is None:
            return None
        total = self.sum_sq - float(self.sum.pow(2).sum()) / self.n
        return self.sse / total if total > 0 else None

    def state_dict(self) -> dict[str, Any]:
        return {"n": self.n, "sse": self.sse, "sum_sq": self.sum_sq, "sum": self.sum}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.n, self.sse, self.sum_sq, self.sum = (
            state["n"],
            state["sse"],
            state["sum_sq"],
            state["sum"],
        )
