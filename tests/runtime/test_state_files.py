"""State files of an environment: secrets are created once and never silently replaced,
state files are read strictly, plugins.zip is bounded, progress lines are best effort,
and a stopping control plane interrupts a step instead of failing it."""

from __future__ import annotations

import io
import json
import threading
import zipfile
from pathlib import Path
from typing import Any

import pytest
from runtime_support import make_spec

from openmwaa.runtime.base import Interrupted, RuntimeFailure
from openmwaa.runtime.local import LocalBackend, prepare, state
from openmwaa.runtime.local.layout import Layout


@pytest.fixture()
def layout(tmp_path: Path) -> Layout:
    return Layout.of(tmp_path, "env")


def test_secrets_are_created_once(layout: Layout) -> None:
    first = state.load_secrets(layout)
    assert state.load_secrets(layout) == first
    assert layout.secrets.stat().st_mode & 0o777 == 0o600


def test_unreadable_secrets_fail_naming_the_file_and_stay(layout: Layout) -> None:
    state.load_secrets(layout)
    raw = layout.secrets.read_bytes()
    layout.secrets.write_bytes(raw[: len(raw) // 2])  # truncated
    with pytest.raises(RuntimeFailure) as failure:
        state.load_secrets(layout)
    assert failure.value.code == state.UNREADABLE
    assert str(layout.secrets) in str(failure.value)
    assert layout.secrets.read_bytes() == raw[: len(raw) // 2]


def test_a_wrong_field_type_fails_naming_the_file(layout: Layout) -> None:
    state.load_secrets(layout)
    data = json.loads(layout.secrets.read_text())
    data["fernet_key"] = 42
    layout.secrets.write_text(json.dumps(data))
    with pytest.raises(RuntimeFailure, match="fernet_key") as failure:
        state.load_secrets(layout)
    assert str(layout.secrets) in str(failure.value)


def test_a_missing_field_is_added_alone(layout: Layout) -> None:
    before = state.load_secrets(layout)
    data = json.loads(layout.secrets.read_text())
    del data["api_secret_key"]  # as if a later release added it
    del data["passwords"]["viewer"]
    layout.secrets.write_text(json.dumps(data))
    after = state.load_secrets(layout)
    assert after.api_secret_key and after.api_secret_key != before.api_secret_key
    assert after.passwords["viewer"] != before.passwords["viewer"]
    assert (after.jwt_secret, after.fernet_key, after.db_password) == (
        before.jwt_secret,
        before.fernet_key,
        before.db_password,
    )
    assert {u: p for u, p in after.passwords.items() if u != "viewer"} == {
        u: p for u, p in before.passwords.items() if u != "viewer"
    }
    assert state.load_secrets(layout) == after  # written down


def test_state_files_are_read_strictly(layout: Layout) -> None:
    state.save_state(layout, migrated="3.0.6")
    assert state.load_state(layout)["migrated"] == "3.0.6"
    layout.state.write_text('{"migrated": ')
    with pytest.raises(RuntimeFailure, match=str(layout.state)):
        state.save_state(layout, migrated="3.3.2")
    assert layout.state.read_text() == '{"migrated": '
    layout.exports.write_text("[]")
    with pytest.raises(RuntimeFailure, match=str(layout.exports)):
        state.load_exports(layout)


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buf.getvalue()


def test_plugins_zip_limits(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    prepare.check_plugins(_zip({"a/plugin.py": b"x = 1\n"}))
    monkeypatch.setattr(prepare, "PLUGINS_MAX_BYTES", 1 << 20)
    bomb = _zip({"zeros.bin": bytes(2 << 20)})  # a few KB that unpack to 2 MiB
    assert len(bomb) < 64 << 10
    with pytest.raises(RuntimeFailure, match="at most 1048576") as failure:
        prepare.check_plugins(bomb)
    assert failure.value.code == "INCORRECT_PLUGINS"
    target = tmp_path / "plugins"
    with pytest.raises(RuntimeFailure):
        prepare.unpack_plugins(target, bomb)
    assert not target.exists() and not (tmp_path / ".plugins.tmp").exists()
    monkeypatch.setattr(prepare, "PLUGINS_MAX_MEMBERS", 50)
    with pytest.raises(RuntimeFailure, match="at most 50 are allowed"):
        prepare.check_plugins(_zip({f"m{i}.py": b"" for i in range(51)}))
    for unsafe in ("../evil.py", "/etc/evil.py", "a/../../evil.py"):
        with pytest.raises(RuntimeFailure, match="unsafe path"):
            prepare.check_plugins(_zip({unsafe: b""}))


def test_plugins_zip_real_limits_are_a_gibibyte_and_100000_members() -> None:
    assert prepare.PLUGINS_MAX_BYTES == 1 << 30
    assert prepare.PLUGINS_MAX_MEMBERS == 100_000


@pytest.fixture()
def bare_backend(tmp_path: Path) -> Any:
    (tmp_path / "buckets" / "tests" / "dags").mkdir(parents=True)
    backend = LocalBackend(tmp_path)
    yield backend
    backend.shutdown()


def test_a_killed_install_during_shutdown_is_interrupted(
    bare_backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uv killed by shutdown fails ensure_install; the step is Interrupted, not failed."""
    entered = threading.Event()

    def killed_install(*_args: Any, **_kwargs: Any) -> Path:
        entered.set()
        bare_backend.ctx.stopping.wait(30)
        raise RuntimeFailure("INSTALL_FAILED", "uv exited with signal 9")

    monkeypatch.setattr(prepare, "ensure_install", killed_install)
    errors: list[BaseException] = []

    def provision() -> None:
        try:
            bare_backend.provision(make_spec("stopped"), lambda _line: None)
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=provision)
    worker.start()
    assert entered.wait(10)
    bare_backend.shutdown()
    worker.join(10)
    assert len(errors) == 1 and isinstance(errors[0], Interrupted), errors
    with pytest.raises(Interrupted):  # and no new step starts
        bare_backend.provision(make_spec("later"), lambda _line: None)


def test_progress_lines_interrupt_a_step_once_stopping(
    bare_backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    def chatty_install(
        _data_dir: Path, _version: str, _reqs: Any, progress: Any, **_kwargs: Any
    ) -> Path:
        for n in range(300):
            progress(f"installing, step {n}")
            if n == 3:
                bare_backend.ctx.stopping.set()
        raise AssertionError("the install was not interrupted")

    monkeypatch.setattr(prepare, "ensure_install", chatty_install)
    with pytest.raises(Interrupted):
        bare_backend.provision(make_spec("chatty"), lambda _line: None)


def test_provision_refuses_a_plugins_zip_bomb(
    bare_backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused before any install or unpacking, with MWAA's INCORRECT_PLUGINS."""
    monkeypatch.setattr(prepare, "PLUGINS_MAX_BYTES", 1 << 20)
    bucket = bare_backend.data_dir / "buckets" / "tests"
    (bucket / "plugins.zip").write_bytes(_zip({"zeros.bin": bytes(2 << 20)}))
    with pytest.raises(RuntimeFailure) as failure:
        bare_backend.provision(make_spec("bomb", plugins_s3_path="plugins.zip"), print)
    assert failure.value.code == "INCORRECT_PLUGINS"
    assert "at most 1048576 (1 MiB)" in str(failure.value)
    assert not any(bare_backend.layout("bomb").plugins.iterdir())
