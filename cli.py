"""The `stml` command line. It parses, calls the packages and prints; the work happens in
training/, export/ and stml_deploy/. Heavy imports (torch, onnxruntime, faiss) stay inside
the commands so `stml --help` is instant."""

from __future__ import annotations

import json
import sys
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from stml_deploy.console import info, result, stderr, stdout, warn
from stml_deploy.errors import Interrupted, MissingDependencyError, ParityError, StmlError

if TYPE_CHECKING:
    from stml_deploy.parity_files import ParityEntry


class StmlApp(typer.Typer):
    """Typer app whose user errors are one line (`error: ...`) and a non-zero exit code,
    never a traceback; genuine bugs still show their traceback."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        sys.exit(main(kwargs.get("args")))


app = StmlApp(
    name="stml",
    help="Self-Taught Metric Learning: label-free image embeddings, exported with verified parity.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _usage_errors() -> tuple[type[BaseException], ...]:
    """Usage-error base classes: typer >= 0.26 vendors click (typer.TyperException); older
    typer (the releases that still run on Python 3.10, e.g. JetPack 6) uses click's."""
    found: list[type[BaseException]] = []
    if hasattr(typer, "TyperException"):
        found.append(typer.TyperException)
    try:
        import click

        found.append(click.ClickException)
    except ImportError:
        pass
    return tuple(found)


# which extra brings a module that a command imports lazily
_EXTRA_OF_MODULE = {
    **dict.fromkeys(
        ("torch", "torchvision", "timm", "pytorch_metric_learning", "sklearn", "scipy",
         "matplotlib", "faiss"), "train"),
    **dict.fromkeys(("onnx", "onnxscript"), "export"),
    "onnxruntime": "cpu",
}  # fmt: skip


def _missing_module(exc: ModuleNotFoundError) -> str:
    top = (exc.name or "").split(".")[0]
    extra = _EXTRA_OF_MODULE.get(top)
    if extra is None:
        return f"a module this command needs is not installed: {exc}"
    return (
        f"this command needs {top}, which is not installed here (the stml[{extra}] extra): "
        f"pip install 'stml[{extra}]'"
    )


# exit codes, in one place: 2 for what this machine lacks, 130 for Ctrl-C, 1 for the rest
_EXIT_CODES: tuple[tuple[type[StmlError], int], ...] = (
    (MissingDependencyError, 2),  # BackendUnavailableError included
    (Interrupted, 130),
    (StmlError, 1),
)
INTERRUPTED = 130


def exit_code_of(exc: StmlError) -> int:
    return next(code for kind, code in _EXIT_CODES if isinstance(exc, kind))


def _error(message: str) -> None:
    stderr.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    for stream in (sys.stdout, sys.stderr):  # file names that are not UTF-8 print escaped
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    command = typer.main.get_command(app)
    try:
        returned = command.main(args=argv, prog_name="stml", standalone_mode=False)
    except StmlError as exc:
        _error(str(exc))
        return exit_code_of(exc)
    except typer.Exit as exc:
        return exc.exit_code
    except _usage_errors() as exc:  # bad option values, unknown options, no arguments
        if type(exc).__name__ == "NoArgsIsHelpError":
            stdout.print(exc.format_message(), markup=False, highlight=False)
            return 0
        ctx = getattr(exc, "ctx", None)
        hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
        _error(f"{exc.format_message()}{hint}")
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        return _interrupted()
    except ModuleNotFoundError as exc:  # an extra that this install lacks (e.g. train on the edge)
        _error(_missing_module(exc))
        return 2
    except OSError as exc:  # files the user named: missing, a folder, no permission, disk full
        where = f": {exc.filename}" if exc.filename else ""
        _error(f"{exc.strerror or exc}{where}")
        return 1
    # click (standalone_mode=False) turns Ctrl-C into Abort and some releases hand its exit
    # code back as the return value instead of raising: never drop it
    if isinstance(returned, int) and returned != 0:
        return _interrupted() if returned == INTERRUPTED else returned
    return 0


def _interrupted() -> int:
    _error("interrupted (Ctrl-C)")
    return INTERRUPTED


