"""Numbers and paths as people read them, shared by the command line and the console: 850ms, 12.3s, 4m05s,
31.5MB, jobs/etl.py."""
from __future__ import annotations

import os
import re


def duration(seconds: float | None) -> str:
    """850ms, 12.3s, 4m05s, 2h03m, 3d04h; "-" for None."""
    if seconds is None:
        return "-"
    if seconds < 0.9995:  # 0.9996 s is 1.0s, not 1000ms
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def byte_size(value: int | None) -> str:
    """512B, 18.5MB, 1.2GB; "-" for None."""
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return f"{size:.1f}GB"


def natural_key(name: str) -> list[str | int]:
    """Sort key reading runs of digits as numbers: job_2 before job_10, as people count."""
    return [int(piece) if piece.isdigit() else piece.lower() for piece in re.split(r"(\d+)", name)]


def display_path(path: str | os.PathLike[str]) -> str:
    """`path` relative to the working directory when it lies below it ("jobs/etl.py"), else as given."""
    text = os.fspath(path)
    try:
        relative = os.path.relpath(text)
    except ValueError:
        return text
    return text if relative.startswith("..") else relative
