"""Compiled Cython kernels (built from the top-level ``native/`` folder).

Each module here is ``native/<name>.pyx`` compiled by ``setup.py``; its
``.pyi`` stub sits beside it. Import the modules directly, e.g.
``from persona._native import bases``.
"""
