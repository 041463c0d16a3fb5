"""Raw videos -> decode -> features -> HDF5 cache -> Dataset."""
