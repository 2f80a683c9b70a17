r"""Mean and std of a 10-trial protocol (PRID-2011, iLIDS-VID, SDU-VID).

  python -m vreid_jax.aggregate_trials $W/gltr_prid_t0 ... $W/gltr_prid_t9

Reads each workdir's metrics.json, checks they come from distinct trials of
one dataset and protocol, and prints one JSON object with the mean and std of
every metric (`vreid_jax.evaluation.protocols.mean_std_over_trials`).
"""

import argparse
import json
import os
import sys

from vreid_jax.evaluation import protocols


def aggregate(workdirs):
  results, trials, datasets = [], [], set()
  for w in workdirs:
    path = os.path.join(w, "metrics.json")
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path}: missing (did that run finish?)")
    with open(path) as f:
      results.append(json.load(f))
    config_path = os.path.join(w, "config.json")
    if os.path.exists(config_path):
      with open(config_path) as f:
        config = json.load(f)
      datasets.add(config["dataset"]["name"])
      trials.append(config["dataset"]["trial"])
  if len(datasets) > 1:
    raise ValueError(f"the workdirs mix datasets: {sorted(datasets)}")
  if len(set(trials)) != len(trials):
    raise ValueError(f"the workdirs repeat trials: {sorted(trials)}")
  out = protocols.mean_std_over_trials(results)
  out["trials"] = trials
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("workdirs", nargs="+")
  args = parser.parse_args(argv)
  try:
    out = aggregate(args.workdirs)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps(out, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
