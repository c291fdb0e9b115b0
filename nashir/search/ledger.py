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

The run folder is input like any other file (docs/limits.md): a ledger that lacks a table or column,
holds a config that is not a JSON object, a JSON column that does not decode, or that SQLite cannot
read is refused with a :class:`~nashir.errors.SearchError` naming it. Candidate files are read back
only through :meth:`Ledger.read_candidate_onnx`, which confines the recorded path to
``candidates/`` of the run folder and checks the SHA-256 recorded when the file was written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nashir.errors import SearchError
from nashir.files import give_default_mode, new_file_mode

__all__ = ["Ledger", "LEDGER_NAME", "FORMAT", "SCHEMA_VERSION", "is_run", "atomic_write", "STATUSES",
           "lock_run_dir", "unlock_run_dir", "stale_temp_files", "remove_stale_temp_files", "sha256_hex",
           "MAX_CANDIDATE_BYTES"]

LEDGER_NAME = "ledger.sqlite"
FORMAT = "nashir-run"
#: 2: candidates carry the SHA-256 of their ONNX file (``sha256``). Version 1 ledgers are read as well
#: (their files are then not hash-checked).
SCHEMA_VERSION = 2
#: A candidate file larger than this is refused unread (protobuf cannot parse a larger model).
MAX_CANDIDATE_BYTES = 2**31
#: Name pattern of the temp file a ledger is built in (renamed to ``ledger.sqlite`` when complete).
_TEMP_PREFIX, _TEMP_SUFFIX = ".ledger.", ".tmp"
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
    sha256 TEXT,
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
_JSON_KINDS = {"morphisms": list, "history": list, "metrics": dict}
#: Column -> the Python types SQLite may hand back for it (SQLite stores any value in any column).
_COL_TYPES = {
    **dict.fromkeys(("step", "idx", "params", "macs", "seed", "epochs"), (int,)),
    **dict.fromkeys(("val_acc", "test_acc", "train_seconds", "job_seconds", "created", "finished"),
                    (int, float)),
    **dict.fromkeys(("id", "kind", "parent", "reason", "onnx", "sha256"), (str,)),
}
#: Keys of a history entry that must be numbers (or null) when present.
_HISTORY_NUMBERS = ("epoch", "loss", "train_acc", "val_acc", "lr", "seconds")
#: meta keys stored as plain text (every other key holds JSON).
_RAW_META = {"format", "schema_version", "created", "state"}
#: Tables and the columns every readable ledger (schema 1 and up) has.
_REQUIRED = {
    "meta": {"key", "value"},
    "candidates": {"id", "step", "idx", "kind", "parent", "morphisms", "params", "macs", "seed", "status",
                   "reason", "val_acc", "test_acc", "train_seconds", "job_seconds", "epochs", "history",
                   "metrics", "onnx", "created", "finished"},
    "steps": {"step", "best", "best_val_acc", "finished"},
}


#: What reading a damaged SQLite file raises (bad pages; text that is not UTF-8; integers out of range).
_DB_ERRORS = (sqlite3.Error, UnicodeDecodeError, OverflowError)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Con:
    """A sqlite3 connection whose errors become SearchError naming the ledger (a corrupt or truncated file,
    a missing table) instead of raw sqlite3 exceptions."""

    def __init__(self, con: sqlite3.Connection, path: Path):
        self._c = con
        self._path = path

    def execute(self, sql: str, args=()):
        try:
            return _Cur(self._c.execute(sql, args), self._path)
        except _DB_ERRORS as e:
            raise _corrupt(self._path, e) from None

    def executemany(self, sql: str, rows):
        try:
            return self._c.executemany(sql, rows)
        except _DB_ERRORS as e:
            raise _corrupt(self._path, e) from None

    def close(self) -> None:
        self._c.close()

    @property
    def row_factory(self):
        return self._c.row_factory

    @row_factory.setter
    def row_factory(self, f) -> None:
        self._c.row_factory = f


class _Cur:
    """A cursor whose fetches raise SearchError (SQLite reads pages lazily: damage shows up here)."""

    def __init__(self, cur: sqlite3.Cursor, path: Path):
        self._cur = cur
        self._path = path
        self.rowcount = cur.rowcount

    def fetchone(self):
        try:
            return self._cur.fetchone()
        except _DB_ERRORS as e:
            raise _corrupt(self._path, e) from None

    def fetchall(self):
        try:
            return self._cur.fetchall()
        except _DB_ERRORS as e:
            raise _corrupt(self._path, e) from None


