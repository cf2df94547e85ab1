"""The flowbus services. Each is a faststream app in its own package with one
entry module (``main``); they share only libs/ (the ``flowbus`` package)."""
