"""The exceptions of mcpfleet: one class per kind of failure, each with the node's reason."""

from __future__ import annotations

from typing import Optional


class McpfleetError(Exception):
    """Any failure of a request to the cluster.

    ``reason`` is the node's one-line reason (also the message), ``leader_hint`` the
    leader's address when the node named one, and ``detail`` the whole description,
    as the CLI prints it.
    """

    def __init__(self, reason: str, leader_hint: Optional[str] = None, detail: Optional[str] = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.leader_hint = leader_hint
        self.detail = detail if detail is not None else reason


class NotFound(McpfleetError):
    """No such server, node or tool."""


class Conflict(McpfleetError):
    """A compare-and-set whose expected revision no longer holds (the server changed)."""


class InvalidArgument(McpfleetError):
    """The request or spec was refused as invalid; nothing changed."""


class Unavailable(McpfleetError):
    """No node could be reached, or the one reached has no leader for now.

    Worth trying again. A write that failed this way may or may not have been applied:
    send it again with ``expected_revision`` to be sure it applies at most once.
    """


class Timeout(McpfleetError, TimeoutError):
    """No answer within the client's timeout (or the call's)."""


class PermissionDenied(McpfleetError):
    """The caller may not do this."""


class ResourceExhausted(McpfleetError):
    """Too large or too many: a size or count limit of the registry."""


__all__ = [
    "McpfleetError",
    "NotFound",
    "Conflict",
    "InvalidArgument",
    "Unavailable",
    "Timeout",
    "PermissionDenied",
    "ResourceExhausted",
]
