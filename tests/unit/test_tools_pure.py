"""The pure parts of the admin tool load without Twisted or rich: the membership planner
(``tools/membership/plan.py``) and scrub's comparisons (``tools/scrub/compare.py``), so
they can be reasoned about and tested as functions of their inputs."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


@pytest.mark.parametrize("module", ["membership/plan.py", "scrub/compare.py"])
def test_the_pure_module_loads_without_twisted_or_rich(module: str) -> None:
    code = textwrap.dedent(f"""
        import importlib.util, pathlib, sys
        import dds.tools
        path = pathlib.Path(dds.tools.__path__[0]) / {module!r}
        spec = importlib.util.spec_from_file_location("alone", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["alone"] = module
        spec.loader.exec_module(module)
        print(sorted({{m.split(".")[0] for m in sys.modules}} & {{"twisted", "rich"}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
