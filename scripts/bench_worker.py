"""A local vLLM CPU worker for `lengthwise bench live`, as the README's figures used it.

16 sequences (so a burst queues) and prefix caching off (every arm replays the same
prompts; a warm cache would favour whichever arm runs later). Stops on SIGTERM or Ctrl-C.
Usage: .venv/bin/python scripts/bench_worker.py [PORT]
"""

import sys

from server.local_model import prepare_local_model
from server.worker_process import WorkerConfig, serve_until_signalled

port = int(sys.argv[1]) if len(sys.argv) > 1 else 8400
config = WorkerConfig(model_path=prepare_local_model().path, port=port, max_num_seqs=16,
                      extra_args=("--no-enable-prefix-caching",))
serve_until_signalled(config)
