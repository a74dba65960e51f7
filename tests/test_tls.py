"""DICOM TLS end to end: a throwaway PKI made with openssl, the real service in TLS-only mode, DCMTK and
Python TLS clients. Mutual TLS admits only certificates from the configured CA; plain DICOM, old TLS
versions, weak ciphers and silent peers are refused without holding anyone else up."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pynetdicom import AE

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nodeutil import DCMTK, RunningNode  # noqa: E402

from dicom_fixtures import generate_study  # noqa: E402

OPENSSL = shutil.which("openssl")
pytestmark = [
    pytest.mark.skipif(OPENSSL is None, reason="openssl command not installed (apt-get install openssl)"),
    pytest.mark.skipif(not (DCMTK / "storescu").exists(), reason="DCMTK not installed (apt-get install dcmtk)"),
]


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path  # a client certificate from another CA
    stranger_key: Path
    stranger_ca: Path


def _openssl(*args: str) -> None:
    assert OPENSSL is not None
    subprocess.run([OPENSSL, *args], check=True, capture_output=True, timeout=60)


def _make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.crt"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
             "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return cert, key


def _issue(folder: Path, name: str, ca: tuple[Path, Path], *extensions: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.crt"
    ext: list[str] = []
    for e in ("basicConstraints=critical,CA:FALSE", *extensions):
        ext += ["-addext", e]
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
             "-subj", f"/CN={name}", "-CA", str(ca[0]), "-CAkey", str(ca[1]), *ext)
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca, other_ca = _make_ca(folder, "site-ca"), _make_ca(folder, "other-ca")
    server = _issue(folder, "localhost", ca, "subjectAltName=DNS:localhost,IP:127.0.0.1", "extendedKeyUsage=serverAuth")
    client = _issue(folder, "STORESCU", ca, "extendedKeyUsage=clientAuth")
    stranger = _issue(folder, "STRANGER", other_ca, "extendedKeyUsage=clientAuth")
    return Pki(ca[0], *server, *client, *stranger, other_ca[0])


def _client_context(pki: Pki, cert: bool = True) -> ssl.SSLContext:
    """A strict client: verifies the node's certificate and its name (IP SAN 127.0.0.1)."""
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if cert:
        ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return ctx


class TlsNode(RunningNode):
    """A RunningNode whose readiness probe speaks TLS (the plain probe cannot associate any more)."""

    def __init__(self, tmp: Path, pki: Pki, mutual: bool = True, **kwargs: Any) -> None:
        tls = {"certificate": str(pki.server_cert), "key": str(pki.server_key)}
        if mutual:
            tls["ca"] = str(pki.ca)
        sections = kwargs.pop("sections", {})
        super().__init__(tmp, sections={**sections, "node.tls": tls}, **kwargs)
        self.pki = pki

    def echo(self) -> bool:
        ae = AE(ae_title="ECHOSCU")
        ae.add_requested_context("1.2.840.10008.1.1")
        ae.acse_timeout = ae.network_timeout = 5
        assoc = ae.associate("127.0.0.1", self.port, ae_title=self.ae_title,
                             tls_args=(_client_context(self.pki), "127.0.0.1"))
        if not assoc.is_established:
            return False
        status = assoc.send_c_echo()
        assoc.release()
        return bool(status) and status.Status == 0

    def dcmtk(self, tool: str, *args: str, tls: tuple[str, ...] | None = None) -> subprocess.CompletedProcess[str]:
        """Run a DCMTK SCU against the node; `tls` defaults to our client certificate, () means plain."""
        if tls is None:
            tls = ("+tls", str(self.pki.client_key), str(self.pki.client_cert), "+cf", str(self.pki.ca))
        cmd = [str(DCMTK / tool), "-aec", self.ae_title, "-to", "10", "-ta", "10", "-td", "30", *tls, *args]
        return subprocess.run(cmd + ["127.0.0.1", str(self.port)], capture_output=True, text=True, timeout=120)


@pytest.fixture
def tls_node(tmp_path: Path, pki: Pki) -> Iterator[TlsNode]:
    node = TlsNode(tmp_path / "node", pki)
    node.start()
    yield node
    node.stop()




def _wait_log(node: RunningNode, *texts: str) -> str:
    """The log once it holds every text (a refused peer can see the socket close before the log line)."""
    return str(node.wait_for(f"log lines {texts}", lambda: all(t in node.log() for t in texts) and node.log(), 10))


