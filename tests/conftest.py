import os
import sys

# tests/reference.py is imported as a plain module by the optimizer tests.
sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("MPLBACKEND", "Agg")

# Under pytest-xdist each worker gets one torch thread: the workers already fill the cores, and
# oversubscribed intra-op threads slow CPU training by an order of magnitude.
if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    torch.set_num_threads(1)
