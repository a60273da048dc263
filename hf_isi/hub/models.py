"""Model repos ``<ns>/<name>``: the files of a ``save_pretrained`` folder plus its model card
(``model_cards/<name>.md``), checked by loading them the way a user will, without running any custom code."""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path
from typing import Any

from ..utils import first_line
from .folders import (
    HubFolder,
    PublishError,
    RepoKind,
    Target,
    copy_files,
    default_source,
    fresh_dir,
    list_files,
    model_name,
    repo_root,
)


def targets(out: Path, options: Any) -> list[Target]:
    """One target per model (default: every reference model); none is a build error of its own."""
    from .. import zoo

    names = list(options.models) if options.models is not None else zoo.list_reference_models()
    if not names:
        return [Target("models", out / "models", _nothing)]
    cards = (Path(options.model_cards_dir) if options.model_cards_dir is not None
             else default_source(repo_root(), "model_cards"))
    return [Target(model_name(m), out / "models" / model_name(m),
                   functools.partial(build_model_folder, m, out, model_cards_dir=cards)) for m in names]


def _nothing() -> HubFolder:
    raise PublishError("no models to publish")


def build_model_folder(model: str | os.PathLike, out_dir: str | os.PathLike, *,
                       model_cards_dir: str | os.PathLike | None) -> HubFolder:
    """A model repo: the files of a ``save_pretrained`` folder plus ``README.md`` = ``<model_cards_dir>/<name>.md``.

    ``model`` is a built-in reference model name (its folder inside the package) or a path; the repo name is
    the reference name or the folder's name. A missing card does not stop the build, it fails validation.
    """
    from .. import zoo

    name = model_name(model)
    if str(model) in zoo.list_reference_models():
        try:
            source = zoo.trained_reference_path(str(model))
        except FileNotFoundError as err:
            raise PublishError(str(err)) from None
    else:
        source = Path(model)
        if not (source / "config.json").is_file():
            raise PublishError(f"{source} is not a save_pretrained model folder (no config.json)")
    folder = HubFolder("models", name, fresh_dir(Path(out_dir), "models", name), sources=[source])
    copy_files(source, folder.path, [rel for rel in list_files(source) if rel != "README.md"])  # card: below
    card = Path(model_cards_dir) / f"{name}.md" if model_cards_dir is not None else None
    if card is not None and card.is_file():
        shutil.copy2(card, folder.path / "README.md")
        folder.sources.append(card)
    folder.meta["card_source"] = str(card) if card is not None else None
    return folder


def validate_model_folder(folder: HubFolder) -> None:
    """A model repo: a model card is there and its metadata round-trips (``ModelCard.load`` gives
    ``eval_results``, which serialise and parse back equal), and the model and its image processor load with
    ``from_pretrained(folder, local_files_only=True, trust_remote_code=False)``."""
    from huggingface_hub import ModelCard

    card_file = folder.path / "README.md"
    if not card_file.is_file():
        where = folder.meta.get("card_source") or "model_cards/<name>.md"
        folder.errors.append(f"no model card: {where} is missing. Write it (huggingface_hub ModelCard with "
                             "eval_results) before publishing; a model is never uploaded without its card")
    else:
        card = ModelCard.load(card_file)
        results = _eval_results(card)
        if not results:
            folder.errors.append("the model card has no eval_results (model-index) in its metadata")
        else:
            if _eval_results(ModelCard(f"---\n{card.data.to_yaml()}\n---\n")) != results:
                folder.errors.append("the model card's eval_results do not round-trip through its YAML")
            else:
                folder.checks.append(f"ModelCard.load(README.md) round-trips {len(results)} eval_results "
                                     f"({', '.join(sorted({r.metric_type for r in results}))})")
        if not card.text.strip():
            folder.warnings.append("the model card has metadata but no text")
    _check_model_loads(folder)


KIND = RepoKind("models", "model", "a reference model", targets, validate_model_folder)


def _eval_results(card: Any) -> list[Any]:
    """The model-index results of a ``ModelCard`` (``ModelCardData.eval_results``), as a list."""
    return list(getattr(card.data, "eval_results", None) or [])


def _check_model_loads(folder: HubFolder) -> None:
    import transformers

    path = folder.path
    if not ((path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file()):
        folder.errors.append("no model.safetensors (weights are published as safetensors only)")
        return
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        _load_model_and_processor(folder, transformers)
    finally:
        if bars:
            transformers.utils.logging.enable_progress_bar()


def _load_model_and_processor(folder: HubFolder, transformers: Any) -> None:
    """Config, model (the class its config names, else ``AutoModel``) and image processor, from the folder
    only; ``trust_remote_code=False``: a folder whose config points at custom code fails, its code never runs."""
    path = folder.path
    local = {"local_files_only": True, "trust_remote_code": False}
    try:
        config = transformers.AutoConfig.from_pretrained(path, **local)
        arch = (getattr(config, "architectures", None) or [None])[0]
        cls = getattr(transformers, arch, None) if arch else None
        cls = cls or transformers.AutoModel
        model, info = cls.from_pretrained(path, config=config, output_loading_info=True, **local)
        num = sum(p.numel() for p in model.parameters())
        del model
    except Exception as err:  # noqa: BLE001
        folder.errors.append(f"from_pretrained(folder) fails: {type(err).__name__}: {first_line(err, 300)}")
        return
    bad = {k: sorted(v)[:5] for k, v in info.items() if k in ("missing_keys", "mismatched_keys") and v}
    if bad:
        folder.errors.append(f"from_pretrained(folder) does not load every weight: {bad}")
        return
    folder.checks.append(f"{cls.__name__}.from_pretrained(folder, local_files_only=True) loads ({num:,} parameters)")
    try:
        processor = transformers.AutoImageProcessor.from_pretrained(path, **local)
        folder.checks.append(f"AutoImageProcessor.from_pretrained(folder) loads ({type(processor).__name__})")
    except Exception as err:  # noqa: BLE001
        folder.warnings.append(f"no loadable image processor ({type(err).__name__}: {first_line(err, 120)})")
