"""Published spectral tables behind :mod:`geofm.bands`.

Plain data only, each table copied from the document named above it. :mod:`geofm.bands` turns
the rows into :class:`geofm.bands.Band` records; nothing else should import this module.

Where a source gives a band as a range (lower–upper edge), the registry stores its midpoint as
the centre wavelength and its width as the bandwidth.
"""

from __future__ import annotations

# --- Sentinel-2 MSI -------------------------------------------------------------------------
# Sentinel-2A spectral response, ESA "Sentinel-2 Spectral Response Functions"
# (COPE-GSEG-EOPG-TN-15-0007, v3). Rows: band, centre (nm), bandwidth (nm), GSD (m), STAC common
# name. L1C: TOA reflectance × 10000; L2A (processing baseline < 04.00, as reBEN): BOA
# reflectance × 10000.
S2_MSI: list[tuple[str, float, float, float, str]] = [
    ("B01", 442.7, 21, 60, "coastal"),
    ("B02", 492.7, 66, 10, "blue"),
    ("B03", 559.8, 36, 10, "green"),
    ("B04", 664.6, 31, 10, "red"),
    ("B05", 704.1, 15, 20, "rededge"),
    ("B06", 740.5, 15, 20, "rededge"),
    ("B07", 782.8, 20, 20, "rededge"),
    ("B08", 832.8, 106, 10, "nir"),
    ("B8A", 864.7, 21, 20, "nir08"),
    ("B09", 945.1, 20, 60, "nir09"),
    ("B10", 1373.5, 31, 60, "cirrus"),
    ("B11", 1613.7, 91, 20, "swir16"),
    ("B12", 2202.4, 175, 20, "swir22"),
]
S2_SCALE = 1e-4

# --- Sentinel-1 C-SAR, IW GRD ---------------------------------------------------------------
# ESA Sentinel-1 User Handbook: centre frequency 5.405 GHz, ~100 MHz range bandwidth in IW.
S1_CENTRE_FREQUENCY_HZ = 5.405e9
S1_RANGE_BANDWIDTH_HZ = 100e6
S1_POLARIZATIONS = ("VV", "VH")

# --- MODIS (Terra and Aqua) -----------------------------------------------------------------
# NASA GSFC "MODIS Specifications" table (modis.gsfc.nasa.gov/about/specifications.php).
# Rows: band number, lower edge, upper edge, STAC common name. The table gives reflective solar
# bands 1–19 in nm and band 26 plus the thermal emissive bands in µm; both tables keep the
# source's unit. GSD: 250 m (bands 1–2), 500 m (3–7), 1000 m (8–36).
# Common names are given only where one band of the instrument is the obvious match (the land
# bands 1–7, the cirrus band 26 and the split-window pair 31/32), so that a name such as "red"
# resolves to exactly one MODIS band.
MODIS_REFLECTIVE_NM: list[tuple[int, float, float, str | None]] = [
    (1, 620, 670, "red"),
    (2, 841, 876, "nir08"),
    (3, 459, 479, "blue"),
    (4, 545, 565, "green"),
    (5, 1230, 1250, None),
    (6, 1628, 1652, "swir16"),
    (7, 2105, 2155, "swir22"),
    (8, 405, 420, None),
    (9, 438, 448, None),
    (10, 483, 493, None),
    (11, 526, 536, None),
    (12, 546, 556, None),
    (13, 662, 672, None),
    (14, 673, 683, None),
    (15, 743, 753, None),
    (16, 862, 877, None),
    (17, 890, 920, None),
    (18, 931, 941, None),
    (19, 915, 965, None),
    (26, 1360, 1390, "cirrus"),
]
MODIS_EMISSIVE_UM: list[tuple[int, float, float, str | None]] = [
    (20, 3.660, 3.840, None),
    (21, 3.929, 3.989, None),
    (22, 3.929, 3.989, None),
    (23, 4.020, 4.080, None),
    (24, 4.433, 4.498, None),
    (25, 4.482, 4.549, None),
    (27, 6.535, 6.895, None),
    (28, 7.175, 7.475, None),
    (29, 8.400, 8.700, None),
    (30, 9.580, 9.880, None),
    (31, 10.780, 11.280, "lwir11"),
    (32, 11.770, 12.270, "lwir12"),
    (33, 13.185, 13.485, None),
    (34, 13.485, 13.785, None),
    (35, 13.785, 14.085, None),
    (36, 14.085, 14.385, None),
]
# Bands 13 and 14 are read out at low and high gain; the MODIS Level 1B Product User's Guide
# (MCST) lists them in `EV_1KM_RefSB` as "13lo", "13hi", "14lo", "14hi". Same spectral band.
MODIS_GAIN_PAIRS: dict[int, tuple[str, str]] = {13: ("13lo", "13hi"), 14: ("14lo", "14hi")}

