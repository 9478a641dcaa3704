"""The ``vldata`` command: list, sample, build, inspect, validate, publish, index, select, export-uids.

Structural problems (unknown builder, missing file or column, bad ``--set``) exit with status 2 and
one line on stderr before any work starts; row-level problems are counted, never fatal.
It parses arguments and prints; it must not hold logic of its own (each command is one call into
``vldata.write``, ``vldata.tools`` or, for ``index``, ``vldata.read``), and only list, sample and build
load the build side.
"""

from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path

from vldata.errors import BuildInterrupted, ShardError, StructuralError


def parse_settings(items: list[str]) -> dict:
    """``["view=image", "image.max_pixels=100"]`` -> ``{"view": "image", "image": {"max_pixels": "100"}}``."""
    config: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise StructuralError(f"--set expects KEY=VALUE, got {item!r}")
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise StructuralError(f"--set {key}: {p} is not a group of settings")
        node[leaf] = value
    return config


def parse_size(text: str) -> int:
    """``"500MB"`` -> bytes (B, KB, MB, GB, TB; powers of 1024)."""
    units = {"TB": 1 << 40, "GB": 1 << 30, "MB": 1 << 20, "KB": 1 << 10, "B": 1}
    t = text.strip().upper()
    for unit, factor in units.items():
        if t.endswith(unit):
            number = t[: -len(unit)].strip()
            break
    else:
        number, factor = t, 1
    try:
        value = int(float(number) * factor)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return value


