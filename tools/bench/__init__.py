"""``dds-admin bench`` and its sub-commands: the benchmarks, their load processes and
the harness they share.

The commands (each a ``bench_*`` function returning what ``--json`` prints, and a
``render``): :mod:`.putget` (``bench``: gets and puts against the echo floor),
:mod:`.tls` (``bench --tls``), :mod:`.contention` (``bench contention``),
:mod:`.recovery` (``bench recovery``) and :mod:`.move` (``bench move``, its layout in
:mod:`.movelayout`, its result and tables in :mod:`.movereport`).

The processes they start (``python -m dds.tools.bench.<module>``): :mod:`.floor` (the
echo pair), :mod:`.worker` (``bench``'s and ``bench contention``'s load), and
:mod:`.writerproc` (the sequential writers of ``bench recovery`` and ``bench move``);
:mod:`.jsonlines` is their side of the exchange with :mod:`dds.tools.children`.

Shared: :mod:`.harness` (starting, driving and stopping the load processes),
:mod:`.writers` (driving the writer processes), :mod:`.throwaway` (the cluster
``bench recovery`` and ``bench move`` build and tear down), :mod:`.preload` (the
benches' keys; partition files written before the bricks start), :mod:`.measure`
(percentiles, write pauses: pure), :mod:`.cpu` (processes' CPU time), :mod:`.report`
(tables and their cells).

Nothing is imported here: a load process imports only what it runs.
"""
