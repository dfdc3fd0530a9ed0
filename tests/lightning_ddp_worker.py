"""Run by test_lightning.py in a process of its own: a `ddp_spawn` fit on 2 gloo processes, rank 0 saving to the
folder given. Apart from pytest's process, whose threads and state after hundreds of tests a spawned rank
inherits nothing of, but which made a rank abort now and then."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from test_lightning import ddp_fit  # noqa: E402

if __name__ == "__main__":
    ddp_fit(Path(sys.argv[1]), 2)
