"""Fixtures for the repository tests: small chunks and a cheap KDF keep them fast."""

from __future__ import annotations

from pathlib import Path

import pytest
from repo_helpers import new_repo

from repository import Repository


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return new_repo(tmp_path / "repo")
