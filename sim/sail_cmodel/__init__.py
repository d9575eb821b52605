"""`sophon.sail` over the vendor runtime (put this directory on sys.path so `import sophon.sail` is it)."""
