"""
The real servers of the cluster tests (L{chatd.testservers}) start, answer
and restart on their port.
"""

from twisted.internet import defer
from twisted.trial import unittest

from chatd.testservers import postgresServer, redisServer


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


class PostgresServerTests(unittest.TestCase):
    def test_databasesAndRestart(self):
        """
        The test run's PostgreSQL gives each caller a database of its own;
        stopped it refuses connections, and after a restart on the same port
        the data is still there.
        """
        import psycopg

        server = postgresServer()
        first, second = server.createDatabase(), server.createDatabase()
        self.assertNotEqual(first, second)
        self.assertTrue(first.startswith(f"postgresql://chatd@127.0.0.1:{server.port}/"))
        with psycopg.connect(first, autocommit=True) as connection:
            connection.execute("CREATE TABLE kept (x INTEGER)")
            connection.execute("INSERT INTO kept VALUES (7)")
        with psycopg.connect(second, autocommit=True) as connection:
            self.assertIsNone(
                connection.execute("SELECT to_regclass('kept')").fetchone()[0]
            )
        server.stop()
        try:
            self.assertRaises(
                psycopg.OperationalError, psycopg.connect, first, connect_timeout=5
            )
        finally:
            server.start()
        with psycopg.connect(first, autocommit=True) as connection:
            self.assertEqual(connection.execute("SELECT x FROM kept").fetchall(), [(7,)])
