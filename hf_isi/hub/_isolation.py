"""The import check of a built Space, run in a fresh Python by :func:`hf_isi.hub.checks.run_isolated`::

    cd <built folder> && python -m hf_isi.hub._isolation {space,metric} <built folder> <checkout>

Run from the built folder, ``-m`` finds the folder's own ``hf_isi/`` copy first (the folder is ``sys.path[0]``).
The check then drops every ``sys.path`` entry inside the checkout and setuptools' editable-install finders, so
nothing can fall back on the checkout; it imports the Space's ``app.py`` without launching it, asserts that
``hf_isi`` came from the folder's copy and that ``app.py`` defines a ``gradio.Blocks`` called ``demo``. The
``metric`` check also loads the evaluate module by path (``evaluate.load(folder)``) and computes on random
inputs. It prints one line, :data:`MARKER` + JSON; any failure exits non-zero with the reason last on stderr.

Only the standard library is imported at module level: the environment is cleaned before anything else loads.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from typing import Any

#: prefix of the result line on stdout
MARKER = "@@"
CHECKS = ("space", "metric")


def _inside(path: str | None, root: str) -> bool:
    path = os.path.realpath(path or os.getcwd())
    return path == root or path.startswith(root + os.sep)


def isolate(folder: str, checkout: str) -> None:
    """Only ``folder`` and site-packages stay importable: no checkout path, no editable-install finder."""
    sys.meta_path[:] = [f for f in sys.meta_path
                        if "__editable__" not in (getattr(f, "__module__", "") or type(f).__module__)]
    sys.path[:] = [folder] + [p for p in sys.path if p and not _inside(p, checkout) and not _inside(p, folder)]


def import_app(folder: str) -> Any:
    """The folder's ``app.py`` as module ``space_app`` (imported, not launched)."""
    spec = importlib.util.spec_from_file_location("space_app", os.path.join(folder, "app.py"))
    if spec is None or spec.loader is None:
        raise SystemExit("app.py cannot be imported")
    app = importlib.util.module_from_spec(spec)
    sys.modules["space_app"] = app
    spec.loader.exec_module(app)
    return app


def check_space(folder: str) -> dict[str, Any]:
    app = import_app(folder)
    import gradio

    import hf_isi
    from hf_isi import zoo

    origin = os.path.realpath(hf_isi.__file__)
    if not _inside(origin, folder):
        raise SystemExit(f"hf_isi was imported from {origin}, not from the Space's copy")
    if not isinstance(getattr(app, "demo", None), gradio.Blocks):
        raise SystemExit("app.py defines no gradio Blocks called demo")
    return {"hf_isi": os.path.relpath(origin, folder), "blocks": type(app.demo).__name__,
            "models": zoo.trained_reference_models()}


def check_metric(folder: str) -> dict[str, Any]:
    out = check_space(folder)
    import evaluate
    import numpy as np

    metric = evaluate.load(folder, isi_dim=2, calibration_images=16)
    rng = np.random.default_rng(0)
    res = metric.compute(hidden_states=rng.normal(size=(40, 3, 5, 4)), patch_embeddings=rng.normal(size=(40, 4, 4)))
    return {**out, "module": metric.name, "isi_mean": float(res["isi_mean"])}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3 or args[0] not in CHECKS:
        print(f"usage: python -m hf_isi.hub._isolation {{{','.join(CHECKS)}}} <folder> <checkout>", file=sys.stderr)
        return 2
    check, folder, checkout = args[0], os.path.realpath(args[1]), os.path.realpath(args[2])
    isolate(folder, checkout)
    out = check_metric(folder) if check == "metric" else check_space(folder)
    print(MARKER + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
