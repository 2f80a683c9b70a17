r"""Time from SIGTERM to exit of a real training run (what a scheduler grants).

Starts `python -m vreid_jax.main` with the given config and flags, waits
until its first checkpoint exists and a few steps later sends SIGTERM, then
measures the wall time until the process exits (it finishes the step in
flight and writes and waits for a checkpoint of it). Prints the exit code,
the seconds to exit, the trainer's own "after the signal" figure, the
checkpoint's size and the machine's load.

  python benchmarks/preemption_bench.py --workdir=/tmp/pre_demo -- \
      --config=configs/demo.py
  python benchmarks/preemption_bench.py --workdir=/tmp/pre_gltr -- \
      --config=configs/gltr_mars.py --config.data_dir=~/tensorflow_datasets \
      --config.input.num_ids_per_batch=2 --config.input.num_per_id=2

The workdir is emptied first. The last line is one JSON object.
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _size(path: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f))
             for d, _, fs in os.walk(path) for f in fs)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--every_steps", type=int, default=2,
                 help="checkpoint interval passed to the run")
  p.add_argument("--steps_after", type=int, default=1,
                 help="log lines to wait for after the first checkpoint")
  p.add_argument("main_flags", nargs="*",
                 help="flags for vreid_jax.main (after --)")
  args = p.parse_args(argv)
  shutil.rmtree(args.workdir, ignore_errors=True)
  # --config=... must come before the --config.x overrides.
  cmd = [sys.executable, "-m", "vreid_jax.main", f"--workdir={args.workdir}",
         *args.main_flags,
         f"--config.checkpoint.every_steps={args.every_steps}",
         "--config.log_every_steps=1"]
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, bufsize=1)
  first = os.path.join(args.workdir, "checkpoints", str(args.every_steps),
                       "_CHECKPOINT_METADATA")
  lines, steps_seen = [], 0
  for line in proc.stdout:
    lines.append(line)
    if os.path.exists(first) and line.startswith("step "):
      steps_seen += 1
      if steps_seen > args.steps_after:
        break
  if proc.poll() is not None:
    print("".join(lines[-30:]))
    print("the run ended before it could be signalled", file=sys.stderr)
    return 1
  load = os.getloadavg()[0]
  t0 = time.monotonic()
  proc.send_signal(signal.SIGTERM)
  rest = proc.stdout.read()
  proc.wait()
  seconds = time.monotonic() - t0
  lines.append(rest)
  text = "".join(lines)
  m = re.search(r"preempted at step (\d+), checkpoint saved \((\w+); "
                r"([\d.]+) s after the signal\)", text)
  step = int(m.group(1)) if m else None
  ckpt = os.path.join(args.workdir, "checkpoints", str(step))
  result = {"exit_code": proc.returncode, "seconds_to_exit": round(seconds, 2),
            "trainer_seconds": float(m.group(3)) if m else None,
            "step": step,
            "checkpoint_mb": round(_size(ckpt) / 2**20, 1) if m else None,
            "load_1min": round(load, 2), "command": cmd}
  print(text[-1500:])
  print(f"exit code {proc.returncode}, {seconds:.1f} s from SIGTERM to exit "
        f"(trainer: {result['trainer_seconds']} s to the saved checkpoint of "
        f"step {step}, {result['checkpoint_mb']} MiB), load {load:.2f}")
  print(json.dumps(result))
  return 0 if proc.returncode == 0 and m else 1


if __name__ == "__main__":
  sys.exit(main())
