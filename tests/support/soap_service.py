"""A real SOAP 1.1 service for the transaction prober's tests, built with spyne: the status call of a document
interconnection endpoint, and a call whose implementation raises.

    python -m tests.support.soap_service --port PORT

`GetStatus()` answers `<GetStatusResult><status>OK</status><pending>3</pending></GetStatusResult>`;
`SendDocument(code)` raises (the database is down): spyne answers HTTP 500 with a Fault whose faultstring is
"database unavailable". `running_soap_service()` starts it as a child process and stops it by PID.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tests.support.ports import free_port
from tests.support.procs import running, wait_for_port
from tests.support.require import require_module

NAMESPACE = "urn:egov:lienthong:vanban"
ROOT = Path(__file__).resolve().parent.parent.parent


def application():  # noqa: ANN201 - spyne's types exist only once it is imported
    from spyne import Application, ComplexModel, Integer, ServiceBase, Unicode, rpc
    from spyne.model.fault import Fault
    from spyne.protocol.soap import Soap11
    from spyne.server.wsgi import WsgiApplication

    class Status(ComplexModel):
        __namespace__ = NAMESPACE
        status = Unicode
        pending = Integer

    class DocumentAxis(ServiceBase):
        @rpc(_returns=Status)
        def GetStatus(ctx):  # noqa: N802,N805 - SOAP operation names
            return Status(status="OK", pending=3)

        @rpc(Unicode, _returns=Unicode)
        def SendDocument(ctx, code):  # noqa: N802,N805
            raise Fault(faultcode="Server.Database", faultstring="database unavailable")

    app = Application([DocumentAxis], tns=NAMESPACE, in_protocol=Soap11(validator="lxml"), out_protocol=Soap11())
    return WsgiApplication(app)


def main() -> None:
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, *args) -> None:  # noqa: ANN002
            pass

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    make_server("127.0.0.1", args.port, application(), server_class=Server, handler_class=QuietHandler).serve_forever()


@contextmanager
def running_soap_service(directory: Path) -> Iterator[str]:
    """The service on a free port; its endpoint URL."""
    require_module("spyne", "spyne")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [sys.executable, "-m", "tests.support.soap_service", "--port", str(port)]
    with running(argv, log_path=str(directory / "soap.log"), cwd=str(ROOT)) as proc:
        wait_for_port("127.0.0.1", port, timeout=30, proc=proc)
        yield f"http://127.0.0.1:{port}/"


if __name__ == "__main__":
    main()
