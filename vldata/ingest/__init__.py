"""The ingest kit: what builders use to turn raw input into records.

``fetch`` downloads URLs politely and safely, ``image`` sniffs, verifies and normalizes image bytes,
``tabular`` reads CSV/TSV with byte offsets, ``tarstream`` streams tar archives, ``parquet_rows`` reads metadata parquet so that damage costs
only its rows, ``rawfiles`` finds raw files by pattern, ``img2dataset``
reads an img2dataset output folder, ``loopback`` serves a URL-based sample on 127.0.0.1 and
``synthetic`` helps sample generators.
Rule: nothing here imports ``vldata.write``, ``vldata.read`` or ``vldata.tools``, nor knows a dataset.
"""
