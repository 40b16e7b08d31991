"""moto (the AWS emulator) over HTTPS, for pgBackRest, which speaks only TLS to S3.

Usage: moto_tls.py HOST PORT CERT KEY. moto_server --ssl closes each TLS connection without
a close_notify, which OpenSSL 3 clients such as pgBackRest report as an error; this closes it
properly.
"""
import ssl, sys
from werkzeug import serving
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

_shutdown = serving.BaseWSGIServer.shutdown_request
def shutdown_request(self, request):
    # Close TLS with close_notify: OpenSSL 3 clients (pgBackRest) treat a bare EOF as an error.
    if isinstance(request, ssl.SSLSocket):
        try:
            request.unwrap()
        except (OSError, ValueError):
            pass
    _shutdown(self, request)
serving.BaseWSGIServer.shutdown_request = shutdown_request

app = DomainDispatcherApplication(create_backend_app)
serving.run_simple(sys.argv[1], int(sys.argv[2]), app, threaded=True, ssl_context=(sys.argv[3], sys.argv[4]))
