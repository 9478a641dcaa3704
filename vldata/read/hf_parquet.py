"""Describe a plain Hugging Face parquet dataset (one without a vldata manifest) as a manifest in memory.

``describe(fs, root, split)`` finds the data files the way ``push_to_hub`` lays them out: the README's
``configs:`` front matter (the ``default`` config, else the first), else ``data/{split}-*.parquet``,
``data/{split}/*.parquet`` or ``{split}/*.parquet``; files sorted by path, local or any fsspec URL
(folders listed once each, over http from the server's index page). It reads the opened split's parquet
footers only, by small range reads, never a data page: row counts and row-group sizes, the schema, and
the HF features kept in its ``huggingface`` metadata. It picks the image, text and key columns
(``image=``/``text=`` win) and returns the manifest ``ParquetSource`` reads. The README and the files
are untrusted: the README is read capped, every path must stay inside the folder, and a bad README,
a file that is not parquet or a schema without images is one line naming the file. It must not read
rows, decode images, or read anything a path from the README points to outside the folder.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from fsspec.implementations.local import LocalFileSystem
from fsspec.utils import glob_translate

from vldata.errors import ShardError, one_line
from vldata.layout import escapes, inside, safe_key

README = "README.md"
README_LIMIT = 1 << 20  # the front matter sits at the top; a longer README is not read further
FOOTER_TAIL = 64 << 10  # one range read holds the footer of almost every file
MAX_FOOTER = 64 << 20  # a longer footer is a broken or hostile file
TEXT_COLUMNS = ("text", "caption", "txt", "description", "alt_text", "prompt", "sentence")
KEY_COLUMNS = ("key", "__key__", "id")

Files = dict[str, int | None]  # relative path -> size in bytes (None: the listing did not say)


def describe(fs, root: str, split: str, image: str | list[str] | None = None,
             text: str | None = None) -> dict | None:
    """The in-memory manifest of the parquet dataset at ``root``, or None when no parquet files are
    there. Every split is listed by name; only ``split`` is described (its footers read)."""
    root = root.rstrip("/")
    listings: dict = {}
    patterns = _config_patterns(fs, root)
    found = _matching(fs, root, patterns, listings) if patterns is not None else _default_layout(fs, root, listings)
    found = {s: files for s, files in found.items() if files}
    if not found:
        return None
    manifest: dict[str, Any] = {"format": "parquet", "builder": safe_key(root.rsplit("/", 1)[-1]), "version": "",
                                "primary_image": "image", "features": {}, "columns": {"text": None, "key": None},
                                "splits": {s: {} for s in found}}
    if split in found:
        _describe_split(fs, root, split, found[split], image, text, manifest)
    return manifest


# --------------------------------------------------------------------------------------------
# Which files: the README's configs, else push_to_hub's folders


def _front_matter(fs, root: str) -> dict:
    """The README's YAML front matter ({} when there is no README or no front matter)."""
    url = f"{root}/{README}"
    problem = escapes(root, url) if isinstance(fs, LocalFileSystem) else None
    if problem:  # a link out of the folder, or a FIFO that would never end
        raise ValueError(problem)
    try:
        head = fs.cat_file(url, start=0, end=README_LIMIT)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError):
        return {}
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff")
    if not re.match(r"---[ \t]*\r?\n", text):
        return {}
    m = re.match(r"---[ \t]*\r?\n(.*?)^---[ \t]*$", text, re.DOTALL | re.MULTILINE)
    if m is None:
        raise ValueError(f"{url}: its front matter does not end (no closing ---) within {README_LIMIT} bytes")
    try:
        doc = yaml.safe_load(m.group(1))
    except Exception as e:  # noqa: BLE001 - untrusted text: any parser failure is the README's
        raise ValueError(f"{url}: its front matter is not valid YAML ({one_line(e, 200)})") from None
    if doc is not None and not isinstance(doc, dict):
        raise ValueError(f"{url}: its front matter is not a mapping")
    return doc or {}


