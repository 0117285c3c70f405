"""The partition file's schema stays what earlier versions wrote (``bricks/partstore.py``
writes it in plain SQL since the brick stopped using sqlite-utils)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from twisted.internet.task import Clock

from dds.bricks.storage import Storage


def test_new_partition_file_has_the_schema_earlier_versions_wrote(tmp_path: Path) -> None:
    """The schema text sqlite-utils wrote into the files of earlier versions (as SQLite
    keeps it), and the meta rows with their types: a file made now is the same file, plus
    the change stream's additions (the ``lsn_times`` table, the lineage meta rows), which
    code of earlier versions ignores."""
    s = Storage(tmp_path, Clock())
    s.open_partition("p1.0")
    s.close()
    conn = sqlite3.connect(tmp_path / "p1.0.sqlite")
    try:
        schema = conn.execute("SELECT type, name, sql FROM sqlite_master "
                              "ORDER BY rowid").fetchall()
        meta = conn.execute("SELECT name, value, typeof(value) FROM meta "
                            "ORDER BY rowid").fetchall()
    finally:
        conn.close()
    assert schema == [
        ("table", "kv", 'CREATE TABLE "kv" (\n   "key" BLOB PRIMARY KEY,\n   "value" BLOB,\n'
                        '   "version" INTEGER NOT NULL,\n   "lsn" INTEGER NOT NULL,\n'
                        '   "checksum" INTEGER\n)'),
        ("index", "sqlite_autoindex_kv_1", None),
        ("index", "idx_kv_lsn", 'CREATE INDEX "idx_kv_lsn"\n    ON "kv" ("lsn")'),
        ("table", "meta", 'CREATE TABLE "meta" (\n   "name" TEXT PRIMARY KEY,\n'
                          '   "value" ANY\n)'),
        ("index", "sqlite_autoindex_meta_1", None),
        ("table", "lsn_times", 'CREATE TABLE "lsn_times" (\n   "lsn" INTEGER PRIMARY KEY,\n'
                               '   "t" REAL NOT NULL\n)')]
    assert meta[:4] == [("schema_version", 2, "integer"), ("partition", "p1.0", "text"),
                        ("last_lsn", 0, "integer"), ("checksums_missing", 0, "integer")]
    lineage = meta[4]
    assert lineage[0] == "lineage" and lineage[2] == "text" and len(lineage[1]) == 32
    assert meta[5:] == [("ancestors", "[]", "text"), ("clean", 1, "integer")]
