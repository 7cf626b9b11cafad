"""Sensor band registry: the one source of truth for band identity.

Bands are data, not channel positions. Every band has a canonical name ``"<SENSOR>.<band>"``
(``"S2.B04"``, ``"S1.VV"``, ``"MODIS.B31"``, ``"L8.B10"``) plus aliases users type (``"B04"``,
``"red"``). Physical descriptions (centre wavelength, bandwidth, kind) let band-aware models map
bands across sensors by wavelength (:func:`match_by_wavelength`).

Wavelengths are in micrometres for every kind of band, so optical, thermal and SAR bands share
one axis (a C-band SAR channel sits at ~55,466 µm).

Sensors: Sentinel-2 MSI (``S2``), Sentinel-1 C-SAR (``S1``), MODIS on Terra/Aqua (``MODIS``, bands
``B01``–``B36`` plus the L1B gain pairs ``B13lo``/``B13hi``/``B14lo``/``B14hi``; ``B13`` and
``B14`` stand for the spectral band behind each pair), Landsat 8 and 9 OLI/TIRS (``L8``, ``L9``,
``B1``–``B11``) and Landsat 7 ETM+ (``L7``, ``B1``–``B8``). The source tables live in
:mod:`geofm.band_tables`.

Named sets (:data:`BAND_SETS`):

* ``s2`` (13 bands), ``s2l2a`` (12, no B10), ``s2rgb``, ``s1``, ``s1s2`` (``s2l2a`` + ``s1``).
* ``modis`` — MODIS B01–B36 in band order; ``modis14`` — the 14 bands of SatVision-TOA in its
  order (1, 2, 3, 6, 7, 21, 26, 27, 28, 29, 30, 31, 32, 33).
* ``l8``/``l9`` — OLI B1–B7, the bands Collection-2 Level-2 delivers as surface reflectance;
  ``l8full``/``l9full`` — all 11 bands; ``l8rgb``/``l9rgb`` — B4, B3, B2.
* ``l7`` — ETM+ B1–B5, B7 (Level-2 surface reflectance); ``l7full`` — all 8; ``l7rgb`` — B3, B2, B1.

There is no sensor-free ``rgb`` set: which bands it means depends on the data. Ask for
``["red", "green", "blue"]`` instead; :func:`resolve_bands` resolves common names against the
bands that are available.

Short names are shared between sensors (``"B01"`` is both ``S2.B01`` and ``MODIS.B01``; ``"red"``
names a band of every optical sensor), so :func:`get_band` rejects them as ambiguous, while
:func:`resolve_bands` first looks for them among the available bands.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from geofm import band_tables as tables
from geofm.errors import BandError

SPEED_OF_LIGHT_M_S = 299_792_458.0


@dataclass(frozen=True)
class Band:
    """Physical description of one sensor band.

    Attributes:
        name: Canonical registry name, ``"<SENSOR>.<band>"``.
        sensor: Sensor key (``"S2"``, ``"S1"``, ``"MODIS"``, ``"L8"``, ``"L7"``).
        band: The band's own name within the sensor (``"B04"``, ``"VV"``, ``"B31"``).
        wavelength_um: Centre wavelength in micrometres.
        bandwidth_um: Full width at half maximum in micrometres (SAR: λ·Δf/f).
        gsd_m: Native ground sampling distance in metres.
        kind: ``"optical"`` (reflective), ``"thermal"`` (emissive) or ``"sar"``.
        unit: Physical unit of the calibrated value.
        scale: Multiply the stored digital number by this ...
        offset: ... then add this, to get ``unit``.
        common_name: STAC ``eo:common_name`` where one exists (``"red"``, ``"nir"``).
        polarization: SAR polarisation (``"VV"``, ``"VH"``) or ``None``.
        aliases: Extra names that resolve to this band.
    """

    name: str
    sensor: str
    band: str
    wavelength_um: float
    bandwidth_um: float
    gsd_m: float
    kind: str
    unit: str
    scale: float = 1.0
    offset: float = 0.0
    common_name: str | None = None
    polarization: str | None = None
    aliases: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, object]:
        """JSON-serialisable description, as stored in chip stores and checkpoints."""
        return {
            "name": self.name,
            "sensor": self.sensor,
            "band": self.band,
            "wavelength_um": self.wavelength_um,
            "bandwidth_um": self.bandwidth_um,
            "gsd_m": self.gsd_m,
            "kind": self.kind,
            "unit": self.unit,
            "scale": self.scale,
            "offset": self.offset,
            "common_name": self.common_name,
            "polarization": self.polarization,
        }


BANDS: dict[str, Band] = {}


def _register(band: Band) -> None:
    if band.name in BANDS:
        raise ValueError(f"duplicate band {band.name}")
    BANDS[band.name] = band


def _add(
    sensor: str,
    band: str,
    wavelength_um: float,
    bandwidth_um: float,
    gsd: float,
    common: str | None,
    *,
    kind: str,
    unit: str,
    scale: float,
    offset: float,
    aliases: tuple[str, ...] = (),
) -> None:
    _register(
        Band(
            name=f"{sensor}.{band}",
            sensor=sensor,
            band=band,
            wavelength_um=round(wavelength_um, 6),
            bandwidth_um=round(bandwidth_um, 6),
            gsd_m=float(gsd),
            kind=kind,
            unit=unit,
            scale=scale,
            offset=offset,
            common_name=common,
            aliases=aliases,
        )
    )


for _b, _wl, _bw, _gsd, _cn in tables.S2_MSI:
    _add("S2", _b, _wl / 1000, _bw / 1000, _gsd, _cn, kind="optical", unit="reflectance",
         scale=tables.S2_SCALE, offset=0.0)

# Sentinel-1 IW GRD backscatter in dB; bandwidth expressed on the wavelength axis as λ·Δf/f.
_S1_WAVELENGTH_UM = SPEED_OF_LIGHT_M_S / tables.S1_CENTRE_FREQUENCY_HZ * 1e6
for _pol in tables.S1_POLARIZATIONS:
    _register(
        Band(
            name=f"S1.{_pol}",
            sensor="S1",
            band=_pol,
            wavelength_um=_S1_WAVELENGTH_UM,
            bandwidth_um=_S1_WAVELENGTH_UM
            * (tables.S1_RANGE_BANDWIDTH_HZ / tables.S1_CENTRE_FREQUENCY_HZ),
            gsd_m=10.0,
            kind="sar",
            unit="dB",
            polarization=_pol,
        )
    )


def _modis_gsd(number: int) -> float:
    return 250.0 if number <= 2 else 500.0 if number <= 7 else 1000.0


# MODIS reflective solar bands hold calibrated TOA reflectance and the thermal emissive bands
# brightness temperature (the builder applies the L1B scales and inverse Planck), so values are
# stored in their physical unit: scale 1, offset 0. Registered in band-number order.
_MODIS_ROWS = sorted(
    [(n, lo / 1000, hi / 1000, cn, "optical") for n, lo, hi, cn in tables.MODIS_REFLECTIVE_NM]
    + [(n, lo, hi, cn, "thermal") for n, lo, hi, cn in tables.MODIS_EMISSIVE_UM]
)
for _n, _lo, _hi, _mcn, _kind in _MODIS_ROWS:
    _unit = "reflectance" if _kind == "optical" else "K"
    _add("MODIS", f"B{_n:02d}", (_lo + _hi) / 2, _hi - _lo, _modis_gsd(_n), _mcn, kind=_kind,
         unit=_unit, scale=1.0, offset=0.0)
    for _gain in tables.MODIS_GAIN_PAIRS.get(_n, ()):
        _add("MODIS", f"B{_gain}", (_lo + _hi) / 2, _hi - _lo, _modis_gsd(_n), None, kind=_kind,
             unit=_unit, scale=1.0, offset=0.0)


def _add_landsat(sensor: str, rows: Iterable[tuple[str, float, float, float, str, str]]) -> None:
    for band, lo, hi, gsd, kind, common in rows:
        thermal = kind == "thermal"
        # Collection-2 Level-2 names its files' bands SR_B4 (surface reflectance) and ST_B10
        # (surface temperature); "L8.SR_B4" resolves them for a file whose metadata names L8
        usgs = f"{'ST' if thermal else 'SR'}_{band}"
        _add(sensor, band, (lo + hi) / 2, hi - lo, gsd, common, kind=kind,
             unit="K" if thermal else "reflectance",
             scale=tables.LANDSAT_C2L2_ST_SCALE if thermal else tables.LANDSAT_C2L2_SR_SCALE,
             offset=tables.LANDSAT_C2L2_ST_OFFSET if thermal else tables.LANDSAT_C2L2_SR_OFFSET,
             aliases=(usgs, f"{sensor}.{usgs}"))


_add_landsat("L8", tables.LANDSAT8_OLI_TIRS)
_add_landsat("L9", tables.LANDSAT9_OLI2_TIRS2)
_add_landsat("L7", tables.LANDSAT7_ETM)


# A generic RGB camera (aerial and very-high-resolution imagery with no published spectral
# response, as in OpticalRS-13M's sources): broad visible bands at typical Bayer-filter peaks,
# 8-bit digital numbers. GSD varies by source and is recorded per store, so it is 0 here.
for _b, _wl, _cn in (("R", 600.0, "red"), ("G", 530.0, "green"), ("B", 460.0, "blue")):
    _add("RGB", _b, _wl / 1000, 0.1, 0.0, _cn, kind="optical", unit="dn", scale=1 / 255,
         offset=0.0)


def _named(sensor: str, bands: Iterable[str]) -> tuple[str, ...]:
    return tuple(f"{sensor}.{b}" for b in bands)


BAND_SETS: dict[str, tuple[str, ...]] = {
    "s2": _named("S2", ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09",
                        "B10", "B11", "B12")),
    "s2l2a": _named("S2", ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09",
                           "B11", "B12")),
    "s2rgb": ("S2.B04", "S2.B03", "S2.B02"),
    "s1": ("S1.VV", "S1.VH"),
    "rgb": ("RGB.R", "RGB.G", "RGB.B"),
    "modis": _named("MODIS", (f"B{n:02d}" for n in range(1, 37))),
    # SatVision-TOA (arXiv 2411.17000): 14 MODIS bands chosen to resemble GOES-ABI, in its order.
    "modis14": _named("MODIS", (f"B{n:02d}" for n in (1, 2, 3, 6, 7, 21, 26, 27, 28, 29, 30, 31,
                                                      32, 33))),
    "l7": _named("L7", ("B1", "B2", "B3", "B4", "B5", "B7")),
    "l7full": _named("L7", (f"B{n}" for n in range(1, 9))),
    "l7rgb": ("L7.B3", "L7.B2", "L7.B1"),
}
BAND_SETS["s1s2"] = BAND_SETS["s2l2a"] + BAND_SETS["s1"]
for _sensor in ("L8", "L9"):
    _key = _sensor.lower()
    BAND_SETS[_key] = _named(_sensor, (f"B{n}" for n in range(1, 8)))
    BAND_SETS[f"{_key}full"] = _named(_sensor, (f"B{n}" for n in range(1, 12)))
    BAND_SETS[f"{_key}rgb"] = _named(_sensor, ("B4", "B3", "B2"))


def _band_keys(b: Band) -> set[str]:
    """Lower-cased names that may refer to ``b``."""
    keys = {b.name, b.band, f"{b.sensor}_{b.band}", *b.aliases}
    if b.common_name:
        keys.add(b.common_name)
    return {k.lower() for k in keys}


def _alias_index() -> dict[str, list[str]]:
    """Map every lower-cased alias to the canonical names it may mean."""
    index: dict[str, list[str]] = {}
    for b in BANDS.values():
        for k in _band_keys(b):
            index.setdefault(k, []).append(b.name)
    return index


def get_band(name: str) -> Band:
    """Return the band registered under a canonical name or an unambiguous alias.

    Raises:
        BandError: The name is unknown or means bands of several sensors.
    """
    if name in BANDS:
        return BANDS[name]
    matches = _alias_index().get(name.lower(), [])
    if len(matches) == 1:
        return BANDS[matches[0]]
    if not matches:
        raise BandError(f"unknown band {name!r}",
                        hint="use a name such as 'S2.B04' or see geofm.bands.BANDS")
    raise BandError(f"band name {name!r} is ambiguous ({', '.join(sorted(matches))})",
                    hint="qualify it with the sensor, e.g. 'S2.B04'")


def _local_matches(name: str, available: Sequence[str]) -> list[str]:
    """Available bands that ``name`` may mean: by band name first, then by common name or alias."""
    key = name.lower()
    by_band = [a for a in available if a == name or a.split(".", 1)[-1].lower() == key]
    if by_band:
        return by_band
    return [a for a in available if a in BANDS and key in _band_keys(BANDS[a])]


def is_count(text: str) -> bool:
    """Whether ``text`` is an integer (``"14"``, ``"0"``, ``"-3"``), i.e. a band count."""
    t = text.strip()
    return (t[1:] if t[:1] in "+-" else t).isdigit()


def is_band_set(text: object) -> bool:
    """Whether ``text`` names a set of :data:`BAND_SETS` (any case, surrounding spaces ignored).

    >>> is_band_set(" S1 "), is_band_set("S1.VV")
    (True, False)
    """
    return isinstance(text, str) and text.strip().lower() in BAND_SETS


def parse_bands(text: str) -> list[str]:
    """The band names a user wrote: a named set, or names separated by commas.

    Names are returned as written (not resolved), so that they can be matched against the bands
    a store, a model or an input has.

    >>> parse_bands("s1")
    ['S1.VV', 'S1.VH']
    >>> parse_bands(" B04, red ,")
    ['B04', 'red']
    """
    if is_band_set(text):
        return list(BAND_SETS[text.strip().lower()])
    return [s.strip() for s in text.split(",") if s.strip()]


def resolve_bands(spec: str | int | Sequence[str], available: Sequence[str]) -> list[str]:
    """Resolve a user's band request against the bands a store or model has.

    Args:
        spec: A count (the first ``k`` available bands), a named set (``"s1s2"``), a
            comma-separated string or a sequence of band names (canonical or alias; a short name
            such as ``"B04"`` or a common name such as ``"red"`` is matched against
            ``available`` first).
        available: The ordered canonical band names that can be served.

    Returns:
        The ordered list of canonical band names requested.

    Raises:
        BandError: The request cannot be satisfied by ``available``.
    """
    avail = list(available)
    if isinstance(spec, bool):
        raise BandError(f"bands must be a count, a named set or band names, got {spec!r}")
    if isinstance(spec, int) or (isinstance(spec, str) and is_count(spec)):
        k = int(spec)
        if k < 1:
            raise BandError(f"the band count must be at least 1, got {k}",
                            hint=f"ask for 1 to {len(avail)} bands or name them")
        if k > len(avail):
            raise BandError(f"{k} bands requested but only {len(avail)} are available "
                            f"({', '.join(avail)})",
                            hint="ask for at most that many or name the bands")
        return avail[:k]
    named = is_band_set(spec)
    names = parse_bands(spec) if isinstance(spec, str) else list(spec)
    if not names:
        raise BandError("no bands requested")
    out: list[str] = []
    for n in names:
        local = _local_matches(n, avail)
        canonical = local[0] if len(local) == 1 else get_band(n).name
        if canonical not in avail:
            hint = "choose bands the store or model has"
            if named:  # e.g. "s2" (13 L1C bands) on a store of Level-2A bands without B10
                sets = [k for k, v in BAND_SETS.items() if set(v) <= set(avail)]
                hint = f"named sets available here: {', '.join(sets) or 'none'}; or name bands"
            raise BandError(f"band {canonical} is not available (have: {', '.join(avail)})",
                            hint=hint)
        out.append(canonical)
    if len(set(out)) != len(out):
        raise BandError(f"bands requested twice in {names}")
    return out


def match_by_wavelength(
    requested: Sequence[str], available: Sequence[str], tol_um: float = 0.02
) -> dict[str, str | None]:
    """Map each requested band to the available band nearest to it in wavelength.

    Used to feed a model trained on one sensor with another sensor's bands (an S2 model on
    Landsat 8: ``S2.B04 → L8.B4``, ``S2.B8A → L8.B5``). A candidate must be of the same kind
    (optical, thermal, SAR) and, for SAR, the same polarisation. It counts as a match when the
    centres differ by at most ``max(tol_um, half of either band's bandwidth)``, that is, when one
    band's centre lies within the other's passband. Among matches the nearest centre wins, then
    the closer bandwidth, then the earlier position in ``available``. Several requested bands may
    map to the same available band.

    Args:
        requested: Band names (canonical or unambiguous aliases) the consumer expects.
        available: Band names the data has.
        tol_um: Smallest accepted centre distance in micrometres, for very narrow bands.

    Returns:
        Canonical requested name → canonical available name, or ``None`` where nothing matches,
        in the order of ``requested``.

    Raises:
        BandError: A name is unknown or ambiguous.
    """
    candidates = [get_band(a) for a in available]
    out: dict[str, str | None] = {}
    for name in requested:
        want = get_band(name)
        best: tuple[float, float, int] | None = None
        found: str | None = None
        for i, have in enumerate(candidates):
            if have.kind != want.kind or have.polarization != want.polarization:
                continue
            distance = abs(have.wavelength_um - want.wavelength_um)
            reach = max(tol_um, want.bandwidth_um / 2, have.bandwidth_um / 2)
            rank = (distance, abs(have.bandwidth_um - want.bandwidth_um), i)
            if distance <= reach + 1e-9 and (best is None or rank < best):
                best, found = rank, have.name
        out[want.name] = found
    return out


def modis_band(l1b_name: str) -> str:
    """Canonical name of a MODIS band as the L1B ``band_names`` attribute spells it.

    Args:
        l1b_name: ``"1"`` … ``"36"``, ``"13lo"``, ``"13hi"``, ``"14lo"`` or ``"14hi"``.

    Returns:
        ``"MODIS.B01"`` … ``"MODIS.B36"``, ``"MODIS.B13lo"`` and so on.

    Raises:
        BandError: The name is not a MODIS band.
    """
    text = l1b_name.strip()
    digits = text.rstrip("lohi")
    name = f"MODIS.B{int(digits):02d}{text[len(digits):]}" if digits.isdigit() else ""
    if name not in BANDS:
        raise BandError(f"unknown MODIS band {l1b_name!r}",
                        hint="expected '1'…'36', '13lo', '13hi', '14lo' or '14hi'")
    return name


def bands_info(names: Sequence[str]) -> list[dict[str, object]]:
    """Physical descriptions of ``names`` in order, for stores and checkpoints."""
    return [get_band(n).to_dict() for n in names]
