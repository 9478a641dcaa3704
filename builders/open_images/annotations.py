"""Open Images' annotation kinds: one struct per kind (a record's ``boxes``, ``labels_human``, ...) and
how the spilled annotation rows of one image become them.

Boxes keep the upstream ``XMin,XMax,YMin,YMax`` order and ``-1`` flags; human labels keep confidence 0
(a verified negative); a relationship ``is`` names its ``label2`` from the attribute descriptions;
masks take their PNG from the masks zips when given (a member over ``image.max_bytes`` by its header is
not read: noted ``mask_member_too_large``; one that does not decode, ``mask_member_corrupt``); narratives
follow docs/RAW_FORMATS.md §3.4. A row that does not parse (an integer out of its column's range
included) is noted as ``malformed_<kind>_row`` and left out; the record is still built.

It reads only what it is handed (rows, open masks zips): it must not look at the raw folder or decide
the record's key, text or failure (the builder in ``__init__`` does), and does no sharding, retries or
format code.
"""

from __future__ import annotations

from typing import Annotated

import pyarrow as pa
from pydantic import BaseModel, Field

from vldata import Image, RowContext

from .containers import BadRow, read_zip_member

F32 = Annotated[float, pa.float32()]
I8 = Annotated[int, pa.int8()]
I32 = Annotated[int, pa.int32()]
I64 = Annotated[int, pa.int64()]

XCLICK = ("XClick1X", "XClick2X", "XClick3X", "XClick4X", "XClick1Y", "XClick2Y", "XClick3Y", "XClick4Y")
FLAGS = ("IsOccluded", "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside")


class Label(BaseModel):
    label: str = Field(description="Class MID (/m/...).")
    display_name: str | None = Field(description="Class display name, null when the MID is in no class file.")
    source: str = Field(description="verification, crowdsource-verification, machine, ...")
    confidence: F32 = Field(description="Human: 1 positive, 0 verified negative. Machine: fractional score.")


class Box(BaseModel):
    label: str
    display_name: str | None
    source: str
    confidence: F32
    xmin: F32
    xmax: F32
    ymin: F32
    ymax: F32
    is_occluded: I8 = Field(description="1 yes, 0 no, -1 unknown.")
    is_truncated: I8
    is_group_of: I8
    is_depiction: I8
    is_inside: I8
    xclick: list[F32] | None = Field(description="XClick1X..4X, XClick1Y..4Y in file order; null if absent.")


class Relationship(BaseModel):
    label1: str
    label2: str = Field(description="Class MID, or an attribute MID when relationship is 'is'.")
    display_name1: str | None
    display_name2: str | None = Field(description="Class or attribute display name.")
    box1: list[F32] = Field(description="[xmin, xmax, ymin, ymax]")
    box2: list[F32]
    relationship: str


class Mask(BaseModel):
    mask_path: str
    label: str
    box_id: str
    box: list[F32] = Field(description="[xmin, xmax, ymin, ymax]")
    predicted_iou: F32 | None
    clicks: str | None
    mask_index: I32 | None = Field(description="Index into mask_images of this mask's PNG; null when not given.")


class Point(BaseModel):
    x: F32
    y: F32
    label: str
    display_name: str | None
    estimated_yes_no: str | None
    source: str | None
    yes_votes: I32 | None
    no_votes: I32 | None
    unsure_votes: I32 | None
    text_label: str | None


class Utterance(BaseModel):
    utterance: str
    start_time: F32 = Field(description="Seconds into the voice recording.")
    end_time: F32


class TracePoint(BaseModel):
    x: F32 = Field(description="Normalized image coordinate (may fall slightly outside [0, 1]).")
    y: F32
    t: F32 = Field(description="Seconds into the voice recording.")


class Narrative(BaseModel):
    annotator_id: I32
    caption: str = Field(description="Transcribed narrative, as upstream (may hold newlines).")
    timed_caption: list[Utterance]
    traces: list[list[TracePoint]] = Field(description="Mouse-trace segments, each a list of points in time order.")
    voice_recording: str | None = Field(description="Relative path of the .ogg under the voice-recordings root.")


def opt_float(v: str | None) -> float | None:
    if v is None or v.strip() == "" or v.strip().lower() == "nan":
        return None
    return float(v)


def opt_int(v: str | None, bits: int = 32) -> int | None:
    if v is None or v.strip() == "":
        return None
    return int(fits(float(v), bits))


def fits(v, bits: int):
    """``v`` itself; ValueError when it is a number outside a signed ``bits``-bit column (or NaN), so
    that it fails here rather than overflow when the part is written."""
    if isinstance(v, (int, float)) and not isinstance(v, bool) and not abs(v) < 2.0 ** (bits - 1):
        raise ValueError(f"{v!r} does not fit {bits} bits")
    return v


