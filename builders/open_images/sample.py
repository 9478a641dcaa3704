"""Open Images' synthetic raw input: annotation files, class files, hierarchy, narratives, split folders
and train tarballs in the real layout, with the real quirks.

Written for the demo and the tests (``OpenImagesBuilder.write_sample``); pictures and CSVs are made
with ``vldata.ingest.synthetic``. Nothing here is used while building real data, and it must not
parse: the columns it writes are those of ``files.REQUIRED`` and ``annotations``.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
import zipfile
from pathlib import Path

from PIL import Image as PILImage

from vldata.ingest import synthetic

from .annotations import FLAGS, XCLICK
from .files import REQUIRED

CLASSES = [("/m/0bt9lr", "Dog"), ("/m/018xm", "Ball"), ("/m/08t9c_", "Grass"), ("/m/01g317", "Person"),
           ("/m/0k4j", "Car"), ("/m/014j1m", "Apple"), ("/m/02wvth", 'Fiat 500 "topolino"'),
           ("/m/03hgsf0", "Lemon, lime and bitters"), ("/m/083wq", "Wheel")]
TRAINABLE = ["/m/0bt9lr", "/m/018xm", "/m/08t9c_", "/m/01g317", "/m/014j1m", "/m/0jbk"]  # /m/0jbk: in no class file
HIERARCHY = {"LabelName": "/m/0bl9f", "Subcategory": [
    {"LabelName": "/m/0bt9lr"}, {"LabelName": "/m/018xm"},
    {"LabelName": "/m/0k4j", "Subcategory": [{"LabelName": "/m/02wvth"}], "Part": [{"LabelName": "/m/083wq"}]},
    {"LabelName": "/m/01g317"}]}
ATTRIBUTES = [("/m/02gy9n", "Transparent"), ("/m/083vt", "Wooden")]
INFO_HEADER = ["ImageID", "Subset", "OriginalURL", "OriginalLandingURL", "License", "AuthorProfileURL", "Author",
               "Title", "OriginalSize", "OriginalMD5", "Thumbnail300KURL", "Rotation"]
BOX_HEADER = ["ImageID", "Source", "LabelName", "Confidence", "XMin", "XMax", "YMin", "YMax", *FLAGS]
LEADING_ZEROS_ID = "000060e3121c7305"
ORPHAN_NARRATIVE_ID = "00000000000000bb"  # a narrated image in no image-info file
NARRATIVE_CAPTIONS = ["In this picture we can see a dog on the grass.\nThe dog is called Zoë and holds a ball.",
                      "A dog with a ball \u2014 on grass."]


def _jpeg(rng: random.Random) -> bytes:
    return synthetic.encode(synthetic.blank(rng, (24, 64)), "JPEG", quality=80)


def _narrative(split: str, image_id: str, annotator: int, caption: str) -> dict:
    """One localized narrative (docs/RAW_FORMATS.md §3.4) with times and coordinates exact in float32."""
    words = caption.split()
    traces = [[{"x": (s * 5 + i) / 16, "y": i / 32, "t": (s * 4 + i) / 8} for i in range(3 + s)] for s in range(2)]
    traces[0][0]["x"] = -1 / 128  # traces may leave the image a little
    return {"dataset_id": "open_images", "image_id": image_id, "annotator_id": annotator, "caption": caption,
            "timed_caption": [{"utterance": w, "start_time": i / 2, "end_time": i / 2 + 0.375}
                              for i, w in enumerate(words)],
            "traces": traces, "voice_recording": f"open_images_{split}/open_images_{split}_{image_id}_{annotator}.ogg"}


def write_sample(raw: Path, n: int = 12, seed: int = 0, boxes_per_image: int = 2) -> None:
    """Write the real layout: image-info, class, bbox, label, vrd, segmentation (+ mask zip) and V7
    point CSVs, trainable classes, the hierarchy JSON and localized-narratives JSON lines at the raw
    root; validation/test images as ``<split>/<ImageID>.jpg`` folders, train images in
    ``tar/train_<x>.tar.gz``. ``boxes_per_image`` (at least 2) sizes the bbox files for benchmarks.

    Quirks: V4/V5 class file without header, V7 class file with header (a name with a comma and one
    with quotes); a human Confidence 0 negative; -1 sentinels in box flags and XClick of an activemil
    box; XClick columns in the train bbox file only; Rotation as 0.0/90.0/blank/nan; ImageID with
    leading zeros; a validation image file missing; V7 points with ``ImageId``; a Title with comma,
    quotes and Unicode; one malformed info row (ImageID not hex) and one with Rotation ``abc``; a
    narrative for every other image (train narratives in two of the ten upstream files), two from two
    annotators for the leading-zeros image (a newline and non-ASCII in a caption), one for an image in
    no image-info file.
    """
    rng = random.Random(seed)
    raw = Path(raw)
    raw.mkdir(parents=True, exist_ok=True)
    splits = {"train": [], "validation": [], "test": []}
    for i in range(n):
        iid = LEADING_ZEROS_ID if i == 0 else f"{rng.getrandbits(64):016x}"
        splits[("train", "train", "validation", "test")[i % 4]].append(iid)
    rotations = ["0.0", "90.0", "", "nan", "0.0", "270.0"]
    synthetic.write_csv(raw / "class-descriptions-boxable.csv", None, [list(c) for c in CLASSES[:5]])
    synthetic.write_csv(raw / "oidv7-class-descriptions.csv", ["LabelName", "DisplayName"], [list(c) for c in CLASSES])
    synthetic.write_csv(raw / "oidv6-attributes-description.csv", None, [list(a) for a in ATTRIBUTES])
    (raw / "oidv7-classes-trainable.txt").write_text("".join(m + "\n" for m in TRAINABLE))
    (raw / "bbox_labels_600_hierarchy.json").write_text(json.dumps(HIERARCHY, indent=1))
    narratives: dict[str, list[dict]] = {}
    tars: dict[str, list[tuple[str, bytes]]] = {}
    for split, ids in splits.items():
        info, human, machine, boxes, vrd, seg, points = [], [], [], [], [], [], []
        for j, iid in enumerate(ids):
            title = 'Dog, "ball" & grass — Zürich' if j == 0 else f"photo {j}"
            info.append([iid, split, f"https://farm.example/{iid}_o.jpg", f"https://www.flickr.com/photos/u/{j}",
                         "https://creativecommons.org/licenses/by/2.0/", "https://www.flickr.com/people/u/",
                         f"Author {j}", title, str(100000 + j), "0Sad+xMj2ttXM1U8meEJ0A==",
                         "" if j % 2 else f"https://c1.example/{iid}_z.jpg", rotations[(j + len(split)) % 6]])
            human += [[iid, "verification", "/m/0bt9lr", "1"], [iid, "verification", "/m/014j1m", "0"],
                      [iid, "crowdsource-verification", "/m/018xm", "1"], [iid, "verification", "/m/08t9c_", "1"]]
            machine.append([iid, "machine", "/m/0k4j", "0.7"])
            flags = ["0", "1", "0", "0", "0"]
            box = [iid, "xclick", "/m/0bt9lr", "1", "0.0125", "0.195312", "0.148438", "0.5875", *flags]
            box2 = [iid, "activemil", "/m/018xm", "1", "0.2", "0.6", "0.3", "0.9", "0", "-1", "0", "-1", "-1"]
            if split == "train":
                box += ["0.148438", "0.0125", "0.059375", "0.195312", "0.148438", "0.357812", "0.5875", "0.325"]
                box2 += ["-1"] * 8
            boxes += [box, box2]
            for e in range(boxes_per_image - 2):
                corner = (e % 8) / 16
                boxes.append([iid, "freeform", CLASSES[e % 5][0], "1", str(corner), str(corner + 0.25),
                              str(corner / 2), str(corner / 2 + 0.5), "0", "0", "0", "0", "0"]
                             + (["-1"] * 8 if split == "train" else []))
            if j % 2 == 0:
                shard = "train_v6_localized_narratives-00000-of-00010" if split == "train" else \
                    f"{split}_localized_narratives"
                narratives.setdefault(shard, []).append(_narrative(split, iid, 10 + j % 7, NARRATIVE_CAPTIONS[0]
                                                                   if iid == LEADING_ZEROS_ID else f"a photo {j}"))
            vrd.append([iid, "/m/0bt9lr", "/m/02gy9n", "0.1", "0.5", "0.2", "0.9", "0.1", "0.5", "0.2", "0.9", "is"])
            seg.append([f"{iid}_m0bt9lr_9a041d52.png", iid, "/m/0bt9lr", "9a041d52", "0.0125", "0.195312",
                        "0.148438", "0.5875", "0.86864", "0.95498 0.65197 1;0.89370 0.56579 0"])
            points.append([iid, "0.5", "0.25", "/m/0bt9lr", "yes", "ih", "3", "0", "1", "dog"])
            jpeg = _jpeg(rng)
            if split == "validation" and j == 1:
                continue  # this image file is missing
            if split == "train":
                tars.setdefault(f"train_{iid[0]}", []).append((f"train/{iid}.jpg", jpeg))
            else:
                (raw / split).mkdir(exist_ok=True)
                (raw / split / f"{iid}.jpg").write_bytes(jpeg)
        if split == "validation":
            info.append(["not-an-image-id", split] + [""] * 10)
        if split == "test":
            info.append([f"{rng.getrandbits(64):016x}", split] + [""] * 9 + ["abc"])
        name = "train-images-boxable-with-rotation.csv" if split == "train" else f"{split}-images-with-rotation.csv"
        synthetic.write_csv(raw / name, INFO_HEADER, info)
        bbox_header = BOX_HEADER + (list(XCLICK) if split == "train" else [])
        synthetic.write_csv(raw / ("oidv6-train-annotations-bbox.csv" if split == "train" else f"{split}-annotations-bbox.csv"),
                   bbox_header, boxes)
        synthetic.write_csv(raw / f"{split}-annotations-human-imagelabels-boxable.csv",
                   ["ImageID", "Source", "LabelName", "Confidence"], human)
        synthetic.write_csv(raw / f"{split}-annotations-machine-imagelabels.csv",
                   ["ImageID", "Source", "LabelName", "Confidence"], machine)
        synthetic.write_csv(raw / f"oidv6-{split}-annotations-vrd.csv", list(REQUIRED["vrd"]), vrd)
        synthetic.write_csv(raw / f"{split}-annotations-object-segmentation.csv",
                   [*REQUIRED["seg"], "PredictedIoU", "Clicks"], seg)
        synthetic.write_csv(raw / f"oidv7-{'val' if split == 'validation' else split}-annotations-point-labels.csv",
                   ["ImageId", "X", "Y", "Label", "EstimatedYesNo", "Source", "YesVotes", "NoVotes", "UnsureVotes",
                    "TextLabel"], points)
        if split == "train":
            by_zip: dict[str, list] = {}
            for r in seg:
                by_zip.setdefault(r[1][0], []).append(r[0])
            for x, paths in sorted(by_zip.items()):
                (raw / "train-masks").mkdir(exist_ok=True)
                with zipfile.ZipFile(raw / "train-masks" / f"train-masks-{x}.zip", "w") as z:
                    for mp in paths:
                        z.writestr(zipfile.ZipInfo(mp, (2024, 1, 1, 0, 0, 0)),
                                   synthetic.encode(PILImage.new("L", (16, 16), 255), "PNG", "L"))
    narratives["train_v6_localized_narratives-00001-of-00010"] = [
        _narrative("train", LEADING_ZEROS_ID, 2, NARRATIVE_CAPTIONS[1])]
    narratives.setdefault("validation_localized_narratives", []).append(
        _narrative("validation", ORPHAN_NARRATIVE_ID, 3, "no image"))
    for shard, rows in narratives.items():
        with open(raw / f"open_images_{shard}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    (raw / "tar").mkdir(exist_ok=True)
    for name, members in sorted(tars.items()):
        with tarfile.open(raw / "tar" / f"{name}.tar.gz", "w:gz") as t:
            for mname, data in members:
                info = tarfile.TarInfo(mname)
                info.size, info.mtime = len(data), 1700000000
                t.addfile(info, io.BytesIO(data))
