"""The access log's filter: secrets given in URLs never reach `serve --access-log`'s lines."""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote_plus


class HideTokens(logging.Filter):
    """Keeps secrets given in URLs out of the access log (`serve --access-log` logs each path): the
    value of every query parameter whose name looks like a secret's is replaced by `<hidden>`,
    however the name is written (`?TOKEN=`, `?%74oken=`, `?token%00=`, `?access_token=`, `?api_key=`)."""

    parameter = re.compile(r"([?&])([^=&\s]*)=([^&\s]*)")
    # in a parameter's name, percent-decoded, case-folded and stripped of all but letters and digits
    secret_words = ("token", "key", "secret", "pass", "pwd", "auth", "sig", "credential", "session", "jwt")

    @classmethod
    def secret_name(cls, name: str) -> bool:
        for _ in range(5):  # encoded several times over: decode until nothing changes
            decoded = unquote_plus(name)
            if decoded == name:
                break
            name = decoded
        letters = re.sub(r"[\W_]", "", name.casefold())
        return any(word in letters for word in cls.secret_words)

    def _hide(self, match: re.Match[str]) -> str:
        if self.secret_name(match.group(2)):
            return f"{match.group(1)}{match.group(2)}=<hidden>"
        return match.group(0)

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                self.parameter.sub(self._hide, a) if isinstance(a, str) else a for a in record.args
            )
        return True


HIDE_TOKENS = HideTokens()
