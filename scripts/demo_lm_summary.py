"""Write results/demo-lm.json: the final held-out scores of a demo-lm run (scripts/demo-lm.sh calls this).

    python scripts/demo_lm_summary.py runs/demo-lm-YYYYMMDD-HHMMSS [--command "how it was run"]
"""

import argparse
import json
from pathlib import Path

from chimera.runs import read_metrics

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("run")
ap.add_argument("--command", default="make demo-lm")
ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "results" / "demo-lm.json"))
a = ap.parse_args()
run = Path(a.run)
rows = [r for r in read_metrics(run / "metrics.jsonl") if any(k.startswith("eval/") for k in r)]
if not rows:
    raise SystemExit(f"{run}/metrics.jsonl has no evaluation yet; is {run} a finished train-lm run?")
final = {k: v for k, v in rows[-1].items() if k.startswith("eval/")}
summary = {"run": run.name, "command": a.command, "config": json.loads((run / "config.json").read_text()),
           "step": rows[-1]["step"], "final": final,
           "evaluations": [{"step": r["step"], **{k: v for k, v in r.items() if k.startswith("eval/")}} for r in rows]}
Path(a.out).write_text(json.dumps(summary, indent=2) + "\n")
print(f"wrote {a.out}: " + "  ".join(f"{k.removeprefix('eval/')} {v:.3f}" for k, v in final.items()))
