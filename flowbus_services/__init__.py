"""The flowbus services. Each is a faststream app in its own package with one
entry module (``main``); they share only libs/ (the ``flowbus`` package).
Installed under flowbus's own name, so it cannot collide with another project's ``services``."""
