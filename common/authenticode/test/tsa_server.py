#!/usr/bin/env python3
"""Tiny RFC 3161 TSA for the unit tests: answers POSTed TimeStampReqs with `openssl ts -reply`.

Usage: tsa_server.py DIR   (DIR holds tsa.cnf, tsa.key, tsa.crt). Listens on 127.0.0.1 only, on a free
port that it prints as the first line of stdout. POST /fail answers 500; POST /garbage answers junk.
"""
import http.server
import os
import subprocess
import sys
import tempfile

DIR = sys.argv[1]


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path == "/fail":
            self.send_response(500)
            self.end_headers()
            return
        if self.path == "/garbage":
            out = b"\x30\x03\x02\x01\x00"
        else:
            with tempfile.TemporaryDirectory(dir=DIR) as t:
                q = os.path.join(t, "q.tsq")
                r = os.path.join(t, "r.tsr")
                with open(q, "wb") as f:
                    f.write(body)
                subprocess.run(["openssl", "ts", "-reply", "-config", os.path.join(DIR, "tsa.cnf"),
                                "-queryfile", q, "-out", r], check=True, capture_output=True)
                with open(r, "rb") as f:
                    out = f.read()
        self.send_response(200)
        self.send_header("Content-Type", "application/timestamp-reply")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
