import os
import sys

# tests/reference.py is imported as a plain module by the optimizer tests.
sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("MPLBACKEND", "Agg")
