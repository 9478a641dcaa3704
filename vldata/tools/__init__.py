"""Tools over finished builds: ``validate``, ``inspect`` (+ ``contact_sheet``), ``publish``, ``select``
(subsets beside the shards, with the rules of ``metaclip`` and ``datacomp``) and the ``demo``. They read
builds through ``vldata.layout`` and ``vldata.read``; only ``demo`` builds, and ``select`` writes
nothing but subset files and manifest entries.
Rule: ``validate``, ``inspect`` and ``publish`` do not import ``vldata.write`` or ``vldata.ingest``.
"""
