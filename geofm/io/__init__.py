"""Raster windows, chip-store schema and chip-store I/O."""
