"""Packaging for DDS.

The four top-level folders install as one package tree (DESIGN §1): ``dds`` and its
subpackages ``dds.bricks``, ``dds.lib`` and ``dds.tools``.  No generic top-level ``lib`` or
``tools`` package ever reaches a user's site-packages.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
#: The folder holding only ``twisted/plugins/dds_brick.py``, the twistd plugin.
PLUGIN_ROOT = HERE / "plugin"


class BuildPy(build_py):
    """An editable install leaves the plugin where it is, and Twisted looks for plugins
    only in ``twisted/plugins`` folders of ``sys.path`` entries: write a ``.pth`` file
    naming ``plugin/`` (never the repository root, whose ``tools``, ``lib`` and
    ``tests`` would become top-level packages) next to the editable finder, so that
    ``twistd dds-brick`` works from any directory.  A regular install copies the
    plugin into ``twisted/plugins`` instead (``packages``, ``package_dir``)."""

    def run(self) -> None:
        super().run()
        if not getattr(self, "editable_mode", False):
            return
        # editable_wheel points install_lib at the wheel being built (setuptools >= 64).
        target = Path(self.get_finalized_command("install").install_lib)
        target.mkdir(parents=True, exist_ok=True)
        (target / "dds-twisted-plugin.pth").write_text(f"{PLUGIN_ROOT}\n")


setup(
    name="dds",
    version="0.1.0",
    description="A distributed hash table of storage bricks, on Twisted",
    python_requires=">=3.11",
    packages=["dds", "dds.messages", "dds.bricks", "dds.bricks.copy", "dds.lib", "dds.tools",
              "dds.tools.bench", "dds.tools.dr", "dds.tools.membership", "dds.tools.scrub",
              "twisted.plugins"],
    package_dir={
        "dds": "dds",
        "dds.bricks": "bricks",
        "dds.bricks.copy": "bricks/copy",
        "dds.lib": "lib",
        "dds.tools": "tools",
        "twisted.plugins": "plugin/twisted/plugins",
    },
    cmdclass={"build_py": BuildPy},
    package_data={"dds": ["py.typed"], "twisted.plugins": ["dds_brick.py"]},
    install_requires=[
        "twisted[tls]>=23.10",
        "cryptography>=41",
        "attrs>=23.1",
        "xxhash>=3.4",
        "msgpack>=1.0.7",
        "click>=8.1",
        "rich>=13.0",
        "crochet>=2.1",
        "prometheus_client>=0.17",
    ],
    extras_require={
        "test": [
            "pytest>=7.4",
            "pytest-twisted>=1.14",
            "pytest-xdist>=3.5",
            "hypothesis>=6.90",
            "mypy>=1.8",
            "mypy-zope>=1.0",
        ],
    },
    entry_points={
        "console_scripts": [
            "dds-brick = dds.bricks.main:main",
            "dds-admin = dds.tools.admin:main",
        ],
    },
)
