"""Run the real gateway as its own process for reliability tests.

``python tests/gateway_main.py CONFIG.json`` builds the gateway from
the config file (plus ``LENGTHWISE_*`` environment variables) exactly as
``lengthwise serve`` does, with the stand-in's oracle length predictor, and
serves it with the same SIGTERM-draining server (``server.shutdown.serve_app``).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from oracle_predictor import OraclePredictor

from server.app import create_app
from server.config import load_config
from server.shutdown import serve_app


def main() -> None:
    cfg = load_config(Path(sys.argv[1]))
    logging.basicConfig(level="WARNING", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(cfg, predictor=OraclePredictor())
    serve_app(app, cfg, log_level="warning")


if __name__ == "__main__":
    main()
