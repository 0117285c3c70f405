"""Packaging for DDS.

The four top-level folders install as one package tree (DESIGN §1): ``dds`` and its
subpackages ``dds.bricks``, ``dds.lib`` and ``dds.tools``.  No generic top-level ``lib`` or
``tools`` package ever reaches a user's site-packages.
"""

from setuptools import setup

setup(
    name="dds",
    version="0.1.0",
    description="A distributed hash table of storage bricks, on Twisted",
    python_requires=">=3.11",
    packages=["dds", "dds.bricks", "dds.lib", "dds.tools", "twisted.plugins"],
    package_dir={
        "dds": "dds",
        "dds.bricks": "bricks",
        "dds.lib": "lib",
        "dds.tools": "tools",
    },
    package_data={"dds": ["py.typed"], "twisted.plugins": ["dds_brick.py"]},
    install_requires=[
        "twisted[tls]>=23.10",
        "cryptography>=41",
        "attrs>=23.1",
        "sqlite-utils>=3.35",
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
