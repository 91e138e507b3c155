"""Environments as MWAA defines them: defaults, rules beyond the model, and their records.

API calls only record what the user wants and return at once; the reconciler
moves the environment. Everything that could make a request fail is checked
here, before anything is written, so a refused request leaves nothing behind.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from openmwaa.runtime.base import EnvironmentSpec
from openmwaa.service.classes import CLASSES, DEFAULT_CLASS
from openmwaa.service.errors import ResourceNotFoundException, ValidationException
from openmwaa.service.request_rules import check_request, check_tags, default_window
from openmwaa.store.db import Store
from openmwaa.store.models import EnvironmentRow
from openmwaa.store.status import DELETABLE, UPDATABLE, Status

LOG_MODULES = ("DagProcessingLogs", "SchedulerLogs", "WebserverLogs", "WorkerLogs", "TaskLogs")
DEFAULT_LOGGING = {
    module: {"Enabled": module == "TaskLogs", "LogLevel": "INFO"} for module in LOG_MODULES
}
DEFAULT_PAGE_SIZE = 25
_PLAIN_FIELDS = (
    "ExecutionRoleArn",
    "SourceBucketArn",
    "DagS3Path",
    "PluginsS3Path",
    "PluginsS3ObjectVersion",
    "RequirementsS3Path",
    "RequirementsS3ObjectVersion",
    "StartupScriptS3Path",
    "StartupScriptS3ObjectVersion",
    "AirflowConfigurationOptions",
    "EnvironmentClass",
    "MaxWorkers",
    "MinWorkers",
    "KmsKey",
    "AirflowVersion",
    "WeeklyMaintenanceWindowStart",
    "WebserverAccessMode",
    "Schedulers",
    "EndpointManagement",
    "MinWebservers",
    "MaxWebservers",
)
"""Fields copied as they are from the request into the stored configuration."""


def utc(value: datetime) -> datetime:
    """SQLite hands datetimes back naive; they were written in UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class Environments:
    def __init__(
        self,
        store: Store,
        *,
        region: str,
        account_id: str,
        supported_versions: Sequence[str],
        refused_config_keys: Callable[[Mapping[str, str]], list[str]],
    ) -> None:
        self._store = store
        self.region = region
        self.account_id = account_id
        self._versions = list(supported_versions)
        self._refused_config_keys = refused_config_keys
        self._wake: Callable[[], None] = lambda: None
        self._endpoint_url: Callable[[str, str], str | None] = lambda _name, _mode: None

    def set_endpoint_url(self, endpoint_url: Callable[[str, str], str | None]) -> None:
        """(name, WebserverAccessMode) -> the environment endpoint's URL (WebserverUrl)."""
        self._endpoint_url = endpoint_url

    def set_wake(self, wake: Callable[[], None]) -> None:
        """Called after every accepted change, so the reconciler starts on it at once."""
        self._wake = wake

    # -- names and ARNs -------------------------------------------------------

    def arn(self, name: str) -> str:
        return f"arn:aws:airflow:{self.region}:{self.account_id}:environment/{name}"

    def role_arn(self, name: str, role: str) -> str:
        return f"arn:aws:airflow:{self.region}:{self.account_id}:role/{name}/{role}"

    def row(self, name: str) -> EnvironmentRow:
        row = self._store.get_environment(name)
        if row is None:
            raise ResourceNotFoundException(f"Environment {name} does not exist.")
        return row

    def _row_by_arn(self, arn: str) -> EnvironmentRow:
        row = self._store.get_environment_by_arn(arn)
        if row is None:
            raise ResourceNotFoundException(f"Resource {arn} does not exist.")
        return row

    # -- operations -----------------------------------------------------------

    def create(self, name: str, request: Mapping[str, Any]) -> str:
        spec: dict[str, Any] = {
            "EnvironmentClass": DEFAULT_CLASS,
            "MinWorkers": 1,
            "MaxWorkers": 10,
            "Schedulers": 2,
            "MinWebservers": 2,
            "MaxWebservers": 2,
            "WebserverAccessMode": "PRIVATE_ONLY",
            "EndpointManagement": "SERVICE",
            "AirflowVersion": self._versions[0],
            "AirflowConfigurationOptions": {},
            "LoggingConfiguration": copy.deepcopy(DEFAULT_LOGGING),
            "WeeklyMaintenanceWindowStart": default_window(name),
        }
        if request.get("EnvironmentClass") == "mw1.micro":
            spec.update(MaxWorkers=1, Schedulers=1, MinWebservers=1, MaxWebservers=1)
        spec.update({k: request[k] for k in _PLAIN_FIELDS if k in request})
        spec["NetworkConfiguration"] = dict(request["NetworkConfiguration"])
        _merge_logging(spec, request.get("LoggingConfiguration"))
        spec["CeleryExecutorQueue"] = (
            f"arn:aws:sqs:{self.region}:{self.account_id}:airflow-celery-{uuid.uuid4()}"
        )
        tags = dict(request.get("Tags") or {})
        check_request(spec, self._versions, self._refused_config_keys)
        check_tags(tags)
        row = EnvironmentRow(
            name=name,
            arn=self.arn(name),
            status=Status.CREATING,
            created_at=datetime.now(UTC),
            spec=spec,
            applied=None,
            tags=tags,
            last_update=None,
            webserver_url=None,
            detail=None,
            generation=1,
        )
        if not self._store.insert_environment(row):
            raise ValidationException(
                f"An environment named {name} already exists. Choose another name."
            )
        self._wake()
        return row.arn

    def update(self, name: str, request: Mapping[str, Any]) -> str:
        row = self.row(name)
        _check_can(row, "updated", UPDATABLE)
        spec = copy.deepcopy(row.spec)
        version = request.get("AirflowVersion")
        if version is not None and version != spec["AirflowVersion"]:
            raise ValidationException(
                f"Changing AirflowVersion from {spec['AirflowVersion']} to {version} is not "
                "supported yet: create a new environment with that version instead."
            )
        spec.update({k: request[k] for k in _PLAIN_FIELDS if k in request})
        if "NetworkConfiguration" in request:
            spec["NetworkConfiguration"]["SecurityGroupIds"] = list(
                request["NetworkConfiguration"]["SecurityGroupIds"]
            )
        _merge_logging(spec, request.get("LoggingConfiguration"))
        check_request(spec, self._versions, self._refused_config_keys)
        last_update: dict[str, Any] = {
            "Status": "PENDING",
            "CreatedAt": datetime.now(UTC).timestamp(),
            "Source": "UpdateEnvironment",
        }
        if "WorkerReplacementStrategy" in request:
            last_update["WorkerReplacementStrategy"] = request["WorkerReplacementStrategy"]
        changed = self._store.update_environment(
            name,
            expect_generation=row.generation,
            status=Status.UPDATING,
            spec=spec,
            last_update=last_update,
            generation=row.generation + 1,
        )
        if not changed:
            now = self._store.get_environment(name)
            if now is None:
                raise ResourceNotFoundException(f"Environment {name} does not exist.")
            _check_can(now, "updated", UPDATABLE)
            raise ValidationException(
                f"Environment {name} changed while this update was checked. Try again."
            )
        self._wake()
        return row.arn

    def delete(self, name: str) -> None:
        row = self.row(name)
        _check_can(row, "deleted", DELETABLE)
        if not self._store.update_environment(
            name,
            expect_generation=row.generation,
            status=Status.DELETING,
            generation=row.generation + 1,
        ):
            # Another request changed it since the read: answer for what it is now.
            now = self._store.get_environment(name)
            if now is None:
                raise ResourceNotFoundException(f"Environment {name} does not exist.")
            _check_can(now, "deleted", DELETABLE)
            raise ValidationException(f"Environment {name} changed meanwhile. Try again.")
        self._wake()

    def get(self, name: str) -> dict[str, Any]:
        return self.describe(self.row(name))

    def list(self, max_results: int | None, next_token: str | None) -> dict[str, Any]:
        limit = max_results or DEFAULT_PAGE_SIZE
        after = _decode_token(next_token) if next_token else None
        names = self._store.list_environment_names(after, limit + 1)
        result: dict[str, Any] = {"Environments": names[:limit]}
        if len(names) > limit:
            result["NextToken"] = _encode_token(names[limit - 1])
        return result

    def tag(self, arn: str, tags: Mapping[str, str]) -> None:
        check_tags(tags)

        def merge(current: dict[str, str]) -> dict[str, str]:
            merged = {**current, **tags}
            if len(merged) > 50:
                raise ValidationException(
                    f"An environment can have at most 50 tags; this would make {len(merged)}."
                )
            return merged

        if not self._store.change_tags(arn, merge):
            raise ResourceNotFoundException(f"Resource {arn} does not exist.")

    def untag(self, arn: str, keys: Sequence[str]) -> None:
        removed = set(keys)
        if not self._store.change_tags(
            arn, lambda current: {k: v for k, v in current.items() if k not in removed}
        ):
            raise ResourceNotFoundException(f"Resource {arn} does not exist.")

    def tags(self, arn: str) -> dict[str, str]:
        return dict(self._row_by_arn(arn).tags)

    def check_exists(self, name: str) -> None:
        """PublishMetrics' only rule: the environment must exist (as a ValidationException)."""
        if self._store.get_environment(name) is None:
            raise ValidationException(f"Environment {name} does not exist.")

    # -- views ----------------------------------------------------------------

    def describe(self, row: EnvironmentRow) -> dict[str, Any]:
        """The Environment structure GetEnvironment returns."""
        spec = row.spec
        env: dict[str, Any] = {
            "Name": row.name,
            "Status": row.status,
            "Arn": row.arn,
            "CreatedAt": utc(row.created_at),
            "ServiceRoleArn": (
                f"arn:aws:iam::{self.account_id}:role/aws-service-role/"
                "airflow.amazonaws.com/AWSServiceRoleForAmazonMWAA"
            ),
            "Tags": dict(row.tags),
        }
        env.update({k: spec[k] for k in _PLAIN_FIELDS if spec.get(k) is not None})
        env["NetworkConfiguration"] = spec["NetworkConfiguration"]
        env["CeleryExecutorQueue"] = spec["CeleryExecutorQueue"]
        # No CloudWatchLogGroupArn: nothing collects the logs into a group yet, so each module
        # is shown as the user set it (Enabled, LogLevel), without a log group to look in.
        env["LoggingConfiguration"] = {
            module: {"Enabled": settings["Enabled"], "LogLevel": settings["LogLevel"]}
            for module, settings in spec["LoggingConfiguration"].items()
        }
        # The endpoint users reach the UI through (Airflow's own port stays on loopback),
        # once the environment has run.
        url = row.webserver_url
        if row.applied is not None:
            url = self._endpoint_url(row.name, row.applied["WebserverAccessMode"]) or url
        if url:
            env["WebserverUrl"] = url
        if row.last_update:
            last = dict(row.last_update)
            last["CreatedAt"] = datetime.fromtimestamp(last["CreatedAt"], UTC)
            env["LastUpdate"] = last
        return env

    def spec_of(self, name: str, config: Mapping[str, Any]) -> EnvironmentSpec:
        """What a backend needs, from a stored configuration."""
        env_class = CLASSES[config["EnvironmentClass"]]
        logging = config["LoggingConfiguration"]
        return EnvironmentSpec(
            name=name,
            arn=self.arn(name),
            airflow_version=config["AirflowVersion"],
            environment_class=env_class.name,
            tasks_per_worker=env_class.tasks_per_worker,
            min_workers=config["MinWorkers"],
            max_workers=config["MaxWorkers"],
            schedulers=config["Schedulers"],
            min_webservers=config["MinWebservers"],
            max_webservers=config["MaxWebservers"],
            source_bucket=config["SourceBucketArn"].rsplit(":", 1)[-1],
            dag_s3_path=config["DagS3Path"],
            plugins_s3_path=config.get("PluginsS3Path"),
            plugins_s3_object_version=config.get("PluginsS3ObjectVersion"),
            requirements_s3_path=config.get("RequirementsS3Path"),
            requirements_s3_object_version=config.get("RequirementsS3ObjectVersion"),
            startup_script_s3_path=config.get("StartupScriptS3Path"),
            startup_script_s3_object_version=config.get("StartupScriptS3ObjectVersion"),
            airflow_configuration_options=dict(config.get("AirflowConfigurationOptions") or {}),
            webserver_access_mode=config["WebserverAccessMode"],
            logging=logging,
            celery_queue=config["CeleryExecutorQueue"].rsplit(":", 1)[-1],
            endpoint_url=self._endpoint_url(name, config["WebserverAccessMode"]),
            execution_role_arn=config.get("ExecutionRoleArn"),
        )


