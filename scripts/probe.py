#!/usr/bin/env python
"""The main job: probe vision transformers layer by layer on an image dataset and write a results folder.

    accelerate launch scripts/probe.py                         # built-in default: reference ViTs on digits, offline
    accelerate launch scripts/probe.py --model_name_or_path google/vit-base-patch16-224 \\
        --dataset imagenet-1k --split validation --output_dir outputs/vit-b
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 scripts/probe.py   # 2 CPU processes
    accelerate launch scripts/probe.py run.yaml --max_samples 500   # a JSON/YAML config, then overrides
    python scripts/probe.py --help                             # one process also runs without a launcher

How it works. Every process takes a contiguous shard of the dataset (``hf_isi.data.shard_range``: no image
duplicated or dropped) and streams it through one ``hf_isi.Analyzer`` per model; the float64 accumulators are
all-reduced once per model, so any number of processes gives the same numbers. The main process writes the
folder (``hf_isi.results.write_results``). The run works in ``<output_dir>.partial/``, which also holds the
checkpoints (``checkpoints/``: the run's arguments, each rank's accumulators of the model in progress, the
report of every finished model); only a complete folder is renamed to ``<output_dir>``. ``--resume`` continues
a killed run from its checkpoints and ends with the same numbers as an uninterrupted run.

Bad input gives one line on stderr and exit status 2 (``--log_level debug`` adds the traceback).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import Any

import torch

from hf_isi import AnalysisConfig, Analyzer, Report, load_model
from hf_isi.data import (
    DatasetSpec,
    ImageBatches,
    RefusedFile,
    UnreadableImageError,
    default_image_processor,
    describe_image,
    load_image,
    load_image_dataset,
    num_classes,
    preprocess,
    shard_range,
)
from hf_isi.models import DTYPES
from hf_isi.results import write_results
from hf_isi.zoo import DEFAULT_MODELS

logger = logging.getLogger("hf_isi.probe")

PROG = "probe.py"
DESCRIPTION = ("Probe vision transformers layer by layer on an image dataset (ISI, probes, attention graphs, "
               "neural collapse, phases) and write a results folder. Flags, or a JSON/YAML config file first "
               "followed by overriding flags.")
CONFIG_SUFFIXES = (".json", ".yaml", ".yml")
LABEL_METRICS = ("probes", "collapse")
#: skipped-image ids listed in summary.json (the count is always exact)
MAX_LISTED_SKIPS = 1000


# -- arguments -------------------------------------------------------------------------------------------
@dataclass
class ModelArguments:
    model_name_or_path: list[str] = field(
        default_factory=lambda: list(DEFAULT_MODELS),
        metadata={"help": "Models to probe: Hub ids, local save_pretrained folders or built-in reference names "
                          "(hf_isi.zoo); the default is the reference depth family."})
    revision: str | None = field(default=None, metadata={"help": "Hub revision (branch, tag or commit) of the models."})
    dtype: str = field(default="fp32", metadata={"help": "Forward-pass dtype (accumulators stay float64).",
                                                 "choices": sorted(DTYPES)})

    def __post_init__(self) -> None:
        if isinstance(self.model_name_or_path, str):  # a config file may give one name
            self.model_name_or_path = [self.model_name_or_path]
        repeated = sorted({m for m in self.model_name_or_path if self.model_name_or_path.count(m) > 1})
        if repeated:
            raise ValueError(f"model(s) given more than once: {', '.join(repeated)}")


@dataclass
class DataArguments(DatasetSpec):
    dataset: str = field(default=DatasetSpec.dataset, metadata={
        "help": "'digits' (built in, offline), a local imagefolder directory, parquet file(s) (path or glob "
                "ending in .parquet) or a Hub dataset id."})
    split: str = field(default=DatasetSpec.split, metadata={"help": "Dataset split."})
    image_column: str = field(default=DatasetSpec.image_column, metadata={"help": "Column holding the images."})
    label_column: str = field(default=DatasetSpec.label_column, metadata={
        "help": "Column of integer class labels; without it, probes and neural collapse are skipped."})
    id_column: str | None = field(default=None, metadata={
        "help": "Column of stable example ids, which decide each image's fit/val/test split (None: the row index)."})
    max_samples: int | None = field(default=None, metadata={"help": "Use only the first N examples."})
    batch_size: int = field(default=32, metadata={"help": "Images per forward pass and process."})
    num_workers: int = field(default=0, metadata={"help": "DataLoader workers decoding images, per process."})
    strict: bool = field(default=False, metadata={"help": "Fail on an unreadable image instead of skipping it."})

    def spec(self) -> DatasetSpec:
        return DatasetSpec(**{f.name: getattr(self, f.name) for f in fields(DatasetSpec)})


@dataclass
class RunArguments:
    output_dir: str = field(default="outputs/probe", metadata={"help": "Where the results folder goes."})
    resume: bool = field(default=False, metadata={
        "help": "Continue the unfinished run in <output_dir>.partial from its checkpoints."})
    overwrite: bool = field(default=False, metadata={
        "help": "Replace an existing output_dir (or unfinished run) with a fresh run."})
    checkpoint_every: int = field(default=0, metadata={
        "help": "Also checkpoint every N batches (0: only by time)."})
    checkpoint_minutes: float = field(default=10.0, metadata={
        "help": "Checkpoint the accumulators at least this often, in minutes (0: never by time)."})
    plots: bool = field(default=True, metadata={"help": "Draw the PNG plots."})
    log_level: str = field(default="info", metadata={"help": "Logging level of the main process.",
                                                     "choices": ["debug", "info", "warning", "error"]})


ARGUMENT_CLASSES = (ModelArguments, DataArguments, AnalysisConfig, RunArguments)


@dataclass
class Arguments:
    model: ModelArguments
    data: DataArguments
    analysis: AnalysisConfig
    run: RunArguments

    def fingerprint(self) -> dict[str, Any]:
        """What decides the numbers: a resumed run must match it (batch size and workers do not matter)."""
        data = self.data.spec()
        return {"models": list(self.model.model_name_or_path), "revision": self.model.revision,
                "dtype": self.model.dtype, "dataset": asdict(data), "strict": self.data.strict,
                "analysis": asdict(self.analysis)}


def parse_args(argv: Sequence[str] | None = None) -> Arguments:
    """Command-line flags, or a JSON/YAML config file as the first argument followed by overriding flags."""
    from transformers import HfArgumentParser

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(ARGUMENT_CLASSES, prog=PROG, description=DESCRIPTION)
    if argv and not argv[0].startswith("-") and argv[0].endswith(CONFIG_SUFFIXES):
        parser.set_defaults(**read_config(argv.pop(0)))
    return Arguments(*parser.parse_args_into_dataclasses(argv))


def read_config(path: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
        values = json.loads(text) if path.endswith(".json") else __import__("yaml").safe_load(text)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read config file {path}: {_first_line(err)}") from err
    if not isinstance(values, dict):
        raise ValueError(f"config file {path} must hold a mapping of argument names to values")
    known = {f.name for cls in ARGUMENT_CLASSES for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"config file {path} has unknown arguments: {', '.join(unknown)}")
    return values


# -- the output folder -----------------------------------------------------------------------------------
class InputError(ValueError):
    """Bad input found before any work, identically on every process: only the main process reports it."""


class OutputError(ValueError):
    """The output location cannot be written (read-only, no permission, disk full)."""


def output_error(path: Path, err: BaseException) -> OutputError:
    """One line for a failed write: the path and the system's reason, without the library noise around it
    (torch reports a full disk as ``basic_ios::clear: iostream error``)."""
    reason = err.strerror if isinstance(err, OSError) and err.strerror else _first_line(err)
    return OutputError(f"cannot write {path}: {reason}; free some space or choose another --output_dir "
                       "(a run that has started continues with --resume)")


class Workspace:
    """``<output_dir>`` (complete results only) and its staging sibling ``<output_dir>.partial`` (the run in
    progress: checkpoints, then the outputs, renamed to ``<output_dir>`` when complete)."""

    def __init__(self, output_dir: str | os.PathLike) -> None:
        self.output_dir = Path(output_dir).resolve()
        self.staging = self.output_dir.with_name(self.output_dir.name + ".partial")
        self.checkpoints = self.staging / "checkpoints"
        self.run_file = self.checkpoints / "run.json"

    def plan(self, run: RunArguments, fingerprint: dict[str, Any]) -> str:
        """Decide, without touching anything, what this run does: ``"fresh"``, ``"resume"``, ``"publish"``
        (the staging folder is complete, only the final rename is missing) or ``"done"``. Refuses (ValueError)
        to clobber a folder the flags do not allow to."""
        for folder, ours in ((self.output_dir, "summary.json"), (self.staging, "checkpoints")):
            if folder.exists() and not _made_here(folder, ours):
                raise ValueError(f"{folder} exists and was not made by {PROG}; choose another --output_dir")
        if self.staging.exists():
            if not (run.resume or run.overwrite):
                raise ValueError(f"{self.staging} holds an unfinished run: pass --resume to continue it, "
                                 "or --overwrite to start afresh")
            if not run.resume:
                return "fresh"
            if (self.staging / "summary.json").is_file():
                return "publish"
            saved = json.loads(self.run_file.read_text()) if self.run_file.is_file() else fingerprint
            if saved != fingerprint:
                changed = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
                raise ValueError(f"the unfinished run in {self.staging} used other {', '.join(changed)}: resume "
                                 "with the same arguments, or pass --overwrite to start afresh")
            return "resume"
        if self.output_dir.exists():
            if run.overwrite:
                return "fresh"
            if run.resume:
                return "done"
            raise ValueError(f"{self.output_dir} already exists: pass --overwrite to replace it")
        return "fresh"

    def check_writable(self) -> None:
        """Fail before any work when the output location cannot be written (read-only, no permission): create
        and remove a file in the nearest existing folder of the staging folder's path."""
        folder = self.staging
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        try:
            handle, probe = tempfile.mkstemp(prefix=".probe-write-test-", dir=folder)
            os.close(handle)
            os.unlink(probe)
        except OSError as err:
            raise InputError(f"cannot write to {folder}: {err.strerror or _first_line(err)}; choose another "
                             "--output_dir") from err

    def prepare(self, mode: str, fingerprint: dict[str, Any]) -> None:
        """Main process only: a clean staging folder for a fresh run, the run's arguments recorded."""
        try:
            if mode == "fresh" and self.staging.exists():
                shutil.rmtree(self.staging)
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            if not self.run_file.is_file():
                _write_atomically(self.run_file, json.dumps(fingerprint, indent=2))
        except OSError as err:
            raise output_error(self.staging, err) from err

    def report_dir(self, index: int) -> Path:
        return self.checkpoints / f"model-{index}"

    def rank_checkpoint(self, index: int, rank: int) -> Path:
        return self.checkpoints / f"model-{index}-rank-{rank}.pt"

    def publish(self) -> None:
        """Main process only: drop the checkpoints and rename the staging folder to ``output_dir``; an older
        ``output_dir`` (``--overwrite``) is moved aside first and deleted only after the rename."""
        shutil.rmtree(self.checkpoints, ignore_errors=True)
        old = self.output_dir.with_name(f"{self.output_dir.name}.old-{os.getpid()}")
        try:
            if self.output_dir.exists():
                os.replace(self.output_dir, old)
            os.replace(self.staging, self.output_dir)
        except OSError as err:
            raise output_error(self.output_dir, err) from err
        shutil.rmtree(old, ignore_errors=True)


