"""Models saved with library releases of another era (docs/legacy-models.md).

``pyversions``: which Python a recorded release runs in, and the numpy/scipy/... of its time. ``buildenv``: a
container with those versions (no network, wheels from the host's wheelhouse) that runs ``probe_script`` on the
artifact. ``bridge``: ``mlship init`` for such a file, proving a newer release predicts the same. ``check``: what
``validate`` and ``build`` do when this machine cannot load the artifact.
"""
