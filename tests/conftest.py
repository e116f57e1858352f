"""Shared by every test: ``tests/`` on the import path, so a test module can ``from runner import run_cli``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
