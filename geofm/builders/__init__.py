"""Dataset builders, one module per source (reBEN, MODIS, OpticalRS), and the Dask runner."""
