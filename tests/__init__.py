"""
turnrelay's tests: trial test classes, run by pytest.

The fixtures they share, one module a layer:

  - L{tests._relays}: the relays, built from settings as twistd builds one:
    L{FakeRelay<tests._relays.FakeRelay>} on a fake reactor,
    L{startRelay<tests._relays.startRelay>} on real loopback sockets;
  - L{tests._session}: the one TURN client of the tests, without I/O, its
    credentials, and its adapter that feeds a controller directly;
  - L{tests._sockets}: clients on real sockets, that TURN client among them;
  - L{tests._assertions}: the assertions on STUN responses;
  - L{tests._logs}: the log events of a test, recorded;
  - L{tests._timing}: L{PROMPTLY<tests._timing.PROMPTLY>} and the waits with a
    deadline;
  - L{tests._processes}: child processes, twistd, coturn's tools;
  - L{tests._netns}: networks of namespaces, for the end-to-end tests.

The independent clients in C{tests/interop/} and C{tests/e2e/} share
nothing with these on purpose.
"""
