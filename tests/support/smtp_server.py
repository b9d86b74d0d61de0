"""A real SMTP server for netsky's email-leg tests (aiosmtpd).

Usage: smtp_server.py DIR USER PASSWORD
Makes a CA and a certificate for 127.0.0.1 in DIR (DIR/ca.pem is the one a
client must trust), requires STARTTLS and then AUTH, saves each message
as DIR/mail-N.eml, prints the port on its first line, and serves until stdin
closes (the test holds the pipe, so the server never outlives it).
"""
import subprocess
import ssl
import sys
import threading
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

out, user, password = Path(sys.argv[1]), sys.argv[2].encode(), sys.argv[3].encode()
# A CA of its own (DIR/ca.pem, the one a client trusts) and a leaf for 127.0.0.1:
# TLS verifiers refuse a CA certificate used as the server's own.
ca, ca_key, cert, key = out / "ca.pem", out / "ca-key.pem", out / "cert.pem", out / "key.pem"
ext = out / "leaf.ext"
ext.write_text("basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=netsky test CA",
        "-keyout", str(ca_key), "-out", str(ca))
openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(out / "leaf.csr"))
openssl("x509", "-req", "-in", str(out / "leaf.csr"), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
        "-days", "1", "-extfile", str(ext), "-out", str(cert))
context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(cert, key)
saved = []
lock = threading.Lock()


class Save:
    async def handle_DATA(self, server, session, envelope):
        with lock:
            saved.append(1)
            (out / f"mail-{len(saved)}.eml").write_bytes(envelope.original_content or envelope.content)
        return "250 saved"


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == user and auth_data.password == password
    return AuthResult(success=ok)


# aiosmtpd checks its own readiness by connecting to its port: it needs a real one.
import socket

probe = socket.socket()
probe.bind(("127.0.0.1", 0))
port = probe.getsockname()[1]
probe.close()
controller = Controller(
    Save(), hostname="127.0.0.1", port=port, tls_context=context, require_starttls=True,
    authenticator=authenticator, auth_required=True,
)
controller.start()
print(port, flush=True)
sys.stdin.read()
controller.stop()
