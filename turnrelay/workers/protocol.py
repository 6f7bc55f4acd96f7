# -*- test-case-name: tests.test_workers -*-
"""
What the control process and its workers say to each other, over AMP on a
socket pair the control process makes for each worker.

The worker asks (L{Ready}, L{Reserve}, L{Release}); the control process
tells (L{Reconfigure}, L{Metrics}), and sends the control socket's own
commands (L{turnrelay.admin.control}: status, allocations, kill, drain,
reload-tls, loglevel), which each worker answers for itself as a relay of
its own would.

A worker gets its L{WorkerSpec} on its standard input, once, as a pickle:
the two processes run the same code, and the spec holds the configuration
whole (a reload sends the new one with L{Reconfigure}).
"""

from __future__ import annotations

import pickle
from typing import Any, Dict, Tuple

import attr
from twisted.protocols import amp

from turnrelay.admin.control import LongText
from turnrelay.config import RelayConfig

# The descriptor a worker's end of its socket pair has in the worker.
CHANNEL_FD = 3


@attr.s(frozen=True, auto_attribs=True)
class WorkerSpec:
    """
    What a worker is to be.

    @ivar index: its number, from 0; its relay ports and its sockets in
        each listener's group are chosen by it.
    @ivar count: how many workers there are.
    @ivar config: its configuration: the relay's, without the control
        process's services.
    @ivar listeners: the descriptor of its socket for each listener, by
        the listener's index in C{config.listeners}.
    @ivar relayPorts: the first and last relay port it binds, its slice of
        C{config}'s range.
    """

    index: int
    count: int
    config: RelayConfig
    listeners: Dict[int, int]
    relayPorts: Tuple[int, int]


class PickledConfig(LongText):
    """
    A L{RelayConfig}, pickled: it is sent only between a control process
    and the workers it started, which run the same code.
    """

    def toBox(self, name: bytes, strings: Any, objects: Any, proto: Any) -> None:
        key = str(name, "ascii")
        super().toBox(name, strings, {key: pickle.dumps(objects[key]).hex()}, proto)

    def fromBox(self, name: bytes, strings: Any, objects: Any, proto: Any) -> None:
        key = str(name, "ascii")
        text: Dict[str, str] = {}
        super().fromBox(name, strings, text, proto)
        objects[key] = pickle.loads(bytes.fromhex(text[key]))


class Ready(amp.Command):
    """
    The worker's listeners serve: it can take clients (sent once a start).
    """

    arguments = [(b"pid", amp.Integer())]
    response = []


class Reserve(amp.Command):
    """
    May the worker make one more allocation for C{username}?  Asked by
    every Allocate, before it makes the allocation, so that the quotas hold
    across workers.
    """

    arguments = [(b"username", amp.Unicode())]
    response = [(b"granted", amp.Boolean())]


class Release(amp.Command):
    """
    An allocation a L{Reserve} granted has ended, or was never made.
    """

    arguments = [(b"username", amp.Unicode())]
    requiresAnswer = False


class Reconfigure(amp.Command):
    """
    Put a reloaded configuration in force (already cut to the worker's
    share, as its L{WorkerSpec}'s).
    """

    arguments = [(b"config", PickledConfig())]
    response = [(b"needRestart", amp.ListOf(amp.Unicode()))]


class Metrics(amp.Command):
    """
    The worker's metrics, in Prometheus's text format, for the control
    process to add up.
    """

    arguments = []
    response = [(b"text", LongText())]