def _made_here(path: Path, marker: str) -> bool:
    """Only folders this script made (or empty ones) may be replaced: ``--overwrite`` never deletes others."""
    return path.is_dir() and ((path / marker).exists() or (path / "summary.json").is_file() or not any(path.iterdir()))


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# -- data ------------------------------------------------------------------------------------------------
def readable_images(ds: Any, data: DataArguments, with_labels: bool) -> Iterator[tuple[Any, int | None]]:
    """``(RGB image, label)`` of every readable row, in order, decoded one at a time; an unreadable one is
    skipped, or with ``--strict`` raises :class:`UnreadableImageError` naming its file."""
    for index in range(len(ds)):
        row = ds[index]
        value = row[data.image_column]
        try:
            image = load_image(value, describe_image(value, str(row[data.id_column] if data.id_column else index)))
        except UnreadableImageError as err:
            if data.strict:
                raise UnreadableImageError(f"{err}; fix or remove it, or drop --strict to skip it") from err
            continue
        yield image, int(row[data.label_column]) if with_labels else None


@dataclass
class Calibration:
    """The first readable images of the *global* dataset, identical on every process, so every process sets
    its accumulators up (ISI target scaling, projections, shifts) the same way. Each image is decoded once and
    at once turned into ``pixel_values`` for every model's image processor: what stays in memory is one tensor
    per distinct processor, at the models' input size, however large the images are."""

    pixel_values: dict[str, torch.Tensor]  # by model name
    labels: torch.Tensor | None

    @classmethod
    def from_dataset(cls, ds: Any, data: DataArguments, count: int, with_labels: bool,
                     processors: dict[str, Any]) -> Calibration:
        keys = {name: _processor_key(processor) for name, processor in processors.items()}
        distinct = {key: processors[name] for name, key in keys.items()}
        chunks: dict[str, list[torch.Tensor]] = {key: [] for key in distinct}
        labels = []
        for image, label in islice(readable_images(ds, data, with_labels), max(1, count)):
            for key, processor in distinct.items():
                chunks[key].append(preprocess(processor, [image]))  # per image: equal to one batched call
            labels.append(label)
        if not labels:
            raise ValueError(f"no readable image in the dataset '{data.dataset}' ({len(ds)} examples)")
        tensors = {key: torch.cat(parts) for key, parts in chunks.items()}
        return cls({name: tensors[key] for name, key in keys.items()},
                   torch.tensor(labels, dtype=torch.int64) if with_labels else None)


