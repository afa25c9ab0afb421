"""The site's users (``northbound.opcua.users``) and their passwords: one check for every
interface that logs people in (the OPC UA server, the dashboard), so that none is weaker.

A password is read from the user's environment variable at each login (a variable changed by
the service manager takes effect without a restart) and compared in constant time. A user
whose variable is unset or empty cannot log in: an empty password is no password; that is
logged once per user.
"""

from __future__ import annotations

import hmac
import logging
import os
from typing import TYPE_CHECKING

from gateway.adapters.base import Role

if TYPE_CHECKING:
    from collections.abc import Iterable

    from gateway.config.schema import OpcUaUser

log = logging.getLogger("gateway.ops.users")


class UserTable:
    """Check a user name and password against the site's users; ``what`` names the interface
    in the log ("OPC UA", "dashboard"), written to ``logger`` (the interface's own)."""

    def __init__(self, users: Iterable[OpcUaUser], what: str,
                 logger: logging.Logger = log) -> None:
        self._users = {u.name: u for u in users}
        self._what = what
        self._log = logger
        self._missing_logged: set[str] = set()

    def __bool__(self) -> bool:
        return bool(self._users)

    def check(self, name: str, password: str | None) -> tuple[Role | None, str]:
        """The user's role and "ok", or None and why not ("unknown user", "wrong password",
        "no password is configured for the user (variable unset|empty)")."""
        user = self._users.get(name)
        if user is None:
            return None, "unknown user"
        expected = os.environ.get(user.password_env)
        if not expected:  # unset, or empty: an empty password is no password
            if name not in self._missing_logged:
                self._missing_logged.add(name)
                self._log.warning("%s user %r cannot log in: environment variable %s is %s",
                            self._what, name, user.password_env,
                            "empty" if expected is not None else "not set")
            return None, ("no password is configured for the user (variable "
                          f"{'empty' if expected is not None else 'unset'})")
        if password is None or not hmac.compare_digest(password.encode(), expected.encode()):
            return None, "wrong password"
        return Role(user.role), "ok"
