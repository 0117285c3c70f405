"""``dds.messages`` is a package of modules by subsystem (issue 16); every request class
and every public name of its modules is importable from the package itself, as
``from dds.messages import X`` always was."""

from __future__ import annotations

import importlib

import dds.messages
from dds.messages import _REGISTRY

MODULES = ("base", "data", "membership", "admin", "copy", "reorg")


def test_every_registered_message_class_is_importable_from_the_package() -> None:
    # Requests declared beside their subsystem (dds.fencerenew, dds.changemsgs,
    # dds.backupmsgs) register too, but live in their own modules.
    import dds.backupmsgs, dds.changemsgs, dds.fencerenew  # noqa: F401,E401 -- registered
    ours = [cls for cls in _REGISTRY.values() if cls.__module__.startswith("dds.messages.")]
    missing = [cls.__name__ for cls in ours
               if getattr(dds.messages, cls.__name__, None) is not cls]
    assert ours and missing == []


def test_every_public_name_of_its_modules_is_exported_by_the_package() -> None:
    missing = []
    for name in MODULES:
        module = importlib.import_module(f"dds.messages.{name}")
        missing += [f"{name}.{public}" for public in module.__all__
                    if public not in dds.messages.__all__
                    or getattr(dds.messages, public) is not getattr(module, public)]
    assert missing == []
