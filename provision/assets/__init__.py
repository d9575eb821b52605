"""Model assets: lock, content-addressed cache, download sources, verified downloads, push to boxes.

lock.py      sizes and sha256 pinned per file (`models/<model>.lock.yaml`)
cache.py     content-addressed cache with `.part` files and atomic placement
sources.py   HTTP(S) with Range, dfss-style SFTP (paramiko), local directory / file://
download.py  resumable, hashed-while-streaming, parallel downloads into the cache (`assets pull`)
receiver.py  the box side (Python 3.8, stdlib only): receive or fetch, hash, fsync, commit
push.py      the controller side of distribution to boxes (`assets push`)
"""
