"""
chatd's load generator: real clients of every wire format, driven from
several processes, with counts and latencies measured on the client side.

It speaks the protocols through chatd's own codecs (L{chatd.protobuf.framing},
L{chatd.protobuf.chat_pb2}, L{chatd.msrp.codec}, L{chatd.msgr.codec}), so it
can be pointed at any chatd deployment (C{chatd-loadgen --help}) as well as
at the local servers C{make bench} starts. docs/performance.md describes the
scenarios and how their figures are measured.

Modules:

  - L{chatd.loadgen.wire}: what each protocol's client writes and reads;
  - L{chatd.loadgen.records}: counting and checking fixed-size deliveries
    without parsing each one;
  - L{chatd.loadgen.loop}: the non-blocking sockets of one worker, and
    logging in;
  - L{chatd.loadgen.traffic}: pipelined pairs, paced pairs, broadcasts;
  - L{chatd.loadgen.worker}: worker processes and the commands they obey;
  - L{chatd.loadgen.scenarios}: the benchmark scenarios;
  - L{chatd.harness} (beside the package, shared with the tests and the
    soak): starting a local C{twistd chatd} (or any server that logs
    C{<label> listening on tcp:HOST:PORT}) and reading its CPU time and
    memory from C{/proc};
  - L{chatd.loadgen.main}: the C{chatd-loadgen} command.
"""