def _processor_key(processor: Any) -> str:
    to_json = getattr(processor, "to_json_string", None)
    return to_json() if callable(to_json) else f"id-{id(processor)}"


def image_file(ds: Any, data: DataArguments, ident: str) -> str | None:
    """The file an image id came from, when the dataset records paths (imagefolder) and ids are row indices:
    relative to the dataset folder when it lies inside it."""
    if data.id_column or not ident.isdigit():
        return None
    value = ds[int(ident)][data.image_column]
    path = value.get("path") if isinstance(value, dict) else None
    if path and Path(data.dataset).is_dir():
        root = os.path.realpath(data.dataset)
        if os.path.commonpath([root, os.path.realpath(path)]) == root:
            return os.path.relpath(os.path.realpath(path), root)
    return portable_path(path) if path else None


def label_metrics_possible(ds: Any, data: DataArguments) -> tuple[int | None, str | None]:
    """``(num_classes, None)``, or ``(None, why)`` when probes and neural collapse cannot run."""
    classes = num_classes(ds, data.label_column)
    if classes is None:
        return None, (f"the dataset has no label column '{data.label_column}' (columns: {', '.join(ds.column_names)})"
                      "; pass --label_column to enable them")
    if classes < 2:
        return None, f"the label column '{data.label_column}' has fewer than 2 classes"
    if min(ds[data.label_column][:]) < 0:  # e.g. ImageNet's test split: every label is -1
        return None, f"the label column '{data.label_column}' has negative labels (unlabelled examples)"
    return classes, None


