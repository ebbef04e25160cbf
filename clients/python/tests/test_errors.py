"""Configuration, typed errors, authentication, 429 handling and retries."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

import airlock
from airlock import RetryPolicy, Sandbox, _core


def test_url_and_key_from_the_environment(server, monkeypatch):
    monkeypatch.setenv("AIRLOCK_URL", server.url + "/")
    assert airlock.run("1 + 1").text == "2"
    with Sandbox.create() as sbx:
        assert sbx.client.url == server.url
    monkeypatch.delenv("AIRLOCK_URL")
    assert airlock.Client().url == airlock.DEFAULT_URL == "http://127.0.0.1:8080"
    with pytest.raises(ValueError, match="scheme"):
        airlock.Client("localhost:8080")


def test_invalid_requests_name_what_is_wrong(client):
    with pytest.raises(airlock.InvalidRequest, match="memory_bytes") as e:
        client.create_sandbox(limits={"memory_bytes": 1024})
    assert e.value.status == 400 and e.value.code == "invalid_request"
    with pytest.raises(airlock.InvalidRequest, match="memry_bytes"):
        client.create_sandbox(limits={"memry_bytes": 1 << 30})
    with pytest.raises(airlock.InvalidRequest):
        client.run("1", backend="nonsense")
    with pytest.raises(airlock.InvalidRequest, match="language"):
        client.run("1", language="cobol")
    with pytest.raises(ValueError, match="no sandbox images"):
        client.create_sandbox(template="code-interpreter-v1")
    with pytest.raises(ValueError, match="seconds"):
        client.run("1", timeout=-1)
    with client.create_sandbox() as sbx:
        with pytest.raises(airlock.InvalidRequest, match="memory_bytes"):
            sbx.run_code("1", limits={"memory_bytes": 64 << 20})


def test_template_naming_a_backend_is_accepted(client):
    with client.create_sandbox(template="process") as sbx:
        assert sbx.info.backend == "process"


def test_connection_refused_is_connection_failed():
    port = _core_free_port()
    t = time.monotonic()
    with pytest.raises(airlock.ConnectionFailed, match="cannot connect") as e:
        airlock.run("1", url=f"http://127.0.0.1:{port}")
    assert isinstance(e.value, airlock.ServerError)
    assert time.monotonic() - t < 10  # a few quick retries, then the error


def _core_free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_client_side_timeout_names_the_execution(client, monkeypatch):
    # The client waits for a run its time limit plus a margin; shrink the margin so
    # the wait ends before the run does.
    monkeypatch.setattr(_core, "EXECUTION_MARGIN_S", -1.0)
    with client.create_sandbox() as sbx:
        with pytest.raises(airlock.Timeout) as e:
            sbx.run_code("import time\nprint('x', flush=True)\ntime.sleep(2.5)", timeout=2.0)
        assert e.value.code == "request_timeout"
        assert e.value.execution_id and e.value.execution_id.startswith("exe_")
        assert e.value.execution_id in str(e.value)


def test_auth_required(auth_server):
    key_a, key_b = auth_server.keys
    with pytest.raises(airlock.AuthError) as e:
        airlock.run("1", url=auth_server.url)
    assert e.value.status == 401 and e.value.code == "unauthorized"
    assert "API key" in e.value.message
    with pytest.raises(airlock.AuthError, match="unknown or has been revoked"):
        airlock.run("1", url=auth_server.url, api_key="ak_" + "0" * 64)
    with pytest.raises(airlock.AuthError, match="ak_"):
        airlock.run("1", url=auth_server.url, api_key="sk-not-an-airlock-key")
    assert airlock.run("1 + 2", url=auth_server.url, api_key=key_a).text == "3"


def test_auth_key_from_env_and_sandboxes_are_per_key(auth_server, monkeypatch):
    key_a, key_b = auth_server.keys
    monkeypatch.setenv("AIRLOCK_API_KEY", key_a)
    with Sandbox.create(url=auth_server.url) as sbx:
        assert [s.id for s in Sandbox.list(url=auth_server.url)] == [sbx.id]
        # Another key sees nothing of it.
        assert Sandbox.list(url=auth_server.url, api_key=key_b) == []
        with pytest.raises(airlock.SandboxNotFound):
            Sandbox.connect(sbx.id, url=auth_server.url, api_key=key_b)


def test_429_is_retried_for_creates_until_a_slot_frees(tight_server):
    first = Sandbox.create(url=tight_server.url)
    timer = threading.Timer(1.5, first.kill)
    timer.start()
    try:
        t = time.monotonic()
        client = airlock.Client(tight_server.url, retry=RetryPolicy(budget_s=20))
        second = client.create_sandbox()
        waited = time.monotonic() - t
        assert waited >= 1.0, waited  # it was refused at first, then retried
        assert second.run_code("'ok'").text == "'ok'"
        second.kill()
        client.close()
    finally:
        timer.join()


def test_429_without_budget_raises_rate_limited_with_retry_after(tight_server):
    with Sandbox.create(url=tight_server.url):
        client = airlock.Client(tight_server.url, retry=RetryPolicy(budget_s=0))
        t = time.monotonic()
        with pytest.raises(airlock.RateLimited) as e:
            client.create_sandbox()
        assert time.monotonic() - t < 5
        assert e.value.status == 429 and e.value.code == "overloaded"
        assert e.value.retry_after is not None and e.value.retry_after >= 1
        client.close()


def test_429_for_a_run_is_retried_because_nothing_ran(tight_server):
    # max_running = 1: while a cell runs, a one-shot run is refused with 429 before
    # anything starts, so the client may send it again.
    with Sandbox.create(url=tight_server.url) as sbx:
        started = threading.Event()
        t = threading.Thread(
            target=lambda: sbx.run_code("import time\nprint(1, flush=True)\ntime.sleep(1.5)",
                                        on_stdout=lambda _: started.set())
        )
        t.start()
        assert started.wait(30)
        client = airlock.Client(tight_server.url, retry=RetryPolicy(budget_s=20))
        ex = client.run("print('ran once')")
        assert ex.stdout == "ran once\n"
        t.join()
        client.close()


def test_quota_exceeded_is_not_retried():
    s = _quota_server()
    try:
        with Sandbox.create(url=s.url):
            t = time.monotonic()
            with pytest.raises(airlock.RateLimited) as e:
                Sandbox.create(url=s.url)
            assert time.monotonic() - t < 2
            assert e.value.code == "quota_exceeded"
    finally:
        s.stop()


def _quota_server():
    from conftest import Server

    return Server("quota", {"per_key_max_sandboxes": 1})


# ---- the retry policy itself (no server) ----


def test_retry_policy_never_resends_a_run_that_may_have_started():
    p = RetryPolicy()
    req = httpx.Request("POST", "http://x")
    read_err = httpx.ReadError("reset", request=req)
    timeout = httpx.ReadTimeout("slow", request=req)
    assert p.delay("execute", 1, 0, exc=read_err) is None
    assert p.delay("execute", 1, 0, exc=timeout) is None
    assert p.delay("create", 1, 0, exc=read_err) is None
    assert p.delay("execute", 1, 0, status=502) is None
    assert p.delay("execute", 1, 0, status=500) is None
    # Refusals and failed connections are safe to resend.
    assert p.delay("execute", 1, 0, exc=httpx.ConnectError("refused", request=req)) is not None
    assert p.delay("execute", 1, 0, status=429, code="overloaded", retry_after=2) == pytest.approx(2, rel=0.11)
    # Idempotent requests are resent after a broken connection or a gateway error.
    assert p.delay("idempotent", 1, 0, exc=read_err) is not None
    assert p.delay("idempotent", 1, 0, status=502) is not None
    # Never a quota, never beyond the budget or the attempts.
    assert p.delay("create", 1, 0, status=429, code="quota_exceeded") is None
    assert p.delay("create", 1, 29.5, status=429, code="overloaded", retry_after=1) is None
    assert p.delay("idempotent", 4, 0, exc=read_err) is None
    assert p.delay("idempotent", 1, 0, status=409) is None
    # Nothing ran: an audit log that cannot be written, or the first request with the
    # same idempotency key still running, are worth waiting for.
    assert p.delay("execute", 1, 0, status=503, code="audit_unavailable", retry_after=1) is not None
    assert p.delay("execute", 1, 0, status=503, code="shutting_down") is None
    assert p.delay("idempotent", 1, 0, status=409, code="idempotency_in_progress", retry_after=1) is not None
    assert p.delay("idempotent", 1, 0, status=422, code="idempotency_mismatch") is None


def test_stream_decoder_reports_a_cut_stream():
    d = _core.StreamDecoder(execution_id="exe_1")
    assert d.feed('{"type":"stdout","text":"a"}') == ("stdout", "a")
    with pytest.raises(airlock.ServerError, match="exe_1") as e:
        d.finish("http://x")
    assert e.value.code == "stream_interrupted"
    d = _core.StreamDecoder()
    d.feed('{"type":"end","error":{"code":"sandbox_gone","message":"it stopped"}}')
    with pytest.raises(airlock.SandboxNotFound, match="it stopped"):
        d.finish("http://x")
    with pytest.raises(airlock.ServerError, match="not JSON"):
        _core.StreamDecoder().feed("<html>")
