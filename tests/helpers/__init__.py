"""Helpers shared by the tests (no tests here): synthetic features and data sets, a local file
server, video and attention-map fixtures, tables from the real producers. Imported as
``from helpers.<module> import ...``; ``tests/`` is on ``sys.path`` through ``tests/conftest.py``
(pytest's default import mode puts a rootdir conftest's directory first)."""
