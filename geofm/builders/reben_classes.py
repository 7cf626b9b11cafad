"""reBEN's 19-class nomenclature, CORINE Land Cover codes and colours.

Class names and the CLC-code → class mapping follow Table 1 of the BigEarthNet v2.0 (reBEN)
description (bigearth.net, "Description_BigEarthNet_v2.pdf"); colours are the CLC legend colours
of each class's leading CLC code (Copernicus Land Monitoring Service, CLC 2018 legend).
"""

from __future__ import annotations

import numpy as np

# (class name, CLC legend colour), in reBEN's class order.
CLASSES: tuple[tuple[str, str], ...] = (
    ("Urban fabric", "#e6004d"),
    ("Industrial or commercial units", "#cc4df2"),
    ("Arable land", "#ffffa8"),
    ("Permanent crops", "#e68000"),
    ("Pastures", "#e6e64d"),
    ("Complex cultivation patterns", "#ffe64d"),
    ("Land principally occupied by agriculture, with significant areas of natural vegetation",
     "#e6cc4d"),
    ("Agro-forestry areas", "#f2cca6"),
    ("Broad-leaved forest", "#80ff00"),
    ("Coniferous forest", "#00a600"),
    ("Mixed forest", "#4dff00"),
    ("Natural grassland and sparsely vegetated areas", "#ccf24d"),
    ("Moors, heathland and sclerophyllous vegetation", "#a6ff80"),
    ("Transitional woodland, shrub", "#a6f200"),
    ("Beaches, dunes, sands", "#e6e6e6"),
    ("Inland wetlands", "#a6a6ff"),
    ("Coastal wetlands", "#ccccff"),
    ("Inland waters", "#80f2e6"),
    ("Marine waters", "#e6f2ff"),
)
CLASS_NAMES: tuple[str, ...] = tuple(n for n, _ in CLASSES)
CLASS_COLORS: tuple[str, ...] = tuple(c for _, c in CLASSES)

# CLC level-3 code → reBEN class index. Codes absent here (e.g. 124 airports, 131 mines,
# 141 green urban areas, 332 bare rock, 335 glaciers) are not part of the nomenclature.
CLC_TO_CLASS: dict[int, int] = {
    111: 0, 112: 0, 121: 1,
    211: 2, 212: 2, 213: 2, 221: 3, 222: 3, 223: 3, 231: 4, 241: 3, 242: 5, 243: 6, 244: 7,
    311: 8, 312: 9, 313: 10, 321: 11, 322: 12, 323: 12, 324: 13, 331: 14, 333: 11,
    411: 15, 412: 15, 421: 16, 422: 16,
    511: 17, 512: 17, 521: 18, 522: 18, 523: 18,
}


def clc_lookup(ignore: int) -> np.ndarray:
    """A 1000-entry table mapping CLC codes to class indices, ``ignore`` elsewhere."""
    table = np.full(1000, ignore, dtype=np.uint8)
    for code, cls in CLC_TO_CLASS.items():
        table[code] = cls
    return table