def _corrupt(path: Path, e: Exception) -> SearchError:
    if "readonly" in str(e) or "read-only" in str(e):
        return SearchError(f"ledger {path} is read-only ({e}); nashir needs to write it: check the run "
                           "folder's permissions")
    if "locked" in str(e) or "busy" in str(e):
        return SearchError(f"ledger {path} is locked by another process ({e}); wait for it to finish")
    return SearchError(
        f"ledger {path} cannot be used ({type(e).__name__}: {e}); it is damaged or was not written by "
        "nashir: restore it from a copy, or start a new run (another --out)"
    )

def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a temp file in the same folder, fsync, ``os.replace``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            give_default_mode(f.fileno())  # mkstemp makes 0600; give the usual permissions
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def stale_temp_files(run_dir: str | os.PathLike) -> list[Path]:
    """Temp files of a ledger whose creation never finished (the process was killed while building it)."""
    p = Path(run_dir)
    try:
        names = [q for q in p.iterdir() if q.name.startswith(_TEMP_PREFIX) and q.name.endswith(_TEMP_SUFFIX)]
        return sorted(names)
    except OSError:
        return []


def remove_stale_temp_files(run_dir: str | os.PathLike) -> list[Path]:
    """Remove :func:`stale_temp_files`; call only while holding :func:`lock_run_dir` (no live creator
    can then be building one). Returns what was removed."""
    gone = []
    for q in stale_temp_files(run_dir):
        with contextlib.suppress(FileNotFoundError):
            q.unlink()
            gone.append(q)
    return gone


