"""Where a process finds its role's NATS credentials (config.auth.nats_auth),
and what they turn into for nats-py. No broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentstream.runtime.adapters.jetstream import auth_options
from agentstream.runtime.config.auth import NatsAuth, nats_auth, permissions
from agentstream.runtime.core.errors import ConfigError

URL = "nats://127.0.0.1:4222"


def seed_dir(tmp_path: Path, role: str = "client") -> Path:
    d = tmp_path / "nats" / "auth"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{role}.nk").write_text("SUAEXAMPLE\n")
    return d


def test_precedence_creds_nkey_user_token_url_then_the_data_dir(tmp_path: Path) -> None:
    seed_dir(tmp_path)
    creds, nkey = tmp_path / "u.creds", tmp_path / "u.nk"
    creds.write_text("x")
    nkey.write_text("x")
    env = {"AGENTSTREAM_NATS_CREDS": str(creds), "AGENTSTREAM_NATS_NKEY": str(nkey),
           "AGENTSTREAM_NATS_USER": "u", "AGENTSTREAM_NATS_PASSWORD": "p", "AGENTSTREAM_NATS_TOKEN": "t"}
    assert nats_auth("client", URL, tmp_path, env).creds_file == str(creds)
    assert nats_auth("client", URL, tmp_path, {"NATS_CREDS": str(creds)}).creds_file == str(creds)
    env.pop("AGENTSTREAM_NATS_CREDS")
    assert nats_auth("client", URL, tmp_path, env).nkey_seed_file == str(nkey)
    env.pop("AGENTSTREAM_NATS_NKEY")
    a = nats_auth("client", URL, tmp_path, env)
    assert (a.user, a.password) == ("u", "p")
    env.pop("AGENTSTREAM_NATS_USER")
    assert nats_auth("client", URL, tmp_path, env).token == "t"
    # Credentials in the URL: nats-py uses them; nothing is added.
    assert nats_auth("client", "nats://a:b@h:4222", tmp_path, {}).method == "none"
    # Next to a local `up`: the role's seed in the data dir.
    a = nats_auth("client", URL, tmp_path, {})
    assert a.nkey_seed_file == str(tmp_path / "nats" / "auth" / "client.nk")
    assert nats_auth("agent", URL, tmp_path, {}).method == "none"  # no agent seed there


@pytest.mark.parametrize("env, match", [
    ({"AGENTSTREAM_NATS_CREDS": "/nonexistent.creds"}, "no such file"),
    ({"AGENTSTREAM_NATS_USER": "u"}, "PASSWORD is not"),
    ({"AGENTSTREAM_NATS_CA": "/nonexistent-ca.pem"}, "no such file"),
])
def test_bad_credentials_configuration_is_one_clear_error(tmp_path: Path, env: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        nats_auth("client", URL, tmp_path, env)


def test_a_client_certificate_needs_its_key(tmp_path: Path) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError, match="go together"):
        nats_auth("client", URL, tmp_path, {"AGENTSTREAM_NATS_CERT": str(cert)})


def test_nats_py_options_carry_the_role_s_inbox_and_one_method() -> None:
    assert auth_options(NatsAuth(role="client", nkey_seed_file="/s.nk")) == {
        "inbox_prefix": "_INBOX_client", "nkeys_seed": "/s.nk"}
    assert auth_options(NatsAuth(role="tool", user="tool", password="pw")) == {
        "inbox_prefix": "_INBOX_tool", "user": "tool", "password": "pw"}
    assert auth_options(None) == {}


def test_each_role_may_subscribe_to_its_own_inbox_only() -> None:
    for role in ("client", "observer", "approver", "gateway", "agent", "tool", "worker"):
        p = permissions(role)  # type: ignore[arg-type]
        assert p is not None
        inboxes = [s for s in p.subscribe if s.startswith("_INBOX")]
        assert inboxes == [f"_INBOX_{role}.>"], role
    client = permissions("client")
    assert client is not None
    assert not any(s.startswith(("agents.*.events", "agents.*.decisions", "tools.", "$KV.")) for s in client.publish)


def _openssl(*args: str, cwd: Path) -> None:
    import subprocess

    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(d: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=agentstream-test-ca", cwd=d)
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=d)
        (d / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1\n" if name == "server"
                                       else "extendedKeyUsage=clientAuth\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=d)


@pytest.mark.skipif(__import__("shutil").which("openssl") is None, reason="needs the openssl command")
async def test_tls_urls_with_ca_and_client_certificate_from_the_environment(tmp_path: Path) -> None:
    from agentstream.runtime.adapters.embedded_broker import EmbeddedNats
    from agentstream.runtime.adapters.jetstream import connect
    from agentstream.runtime.core.errors import BrokerUnavailable

    pki = tmp_path / "pki"
    pki.mkdir()
    make_pki(pki)
    server = EmbeddedNats(store_dir=tmp_path / "nats", extra_args=[
        "--tlsverify", "--tlscert", str(pki / "server.pem"), "--tlskey", str(pki / "server.key"),
        "--tlscacert", str(pki / "ca.pem")])
    server.start()
    try:
        url = server.plain_url.replace("nats://", "tls://")
        env = {"AGENTSTREAM_NATS_CA": str(pki / "ca.pem"), "AGENTSTREAM_NATS_CERT": str(pki / "client.pem"),
               "AGENTSTREAM_NATS_KEY": str(pki / "client.key")}
        auth = nats_auth("client", url, tmp_path, env)  # the client role's seed, TLS files from env
        assert auth.nkey_seed_file and auth.tls_ca
        nc = await connect(url, auth=auth, connect_timeout=3, reconnect=False)
        try:
            assert nc.is_connected and nc.connected_url is not None and nc.connected_url.scheme == "tls"
        finally:
            await nc.close()
        no_cert = nats_auth("client", url, tmp_path, {"AGENTSTREAM_NATS_CA": str(pki / "ca.pem")})
        with pytest.raises(BrokerUnavailable):  # the server verifies client certificates
            await connect(url, auth=no_cert, connect_timeout=2, reconnect=False)
    finally:
        server.stop()


def test_url_credentials_become_options_for_every_server_of_a_cluster() -> None:
    """nats-py gives a URL's user:password only to that URL; a node it
    discovers would get none, and an authorization error closes the client."""
    from agentstream.runtime.adapters.jetstream import _split_userinfo, redact_url

    servers, userinfo = _split_userinfo(["nats://admin:p%40ss@127.0.0.1:4222", "nats://admin:p%40ss@10.0.0.2:4223",
                                         "127.0.0.1:4224"])
    assert servers == ["nats://127.0.0.1:4222", "nats://10.0.0.2:4223", "127.0.0.1:4224"]
    assert userinfo == ("admin", "p@ss")
    assert _split_userinfo(["tls://h:1"]) == (["tls://h:1"], None)
    assert redact_url("nats://admin:secret@h:1,nats://h:2") == "nats://admin:***@h:1,nats://h:2"
