"""Which cache groups each REST resource's changes invalidate (the secretary system's rules).

Kept apart from the app so that importing the rules needs no web framework.
"""

from __future__ import annotations

from commclient.asgi import InvalidationRule

INVALIDATION_RULES: tuple[InvalidationRule, ...] = (
    InvalidationRule("/api/assistants", groups=("assistant",)),
    # An assistant's configuration lists its tools.
    InvalidationRule("/api/tools", groups=("tool", "assistant")),
    InvalidationRule("/api/global-settings", groups=("global_settings",)),
    # Removing or changing a user changes their secretary link too.
    InvalidationRule("/api/users", groups=("user", "user_secretary")),
    InvalidationRule("/api/user-secretaries", groups=("user_secretary",)),
)
"""The cache keys these rules drop are named ``assistant:…``, ``tool:…``, ``global_settings``,
``user:…`` and ``user_secretary:…``."""
