"""Re-exported for the tests: the same launcher the benchmarks use."""

from tools.launch import NEXTBEST, LocalDeployment, free_port, wait_serving

__all__ = ["NEXTBEST", "LocalDeployment", "free_port", "wait_serving"]
