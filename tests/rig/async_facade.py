"""A blocking face on :class:`pyqga.host_client.aio.AsyncAgentClient`, so one test body can run
against both clients: every coroutine runs to completion on a private event loop, and the
async context managers (``frozen``, ``stall``) become sync ones that enter and leave them
there, exceptions included."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import Any

from pyqga.host_client.aio import AsyncAgentClient


class BlockingAsyncClient:
    def __init__(self, address: str, **options: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.client = AsyncAgentClient(address, **options)
        self.loop.run_until_complete(self.client.open())

    def __enter__(self) -> BlockingAsyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.run_until_complete(self.client.close())
        self.loop.close()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.client, name)
        if not inspect.iscoroutinefunction(attribute):
            return attribute
        return lambda *args, **kwargs: self.loop.run_until_complete(attribute(*args, **kwargs))

    @contextmanager
    def _entered(self, manager: AbstractAsyncContextManager[Any]) -> Iterator[Any]:
        value = self.loop.run_until_complete(manager.__aenter__())
        try:
            yield value
        except BaseException as exc:
            if not self.loop.run_until_complete(manager.__aexit__(type(exc), exc, exc.__traceback__)):
                raise
        else:
            self.loop.run_until_complete(manager.__aexit__(None, None, None))

    def frozen(self, *args: Any, **kwargs: Any) -> Any:
        return self._entered(self.client.frozen(*args, **kwargs))

    def stall(self, *args: Any, **kwargs: Any) -> Any:
        return self._entered(self.client.stall(*args, **kwargs))

    def stall_for(self, *args: Any, **kwargs: Any) -> Any:
        return self.loop.run_until_complete(self.client.stall_for(*args, **kwargs))
