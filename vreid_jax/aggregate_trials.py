r"""Mean and std of a 10-trial protocol (PRID-2011, iLIDS-VID, SDU-VID).

  python -m vreid_jax.aggregate_trials $W/gltr_prid_t0 ... $W/gltr_prid_t9
      [--std=population|sample] [--num_trials=10] [--json]

Reads each workdir's metrics.json (and config.json), checks that they come
from distinct trials of one dataset evaluated under one protocol and one AP
definition (it refuses a mix), warns in one line on stderr when trials are
missing (e.g. "2 of 10 trials"), and prints one line per metric:

  ilids_vid, protocol ilids_vid/given, trapezoid AP, trials 0-9; std = population std (ddof=0) over trials
  mAP 78.1 +- 2.3 over 10 trials
  R1 86.0 +- 2.1 over 10 trials
  ...

Values are percentages. The std is the population std over trials (ddof=0,
`vreid_jax.evaluation.protocols.mean_std_over_trials`'s default) unless
`--std=sample` (ddof=1). `--json` prints one JSON object instead (the mean
and std of every metric as fractions, plus "trials", "dataset",
"protocol", "ap", "std", "ddof", "expected_trials" and "missing_trials").
Errors are one `error: ...` line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from vreid_jax.evaluation import protocols

# The published protocol of the trial datasets: 10 trials each.
EXPECTED_TRIALS = {"ilids_vid": 10, "prid2011": 10, "sdu_vid": 10}
STD_DDOF = {"population": 0, "sample": 1}


class AggregateError(ValueError):
  """Workdirs that cannot be aggregated (the message names the cause)."""


def _read_json(path: str, what: str) -> dict[str, Any]:
  try:
    with open(path) as f:
      out = json.load(f)
  except (OSError, ValueError) as e:
    raise AggregateError(f"{path}: cannot read the {what} ({e})") from e
  if not isinstance(out, dict):
    raise AggregateError(f"{path}: the {what} is not a JSON object")
  return out


def _eval_block(config: dict[str, Any]) -> dict[str, Any]:
  """The main evaluator's config block ({} when absent)."""
  evals = config.get("evals") or {}
  block = evals.get(config.get("main_eval") or "reid")
  return block if isinstance(block, dict) else {}


def read_workdir(workdir: str) -> dict[str, Any]:
  """One trial: metrics, dataset, trial, protocol and AP definition.

  metrics.json's "protocol" record wins; config.json fills in what it
  lacks (older runs). Unknown values are None.
  """
  workdir = os.fspath(workdir)
  path = os.path.join(workdir, "metrics.json")
  if not os.path.exists(path):
    raise AggregateError(f"{path}: missing (did that run finish?)")
  metrics = _read_json(path, "metrics")
  for key in ("mAP", "cmc"):
    if key not in metrics:
      raise AggregateError(f"{path}: has no {key!r}: not the metrics.json "
                           "of a re-id run")
  info: dict[str, Any] = {"workdir": workdir, "metrics": metrics,
                          "dataset": None, "trial": None, "protocol": None,
                          "ap": None}
  record = metrics.get("protocol")
  if isinstance(record, dict):
    info["protocol"], info["ap"] = record.get("name"), record.get("ap")
  config_path = os.path.join(workdir, "config.json")
  if os.path.exists(config_path):
    config = _read_json(config_path, "config")
    dataset = config.get("dataset") or {}
    block = _eval_block(config)
    eval_dataset = block.get("dataset") or {}
    if eval_dataset.get("name"):          # Cross-dataset: the test set's.
      info["dataset"] = eval_dataset["name"]
      trial = eval_dataset.get("trial", -1)
    else:
      info["dataset"] = dataset.get("name")
      trial = dataset.get("trial", -1)
    info["trial"] = None if trial is None or int(trial) < 0 else int(trial)
    if info["protocol"] is None and block.get("protocol"):
      info["protocol"] = block["protocol"]
    if info["ap"] is None and block.get("ap"):
      info["ap"] = block["ap"]
  return info


def _one(values: Sequence[Any], what: str, runs: Sequence[dict[str, Any]]):
  """The single known value of a field; refuses a mix."""
  known = {v for v in values if v is not None}
  if len(known) > 1:
    by_value = {}
    for v, r in zip(values, runs):
      by_value.setdefault(str(v), []).append(os.path.basename(
          os.path.normpath(r["workdir"])))
    detail = "; ".join(f"{v}: {', '.join(ws)}"
                       for v, ws in sorted(by_value.items()))
    raise AggregateError(f"the workdirs mix {what}s ({detail}): aggregate "
                         f"one {what} at a time")
  return known.pop() if known else None


def _span(trials: Sequence[int]) -> str:
  """[0, 1, 2, 5] -> '0-2, 5'."""
  out, trials = [], sorted(trials)
  i = 0
  while i < len(trials):
    j = i
    while j + 1 < len(trials) and trials[j + 1] == trials[j] + 1:
      j += 1
    out.append(str(trials[i]) if i == j else f"{trials[i]}-{trials[j]}")
    i = j + 1
  return ", ".join(out)


