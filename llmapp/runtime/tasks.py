"""The server's background loops' one shared step."""

import asyncio


async def pause(seconds: float) -> None:
    """Sleep between two rounds of a background loop, unless the loop was cancelled meanwhile.

    Python 3.11's asyncio.wait_for (which redis-py's connections use) can swallow a cancellation that
    lands as the awaited call completes; a loop that then catches the library's error would sleep on,
    and a server asked to stop would wait for it until it is killed. The request is still counted on the
    task: honour it here.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
    await asyncio.sleep(seconds)
