"""A local Ray cluster for the tests that need one (2 CPUs, as on the team's machines), per module."""

import pytest

__all__ = ["ray_local"]


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
