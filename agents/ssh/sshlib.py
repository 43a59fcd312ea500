"""paramiko, imported without Invoke.

paramiko's config module imports Invoke (a task runner, with unittest.mock and a vendored YAML) only to run the
`Match exec` lines of an OpenSSH client config file; the agent reads no such file. Invoke is hidden while
paramiko loads, so paramiko records it as missing: 2.5 MB less RSS and 59 fewer modules (docs/benchmarks.md).
"""

from __future__ import annotations

import sys
from types import ModuleType


def _import_paramiko() -> ModuleType:
    hidden = "invoke" not in sys.modules
    if hidden:
        sys.modules["invoke"] = None  # type: ignore[assignment]  # `import invoke` raises ImportError
    try:
        import paramiko
    finally:
        if hidden and sys.modules.get("invoke", False) is None:
            del sys.modules["invoke"]
    return paramiko


paramiko = _import_paramiko()
