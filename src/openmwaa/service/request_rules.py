"""The rules of CreateEnvironment and UpdateEnvironment beyond botocore's model.

Checked before anything is written, so a refused request leaves nothing behind;
every broken rule is named in one ValidationException, in AWS's style.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from openmwaa.service.classes import CLASSES
from openmwaa.service.errors import ValidationException

MAINTENANCE_WINDOW = re.compile(r"(MON|TUE|WED|THU|FRI|SAT|SUN):([01]\d|2[0-3]):(00|30)")
DAYS = ("MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN")
_S3_PATHS = ("DagS3Path", "PluginsS3Path", "RequirementsS3Path", "StartupScriptS3Path")


def check_request(
    spec: Mapping[str, Any],
    versions: Sequence[str],
    refused_config_keys: Callable[[Mapping[str, str]], Collection[str]],
) -> None:
    """Raise one ValidationException naming every rule beyond the model that ``spec``
    (a whole configuration: defaults applied, update merged) breaks."""
    errors: list[str] = []
    env_class = CLASSES.get(spec["EnvironmentClass"])
    if env_class is None:
        raise ValidationException(
            f"EnvironmentClass {spec['EnvironmentClass']} is not valid. "
            f"Valid classes: {', '.join(CLASSES)}."
        )
    if spec["AirflowVersion"] not in versions:
        errors.append(
            f"AirflowVersion {spec['AirflowVersion']} is not supported. "
            f"Supported versions: {', '.join(versions)}."
        )
    for low, high, lo_name, hi_name, cap in (
        ("MinWorkers", "MaxWorkers", "MinWorkers", "MaxWorkers", env_class.max_workers),
        (
            "MinWebservers",
            "MaxWebservers",
            "MinWebservers",
            "MaxWebservers",
            env_class.max_webservers,
        ),
    ):
        if spec[low] > spec[high]:
            errors.append(f"{lo_name} ({spec[low]}) must not exceed {hi_name} ({spec[high]}).")
        if spec[high] > cap:
            errors.append(
                f"{hi_name} must be at most {cap} for {env_class.name}; got {spec[high]}."
            )
    if spec["MinWebservers"] < env_class.min_webservers:
        errors.append(
            f"MinWebservers must be at least {env_class.min_webservers} for "
            f"{env_class.name}; got {spec['MinWebservers']}."
        )
    if not env_class.min_schedulers <= spec["Schedulers"] <= env_class.max_schedulers:
        errors.append(
            f"Schedulers must be between {env_class.min_schedulers} and "
            f"{env_class.max_schedulers} for {env_class.name}; got {spec['Schedulers']}."
        )
    if not MAINTENANCE_WINDOW.fullmatch(spec["WeeklyMaintenanceWindowStart"]):
        errors.append(
            "WeeklyMaintenanceWindowStart must be DAY:HH:MM with DAY one of "
            f"{', '.join(DAYS)}, HH 00-23 and MM 00 or 30 (e.g. TUE:03:30); got "
            f"{spec['WeeklyMaintenanceWindowStart']!r}."
        )
    for field in _S3_PATHS:
        path = spec.get(field)
        if path is not None and (
            path.startswith("/") or ".." in path.split("/") or "\\" in path or "\0" in path
        ):
            errors.append(
                f"{field} must be a path relative to the bucket without '..' or a "
                f"leading '/'; got {path!r}."
            )
    for field in ("PluginsS3Path", "RequirementsS3Path", "StartupScriptS3Path"):
        version_field = field.replace("Path", "ObjectVersion")
        if spec.get(version_field) and not spec.get(field):
            errors.append(f"{version_field} needs {field}.")
    refused = refused_config_keys(spec.get("AirflowConfigurationOptions") or {})
    if refused:
        errors.append(
            "AirflowConfigurationOptions may not set "
            f"{', '.join(sorted(refused))}: the service manages these."
        )
    if errors:
        raise ValidationException(" ".join(errors))


def check_tags(tags: Mapping[str, str]) -> None:
    reserved = [k for k in tags if k.lower().startswith("aws:")]
    if reserved:
        raise ValidationException(
            f"Tag keys starting with 'aws:' are reserved for AWS use: {', '.join(reserved)}."
        )


def default_window(name: str) -> str:
    """A stable weekly window per environment, spread over the week as MWAA does."""
    digest = uuid.uuid5(uuid.NAMESPACE_URL, name).int
    return f"{DAYS[digest % 7]}:{(digest // 7) % 24:02d}:{('00', '30')[(digest // 168) % 2]}"