def _check_can(row: EnvironmentRow, done: str, statuses: frozenset[Status]) -> None:
    """Answer at once, as MWAA does, when the environment cannot take the change now."""
    if row.status in statuses:
        return
    if row.status == Status.DELETING:
        why = "it is being deleted"
    elif row.status == Status.CREATE_FAILED:
        why = "its creation failed; delete it and create it again"
    else:
        why = "wait for the current change to finish"
    when = f" It can be {done} when {', '.join(sorted(statuses))}." if len(statuses) < 5 else ""
    raise ValidationException(
        f"Environment {row.name} is {row.status} and cannot be {done} now: {why}.{when}"
    )


def _merge_logging(spec: dict[str, Any], request: Mapping[str, Any] | None) -> None:
    for module, settings in (request or {}).items():
        spec["LoggingConfiguration"][module] = {
            "Enabled": settings["Enabled"],
            "LogLevel": settings["LogLevel"],
        }


def _encode_token(after: str) -> str:
    raw = json.dumps({"v": 1, "after": after}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str) -> str:
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        after = data["after"]
        if data.get("v") != 1 or not isinstance(after, str):
            raise ValueError(token)
        return after
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
        raise ValidationException(
            "NextToken is not valid: pass the NextToken a previous ListEnvironments returned."
        ) from None