def _config_patterns(fs, root: str) -> dict[str, list[str]] | None:
    """Split -> data-file patterns (relative to ``root``) of the README's default config; None when
    the README names no data files. A pattern that leads outside the folder is refused."""
    configs = _front_matter(fs, root).get("configs")
    if configs is None:
        return None
    where = f"{root}/{README}"
    if not isinstance(configs, list) or not configs or not all(isinstance(c, dict) for c in configs):
        raise ValueError(f"{where}: 'configs' is not a list of mappings")
    config = next((c for c in configs if c.get("config_name") == "default"), None) \
        or next((c for c in configs if c.get("default") is True), configs[0])
    data_files, data_dir = config.get("data_files"), config.get("data_dir") or ""
    if data_files is None:
        return None
    if isinstance(data_files, dict):
        entries = list(data_files.items())
    elif isinstance(data_files, list):
        entries = [(f.get("split", "train"), f.get("path")) if isinstance(f, dict) else ("train", f) for f in data_files]
    else:
        entries = [("train", data_files)]
    patterns: dict[str, list[str]] = {}
    for split, paths in entries:
        for pattern in paths if isinstance(paths, list) else [paths]:
            if not isinstance(pattern, str) or not isinstance(data_dir, str) or not isinstance(split, (str, int)):
                raise ValueError(  # noqa: TRY004 - a README's wrong value, not a caller's wrong type
                    f"{where}: data_files entry {pattern!r:.80} of split {split!r:.40} is not a path")
            rel = f"{data_dir.strip('/')}/{pattern}" if data_dir else pattern
            if not inside(rel):
                raise ValueError(f"{where}: data_files path {rel!r:.80} points outside the folder")
            patterns.setdefault(str(split), []).append(posixpath.normpath(rel))
    return patterns


