"""
The real servers of the cluster tests (L{chatd.testservers}) start, answer
and restart on their port.
"""

from twisted.internet import defer
from twisted.trial import unittest

from chatd.testservers import redisServer


class RedisServerTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_answersAndRestartsEmpty(self):
        """
        The test run's redis-server answers a Twisted-native client on its
        port; after a restart it answers on the same port, with nothing kept.
        """
        import txredisapi

        server = redisServer()
        key = "chatd-test:testservers"
        client = yield txredisapi.Connection(
            "127.0.0.1", server.port, reconnect=False
        )
        try:
            yield client.set(key, "kept?")
            self.assertEqual((yield client.get(key)), "kept?")
        finally:
            yield client.disconnect()
        server.restart()
        client = yield txredisapi.Connection(
            "127.0.0.1", server.port, reconnect=False
        )
        try:
            self.assertIsNone((yield client.get(key)))
        finally:
            yield client.disconnect()
