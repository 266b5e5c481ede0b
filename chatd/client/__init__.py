"""
chatd-client: a console client for every chatd protocol (docs/client.md).

One client per wire format (L{chatd.client.protobuf}, L{chatd.client.msrp},
L{chatd.client.msgr}), each built on the server's own codec, behind one
command language (L{chatd.client.runner}) and two faces: a prompt for people
on a terminal (L{chatd.client.console.TerminalConsole}) and plain lines for
scripts (L{chatd.client.console.ScriptConsole}).
"""