def opt_str(v: str | None) -> str | None:
    return None if v is None or v == "" else v



def annotations(ann: dict[str, list], classes: dict[str, str], attributes: dict[str, str], zips: list,
                ctx: RowContext) -> dict[str, list]:
    """The annotation fields of one record from its rows ``{kind: [(ref, row), ...]}``, kinds in name
    order and rows in file order; ``classes`` and ``attributes`` map MIDs to display names."""
    def name(mid):
        return classes.get(mid)

    human, machine, boxes, rels, masks, points, narratives, mask_images = [], [], [], [], [], [], [], []
    for kind, rows in sorted(ann.items()):
        for aref, a in rows:
            try:
                if kind in ("human", "machine"):
                    (human if kind == "human" else machine).append(Label(
                        label=a["LabelName"], display_name=name(a["LabelName"]),
                        source=a.get("Source") or kind, confidence=float(a["Confidence"])))
                elif kind == "boxes":
                    xclick = None
                    if all(opt_str(a.get(c)) is not None for c in XCLICK):
                        xclick = [float(a[c]) for c in XCLICK]
                    boxes.append(Box(
                        label=a["LabelName"], display_name=name(a["LabelName"]), source=a.get("Source") or "",
                        confidence=float(a.get("Confidence") or 1),
                        xmin=float(a["XMin"]), xmax=float(a["XMax"]), ymin=float(a["YMin"]), ymax=float(a["YMax"]),
                        **{f: fits(int(a.get(c) or -1), 8) for f, c in zip(
                            ("is_occluded", "is_truncated", "is_group_of", "is_depiction", "is_inside"), FLAGS)},
                        xclick=xclick))
                elif kind == "vrd":
                    rel = a["RelationshipLabel"]
                    rels.append(Relationship(
                        label1=a["LabelName1"], label2=a["LabelName2"], display_name1=name(a["LabelName1"]),
                        display_name2=(attributes.get(a["LabelName2"]) if rel == "is" else None)
                        or name(a["LabelName2"]),
                        box1=[float(a[c]) for c in ("XMin1", "XMax1", "YMin1", "YMax1")],
                        box2=[float(a[c]) for c in ("XMin2", "XMax2", "YMin2", "YMax2")], relationship=rel))
                elif kind == "seg":
                    mask = None
                    for z in zips:
                        mask = read_zip_member(z, a["MaskPath"], ctx.config.image.max_bytes)
                        if mask is not None:
                            break
                    if zips and mask is None:
                        ctx.note("mask_png_missing")
                    elif isinstance(mask, BadRow):  # mask_member_too_large, mask_member_corrupt
                        ctx.note(f"mask_{mask.reason}")
                        mask = None
                    mask_index = None
                    if mask is not None:
                        mimg = ctx.image(mask)
                        if isinstance(mimg, Image):
                            mask_index = len(mask_images)
                            mask_images.append(mimg)
                        else:
                            ctx.note(f"mask_{mimg.reason}")
                    masks.append(Mask(
                        mask_path=a["MaskPath"], label=a["LabelName"], box_id=a["BoxID"],
                        box=[float(a[c]) for c in ("BoxXMin", "BoxXMax", "BoxYMin", "BoxYMax")],
                        predicted_iou=opt_float(a.get("PredictedIoU")), clicks=opt_str(a.get("Clicks")),
                        mask_index=mask_index))
                elif kind == "points":
                    points.append(Point(
                        x=float(a["X"]), y=float(a["Y"]), label=a["Label"], display_name=name(a["Label"]),
                        estimated_yes_no=opt_str(a.get("EstimatedYesNo")), source=opt_str(a.get("Source")),
                        yes_votes=opt_int(a.get("YesVotes")), no_votes=opt_int(a.get("NoVotes")),
                        unsure_votes=opt_int(a.get("UnsureVotes")), text_label=opt_str(a.get("TextLabel"))))
                elif kind == "narratives":
                    narratives.append(Narrative(
                        annotator_id=fits(a["annotator_id"], 32), caption=a["caption"], timed_caption=a["timed_caption"],
                        traces=a["traces"],
                        voice_recording=a.get("voice_recording") or None))
            except (ValueError, KeyError, TypeError):
                ctx.note(f"malformed_{kind}_row")
    return {"labels_human": human, "labels_machine": machine, "boxes": boxes, "relationships": rels,
            "masks": masks, "points": points, "narratives": narratives, "mask_images": mask_images}
