"""Fixtures for the evaluation tests: one tiny 256 x 256 world per session (see tiny_world)."""

from __future__ import annotations

import pytest

from helpers.tiny_world import evaluation_world


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    return evaluation_world(tmp_path_factory)
