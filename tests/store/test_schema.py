"""An old database is refused at start, naming what it lacks, instead of failing mid-request."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from store.db import SchemaOutdatedError, init_db, make_engine


def test_a_database_missing_columns_is_refused_with_their_names(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    try:
        init_db(engine)  # a current database passes
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE notifications DROP COLUMN acknowledged_at"))
        with pytest.raises(SchemaOutdatedError, match=r"notifications\.acknowledged_at"):
            init_db(engine)
    finally:
        engine.dispose()