def _listing(fs, root: str, base: str, depth: int | None, listings: dict) -> Files:
    """Files under ``root/base`` down to ``depth`` folders (relative to ``root``), listed once."""
    if (base, depth) not in listings:
        try:
            found = fs.find(f"{root}/{base}" if base else root, maxdepth=depth, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            found = {}
        listings[base, depth] = {
            path[len(root) + 1:]: info.get("size") for path, info in found.items()
            if path.startswith(root + "/") and inside(path[len(root) + 1:]) and info.get("type") != "directory"}
    return listings[base, depth]


def _matching(fs, root: str, patterns: dict[str, list[str]], listings: dict) -> dict[str, Files]:
    """The parquet files each split's patterns match (HF glob rules: ``*`` within a folder, ``**`` across)."""
    out: dict[str, Files] = {}
    for split, globs in patterns.items():
        out[split] = {}
        for pattern in globs:
            magic = re.search(r"[*?\[]", pattern)
            base = pattern[: magic.start() if magic else len(pattern)].rpartition("/")[0]
            depth = None if "**" in pattern else pattern.count("/") - (base.count("/") + 1 if base else 0) + 1
            listing = _listing(fs, root, base, depth, listings)
            if magic is None:  # a file named exactly (a README may list thousands)
                if pattern in listing and pattern.endswith(".parquet"):
                    out[split][pattern] = listing[pattern]
                continue
            regex = re.compile(glob_translate(pattern))
            out[split].update({rel: n for rel, n in listing.items() if regex.match(rel) and rel.endswith(".parquet")})
    return out


def _default_layout(fs, root: str, listings: dict) -> dict[str, Files]:
    """Without configs: ``data/{split}-*.parquet`` (the split is the name up to its first ``-`` or
    ``.``), else ``data/{split}/*.parquet``, else ``{split}/*.parquet``."""
    out: dict[str, Files] = {}
    data = {rel: n for rel, n in _listing(fs, root, "data", 2, listings).items() if rel.endswith(".parquet")}
    flat = {rel: n for rel, n in data.items() if rel.count("/") == 1}
    if flat:
        for rel, n in flat.items():
            split = re.match(r"\w*", rel.split("/")[1]).group()
            if split:
                out.setdefault(split, {})[rel] = n
        return out
    nested = data or {rel: n for rel, n in _listing(fs, root, "", 2, listings).items()
                      if rel.endswith(".parquet") and rel.count("/") == 1}
    for rel, n in nested.items():
        out.setdefault(rel.split("/")[-2], {})[rel] = n
    return out


# --------------------------------------------------------------------------------------------
# What the files hold: footers, schema, the image, text and key columns


def _describe_split(fs, root: str, split: str, files: Files, image, text, manifest: dict) -> None:
    rels = sorted(files)
    urls = [f"{root}/{rel}" for rel in rels]
    if isinstance(fs, LocalFileSystem):
        for url in urls:
            problem = escapes(root, url)
            if problem:
                raise ShardError(problem)
    sizes = [files[rel] for rel in rels]
    unknown = [i for i, n in enumerate(sizes) if n is None]
    for i, n in zip(unknown, fs.sizes([urls[i] for i in unknown]) if unknown else []):
        sizes[i] = n
    shards, first = [], None
    for rel, url, size, meta in zip(rels, urls, sizes, _footers(fs, urls, sizes)):
        schema = _schema(url, meta)
        if first is None:
            first = schema
            features = _features(schema, meta)
            primary, text_column, key_column = _columns(schema, features, image, text, url)
        for column in {primary, text_column, key_column} - {None}:
            i = schema.get_field_index(column)
            if i < 0 or schema.field(i).type != first.field(column).type:
                raise ShardError(f"{url}: column {column!r} is missing or of another type than in {urls[0]}")
        row_groups = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        if any(n < 0 for n in row_groups) or sum(row_groups) != meta.num_rows:
            raise ShardError(f"{url}: its footer's row-group sizes do not add up to its {meta.num_rows} rows")
        shards.append({"path": rel, "num_samples": meta.num_rows, "num_bytes": size, "row_groups": row_groups})
    prefixes = Counter(safe_key(rel.removesuffix(".parquet")) for rel in rels)
    for shard in shards:  # what a key is made of when the row has none: unique per file, stable
        prefix = safe_key(shard["path"].removesuffix(".parquet"))
        shard["key_prefix"] = prefix if prefixes[prefix] == 1 else \
            f"{prefix}-{hashlib.sha1(shard['path'].encode()).hexdigest()[:8]}"
    manifest.update(primary_image=primary, features=features, columns={"text": text_column, "key": key_column})
    manifest["splits"][split] = {"num_samples": sum(s["num_samples"] for s in shards),
                                 "num_bytes": sum(sizes), "shards": shards}


def _footers(fs, urls: list[str], sizes: list[int], batch: int = 256) -> Iterator[pq.FileMetaData]:
    """Each file's footer, read with one range request of its last ``FOOTER_TAIL`` bytes (a second
    for a longer footer). ``batch`` files' reads go out together on async filesystems; only their
    tails are held at a time."""
    for lo in range(0, len(urls), batch):
        chunk, ends = urls[lo: lo + batch], sizes[lo: lo + batch]
        tails = _ranges(fs, chunk, [max(0, n - FOOTER_TAIL) for n in ends], ends)
        longer = {}
        for i, (url, size, tail) in enumerate(zip(chunk, ends, tails)):
            if size < 12 or tail[-4:] != b"PAR1":
                raise ShardError(f"{url}: not a parquet file (it does not end with PAR1)")
            footer = int.from_bytes(tail[-8:-4], "little")
            if footer + 12 > size or footer > MAX_FOOTER:
                raise ShardError(f"{url}: its parquet footer of {footer} bytes does not fit the file ({size} bytes)")
            if footer + 8 > len(tail):
                longer[i] = size - footer - 8
        if longer:
            more = _ranges(fs, [chunk[i] for i in longer], list(longer.values()), [ends[i] for i in longer])
            for i, tail in zip(longer, more):
                tails[i] = tail
        for url, tail in zip(chunk, tails):
            try:
                meta = pq.read_metadata(pa.BufferReader(tail))
            except Exception as e:  # noqa: BLE001 - untrusted bytes: whatever pyarrow raises, the file is broken
                raise ShardError(f"{url}: unreadable parquet footer ({one_line(e, 200)})") from None
            yield meta


def _ranges(fs, urls: list[str], starts: list[int], ends: list[int]) -> list[bytes]:
    datas = fs.cat_ranges(urls, starts, ends, on_error="return")
    for url, start, end, data in zip(urls, starts, ends, datas):
        if isinstance(data, BaseException):
            raise ShardError(f"{url}: unreadable ({one_line(data, 200)})")
        if len(data) != end - start:
            raise ShardError(f"{url}: asked for bytes {start}-{end}, got {len(data)} bytes (changed while read?)")
    return datas


def _schema(url: str, meta: pq.FileMetaData) -> pa.Schema:
    try:
        schema = meta.schema.to_arrow_schema()
    except Exception as e:  # noqa: BLE001 - untrusted footer
        raise ShardError(f"{url}: its parquet schema does not convert to Arrow ({one_line(e, 200)})") from None
    if len(set(schema.names)) != len(schema.names):
        raise ShardError(f"{url}: its schema repeats a column name")
    return schema


def _image_storage(t: pa.DataType) -> bool:
    """How HF stores an Image: struct<bytes: binary, path: string>."""
    return pa.types.is_struct(t) and t.get_field_index("bytes") >= 0 and \
        (pa.types.is_binary(t.field("bytes").type) or pa.types.is_large_binary(t.field("bytes").type))


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _says_image(feature: Any) -> bool:
    """Whether a feature is one Image (not a list of them)."""
    return isinstance(feature, dict) and feature.get("_type") == "Image"


def _feature_of(t: pa.DataType) -> Any:
    """The HF feature a column of this Arrow type stands for, where the file does not say."""
    if _image_storage(t):
        return {"_type": "Image"}
    if (pa.types.is_list(t) or pa.types.is_large_list(t)) and _image_storage(t.value_type):
        return {"_type": "List", "feature": {"_type": "Image"}}
    return {"dtype": "string" if _is_string(t) else str(t), "_type": "Value"}


def _features(schema: pa.Schema, meta: pq.FileMetaData) -> dict:
    """HF features from the file's ``huggingface`` metadata, one per column; where that metadata is
    missing, unreadable or calls a column an Image that is not stored as one, from the Arrow type."""
    try:
        declared = json.loads((meta.metadata or {})[b"huggingface"])["info"]["features"]
    except (KeyError, TypeError, ValueError):
        declared = {}
    declared = declared if isinstance(declared, dict) else {}
    out = {}
    for field in schema:
        given = declared.get(field.name)
        usable = isinstance(given, (dict, list)) and (not _says_image(given) or _image_storage(field.type))
        out[field.name] = given if usable else _feature_of(field.type)
    return out


def _columns(schema: pa.Schema, features: dict, image, text, where: str) -> tuple[str, str | None, str | None]:
    """(image column, text column or None, key column or None). ``image``/``text`` name them; else the
    column ``image`` or the first single Image feature, and the first of ``TEXT_COLUMNS`` holding strings."""
    names = schema.names
    if isinstance(image, (list, tuple)):
        image = next((c for c in image if c in names), image[0] if image else None)
    if image is not None:
        if image not in names:
            raise ValueError(f"{where}: no column {image!r} (columns: {', '.join(names)[:200]})")
        t = schema.field(image).type
        if not (_image_storage(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t)):
            raise ValueError(f"{where}: column {image!r} holds {t}, not encoded images")
        if _image_storage(t) and not _says_image(features[image]):
            features[image] = {"_type": "Image"}
    else:
        images = [c for c in names if _says_image(features[c])]
        if not images:
            raise ValueError(f"{where}: no image column (no Image feature in its schema); name one with image=")
        image = "image" if "image" in images else images[0]
    if text is not None and (text not in names or not _is_string(schema.field(text).type)):
        strings = [c for c in names if _is_string(schema.field(c).type)]
        raise ValueError(f"{where}: no text column {text!r} of strings "
                         f"(string columns: {', '.join(strings)[:200] or 'none'})")
    text = text or next((c for c in TEXT_COLUMNS if c in names and _is_string(schema.field(c).type)), None)
    key = next((c for c in KEY_COLUMNS if c in names and
                (_is_string(schema.field(c).type) or pa.types.is_integer(schema.field(c).type))), None)
    return image, text, key
