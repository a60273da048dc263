"""``accelerate launch`` that ends with the script's own exit status, without the launcher's traceback.

    python -m hf_isi.launch [accelerate launch options] scripts/probe.py [probe.py options]
    ACCELERATE_USE_CPU=1 python -m hf_isi.launch --multi_gpu --num_processes 2 scripts/probe.py ...

The options are exactly those of ``accelerate launch`` (it is accelerate's own launcher, run in this process).
Why: accelerate 1.15 answers a script that exits non-zero with a traceback of its own and exit status 1: a
``CalledProcessError`` for one process (``-q`` hides it, still exit 1), torchrun's ``ChildFailedError`` report
for several. ``scripts/probe.py`` has already printed the one line that matters (``probe.py: error: ...``, exit
status 2 on bad input), so here a failed script ends the launch with the status of the first process that
failed and, for bad input (status 2), nothing more; any other failure adds one line saying which process
failed with which status (its own traceback is above).
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Sequence

#: the exit status of hf_isi's scripts for bad input (already explained in one line by the script)
BAD_INPUT = 2


class _HideBadInputReport(logging.Filter):
    """torchrun logs ``failed (exitcode: N) local_rank: ...`` for any failed worker: noise after bad input."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (str(record.msg).startswith("failed (exitcode") and record.args
                    and record.args[0] == BAD_INPUT)


def main(argv: Sequence[str] | None = None) -> int:
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = launch_command_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    elastic = logging.getLogger("torch.distributed.elastic.multiprocessing.api")
    elastic.addFilter(_HideBadInputReport())
    elastic.setLevel(logging.ERROR)  # not "Sending process N closing signal SIGTERM" to the others
    try:
        launch_command(args)
    except subprocess.CalledProcessError as err:  # one process
        return _status(err.returncode, None)
    except ChildFailedError as err:  # several processes (torchrun)
        rank, failure = err.get_first_failure()
        return _status(failure.exitcode, rank)
    return 0


def _status(code: int, rank: int | None) -> int:
    status = 128 - code if code < 0 else code  # killed by signal N: the shell's 128 + N
    if status != BAD_INPUT:
        where = "the script" if rank is None else f"process {rank}"
        print(f"hf_isi.launch: {where} exited with status {status}", file=sys.stderr, flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
