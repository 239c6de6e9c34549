"""The loopback hardening of the local Ray cluster, short of starting one."""

from __future__ import annotations

import pytest
from jinja2 import Environment
from ray.serve._private.haproxy_templates import HAPROXY_CONFIG_TEMPLATE

from services.local_ray import (
    _internal_address,
    check_environment,
    patch_haproxy_template,
    prepare_environment,
)

pytestmark = pytest.mark.unit


class _Cfg:
    """The attributes of Ray's HAProxyConfig that the patched lines read."""

    metrics_port = 19101
    stats_port = 18404
    stats_uri = "/stats"
    metrics_uri = "/metrics"


def _render_tail(template: str) -> str:
    # the frontends and default backend render without the rest of Ray's config object
    start = template.index("frontend prometheus")
    end = template.index("frontend http_frontend")
    stats = template.index("listen stats")
    default = template.index("\nbackend default_backend\n")
    env = Environment()
    parts = [template[start:end], template[stats:], template[default : template.index("{%- for item")]]
    return "".join(env.from_string(p).render(config=_Cfg()) for p in parts)


def test_the_patched_template_binds_stats_and_metrics_to_the_node_address() -> None:
    before = _render_tail(HAPROXY_CONFIG_TEMPLATE)
    assert "bind :19101" in before and "bind *:18404" in before  # what Ray ships: all interfaces
    after = _render_tail(patch_haproxy_template(HAPROXY_CONFIG_TEMPLATE, "127.0.0.1"))
    assert "bind 127.0.0.1:19101" in after and "bind 127.0.0.1:18404" in after
    assert "bind :" not in after and "bind *:" not in after
    v6 = _render_tail(patch_haproxy_template(HAPROXY_CONFIG_TEMPLATE, "::1"))
    assert "bind [::1]:19101" in v6


def test_no_gateway_is_a_503_with_retry_after_not_a_404_or_a_wait() -> None:
    patched = patch_haproxy_template(HAPROXY_CONFIG_TEMPLATE, "127.0.0.1")
    default = patched[patched.index("\nbackend default_backend\n") + 1 :]
    assert default.splitlines()[1].strip().startswith("http-request return status 503")
    assert "hdr Retry-After 1" in default.splitlines()[1]
    assert '\\"type\\": \\"service_unavailable\\"' in default.splitlines()[1]
    # per backend: 503 while it has no server up, and no fallback to Serve's proxy
    assert "!{ nbsrv({{ backend.name or 'unknown' }}) gt 0 }" in patched
    assert "backend.fallback_server and false" in patched
    assert patched.count("backend.fallback_server %}") < HAPROXY_CONFIG_TEMPLATE.count(
        "backend.fallback_server %}"
    )


def test_a_changed_template_fails_closed() -> None:
    with pytest.raises(RuntimeError, match="HAProxy template changed"):
        patch_haproxy_template(HAPROXY_CONFIG_TEMPLATE.replace("bind *:", "bind ALL:"), "127.0.0.1")


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("[::]:0", "127.0.0.1:0"),
        ("0.0.0.0:9000", "127.0.0.1:9000"),
        (":8000", "127.0.0.1:8000"),
        ("10.1.2.3:5000", "10.1.2.3:5000"),  # an explicit address stays
        ("127.0.0.1:0", "127.0.0.1:0"),
    ],
)
def test_all_interface_grpc_addresses_move_to_the_node_address(address: str, expected: str) -> None:
    assert _internal_address(address, "127.0.0.1") == expected


def test_ipv6_node_address_is_bracketed() -> None:
    assert _internal_address("[::]:0", "::1") == "[::1]:0"


def test_prepare_environment_sets_what_ray_reads_at_import_and_keeps_explicit_values() -> None:
    env = {"HF_HUB_OFFLINE": "0"}
    prepare_environment(env)
    assert env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    assert env["HF_HUB_OFFLINE"] == "0"


def test_check_environment_passes_in_this_process() -> None:
    # tests/conftest.py imports llmops before ray: loopback stays loopback
    from ray._private import ray_constants

    assert ray_constants.ENABLE_RAY_CLUSTER is False
    check_environment("127.0.0.1")


def test_check_environment_refuses_a_ray_imported_too_early(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray._private import ray_constants

    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
    with pytest.raises(RuntimeError, match="imported before its environment was set"):
        check_environment("127.0.0.1")
    check_environment("192.0.2.7")  # a non-loopback node address is the user's choice