# -- models ----------------------------------------------------------------------------------------------
def load_adapter(name: str, args: Arguments, device: Any) -> tuple[Any, Any]:
    """The model adapter and the image processor that turns images into its ``pixel_values``."""
    adapter = load_model(name, revision=args.model.revision, dtype=args.model.dtype, device=device,
                         attentions=args.analysis.needs_attentions)
    return adapter, adapter.image_processor or default_image_processor(adapter.image_size)


def check_models(args: Arguments, image: Any, device: Any) -> dict[str, Any]:
    """Fail fast, before any work is written: every model loads, is a vision transformer, and runs on one
    image. (Raises ``ModelError``, a ``ValueError``, with a one-line message.) Returns each model's image
    processor."""
    processors = {}
    for name in args.model.model_name_or_path:
        adapter, processors[name] = load_adapter(name, args, device)
        adapter.capture(preprocess(processors[name], [image]))
        _release(adapter)
    return processors


def _release(adapter: Any) -> None:
    del adapter
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# -- one model -------------------------------------------------------------------------------------------
@dataclass
class ShardProgress:
    """Where a process is in its shard: images consumed (used or skipped) and the ids it skipped."""

    done: int = 0
    skipped: list[str] = field(default_factory=list)
    last_saved: float = field(default_factory=time.monotonic)
    batches_since_saved: int = 0
    saves: int = 0