def aggregate(workdirs: Sequence[str], *, std: str = "population",
              num_trials: int | None = None) -> dict[str, Any]:
  """Mean and std over the trials of `workdirs`.

  Args:
    workdirs: one finished run per trial.
    std: "population" (ddof=0) or "sample" (ddof=1).
    num_trials: trials the protocol has (default: 10 for the trial datasets,
      else unknown); fewer workdirs give "missing_trials".

  Raises:
    AggregateError (a ValueError): a missing or unreadable metrics.json,
      workdirs that mix datasets, protocols or AP definitions, or repeat a
      trial.
  """
  if std not in STD_DDOF:
    raise AggregateError(f"std must be one of {sorted(STD_DDOF)}, got "
                         f"{std!r}")
  if not workdirs:
    raise AggregateError("no workdir given")
  runs = [read_workdir(w) for w in workdirs]
  dataset = _one([r["dataset"] for r in runs], "dataset", runs)
  protocol = _one([r["protocol"] for r in runs], "protocol", runs)
  ap = _one([r["ap"] for r in runs], "AP definition", runs)
  trials = [r["trial"] for r in runs if r["trial"] is not None]
  if len(set(trials)) != len(trials):
    repeated = sorted({t for t in trials if trials.count(t) > 1})
    raise AggregateError(f"the workdirs repeat trials: {sorted(trials)} "
                         f"(trial {_span(repeated)} more than once)")
  ddof = STD_DDOF[std]
  out = protocols.mean_std_over_trials([r["metrics"] for r in runs],
                                       ddof=ddof)
  reranked = [r["metrics"].get("reranked") for r in runs]
  if all(isinstance(x, dict) for x in reranked):
    sub = protocols.mean_std_over_trials(reranked, ddof=ddof)
    sub.pop("num_trials", None)
    out["reranked"] = sub
  expected = num_trials or EXPECTED_TRIALS.get(str(dataset))
  out.update(trials=trials, dataset=dataset, protocol=protocol, ap=ap,
             std=std, ddof=ddof, expected_trials=expected)
  if expected:
    known = set(trials) if len(trials) == len(runs) else None
    missing = (sorted(set(range(expected)) - known) if known is not None
               else None)
    out["missing_trials"] = missing
  return out


def warnings_of(out: dict[str, Any]) -> list[str]:
  """One line per problem a reader must know before quoting the numbers."""
  lines = []
  n, expected = out["num_trials"], out.get("expected_trials")
  if expected and n < expected:
    missing = out.get("missing_trials")
    lines.append(
        f"warning: {n} of {expected} trials"
        + (f" (missing trial {_span(missing)})" if missing else "")
        + f": the mean and std are over {n} trials, not the protocol's "
        f"{expected}")
  elif expected and n > expected:
    lines.append(f"warning: {n} workdirs for a {expected}-trial protocol")
  if len(out["trials"]) < n:
    lines.append(f"warning: {n - len(out['trials'])} of {n} workdirs have "
                 "no config.json naming their trial: repeats cannot be "
                 "ruled out")
  return lines


def _metric_lines(out: dict[str, Any], prefix: str = "") -> list[str]:
  n = out.get("num_trials")
  lines = []

  def line(name, stats):
    lines.append(f"{prefix}{name} {100 * stats['mean']:.1f} +- "
                 f"{100 * stats['std']:.1f} over {n} trials")

  for key in ("mAP", "mINP"):
    if key in out:
      line(key, out[key])
  for rank, stats in out.get("cmc", {}).items():
    line(f"R{rank}", stats)
  return lines


def summary_lines(out: dict[str, Any]) -> list[str]:
  """A header (dataset, protocol, AP, trials, std convention), then one
  line per metric ("R1 86.0 +- 2.1 over 10 trials", percentages)."""
  head = [out.get("dataset") or "unknown dataset",
          f"protocol {out.get('protocol') or 'unknown'}",
          f"{out['ap']} AP" if out.get("ap") else "AP definition unknown"]
  if out["trials"]:
    head.append(f"trials {_span(out['trials'])}")
  lines = [", ".join(head) + f"; std = {out['std']} std "
           f"(ddof={out['ddof']}) over trials"]
  lines += _metric_lines(out)
  n = out["num_trials"]
  if "reranked" in out:
    lines += _metric_lines(dict(out["reranked"], num_trials=n),
                           prefix="re-ranked ")
  return lines


class _Parser(argparse.ArgumentParser):
  """argparse whose errors are one `error: ...` line (status 2)."""

  def error(self, message):
    self.exit(2, f"error: {message} (usage: python -m "
              "vreid_jax.aggregate_trials WORKDIR... [--json] "
              "[--std=population|sample] [--num_trials=N])\n")


def main(argv: Sequence[str] | None = None) -> int:
  parser = _Parser(prog="python -m vreid_jax.aggregate_trials",
                   description=__doc__.splitlines()[0])
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("--json", action="store_true",
                      help="print one JSON object instead of the lines")
  parser.add_argument("--std", default="population",
                      choices=sorted(STD_DDOF),
                      help="population (ddof=0, default) or sample (ddof=1)")
  parser.add_argument("--num_trials", type=int, default=None,
                      help="trials of the protocol (default 10 for "
                      "iLIDS-VID, PRID-2011, SDU-VID)")
  args = parser.parse_args(argv)
  try:
    out = aggregate(args.workdirs, std=args.std, num_trials=args.num_trials)
  except ValueError as e:       # AggregateError and mean_std's own.
    print(f"error: {e}", file=sys.stderr)
    return 2
  for line in warnings_of(out):
    print(line, file=sys.stderr)
  if args.json:
    print(json.dumps(out, indent=2))
  else:
    print("\n".join(summary_lines(out)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
