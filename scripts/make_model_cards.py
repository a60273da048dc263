#!/usr/bin/env python
"""Write ``model_cards/<name>.md`` for the reference models from their ``training_results.json`` and the
depth study's analysis (``docs/depth_study/results``), with huggingface_hub's ``ModelCard``.

    python scripts/make_model_cards.py                       # after scripts/depth_study.py
    python scripts/make_model_cards.py --results_dir outputs/probe
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import ModelCard
from transformers import HfArgumentParser

from hf_isi.cards import reference_model_card
from hf_isi.results import load_results
from hf_isi.zoo import REFERENCE_MODELS, list_reference_models, reference_model_path


@dataclass
class CardArguments:
    models: list[str] = field(default_factory=list_reference_models, metadata={"help": "Reference models."})
    results_dir: str = field(default="docs/depth_study/results",
                             metadata={"help": "A results folder (scripts/probe.py) holding these models."})
    output_dir: str = field(default="model_cards", metadata={"help": "Where <name>.md is written."})


def main(argv: Sequence[str] | None = None) -> int:
    (args,) = HfArgumentParser(CardArguments).parse_args_into_dataclasses(args=argv)
    reports = load_results(args.results_dir) if Path(args.results_dir).exists() else {}
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        training_file = reference_model_path(name) / "training_results.json"
        if not training_file.is_file():
            print(f"make_model_cards.py: error: {name} is not trained ({training_file} missing)", file=sys.stderr)
            return 2
        if name not in reports:
            print(f"make_model_cards.py: error: {args.results_dir} has no analysis of {name}; run "
                  "scripts/depth_study.py (or pass --results_dir)", file=sys.stderr)
            return 2
        card = reference_model_card(name, json.loads(training_file.read_text()), reports[name],
                                    REFERENCE_MODELS[name].description)
        path = out / f"{name}.md"
        card.save(path)
        assert ModelCard.load(path).data.eval_results[0].metric_value == card.data.eval_results[0].metric_value
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
