"""`sophon.sail` over the vendor runtime (libbmrt + libbmlib + the BM1684X cmodel), through ctypes."""