class ModelRun:
    """The analysis of one model on this process's shard: setup, (resume), stream, checkpoint, all-reduce."""

    def __init__(self, index: int, name: str, args: Arguments, ctx: RunContext) -> None:
        self.index, self.name, self.args, self.ctx = index, name, args, ctx
        acc = ctx.accelerator
        self.shard = shard_range(len(ctx.ds), acc.process_index, acc.num_processes)
        self.checkpoint = ctx.workspace.rank_checkpoint(index, acc.process_index)

    @property
    def finaliser(self) -> int:
        """The rank that turns this model's global state into its report: models are dealt round-robin over the
        main node's ranks (global ranks ``0..LOCAL_WORLD_SIZE-1``, so the main process can read the report from
        local disk), and the finalisations (eigendecompositions, probe fits) of several models run in parallel
        with the next model's streaming."""
        acc = self.ctx.accelerator
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", acc.num_processes))
        return self.index % max(1, min(acc.num_processes, local_world))

    def run(self) -> None:
        """Analyse the model; its finaliser rank writes the report to ``report_dir`` (read back by :func:`run`)."""
        ctx, acc = self.ctx, self.ctx.accelerator
        finished = ctx.workspace.report_dir(self.index)
        if (finished / "summary.json").is_file():
            logger.info("%s: already analysed (checkpoint), skipping", self.name)
            return
        start = time.perf_counter()
        adapter, processor = load_adapter(self.name, self.args, acc.device)
        analyzer = Analyzer(adapter, ctx.analysis, ctx.num_classes)
        calib = ctx.calibration
        analyzer.setup(calib.pixel_values[self.name], calib.labels)
        progress = self.restore(analyzer)
        logger.info("%s: %d layers, %d images on %d process(es)%s", self.name, adapter.num_layers, len(ctx.ds),
                    acc.num_processes, f", resuming at image {progress.done} of this shard" if progress.done else "")
        self.stream(analyzer, processor, progress)

        analyzer.sync(acc)
        from accelerate.utils import gather_object

        skipped = sorted({i for ids in gather_object([progress.skipped]) for i in ids}, key=_natural)
        # Every rank is past the previous model's sync, so its finaliser has written that report to disk
        # (a rank finalises before it streams the next model): the previous rank checkpoints are obsolete.
        if self.index > 0:
            ctx.workspace.rank_checkpoint(self.index - 1, acc.process_index).unlink(missing_ok=True)
        if acc.process_index == self.finaliser:
            report = analyzer.report(**ctx.provenance(), finalised_by_rank=acc.process_index,
                                     num_images_skipped=len(skipped),
                                     skipped_ids=skipped[:MAX_LISTED_SKIPS], resumed=ctx.mode == "resume",
                                     wall_time_s=round(time.perf_counter() - start, 3))
            _save_report(report, finished)
        _release(adapter)

    def restore(self, analyzer: Analyzer) -> ShardProgress:
        """This rank's checkpoint of this model, if it covers the same shard (same process count)."""
        if not self.checkpoint.is_file():
            return ShardProgress()
        state = torch.load(self.checkpoint, map_location=analyzer.adapter.device, weights_only=True)
        if state["model"] != self.name or tuple(state["shard"]) != (self.shard.start, self.shard.stop):
            logger.warning("%s: the checkpoint of rank %d covers another shard (another process count?); this "
                           "model starts over", self.name, self.ctx.accelerator.process_index)
            return ShardProgress()
        analyzer.load_state_dict(state["analyzer"])
        return ShardProgress(done=state["done"], skipped=list(state["skipped"]))

    def save(self, analyzer: Analyzer, progress: ShardProgress) -> None:
        """This rank's accumulators and position, written to a temporary file and renamed (never half-written)."""
        state = {"model": self.name, "shard": [self.shard.start, self.shard.stop], "done": progress.done,
                 "skipped": progress.skipped, "analyzer": analyzer.state_dict()}
        tmp = self.checkpoint.with_name(self.checkpoint.name + ".tmp")
        writer = None
        try:
            with open(tmp, "wb") as handle:
                writer = _ErrnoWriter(handle)
                torch.save(state, writer)
            os.replace(tmp, self.checkpoint)
        except (OSError, RuntimeError) as err:
            tmp.unlink(missing_ok=True)
            raise output_error(self.checkpoint, (writer and writer.error) or err) from err
        progress.last_saved, progress.batches_since_saved = time.monotonic(), 0
        progress.saves += 1

    def checkpoint_due(self, progress: ShardProgress) -> bool:
        run = self.args.run
        by_count = run.checkpoint_every > 0 and progress.batches_since_saved >= run.checkpoint_every
        by_time = run.checkpoint_minutes > 0 and time.monotonic() - progress.last_saved >= 60 * run.checkpoint_minutes
        return by_count or by_time

    def stream(self, analyzer: Analyzer, processor: Any, progress: ShardProgress) -> None:
        ctx, data, acc = self.ctx, self.args.data, self.ctx.accelerator
        batches = ImageBatches(ctx.ds, processor, indices=self.shard[progress.done:], batch_size=data.batch_size,
                               image_column=data.image_column,
                               label_column=data.label_column if ctx.num_classes else None,
                               id_column=data.id_column, strict=data.strict, num_workers=data.num_workers)
        bar = _ProgressBar(self.name, len(ctx.ds), progress.done, acc)
        try:
            for batch in batches:
                if batch.pixel_values is not None:
                    analyzer.update(batch.pixel_values, batch.labels, batch.ids)
                progress.done += len(batch.ids) + len(batch.skipped)
                progress.skipped += batch.skipped
                progress.batches_since_saved += 1
                bar.update(len(batch.ids) + len(batch.skipped), len(progress.skipped))
                if self.checkpoint_due(progress):
                    self.save(analyzer, progress)
        except BaseException:
            bar.close(complete=False)  # ends the bar's line: an error message starts on a line of its own
            raise
        bar.close()
        # A long shard (one that has checkpointed) also checkpoints its end: waiting for the other processes
        # must not risk its work. Short ones skip it: a checkpoint can be ~1 GB.
        if progress.batches_since_saved and (progress.saves or self.args.run.checkpoint_every > 0):
            self.save(analyzer, progress)


