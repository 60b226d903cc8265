"""Cluster and namespace resolution, as kubectl does it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import fast_sandbox
from fast_sandbox import Client, ConfigError, _config

KUBECONFIG = """
apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: "https://127.0.0.1:6443", insecure-skip-tls-verify: true}
users:
- name: u
  user: {token: secret-token}
contexts:
- name: with-ns
  context: {cluster: c, user: u, namespace: team-a}
- name: without-ns
  context: {cluster: c, user: u}
current-context: with-ns
"""


@pytest.fixture
def kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "config"
    path.write_text(KUBECONFIG)
    monkeypatch.setenv("KUBECONFIG", str(path))
    return path


def test_the_context_s_namespace_is_the_default(kubeconfig: Path) -> None:
    c = Client.from_kubeconfig()
    assert (c.namespace, c.host) == ("team-a", "https://127.0.0.1:6443")
    assert c.headers()["Authorization"] == "Bearer secret-token"
    assert Client.from_kubeconfig(context="without-ns").namespace == "default"
    assert Client.from_kubeconfig(context="with-ns", namespace="mine").namespace == "mine"
    # auto() reads the same file.
    assert Client.auto().namespace == "team-a"
    with pytest.raises(ConfigError, match="no context 'nope'"):
        Client.from_kubeconfig(context="nope")


def test_no_configuration_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="no cluster configuration"):
        Client.auto()
    with pytest.raises(ConfigError, match="no kubeconfig"):
        Client.from_kubeconfig()


def test_a_token_client_sends_its_token() -> None:
    c = Client.from_token("https://h:6443", "abc", namespace="ns", verify=False)
    assert c.headers()["Authorization"] == "Bearer abc"
    assert c.namespace == "ns"
    ctx = _config.ssl_context(c.configuration)
    assert not ctx.check_hostname


def test_the_version_is_the_workspace_s() -> None:
    cargo = Path(__file__).resolve().parents[4] / "Cargo.toml"
    if not cargo.exists():
        pytest.skip("not inside the Fast Sandbox repository")
    section = cargo.read_text().split("[workspace.package]", 1)[1].split("\n[", 1)[0]
    found = re.search(r'^version\s*=\s*"([^"]+)"', section, re.MULTILINE)
    assert found is not None, "root Cargo.toml has a [workspace.package] version"
    workspace = found.group(1)
    assert fast_sandbox.__version__ == workspace
