"""`se-plugins train` as a script: `python tools/train.py ...` (also under `torchrun --nproc_per_node=N`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from se_plugins.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
