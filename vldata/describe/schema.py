"""One schema declaration, many derivations.

A builder declares its output once, as a pydantic ``Record`` subclass. This module walks that model
into a small field tree and derives from it everything else that needs a schema: the Hugging Face
``Features`` (and through them the Arrow schema with its ``huggingface`` metadata), the row that goes
into a parquet shard, the members of a webdataset sample, the card's field table and the Croissant
fields. It never reads files and knows nothing about any particular dataset.

Image fields are encoded, verified ``Image`` values. In Arrow/HF form an image field ``F`` becomes the
HF image struct ``F: struct<bytes, path>`` plus a sibling ``F_info: struct<format, width, height,
sha256>`` (a list of images gives parallel lists), because HF's image struct has no room for metadata.
"""

from __future__ import annotations

import enum
import json
import types
import typing
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, ClassVar, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from vldata.layout import IMAGE_EXTENSIONS, IMAGE_SUFFIXES, KEY_PATTERN, MemberLayout, valid_key  # noqa: F401 (valid_key: re-exported)


class Image(BaseModel):
    """An encoded image that decoded successfully; ``format`` is sniffed from the bytes."""

    model_config = ConfigDict(frozen=True)

    data: bytes = Field(repr=False)
    format: Literal["jpeg", "png", "webp"]
    width: int
    height: int
    sha256: str

    @property
    def ext(self) -> str:
        return IMAGE_EXTENSIONS[self.format]


class Record(BaseModel):
    """Base of every builder's output record: a webdataset-safe ``key`` and the main ``text``.

    Subclasses add their fields; the image field named by ``primary_image`` becomes ``KEY.jpg`` in
    webdataset (whatever its format; see ``layout.PRIMARY_MEMBER``) and is the image column HF
    viewers show first.
    """

    model_config = ConfigDict(extra="forbid")
    primary_image: ClassVar[str] = "image"
    # extra webdataset text members: {member suffix: field}, written as KEY.<suffix>.txt (e.g. the
    # text types of taxonomic datasets, KEY.sci.txt, KEY.com.txt); suffixes are lower case (readers
    # lower-case them), field names need not be; the fields stay in KEY.json as well
    text_members: ClassVar[dict[str, str]] = {}

    key: str = Field(pattern=KEY_PATTERN, description="Unique, deterministic sample key ([A-Za-z0-9_-]).")
    text: str = Field(description="The sample's main text (caption or label-derived sentence).")


# --------------------------------------------------------------------------------------------
# The field tree


_SCALARS: dict[str, str] = {  # arrow type name -> HF Value dtype
    "string": "string", "bool": "bool", "int8": "int8", "int16": "int16", "int32": "int32",
    "int64": "int64", "float": "float32", "double": "float64", "binary": "binary",
}


@dataclass(frozen=True)
class Node:
    """One field of a record: a scalar, an image, a struct or a list."""

    name: str
    kind: str  # "scalar" | "image" | "struct" | "list"
    nullable: bool = False
    description: str = ""
    dtype: str = ""  # HF Value dtype for scalars
    values: tuple[str, ...] = ()  # allowed values of an enum / Literal
    children: tuple[Node, ...] = ()  # struct members
    item: Node | None = None  # list item
    model: type | None = field(default=None, compare=False)  # struct's pydantic model

    def type_name(self) -> str:
        """Human-readable type, as shown in the card's field table."""
        if self.kind == "scalar":
            base = self.dtype
        elif self.kind == "image":
            base = "image"
        elif self.kind == "list":
            base = f"list<{self.item.type_name()}>"
        else:
            base = "struct{" + ", ".join(f"{c.name}: {c.type_name()}" for c in self.children) + "}"
        return base + ("?" if self.nullable else "")


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unions other than Optional[X] are not supported: {annotation!r}")
        return args[0], True
    return annotation, False


