"""The membership planner (``tools/membership/plan.py``) is pure: it loads without
Twisted or rich, so it can be reasoned about and tested as a function of the layout."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_the_planner_loads_without_twisted_or_rich() -> None:
    code = textwrap.dedent("""
        import importlib.util, pathlib, sys
        import dds.tools
        path = pathlib.Path(dds.tools.__path__[0]) / "membership" / "plan.py"
        spec = importlib.util.spec_from_file_location("plan_alone", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["plan_alone"] = module
        spec.loader.exec_module(module)
        assert module.plan_changes is not None
        print(sorted({m.split(".")[0] for m in sys.modules} & {"twisted", "rich"}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