# --- shared options ------------------------------------------------------------------------
DataRoot = Annotated[
    Path | None,
    typer.Option("--data-root", help="Folder of a known dataset (cub, cars, sop, fashion-mnist)."),
]
Split = Annotated[
    str, typer.Option("--split", help="Standard split of a known dataset: train | test.")
]
Device = Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:N.")]
Workers = Annotated[
    int | None,
    typer.Option("--workers", help="Data loader processes (default: min(4, cores-1))."),
]
Strict = Annotated[
    bool,
    typer.Option("--strict", help="Stop at the first unreadable image instead of skipping it."),
]
MaxImages = Annotated[
    int | None,
    typer.Option("--max-images", help="Use a seeded random subset of at most N images."),
]


# --- train ---------------------------------------------------------------------------------
def _with_hyperparameters(command: Any) -> Any:
    """Give `command` one --option per TrainConfig field, its help and shown default taken
    from the field (training/config.py), so they are written once. Each defaults to None
    ("not given"): recipes and --resume decide what an option left out means."""
    import dataclasses
    import inspect

    from training.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    signature = inspect.signature(command, eval_str=True)
    params = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    for field in dataclasses.fields(TrainConfig):
        if "help" not in field.metadata:
            continue
        kind = next(
            t
            for t in typing.get_args(hints[field.name]) or (hints[field.name],)
            if t is not type(None)
        )
        flag = field.name.replace("_", "-")
        shown = field.metadata["default_text"] or field.default
        if kind is bool:
            shown = flag if field.default else f"no-{flag}"
            decls = (f"--{flag}/--no-{flag}",)
        else:
            decls = (f"--{flag}",)
        option = typer.Option(*decls, help=f"{field.metadata['help']} [default: {shown}]")
        params.append(
            inspect.Parameter(
                field.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                annotation=Annotated[kind | None, option],
            )
        )  # fmt: skip
    command.__signature__ = signature.replace(parameters=params)
    return command


