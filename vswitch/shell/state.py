"""Files the daemon writes for later: its state directory (JSON), and files others read (flanneld's subnet.env).

Each is written whole, to a temporary file beside it, synced, then renamed,
so that a crash or a power cut leaves the old file or the new one, never a
mix. What is read back was written by an earlier daemon but may since have
been edited or cut short: an unreadable file is logged and treated as
absent, never a reason not to start.
"""

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_STATE_FILE = 64 << 20   # a state file larger than this was not written by us


def write_atomic(path: str | os.PathLike[str], text: str, *, mode: int = 0o644, dir_mode: int = 0o755) -> None:
    """Replace ``path`` with ``text`` in one step, making its directory (``dir_mode``) if need be."""
    target = Path(path)
    target.parent.mkdir(mode=dir_mode, parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class StateDir:
    """``[node] state_dir``: one JSON file per concern (``lease``, ``addresses``), readable by root only."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def read(self, name: str) -> dict[str, Any] | None:
        """The saved object ``name``, or None when there is none or it cannot be read (logged)."""
        file = self.path / f"{name}.json"
        try:
            with open(file, "rb") as f:
                data = f.read(MAX_STATE_FILE + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read %s (%s): starting without it", file, exc.strerror)
            return None
        try:
            if len(data) > MAX_STATE_FILE:
                raise ValueError(f"over {MAX_STATE_FILE} bytes")
            value = json.loads(data)
            if not isinstance(value, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:   # JSONDecodeError and UnicodeDecodeError are ValueErrors
            log.warning("%s is damaged (%s): starting without it", file, exc)
            return None
        return value

    def write(self, name: str, value: dict[str, Any]) -> None:
        write_atomic(self.path / f"{name}.json", json.dumps(value, indent=1, sort_keys=True) + "\n", mode=0o600,
                     dir_mode=0o700)

    def keep(self, name: str, value: dict[str, Any]) -> None:
        """:meth:`write`, for state kept while the daemon runs: a failure (a full disk, a read-only mount) is
        logged and costs only that save, never the forwarding; the next change saves again."""
        try:
            self.write(name, value)
        except OSError as exc:
            log.warning("cannot save %s.json in %s: %s", name, self.path, exc.strerror or exc)
