"""The disaster-recovery site (DESIGN §12): the follower, ``attach``/``status``
(``follow.py``, ``attach.py``, ``status.py``) and ``promote`` (``promote.py``)."""
