"""
Waiting in the real-socket tests: the reactor they run on, the one bound on
what should happen at once, and the two ways to wait with a deadline.

Nothing here sleeps: L{within} bounds a wait for an event, and L{poll}
looks at a condition that announces nothing until it holds or a deadline
passes.
"""

from __future__ import annotations

from typing import Any, Callable, Coroutine, TypeVar, Union

from twisted.internet import reactor as _globalReactor
from twisted.internet.defer import Deferred, TimeoutError, ensureDeferred
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

# The global reactor trial runs; typed loosely because it provides many
# interfaces at once.
reactor: Any = _globalReactor

PROMPTLY = 10.0
"""
Seconds to wait for what takes milliseconds on loopback (an answer, a
connection closing, a child process printing a line), with room for a
loaded machine: reaching it means something is wrong.
"""

T = TypeVar("T")


def within(
    waiting: Union[Deferred[T], Coroutine[Any, Any, T]], seconds: float, what: str
) -> Deferred[T]:
    """
    Bound a wait: fail with C{what} in the message unless C{waiting} (a
    L{Deferred} or a coroutine) is done within C{seconds}.
    """

    def timedOut(failure: Failure) -> Failure:
        if failure.check(TimeoutError):
            raise AssertionError(f"{what}: nothing after {seconds} s")
        return failure

    deferred: Deferred[T] = ensureDeferred(waiting)
    deferred.addTimeout(seconds, reactor)
    return deferred.addErrback(timedOut)


async def poll(
    condition: Callable[[], object],
    timeout: float,
    what: str,
    interval: float = 0.01,
    describe: Callable[[], object] = lambda: "",
) -> None:
    """
    Wait until C{condition()} is true, looking every C{interval} seconds:
    for what nothing announces (a child's descriptors, sockets the reactor
    watches).

    @param describe: says what is seen, for the failure message.
    @raise AssertionError: not within C{timeout} seconds.
    """
    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} {describe()}")
        await deferLater(reactor, interval, lambda: None)
