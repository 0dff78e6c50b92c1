"""The local vLLM CPU worker that profiled SmolLM2 for the README's figures.

64 sequences (the profiler keeps them all busy), graph compilation on (slower start,
faster steps: this worker runs for hours), prefix caching on (a prompt's 10 samples
share its prefill) and no logits processors (the profile uses fixed decoding
settings, not EDT). Stops on SIGTERM or Ctrl-C.
Usage: .venv/bin/python scripts/profile_worker.py [PORT] [MAX_NUM_SEQS]
"""

import sys

from server.local_model import prepare_local_model
from server.worker_process import WorkerConfig, serve_until_signalled

port = int(sys.argv[1]) if len(sys.argv) > 1 else 8500
max_num_seqs = int(sys.argv[2]) if len(sys.argv) > 2 else 64
config = WorkerConfig(model_path=prepare_local_model().path, port=port, max_num_seqs=max_num_seqs,
                      enforce_eager=False, logits_processors=(), startup_timeout_s=600)
serve_until_signalled(config)
