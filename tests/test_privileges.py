"""
C{twistd --uid/--gid}: the accounts database that chatd creates while it
still runs as root belongs to the user it runs as afterwards.
"""

from __future__ import annotations

import os
import pwd
import sqlite3

from twisted.internet import reactor
from twisted.scripts.twistd import ServerOptions
from twisted.trial.unittest import SkipTest, TestCase

from chatd.tap import makeService

NO_LISTENERS = ["--protobuf", "none", "--msrp", "none", "--http", "none", "--msgr", "none"]


def _writesAs(uid: int, gid: int, path: str) -> bool:
    """Whether C{uid}/C{gid} can write to the SQLite database at C{path}."""
    child = os.fork()
    if child == 0:  # pragma: no cover (the child)
        status = 1
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            connection = sqlite3.connect(path)
            connection.execute("CREATE TABLE written (x)")
            connection.commit()
            connection.close()
            status = 0
        except BaseException as e:
            os.write(2, f"as uid {uid}: {e!r}\n".encode())
        finally:
            os._exit(status)
    _, status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(status) == 0


class DatabaseOwnerTests(TestCase):
    def setUp(self) -> None:
        if os.geteuid() != 0:
            raise SkipTest("needs root, as twistd --uid does")
        try:
            nobody = pwd.getpwnam("nobody")
        except KeyError:
            raise SkipTest("no user 'nobody'")
        self.uid, self.gid = nobody.pw_uid, nobody.pw_gid
        # The service's state directory, as an operator makes it: the user's.
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        # (trial's temporary directory is root's alone: let the user in.)
        os.chmod(os.path.dirname(self.directory), 0o755)
        os.chown(self.directory, self.uid, self.gid)
        self.path = os.path.join(self.directory, "chatd.sqlite3")

    def start(self, twistdArgs: list[str]):
        config = ServerOptions()
        config.parseOptions([*twistdArgs, "chatd", "--db", self.path, *NO_LISTENERS])
        top = makeService(config.subOptions, reactor=reactor)
        self.addCleanup(top.accounts.close)
        return top

    def test_newDatabaseBelongsToTheUser(self) -> None:
        self.start(["--uid", "nobody", "--gid", str(self.gid)])
        info = os.stat(self.path)
        self.assertEqual((info.st_uid, info.st_gid), (self.uid, self.gid))
        # Nothing else of SQLite's is left behind for root.
        self.assertEqual(os.listdir(self.directory), ["chatd.sqlite3"])
        self.assertTrue(_writesAs(self.uid, self.gid, self.path))

    def test_gidDefaultsToTheUsersGroup(self) -> None:
        self.start(["--uid", "nobody"])
        info = os.stat(self.path)
        self.assertEqual((info.st_uid, info.st_gid), (self.uid, self.gid))

    def test_withoutUidRootKeepsIt(self) -> None:
        """Without --uid the file belongs to who runs chatd, as any file."""
        self.start([])
        self.assertEqual(os.stat(self.path).st_uid, 0)

    def test_existingDatabaseUntouched(self) -> None:
        """An existing database keeps its owner: the operator chose it."""
        sqlite3.connect(self.path).close()
        os.chown(self.path, 0, 0)
        self.start(["--uid", "nobody"])
        info = os.stat(self.path)
        self.assertEqual((info.st_uid, info.st_gid), (0, 0))
