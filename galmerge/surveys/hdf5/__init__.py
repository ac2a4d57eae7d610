"""Built-in survey ``hdf5``: a labelled image set in galmerge's HDF5 format."""
