"""Tools over finished builds: ``validate``, ``inspect`` (+ ``contact_sheet``), ``publish`` and the
``demo``. They read builds through ``vldata.layout`` and ``vldata.read``; only ``demo`` builds.
Rule: ``validate``, ``inspect`` and ``publish`` do not import ``vldata.write`` or ``vldata.ingest``.
"""