def _store_over_tls(node: TlsNode, files: list[Path]) -> subprocess.CompletedProcess[str]:
    cmd = [str(DCMTK / "storescu"), "-aet", "STORESCU", "-aec", node.ae_title, "+tls", str(node.pki.client_key),
           str(node.pki.client_cert), "+cf", str(node.pki.ca), "127.0.0.1", str(node.port), *map(str, files)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def _find_worklist(node: TlsNode, out: Path) -> list[Any]:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    res = node.dcmtk("findscu", "-W", "-aet", "FINDSCU", "-X", "-od", str(out),
                     "-k", "ScheduledProcedureStepSequence[0].Modality=MR", "-k", "PatientID", "-k", "PatientName")
    assert res.returncode == 0, res.stderr
    return [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def test_dcmtk_echo_store_and_worklist_find_over_mutual_tls(tls_node: TlsNode, tmp_path: Path) -> None:
    res = tls_node.dcmtk("echoscu", "-aet", "ECHOSCU")
    assert res.returncode == 0, res.stderr

    study = generate_study(tmp_path / "gen", patient_id="MSTLS01", slices=4, rows=32, columns=32)
    res = _store_over_tls(tls_node, study.files)
    assert res.returncode == 0, res.stderr
    assert len(tls_node.instances(study.study_uid)) == len(study.files)
    tls_node.wait_complete(study.study_uid)

    # The pipeline schedules the patient's next exam; a modality finds it over TLS.
    items = tls_node.wait_for("no worklist item for the stored patient", lambda: [i for i in _find_worklist(tls_node, tmp_path / "wl") if i.PatientID == "MSTLS01"])
    assert items[0].ScheduledProcedureStepSequence[0].Modality == "MR"
    assert "TLS handshake failed" not in tls_node.log()


def test_mutual_tls_refuses_clients_without_a_certificate_from_the_ca(tls_node: TlsNode, pki: Pki) -> None:
    # Their own calling AE title: an earlier test's association may still be logging its end (a count of
    # "association released" taken here raced with it), while no line may ever name this one.
    refused = "REFUSEDSCU"
    no_cert = tls_node.dcmtk("echoscu", "-aet", refused, tls=("+tla", "+cf", str(pki.ca)))
    stranger = tls_node.dcmtk("echoscu", "-aet", refused,
                              tls=("+tls", str(pki.stranger_key), str(pki.stranger_cert), "+cf", str(pki.ca)))
    # A certificate from the right CA made for a server (no clientAuth purpose) is no client certificate.
    server_cert = tls_node.dcmtk("echoscu", "-aet", refused,
                                 tls=("+tls", str(pki.server_key), str(pki.server_cert), "+cf", str(pki.ca)))
    assert no_cert.returncode != 0 and stranger.returncode != 0 and server_cert.returncode != 0
    log = _wait_log(tls_node, "reason=PEER_DID_NOT_RETURN_A_CERTIFICATE",
                    "reason=certificate rejected (unable to get local issuer certificate)",
                    "reason=certificate rejected (unsuitable certificate purpose)")
    assert f"calling_ae={refused}" not in log  # none of them got as far as DICOM
    assert tls_node.dcmtk("echoscu", "-aet", "ECHOSCU").returncode == 0  # the right one still does


def test_plain_dicom_cannot_associate_with_a_tls_node(tls_node: TlsNode) -> None:
    res = tls_node.dcmtk("echoscu", "-aet", "ECHOSCU", tls=())
    assert res.returncode != 0
    assert RunningNode.echo(tls_node) is False  # pynetdicom without TLS
    _wait_log(tls_node, "(the peer does not speak TLS: a plain DICOM client?)")


def _handshake(port: int, ctx: ssl.SSLContext) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        return str(tls.version())


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_only_tls_1_2_and_later_with_aead_ciphers(tls_node: TlsNode, pki: Pki) -> None:
    assert _handshake(tls_node.port, _client_context(pki)) == "TLSv1.3"
    tls12 = _client_context(pki)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    assert _handshake(tls_node.port, tls12) == "TLSv1.2"

    old = _client_context(pki)
    old.set_ciphers("DEFAULT@SECLEVEL=0")  # let the client offer what the server must refuse
    old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError, match="PROTOCOL_VERSION"):  # the server's alert, not a client refusal
        _handshake(tls_node.port, old)

    cbc = _client_context(pki)
    cbc.maximum_version = ssl.TLSVersion.TLSv1_2
    cbc.set_ciphers("ECDHE-RSA-AES128-SHA256:ECDHE-RSA-AES256-SHA384")
    with pytest.raises(ssl.SSLError, match="HANDSHAKE_FAILURE"):
        _handshake(tls_node.port, cbc)
    _wait_log(tls_node, "reason=UNSUPPORTED_PROTOCOL", "reason=NO_SHARED_CIPHER")


def test_server_only_tls_admits_clients_without_certificate(tmp_path: Path, pki: Pki) -> None:
    node = TlsNode(tmp_path / "node", pki, mutual=False)
    node.start()
    try:
        res = node.dcmtk("echoscu", "-aet", "ECHOSCU", tls=("+tla", "+cf", str(pki.ca)))
        assert res.returncode == 0, res.stderr
        assert node.dcmtk("echoscu", "-aet", "ECHOSCU", tls=()).returncode != 0  # still TLS only
    finally:
        node.stop()


def test_silent_peer_neither_blocks_others_nor_stays_forever(tmp_path: Path, pki: Pki) -> None:
    """A TCP connection that never says hello: other peers associate meanwhile; it is dropped after
    the ACSE timeout; shutdown does not wait for it."""
    node = TlsNode(tmp_path / "node", pki, sections={"node": {"acse_timeout": 3}})
    node.start()
    try:
        with socket.create_connection(("127.0.0.1", node.port), timeout=30) as silent:
            res = node.dcmtk("echoscu", "-aet", "ECHOSCU")
            assert res.returncode == 0, res.stderr
            assert silent.recv(1) == b"", "the node should close a connection that never handshakes"
        _wait_log(node, "reason=timed out waiting for the peer's handshake")
        silent2 = socket.create_connection(("127.0.0.1", node.port), timeout=30)
        try:
            assert node.stop(timeout=20) == 0
        finally:
            silent2.close()
    finally:
        if node.proc is not None and node.proc.poll() is None:
            node.kill9()


@pytest.mark.parametrize("problem", ["missing key", "key of another certificate", "encrypted key", "ca not a certificate"])
def test_unusable_tls_files_stop_start_up_with_a_clear_error(tmp_path: Path, pki: Pki, problem: str) -> None:
    tls = {"certificate": str(pki.server_cert), "key": str(pki.server_key), "ca": str(pki.ca)}
    expected = {
        "missing key": f"node.tls.key {tmp_path / 'absent.key'}: cannot read: No such file or directory",
        "key of another certificate": "cannot be used together: KEY_VALUES_MISMATCH",
        "encrypted key": "the key is encrypted",
        "ca not a certificate": f"node.tls.ca {pki.server_key}: no usable CA certificate",
    }[problem]
    if problem == "missing key":
        tls["key"] = str(tmp_path / "absent.key")
    elif problem == "key of another certificate":
        tls["key"] = str(pki.client_key)
    elif problem == "encrypted key":
        encrypted = tmp_path / "encrypted.key"
        _openssl("pkey", "-in", str(pki.server_key), "-aes256", "-passout", "pass:secret", "-out", str(encrypted))
        tls["key"] = str(encrypted)
    else:
        tls["ca"] = str(pki.server_key)
    node = RunningNode(tmp_path / "node", sections={"node.tls": tls})
    res = subprocess.run([sys.executable, "-m", "msfollowup", "serve", "--config", str(node.config_path)],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert res.returncode == 2, res.stderr
    assert expected in res.stderr
    assert "Traceback" not in res.stderr


def test_stalled_association_requests_after_a_valid_handshake_are_dropped_and_lock_out_nobody(
        tmp_path: Path, pki: Pki) -> None:
    """issue 12: 16 peers that complete the TLS handshake, send a PDU header and stop were never dropped."""
    import struct
    import time

    node = TlsNode(tmp_path / "node", pki, sections={"node": {"acse_timeout": 2, "max_associations": 4}}).start()
    try:
        stalled = []
        for _ in range(16):
            raw = socket.create_connection(("127.0.0.1", node.port), timeout=5, source_address=("127.0.0.3", 0))
            try:
                tls = _client_context(pki).wrap_socket(raw, server_hostname="127.0.0.1")
            except (ssl.SSLError, OSError):
                raw.close()  # refused by the per-host cap: an answer too
                continue
            tls.sendall(struct.pack(">BBL", 0x01, 0, 200))
            stalled.append(tls)
        assert stalled, "no hostile connection got through the handshake"
        assert node.echo(), "a TLS sender was locked out by stalled peers"
        deadline = time.monotonic() + 6
        for tls in stalled:
            tls.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                assert tls.recv(1) == b"", "the node sent data to a stalled peer"
            except (TimeoutError, socket.timeout):
                raise AssertionError("a stalled peer was not dropped at the ARTIM deadline") from None
            except (ssl.SSLError, OSError):
                pass  # reset: dropped
            tls.close()
        assert node.echo()
    finally:
        node.stop()


def test_web_listener_serves_https_with_the_configured_certificate(tmp_path: Path, pki: Pki) -> None:
    """Issue 14: TLS built in (certificate/key in the config) for sites without a reverse proxy; plain HTTP
    to the same port gets no page, and a client trusting the site CA verifies the server."""
    import http.client

    from nodeutil import free_port

    port = free_port()
    node = RunningNode(tmp_path / "web", sections={"http": {"port": port},
                                                    "http.tls": {"certificate": str(pki.server_cert),
                                                                 "key": str(pki.server_key)}}).start()
    try:
        ctx = ssl.create_default_context(cafile=str(pki.ca))
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=ctx)
        conn.request("GET", "/healthz")
        rsp = conn.getresponse()
        assert rsp.status == 200 and b'"status"' in rsp.read()
        conn.close()
        plain = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        with pytest.raises((http.client.HTTPException, OSError)):
            plain.request("GET", "/healthz")
            plain.getresponse().read()
        assert f"web interface at https://127.0.0.1:{port}/" in node.log()
    finally:
        node.stop()


def test_web_listener_with_an_unreadable_key_refuses_to_start_naming_the_key(tmp_path: Path, pki: Pki) -> None:
    from nodeutil import free_port

    node = RunningNode(tmp_path / "web", sections={"http": {"port": free_port()},
                                                    "http.tls": {"certificate": str(pki.server_cert),
                                                                 "key": str(tmp_path / "missing.key")}})
    done = subprocess.run([sys.executable, "-m", "msfollowup", "serve", "--config", str(node.config_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "http.tls" in done.stderr, done.stderr
