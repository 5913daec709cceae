"""A background loop stops when its server stops, even when a library swallowed the cancellation."""

import asyncio

import pytest

from llmapp.runtime.tasks import pause


async def loop_that_swallows_once(rounds: list):
    """As Upkeep.run does around a Redis call: errors are caught, then it pauses."""
    swallowed = False
    while True:
        rounds.append(1)
        try:
            await asyncio.sleep(0.01)  # a Redis round trip
        except asyncio.CancelledError:
            if swallowed:
                raise
            swallowed = True  # what asyncio.wait_for in Python 3.11 may do when a call completes meanwhile
        await pause(3600)


def test_a_cancellation_a_library_swallowed_ends_the_loop_at_its_next_pause():
    async def main():
        rounds = []
        task = asyncio.create_task(loop_that_swallows_once(rounds))
        await asyncio.sleep(0)  # it starts its first round trip
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)  # without pause(), it would sleep for an hour
        return rounds

    assert asyncio.run(main()) == [1]
