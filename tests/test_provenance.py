"""Start records: one per start of a run, never overwritten; a resume with
changed settings says which; metrics.json names its checkpoint and record."""

import json
import os
import sys

from vreid_jax import config_utils
from vreid_jax import provenance
from vreid_jax import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_config_source_from_the_command_line():
  assert provenance.config_source(
      ["main.py", "--config=configs/gao_mars.py:ta,runlocal", "--workdir=w",
       "--config.seed=1"]) == ("configs/gao_mars.py", "ta,runlocal")
  assert provenance.config_source(
      ["main.py", "--config", "configs/demo.py"]) == ("configs/demo.py", None)
  # A library call (pytest's argv, a notebook): no config file.
  assert provenance.config_source(["pytest", "-q", "tests"]) == (None, None)
  assert provenance.config_overrides(
      ["m", "--config=c.py", "--config.seed=1", "--workdir=w"]) == [
          "--config.seed=1"]


def test_changes_and_records_never_overwrite(tmp_path):
  old = {"schedule": {"base_lr": 0.01, "name": "step"}, "num_steps": 2,
         "losses": {"a": {"weight": 1.0}}}
  new = {"schedule": {"base_lr": 0.02, "name": "step"}, "num_steps": 2,
         "losses": {"a": {"weight": 1.0}, "b": {"weight": 0.5}}}
  changes = provenance.config_changes(old, new)
  assert changes == [
      {"key": "losses.b.weight", "old": "<unset>", "new": 0.5},
      {"key": "schedule.base_lr", "old": 0.01, "new": 0.02}]
  assert provenance.format_changes(changes[1:]) == (
      "schedule.base_lr 0.01 -> 0.02")
  assert provenance.previous_config(str(tmp_path)) == (None, None)
  (tmp_path / "config.json").write_text(json.dumps(old))
  assert provenance.previous_config(str(tmp_path)) == ("config.json", old)
  names = [provenance.write_start_record(str(tmp_path), {"config": c})
           for c in (old, new)]
  assert names == ["start-0001", "start-0002"]
  assert provenance.previous_config(str(tmp_path)) == ("start-0002", new)
  # A record cut short (killed while writing) is skipped, never reused.
  (tmp_path / "provenance" / "start-0003.json").write_text('{"conf')
  assert provenance.previous_config(str(tmp_path)) == ("start-0002", new)
  assert provenance.write_start_record(str(tmp_path), {}) == "start-0004"
  assert provenance.read_record(str(tmp_path), "start-0001") == {
      "record": "start-0001", "config": old}


def test_resume_with_another_learning_rate_is_said_and_recorded(
    synthetic_data_dir, tmp_path, capsys, monkeypatch):
  """Two starts in one workdir (1 step, then 1 more at twice the lr)."""
  workdir = tmp_path / "run"
  records = workdir / "provenance"

  def start(num_steps, lr):
    monkeypatch.setattr(sys, "argv", [
        "vreid_jax/main.py", "--config=configs/demo.py:tiny",
        f"--workdir={workdir}", f"--config.schedule.base_lr={lr}"])
    config = config_utils.load_config(
        os.path.join(ROOT, "configs/demo.py:tiny"))
    with config.unlocked():
      config.data_dir = synthetic_data_dir
      config.num_steps = num_steps
      config.schedule.base_lr = lr
      config.checkpoint.every_steps = 0
      del config.evals["motion_twins"]
    return train.train_and_evaluate(config, str(workdir))

  start(1, 0.001)
  first = json.loads((records / "start-0001.json").read_text())
  assert (first["start_step"], first["resumed"]) == (0, False)
  assert first["changed_since_last_start"] is None
  assert "resuming with changed settings" not in capsys.readouterr().out

  metrics = start(2, 0.002)
  out = capsys.readouterr().out
  assert "Resuming from step 1" in out
  assert ("resuming with changed settings: num_steps 1 -> 2, "
          "schedule.base_lr 0.001 -> 0.002") in out
  assert sorted(os.listdir(records)) == ["start-0001.json",
                                         "start-0002.json"]
  second = json.loads((records / "start-0002.json").read_text())
  # The first record is kept as it was.
  assert json.loads((records / "start-0001.json").read_text()) == first
  assert first["config"]["schedule"]["base_lr"] == 0.001
  assert second["config"]["schedule"]["base_lr"] == 0.002
  assert (second["start_step"], second["resumed"]) == (1, True)
  assert second["previous"] == "start-0001"
  assert second["changed_since_last_start"] == [
      {"key": "num_steps", "old": 1, "new": 2},
      {"key": "schedule.base_lr", "old": 0.001, "new": 0.002}]
  assert (second["config_file"], second["config_variant"]) == (
      "configs/demo.py", "tiny")
  assert second["config_overrides"] == ["--config.schedule.base_lr=0.002"]
  assert second["command_line"][1] == "--config=configs/demo.py:tiny"
  assert second["versions"]["jax"] and second["versions"]["flax"]
  assert second["devices"]["num_devices"] == 8
  # config.json is still the run's config; metrics.json names its
  # checkpoint and this start's record.
  assert json.loads((workdir / "config.json").read_text()) == (
      second["config"])
  saved = json.loads((workdir / "metrics.json").read_text())
  assert saved["step"] == saved["checkpoint_step"] == 2
  assert saved["provenance"] == "provenance/start-0002.json"
  assert metrics["provenance"] == saved["provenance"]
