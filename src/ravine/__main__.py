"""``python -m ravine`` (and ``torchrun -m ravine``) runs the command-line interface."""

from ravine.commands import run

# Guarded: worker processes started with ``spawn`` (``ravine compare --jobs``) import the main
# module again, as ``__mp_main__``, and must not run the command a second time.
if __name__ == "__main__":
    run()
