"""Repository-level pytest settings (not shipped with the package).

``--doctest-modules`` would also import every test folder's ``conftest.py`` as a module
of its own, and several share that name; they hold fixtures, not doctests.
"""

collect_ignore_glob = ["tests/**/conftest.py", "tests/conftest.py"]
