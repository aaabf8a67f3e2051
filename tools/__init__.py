"""Tools around the hub (benchmarks, data generators, fault and overload runs, launchers).

They drive the services from outside and are not part of the serving image: the Dockerfile
copies only ``libs/`` and ``services/``.
"""
