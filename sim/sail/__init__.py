"""The `sophon.sail` emulator. Put this directory on `sys.path` (a `.pth` on a simulated box) and
`import sophon.sail` gives the numpy implementation in `sophon/sail.py`. Python 3.8, numpy only."""