@app.command()
@_with_hyperparameters
def train(
    data: Annotated[
        str,
        typer.Argument(
            help="Folder of images (searched recursively) or a dataset name: cub, cars, sop, fashion-mnist, digits."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Model package folder to write.")],
    data_root: DataRoot = None,
    split: Split = "train",
    recipe: Annotated[
        str | None,
        typer.Option(
            help="Settings by name: the paper's cub | cars | sop | sop-scratch, or cpu-small (a small from-scratch network for a CPU)."
        ),
    ] = None,
    device: Device = "auto",
    amp: Annotated[
        str, typer.Option(help="Mixed precision on CUDA: auto | bf16 | fp16 | off.")
    ] = "auto",
    workers: Workers = None,
    val: Annotated[
        str | None,
        typer.Option(
            help="Labelled data to report Recall@K on after every epoch (monitoring only: the last epoch is the result)."
        ),
    ] = None,
    val_split: Annotated[
        str, typer.Option(help="Split of --val when it is a dataset name.")
    ] = "test",
    max_images: MaxImages = None,
    labeled: Annotated[
        str | None,
        typer.Option(
            help="Semi-supervised: a folder with one sub-folder per class of labelled images (added to DATA; an image in both is used once, with its label)."
        ),
    ] = None,
    labeled_fraction: Annotated[
        float | None,
        typer.Option(
            help="Semi-supervised: label a seeded, class-stratified fraction (0, 1] of a known dataset's training images; the rest stay unlabelled."
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(help="Model name recorded in the package. [default: the --out folder name]"),
    ] = None,
    strict: Strict = False,
    resume: Annotated[
        bool, typer.Option(help="Continue the interrupted run saved in --out.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace a package already in --out.")] = False,
    init_from: Annotated[
        str | None,
        typer.Option(
            help="Start from a published stml package (folder or hf://org/name[@rev]): its architecture and weights."
        ),
    ] = None,
    stop_after: Annotated[
        int | None,
        typer.Option(help="Stop after N epochs of this invocation (continue later with --resume)."),
    ] = None,
    sync_bn: Annotated[
        bool,
        typer.Option(help="Synchronise BatchNorm statistics across processes (CUDA only)."),
    ] = False,
    compile: Annotated[
        bool, typer.Option(help="torch.compile the student for training (GPU paths).")
    ] = False,
    log: Annotated[
        str | None,
        typer.Option(
            help="Also log every epoch to TensorBoard (tensorboard): DIR/logs/. history.csv and curves.png are always written."
        ),
    ] = None,
    nproc: Annotated[
        int,
        typer.Option(
            help="Training processes on this node (one per GPU), started through torchrun's launcher."
        ),
    ] = 1,
    nnodes: Annotated[int, typer.Option(help="Nodes of a multi-node run (torchrun --nnodes).")] = 1,
    node_rank: Annotated[
        int, typer.Option(help="This node's rank in a multi-node run (torchrun --node-rank).")
    ] = 0,
    rdzv_endpoint: Annotated[
        str | None,
        typer.Option(help="host:port of the multi-node rendezvous (torchrun --rdzv-endpoint)."),
    ] = None,
    rdzv_backend: Annotated[
        str | None,
        typer.Option(
            help="Rendezvous backend, e.g. c10d (torchrun --rdzv-backend). [default: torchrun's]"
        ),
    ] = None,
    **hyperparameters: Any,
) -> None:
    """Train an embedding model on unlabelled images with STML; writes a model package."""
    from training.api import train as run_training

    package = run_training(
        data, out, recipe=recipe, data_root=data_root, split=split, val=val,
        val_split=val_split, max_images=max_images, labeled=labeled,
        labeled_fraction=labeled_fraction, name=name, device=device, amp=amp,
        workers=workers, strict=strict, resume=resume, overwrite=overwrite,
        init_from=init_from, stop_after=stop_after, sync_bn=sync_bn, compile=compile, log=log,
        nproc=nproc, nnodes=nnodes, node_rank=node_rank, rdzv_endpoint=rdzv_endpoint,
        rdzv_backend=rdzv_backend, **hyperparameters,
    )  # fmt: skip
    training = package.config.training
    done = training.epochs_done if training is not None else 0
    total = training.hyperparameters.get("epochs", done) if training is not None else done
    stdout.print(f"wrote {package.root} ({done}/{total} epochs)")


# --- eval ----------------------------------------------------------------------------------
@app.command("eval")
def evaluate(
    package: Annotated[str, typer.Argument(help="Model package folder.")],
    data: Annotated[
        str, typer.Argument(help="Labelled folder (class sub-folders) or dataset name.")
    ],
    data_root: DataRoot = None,
    split: Split = "test",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of a table.")
    ] = False,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 256,
    device: Device = "auto",
    workers: Workers = None,
    max_images: MaxImages = None,
    strict: Strict = False,
    record: Annotated[
        bool,
        typer.Option(
            help="Store the metrics in the package's config.json under the split's name "
            "(the model card of `stml push` shows them as eval results)."
        ),
    ] = False,
) -> None:
    """Recall@1/2/4/8, MAP@R, R-precision, P@1 and NMI of a package on labelled data."""
    from training.evaluation_run import evaluate_package
    from training.named_datasets import resolve_source

    source = resolve_source(data, data_root, split).limit(max_images, seed=0)
    metrics = evaluate_package(
        package, source, device, batch_size, workers, strict, split if record else None
    )
    if as_json:
        print(json.dumps(metrics, allow_nan=False))
    else:
        _print_metrics(f"{package} on {source.name}", metrics)


def _print_metrics(title: str, metrics: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        shown = "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)
        table.add_row(key, shown)
    stdout.print(table)


# --- export --------------------------------------------------------------------------------
from export.api import FORMATS  # noqa: E402  (light: the defaults below are named there once)

_ONNX, _TRT = FORMATS["onnx"].options, FORMATS["trt"].options


@app.command()
def export(
    package: Annotated[str, typer.Argument(help="Model package folder.")],
    format: Annotated[str, typer.Option("--format", help=" | ".join(FORMATS) + ".")] = "onnx",
    precision: Annotated[
        str | None,
        typer.Option(
            help=f"onnx: comma list of fp32,fp16,int8 [default: {','.join(_ONNX['precisions'])}]; trt: one of them [default: {_TRT['precision']}]."
        ),
    ] = None,
    int8_target: Annotated[
        str,
        typer.Option(
            help="int8 flavour: cpu (uint8 activations, fast on x86) | tensorrt (symmetric int8)."
        ),
    ] = _ONNX["int8_target"],
    calib: Annotated[
        str | None,
        typer.Option(
            help="Calibration images for int8 (folder or dataset name) [default: the package's training data]."
        ),
    ] = None,
    calib_size: Annotated[int, typer.Option(help="Calibration images to use.")] = _ONNX[
        "calib_size"
    ],
    parity_data: Annotated[
        str | None,
        typer.Option(
            help="Real images for the parity checks [default: the held-out test split of the package's training dataset, or its folder minus the calibration images]."
        ),
    ] = None,
    parity_size: Annotated[
        int, typer.Option(help="Images for the retrieval-level parity check.")
    ] = _ONNX["parity_size"],
    data_root: DataRoot = None,
    max_batch: Annotated[
        int,
        typer.Option(help="Largest batch the ONNX graph accepts (its batch dimension is dynamic)."),
    ] = _ONNX["max_batch"],
    opset: Annotated[
        int, typer.Option(help="ONNX opset: 18-20 (TensorRT 10.3 on JetPack 6 parses up to 20).")
    ] = _ONNX["opset"],
    keep_failed: Annotated[
        bool, typer.Option(help="Keep an artifact that failed parity, renamed *.failed.")
    ] = False,
    int8_search: Annotated[
        bool,
        typer.Option(
            help="When int8 fails parity, leave its most sensitive layers in float until it passes (recorded in config.json)."
        ),
    ] = _ONNX["int8_search"],
    batch: Annotated[str, typer.Option(help="trt: batch profile MIN,OPT,MAX.")] = _TRT["batch"],
    workspace: Annotated[float, typer.Option(help="trt: builder workspace limit in GiB.")] = _TRT[
        "workspace_gib"
    ],
) -> None:
    """Export a package to ONNX (fp32/fp16/int8) or build a TensorRT engine, with parity checks."""
    from export.api import export as run_export
    from export.api import ignored_options

    precisions = _csv(precision) if precision is not None else None
    given = {
        "precisions": precisions if format == "onnx" else None, "int8_target": int8_target,
        "calib": calib, "calib_size": calib_size, "parity_data": parity_data,
        "parity_size": parity_size, "data_root": str(data_root) if data_root else None,
        "max_batch": max_batch, "opset": opset, "keep_failed": keep_failed,
        "int8_search": int8_search, "precision": precision if format == "trt" else None, "batch": batch,
        "workspace_gib": workspace,
    }  # fmt: skip
    flags = {"workspace_gib": "workspace", "precisions": "precision"}
    ignored = ignored_options(format, given)
    if ignored:
        shown = [f"--{flags.get(k, k).replace('_', '-')}" for k in ignored]
        warn(
            f"{', '.join(shown)} {'does' if len(shown) == 1 else 'do'} not apply to --format {format}; ignored"
        )
    taken = FORMATS[format].options
    options = {k: v for k, v in given.items() if k in taken and v is not None}
    result = run_export(package, format, **options)
    _print_parity(result.entries)
    if not result.passed:
        raise ParityError(result.failures)
    if result.written:
        stdout.print(f"wrote {', '.join(result.written)} in {result.package.root}")


def _print_parity(entries: list[ParityEntry]) -> None:
    from rich import box
    from rich.table import Table

    from stml_deploy.parity_metrics import recall_change_text

    table = Table(
        title="parity against torch fp32",
        box=box.SIMPLE,
        pad_edge=False,
        caption="max err and cosines: golden real images; top-10 and R@1: parity images",
    )
    for column in (
        "artifact",
        "runtime",
        "max err",
        "cos min",
        "cos mean",
        "top-10",
        "R@1 change",
        "ok",
    ):
        table.add_column(
            column,
            justify="left" if column in ("artifact", "runtime", "ok") else "right",
            no_wrap=True,
        )
    for e in entries:
        real = e.check.real
        table.add_row(
            e.artifact.rsplit("/", 1)[-1], e.runtime.replace("onnxruntime", "ORT"),
            f"{real['max_abs_error']:.1e}", f"{e.cosine_min:.5f}", f"{real['cosine_mean']:.5f}",
            f"{e.top10_overlap:.3f}", recall_change_text(e.recall_at_1_drop),
            "yes" if e.passed else "FAIL",
        )  # fmt: skip
    stdout.print(table)


# --- edge runtime: embed, index, search, bench, info ----------------------------------------
Backend = Annotated[
    str,
    typer.Option(
        "--backend",
        help="auto | onnx | onnx-cuda | trt (auto: a TensorRT engine built for this GPU, then ONNX Runtime on the GPU, then on the CPU).",
    ),
]
Precision = Annotated[
    str,
    typer.Option(
        "--precision",
        help="auto | fp32 | fp16 | int8: which exported variant runs (auto: a TensorRT engine's precision, fp16 first, else fp32).",
    ),
]
IndexPackage = Annotated[
    str | None, typer.Option("--package", help="The index's model package, when it moved.")
]
IndexPrecision = Annotated[
    str | None,
    typer.Option("--precision", help="[default: the precision the index was built with]"),
]


def _csv(text: str, kind: type = str) -> list[Any]:
    try:
        values = [kind(part.strip()) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values:
        raise StmlError(f"{text!r}: expected a comma-separated list of {kind.__name__} values")
    return values


@app.command()
def embed(
    package: Annotated[str, typer.Argument(help="Model package folder (or hf://org/name[@rev]).")],
    images: Annotated[
        list[str], typer.Argument(help="Image files or folders (searched recursively).")
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Embeddings .npy to write; the image list goes beside it as <name>.items.json.",
        ),
    ],
    backend: Backend = "auto",
    precision: Precision = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per inference call.")] = 32,
    strict: Strict = False,
) -> None:
    """Embed images into a .npy file (float32, one L2-normalized row per readable image)."""

    from stml_deploy.embeddings_file import embed_to_file

    vectors, items, rows, dim, skipped = embed_to_file(
        package, images, out, backend, precision, batch_size, strict
    )
    result(
        f"wrote {vectors} ({rows} x {dim}) and {items}"
        + (f"; skipped {skipped}" if skipped else "")
    )


index_app = StmlApp(
    name="index",
    help="Build, extend and inspect gallery indexes.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(index_app, name="index")


@index_app.command("build")
def index_build(
    package: Annotated[str, typer.Argument(help="Model package folder (or hf://org/name[@rev]).")],
    gallery: Annotated[
        list[str],
        typer.Argument(
            help="Gallery images or folders; one folder of class sub-folders records labels."
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Index folder to write (replaced atomically).")
    ],
    backend: Backend = "auto",
    precision: Precision = "auto",
    kind: Annotated[str, typer.Option(help="flat (exact) | hnsw (approximate, faiss).")] = "flat",
    validate: Annotated[
        bool, typer.Option(help="Check that every image retrieves itself and report the fraction.")
    ] = False,
    strict: Strict = False,
) -> None:
    """Embed a gallery and write an index of it."""
    from stml_deploy.retrieval import build_index

    index = build_index(package, gallery, out, backend, precision, kind, strict)
    labelled = " (labelled)" if index.class_names else ""
    stdout.print(f"wrote {out}: {index.count} images{labelled}, dim {index.dim}, {index.kind}")
    if validate:
        fraction = index.self_retrieval()
        stdout.print(
            f"validation: {fraction:.4f} of the images retrieve themselves first ({round(fraction * index.count)}/{index.count})"
        )
        if fraction < 1.0:
            warn(
                "some images do not retrieve themselves first: usually exact duplicates in the gallery"
            )
        if index.kind == "hnsw":
            stdout.print(
                f"validation: HNSW recall@10 against exact search {index.ann_recall():.4f} (up to 500 gallery images as queries)"
            )


@index_app.command("add")
def index_add(
    index: Annotated[str, typer.Argument(help="Index folder.")],
    images: Annotated[list[str], typer.Argument(help="Image files or folders to add.")],
    package: IndexPackage = None,
    backend: Backend = "auto",
    precision: IndexPrecision = None,
    strict: Strict = False,
) -> None:
    """Add images to an index (with the model it was built with)."""
    from stml_deploy.retrieval import add_to_index

    updated, added = add_to_index(index, images, package, backend, precision, strict)
    stdout.print(f"added {added} images to {index}: {updated.count} in all")


@index_app.command("info")
def index_info(
    index: Annotated[str, typer.Argument(help="Index folder.")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """What an index holds."""
    from stml_deploy.describe import describe_index
    from stml_deploy.index import GalleryIndex

    _print_description(describe_index(GalleryIndex.load(index)), as_json)


@app.command()
def search(
    index: Annotated[str, typer.Argument(help="Index folder.")],
    queries: Annotated[list[str], typer.Argument(help="Query images or folders.")],
    k: Annotated[int, typer.Option("-k", "--top-k", help="Hits per query.")] = 5,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object for scripts.")
    ] = False,
    grid: Annotated[
        Path | None,
        typer.Option(
            help="Write a PNG: each query with its hits (coloured borders when labels are known)."
        ),
    ] = None,
    package: IndexPackage = None,
    backend: Backend = "auto",
    precision: IndexPrecision = None,
    engine: Annotated[str, typer.Option(help="auto | faiss | numpy.")] = "auto",
    strict: Strict = False,
) -> None:
    """Find the gallery images most similar to each query."""
    from stml_deploy.retrieval import save_grid
    from stml_deploy.retrieval import search as run_search

    _, results = run_search(index, queries, k, package, backend, precision, engine, strict)
    if grid is not None:
        save_grid(results, grid)
    if as_json:
        print(
            json.dumps(
                {
                    "index": index,
                    "k": k,
                    "results": [
                        {"query": r.query, "label": r.label, "hits": r.hits} for r in results
                    ],
                }
            )
        )
        return
    from rich import box
    from rich.table import Table

    for r in results:
        table = Table(
            title=f"{r.query}" + (f" [{r.label}]" if r.label else ""),
            box=box.SIMPLE,
            title_justify="left",
        )
        for column in ("rank", "score", "label", "path"):
            table.add_column(column, justify="right" if column in ("rank", "score") else "left")
        for hit in r.hits:
            table.add_row(str(hit["rank"]), f"{hit['score']:.4f}", hit["label"] or "-", hit["path"])
        stdout.print(table)
    if grid is not None:
        stdout.print(f"wrote {grid}")


@app.command()
def bench(
    package: Annotated[str, typer.Argument(help="Model package folder (or hf://org/name[@rev]).")],
    backends: Annotated[
        str, typer.Option(help="Comma list of onnx, onnx-cuda, trt.")
    ] = "onnx,onnx-cuda,trt",
    precisions: Annotated[
        str | None, typer.Option(help="Comma list [default: every exported precision].")
    ] = None,
    batch_sizes: Annotated[str, typer.Option(help="Comma list of batch sizes.")] = "1,8,32",
    repeats: Annotated[int, typer.Option(help="Timed runs per measurement.")] = 20,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Latency, throughput and parity of each backend and precision, side by side."""
    from stml_deploy.bench import bench as run_bench
    from stml_deploy.hub import open_package

    rows, skipped = run_bench(
        open_package(package),
        _csv(backends),
        _csv(precisions) if precisions else None,
        tuple(_csv(batch_sizes, int)),
        repeats,
    )
    if as_json:
        print(json.dumps({"rows": [r.__dict__ for r in rows], "skipped": skipped}))
        return
    from rich import box
    from rich.table import Table

    table = Table(
        title=f"stml bench {package}",
        box=box.SIMPLE,
        caption="parity: golden real images against torch fp32",
    )
    for column in (
        "backend",
        "precision",
        "batch",
        "median ms",
        "p90 ms",
        "images/s",
        "cos min",
        "top-10",
    ):
        table.add_column(
            column, justify="left" if column in ("backend", "precision") else "right", no_wrap=True
        )
    for r in rows:
        table.add_row(
            r.backend,
            r.precision,
            str(r.batch),
            f"{r.median_ms:.2f}",
            f"{r.p90_ms:.2f}",
            f"{r.images_per_s:.0f}",
            f"{r.parity['cosine_min']:.5f}",
            f"{r.parity['top10_overlap']:.3f}",
        )
    stdout.print(table)
    for note in skipped:
        info(f"not run: {note}")


@app.command("info")
def info_command(
    path: Annotated[
        str, typer.Argument(help="A model package, an hf://org/name[@rev] or an index folder.")
    ],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """What a package or index holds: sizes, hashes, parity summary."""
    from stml_deploy.describe import describe

    _print_description(describe(path), as_json)


def _print_description(data: dict[str, Any], as_json: bool) -> None:
    """`stml info`: JSON for scripts; for people, sections of key/value rows and tables (file
    lists, parity results), hashes shortened, sizes in MB."""
    if as_json:
        print(json.dumps(data, indent=2))
        return
    from rich.table import Table
    from rich.text import Text

    def shown(key: str, value: Any) -> str:
        if key == "recall_at_1_drop":
            from stml_deploy.parity_metrics import recall_change_text

            return recall_change_text(value)
        if key.endswith("sha256") and isinstance(value, str):  # describe's naming rule
            return value[:12] + "..."
        if key.endswith("bytes") and isinstance(value, int):
            return f"{value / 1e6:.1f} MB" if value >= 100_000 else f"{value / 1e3:.1f} kB"
        if isinstance(value, float):
            return f"{value:.5g}"
        if isinstance(value, dict):
            return ", ".join(f"{k} {shown(k, v)}" for k, v in value.items() if v not in (None, {}))
        if isinstance(value, list):
            return ", ".join(shown(key, v) for v in value) if value else "-"
        return "-" if value is None else str(value)

    def rows_table(title: str, rows: list[dict[str, Any]], first: str | None = None) -> Table:
        columns = [first] if first else []
        columns += list(dict.fromkeys(k for row in rows for k in row if k != first))
        table = Table(title=title, title_justify="left", show_edge=False)
        for column in columns:
            table.add_column("R@1 change" if column == "recall_at_1_drop" else column)
        for row in rows:
            table.add_row(*(shown(c, row.get(c)) for c in columns))
        return table

    stdout.print(Text.assemble((str(data.get("kind", "")), "bold"), " ", str(data.get("path", ""))))
    scalars = Table.grid(padding=(0, 2))
    for key, value in data.items():
        if key not in ("kind", "path") and not isinstance(value, dict | list):
            scalars.add_row(key, shown(key, value))
    stdout.print(scalars)
    for key, value in data.items():
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            rows = [{"file": k, **v} for k, v in value.items()]  # e.g. artifacts
            stdout.print(rows_table(key, rows, "file"))
        elif isinstance(value, dict) and value:
            section = Table.grid(padding=(0, 2))
            for k, v in value.items():
                section.add_row(f"  {k}", shown(k, v))
            stdout.print(Text(key, style="bold"))
            stdout.print(section)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            stdout.print(rows_table(key, value))
        elif isinstance(value, list):
            stdout.print(Text.assemble((key, "bold"), "  ", shown(key, value)))


# --- Hugging Face Hub ----------------------------------------------------------------------
@app.command()
def push(
    package: Annotated[str, typer.Argument(help="Model package folder.")],
    repo_id: Annotated[
        str, typer.Argument(help="Hub repository, ORG/NAME (created when missing).")
    ],
    private: Annotated[bool, typer.Option(help="Create the repository private.")] = False,
    revision: Annotated[
        str | None, typer.Option(help="Branch to commit to (created when missing).")
    ] = None,
    create_pr: Annotated[
        bool, typer.Option(help="Open a pull request instead of committing to the branch.")
    ] = False,
    message: Annotated[str | None, typer.Option(help="Commit message.")] = None,
    token: Annotated[
        str | None,
        typer.Option(help="Hub token with write access [default: HF_TOKEN or the saved login]."),
    ] = None,
    replace_readme: Annotated[
        bool,
        typer.Option(
            help="Upload the generated model card even when the package has a README.md of yours."
        ),
    ] = False,
) -> None:
    """Publish a package: config, weights, ONNX, parity and a model card (never engines/ or training state)."""
    from stml_deploy.hub_transfer import push_package

    result = push_package(
        package, repo_id, private, revision, create_pr, message, token, replace_readme
    )
    card = (
        "your README.md (the generated card is uploaded with --replace-readme)"
        if result.readme == "yours"
        else "a generated model card"
    )
    if result.unchanged:
        stdout.print(
            f"nothing to push: {result.repo_id} already holds these files ({result.commit_url})"
        )
        return
    stdout.print(
        f"pushed {len(result.files)} files with {card} to {result.repo_id}: {result.commit_url}"
    )
    if result.pr_url:
        stdout.print(f"pull request: {result.pr_url}")


@app.command()
def pull(
    ref: Annotated[str, typer.Argument(help="ORG/NAME[@REVISION] (branch, tag or commit).")],
    out: Annotated[
        Path | None, typer.Option(help="Folder to write the package to [default: ./NAME].")
    ] = None,
    token: Annotated[str | None, typer.Option(help="Hub token for private repositories.")] = None,
) -> None:
    """Download a package from the Hub, checking every file's sha256."""
    from stml_deploy.hub import split_ref
    from stml_deploy.hub_transfer import download_package

    hub = split_ref(ref)
    repo_id = hub.repo_id
    target = out or Path(repo_id.split("/")[-1])
    package = download_package(repo_id, hub.revision, target, token=token)
    commit = package.config.hub.commit if package.config.hub else "?"
    stdout.print(
        f"{package.root}: {repo_id} at commit {commit} ({len(package.artifacts)} artifacts verified)"
    )


# --- demo ----------------------------------------------------------------------------------
@app.command()
def demo(
    out: Annotated[
        Path,
        typer.Option(
            help="Folder for the demo's model package, gallery, index and picture (replaced on every run)."
        ),
    ] = Path("runs/demo"),
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 6,
    max_train: Annotated[
        int, typer.Option(help="Training images (a seeded subset of classes 0-4).")
    ] = 6000,
    device: Device = "auto",
    workers: Workers = None,
) -> None:
    """The whole path on built-in data (Fashion-MNIST, else digits): train STML on classes 0-4,
    compare Recall@K on the held-out classes 5-9 before and after, export ONNX (fp32 + int8)
    with parity checks, index the held-out gallery and search it."""
    from export.demo_pipeline import run_demo

    result = run_demo(out, epochs, max_train, device, workers)
    _print_parity(result.parity)
    for r in result.hits:
        hits = ", ".join(f"{h['label']} ({h['score']:.3f})" for h in r.hits[1:])
        stdout.print(
            f"query {Path(r.query).name} [{r.label}]: itself first, then {hits}", markup=False
        )

    from rich.table import Table

    table = Table(title=f"held-out classes of {result.test_name}: before vs after STML")
    for column in (
        "metric",
        "initial (torch)",
        "after STML (torch)",
        "after STML (ONNX int8 index)",
    ):
        table.add_column(column, justify="left" if column == "metric" else "right")
    index_recall = result.index_recall_at_1
    for key in ("recall_at_1", "recall_at_2", "recall_at_4", "recall_at_8", "map_at_r", "nmi"):
        shown = f"{index_recall:.4f}" if key == "recall_at_1" and index_recall is not None else ""
        table.add_row(key, f"{result.before[key]:.4f}", f"{result.after[key]:.4f}", shown)
    stdout.print(table)
    stdout.print(
        f"model package: {result.model}   index: {result.index}   picture: {result.grid}",
        markup=False,
    )
    stdout.print(f"wall time: {result.seconds:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