class _ErrnoWriter:
    """A file for ``torch.save`` that keeps the ``OSError`` of a failed write: torch reports a full disk only as
    ``unexpected pos`` or ``basic_ios::clear: iostream error``."""

    def __init__(self, handle: Any) -> None:
        self.handle, self.error = handle, None

    def write(self, data: Any) -> int:
        try:
            return self.handle.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.handle.flush()


class _ProgressBar:
    """A tqdm bar on the main process over the *global* dataset (images/s, ETA): with k processes, each of
    the main process's images stands for k (the shards differ by at most one image)."""

    def __init__(self, name: str, total: int, done: int, accelerator: Any) -> None:
        from tqdm.auto import tqdm

        self.scale = accelerator.num_processes
        self.bar = tqdm(total=total, initial=min(total, done * self.scale), desc=name, unit="img",
                        disable=not accelerator.is_main_process, dynamic_ncols=True)

    def update(self, images: int, skipped: int) -> None:
        self.bar.update(min(images * self.scale, self.bar.total - self.bar.n))
        if skipped:
            self.bar.set_postfix(skipped=skipped, refresh=False)

    def close(self, complete: bool = True) -> None:
        if complete:
            self.bar.update(self.bar.total - self.bar.n)
        self.bar.close()


def _save_report(report: Report, folder: Path) -> None:
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        report.save(tmp)
        os.replace(tmp, folder)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise output_error(folder, err) from err


def _natural(ident: str) -> tuple[int, Any]:
    return (0, int(ident)) if ident.isdigit() else (1, ident)


# -- the run ---------------------------------------------------------------------------------------------
@dataclass
class RunContext:
    """What every model of the run shares."""

    accelerator: Any
    workspace: Workspace
    mode: str
    ds: Any
    analysis: AnalysisConfig
    num_classes: int | None
    calibration: Calibration
    args: Arguments
    refused: list[RefusedFile] = field(default_factory=list)

    def provenance(self) -> dict[str, Any]:
        acc = self.accelerator
        dataset = asdict(self.args.data.spec())
        return {"num_processes": acc.num_processes, "distributed_type": acc.distributed_type.value,
                "device": str(acc.device), "command_line": command_line(self.workspace.output_dir),
                "dataset": {**dataset, "dataset": portable_path(dataset["dataset"])}}