def _node(name: str, annotation: Any, description: str = "") -> Node:
    annotation, nullable = _unwrap_optional(annotation)
    arrow_hint = None
    if typing.get_origin(annotation) is typing.Annotated:
        annotation, *meta = typing.get_args(annotation)
        arrow_hint = next((m for m in meta if isinstance(m, pa.DataType)), None)
        annotation, inner_nullable = _unwrap_optional(annotation)
        nullable = nullable or inner_nullable
    common = dict(name=name, nullable=nullable, description=description)
    origin = typing.get_origin(annotation)
    if annotation is Image:
        return Node(kind="image", **common)
    if origin in (list, tuple) or annotation in (list, tuple):
        args = typing.get_args(annotation)
        if origin is tuple and (len(args) != 2 or args[1] is not Ellipsis):
            raise TypeError(f"{name}: use list[X] or tuple[X, ...], not {annotation!r}")
        if not args:
            raise TypeError(f"{name}: a list needs an item type")
        return Node(kind="list", item=_node("item", args[0]), **common)
    if origin is Literal:
        values = typing.get_args(annotation)
        if not all(isinstance(v, str) for v in values):
            raise TypeError(f"{name}: only string Literals are supported")
        return Node(kind="scalar", dtype="string", values=tuple(values), **common)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return Node(kind="scalar", dtype="string", values=tuple(str(m.value) for m in annotation), **common)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        children = tuple(_model_nodes(annotation))
        return Node(kind="struct", children=children, model=annotation, **common)
    base = {str: "string", bool: "bool", int: "int64", float: "float64", bytes: "binary"}.get(annotation)
    if base is None:
        raise TypeError(f"{name}: unsupported field type {annotation!r}")
    if arrow_hint is not None:
        hinted = _SCALARS.get(str(arrow_hint))
        if hinted is None:
            raise TypeError(f"{name}: unsupported arrow type {arrow_hint}")
        base = hinted
    return Node(kind="scalar", dtype=base, **common)


def _model_nodes(model: type[BaseModel]) -> list[Node]:
    hints = typing.get_type_hints(model, include_extras=True)
    nodes = []
    for name, info in model.model_fields.items():
        nodes.append(_node(name, hints[name], info.description or ""))
    names = {n.name for n in nodes}
    for n in nodes:
        if _is_image_like(n) and f"{n.name}_info" in names:
            raise TypeError(f"{model.__name__}: field {n.name}_info collides with the derived info of image {n.name}")
    return nodes


def _is_image_like(node: Node) -> bool:
    return node.kind == "image" or (node.kind == "list" and node.item.kind == "image")


@lru_cache(maxsize=None)
def fields(model: type[BaseModel]) -> tuple[Node, ...]:
    """The field tree of a Record (or any pydantic model)."""
    return tuple(_model_nodes(model))


# --------------------------------------------------------------------------------------------
# Columns: the Arrow/HF view, where each image field F also has F_info

_INFO_MODEL_FIELDS = (("format", "string"), ("width", "int32"), ("height", "int32"), ("sha256", "string"))


def _info_node(image: Node) -> Node:
    info = Node(name=f"{image.name}_info", kind="struct", nullable=image.nullable,
                description=f"Sniffed format, decoded size and sha256 of `{image.name}`.",
                children=tuple(Node(name=n, kind="scalar", dtype=t) for n, t in _INFO_MODEL_FIELDS))
    return info


def columns(nodes: tuple[Node, ...]) -> list[Node]:
    """Nodes as stored: every image field followed by its ``_info`` sibling, recursively."""
    out = []
    for n in nodes:
        n = _with_columns(n)
        out.append(n)
        if n.kind == "image":
            out.append(_info_node(n))
        elif n.kind == "list" and n.item.kind == "image":
            out.append(Node(name=f"{n.name}_info", kind="list", nullable=n.nullable,
                            description=f"Sniffed format, decoded size and sha256 of each of `{n.name}`.",
                            item=_info_node(n.item)))
    return out


def _with_columns(n: Node) -> Node:
    if n.kind == "struct":
        return Node(**{**n.__dict__, "children": tuple(columns(n.children))})
    if n.kind == "list":
        return Node(**{**n.__dict__, "item": _with_columns(n.item)})
    return n


def _feature(n: Node):
    import datasets

    if n.kind == "scalar":
        return datasets.Value(n.dtype)
    if n.kind == "image":
        return datasets.Image()
    if n.kind == "list":
        return datasets.List(_feature(n.item))
    return {c.name: _feature(c) for c in n.children}


def hf_features(model: type[BaseModel]):
    """The Hugging Face ``Features`` of a Record."""
    import datasets

    return datasets.Features({c.name: _feature(c) for c in columns(fields(model))})


def arrow_schema(model: type[BaseModel]) -> pa.Schema:
    """Arrow schema with HF ``huggingface`` metadata; nullability follows the Record."""
    return _arrow_schema_cached(model)


