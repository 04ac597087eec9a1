"""Data files shipped with rpuhw (see README.md here for sources and licences).

Load them with :func:`rpuhw.data.load_dataset`, e.g. ``load_dataset("mnist5k")``.
"""
