"""``python -m ravine`` (and ``torchrun -m ravine``) runs the command-line interface."""

import sys

from ravine.commands import main

# Guarded: worker processes started with ``spawn`` (``ravine compare --jobs``) import the main
# module again, as ``__mp_main__``, and must not run the command a second time.
if __name__ == "__main__":
    status = main()
    from ravine.train.distributed import exit_worker, is_worker

    if is_worker():  # a data-parallel worker: done and on disk; skip gloo's teardown aborts
        exit_worker(status)
    sys.exit(status)
