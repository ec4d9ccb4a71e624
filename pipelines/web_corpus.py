"""From a URL list to a deduplicated, decontaminated training set with a report.

download (img2dataset) -> embed -> find -> select -> purge (eval set) -> write -> report

.venv/bin/python pipelines/web_corpus.py urls.parquet --eval eval-images/ --run-dir runs/web --config configs/default.toml
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dedup_and_decontaminate import pipeline  # noqa: E402

from dedup.progress import Reporter  # noqa: E402
from dedup.tools.download import DownloadSettings, download  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url_list", type=Path)
    parser.add_argument("--eval", nargs="+", required=True, help="Eval set: shards, a folder of images, or an image.")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/web"))
    parser.add_argument("--config", default="configs/default.toml")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    downloaded = args.run_dir / "downloaded"
    fetched = download(
        args.url_list, downloaded, DownloadSettings(image_size=args.image_size, processes=args.processes)
    )
    result = pipeline([str(downloaded)], args.eval, args.run_dir, args.config, Reporter())
    print(json.dumps({"download": fetched, **result}, indent=2, default=str))


if __name__ == "__main__":
    main()
