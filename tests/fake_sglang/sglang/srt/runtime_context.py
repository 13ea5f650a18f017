"""Fake ``sglang.srt.runtime_context``: holds the ServerArgs of this process."""

from typing import Any, Optional

_SERVER_ARGS: Optional[Any] = None


def set_server_args(server_args: Any) -> None:
    global _SERVER_ARGS
    _SERVER_ARGS = server_args


def get_server_args() -> Any:
    if _SERVER_ARGS is None:
        from sglang.srt.server_args import ServerArgs

        return ServerArgs()
    return _SERVER_ARGS