@lru_cache(maxsize=None)
def _arrow_schema_cached(model: type[BaseModel]) -> pa.Schema:
    schema = hf_features(model).arrow_schema
    return schema


# --------------------------------------------------------------------------------------------
# Values: Record -> parquet row, Record -> webdataset sample


def _info_value(img: Image | None) -> dict | None:
    if img is None:
        return None
    return {"format": img.format, "width": img.width, "height": img.height, "sha256": img.sha256}


def _value(node: Node, value: Any) -> Any:
    if value is None:
        return None
    if node.kind == "image":
        return {"bytes": value.data, "path": None}
    if node.kind == "list":
        return [_value(node.item, v) for v in value]
    if node.kind == "struct":
        return _struct_value(node.children, value)
    if isinstance(value, enum.Enum):
        return value.value
    return value


def _struct_value(nodes: tuple[Node, ...], obj: Any) -> dict:
    out = {}
    for n in nodes:
        v = getattr(obj, n.name)
        out[n.name] = _value(n, v)
        if n.kind == "image":
            out[f"{n.name}_info"] = _info_value(v)
        elif n.kind == "list" and n.item.kind == "image":
            out[f"{n.name}_info"] = None if v is None else [_info_value(i) for i in v]
    return out


def to_row(record: Record) -> dict:
    """The parquet row of a record (column order as in ``arrow_schema``)."""
    return _struct_value(fields(type(record)), record)


def _json_value(node: Node, value: Any) -> Any:
    if value is None:
        return None
    if node.kind == "image":
        return _info_value(value)
    if node.kind == "list":
        return [_json_value(node.item, v) for v in value]
    if node.kind == "struct":
        return {_json_name(c): _json_value(c, getattr(value, c.name)) for c in node.children}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, bytes):
        raise TypeError(f"{node.name}: bytes fields cannot go into the webdataset .json member")
    return value


def member_layout(model: type[Record]) -> MemberLayout:
    """How records of ``model`` become webdataset members (see ``layout.MemberLayout``)."""
    return _member_layout_cached(model)


@lru_cache(maxsize=None)
def _member_layout_cached(model: type[Record]) -> MemberLayout:
    nodes = fields(model)
    for suffix, field_name in model.text_members.items():
        node = next((n for n in nodes if n.name == field_name), None)
        if node is None or node.kind != "scalar" or node.dtype != "string":
            raise TypeError(f"{model.__name__}.text_members: {field_name!r} is not a string field")
        if not valid_key(suffix) or suffix == "txt" or suffix != suffix.lower():
            raise TypeError(f"{model.__name__}.text_members: bad member suffix {suffix!r} "
                            "([a-z0-9_-], lower case, not 'txt')")
    images = tuple(n.name for n in nodes if _is_image_like(n))
    lists = tuple(n.name for n in nodes if n.kind == "list" and n.item.kind == "image")
    for name in images:  # the primary is KEY.jpg; the others are named by their field
        if name != model.primary_image and name != name.lower():
            raise TypeError(f"{model.__name__}.{name}: an image field's name is a webdataset member suffix "
                            "and must be lower case")
    return MemberLayout(model.primary_image, images, lists, tuple(model.text_members.items()))


def image_members(record: Record) -> list[tuple[str, bytes]]:
    """Webdataset image members of a record as (suffix, bytes), in the order they are written."""
    members = member_layout(type(record)).members(to_row(record), b"")
    return [(suffix, data) for suffix, data in members.items() if suffix.rpartition(".")[2] in IMAGE_SUFFIXES]


def json_fields(model: type[Record]) -> tuple[Node, ...]:
    """The fields that go into the webdataset ``.json`` member (all but key and text)."""
    return tuple(n for n in fields(model) if n.name not in ("key", "text"))


def to_json_bytes(record: Record) -> bytes:
    """The ``KEY.json`` member: every field but key and text; images appear as their info."""
    doc = {_json_name(n): _json_value(n, getattr(record, n.name)) for n in json_fields(type(record))}
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def wds_json_features(model: type[Record]) -> dict:
    """HF features of the decoded ``.json`` member."""
    return {_json_name(n): _feature(_json_node(n)) for n in json_fields(model)}


def _json_name(n: Node) -> str:
    return f"{n.name}_info" if _is_image_like(n) else n.name


