"""Messages for a remote browser: absolute server paths become file names (issue 17, point 6).

The library's messages name files so a person at the terminal can find them; a browser on another
machine must not learn the server's folders, home directory or user name from them.  Pages pass
every message they show through :func:`public`.
"""

from __future__ import annotations

import re

# An absolute POSIX path (/a/b, ~/a) or a Windows one (C:\a\b), up to a space, quote or bracket.
_PATH = re.compile(r"(?:^|(?<=[\s'\"`(=\[]))(?:~|[A-Za-z]:)?(?:[/\\][^\s'\"`<>()\[\]{},;|*?/\\]+){1,}[/\\]?")


def _name(match: re.Match) -> str:
    parts = [p for p in re.split(r"[/\\]", match.group(0)) if p and p != "~" and not p.endswith(":")]
    return parts[-1] if parts else "(a server folder)"


def public(text: str) -> str:
    """``text`` with every absolute path replaced by its last part (the file or folder name)."""
    return _PATH.sub(_name, str(text))
