"""The cue ladder of the HRF study's test beds (issue #13): how far the generator's own
values carry the labels as less and less of them is given, beside the networks' test UA.

    python -m experiments.cue_ladder        # results/cue_ladder.{json,md}, about 2 minutes

For every bed of ``hrf_study.TESTBEDS`` it builds the corpus's configuration (the registry's
defaults and the bed's ``dataset.*`` overrides), runs ``testbed.cue_ladder`` on it (nothing
is rendered or prepared) and reads the light and gate models' mean test UA from the bed's
committed results (``results/<stem>.json``). The rung where the ladder falls to the
networks' level suggests which cues they leave unused: a hint to what a bigger model could
gain, not a measurement of a network.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiments.hrf_study import DATASET, TESTBEDS, git_head
from experiments.run import RESULTS
from experiments.testbed import LADDER, cue_ladder


def bed_config(testbed: str) -> Any:
    """The ``SyntheticConfig`` of a bed's corpus: registry defaults, then its overrides."""
    from hrf_jax.data.registry import get_corpus
    from hrf_jax.data.synthetic import SyntheticConfig

    options = {**get_corpus(DATASET).options,
               **{k.removeprefix("dataset."): v
                  for k, v in TESTBEDS[testbed]["overrides"].items()
                  if k.startswith("dataset.")}}
    return SyntheticConfig(preset="headroom", **{
        k: v for k, v in options.items() if k in SyntheticConfig.__dataclass_fields__})


def networks(testbed: str, results_dir: Path) -> dict[str, Any]:
    """Mean final-state test UA (points) of light and the gate model, from the bed's results."""
    path = results_dir / f"{TESTBEDS[testbed]['results']}.json"
    if not path.is_file():
        return {}
    gate = json.loads(path.read_text())["gate"]
    out = {}
    if "light_vs_probe" in gate:
        out["light"] = gate["light_vs_probe"]["light_ua"]
    if "oracle_vs_large" in gate:
        out[gate["variant"]] = gate["oracle_vs_large"]["large_ua"]
    out["seeds"] = {k: len(v) for k, v in json.loads(path.read_text())["runs"].items()
                    if k in out}
    return out


def ladder_report(results_dir: Path) -> dict[str, Any]:
    beds = {}
    for testbed in TESTBEDS:
        cfg = bed_config(testbed)
        rungs = cue_ladder(cfg)
        beds[testbed] = {"corpus": {"num_utterances": cfg.num_utterances,
                                    "num_speakers": cfg.num_speakers,
                                    "lexicon": cfg.lexicon},
                         "ladder_ua": {k: 100 * v["ua"] for k, v in rungs.items()},
                         "networks_ua": networks(testbed, results_dir)}
    return {"command": " ".join(["python -m experiments.cue_ladder", *sys.argv[1:]]),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "commit": git_head(), "rungs": dict(LADDER), "beds": beds}


def markdown(report: dict[str, Any]) -> str:
    beds = report["beds"]
    lines = ["# The cue ladder of the HRF study's test beds", "",
             f"Command: `{report['command']}` at commit {report['commit']}, {report['date']}. "
             "Test UA (points) of logistic regression (C chosen on validation UA) on the "
             "generator's values, speaker-independent splits of each bed's corpus; each rung "
             "is given less than the one above it. Below them, the networks' mean "
             "final-state test UA from the beds' results.", "",
             "| rung | what the classifier gets | " + " | ".join(f"`{b}`" for b in beds) + " |",
             "|---|---|" + "---|" * len(beds)]
    for name, what in report["rungs"].items():
        lines.append(f"| {name} | {what} | " + " | ".join(
            f"{bed['ladder_ua'][name]:.1f}" for bed in beds.values()) + " |")
    models = sorted({m for bed in beds.values() for m in bed["networks_ua"] if m != "seeds"})
    for model in models:
        cells = []
        for bed in beds.values():
            ua = bed["networks_ua"].get(model)
            n = bed["networks_ua"].get("seeds", {}).get(model, 0)
            cells.append("-" if ua is None else f"{ua:.1f} ({n} seed{'s' * (n > 1)})")
        lines.append(f"| {model} (network) | Conformer, the bed's recipe | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    report = ladder_report(args.results_dir)
    (args.results_dir / "cue_ladder.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (args.results_dir / "cue_ladder.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
