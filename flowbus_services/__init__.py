"""The flowbus services, and what puts them together.

Each service is a faststream app in its own package (``registration``,
``run_creation``, ``state``, ``heartbeat``, ``scheduler``) with one entry
module (``main``); services share only libs/ (the ``flowbus`` package). The
modules beside them are the composition root: ``registry``, ``up``,
``supervisor``, ``contracts`` and ``cli``. Installed under flowbus's own name,
so it cannot collide with another project's ``services``.
"""