# --- Landsat --------------------------------------------------------------------------------
# USGS "What are the band designations for the Landsat satellites?" (band tables for Landsat 7
# ETM+ and Landsat 8-9 OLI/TIRS). Rows: band, lower edge (µm), upper edge (µm), GSD (m), kind,
# STAC eo common name.
LANDSAT8_OLI_TIRS: list[tuple[str, float, float, float, str, str]] = [
    ("B1", 0.43, 0.45, 30, "optical", "coastal"),
    ("B2", 0.45, 0.51, 30, "optical", "blue"),
    ("B3", 0.53, 0.59, 30, "optical", "green"),
    ("B4", 0.64, 0.67, 30, "optical", "red"),
    ("B5", 0.85, 0.88, 30, "optical", "nir08"),
    ("B6", 1.57, 1.65, 30, "optical", "swir16"),
    ("B7", 2.11, 2.29, 30, "optical", "swir22"),
    ("B8", 0.50, 0.68, 15, "optical", "pan"),
    ("B9", 1.36, 1.38, 30, "optical", "cirrus"),
    ("B10", 10.60, 11.19, 100, "thermal", "lwir11"),
    ("B11", 11.50, 12.51, 100, "thermal", "lwir12"),
]
# Landsat 9 OLI-2/TIRS-2: the same USGS page gives band edges identical to Landsat 8's, so the
# Landsat 8 rows are reused.
LANDSAT9_OLI2_TIRS2 = LANDSAT8_OLI_TIRS
LANDSAT7_ETM: list[tuple[str, float, float, float, str, str]] = [
    ("B1", 0.45, 0.52, 30, "optical", "blue"),
    ("B2", 0.52, 0.60, 30, "optical", "green"),
    ("B3", 0.63, 0.69, 30, "optical", "red"),
    ("B4", 0.77, 0.90, 30, "optical", "nir08"),
    ("B5", 1.55, 1.75, 30, "optical", "swir16"),
    ("B6", 10.40, 12.50, 60, "thermal", "lwir"),
    ("B7", 2.09, 2.35, 30, "optical", "swir22"),
    ("B8", 0.52, 0.90, 15, "optical", "pan"),
]
# Collection 2 Level-2 scale factors: USGS "Landsat 8-9 OLI/TIRS Collection 2 Level 2 Science
# Product Guide" (LSDS-1619) and "Landsat 7 ETM+ Collection 2 Level 2 Science Product Guide"
# (LSDS-1618). Surface reflectance = DN × 2.75e-05 − 0.2; surface temperature (K) =
# DN × 0.00341802 + 149.0. Level 2 ships reflectance only for OLI B1–B7 / ETM+ B1–B5, B7 and
# temperature only from TIRS B10 / ETM+ B6; the registry gives the remaining bands (pan, cirrus,
# TIRS B11) the same encoding, so one sensor's stored values decode alike per unit.
LANDSAT_C2L2_SR_SCALE = 2.75e-05
LANDSAT_C2L2_SR_OFFSET = -0.2
LANDSAT_C2L2_ST_SCALE = 0.00341802
LANDSAT_C2L2_ST_OFFSET = 149.0
