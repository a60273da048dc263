"""Runs the Python code in $HF_ISI_SNIPPET: lets tests start functions under ``accelerate launch``."""

import os

exec(compile(os.environ["HF_ISI_SNIPPET"], "<HF_ISI_SNIPPET>", "exec"))
