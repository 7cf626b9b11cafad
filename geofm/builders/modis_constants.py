"""Constants of the MODIS Level-1B 1 km product (MOD021KM / MYD021KM) used by the builder.

Sources:

- File layout, scaled-integer conventions and flag values: the MODIS Level 1B Product User's
  Guide and the MOD021KM file specification (NASA MCST); see also ``REFERENCES.md``.
- Brightness temperature: the Planck constants c1 = 2hc² and c2 = hc/k in micrometre units, and
  per-band *effective central wavenumbers* with *temperature correction* slope and intercept
  from band-averaged spectral responses of each platform's infrared detectors: Liam Gumley's
  ``modis_bright`` (CIMSS/SSEC, UW-Madison, tables "LG 08-JAN-2002", fit over 180-320 K), the
  routine the IMAPP/MODIS Atmosphere codes use. SatPy's MODIS L1B reader
  (``satpy.readers.hdfeos_l1b.calibrate_bt``) uses the same Terra wavenumbers.
"""

from __future__ import annotations

EV_250 = "EV_250_Aggr1km_RefSB"
EV_500 = "EV_500_Aggr1km_RefSB"
EV_1KM_REFSB = "EV_1KM_RefSB"
EV_1KM_EMISSIVE = "EV_1KM_Emissive"
EV_SDS: tuple[str, ...] = (EV_250, EV_500, EV_1KM_REFSB, EV_1KM_EMISSIVE)
"""The four Earth-view SDS of a 1 km granule, each ``uint16 [bands, 10 × nscans, frames]``."""

REFLECTIVE_SDS: tuple[str, ...] = (EV_250, EV_500, EV_1KM_REFSB)
"""Reflective solar band SDS: they carry ``reflectance_scales``/``reflectance_offsets``."""

SDS_BAND_NAMES: dict[str, str] = {
    EV_250: "1,2",
    EV_500: "3,4,5,6,7",
    EV_1KM_REFSB: "8,9,10,11,12,13lo,13hi,14lo,14hi,15,16,17,18,19,26",
    EV_1KM_EMISSIVE: "20,21,22,23,24,25,27,28,29,30,31,32,33,34,35,36",
}
"""The ``band_names`` attribute of each SDS in a standard granule."""

SDS_BAND_DIM: dict[str, str] = {
    EV_250: "Band_250M",
    EV_500: "Band_500M",
    EV_1KM_REFSB: "Band_1KM_RefSB",
    EV_1KM_EMISSIVE: "Band_1KM_Emissive",
}
"""Band dimension of each SDS (suffixed ``:MODIS_SWATH_Type_L1B`` in the file)."""

SWATH_SUFFIX = ":MODIS_SWATH_Type_L1B"
LINES_DIM = "10*nscans" + SWATH_SUFFIX
FRAMES_DIM = "Max_EV_frames" + SWATH_SUFFIX
GEO_LINES_DIM = "2*nscans" + SWATH_SUFFIX
GEO_FRAMES_DIM = "1KM_geo_dim" + SWATH_SUFFIX

LINES_PER_SCAN = 10
"""Detectors per 1 km band: one scan of the mirror writes 10 lines."""

GEO_STEP = 5
GEO_OFFSET = 2
"""The granule's own ``Latitude``/``Longitude`` sample every 5th line and frame, starting at
index 2 (the centre of each 5 × 5 block): lines 2 and 7 of every scan, frames 2, 7, 12, ..."""

REFLECTIVE_BANDS: tuple[str, ...] = ("1", "2", "3", "6", "7", "26")
EMISSIVE_BANDS_OUT: tuple[str, ...] = ("21", "27", "28", "29", "30", "31", "32", "33")
OUTPUT_BANDS: tuple[str, ...] = ("1", "2", "3", "6", "7", "21", "26", "27", "28", "29", "30",
                                 "31", "32", "33")
"""SatVision-TOA's 14 bands, as the L1B ``band_names`` spell them, in ``BAND_SETS["modis14"]``
order."""

SI_VALID_MAX = 32767
"""Valid scaled integers are 0-32767; larger values are flags: 65535 fill, 65534 L1A DN
missing within a scan, 65533 detector saturated, 65532-65501 other conditions that make the
value unusable (L1B Product User's Guide, "Scaled Integer" flag values)."""