def parse_shuffle(text: str) -> int | None:
    """``"none"`` -> None (input order); a seed -> that seed."""
    if text.strip().lower() == "none":
        return None
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a seed or 'none': {text!r}") from None
    if seed < 0:
        raise argparse.ArgumentTypeError(f"a seed must be >= 0: {text!r}")
    return seed


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vldata", description="Build, check and inspect vision-language datasets.")
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="installed builders: name, version, summary")
    p = sub.add_parser("sample", help="write a small synthetic raw input in a builder's real layout")
    p.add_argument("name"), p.add_argument("raw", type=Path)
    p.add_argument("--n", type=int, default=24), p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("build", help="build a dataset from its raw files")
    p.add_argument("name")
    p.add_argument("--raw", required=True, help="raw input folder (a local path or an fsspec URL)")
    p.add_argument("--out", required=True, help="output folder (a local path or an fsspec URL)")
    p.add_argument("--format", choices=["parquet", "webdataset", "both"], default="both")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local processes, or Ray tasks (RAY_ADDRESS names a cluster; else a local Ray)")
    p.add_argument("--resume", action="store_true", help="finish an interrupted build in OUT")
    p.add_argument("--overwrite", action="store_true", help="replace an existing build in OUT")
    p.add_argument("--limit", type=int, default=None, help="only the first N input rows")
    p.add_argument("--shuffle", type=parse_shuffle, default=0, metavar="SEED|none",
                   help="order of the samples in the shards: a seeded random permutation (default seed 0), "
                        "the same whatever the workers; 'none' keeps the input order")
    p.add_argument("--parquet-shard-size", type=parse_size, default="500MB", help="target parquet shard size")
    p.add_argument("--tar-shard-size", type=parse_size, default="1GB", help="target webdataset shard size")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE")
    p = sub.add_parser("inspect", help="summary of a built dataset: counts, sizes, field statistics, histograms")
    p.add_argument("out", type=Path)
    p.add_argument("--png", type=Path, help="also write a contact sheet of samples (thumbnails with their text)")
    p.add_argument("--html", type=Path, help="also write the summary and the samples as one HTML page")
    p.add_argument("--n", type=int, default=16, help="samples on the contact sheet, evenly spaced (default 16)")
    p = sub.add_parser("validate", help="re-read every shard and check manifest, schema, card, croissant")
    p.add_argument("out", help="OUT or a format folder (a local path or an fsspec URL)")
    p = sub.add_parser("publish", help="upload a build to Hugging Face Hub dataset repos (ORG/NAME, ORG/NAME-wds)")
    p.add_argument("out", type=Path, help="OUT, OUT/parquet or OUT/webdataset")
    p.add_argument("--repo", required=True, metavar="ORG/NAME", help="parquet repo; webdataset goes to ORG/NAME-wds")
    p.add_argument("--private", action="store_true", help="create the repos private")
    p.add_argument("--revision", default=None, metavar="REV", help="branch to commit to (created if missing)")
    p.add_argument("--dry-run", action="store_true", help="print the plan; no network")
    p = sub.add_parser("index", help="index plain webdataset tars (img2dataset, DataComp, ...) for vldata.open")
    p.add_argument("path", help="a folder of tars, a prefix (.../shard-) or a brace pattern (.../{00000..00009}.tar); "
                                "local or an fsspec URL")
    p.add_argument("--index-dir", default=None, help="where the index goes (default: next to the tars; "
                                                      "required for remote tars)")
    p.add_argument("--image", default=None, metavar="'jpg;png'", help="primary image members, in order of "
                                                                      "preference (default 'jpg;jpeg;png;webp')")
    p.add_argument("--text", default=None, metavar="txt", help="the text member (default txt)")
    p = sub.add_parser("select", help="choose samples of a build by a rule; stored as subsets/NAME.parquet, "
                                      "shards untouched")
    p.add_argument("out", help="the build (OUT, a local folder)")
    p.add_argument("name", help="the subset's name (letters, digits, _ and -)")
    rule = p.add_mutually_exclusive_group(required=True)
    rule.add_argument("--metaclip", metavar="ENTRIES", help="MetaCLIP: substring matching against ENTRIES (one "
                      "per line, or MetaCLIP's metadata JSON list), then balancing with --t")
    rule.add_argument("--datacomp-basic", action="store_true", help="DataComp's basic filter: English caption, "
                      "> 2 words, > 5 characters, shorter side >= 200, aspect ratio <= 3")
    rule.add_argument("--score", metavar="FIELD", help="DataComp's CLIP-score rule on FIELD with --top or --min")
    rule.add_argument("--uids", metavar="FILE.npy", help="a DataComp / DFN uid file (numpy u8,u8)")
    p.add_argument("--t", type=float, default=None, help="MetaCLIP's per-entry threshold (20000 at 400M "
                                                         "scale, 170000 at 2.5B)")
    p.add_argument("--online", action="store_true", help="MetaCLIP: store the matches; each epoch draws anew")
    p.add_argument("--top", type=float, default=None, metavar="FRACTION", help="--score: keep the top fraction")
    p.add_argument("--min", type=float, default=None, dest="minimum", metavar="X", help="--score: keep score >= X")
    p.add_argument("--from", dest="from_", default=None, metavar="SUBSET", help="select among SUBSET's samples")
    p.add_argument("--seed", type=int, default=0, help="seed of random draws (MetaCLIP)")
    p.add_argument("--workers", type=int, default=None, help="processes matching MetaCLIP entries (default: "
                                                              "one per core)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing subset of that name")
    p = sub.add_parser("export-uids", help="write a subset's uids as a DataComp / DFN uid file (numpy u8,u8)")
    p.add_argument("out", help="the build (OUT, a local folder)")
    p.add_argument("--subset", required=True, metavar="NAME")
    p.add_argument("file", metavar="FILE.npy")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except StructuralError as e:
        print(f"vldata: error: {_line(e)}", file=sys.stderr)
        return 2
    except ShardError as e:  # a build that cannot be read as its manifest says
        print(f"vldata: error: {_line(e)}", file=sys.stderr)
        return 1
    except BuildInterrupted as e:
        print(f"vldata: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("vldata: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {e.filename}" if e.filename else ""
        print(f"vldata: error: no space left on the device{where}; free some, then --resume finishes the build",
              file=sys.stderr)
        return 1


def _line(e: Exception) -> str:
    """The error's message on one line, whatever a library put into it."""
    return " ".join(str(e).split())


def _run(args) -> int:
    """One command; only list, sample and build load the build side."""
    if args.command in ("list", "sample", "build"):
        return _run_build_side(args)
    return _run_tool(args)


def _run_build_side(args) -> int:
    from vldata.write import api, registry

    if args.command == "list":
        for name in registry.list_builders():
            cls = registry.builder_class(name)
            print(f"{name}\t{cls.version}\t{cls.summary}")
        return 0
    if args.command == "sample":
        builder = registry.get_builder(args.name)
        builder.write_sample(args.raw, args.n, args.seed)
        print(f"wrote a {args.name} sample ({args.n} rows, seed {args.seed}) to {args.raw}")
        return 0
    if args.command == "build":
        config = parse_settings(args.settings)
        report = api.build(args.name, args.raw, args.out, formats=args.format, workers=args.workers,
                           resume=args.resume, limit=args.limit, overwrite=args.overwrite, executor=args.executor,
                           shuffle=args.shuffle,
                           shard_bytes={"parquet": args.parquet_shard_size, "webdataset": args.tar_shard_size},
                           **config)
        print(report)
        return 0
    raise AssertionError(args.command)


def _run_tool(args) -> int:
    if args.command == "inspect":
        from vldata.tools.inspect import summary

        text = summary(args.out)
        print(text)
        if args.png or args.html:
            from vldata.tools.contact_sheet import write_pictures

            if args.n < 1:
                raise StructuralError(f"--n must be at least 1, got {args.n}")
            try:
                done = write_pictures(args.out, png=args.png, html_file=args.html, n=args.n, summary=text)
            except FileNotFoundError as e:
                raise StructuralError(str(e)) from None
            print("\n".join(done))
        return 0
    if args.command == "validate":
        from vldata.tools.validate import validate

        problems = validate(args.out)
        for p in problems:
            print(p)
        print(f"{args.out}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
        return 0 if not problems else 1
    if args.command == "index":
        from vldata.read.tar_index import index

        print(index(args.path, index_dir=args.index_dir, image=args.image, text=args.text))
        return 0
    if args.command == "select":
        from vldata.tools import select

        print(select.select(args.out, args.name, _rule(args), from_=args.from_, seed=args.seed,
                            overwrite=args.overwrite))
        return 0
    if args.command == "export-uids":
        from vldata.tools.select import export_uids

        print(export_uids(args.out, args.subset, args.file))
        return 0
    if args.command == "publish":
        from huggingface_hub.errors import HfHubHTTPError

        from vldata.tools.publish import publish

        try:
            plan = publish(args.out, args.repo, private=args.private, dry_run=args.dry_run, revision=args.revision,
                           progress=lambda line: print(line, flush=True))
        except HfHubHTTPError as e:  # auth, permission, quota: one line, like every other failure here
            print(f"vldata: error: publish failed: {str(e).splitlines()[0]}", file=sys.stderr)
            return 1
        if args.dry_run:
            print(plan)
            print("dry run: nothing was uploaded")
        return 0
    raise AssertionError(args.command)


def _rule(args):
    """The rule object of ``vldata select``'s arguments; options of another rule are refused."""
    from vldata.tools import select

    extra = {"--t": args.t is not None, "--online": args.online, "--top": args.top is not None,
             "--min": args.minimum is not None}
    allowed = {"metaclip": ("--t", "--online"), "score": ("--top", "--min")}
    kind = "metaclip" if args.metaclip else "score" if args.score else "uids" if args.uids else "datacomp_basic"
    stray = [k for k, given in extra.items() if given and k not in allowed.get(kind, ())]
    if stray:
        raise StructuralError(f"{stray[0]} does not go with --{kind.replace('_', '-')}")
    if kind == "metaclip":
        if args.t is None:
            raise StructuralError("--metaclip needs --t (MetaCLIP used 20000 at 400M scale, 170000 at 2.5B)")
        return select.MetaClip(args.metaclip, args.t, online=args.online, workers=args.workers)
    if kind == "score":
        return select.Score(args.score, top=args.top, minimum=args.minimum)
    if kind == "uids":
        return select.Uids(args.uids)
    return select.DataCompBasic()


if __name__ == "__main__":
    sys.exit(main())
