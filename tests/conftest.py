"""Shared test configuration."""

import os
import sys

# Tests import the benchmarks' problem generators; make the repository root importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