SI_FILL = 65535
SI_SATURATED = 65533

PLANCK_C1 = 1.191042e8
"""First radiation constant 2hc², W µm⁴ m⁻² sr⁻¹."""
PLANCK_C2 = 1.4387752e4
"""Second radiation constant hc/k, µm K."""

_EMISSIVE_ORDER: tuple[str, ...] = ("20", "21", "22", "23", "24", "25", "27", "28", "29", "30",
                                    "31", "32", "33", "34", "35", "36")

# Effective central wavenumbers (cm⁻¹), temperature correction slopes and intercepts (K),
# bands 20-25 and 27-36, from modis_bright (Gumley, tables "LG 08-JAN-2002").
_CWN_TERRA = (2.641775e3, 2.505277e3, 2.518028e3, 2.465428e3, 2.235815e3, 2.200346e3,
              1.477967e3, 1.362737e3, 1.173190e3, 1.027715e3, 9.080884e2, 8.315399e2,
              7.483394e2, 7.308963e2, 7.188681e2, 7.045367e2)
_TCS_TERRA = (9.993411e-1, 9.998646e-1, 9.998585e-1, 9.998682e-1, 9.998820e-1, 9.998845e-1,
              9.994878e-1, 9.994918e-1, 9.995496e-1, 9.997399e-1, 9.995607e-1, 9.997256e-1,
              9.999161e-1, 9.999167e-1, 9.999192e-1, 9.999282e-1)
_TCI_TERRA = (4.770522e-1, 9.264053e-2, 9.756834e-2, 8.928794e-2, 7.309468e-2, 7.061112e-2,
              2.204659e-1, 2.045902e-1, 1.599076e-1, 8.249532e-2, 1.302885e-1, 7.181662e-2,
              1.970605e-2, 1.912743e-2, 1.816222e-2, 1.579983e-2)
_CWN_AQUA = (2.647409e3, 2.511760e3, 2.517908e3, 2.462442e3, 2.248296e3, 2.209547e3,
             1.474262e3, 1.361626e3, 1.169626e3, 1.028740e3, 9.076813e2, 8.308411e2,
             7.482978e2, 7.307766e2, 7.182094e2, 7.035007e2)
_TCS_AQUA = (9.993363e-1, 9.998626e-1, 9.998627e-1, 9.998707e-1, 9.998737e-1, 9.998770e-1,
             9.995694e-1, 9.994867e-1, 9.995270e-1, 9.997382e-1, 9.995270e-1, 9.997271e-1,
             9.999173e-1, 9.999070e-1, 9.999198e-1, 9.999233e-1)
_TCI_AQUA = (4.818401e-1, 9.426663e-2, 9.458604e-2, 8.736613e-2, 7.873285e-2, 7.550804e-2,
             1.848769e-1, 2.064384e-1, 1.674982e-1, 8.304364e-2, 1.343433e-1, 7.135051e-2,
             1.948513e-2, 2.131043e-2, 1.804156e-2, 1.683156e-2)


def _table(cwn: tuple[float, ...], tcs: tuple[float, ...],
           tci: tuple[float, ...]) -> dict[str, tuple[float, float, float]]:
    return {b: (w, s, i) for b, w, s, i in zip(_EMISSIVE_ORDER, cwn, tcs, tci, strict=True)}


EMISSIVE_COEFFICIENTS: dict[str, dict[str, tuple[float, float, float]]] = {
    "Terra": _table(_CWN_TERRA, _TCS_TERRA, _TCI_TERRA),
    "Aqua": _table(_CWN_AQUA, _TCS_AQUA, _TCI_AQUA),
}
"""Per platform and emissive band: (effective central wavenumber cm⁻¹, temperature correction
slope, temperature correction intercept K). The brightness temperature is
``(T(λ_eff) - intercept) / slope`` with ``λ_eff = 10⁴ / wavenumber`` µm; without the correction
the plain effective-wavelength temperature differs by at most 0.13 K in the builder's bands 21
and 27-33 (0.36 K in band 20) over 180-320 K."""

PLATFORMS: dict[str, str] = {"MOD": "Terra", "MYD": "Aqua"}
"""File-name prefix → platform."""

DAY_SOLAR_ZENITH_DEG = 85.0
"""A pixel is daytime when the Sun is less than 85° from the zenith (the MODIS cloud mask's
day/night threshold)."""
