"""Copying partition replicas between bricks (DESIGN §7 recovery, §8 moves): the whole
copy path, both ends.

Source (the brick that has the data)::

    serve.CopySource        copy_begin / copy_chunk / copy_fence / copy_delta / readmit /
                            copy_cancel, checked (serving, recovering target, incoming
                            partitions of a move, the layout at readmission)
      └ source.CopySessions the one registry of copy sessions and their state machine
                            (snapshot, stream, fence, delta, readmitting, done/cancelled)
          ├ session         CopySession, CopyState
          ├ shared          snapshots shared by the sessions of one partition
          ├ snapshot        SQLite online-backup snapshots, chunks, the receiver, deltas
          └ stream          the stream server (streamnet: its sockets)

Target (the brick that takes the data)::

    recovery.Recoveries (bricks/recovery.py, §7)  ┐
    movein.IncomingMoves (move_pull, move_finish) ┴ pull.Pull: copy_begin, the snapshots
                            as a stream (streamclient) or in chunks, install, catch-up,
                            following, the fenced delta, readmit

``layout`` holds what both ends compare: an RG record's partitions and their states.

The write fence of a copy holds new PREPAREs of its partitions (``Participant.fence``):
for the last delta only, or for the whole copy (``fence_whole_copy``, the original DDS
behaviour; its wire and configuration names keep the older ``full_lease``).
"""