def lock_run_dir(run_dir: str | os.PathLike):
    """Take an exclusive advisory lock (``flock``) on the run *folder* itself: held from before the
    driver decides what to do with the folder (create, resume, replace) until it is done, so two
    searches on one ``--out`` never both create or write a run. The folder must exist. Returns the lock
    (pass it to :func:`unlock_run_dir`); None where ``fcntl`` is missing.

    Raises:
        SearchError: Another process holds the lock (nothing has been written).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return None
    try:
        fd = os.open(run_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as e:
        raise SearchError(f"run folder {run_dir} cannot be opened: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise SearchError(
            f"another nashir search is using the run folder {run_dir} (it is locked); wait for it to finish "
            "or stop it, or choose another --out (nothing was written)"
        ) from None
    return fd


def unlock_run_dir(lock) -> None:
    if lock is not None:
        with contextlib.suppress(OSError):
            os.close(lock)


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
    except _DB_ERRORS:
        return False
    return row is not None and row[0] == FORMAT


class Ledger:
    """The SQLite ledger of one run folder. Open with :meth:`create` or :meth:`open`.

    Every write method runs in its own transaction unless called inside ``with
    ledger.transaction():``, which groups several writes atomically (all or nothing).
    """

    def __init__(self, run_dir: Path, con: sqlite3.Connection, has_sha: bool = True):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LEDGER_NAME
        self._con = con if isinstance(con, _Con) else _Con(con, self.path)
        self._depth = 0
        self._has_sha = has_sha
        self._written: dict[str, str] = {}   # relative path -> sha256 of files written by this process

    # ------------------------------------------------------------------ open / create
    @classmethod
    def create(cls, run_dir: str | os.PathLike, config: dict[str, Any]) -> Ledger:
        """Create the ledger in ``run_dir`` (made if missing) with ``config`` stored as JSON.

        The ledger is built in a temp file and linked into place only if no ledger exists (an exclusive
        create: of two searches creating one run, one wins and the other is refused). Hold
        :func:`lock_run_dir` around deciding and creating, so that the loser writes nothing at all.

        Raises:
            SearchError: A ledger exists there already.
        """
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / LEDGER_NAME
        if path.exists():
            raise SearchError(f"{path} exists already; open it with --resume or choose another --out")
        # build in a temp file, then link: a half-made ledger never looks like a run
        fd, tmp = tempfile.mkstemp(prefix=_TEMP_PREFIX, suffix=_TEMP_SUFFIX, dir=run_dir)
        os.close(fd)
        os.chmod(tmp, new_file_mode())
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
            try:
                os.link(tmp, path)   # fails when another process created the ledger meanwhile
            except FileExistsError:
                raise SearchError(
                    f"{path} was created by another process at the same time; this search stops without "
                    "writing (resume that run with --resume once it is done, or choose another --out)"
                ) from None
            except OSError:   # a file system without hard links: exclusive by the run-folder lock
                if path.exists():
                    raise SearchError(
                        f"{path} exists already; open it with --resume or choose another --out") from None
                os.replace(tmp, path)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return cls.open(run_dir)

    @classmethod
    def open(cls, run_dir: str | os.PathLike, readonly: bool = False) -> Ledger:
        """Open an existing run's ledger (``readonly``: the file is opened read-only, e.g. by
        ``nashir report``), after checking its tables, columns and config.

        Raises:
            SearchError: ``run_dir`` is not a nashir run (no ledger, unreadable, another format, or
                a newer schema), or the ledger is damaged (a table or column missing, a config that is
                not a JSON object); the message names the ledger.
        """
        run_dir = Path(run_dir)
        path = run_dir / LEDGER_NAME
        if not path.is_file():
            raise SearchError(f"{run_dir} is not a nashir run: it has no {LEDGER_NAME}")
        try:
            if readonly:
                raw = sqlite3.connect(_ro_uri(path), uri=True, isolation_level=None, timeout=30)
            else:
                raw = sqlite3.connect(path, isolation_level=None, timeout=30)
        except _DB_ERRORS as e:
            raise SearchError(f"{run_dir} is not a nashir run: {path} is not a readable ledger ({e})") from e
        try:
            row = raw.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
            ver = raw.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except _DB_ERRORS as e:
            raw.close()
            raise SearchError(f"{run_dir} is not a nashir run: {path} is not a readable ledger ({e})") from e
        if row is None or row[0] != FORMAT:
            raw.close()
            raise SearchError(f"{run_dir} is not a nashir run: {path} is not a nashir ledger")
        try:
            version = int(ver[0]) if ver is not None else None
        except (TypeError, ValueError):
            version = None
        if version is None or version < 1:
            raw.close()
            raise SearchError(f"ledger {path}: schema_version {ver and ver[0]!r} is not a version number; "
                              "the ledger is damaged: restore it from a copy or start a new run")
        if version > SCHEMA_VERSION:
            raw.close()
            raise SearchError(
                f"{path}: ledger schema {version} is newer than this nashir "
                f"({SCHEMA_VERSION}); upgrade nashir"
            )
        con = _Con(raw, path)
        try:
            has_sha = _check_tables(con, path)
            cfg_row = con.execute("SELECT value FROM meta WHERE key = 'config'").fetchone()
            try:
                cfg = json.loads(cfg_row[0]) if cfg_row is not None else None
            except (TypeError, ValueError):
                cfg = None
            if not isinstance(cfg, dict):
                raise SearchError(
                    f"ledger {path}: its config (meta key 'config') is "
                    f"{'missing' if cfg_row is None else 'not a JSON object'}; the ledger is damaged: "
                    "restore it from a copy or start a new run"
                )
        except BaseException:
            raw.close()
            raise
        raw.row_factory = sqlite3.Row
        if not readonly:
            con.execute("PRAGMA foreign_keys = ON")
        led = cls(run_dir, con, has_sha=has_sha)
        led._wal = "pending" if not readonly else None   # switched on by the first write
        return led

    def _write_ahead(self) -> None:
        """Before the first write of this connection: a write-ahead log, synced at checkpoints only.
        A commit then costs a write, not an fsync (about 25 ms each in rollback mode), and is still
        atomic and crash-safe: a killed search leaves the log, which the next open replays (a power
        cut may lose the last commits, never corrupt the ledger). A ledger only read is not changed."""
        if getattr(self, "_wal", None) == "pending":
            self._con.execute("PRAGMA journal_mode = WAL")
            self._con.execute("PRAGMA synchronous = NORMAL")
            self._wal = "on"

    def close(self) -> None:
        if getattr(self, "_wal", None) == "on":
            # back to a plain rollback journal: the closed run is one file, which read-only openers
            # (nashir report on a read-only copy) read without creating -wal/-shm files
            with contextlib.suppress(SearchError, sqlite3.Error):
                self._con.execute("PRAGMA journal_mode = DELETE")
            self._wal = None
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
        self._write_ahead()
        self._con.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield self
        except BaseException:
            self._depth = 0
            with contextlib.suppress(SearchError):
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
        except (TypeError, ValueError):
            if key in _RAW_META:
                return row[0]
            raise SearchError(
                f"ledger {self.path}: meta key {key!r} holds {str(row[0])[:40]!r}, which is not JSON; the "
                "ledger is damaged: restore it from a copy, or start a new run"
            ) from None

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
        sha256: str | None = None,
    ) -> None:
        """Record a candidate's outcome. ``onnx`` is the file's path relative to the run folder (as
        :meth:`write_candidate_onnx` returns it); its SHA-256 (``sha256``, by default the one of the file
        this ledger wrote there) is recorded and checked whenever the file is read back.

        Raises:
            SearchError: Unknown id or status.
        """
        if onnx is not None and sha256 is None:
            sha256 = self._written.get(onnx)
            full = self.run_dir / onnx
            if sha256 is None and full.is_file() and not os.path.isabs(onnx):
                sha256 = sha256_hex(self._confined(id, onnx).read_bytes())
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
            if self._has_sha:
                self._con.execute("UPDATE candidates SET sha256 = ? WHERE id = ?", (sha256, id))

    def candidate(self, id: str) -> dict[str, Any] | None:
        """One candidate row as a dict (JSON columns decoded), or None."""
        row = self._con.execute("SELECT * FROM candidates WHERE id = ?", (id,)).fetchone()
        return None if row is None else _row(row, self.path)

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
        return [_row(r, self.path) for r in self._con.execute(q, args).fetchall()]

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
        rows = [dict(r) for r in self._con.execute("SELECT * FROM steps ORDER BY step").fetchall()]
        for r in rows:
            for k, types in (("step", (int,)), ("best", (str,)), ("best_val_acc", (int, float, type(None))),
                             ("finished", (int, float))):
                if not isinstance(r.get(k), types):
                    raise SearchError(f"ledger {self.path}: step {r.get('step')!r} has a corrupt {k!r} "
                                      f"column ({str(r.get(k))[:40]!r}); the ledger is damaged: restore it "
                                      "from a copy, or start a new run")
        return rows

    def step(self, step: int) -> dict[str, Any] | None:
        row = self._con.execute("SELECT * FROM steps WHERE step = ?", (int(step),)).fetchone()
        return None if row is None else dict(row)

    # ------------------------------------------------------------------ files
    def candidate_path(self, id: str) -> Path:
        """Where candidate ``id``'s trained ONNX file lives."""
        return self.run_dir / "candidates" / f"{id}.onnx"

    def write_candidate_onnx(self, id: str, data: bytes) -> str:
        """Write a candidate's ONNX bytes atomically; returns the path relative to the run folder (give
        it to :meth:`finish_candidate`, which records the bytes' SHA-256)."""
        p = self.candidate_path(id)
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(p, data)
        rel = str(p.relative_to(self.run_dir))
        self._written[rel] = sha256_hex(data)
        return rel

    def _confined(self, id: str, rel: str) -> Path:
        """The candidate file ``rel`` (as recorded) inside ``candidates/`` of this run folder.

        Raises:
            SearchError: an absolute path, one leading out of ``candidates/`` (``..``, symlinks), not
                ending in ``.onnx``, or not a regular file.
        """
        where = f"ledger {self.path}: candidate {id!r}"
        if not isinstance(rel, str) or not rel or "\x00" in rel:
            raise SearchError(f"{where} records the file {rel!r}, which is not a path; the ledger is damaged")
        base = os.path.realpath(self.run_dir / "candidates")
        full = os.path.realpath(self.run_dir / rel)
        if os.path.isabs(rel) or os.path.commonpath([base, full]) != base or not rel.endswith(".onnx"):
            raise SearchError(
                f"{where} records the file {rel!r}, outside the run's candidates/ folder; nashir reads "
                "candidate models only from there (the ledger was edited or damaged: restore it or start a "
                "new run)"
            )
        if not os.path.isfile(full):
            raise SearchError(
                f"run folder {self.run_dir}: {rel} (candidate {id!r}) is missing or not a file; the run "
                "cannot be continued from it (restore the file, or start a new run)"
            )
        return Path(full)

    def read_candidate_onnx(self, id: str) -> bytes:
        """The bytes of candidate ``id``'s trained ONNX file, checked against the ledger.

        The recorded path must lie in ``candidates/`` of the run folder, the file must exist and be at
        most :data:`MAX_CANDIDATE_BYTES`, and its SHA-256 must be the one recorded when it was written
        (ledgers of schema 1 record none).

        Raises:
            SearchError: no trained model recorded, a path outside the folder, a missing, oversized or
                changed file (the message names the file).
        """
        row = self.candidate(id)
        if row is None or row["status"] != "ok" or not row.get("onnx"):
            raise SearchError(f"ledger {self.path}: candidate {id!r} has no trained model")
        p = self._confined(id, row["onnx"])
        size = p.stat().st_size
        if size > MAX_CANDIDATE_BYTES:
            raise SearchError(f"run folder {self.run_dir}: {row['onnx']} is {size} bytes, above the "
                              f"{MAX_CANDIDATE_BYTES}-byte limit of an ONNX model; it is not a nashir "
                              "candidate")
        data = p.read_bytes()
        want = row.get("sha256")
        if self._has_sha and not want:
            raise SearchError(f"ledger {self.path}: candidate {id!r} has no recorded SHA-256 for "
                              f"{row['onnx']}; the ledger is damaged: restore it or start a new run")
        if want and sha256_hex(data) != want:
            raise SearchError(
                f"run folder {self.run_dir}: {row['onnx']} (candidate {id!r}) is not the file the search "
                "wrote (its SHA-256 differs from the ledger's); it was replaced or damaged: restore it, or "
                "start a new run"
            )
        return data


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


