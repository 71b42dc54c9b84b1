import os
import sys

# tests/reference.py is imported as a plain module by the optimizer tests.
sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("MPLBACKEND", "Agg")

# One torch thread per test process: the tests use tiny tensors, `make test` runs two workers
# that already fill the cores, and oversubscribed intra-op threads on a busy machine slow tiny
# models down by one to two orders of magnitude.
import torch  # noqa: E402

torch.set_num_threads(1)
