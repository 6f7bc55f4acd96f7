"""
The assertions on STUN responses that every TURN test makes, on the fake
reactor and on real sockets alike.
"""

from __future__ import annotations

from typing import Optional

from twisted.trial.unittest import SynchronousTestCase

from turnrelay.stun import attributes as A
from turnrelay.stun.message import MessageClass, STUNMessage


def errorCode(response: STUNMessage) -> Optional[int]:
    """
    @return: the code of an error response, else L{None}.
    """
    if response.messageClass != MessageClass.ERROR_RESPONSE:
        return None
    error = response.get(A.ERROR_CODE)
    return None if error is None else int(error.code)


class TURNTestCase(SynchronousTestCase):
    """
    A trial test case that checks STUN responses.

    Tests on the real reactor mix it with L{twisted.trial.unittest.TestCase}:
    C{class SlowReaderTests(TURNTestCase, TestCase)}.
    """

    def assertSuccess(self, response: Optional[STUNMessage]) -> STUNMessage:
        """
        Assert that C{response} came and is a success response.

        @return: C{response}.
        """
        if response is None:
            self.fail("no answer")
        self.assertEqual(
            response.messageClass,
            MessageClass.SUCCESS_RESPONSE,
            f"expected success, got error {response.get(A.ERROR_CODE)}",
        )
        return response

    def assertErrorCode(self, response: Optional[STUNMessage], code: int) -> STUNMessage:
        """
        Assert that C{response} came and is an error response with C{code}.

        @return: C{response}.
        """
        if response is None:
            self.fail(f"no answer, expected error {code}")
        self.assertEqual(
            (response.messageClass, errorCode(response)),
            (MessageClass.ERROR_RESPONSE, code),
            f"expected error {code}, got {response!r}",
        )
        return response
