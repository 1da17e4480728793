"""Helpers shared by the tests: tiny worlds, models and fixtures' building blocks. A package on the tests'
path (pyproject's ``[tool.pytest.ini_options] pythonpath``), so no test edits ``sys.path``."""