def _check_tables(con: _Con, path: Path) -> bool:
    """Refuse a ledger that lacks a table or column; True when candidates carry ``sha256``."""
    has_sha = False
    for table, cols in _REQUIRED.items():
        have = {r[1] for r in con.execute(f"PRAGMA table_info({table})").fetchall()}
        if not have:
            raise SearchError(f"ledger {path} has no table {table!r}; it is damaged or not written by "
                              "nashir: restore it from a copy, or start a new run")
        missing = sorted(cols - have)
        if missing:
            raise SearchError(f"ledger {path}: table {table!r} lacks column(s) {missing}; it is damaged or "
                              "not written by nashir: restore it from a copy, or start a new run")
        if table == "candidates":
            has_sha = "sha256" in have
    return has_sha


def _row(row: sqlite3.Row, path: Path | None = None) -> dict[str, Any]:
    d = dict(row)
    for k in _JSON_COLS:
        if d.get(k) is not None:
            try:
                d[k] = json.loads(d[k])
            except (TypeError, ValueError):
                raise SearchError(
                    f"ledger {path}: candidate {d.get('id')!r} has a corrupt {k!r} column (not JSON: "
                    f"{str(d[k])[:40]!r}); the ledger is damaged: restore it from a copy, or start a new run"
                ) from None
    for k, kind in _JSON_KINDS.items():
        if d.get(k) is not None and not isinstance(d[k], kind):
            raise SearchError(
                f"ledger {path}: candidate {d.get('id')!r} has a corrupt {k!r} column (a JSON "
                f"{type(d[k]).__name__}, expected a {kind.__name__}); the ledger is damaged: restore it "
                "from a copy, or start a new run"
            )
    bad = None
    for k, types in _COL_TYPES.items():
        v = d.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, types)):
            want = "text" if str in types else "a number"
            bad = f"a corrupt {k!r} column ({str(v)[:40]!r}, expected {want})"
    for m in d.get("morphisms") or []:
        if not (isinstance(m, dict) and isinstance(m.get("pass"), str)
                and isinstance(m.get("site"), (str, type(None)))):
            bad = f"a corrupt 'morphisms' column (entry {str(m)[:40]!r}, expected an object with text 'pass')"
    for h in d.get("history") or []:
        if not isinstance(h, dict) or any(
            h.get(k) is not None and (isinstance(h[k], bool) or not isinstance(h[k], (int, float)))
            for k in _HISTORY_NUMBERS
        ):
            bad = f"a corrupt 'history' column (entry {str(h)[:40]!r}, expected an object of numbers)"
    if bad:
        raise SearchError(f"ledger {path}: candidate {d.get('id')!r} has {bad}; the ledger is damaged: "
                          "restore it from a copy, or start a new run")
    if d.get("status") not in STATUSES:
        raise SearchError(f"ledger {path}: candidate {d.get('id')!r} has an unknown status "
                          f"{d.get('status')!r}; the ledger is damaged")
    return d
