"""The surface a published foundation model shows geofm, and what geofm records about it.

A published encoder (DOFA, Panopticon, SSL4EO-S12's ViT-S/16, SatVision-TOA, Prithvi, ...) runs
its own tokenizer — DOFA's wavelength hypernetwork, Panopticon's channel attention, a fixed
patch embedding — and exposes the same calls as geofm's own :class:`~geofm.models.vit.ViT`:
``forward_features`` (pooled ``[B, D]``), ``forward_patch_features`` (``[B, N, D]`` on the
patch grid, row-major), ``grid_size``, ``patch_size``, ``embed_dim``, and its transformer
``blocks`` and final ``norm`` (for layer-wise learning-rate decay and partial freezing). Images
arrive already normalised by the model's band contract (the release's mean and std in the units
its weights expect), bands named with registry names.

A :class:`PublishedSpec` is the release as data: which architecture, which bands in which units,
its normalisation, licence and where the weights are published. :mod:`geofm.published.catalogue`
holds one per supported model.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from geofm.errors import GeofmError

INPUT_UNITS = ("dn", "reflectance", "dB", "linear", "K", "radiance")
"""What a model's input values are, before its normalisation:

* ``"dn"``: the digital numbers the product is distributed in (Sentinel-2 L1C/L2A reflectance
  × 10,000; Landsat Collection-2 DN);
* ``"reflectance"``: (top-of-atmosphere or surface) reflectance, 0–1;
* ``"dB"``: SAR backscatter in decibels; ``"linear"``: SAR backscatter as linear power;
* ``"K"``: brightness temperature in kelvin; ``"radiance"``: at-sensor radiance.
"""


class PublishedEncoder(nn.Module, abc.ABC):
    """A published encoder behind geofm's encoder calls.

    Attributes:
        band_tokens: ``True`` when the model takes any subset of bands (channel-flexible: DOFA,
            Panopticon, Copernicus-FM); ``False`` when it needs exactly :attr:`bands`.
        bands: Registry names of the bands the model was built for, in its channel order.
        patch_size: Patch side in pixels.
        embed_dim: Feature width ``D``.
        blocks: The transformer blocks, first to last.
        norm: The final normalisation applied to the tokens.
        model_name: Registered architecture name, set by
            :func:`~geofm.models.registry.create_model`.
        model_config: The factory's resolved keyword arguments (set by the constructor), so
            ``create_model(model_name, **model_config)`` rebuilds the module.
        published_name: The release's geofm name (``"dofa_base"``), set by
            :func:`~geofm.published.load.load_release`.
    """

    band_tokens: bool = False
    bands: tuple[str, ...] = ()
    patch_size: int
    embed_dim: int
    blocks: nn.ModuleList | nn.Sequential
    norm: nn.Module
    model_name: str
    model_config: dict[str, Any]
    published_name: str

    def grid_size(self, images: Tensor) -> tuple[int, int]:
        """Patch grid ``(rows, cols)`` of ``images [B, C, H, W]``.

        Raises:
            GeofmError: ``H`` or ``W`` is not a multiple of the patch size.
        """
        h, w = images.shape[-2:]
        p = self.patch_size
        if h % p or w % p:
            raise GeofmError(f"image size {h}×{w} is not a multiple of the patch size {p}",
                             hint="crop or pad the tiles to a multiple of the patch size")
        return h // p, w // p

    def ordered(self, images: Tensor, bands: Sequence[str]) -> Tensor:
        """``images [B, C, H, W]`` with channels in :attr:`bands` order (fixed-band models).

        Raises:
            GeofmError: A band the model needs is missing.
        """
        names = list(bands)
        missing = [b for b in self.bands if b not in names]
        if missing:
            raise GeofmError(f"the model needs bands {', '.join(missing)} that the input lacks",
                             hint="give every band the model card lists")
        if names == list(self.bands):
            return images
        return images[:, [names.index(b) for b in self.bands]]  # [B, C_model, H, W]

    @abc.abstractmethod
    def forward_patch_features(self, images: Tensor, bands: Sequence[str]) -> Tensor:
        """Per-patch features ``[B, N, D]``, ``N = rows · cols`` in row-major order."""

    @abc.abstractmethod
    def forward_features(self, images: Tensor, bands: Sequence[str]) -> Tensor:
        """Pooled features ``[B, D]``, pooled as the release pools them."""

    def forward(self, images: Tensor, bands: Sequence[str]) -> Tensor:
        """Pooled features ``[B, D]``; see :meth:`forward_features`."""
        return self.forward_features(images, bands)


StateConverter = Callable[[Mapping[str, Tensor]], dict[str, Tensor]]
"""Turns a release's state dict (its own key names, wrappers and prefixes) into the geofm
module's, consuming every key (an unconsumed key is an error, not a silent drop)."""


