"""Emulated `sophon` package: only `sophon.sail` exists (see `sail.py`)."""
