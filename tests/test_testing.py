"""The test helpers users and benchmarks run too (hubbub.testing)."""
import socket
import subprocess
import sys
import time

import pytest


def test_the_s3_server_ends_with_the_process_that_started_it_even_a_killed_one():
    # a benchmark or test run killed without cleanup must not leave a busy server behind
    script = ("import os, time\nfrom hubbub.testing import s3_server\nwith s3_server():\n"
              "    print(os.environ['AWS_ENDPOINT_URL'], flush=True)\n    time.sleep(600)\n")
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        port = int(owner.stdout.readline().strip().rsplit(":", 1)[1])
        socket.create_connection(("127.0.0.1", port), timeout=5).close()  # serving
    finally:
        owner.kill()
        owner.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return
        time.sleep(0.2)
    pytest.fail(f"the S3 server on port {port} outlived the process that started it")