def portable_path(value: str, output_dir: Path | None = None) -> str:
    """A path as it may be published: relative to the output folder when inside it (``./plots``), else with the
    home folder written ``~``; anything else (a Hub id, a relative path, a path elsewhere) unchanged."""
    if not isinstance(value, str) or not os.path.isabs(value):
        return value
    path = os.path.normpath(value)
    if output_dir is not None and os.path.commonpath([output_dir, path]) == str(output_dir) and path != str(output_dir):
        return os.path.join(".", os.path.relpath(path, output_dir))
    home = os.path.normpath(os.path.expanduser("~"))
    if home != os.sep and os.path.commonpath([home, path]) == home:
        return os.path.join("~", os.path.relpath(path, home)) if path != home else "~"
    return value


def command_line(output_dir: Path | None = None) -> str:
    """The command that made the results, its paths made :func:`portable <portable_path>`."""
    def portable(arg: str) -> str:
        flag, sep, value = arg.partition("=")
        return f"{flag}={portable_path(value, output_dir)}" if sep and flag.startswith("-") \
            else portable_path(arg, output_dir)

    script, *rest = sys.argv or [""]
    # the script as a user would type it from where the run started (scripts/probe.py), not its absolute path
    cwd = os.getcwd()
    if os.path.isabs(script) and script.startswith(cwd.rstrip(os.sep) + os.sep):
        script = os.path.relpath(script, cwd)
    return shlex.join([os.path.basename(sys.executable), portable(script), *(portable(a) for a in rest)])


def run(args: Arguments, accelerator: Any) -> Path | None:
    """The whole job; returns the output folder on the main process (``None`` elsewhere or when done)."""
    started, wall = datetime.now(timezone.utc), time.perf_counter()
    workspace = Workspace(args.run.output_dir)
    fingerprint = args.fingerprint()
    try:
        mode = workspace.plan(args.run, fingerprint)
    except ValueError as err:  # the same on every process
        raise InputError(str(err)) from err
    if mode == "done":
        logger.info("%s is complete; pass --overwrite to compute it again", workspace.output_dir)
        return None
    if mode == "publish":  # killed after writing everything, before the rename
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            workspace.publish()
        return workspace.output_dir if accelerator.is_main_process else None

    # Everything that can fail on bad input fails here, on every process alike, before anything is written.
    try:
        ds, analysis, classes, calibration, refused = check_inputs(args, workspace, accelerator)
    except InputError:
        raise
    except ValueError as err:  # ModelError, UnreadableImageError (--strict), a bad dataset...
        raise InputError(str(err)) from err

    accelerator.wait_for_everyone()  # every process has planned before the main process changes anything
    if accelerator.is_main_process:
        workspace.prepare(mode, fingerprint)
    accelerator.wait_for_everyone()

    ctx = RunContext(accelerator, workspace, mode, ds, analysis, classes, calibration, args, refused)
    names = args.model.model_name_or_path
    for index, name in enumerate(names):
        logger.info("model %d/%d: %s", index + 1, len(names), name)
        ModelRun(index, name, args, ctx).run()
    accelerator.wait_for_everyone()  # every report is on disk: no rank checkpoint is needed any more
    for index in range(len(names)):
        workspace.rank_checkpoint(index, accelerator.process_index).unlink(missing_ok=True)
    if not accelerator.is_main_process:
        return None
    reports = [Report.load(workspace.report_dir(index)) for index in range(len(names))]
    summary = run_summary(ctx, reports, started, time.perf_counter() - wall)
    try:
        write_results(reports, workspace.staging, run=summary, plots=args.run.plots)
    except OSError as err:
        raise output_error(workspace.staging, err) from err
    workspace.publish()
    logger.info("results in %s (%.1f s)", workspace.output_dir, time.perf_counter() - wall)
    return workspace.output_dir


