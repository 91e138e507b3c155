"""MWAA's environment classes and the sizes that follow from them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EnvironmentClass:
    name: str
    tasks_per_worker: int
    dag_capacity: int
    autoscaling: bool = True
    """mw1.micro runs its one worker beside the scheduler and never scales."""
    min_schedulers: int = 2
    max_schedulers: int = 5
    min_webservers: int = 2
    max_webservers: int = 5
    max_workers: int = 25


CLASSES: dict[str, EnvironmentClass] = {
    c.name: c
    for c in (
        EnvironmentClass(
            "mw1.micro",
            3,
            25,
            autoscaling=False,
            min_schedulers=1,
            max_schedulers=1,
            min_webservers=1,
            max_webservers=1,
            max_workers=1,
        ),
        EnvironmentClass("mw1.small", 5, 50),
        EnvironmentClass("mw1.medium", 10, 250),
        EnvironmentClass("mw1.large", 20, 1000),
        EnvironmentClass("mw1.xlarge", 40, 2000),
        EnvironmentClass("mw1.2xlarge", 80, 4000),
    )
}

DEFAULT_CLASS = "mw1.small"
