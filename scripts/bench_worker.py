"""A local vLLM CPU worker for `lengthwise bench live`, as the README's figures used it.

16 sequences (so a burst queues) and prefix caching off (every arm replays the same
prompts; a warm cache would favour whichever arm runs later). Stops on SIGTERM or Ctrl-C.
Usage: .venv/bin/python scripts/bench_worker.py [PORT]
"""

import signal
import sys

from server.local_model import prepare_local_model
from server.worker_process import WorkerConfig, WorkerProcess

port = int(sys.argv[1]) if len(sys.argv) > 1 else 8400
config = WorkerConfig(model_path=prepare_local_model().path, port=port, max_num_seqs=16,
                      extra_args=("--no-enable-prefix-caching",))
stop_signals = {signal.SIGTERM, signal.SIGINT}
# Blocked first, so the signal is taken by sigwait and the worker is stopped on the way out.
signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
with WorkerProcess(config) as worker:
    print("ready", worker.base_url, flush=True)
    signal.sigwait(stop_signals)
