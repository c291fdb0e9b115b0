"""The run folder and its SQLite ledger (DESIGN.md section 7).

A run folder holds:

``ledger.sqlite``
    The run's config and every candidate: id, step, parent, the morphisms applied and their sites
    (JSON), parameter count, MACs, seed, validation / test accuracy, training seconds, status
    (``pending``, ``ok``, ``diverged``, ``failed``) with the reason, and the per-epoch history;
    per step the winner. Written by the search driver only, each change in one transaction.
``candidates/<id>.onnx``
    Each trained candidate, written atomically before its ledger row says ``ok``.
``best.onnx``
    The final model (after the final training), written atomically at the end.
``log.jsonl``
    One JSON object per event (run start/resume, candidate done, step done, final).
``report/``
    Written by ``nashir report``.

A folder is a nashir run when ``ledger.sqlite`` opens and its ``meta`` table says
``format = nashir-run``. Only :mod:`sqlite3` of the standard library is used.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nashir.errors import SearchError

__all__ = ["Ledger", "LEDGER_NAME", "FORMAT", "SCHEMA_VERSION", "is_run", "atomic_write", "STATUSES"]

LEDGER_NAME = "ledger.sqlite"
FORMAT = "nashir-run"
SCHEMA_VERSION = 1
#: Candidate states. ``pending``: made and recorded, not trained yet (or interrupted).
STATUSES = ("pending", "ok", "diverged", "failed")

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE candidates (
    id TEXT PRIMARY KEY,
    step INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    kind TEXT NOT NULL,
    parent TEXT,
    morphisms TEXT NOT NULL DEFAULT '[]',
    params INTEGER,
    macs INTEGER,
    seed INTEGER,
    status TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'ok', 'diverged', 'failed')),
    reason TEXT,
    val_acc REAL,
    test_acc REAL,
    train_seconds REAL,
    job_seconds REAL,
    epochs INTEGER,
    history TEXT,
    metrics TEXT,
    onnx TEXT,
    created REAL NOT NULL,
    finished REAL
);
CREATE INDEX candidates_step ON candidates (step, idx);
CREATE TABLE steps (
    step INTEGER PRIMARY KEY,
    best TEXT NOT NULL REFERENCES candidates (id),
    best_val_acc REAL,
    finished REAL NOT NULL
);
"""

_JSON_COLS = ("morphisms", "history", "metrics")


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a temp file in the same folder, fsync, ``os.replace``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def is_run(run_dir: str | os.PathLike) -> bool:
    """True when ``run_dir`` holds a readable nashir ledger."""
    p = Path(run_dir) / LEDGER_NAME
    if not p.is_file():
        return False
    try:
        con = sqlite3.connect(_ro_uri(p), uri=True)
        try:
            row = con.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return False
    return row is not None and row[0] == FORMAT


