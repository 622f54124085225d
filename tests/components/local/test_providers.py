"""The local backend's dynamic providers, run directly against real processes on loopback.

The providers are plain Python, so these tests call create/read/update/diff/delete as the
engine would and look at what really happened: processes, ports, files.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import urllib.request
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from serveform.components.local import _daemon, _directory, _replica, _token
from serveform.components.local._process import ProcessRef, ProcessStartError, port_accepts, wait_until

ROOT = Path(__file__).resolve().parents[3]
ENVSERVER = Path(__file__).resolve().parent / "envserver.py"
SECRET = "s3cret-value-never-logged"


def _get_json(address: str, path: str = "/") -> dict:
    with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as response:
        return json.loads(response.read())


def _replica_props(tmp_path: Path, **overrides) -> dict:
    props = {
        "provider_version": _replica.PROVIDER_VERSION,
        "service": "envsvc",
        "replica": 0,
        "project_dir": str(tmp_path),
        "working_dir": None,
        "log_path": str(tmp_path / "state" / "replicas" / "envsvc-0.log"),
        "setup": ["echo setting up"],
        # The service port is written out as a number: the provider swaps in the replica's own.
        "commands": [f"{sys.executable} {ENVSERVER} --port 8000"],
        "env": {"GREETING": "hello"},
        "secret_env": {"API_KEY": SECRET},
        "container_port": 8000,
        "gpus_num": 0,
        "ready_timeout_seconds": 20,
        "cleanup_root": str(tmp_path / "state"),
        "__provider": "serialized-provider",
    }
    props.update(overrides)
    return props


@pytest.fixture
def replicas():
    """Creates replicas and deletes whatever a test left running."""
    provider = _replica.ReplicaProvider()
    created: list[dict] = []

    def create(props: dict) -> tuple[str, dict]:
        result = provider.create(props)
        created.append(result.outs)
        return result.id, result.outs

    yield provider, create
    for outs in created:
        provider.delete("", outs)


def test_substitute_port_replaces_only_the_port_as_a_number_of_its_own():
    assert _replica.substitute_port("python -m http.server 8000", 8000, 41000) == "python -m http.server 41000"
    assert _replica.substitute_port("serve --port=8000 --host 0.0.0.0:8000", 8000, 5) == "serve --port=5 --host 0.0.0.0:5"
    for unchanged in ("sleep 18000", "x 8000.5", "v8000", "8000ms", "80001"):
        assert _replica.substitute_port(unchanged, 8000, 5) == unchanged


@given(
    words=st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-=:./", min_size=1, max_size=12), max_size=8),
    container_port=st.integers(1, 65535),
    port=st.integers(1024, 65535),
)
def test_substitute_port_touches_only_whole_port_numbers(words, container_port, port):
    command = " ".join(words)
    result = _replica.substitute_port(command, container_port, port)
    if str(container_port) not in command:
        assert result == command
    # Every standalone occurrence (a word of its own or after `=` / `:`) is replaced.
    spaced = f"serve --port {container_port} --bind 0.0.0.0:{container_port}"
    assert _replica.substitute_port(spaced, container_port, port) == f"serve --port {port} --bind 0.0.0.0:{port}"


def test_create_runs_setup_then_commands_with_env_port_and_identity(tmp_path, replicas):
    provider, create = replicas
    id_, outs = create(_replica_props(tmp_path))
    assert outs["address"] == f"127.0.0.1:{outs['port']}" and outs["port"] != 8000
    names = "GREETING,API_KEY,PORT,HOST,DSTACK_RUN_NAME,DSTACK_GPUS_NUM,DSTACK_REPLICA_NUM,SERVEFORM_REPLICA_ID,PULUMI_CONFIG_PASSPHRASE"
    seen = _get_json(outs["address"], f"/?names={names}")
    assert seen["env"] == {
        "GREETING": "hello",
        "API_KEY": SECRET,
        "PORT": str(outs["port"]),
        "HOST": "127.0.0.1",
        "DSTACK_RUN_NAME": "envsvc",
        "DSTACK_GPUS_NUM": "0",
        "DSTACK_REPLICA_NUM": "0",
        "SERVEFORM_REPLICA_ID": "envsvc-0",
        "PULUMI_CONFIG_PASSPHRASE": None,  # the engine's environment does not leak into replicas
    }
    assert seen["cwd"] == str(tmp_path)
    log = Path(outs["log_path"]).read_text()
    assert log.startswith("setting up\n") and "envserver listening" in log
    # Detached: a session of its own, so the engine's process-group kill does not reach it.
    assert os.getsid(outs["pid"]) == outs["pid"] and os.getpgid(outs["pid"]) == outs["pid"]
    assert provider.read(id_, outs).id == id_


def test_two_replicas_get_distinct_ports_and_serve_side_by_side(tmp_path, replicas):
    _, create = replicas
    _, first = create(_replica_props(tmp_path))
    _, second = create(_replica_props(tmp_path, replica=1, log_path=str(tmp_path / "state" / "replicas" / "envsvc-1.log")))
    assert first["port"] != second["port"]
    assert _get_json(first["address"])["pid"] != _get_json(second["address"])["pid"]


def test_read_drops_a_dead_replica_and_a_reused_pid(tmp_path, replicas):
    provider, create = replicas
    id_, outs = create(_replica_props(tmp_path))
    assert provider.read(id_, {**outs, "start_time": outs["start_time"] + 1}).id == ""  # same pid, another process
    os.killpg(outs["pid"], signal.SIGKILL)
    assert wait_until(lambda: not ProcessRef(outs["pid"], outs["start_time"]).alive(), 10)
    result = provider.read(id_, outs)
    assert result.id == "" and result.outs == {}


def test_delete_stops_the_whole_group_frees_the_port_and_removes_files(tmp_path):
    provider = _replica.ReplicaProvider()
    # The server runs as a grandchild (bash → subshell → python): only a group kill reaches it.
    props = _replica_props(tmp_path, commands=[f"( {sys.executable} {ENVSERVER} --port $PORT )"])
    outs = provider.create(props).outs
    child_pid = _get_json(outs["address"])["pid"]
    assert child_pid != outs["pid"]
    provider.delete("", outs)
    assert not ProcessRef(outs["pid"], outs["start_time"]).group_alive()
    child = ProcessRef.of(child_pid)
    assert child is None or not child.alive()  # gone, or a zombie waiting for init to reap it
    assert not port_accepts("127.0.0.1", outs["port"])
    assert not (tmp_path / "state").exists()  # log, replicas/ and the empty state dir are gone


def test_a_replica_that_dies_fails_create_with_its_log_tail_and_no_secret(tmp_path):
    provider = _replica.ReplicaProvider()
    props = _replica_props(tmp_path, commands=['echo "token is $API_KEY"', "echo boom >&2", "exit 3"])
    with pytest.raises(ProcessStartError) as info:
        provider.create(props)
    message = str(info.value)
    assert "replica envsvc-0 exited" in message and "boom" in message
    assert SECRET not in message and "token is [secret]" in message
    assert not (tmp_path / "state").exists()  # a failed create leaves no file


def test_a_replica_that_never_listens_times_out_and_is_stopped(tmp_path):
    provider = _replica.ReplicaProvider()
    marker = tmp_path / "pid"
    props = _replica_props(tmp_path, commands=[f"echo $$ > {marker}", "sleep 60"], ready_timeout_seconds=2)
    with pytest.raises(ProcessStartError, match=r"did not accept connections within 2s.*\$PORT"):
        provider.create(props)
    assert marker.exists()  # it ran, and then...
    pid = int(marker.read_text())
    assert ProcessRef.of(pid) is None or not ProcessRef.of(pid).alive()  # ...create stopped it before failing


def test_recreating_a_replica_keeps_the_previous_log(tmp_path, replicas):
    provider, create = replicas
    props = _replica_props(tmp_path)
    _, first = create(props)
    os.killpg(first["pid"], signal.SIGKILL)
    _, second = create(props)  # what `up` does after `refresh` dropped the dead one
    log = Path(second["log_path"])
    assert log.with_name("envsvc-0.previous.log").exists()
    assert first["log_inode"] != second["log_inode"]
    provider.delete("", first)  # the old process's delete leaves the new replica's log alone
    assert log.exists()


def test_diff_replaces_on_what_the_process_runs_and_updates_in_place_otherwise(tmp_path):
    provider = _replica.ReplicaProvider()
    old = _replica_props(tmp_path)
    assert provider.diff("x", old, dict(old)).changes is False
    env = provider.diff("x", old, {**old, "secret_env": {"API_KEY": "other"}})
    assert env.changes and env.replaces == ["secret_env"]
    timeout = provider.diff("x", old, {**old, "ready_timeout_seconds": 5, "provider_version": "2"})
    assert timeout.changes and timeout.replaces == []


def test_update_keeps_the_process(tmp_path, replicas):
    provider, create = replicas
    id_, outs = create(_replica_props(tmp_path))
    new = provider.update(id_, outs, {**_replica_props(tmp_path), "ready_timeout_seconds": 3}).outs
    assert (new["pid"], new["port"], new["ready_timeout_seconds"]) == (outs["pid"], outs["port"], 3)


def test_directory_survives_update_and_goes_with_delete(tmp_path):
    provider = _directory.DirectoryProvider()
    path = tmp_path / "state" / "volumes" / "data"
    props = {"provider_version": "1", "path": str(path), "cleanup_root": str(tmp_path / "state")}
    outs = provider.create(props).outs
    (path / "keep.txt").write_text("kept")
    outs = provider.update(path.name, outs, {**props, "provider_version": "2"}).outs
    assert (path / "keep.txt").read_text() == "kept"
    assert provider.read(str(path), outs).id == str(path)
    provider.delete(str(path), outs)
    assert not (tmp_path / "state").exists()
    assert provider.read(str(path), outs).id == ""


def test_token_is_random_and_its_id_reveals_nothing():
    provider = _token.TokenProvider()
    first = provider.create({"provider_version": "1"})
    second = provider.create({"provider_version": "1"})
    assert first.outs["value"] != second.outs["value"] and len(first.outs["value"]) >= 40
    assert first.outs["value"] not in first.id
    updated = provider.update(first.id, first.outs, {"provider_version": "2"}).outs
    assert updated["value"] == first.outs["value"]


def test_daemon_writes_files_waits_reloads_and_cleans_up(tmp_path):
    provider = _daemon.DaemonProvider()
    state = tmp_path / "state" / "gateway"
    port_file = "port.txt"
    from serveform.components.local._process import free_port

    port = free_port()
    props = {
        "provider_version": "1",
        "name": "echo-daemon",
        "argv": [_daemon.PYTHON, str(ENVSERVER), "--port", str(port)],
        "cwd": str(tmp_path),
        "env": {"MODE": "test"},
        "state_dir": str(state),
        "log_path": str(state / "daemon.log"),
        "files": {"config.json": '{"a": 1}'},
        "secret_files": {"secrets/token": "t0ken-secret-value"},
        "ready_address": f"127.0.0.1:{port}",
        "ready_timeout_seconds": 20,
        "reload_signal": None,
        "cleanup_root": str(tmp_path / "state"),
    }
    outs = provider.create(props).outs
    assert _get_json(props["ready_address"], "/?names=MODE")["env"] == {"MODE": "test"}
    assert (state / "config.json").stat().st_mode & 0o777 == 0o644
    assert (state / "secrets" / "token").stat().st_mode & 0o777 == 0o600
    assert state.stat().st_mode & 0o777 == 0o700
    # No reload signal: a changed file restarts the process, which then reads it.
    new = provider.update("d", outs, {**props, "files": {"config.json": '{"a": 2}'}}).outs
    assert new["pid"] != outs["pid"] and not ProcessRef(outs["pid"], outs["start_time"]).alive()
    assert (state / "config.json").read_text() == '{"a": 2}'
    assert provider.diff("d", new, {**props, "files": {"config.json": '{"a": 2}'}}).replaces == []
    assert provider.diff("d", new, {**props, "argv": ["x"]}).replaces == ["argv"]
    provider.delete("d", new)
    assert not ProcessRef(new["pid"], new["start_time"]).group_alive()
    assert not port_accepts("127.0.0.1", port)
    assert not (tmp_path / "state").exists()


def test_a_daemon_that_dies_fails_create_and_leaves_nothing(tmp_path):
    provider = _daemon.DaemonProvider()
    state = tmp_path / "state" / "gateway"
    props = {
        "provider_version": "1",
        "name": "broken-daemon",
        "argv": ["bash", "-c", "echo 'cannot start: t0ken-secret-value' >&2; exit 1"],
        "cwd": str(tmp_path),
        "state_dir": str(state),
        "log_path": str(state / "daemon.log"),
        "secret_files": {"secrets/token": "t0ken-secret-value"},
        "ready_address": "127.0.0.1:1",
        "ready_timeout_seconds": 10,
        "cleanup_root": str(tmp_path / "state"),
    }
    with pytest.raises(ProcessStartError, match="broken-daemon exited") as info:
        provider.create(props)
    assert "cannot start: [secret]" in str(info.value) and "t0ken-secret-value" not in str(info.value)
    assert not (tmp_path / "state").exists()


def test_remove_empty_dirs_stops_at_root_and_at_anything_left(tmp_path):
    from serveform.components.local._process import remove_empty_dirs

    root = tmp_path / ".serveform"
    (root / "state").mkdir(parents=True)  # e.g. the Pulumi file backend
    (root / "local" / "dev" / "replicas").mkdir(parents=True)
    remove_empty_dirs(root / "local" / "dev" / "replicas", root)
    assert not (root / "local").exists() and (root / "state").exists()
    (root / "state").rmdir()
    (root / "local" / "dev").mkdir(parents=True)
    remove_empty_dirs(root / "local" / "dev", root)
    assert not root.exists() and tmp_path.exists()  # never above the root
    outside = tmp_path / "elsewhere" / "x"
    outside.mkdir(parents=True)
    remove_empty_dirs(outside, tmp_path / "unrelated")
    assert outside.exists()


def test_daemon_port_placeholder_and_inherited_env(tmp_path, monkeypatch):
    provider = _daemon.DaemonProvider()
    monkeypatch.setenv("SERVEFORM_TEST_INHERITED", "from-the-deploying-shell")
    state = tmp_path / "state" / "scaler"
    props = {
        "provider_version": "1",
        "name": "port-daemon",
        "argv": [_daemon.PYTHON, str(ENVSERVER), "--port", _daemon.PORT],
        "cwd": str(tmp_path),
        "inherit_env": ["SERVEFORM_TEST_INHERITED"],
        "state_dir": str(state),
        "log_path": str(state / "daemon.log"),
        "ready_address": f"127.0.0.1:{_daemon.PORT}",
        "ready_timeout_seconds": 20,
        "cleanup_root": str(tmp_path / "state"),
    }
    outs = provider.create(props).outs
    try:
        assert isinstance(outs["port"], int) and "SERVEFORM_TEST_INHERITED" not in json.dumps(outs["env"] if "env" in outs else {})
        seen = _get_json(f"127.0.0.1:{outs['port']}", "/?names=SERVEFORM_TEST_INHERITED")
        assert seen["env"] == {"SERVEFORM_TEST_INHERITED": "from-the-deploying-shell"}
        assert "from-the-deploying-shell" not in json.dumps(outs)  # passed at start, not kept in the state
        # An update that changes no file leaves the process alone and keeps its port.
        new = provider.update("d", outs, {**props, "ready_timeout_seconds": 30}).outs
        assert (new["pid"], new["port"]) == (outs["pid"], outs["port"])
    finally:
        provider.delete("d", outs)
    assert not (tmp_path / "state").exists()


def test_a_replica_that_lost_its_port_to_another_process_gets_another_one(tmp_path, replicas):
    _, create = replicas
    marker = tmp_path / "first-attempt"
    commands = [
        f'if [ ! -e {marker} ]; then touch {marker}; echo "OSError: [Errno 98] Address already in use" >&2; exit 1; fi',
        f"{sys.executable} {ENVSERVER} --port $PORT",
    ]
    _, outs = create(_replica_props(tmp_path, commands=commands))
    assert marker.exists() and _get_json(outs["address"])["pid"]
    assert "Address already in use" in Path(outs["log_path"]).read_text()  # the first attempt stays in the log


def test_stop_kills_what_ignores_sigterm_after_the_grace(tmp_path):
    from serveform.components.local._process import spawn, stop

    ref = spawn(["bash", "-c", "trap '' TERM; sleep 60 & wait"], cwd=tmp_path, env={"PATH": os.environ["PATH"]}, log_path=tmp_path / "x.log")
    assert wait_until(lambda: len([p for p in os.listdir("/proc") if p.isdigit() and _pgid(int(p)) == ref.pid]) >= 2, 5)
    stop(ref, grace_seconds=0.3)
    assert not ref.group_alive()


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def test_a_process_an_interrupted_up_left_behind_is_stopped_not_duplicated(tmp_path, replicas):
    provider, create = replicas
    props = _replica_props(tmp_path)
    # An `up` started this replica, then was killed before the engine recorded it: the state never
    # heard of `orphan`, so no diff ever confirms it.
    _, orphan = create(props)
    orphan_ref = ProcessRef(orphan["pid"], orphan["start_time"])
    assert orphan_ref.alive()
    # The next `up` creates the same replica again: the orphan goes, one process serves.
    _, tracked = create(props)
    assert not orphan_ref.alive()
    assert ProcessRef(tracked["pid"], tracked["start_time"]).alive()
    assert port_accepts("127.0.0.1", tracked["port"])


def test_a_confirmed_replica_survives_the_create_of_its_replacement(tmp_path, replicas):
    provider, create = replicas
    props = _replica_props(tmp_path)
    _, old = create(props)
    # Every `up` diffs the tracked replica first; a replacement is created before the old one goes.
    provider.diff("id", old, _replica_props(tmp_path, commands=props["commands"] + ["true"]))
    _, new = create(_replica_props(tmp_path, commands=props["commands"]))
    assert ProcessRef(old["pid"], old["start_time"]).alive()
    assert ProcessRef(new["pid"], new["start_time"]).alive()
    provider.delete("", old)
    provider.delete("", new)
    claims = Path(new["log_path"]).with_name("envsvc-0.claims.json")
    assert not claims.exists()


def test_a_replica_whose_command_dies_is_restarted_on_its_address_and_counted(tmp_path, replicas):
    provider, create = replicas
    id_, outs = create(_replica_props(tmp_path))
    first = _get_json(outs["address"])["pid"]
    record = _replica.read_restarts(outs["log_path"])
    assert record["supervisor_pid"] == outs["pid"] and record["child_pid"] == first and record["restarts"] == 0
    os.kill(first, signal.SIGKILL)  # the server crashes; nobody runs refresh or up
    assert wait_until(lambda: (_replica.read_restarts(outs["log_path"]) or {}).get("restarts") == 1, 15)
    assert wait_until(lambda: port_accepts("127.0.0.1", outs["port"]), 15)
    second = _get_json(outs["address"])["pid"]
    assert second != first
    record = _replica.read_restarts(outs["log_path"])
    assert record["last_exit"] == -signal.SIGKILL and record["child_pid"] == second
    # Same replica for Pulumi: its supervisor still runs, so refresh keeps it.
    assert provider.read(id_, outs).id == id_
    log = Path(outs["log_path"]).read_text()
    assert "exited with signal 9" in log and "restart 1: started again" in log
    provider.delete(id_, outs)
    assert not _replica.restarts_path(outs["log_path"]).exists()
    assert not ProcessRef(outs["pid"], outs["start_time"]).group_alive()


def test_restarts_back_off_exponentially(tmp_path, replicas):
    # A command that listens, then exits every time it is started again: the delays double.
    marker = tmp_path / "starts"
    script = f"echo x >> {marker}; if [ $(wc -l < {marker}) -gt 1 ]; then exit 3; fi; exec {sys.executable} {ENVSERVER} --port $PORT"
    provider, create = replicas
    _, outs = create(_replica_props(tmp_path, commands=[script]))
    os.kill(_get_json(outs["address"])["pid"], signal.SIGTERM)
    # Restart 1 after 1 s, restart 2 after 2 s more, restart 3 after 4 s more.
    assert wait_until(lambda: (_replica.read_restarts(outs["log_path"]) or {}).get("restarts", 0) >= 3, 20)
    log = Path(outs["log_path"]).read_text()
    delays = [line.rsplit("restarting in ", 1)[1] for line in log.splitlines() if "restarting in " in line]
    assert delays[:3] == ["1 s", "2 s", "4 s"], log
    assert _replica.read_restarts(outs["log_path"])["last_exit"] == 3


def test_a_supervisor_killed_outright_leaves_nothing_for_the_next_create(tmp_path, replicas):
    provider, create = replicas
    props = _replica_props(tmp_path, commands=[f"( {sys.executable} {ENVSERVER} --port 8000 )"])
    id_, outs = create(props)
    provider.diff(id_, outs, props)  # tracked: confirmed in the slot's claims
    server = _get_json(outs["address"])["pid"]
    os.kill(outs["pid"], signal.SIGKILL)  # the supervisor alone; the server is a grandchild
    assert wait_until(lambda: not ProcessRef(outs["pid"], outs["start_time"]).alive(), 10)
    assert provider.read(id_, outs).id == ""  # refresh notices, as before
    _, new = create(props)  # the next `up`: the old group's leftovers go, the new replica serves
    ref = ProcessRef.of(server)
    assert ref is None or not ref.alive()
    assert _get_json(new["address"])["pid"] != server
