"""Helpers shared by test modules in several folders.

pytest puts ``tests/`` (the folder of ``conftest.py``) on ``sys.path``, so every test module
imports these as ``from helpers.study import ...``. A helper keeps the name it had in the test
file it came from (leading underscore included), so the tests that call it read unchanged.
"""
