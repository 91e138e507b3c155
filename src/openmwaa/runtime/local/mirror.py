"""The DAG mirror of each environment: bucket -> ``airflow/dags``, every few seconds."""

from __future__ import annotations

from openmwaa.buckets.sync import DagMirror
from openmwaa.runtime.base import EnvironmentSpec
from openmwaa.runtime.local.context import Context


def mirror_for(ctx: Context, spec: EnvironmentSpec) -> DagMirror:
    """The environment's mirror for the spec's bucket and path, read with its execution
    role (replacing one for another bucket, path or role)."""
    env = ctx.env(spec.name)
    mirror = env.mirror
    store = ctx.store_for(spec)  # the same object while the role stays
    if (
        mirror is None
        or mirror.store is not store
        or (mirror.bucket, mirror.prefix.rstrip("/"))
        != (spec.source_bucket, spec.dag_s3_path.strip("/"))
    ):
        if mirror is not None:
            mirror.stop()
        layout = ctx.layout(spec.name)
        mirror = DagMirror(
            store,
            spec.source_bucket,
            spec.dag_s3_path,
            layout.dags,
            layout.dags_manifest,
            shared=ctx.tenant(spec.name).isolated,
        )
        env.mirror = mirror
    return mirror


def is_running(mirror: DagMirror | None) -> bool:
    """A started mirror whose thread is alive."""
    if mirror is None:
        return False
    alive = getattr(mirror, "alive", None)
    if alive is None:  # a DagMirror without the property: look at its thread
        thread = getattr(mirror, "_thread", None)
        alive = thread is not None and thread.is_alive()
    return bool(alive)


def ensure_mirror(ctx: Context, spec: EnvironmentSpec) -> None:
    """Make the mirror run: after a restart of the control plane, after an update,
    and after its thread stopped."""
    mirror = mirror_for(ctx, spec)
    mirror.start()
    if not is_running(mirror):
        # One that cannot start again (a stopped loop): a new mirror takes over.
        mirror.stop()
        ctx.env(spec.name).mirror = None
        mirror_for(ctx, spec).start()


def stop_mirror(ctx: Context, name: str) -> None:
    env = ctx.known_env(name)
    if env and env.mirror:
        env.mirror.stop()
        env.mirror = None