@dataclass(frozen=True)
class PublishedSpec:
    """One published model release, as data.

    Attributes:
        name: geofm's name for it (``"dofa_base"``), used by ``--init NAME``.
        title: Human name (``"DOFA ViT-B/16"``).
        architecture: Registered model name that builds the (randomly initialised) module.
        config: Keyword arguments of that factory.
        bands: Registry band names in the model's channel order.
        input_units: What the weights expect as input (one of :data:`INPUT_UNITS`).
        mean: Normalisation mean per band, in ``input_units``.
        std: Normalisation std per band, in ``input_units``.
        processing_level: Product level the weights were trained on (``"L1C"``, ``"L2A"``,
            ``"GRD"``, ``"L1B"``, ``"HLS"``).
        patch_size: Patch side in pixels.
        image_size: Tile side the release was trained at.
        gsd_m: Native ground sampling distance in metres.
        flexible: Channel-flexible (takes any subset of bands).
        licence: The weights' licence (SPDX id where one exists).
        source: Paper or repository.
        weights_url: Where the weights file is published.
        weights_file: Its file name.
        torchgeo_weights: ``"EnumClass.MEMBER"`` in :mod:`torchgeo.models`, when torchgeo
            publishes the same weights.
        convert: Release state dict → geofm module state dict.
        notes: What geofm checks or converts for this model, one sentence.
    """

    name: str
    title: str
    architecture: str
    config: Mapping[str, Any]
    bands: tuple[str, ...]
    input_units: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    processing_level: str
    patch_size: int
    image_size: int
    gsd_m: float
    flexible: bool
    licence: str
    source: str
    weights_url: str
    weights_file: str
    convert: StateConverter
    torchgeo_weights: str | None = None
    notes: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.input_units not in INPUT_UNITS:
            raise ValueError(f"{self.name}: input_units {self.input_units!r} is not one of "
                             f"{INPUT_UNITS}")
        if not (len(self.bands) == len(self.mean) == len(self.std)):
            raise ValueError(f"{self.name}: bands, mean and std differ in length")


PUBLISHED: dict[str, PublishedSpec] = {}
"""Every supported release by name (filled by :mod:`geofm.published.catalogue`)."""


def register_published(spec: PublishedSpec) -> PublishedSpec:
    """Add ``spec`` to :data:`PUBLISHED`.

    Raises:
        ValueError: A release of that name is already registered.
    """
    if spec.name in PUBLISHED:
        raise ValueError(f"published model {spec.name!r} is registered twice")
    PUBLISHED[spec.name] = spec
    return spec


def consume(state: Mapping[str, Tensor], mapping: Mapping[str, str],
            drop: Sequence[str] = ()) -> dict[str, Tensor]:
    """Rename ``state``'s keys by prefix, refusing any key no rule consumes.

    Args:
        state: The release's tensors.
        mapping: ``{release prefix: geofm prefix}``, longest prefix wins (``""`` maps the rest).
        drop: Release keys (exact) that are knowingly unused (a decoder, a projection head).

    Raises:
        GeofmError: A key matches no prefix and is not in ``drop``.
    """
    prefixes = sorted(mapping, key=len, reverse=True)
    out: dict[str, Tensor] = {}
    left: list[str] = []
    for key, value in state.items():
        if key in drop:
            continue
        for prefix in prefixes:
            if key.startswith(prefix):
                out[mapping[prefix] + key[len(prefix):]] = value
                break
        else:
            left.append(key)
    if left:
        raise GeofmError(f"the weights hold {len(left)} key(s) this model does not use "
                         f"({', '.join(left[:3])})",
                         hint="check that the file is the release the model card names")
    return out


class ClassTokenViTEncoder(PublishedEncoder):
    """A published ViT that pools as MAE's finetuning does (DOFA, Copernicus-FM): the mean of
    the patch tokens after the last block, then the final norm; patch features go through the
    same norm."""

    @abc.abstractmethod
    def _tokens(self, images: Tensor, bands: Sequence[str]) -> Tensor:
        """Class and patch tokens after the last block ``[B, 1 + N, D]``."""

    def forward_patch_features(self, images: Tensor, bands: Sequence[str]) -> Tensor:
        """Patch tokens through the final norm ``[B, N, D]``."""
        patches: Tensor = self.norm(self._tokens(images, bands)[:, 1:])  # [B, N, D]
        return patches

    def forward_features(self, images: Tensor, bands: Sequence[str]) -> Tensor:
        """Mean of the patch tokens through the final norm ``[B, D]``."""
        pooled: Tensor = self.norm(self._tokens(images, bands)[:, 1:].mean(dim=1))
        return pooled  # [B, D]