def _json_node(n: Node) -> Node:
    """Node as it appears in JSON: images (at any depth) replaced by their info struct."""
    if n.kind == "image":
        return _info_node(n)
    if n.kind == "list":
        return Node(**{**n.__dict__, "item": _json_node(n.item)})
    if n.kind == "struct":
        return Node(**{**n.__dict__, "children": tuple(
            Node(**{**_json_node(c).__dict__, "name": _json_name(c)}) for c in n.children)})
    return n


def wds_features(model: type[Record], image_suffixes: list[str]):
    """HF features of a webdataset folder: one image column per image member suffix actually
    written (``jpg`` for the primary image whatever its format, then e.g. ``image_2.png``), ``txt``,
    the extra text members and ``json``. Member suffixes are lower case (``layout.MemberLayout``);
    the field names inside ``json`` are the Record's, as in parquet."""
    import datasets

    feats = {"__key__": datasets.Value("string"), "__url__": datasets.Value("string")}
    feats.update({s: datasets.Image() for s in image_suffixes})
    feats["txt"] = datasets.Value("string")
    feats.update({f"{suffix}.txt": datasets.Value("string") for suffix in model.text_members})
    feats["json"] = wds_json_features(model)
    return datasets.Features(feats)


# --------------------------------------------------------------------------------------------
# Documentation views


def field_table(model: type[BaseModel]) -> list[dict]:
    """Rows of the card's field table: name (dotted for nested), type, nullable, description."""
    rows: list[dict] = []

    def walk(nodes, prefix):
        for n in nodes:
            desc = n.description
            if n.values:
                desc = (desc + " " if desc else "") + "Values: " + ", ".join(f"`{v}`" for v in n.values) + "."
            rows.append({"name": prefix + n.name, "type": n.type_name(), "nullable": n.nullable,
                         "description": desc})
            inner = n.item if n.kind == "list" else n
            if inner.kind == "struct":
                walk(inner.children, prefix + n.name + ("[]." if n.kind == "list" else "."))

    walk(columns(fields(model)), "")
    return rows


_CROISSANT_TYPES = {
    "string": "sc:Text", "bool": "sc:Boolean", "int8": "sc:Integer", "int16": "sc:Integer",
    "int32": "sc:Integer", "int64": "sc:Integer", "float32": "sc:Float", "float64": "sc:Float",
    "binary": "sc:Text",
}


def croissant_fields(model: type[BaseModel], record_set: str, source: dict,
                     layout: Literal["parquet", "json"] = "parquet") -> list[dict]:
    """Croissant ``cr:Field`` entries of a Record; structs become ``subField``s and lists are marked
    ``repeated``. ``source`` is the file set reference, e.g. ``{"fileSet": {"@id": "x"}}``.

    ``layout="parquet"`` describes the parquet columns (each image field's bytes are its struct's
    ``bytes``); ``layout="json"`` describes the webdataset ``.json`` member (no key/text, images as
    their info struct).
    """

    def field_of(n: Node, path: str, value_path: list[str]) -> dict:
        inner = n
        while inner.kind == "list":  # Croissant has one ``repeated`` flag: a list of lists is repeated too
            inner = inner.item
        f: dict[str, Any] = {"@type": "cr:Field", "@id": f"{record_set}/{path}", "name": path,
                             "description": n.description or n.name}
        if inner.kind == "struct":
            f["subField"] = [field_of(c, f"{path}/{c.name}", value_path + [c.name]) for c in inner.children]
        else:
            f["dataType"] = "sc:ImageObject" if inner.kind == "image" else _CROISSANT_TYPES[inner.dtype]
        if inner.kind == "image":
            value_path = value_path + ["bytes"]  # HF image struct {bytes, path}
        # the top-level value is extracted (a column, or a key of the JSON member); nested values
        # are reached by a jsonPath transform of it, which is how mlcroissant reads sub-fields
        extract = {"jsonPath": f"$.{value_path[0]}"} if layout == "json" else {"column": value_path[0]}
        src = {**source, "extract": extract}
        if len(value_path) > 1:
            src["transform"] = {"jsonPath": "$." + ".".join(value_path[1:])}
        f["source"] = src
        if n.kind == "list":
            f["repeated"] = True
        return f

    if layout == "json":
        nodes = [Node(**{**_json_node(n).__dict__, "name": _json_name(n)}) for n in json_fields(model)]
    elif layout == "parquet":
        nodes = columns(fields(model))
    else:
        raise ValueError(f"unknown layout {layout!r}")
    return [field_of(n, n.name, [n.name]) for n in nodes]
