"""``python -m jsia_tf.launch_local --workers=2 -- <train flags>``: a multi-worker run on this host.

A local convenience for trying and testing ``--strategy=multi_worker``: it starts N
``python -m jsia_tf.train <train flags> --strategy=multi_worker`` processes, each with a
``TF_CONFIG`` that lists N free loopback ports and its own task index (worker 0 is the
chief), prints their output line by line prefixed with ``[worker i]``, stops every worker
as soon as one fails or when ``--timeout_s`` passes (a worker whose peer is gone would
otherwise wait forever), and exits with the first non-zero exit status (0 when all
succeed; 124 on timeout). The real thing is one process per host with its own
``TF_CONFIG`` (docs/DISTRIBUTED.md).
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time

from absl import app

from jsia_tf import config as config_lib
from jsia_tf import config_flags

TIMEOUT_EXIT_CODE = 124  # what coreutils' timeout returns
_POLL_SECONDS = 0.2
_TERMINATE_GRACE_SECONDS = 10


def free_ports(count):
    """``count`` distinct TCP ports free on 127.0.0.1 right now (the OS picks them)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:  # all held open together, so the OS gives distinct ports
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_configs(num_workers):
    """One TF_CONFIG JSON string per worker: the same loopback cluster, task index i."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(num_workers)]}
    return [json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}) for i in range(num_workers)]


def _stream(process, prefix, lock):
    for line in process.stdout:
        with lock:
            sys.stdout.write(f"{prefix} {line}")
            sys.stdout.flush()


def _stop(processes):
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + _TERMINATE_GRACE_SECONDS
    for process in processes:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_workers(command, num_workers, timeout_s=0, env=None):
    """Runs ``command`` as ``num_workers`` processes of one loopback cluster.

    Args:
      command: argv of one worker; each gets its own TF_CONFIG in its environment.
      num_workers: processes to start.
      timeout_s: stop them all after this many seconds (0: no limit).
      env: base environment (default: this process's).
    Returns:
      0 when every worker exited with 0; else the first non-zero exit status seen
      (negative: killed by that signal), or TIMEOUT_EXIT_CODE on timeout. Every
      worker has exited when this returns.
    """
    lock = threading.Lock()
    processes, readers = [], []
    try:
        for index, tf_config in enumerate(tf_configs(num_workers)):
            process = subprocess.Popen(command, env={**(env or os.environ), "TF_CONFIG": tf_config},
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            processes.append(process)
            readers.append(threading.Thread(target=_stream, args=(process, f"[worker {index}]", lock), daemon=True))
            readers[-1].start()
        deadline = time.monotonic() + timeout_s if timeout_s else None
        while True:
            codes = [p.poll() for p in processes]
            failed = [code for code in codes if code not in (None, 0)]
            if failed:
                status = failed[0]
                break
            if all(code == 0 for code in codes):
                status = 0
                break
            if deadline and time.monotonic() > deadline:
                print(f"launch_local: --timeout_s={timeout_s:g} passed; stopping every worker", file=sys.stderr)
                status = TIMEOUT_EXIT_CODE
                break
            time.sleep(_POLL_SECONDS)
    finally:
        _stop(processes)
        for reader in readers:
            reader.join()
    return status


def main(argv):
    train_flags = argv[1:]
    options = config_flags.options(config_lib.LaunchConfig)  # argv: the trainer's flags
    other = [f for f in train_flags if f.startswith("--strategy") and f != "--strategy=multi_worker"]
    if other:
        raise app.UsageError(f"{other[0]}: launch_local runs --strategy=multi_worker")
    command = [sys.executable, "-m", "jsia_tf.train", *train_flags, "--strategy=multi_worker"]
    sys.exit(run_workers(command, options.workers, options.timeout_s))


def run():
    # Flags are defined only when run as a program, so that importing stays flag-free.
    config_flags.define(config_lib.LaunchConfig)
    app.run(main)


if __name__ == "__main__":
    run()
