"""Band order for releases trained on RGB camera imagery (aerial and very-high-resolution).

Such a release (SelectiveMAE on OpticalRS-13M, RemoteCLIP) names its bands ``RGB.R``, ``RGB.G``,
``RGB.B``: broad visible bands of no particular sensor. Its input is the red, green and blue of
whatever optical sensor the data comes from, so the bands are matched by their common name
(``red``, ``green``, ``blue``): ``S2.B04, S2.B03, S2.B02`` or ``L8.B4, L8.B3, L8.B2`` stand for
them. Values are not converted here: the band contract brings them to the card's units.
"""

from __future__ import annotations

from collections.abc import Sequence

from geofm.bands import get_band
from geofm.errors import BandError


def rgb_channels(bands: Sequence[str], model_bands: Sequence[str]) -> list[int]:
    """Indices into ``bands`` that give ``model_bands``, by name or else by common name.

    Raises:
        BandError: A model band has no band of that name or colour among ``bands``.
    """
    names = [get_band(b).name for b in bands]
    if all(b in names for b in model_bands):
        return [names.index(b) for b in model_bands]
    colours: dict[str, int] = {}
    for i, b in enumerate(names):
        band = get_band(b)
        if band.kind == "optical" and band.common_name and band.common_name not in colours:
            colours[band.common_name] = i
    wanted = [get_band(b).common_name or b for b in model_bands]
    missing = [w for w in wanted if w not in colours]
    if missing:
        raise BandError(f"the model needs the {', '.join(missing)} band(s) that the input "
                        f"lacks (input has {', '.join(names)})",
                        hint="give the red, green and blue bands")
    return [colours[w] for w in wanted]
