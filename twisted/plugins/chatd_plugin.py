"""
twistd plugin for chatd.

The module is named as a string so that ``twistd --help`` does not import the
server, and a broken import of chatd cannot hide the other plugins.
"""

from twisted.application.service import ServiceMaker

chatd = ServiceMaker(
    "chatd",
    "chatd.tap",
    "A multi-protocol chat server: seed-000 protobuf chat, MSRP, MSGR UQ.",
    "chatd",
)