class Ledger:
    """The SQLite ledger of one run folder. Open with :meth:`create` or :meth:`open`.

    Every write method runs in its own transaction unless called inside ``with
    ledger.transaction():``, which groups several writes atomically (all or nothing).
    """

    def __init__(self, run_dir: Path, con: sqlite3.Connection):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LEDGER_NAME
        self._con = con
        self._depth = 0

    # ------------------------------------------------------------------ open / create
    @classmethod
    def create(cls, run_dir: str | os.PathLike, config: dict[str, Any]) -> Ledger:
        """Create the ledger in ``run_dir`` (made if missing) with ``config`` stored as JSON.

        Raises:
            SearchError: A ledger exists there already.
        """
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / LEDGER_NAME
        if path.exists():
            raise SearchError(f"{path} exists already; open it with --resume or choose another --out")
        # build in a temp file, then rename: a half-made ledger never looks like a run
        fd, tmp = tempfile.mkstemp(prefix=".ledger.", suffix=".tmp", dir=run_dir)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())
        try:
            con = sqlite3.connect(tmp)
            try:
                con.executescript(_SCHEMA)
                con.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [
                        ("format", FORMAT),
                        ("schema_version", str(SCHEMA_VERSION)),
                        ("config", json.dumps(config, sort_keys=True)),
                        ("created", repr(time.time())),
                        ("state", "running"),
                    ],
                )
                con.commit()
            finally:
                con.close()
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return cls.open(run_dir)

    @classmethod
    def open(cls, run_dir: str | os.PathLike, readonly: bool = False) -> Ledger:
        """Open an existing run's ledger (``readonly``: the file is opened read-only, e.g. by
        ``nashir report``).

        Raises:
            SearchError: ``run_dir`` is not a nashir run (no ledger, unreadable, another format, or
                a newer schema).
        """
        run_dir = Path(run_dir)
        path = run_dir / LEDGER_NAME
        if not path.is_file():
            raise SearchError(f"{run_dir} is not a nashir run: it has no {LEDGER_NAME}")
        try:
            if readonly:
                con = sqlite3.connect(_ro_uri(path), uri=True, isolation_level=None, timeout=30)
            else:
                con = sqlite3.connect(path, isolation_level=None, timeout=30)
            row = con.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
            ver = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.Error as e:
            raise SearchError(f"{run_dir} is not a nashir run: {path} is not a readable ledger ({e})") from e
        if row is None or row[0] != FORMAT:
            con.close()
            raise SearchError(f"{run_dir} is not a nashir run: {path} is not a nashir ledger")
        if ver is None or int(ver[0]) > SCHEMA_VERSION:
            con.close()
            raise SearchError(
                f"{path}: ledger schema {ver and ver[0]} is newer than this nashir "
                f"({SCHEMA_VERSION}); upgrade nashir"
            )
        con.row_factory = sqlite3.Row
        if not readonly:
            con.execute("PRAGMA foreign_keys = ON")
        return cls(run_dir, con)

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ transactions
    @contextlib.contextmanager
    def transaction(self) -> Iterator[Ledger]:
        """Group writes: committed together at the end, rolled back on any exception."""
        if self._depth:
            self._depth += 1
            try:
                yield self
            finally:
                self._depth -= 1
            return
        self._con.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield self
        except BaseException:
            self._depth = 0
            self._con.execute("ROLLBACK")
            raise
        self._depth = 0
        self._con.execute("COMMIT")

    # ------------------------------------------------------------------ meta
    def get_meta(self, key: str, default: Any = None) -> Any:
        """The JSON value stored under ``key`` (raw string for the fixed keys)."""
        row = self._con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            return default
        try:
            return json.loads(row[0])
        except json.JSONDecodeError:
            return row[0]

    def set_meta(self, key: str, value: Any) -> None:
        """Store ``value`` (JSON) under ``key``."""
        with self.transaction():
            self._con.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                (key, json.dumps(value, sort_keys=True)),
            )

    @property
    def config(self) -> dict[str, Any]:
        """The run's config as stored at creation (``SearchConfig.to_dict()`` plus extras)."""
        return self.get_meta("config", {})

    # ------------------------------------------------------------------ candidates
    def add_candidate(
        self,
        id: str,
        step: int,
        idx: int,
        kind: str,
        parent: str | None = None,
        morphisms: list | None = None,
        params: int | None = None,
        macs: int | None = None,
        seed: int | None = None,
        epochs: int | None = None,
    ) -> None:
        """Record a candidate as ``pending`` (or reset an interrupted one back to pending).

        Args:
            id: Candidate id (unique in the run).
            step: Hill-climbing step (0 = start network, ``n_steps + 1`` = final training).
            idx: Index within the step (1-based; 0 for init/final).
            kind: ``init``, ``child``, ``incumbent`` (the current best trained further) or ``final``.
            parent: Id of the candidate it was made from.
            morphisms: The morphisms applied, ``[{"pass", "site", "info"}, ...]`` (JSON-serialisable).
            params: Parameter count of its architecture.
            macs: Multiply-accumulates per sample.
            seed: Its training seed.
            epochs: Epochs it is trained.

        Raises:
            SearchError: The id is already recorded as finished (ok/diverged/failed).
        """
        with self.transaction():
            row = self._con.execute("SELECT status FROM candidates WHERE id = ?", (id,)).fetchone()
            if row is not None and row["status"] != "pending":
                raise SearchError(
                    f"ledger {self.path}: candidate {id!r} is already finished ({row['status']})"
                )
            self._con.execute("DELETE FROM candidates WHERE id = ?", (id,))
            self._con.execute(
                "INSERT INTO candidates (id, step, idx, kind, parent, morphisms, params, macs, seed, epochs, "
                "status, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?)",
                (
                    id,
                    int(step),
                    int(idx),
                    kind,
                    parent,
                    json.dumps(morphisms or [], sort_keys=True),
                    None if params is None else int(params),
                    None if macs is None else int(macs),
                    None if seed is None else int(seed),
                    None if epochs is None else int(epochs),
                    time.time(),
                ),
            )

    def finish_candidate(
        self,
        id: str,
        status: str,
        *,
        val_acc: float | None = None,
        test_acc: float | None = None,
        train_seconds: float | None = None,
        job_seconds: float | None = None,
        history: list | None = None,
        metrics: dict | None = None,
        onnx: str | None = None,
        reason: str | None = None,
    ) -> None:
        """Record a candidate's outcome.

        Raises:
            SearchError: Unknown id or status.
        """
        if status not in STATUSES[1:]:
            raise SearchError(
                f"finish_candidate: status must be one of {', '.join(STATUSES[1:])}, got {status!r}"
            )
        with self.transaction():
            cur = self._con.execute(
                "UPDATE candidates SET status = ?, val_acc = ?, test_acc = ?, train_seconds = ?, "
                "job_seconds = ?, history = ?, metrics = ?, onnx = ?, reason = ?, finished = ? WHERE id = ?",
                (
                    status,
                    val_acc,
                    test_acc,
                    train_seconds,
                    job_seconds,
                    json.dumps(history or [], default=_json_default),
                    json.dumps(metrics or {}, default=_json_default),
                    onnx,
                    reason,
                    time.time(),
                    id,
                ),
            )
            if cur.rowcount != 1:
                raise SearchError(f"ledger {self.path}: no candidate {id!r} to finish")

    def candidate(self, id: str) -> dict[str, Any] | None:
        """One candidate row as a dict (JSON columns decoded), or None."""
        row = self._con.execute("SELECT * FROM candidates WHERE id = ?", (id,)).fetchone()
        return None if row is None else _row(row)

    def candidates(self, step: int | None = None, status: str | None = None) -> list[dict[str, Any]]:
        """Candidate rows ordered by (step, idx), optionally filtered."""
        q, args = "SELECT * FROM candidates", []
        conds = []
        if step is not None:
            conds.append("step = ?")
            args.append(int(step))
        if status is not None:
            conds.append("status = ?")
            args.append(status)
        if conds:
            q += " WHERE " + " AND ".join(conds)
        q += " ORDER BY step, idx"
        return [_row(r) for r in self._con.execute(q, args).fetchall()]

    def is_finished(self, id: str) -> bool:
        """True when the candidate is recorded with a final status (ok/diverged/failed)."""
        row = self._con.execute("SELECT status FROM candidates WHERE id = ?", (id,)).fetchone()
        return row is not None and row["status"] != "pending"

    # ------------------------------------------------------------------ steps
    def finish_step(self, step: int, best: str, best_val_acc: float | None) -> None:
        """Record the winner of a step (the step's candidates must be finished)."""
        with self.transaction():
            pending = self._con.execute(
                "SELECT id FROM candidates WHERE step = ? AND status = 'pending'", (int(step),)
            ).fetchall()
            if pending:
                raise SearchError(
                    f"ledger {self.path}: step {step} still has pending candidates "
                    f"{', '.join(r['id'] for r in pending)}"
                )
            self._con.execute(
                "INSERT OR REPLACE INTO steps (step, best, best_val_acc, finished) VALUES (?, ?, ?, ?)",
                (int(step), best, best_val_acc, time.time()),
            )

    def steps(self) -> list[dict[str, Any]]:
        """Finished steps in order: ``{"step", "best", "best_val_acc", "finished"}``."""
        return [dict(r) for r in self._con.execute("SELECT * FROM steps ORDER BY step").fetchall()]

    def step(self, step: int) -> dict[str, Any] | None:
        row = self._con.execute("SELECT * FROM steps WHERE step = ?", (int(step),)).fetchone()
        return None if row is None else dict(row)

    # ------------------------------------------------------------------ files
    def candidate_path(self, id: str) -> Path:
        """Where candidate ``id``'s trained ONNX file lives."""
        return self.run_dir / "candidates" / f"{id}.onnx"

    def write_candidate_onnx(self, id: str, data: bytes) -> str:
        """Write a candidate's ONNX bytes atomically; returns the path relative to the run folder."""
        p = self.candidate_path(id)
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(p, data)
        return str(p.relative_to(self.run_dir))


def _ro_uri(path: Path) -> str:
    return Path(path).resolve().as_uri() + "?mode=ro"


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def _row(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    for k in _JSON_COLS:
        if d.get(k) is not None:
            d[k] = json.loads(d[k])
    return d
