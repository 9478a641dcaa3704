"""The write side: from a builder's partitions to finished format folders.

``builder`` is the contract a dataset implements (Builder, Config, Partition, outcomes, RowContext);
``registry`` finds builders by entry point; ``engine`` plans, maps and reduces; ``partition`` is the
map step every executor runs; ``executors`` run it locally or on Ray; ``shuffle`` is the seeded order
of a split's samples and the bucketed shuffle that writes it; ``shards`` writes parquet and tar shards; ``finish`` writes card, Croissant and manifest; ``storage`` stages remote raw input and
uploads remote output; ``api`` is ``vldata.build``. Rule: nothing here imports ``vldata.read`` or
``vldata.tools``, and nothing in vldata imports a dataset's builder.
"""
