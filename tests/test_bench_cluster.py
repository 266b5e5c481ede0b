"""
Scenario 7 of `make bench` (the cluster, docs/performance.md) at a tiny size:
a real redis-server, real `twistd chatd` nodes, the load generator's pairs
laid out within and across nodes. It checks that every message arrives and
that every figure the table and docs/performance.md quote is there, never
how fast anything went: that is `make bench`'s business.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from chatd.loadgen import scenarios

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def loadBench():
    """bench/run.py, which is a script, as a module."""
    spec = importlib.util.spec_from_file_location(
        "chatd_bench_run", os.path.join(ROOT, "bench", "run.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: Scenario 7, small enough for a test; threads instead of worker processes.
TINY = {
    "cluster_pairs": 4, "cluster_window": 4, "cluster_warmup": 0.0,
    "cluster_duration": 0.2, "cluster_rate": 200.0, "cluster_rate_duration": 0.2,
    "cluster_file_bytes": 9 * 1024 * 1024 + 3, "redis_publishes": 2000, "threads": True,
}


class LayoutTests(SynchronousTestCase):
    """Where each worker's senders and receivers log in."""

    def test_layouts(self) -> None:
        a, b = scenarios.Target(ports={"protobuf": 1}), scenarios.Target(ports={"protobuf": 2})
        self.assertEqual(scenarios.clusterLayout([a, b], "same", 2), ([a, b], [a, b]))
        self.assertEqual(scenarios.clusterLayout([a, b], "split", 2), ([a, b], [b, a]))
        self.assertEqual(scenarios.clusterLayout([a, b], "split", 1), ([a], [b]))
        self.assertRaises(ValueError, scenarios.clusterLayout, [a], "split", 2)
        self.assertRaises(ValueError, scenarios.clusterLayout, [a, b], "diagonal", 2)


class ScenarioSevenTests(SynchronousTestCase):
    """bench/run.py's scenario 7, end to end against real servers."""

    def setUp(self) -> None:
        for program in ("redis-server", "redis-cli", "redis-benchmark"):
            if shutil.which(program) is None:
                raise SkipTest(f"{program} is not installed (Debian redis-server, redis-tools)")
        self.run_ = loadBench()
        output = os.path.abspath(self.mktemp())
        args = argparse.Namespace(
            quick=True, output=output, checkout=None, retries=0, profile=False, only="7",
            wait_quiet=0.0, repeat=None, chart=None,
        )
        self.bench = self.run_.Bench(args)
        self.addCleanup(shutil.rmtree, self.bench.work, True)
        self.bench.size = dict(self.bench.size, **TINY)

    def assertAllDelivered(self, result: dict) -> None:
        self.assertEqual(
            (result["errors"], result["missing"], result["unanswered"], result["ok"]),
            ([], 0, 0, True),
        )
        self.assertGreater(result["total_sent"], 0)
        self.assertEqual(result["total_delivered"], result["total_sent"])

    def test_scenario7(self) -> None:
        """
        Every layout's messages all arrive, the second node's and Redis'
        CPU are read apart from the first node's, the paced runs measure
        every message's latency, the file within a node arrives whole, and
        the one across nodes either arrives or is reported as not supported
        by this build; the table shows all of it.
        """
        out = self.bench.scenario7()
        for key in ("embedded", "one_node", "same", "split", "same_paced", "split_paced"):
            self.assertAllDelivered(out[key])
            self.assertIn("msgs_per_cpu_s", out[key])
            self.assertIn("chatd_cpu_percent", out[key])
        self.assertNotIn("processes", out["embedded"])
        self.assertEqual(set(out["one_node"]["processes"]), {"redis"})
        for key in ("same", "split", "same_paced", "split_paced"):
            self.assertEqual(set(out[key]["processes"]), {"b", "redis"})
            self.assertIn("redis_us_per_msg", out[key])
        self.assertIn("cpu_per_msg_ratio", out)
        self.assertIn("cpu_per_msg_ratio_paced", out)
        for key in ("same_paced", "split_paced"):
            latency = out[key]["latency_ms"]
            self.assertEqual(latency["samples"], out[key]["total_delivered"])
        self.assertEqual(out["redis_benchmark"]["publishes"], TINY["redis_publishes"])
        self.assertGreater(out["redis_benchmark"]["publishes_per_s"], 0)

        files = out["files"]
        self.assertEqual(files["same_node"]["ok"], True)
        if files["supported"]:
            self.assertEqual(files["cross_node"]["ok"], True)
            self.assertEqual(set(files["cross_node"]["servers"]), {"sender_node", "receiver_node"})
        else:
            self.assertTrue(files["not_supported"].startswith("not supported by this build"))

        names = [t["name"] for t in self.bench.results["targets"] if t["scenario"] == "7"]
        self.assertIn("cross-node CPU per message vs same-node", names)
        self.assertIn("cross-node p99 at 200 msg/s", names)
        self.bench.results["scenarios"]["7"] = out
        self.bench.results["wall_seconds"] = 0.0
        text = self.run_.table(self.bench.results)
        for label in ("1 node (--cluster)", "pairs within a node", "pairs across nodes",
                      "Redis alone: PUBLISH/s", "within a node: MB/s", "across nodes"):
            self.assertIn(label, text)
