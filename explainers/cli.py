"""Command line: ``python -m explainers {explain,models,methods,bench} ...``.

Errors a user can cause print one line to stderr and exit with status 2;
nothing a user types produces a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .errors import ExplainerError

# --------------------------------------------------------------------------- argument types
# Every argument is checked when parsed, so a bad value is one line ("error: ...") and exit 2, never a traceback
# or a silent wrong result (e.g. --opacity nan wrote an all-black PNG; --limit -1 dropped the last image).


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error: ``error: <message>`` on stderr and exit 2 (argparse adds a usage block)."""

    def error(self, message: str):  # type: ignore[override]
        print(f"error: {self.prog}: {message}", file=sys.stderr)
        raise SystemExit(2)


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


positive_int = _int_at_least(1)


def unit_float(text: str) -> float:
    """A finite number in [0, 1] (opacity)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {text}")
    return value


def out_file(text: str) -> str:
    """A file to write: its folder must exist and the path must not be a folder."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder; give a file name")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"folder {str(path.parent)!r} does not exist")
    return text


def existing_file(text: str) -> str:
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text!r} does not exist")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder, not a file")
    return text


def images_arg(text: str) -> str:
    """'gallery', an existing folder or manifest file, or (checked when the command runs, so that no project file
    is read here) a dataset name of relevance-explorer.toml."""
    if text == "gallery" or Path(text).exists():
        return text
    if "/" in text or "\\" in text or Path(text).suffix:
        raise argparse.ArgumentTypeError(f"{text!r} is neither 'gallery' nor an existing folder or manifest")
    return text  # a registered dataset name


def weights_arg(text: str) -> str:
    """'default', 'untrained' or an existing state-dict file."""
    return text if text in ("default", "untrained") else existing_file(text)


