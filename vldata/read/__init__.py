"""The read side: built datasets into training batches.

``source`` gives random access by global index over a build (either format, any fsspec URL), a
Hugging Face parquet dataset (described from its README and footers by ``hf_parquet``) or plain
webdataset tars (``tar_index``, reading each tar once through ``tar_scan``, gives them the member
indexes ``source`` reads them by); ``plan`` is the pure sample order (shuffle, mixing, ranks and
workers); ``mix`` combines sources;
``torch_dataset`` is the resumable torch IterableDataset; ``decode`` and ``batch_decode`` turn bytes
into tensors on the CPU or a GPU. Rule: nothing here imports ``vldata.write``, ``vldata.describe``,
``vldata.ingest`` or ``vldata.tools``: reading needs only ``vldata.layout`` and ``vldata.errors``.
"""
