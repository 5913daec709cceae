"""The embedded default's SQLite file is written by several processes at once (the web server, the
workers and their jobs, the CLI): every connection the platform opens waits out another's write."""

import sqlite3
import threading

import sqlalchemy

from llmapp import SQLITE_BUSY_TIMEOUT_MS


def test_a_write_waits_for_another_processes_write_to_end(tmp_path):
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'llmapp.db'}")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == SQLITE_BUSY_TIMEOUT_MS > 5000
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        connection.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        connection.commit()

    # Another process's writer, holding the write lock for a moment.
    other = sqlite3.connect(tmp_path / "llmapp.db", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO t VALUES (1)")
    threading.Timer(0.5, other.execute, ["COMMIT"]).start()
    with engine.begin() as connection:  # blocked until the other commits, then written
        connection.exec_driver_sql("INSERT INTO t VALUES (2)")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT x FROM t ORDER BY x").scalars().all() == [1, 2]
    other.close()
