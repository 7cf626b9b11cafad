"""Model cards of SatVision-TOA and Prithvi-EO-2.0 (registered on import)."""

from __future__ import annotations

from geofm.bands import BAND_SETS
from geofm.data.satvision import SATVISION_BT_RANGE, satvision_stats
from geofm.published.base import PublishedSpec, register_published
from geofm.published.prithvi import (
    PRITHVI_BANDS,
    PRITHVI_BANDS_LANDSAT,
    PRITHVI_MEAN,
    PRITHVI_SIZES,
    PRITHVI_STD,
    convert_prithvi,
    read_prithvi,
)
from geofm.published.satvision import SATVISION_SIZES, convert_satvision, read_deepspeed_module

_MODIS14 = BAND_SETS["modis14"]
_SV_MEAN, _SV_STD = satvision_stats(_MODIS14)

SATVISION_TOA_GIANT = register_published(PublishedSpec(
    name="satvision_toa_giant",
    title="SatVision-TOA SwinV2-Giant (MODIS TOA, 14 bands)",
    architecture="satvision_toa_giant",
    config={},
    bands=_MODIS14,
    input_units="reflectance",
    mean=tuple(float(v) for v in _SV_MEAN),
    std=tuple(float(v) for v in _SV_STD),
    processing_level="L1B",
    patch_size=4,
    image_size=128,
    gsd_m=1000.0,
    flexible=False,
    licence="Apache-2.0",
    source="https://github.com/nasa-nccs-hpda/pytorch-caney (arXiv 2411.17000)",
    weights_url="https://huggingface.co/nasa-cisto-data-science-group/"
                "satvision-toa-giant-patch8-window8-128/resolve/main/mp_rank_00_model_states.pt",
    weights_file="mp_rank_00_model_states.pt",
    convert=convert_satvision,
    notes="TOA reflectance 0–1 for bands 1, 2, 3, 6, 7, 26 and brightness temperature (K) "
          "min–max scaled per band for 21, 27–33; trained on daily 1 km MODIS Terra composites; "
          "the DeepSpeed file is read weights-only (bf16 → float32), or refused with the "
          "safetensors export recipe.",
    extra={
        "read": read_deepspeed_module,
        "band_units": tuple("K" if b in SATVISION_BT_RANGE else "reflectance"
                            for b in _MODIS14),
        "token_stride": 4 * 2 ** (len(SATVISION_SIZES["giant"]["depths"]) - 1),
        "window_size": 8,
        "test_architecture": "satvision_toa_test",
    },
))


def _prithvi(name: str, size: str, title: str, repo: str, file: str) -> PublishedSpec:
    patch = PRITHVI_SIZES[size]["patch_size"]
    return register_published(PublishedSpec(
        name=name,
        title=title,
        architecture=name,
        config={},
        bands=PRITHVI_BANDS,
        input_units="dn",
        mean=PRITHVI_MEAN,
        std=PRITHVI_STD,
        processing_level="HLS",
        patch_size=patch,
        image_size=224,
        gsd_m=30.0,
        flexible=False,
        licence="Apache-2.0",
        source="https://github.com/NASA-IMPACT/Prithvi-EO-2.0 (arXiv 2412.02732)",
        weights_url=f"https://huggingface.co/ibm-nasa-geospatial/{repo}/resolve/main/{file}",
        weights_file=file,
        convert=convert_prithvi,
        notes="HLS surface reflectance × 10,000 (Blue, Green, Red, Narrow NIR, SWIR 1, SWIR 2; "
              "Sentinel-2 B02, B03, B04, B8A, B11, B12 or Landsat-8/9 B2–B7); one time step; "
              "the MAE decoder and the 4-frame position table in the file are not used.",
        extra={
            "read": read_prithvi,
            "equivalent_bands": {"L8": PRITHVI_BANDS_LANDSAT},
            "test_architecture": "prithvi_eo2_test",
        },
    ))


PRITHVI_EO2_300M = _prithvi("prithvi_eo2_300m", "300m", "Prithvi-EO-2.0-300M (ViT-L/16, HLS)",
                            "Prithvi-EO-2.0-300M", "Prithvi_EO_V2_300M.pt")
PRITHVI_EO2_600M = _prithvi("prithvi_eo2_600m", "600m", "Prithvi-EO-2.0-600M (ViT-H/14, HLS)",
                            "Prithvi-EO-2.0-600M", "Prithvi_EO_V2_600M.pt")