def _parse_option(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ExplainerError(f"--option expects NAME=VALUE, got {text!r}.")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


def cmd_explain(args: argparse.Namespace) -> int:
    from . import render
    from .images import load_image
    from .models import load_model
    from .progress import progress_callback
    from .registry import explain, get_method

    image = load_image(args.image, name=str(args.image))
    bundle = load_model(args.model, device=args.device, weights=args.weights, labels=args.labels,
                        num_classes=args.num_classes)
    x = bundle.preprocess(image)
    top5 = bundle.topk(x, 5)
    target: int | str | None = args.target if args.target is not None else args.target_name
    options = dict(_parse_option(o) for o in args.option or [])
    _print_estimate(bundle, args.method, options)
    bar = _tqdm_progress(args.method)
    try:
        with progress_callback(bar.update if bar else None):
            res = explain(bundle, x, args.method, target=target, **options)
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        if not options:
            raise
        # an option the spec accepts but the method cannot use (e.g. Grad-CAM at layer=classifier, a 2-D output)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExplainerError(f"{args.method} cannot run with {' '.join(f'{k}={v}' for k, v in options.items())}: "
                             f"{first[:200]}") from None
    if bar:
        bar.close()
    if args.out:
        rgb = render.overlay(bundle.display_image(image),
                             get_method(res.method).display_map(res.attribution, res.options),  # e.g. HQ bins
                             opacity=args.opacity,
                             signed=get_method(res.method).shown_signed(res.options))
        Path(args.out).write_bytes(render.png_bytes(rgb))
    summary = {
        "model": bundle.label, "trained": bundle.trained, "weights": bundle.weights_source,
        "method": res.method, "options": res.options,
        "top5": [{"index": i, "class": n, "probability": round(p, 6)} for i, n, p in top5],
        "target": res.target, "target_name": res.target_name, "score": res.score,
        "seconds": round(res.seconds, 4), "native_resolution": res.native_resolution,
        "out": args.out,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        if not bundle.trained:
            print(f"WARNING: {bundle.name} is UNTRAINED (random weights); its predictions mean nothing.")
        print(f"model {bundle.label} ({bundle.weights_source}) on {bundle.device}")
        print("top-5 predictions:")
        for i, n, p in top5:
            print(f"  {p:7.2%}  {i:4d}  {n}")
        print(f"explained class: {res.target} {res.target_name} (p={res.score:.4f}) "
              f"with {res.method} in {res.seconds:.2f} s")
        if args.out:
            print(f"heatmap written to {args.out}")
    return 0


def _print_estimate(bundle, method: str, options: dict[str, Any]) -> None:
    """Warn on stderr before a slow method (Score-CAM/Ablation-CAM on a CPU) starts, with its expected time."""
    from .estimate import describe_estimate, estimate_seconds

    try:
        seconds = estimate_seconds(bundle, method, options)
    except ExplainerError:
        return  # the explain call itself reports bad options
    if seconds > 5:
        print(f"{method} on {bundle.device}: expected {describe_estimate(seconds)} "
              "(Score-CAM/Ablation-CAM: use --option top_k=K for fewer channels)", file=sys.stderr)


class _TqdmProgress:
    def __init__(self, desc: str):
        from tqdm import tqdm

        self.bar = tqdm(total=100, desc=desc, leave=False, file=sys.stderr)

    def update(self, fraction: float, text: str) -> None:
        self.bar.n = int(round(fraction * 100))
        if text:
            self.bar.set_postfix_str(text)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def _tqdm_progress(desc: str) -> _TqdmProgress | None:
    return _TqdmProgress(desc) if sys.stderr.isatty() else None


def cmd_models(args: argparse.Namespace) -> int:
    from .models import list_models

    rows = list_models()
    if args.json:
        print(json.dumps([r.__dict__ for r in rows], indent=2))
        return 0
    print(f"{'model':24s} {'family':13s} {'weights':10s} where")
    for r in rows:
        state = "available" if r.available else "missing"
        print(f"{r.name:24s} {r.family:13s} {state:10s} {r.where}")
    print("\nMissing weights: place the file at the path shown, pass --weights FILE, "
          "or use --weights untrained (architecture only, labelled untrained).")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from . import method_catalogue

    if args.refresh:
        print(f"wrote {method_catalogue.refresh()}")
        return 0
    print("\n".join(method_catalogue.lines(method_catalogue.rows())))
    return 0


def cmd_bench_speed(args: argparse.Namespace) -> int:
    from . import bench
    from .models import load_model

    bundle = load_model(args.model, device=args.device, weights=args.weights)
    methods = bench.expand_methods([m.strip() for m in args.methods.split(",") if m.strip()], bundle)
    for batch in args.batch:
        print(bench.speed_with_reference(bundle, methods, repeat=args.repeat, batch=batch))  # + zennit for LRP
        print()
    return 0


def cmd_bench_gpu(args: argparse.Namespace) -> int:
    from . import gpu_check

    return gpu_check.run_from_args(args)


def cmd_bench_erf(args: argparse.Namespace) -> int:
    from . import bench
    from .models import load_model

    bundle = load_model(args.model, device=args.device, weights=args.weights)
    print(bench.erf_speed(bundle, positions=args.positions, layer=args.layer, repeat=args.repeat, method=args.how))
    return 0


def cmd_bench_quality(args: argparse.Namespace) -> int:
    """Metrics per image and method, stored in SQLite so a rerun resumes (see explainers/quality.py)."""
    from . import quality
    from .models import load_model
    from .progress import progress_callback
    from .store import Store

    bundle = load_model(args.model, device=args.device, weights=args.weights)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    metrics = quality.parse_metrics(args.metrics)
    images = quality.quality_images(args.images, args.limit)
    settings = quality.Settings(pixels_per_step=args.pixels_per_step, start=args.start)
    store = Store(args.db)
    bar = _tqdm_progress("quality")
    try:
        with progress_callback(bar.update if bar else None):
            rows = quality.run_quality(bundle, images, methods, metrics, settings, store)
    except KeyboardInterrupt:
        print(f"interrupted; finished items are stored in {store.path}, rerun to resume", file=sys.stderr)
        return 130
    finally:
        if bar:
            bar.close()
    print(quality.markdown(rows, bundle.label, str(bundle.device)))
    _print_per_class(rows, args.images, bundle)
    for name, why in getattr(rows, "skipped", []):
        print(f"skipped {name}: {why}", file=sys.stderr)
    if args.out:
        quality.write_csv(rows, args.out)
        quality.write_summary_csv(rows, quality.summary_path(args.out))
        print(f"\nper-image values in {args.out}, summary in {quality.summary_path(args.out)}")
    cached = sum(r.cached for r in rows)
    print(f"{len(rows)} item(s), {cached} read from {store.path}")
    return 0


def _print_per_class(rows, images: str, bundle) -> None:
    """On a labelled dataset: the metrics per true class, split into correct and wrong predictions."""
    if images == "gallery":
        return
    from .by_class import accuracy, per_class, truth_by_name
    from .datasets import resolve_dataset

    dataset = resolve_dataset(images)
    if not dataset.labelled:
        return
    truth = truth_by_name(dataset, bundle.class_names)
    records = per_class(rows, truth)
    columns = [c for c in dict.fromkeys(k for r in records for k in r) if c not in ("method", "true class",
                                                                                  "prediction", "images")]
    print("\nper true class (means; a row explains the predicted class)\n")
    print("| method | true class | prediction | images | " + " | ".join(columns) + " |")
    print("|---" * (4 + len(columns)) + "|")
    for r in records:
        cells = ["n/a" if r.get(c) is None else f"{r[c]:.3f}" for c in columns]
        print(f"| {r['method']} | {r['true class']} | {r['prediction']} | {r['images']} | " + " | ".join(cells) + " |")
    print("\naccuracy per true class: " + ", ".join(f"{k} {v:.0%}" for k, v in accuracy(rows, truth).items()))


def cmd_labels(args: argparse.Namespace) -> int:
    """Failure labels: export (the whole history), import (merges, never duplicates), backup (issue 17)."""
    from .store import Store

    store = Store(args.db)  # a damaged store is moved aside here, with one warning line on stderr
    if args.labels == "export":
        store.export_labels(args.file)
        print(f"{len(store.labels())} label rows written to {args.file}")
    elif args.labels == "import":
        added, present = store.import_labels(args.file)
        print(f"{added} label rows added, {present} already present, from {args.file}")
    else:
        print(f"backup written to {store.backup()}")
    return 0


def methods_list(text: str) -> list[str]:
    """``--methods`` of ``report``: comma-separated ids, each optionally with inline options ``id@k=v+k=v``
    (as ``bench speed``) or a family (cam, gradient, lrp, srd, all); ids are checked when the command runs."""
    tokens = [t.strip() for t in text.split(",") if t.strip()]
    if not tokens:
        raise argparse.ArgumentTypeError("expected one or more method ids, e.g. gradcam,saliency")
    for token in tokens:
        name, at, rest = token.partition("@")
        items = rest.split("+") if at else []
        if not name or any("=" not in item or not item.split("=", 1)[0] for item in items):
            raise argparse.ArgumentTypeError(f"{token!r} is not METHOD or METHOD@NAME=VALUE+NAME=VALUE")
    return tokens


def percentile(text: str) -> float:
    """A colour limit in (0, 100] (the percentile of |relevance| where the colour scale ends)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 < value <= 100.0:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"must lie in (0, 100], got {text}")
    return value


def existing_dir(text: str) -> str:
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"folder {text!r} does not exist")
    return text


def cmd_report(args: argparse.Namespace) -> int:
    """Several maps of one image into a self-contained HTML file and a PDF (explainers/report.py)."""
    import time

    from .bench import expand_methods, parse_method_options
    from .images import image_hash, load_image
    from .models import load_model
    from .registry import explain, get_method
    from .report import build_report

    data = Path(args.image).read_bytes()
    image = load_image(data, name=str(args.image))
    bundle = load_model(args.model, device=args.device, weights=args.weights, labels=args.labels,
                        num_classes=args.num_classes)
    x = bundle.preprocess(image)
    target: int | str | None = args.target if args.target is not None else args.target_name
    results, options = [], {}
    tokens = expand_methods(args.methods, bundle)
    for token in tokens:  # every id checked before the first map is computed: one line naming the registered ones
        get_method(parse_method_options(token)[0])
    for token in tokens:
        method, inline = parse_method_options(token)
        _print_estimate(bundle, method, inline)
        try:
            results.append(explain(bundle, x, method, target=target, **inline))
        except (RuntimeError, ValueError, IndexError, TypeError) as exc:
            if not inline:
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExplainerError(f"{method} cannot run with {' '.join(f'{k}={v}' for k, v in inline.items())}: "
                                 f"{first[:200]}") from None
        options[method] = inline
    start = time.perf_counter()
    report = build_report(bundle, image, results, image_name=Path(args.image).name, image_hash=image_hash(data),
                          top5=bundle.topk(x, 5), options=options, opacity=args.opacity, clip=args.clip,
                          weights=args.weights, title=args.title)
    out = Path(args.out_dir)
    html_path, pdf_path = out / report.filename("html"), out / report.filename("pdf")
    html_path.write_text(report.html(), encoding="utf-8")
    pdf_path.write_bytes(report.pdf())
    if not bundle.trained:
        print(f"WARNING: {bundle.name} is UNTRAINED (random weights); its predictions mean nothing.")
    for r in results:
        print(f"{r.method}: class {r.target} {r.target_name} (p={r.score:.4f}) in {r.seconds:.2f} s")
    print(f"report of {len(results)} map(s) written in {time.perf_counter() - start:.2f} s: {html_path} {pdf_path}")
    return 0


def _image_and_model_arguments(p: argparse.ArgumentParser) -> None:
    """The image and the model (zoo name or source, weights, labels, head size): `explain` and `report`."""
    p.add_argument("image", type=existing_file, help="image file (PNG, JPEG, ...)")
    p.add_argument("--model", default="efficientnet_lite0",
                   help="a zoo name, a model of relevance-explorer.toml, timm:NAME, torchvision:NAME or "
                        "package.module:function (trusted code)")
    p.add_argument("--weights", default="default", type=weights_arg,
                   help="'default', 'untrained' or a state-dict file")
    p.add_argument("--labels", type=existing_file, help="class names of the model's head: one per line, or JSON")
    p.add_argument("--num-classes", type=positive_int,
                   help="the head's class count (default: from labels or checkpoint)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m explainers", description="Relevance Explorer command line")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("explain", help="explain one image and write a heatmap")
    _image_and_model_arguments(p)
    p.add_argument("--method", default="gradcam")
    tgt = p.add_mutually_exclusive_group()
    tgt.add_argument("--target", type=_int_at_least(0), help="class index to explain (default: the prediction)")
    tgt.add_argument("--target-name", help="class name or part of it, e.g. 'tabby'")
    p.add_argument("--option", action="append", metavar="NAME=VALUE", help="method option, repeatable")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"])
    p.add_argument("--out", type=out_file, help="write the heatmap overlay as PNG")
    p.add_argument("--opacity", type=unit_float, default=0.5, help="overlay opacity in [0, 1]")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("report", help="several maps of one image as a self-contained HTML file and a PDF")
    _image_and_model_arguments(p)
    p.add_argument("--methods", default=["gradcam"], type=methods_list,
                   help="comma-separated ids with optional inline options (lrp@rule=epsilon+eps=0.01), or "
                        "families: cam, gradient, lrp, srd, all")
    tgt = p.add_mutually_exclusive_group()
    tgt.add_argument("--target", type=_int_at_least(0), help="class index to explain (default: the prediction)")
    tgt.add_argument("--target-name", help="class name or part of it, e.g. 'tabby'")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"])
    p.add_argument("--out-dir", default=".", type=existing_dir,
                   help="folder for report_<imagehash>_<model>.html and .pdf")
    p.add_argument("--opacity", type=unit_float, default=0.5, help="overlay opacity in [0, 1]")
    p.add_argument("--clip", type=percentile, default=99.5, help="colour limit: percentile of |relevance|")
    p.add_argument("--title", default="Relevance Explorer report")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("models", help="list models and whether their weights are available")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("methods", help="list registered methods and their options")
    p.add_argument("--refresh", action="store_true",
                   help="rewrite the stored listing (explainers/method_catalogue.json) from the registry")
    p.set_defaults(func=cmd_methods)

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench", required=True)
    p = bench.add_parser("speed", help="seconds per image and ratio to a forward pass")
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--weights", default="default", type=weights_arg)
    p.add_argument("--methods", default="gradcam",
                   help="comma-separated ids (options inline: scorecam@top_k=64), or families: cam, gradient, lrp, "
                        "srd, all (every method of the family that supports the model)")
    p.add_argument("--repeat", type=positive_int, default=5)
    p.add_argument("--batch", type=positive_int, nargs="+", default=[1])
    p.add_argument("--device", default=None, choices=["cpu", "cuda"])
    p.set_defaults(func=cmd_bench_speed)

    p = bench.add_parser("gpu", help="CUDA vs CPU maps, host syncs in the engine, throughput (issue 16)")
    from .gpu_check_config import add_arguments

    add_arguments(p)
    p.set_defaults(func=cmd_bench_gpu)

    p = bench.add_parser("erf", help="seconds for the SRD ERFs of many PFVs of one image at once")
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--weights", default="default", type=weights_arg)
    p.add_argument("--positions", type=positive_int, default=49, help="PFVs, spread over the layer's grid")
    p.add_argument("--layer", default="low", help="low, high or a layer name (see the SRD Explorer)")
    p.add_argument("--how", default="auto", choices=["auto", "stencils", "walk"],
                   help="sharing-ratio stencils or one batched backward walk")
    p.add_argument("--repeat", type=positive_int, default=3)
    p.add_argument("--device", default=None, choices=["cpu", "cuda"])
    p.set_defaults(func=cmd_bench_erf)

    p = bench.add_parser("quality", help="faithfulness/complexity metrics per image and method (resumable)")
    p.add_argument("--images", default="gallery", type=images_arg,
                   help="'gallery', a dataset of relevance-explorer.toml, an image folder (ImageFolder layout: "
                        "class sub-folders) or a CSV/Parquet manifest (path,label)")
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--weights", default="default", type=weights_arg)
    p.add_argument("--methods", default="gradcam", help="comma-separated method ids")
    p.add_argument("--limit", type=positive_int, default=None, help="first N images only")
    p.add_argument("--metrics", default="insdel,insdel-strict,sparseness",
                   help="comma-separated: insdel, insdel-strict, sparseness, fidelity, stability")
    p.add_argument("--pixels-per-step", type=positive_int, default=500,
                   help="insertion/deletion step (500 = 0 px + 101 points)")
    p.add_argument("--start", default="black", choices=["black", "blurred"], help="insertion start image")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"])
    p.add_argument("--db", default=None, type=out_file,
                   help="SQLite file (default: $RELEVANCE_EXPLORER_DB or data/...)")
    p.add_argument("--out", type=out_file, help="write per-image values to this CSV (and a _summary.csv next to it)")
    p.set_defaults(func=cmd_bench_quality)

    __import__("explainers.dataset_cli", fromlist=["add_parser"]).add_parser(sub)  # issue 14: dataset pipeline


    labels = sub.add_parser("labels", help="failure labels: export, import (merge), backup").add_subparsers(
        dest="labels", required=True)
    for name, what in (("export", "write every label row to FILE (.csv or .json)"),
                       ("import", "merge the labels of FILE (.csv, .json, or a store/backup .sqlite)"),
                       ("backup", "write a backup of the store now (SQLite online backup)")):
        p = labels.add_parser(name, help=what)
        if name != "backup":
            p.add_argument("file", help="label file")
        p.add_argument("--db", default=None, help="SQLite file (default: $RELEVANCE_EXPLORER_DB or data/...)")
        p.set_defaults(func=cmd_labels)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ExplainerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. an --out file that cannot be written (permissions, disk full)
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
