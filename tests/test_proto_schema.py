"""
chatd/protobuf/chat_pb2.py is generated from proto/chat.proto and committed;
this fails when the two drift apart (run `make proto` to regenerate).
"""

from __future__ import annotations

import os
import tempfile

from google.protobuf import descriptor_pb2
from twisted.trial.unittest import SkipTest, TestCase

from chatd.protobuf import chat_pb2

PROTO_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "proto")


def withoutJsonNames(file: descriptor_pb2.FileDescriptorProto):
    """
    protoc's descriptor sets carry each field's json_name; generated Python
    code does not. Neither affects the wire format.
    """
    def strip(messages):
        for message in messages:
            for field in message.field:
                field.ClearField("json_name")
            strip(message.nested_type)

    strip(file.message_type)
    return file


class SchemaTests(TestCase):
    def test_generatedCodeMatchesProto(self) -> None:
        try:
            from grpc_tools import protoc
        except ImportError:
            raise SkipTest("grpcio-tools is not installed (pip install '.[test]')")
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "chat.desc")
            status = protoc.main(
                ["protoc", f"-I{PROTO_DIR}", f"--descriptor_set_out={out}", "chat.proto"]
            )
            self.assertEqual(status, 0, "protoc could not compile proto/chat.proto")
            with open(out, "rb") as f:
                compiled = withoutJsonNames(
                    descriptor_pb2.FileDescriptorSet.FromString(f.read()).file[0]
                )
        committed = descriptor_pb2.FileDescriptorProto.FromString(
            chat_pb2.DESCRIPTOR.serialized_pb
        )
        self.assertEqual(
            committed,
            compiled,
            "chatd/protobuf/chat_pb2.py is stale: run `make proto`",
        )

    def test_seedNumbering(self) -> None:
        """The identifiers and numbers are the seed's, 0-based."""
        Q, R = chat_pb2.ClientRequest, chat_pb2.ServerResponse
        for enum in (Q.Option, R.Option):
            self.assertEqual(
                [(v.name, v.number) for v in enum.DESCRIPTOR.values],
                [
                    ("USER_LOGIN", 0),
                    ("CONNECTED_USERS", 1),
                    ("USER_INFORMATION", 2),
                    ("STATUS_CHANGE", 3),
                    ("SEND_MESSAGE", 4),
                ],
            )
        self.assertEqual(
            [(v.name, v.number) for v in R.Code.DESCRIPTOR.values],
            [("FAILED_OPERATION", 0), ("SUCCESSFUL_OPERATION", 1)],
        )
        self.assertEqual(
            [(f.name, f.number) for f in Q.DESCRIPTOR.fields],
            [("option", 1), ("newuser", 2), ("user", 3), ("status", 4), ("messg", 5)],
        )
        self.assertEqual(
            [(f.name, f.number) for f in R.DESCRIPTOR.fields],
            [("option", 1), ("code", 2), ("response", 3), ("users", 4),
             ("user", 5), ("messg", 6), ("status", 7)],
        )
