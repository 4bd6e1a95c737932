"""``python -m training --smoke [--json]``: the CI smoke run. Training and evaluation proper:
``python -m training.train --config FILE`` and ``python -m training.evaluate``."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--smoke" in argv:
        from mfnet_core.errors import MfnetError

        from .smoke import main as smoke_main

        try:
            return smoke_main(argv)
        except MfnetError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    print(
        "usage: python -m training --smoke [--json] [--steps N] [--workdir DIR]\n"
        "       python -m training.train --config FILE [--resume auto] [--set section.key=value]\n"
        "       python -m training.evaluate --checkpoint CKPT [--dataset synthetic|facescape-lab]\n"
        "       python -m training.train --config FILE --prepare-only   (render / cache the data)",
        file=sys.stderr,
    )
    return 0 if argv in ([], ["-h"], ["--help"]) else 2


if __name__ == "__main__":
    sys.exit(main())
