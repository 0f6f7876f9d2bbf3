"""Fixtures of the handler suite (defined in handler_testlib so test modules can import its helpers)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from handler_testlib import fake_web, server, server_bing  # noqa: E402, F401
