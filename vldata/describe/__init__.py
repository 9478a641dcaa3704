"""The description side: one Record declaration and everything derived from it.

``schema`` walks a builder's pydantic Record into the Arrow schema, HF ``Features``, parquet rows,
webdataset members, the card's field table and Croissant fields; ``card`` validates a datasheet and
renders the README; ``croissant`` writes and checks croissant.json; ``hub_vocab`` holds the Hub's
vocabularies. Rule: nothing here imports ``vldata.write``, ``vldata.read`` or ``vldata.tools``.
"""