def check_inputs(args: Arguments, workspace: Workspace, accelerator: Any) -> tuple[Any, AnalysisConfig, int | None,
                                                                                  Calibration, list[RefusedFile]]:
    """The dataset, the metrics that can run on it, the number of classes, the calibration images and the files
    of the dataset folder that are refused; raises ``ValueError`` (one line) on bad input."""
    workspace.check_writable()
    refused: list[RefusedFile] = []
    ds = load_image_dataset(args.data.spec(), strict=args.data.strict, refused=refused)
    if len(ds) == 0:
        raise ValueError(f"the dataset '{args.data.dataset}' split '{args.data.split}' is empty")
    analysis, classes = args.analysis, None
    if analysis.needs_labels:
        classes, why = label_metrics_possible(ds, args.data)
        if why:
            if accelerator.is_main_process:
                logger.warning("probes and neural-collapse metrics are skipped: %s", why)
            analysis = replace(analysis, metrics=[m for m in analysis.metrics if m not in LABEL_METRICS])
    first = next(readable_images(ds, args.data, with_labels=False), None)
    if first is None:
        raise ValueError(f"no readable image in the dataset '{args.data.dataset}' ({len(ds)} examples)")
    processors = check_models(args, first[0], accelerator.device)
    calibration = Calibration.from_dataset(ds, args.data, analysis.calibration_images, bool(classes), processors)
    return ds, analysis, classes, calibration, refused


def run_summary(ctx: RunContext, reports: list[Report], started: datetime, seconds: float) -> dict[str, Any]:
    """The ``run`` block of summary.json: how and on what the numbers were made. Every model saw the same
    images, so the first report's skipped images are the run's."""
    args, first = ctx.args, reports[0].provenance
    num_skipped, skipped = first["num_images_skipped"], first["skipped_ids"]
    return {
        **ctx.provenance(),
        "models": list(args.model.model_name_or_path),
        "revision": args.model.revision,
        "dtype": args.model.dtype,
        "seed": ctx.analysis.seed,
        "metrics": list(ctx.analysis.metrics),
        "num_classes": ctx.num_classes,
        "num_examples": len(ctx.ds),
        "num_images": len(ctx.ds) - num_skipped,
        "num_images_skipped": num_skipped,
        "skipped_ids": skipped,
        "skipped_files": [image_file(ctx.ds, args.data, i) for i in skipped],
        "skipped_ids_truncated": num_skipped > len(skipped),
        "num_files_refused": len(ctx.refused),  # never opened: see hf_isi.data.list_image_folder
        "refused_files": [{"file": r.path, "reason": r.reason} for r in ctx.refused[:MAX_LISTED_SKIPS]],
        "resumed": ctx.mode == "resume",
        "started_at": started.isoformat(timespec="seconds"),
        "wall_time_s": round(seconds, 3),
        "arguments": {"model": asdict(args.model),
                      "data": {**asdict(args.data), "dataset": portable_path(args.data.dataset)},
                      "analysis": asdict(ctx.analysis),
                      "run": {**asdict(args.run), "output_dir": portable_path(args.run.output_dir)}},
    }


# -- entry point -----------------------------------------------------------------------------------------
def setup_logging(level: str, accelerator: Any) -> None:
    """Concise logs: the main process at ``level``, the others warnings only; library chatter silenced."""
    import datasets
    import transformers

    prefix = f"[rank {accelerator.process_index}] " if accelerator.num_processes > 1 else ""
    logging.basicConfig(format=f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("hf_isi").setLevel(level.upper() if accelerator.is_main_process else logging.WARNING)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()


def fail(err: BaseException, accelerator: Any = None) -> int:
    """One line on stderr, exit status 2; the traceback only at ``--log_level debug``. Bad input found by every
    process alike (:class:`InputError`) is reported by the main process only."""
    multi = accelerator is not None and accelerator.num_processes > 1
    if multi and isinstance(err, InputError) and not accelerator.is_main_process:
        return 2
    rank = f"[rank {accelerator.process_index}] " if multi and not isinstance(err, InputError) else ""
    logger.debug("traceback", exc_info=err)
    print(f"{PROG}: error: {rank}{_first_line(err)}", file=sys.stderr, flush=True)
    return 2


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except ValueError as err:  # a bad config file or an invalid AnalysisConfig
        return fail(err)
    from accelerate import Accelerator

    accelerator = Accelerator()
    setup_logging(args.run.log_level, accelerator)
    try:
        run(args, accelerator)
    except (ValueError, OSError) as err:  # InputError (bad input), OutputError (cannot write), ...
        return fail(err, accelerator)
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
