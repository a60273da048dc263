#!/usr/bin/env python
"""Publish a run to the Hugging Face Hub: the results dataset, the isi metric Space, the demo Space and the
reference models. Every folder is built and validated locally first; nothing is uploaded unless all pass.

    python scripts/publish.py                                  # no token: a dry run (build, validate, print the plan)
    python scripts/publish.py --namespace me --dry_run         # the plan with your repo ids, still nothing uploaded
    python scripts/publish.py --namespace me                   # upload (token from HF_TOKEN or `hf auth login`)
    python scripts/publish.py --namespace me --what dataset --results_dir outputs/probe outputs/probe-vit-b
    python scripts/publish.py --namespace my-org --private --what models space

Built folders (``--out_dir``, default ``outputs/hub``), one per repo:

    datasets/hf-isi-results/   README.md (card: configs + provenance), results/<model>.parquet, summary.json, plots/
    spaces/isi/                README.md (metric card), isi.py, app.py, requirements.txt, hf_isi/
    spaces/hf-isi-demo/        README.md, app.py, requirements.txt, examples/, hf_isi/ (with reference_models/)
    models/<name>/             README.md (model_cards/<name>.md), config.json, model.safetensors,
                               preprocessor_config.json, training_results.json

Exit status: 0 done (or dry run with every folder valid); 1 a folder failed to build or validate (nothing
uploaded); 2 bad arguments; 3 an upload failed part-way (the message names the repo that failed and those
already uploaded; the local folders are unchanged, re-run to finish).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hf_isi import hub

PROG = "publish.py"
REPO = Path(__file__).resolve().parents[1]
WHAT = list(hub.KINDS)


@dataclass
class PublishArguments:
    results_dir: list[str] = field(default_factory=lambda: ["outputs/probe"], metadata={
        "help": "Results folder(s) of scripts/probe.py for the dataset repo. One parquet file and dataset config "
                "per model (plus the default config 'all' with every row); several folders are merged (their "
                "model names must differ)."})
    namespace: str | None = field(default=None, metadata={
        "help": "Hub user or organisation the repos go to (required to upload)."})
    what: list[str] = field(default_factory=lambda: list(WHAT), metadata={
        "help": "What to publish: any of dataset, metric (the isi evaluate Space), space (the demo Space), "
                "models (one repo per reference model).", "choices": WHAT})
    out_dir: str = field(default="outputs/hub", metadata={"help": "Where the Hub-ready folders are built."})
    dry_run: bool = field(default=False, metadata={
        "help": "Build and validate, print the plan, upload nothing (the default when no token is found)."})
    private: bool = field(default=False, metadata={"help": "Create the repos as private."})
    revision: str | None = field(default=None, metadata={
        "help": "Branch to commit to (created if missing); default main."})
    models: list[str] | None = field(default=None, metadata={
        "help": "Models to publish: reference model names or save_pretrained folders (default: every "
                "reference model)."})
    model_cards_dir: str = field(default=str(REPO / "model_cards"), metadata={
        "help": "Folder of the model cards, <name>.md; a model without a card is never published."})
    dataset_name: str = field(default=hub.DEFAULT_DATASET_NAME, metadata={"help": "Name of the dataset repo."})
    space_name: str = field(default=hub.DEFAULT_SPACE_NAME, metadata={
        "help": f"Name of the demo Space (the metric Space is always '{hub.METRIC_SPACE_NAME}', so that "
                f"evaluate.load('<namespace>/{hub.METRIC_SPACE_NAME}') finds its module)."})
    log_level: str = field(default="warning", metadata={"help": "Logging level.",
                                                        "choices": ["debug", "info", "warning", "error"]})


def parse_args(argv: Sequence[str] | None = None) -> PublishArguments:
    from transformers import HfArgumentParser

    parser = HfArgumentParser(PublishArguments, prog=PROG, description=__doc__.split("\n\n")[0])
    (args,) = parser.parse_args_into_dataclasses(list(sys.argv[1:] if argv is None else argv))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    from huggingface_hub import get_token

    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    token = hub.Secret(get_token())  # HF_TOKEN or the stored login; never printed or written
    dry_run = args.dry_run or not token
    if not dry_run and not args.namespace:
        print(f"{PROG}: error: --namespace is required to upload (or pass --dry_run)", file=sys.stderr)
        return 2
    try:
        folders = hub.build_all(
            args.out_dir, what=args.what, results_dirs=args.results_dir, models=args.models,
            model_cards_dir=args.model_cards_dir, isi_dir=REPO / "isi", space_dir=REPO / "spaces_app",
            dataset_name=args.dataset_name, space_name=args.space_name, namespace=args.namespace)
    except hub.PublishError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    print(hub.format_plan(folders, args.namespace, private=args.private, revision=args.revision))
    failed = [f for f in folders if not f.ok]
    if failed:
        print(f"{len(failed)} of {len(folders)} folder(s) failed validation: "
              f"{', '.join(f.repo_id(args.namespace) for f in failed)}. Nothing was uploaded.", file=sys.stderr)
        return 1
    if dry_run:
        why = "--dry_run" if args.dry_run else "no Hugging Face token found (set HF_TOKEN or run `hf auth login`)"
        print(f"Dry run ({why}): nothing was uploaded. {len(folders)} repo(s) would be created or updated.")
        return 0
    try:
        uploaded = hub.upload_folders(folders, args.namespace, token=token, private=args.private,
                                      revision=args.revision, log=print)
    except hub.UploadError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 3
    except hub.PublishError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    print(f"Published {len(uploaded)} repo(s): " + ", ".join(f"{u.repo_type} {u.repo_id}" for u in uploaded))
    return 0


if __name__ == "__main__":
    sys.exit(main())
