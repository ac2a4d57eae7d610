"""galmerge.surveys.hdf5."""
